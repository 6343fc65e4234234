//! Server crash points (builds with the `crash-points` feature): the
//! server dies at a point of the ranged write path, is restarted on the
//! same root and address, and either the same `ferry put` rides it out or
//! a re-run finishes.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, ExitStatus};

use super::*;

/// A file of 2½ pieces.
const SIZE: usize = 2 * PIECE + PIECE / 2 + 5;

/// Waits for the server to die at its crash point; fails at once if
/// `put` finishes first (the point was never reached).
fn wait_for_the_crash(server: &mut Serve, put: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = server.child.try_wait().expect("poll ferry serve") {
            assert_eq!(status.signal(), Some(9), "expected the server's death by SIGKILL, got {status}");
            return status;
        }
        if let Some(status) = put.try_wait().expect("poll ferry put") {
            panic!("ferry put ended ({status}) and the server never reached its crash point");
        }
        assert!(Instant::now() < deadline, "the server did not crash within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `ferry put -q --parallel 2` against a server that dies at `point`;
/// the CLI (which would go on retrying) is then SIGKILLed too, and the
/// server restarted on the same root and address.
fn crash_then_restart(case: &Case, listen: &str, point: &str) -> Serve {
    let mut server = Serve::start(&case.root(), &case.log(), listen, Some(point));
    let mut put = case.put_command(&server.url(), &["-q", "--parallel", "2"]);
    let mut put = put.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn put");
    wait_for_the_crash(&mut server, &mut put);
    let _ = put.kill();
    let _ = put.wait();
    case.assert_nothing_partial("big.bin");
    // The same address: the CLI remembers sessions per server URL.
    let restarted = Serve::start(&case.root(), &case.log(), &server.addr, None);
    case.assert_nothing_partial("big.bin");
    restarted
}

/// The server dies after a range's data is synced but before the journal
/// records it: the range is not counted, and a re-run sends it again.
#[test]
fn a_crash_after_a_range_sync_is_finished_by_a_rerun() {
    let case = Case::new(SIZE, 31);
    let server = crash_then_restart(&case, "127.0.0.1:0", "range.after-data-sync");
    assert!(!case.stored("big.bin").exists(), "nothing visible");
    assert_eq!(journal_ranges(&case.root()), Vec::new(), "no range journaled before the crash point");
    let sessions = entries(&case.root().join(".ferry/uploads"));
    assert_eq!(sessions.len(), 1, "the ranged session survives the restart: {sessions:?}");

    let output = case.put(&server, &["--parallel", "2"]);
    case.assert_stored(&output);
    let stderr = text(&output.stderr);
    let (id, stored, _) = resumed_ranged(&stderr).unwrap_or_else(|| panic!("did not resume: {stderr}"));
    assert_eq!((id.as_str(), stored), (sessions[0].as_str(), 0), "{stderr}");
}

/// Ranges journaled by a first run (its CLI killed) survive a later
/// server crash after an unjournaled range and the restart's recovery;
/// the re-run, here without `--parallel`, continues the ranged session
/// from them.
#[test]
fn ranges_journaled_before_a_crash_survive_recovery() {
    let case = Case::new(4 * PIECE + 3, 32);
    let mut server = case.serve(None);
    stop_after_a_range(&case, &server, "KILL");
    std::thread::sleep(Duration::from_millis(200));
    server.kill();
    let kept = journal_ranges(&case.root());
    assert!(total(&kept) > 0 && total(&kept) < case.size(), "{kept:?}");

    let server = crash_then_restart(&case, &server.addr, "range.after-data-sync");
    assert_eq!(journal_ranges(&case.root()), kept, "the crash and the recovery kept the journaled ranges");

    let output = case.put(&server, &[]);
    case.assert_stored(&output);
    let stderr = text(&output.stderr);
    let (_, stored, ranges) = resumed_ranged(&stderr).unwrap_or_else(|| panic!("did not resume: {stderr}"));
    assert_eq!((stored, ranges), (total(&kept), kept.len()), "{stderr}");
}

/// The server dies after verifying the staged file, before publishing:
/// nothing is visible, every range is still journaled, and the re-run
/// sends nothing but the commit.
#[test]
fn a_crash_after_commit_verification_is_finished_by_a_rerun() {
    let case = Case::new(SIZE, 33);
    let server = crash_then_restart(&case, "127.0.0.1:0", "commit.after-verify");
    assert!(!case.stored("big.bin").exists(), "nothing visible before the rename");
    assert_eq!(journal_ranges(&case.root()), vec![(0, case.size())], "every range journaled");

    let mark = case.log_text().len();
    let output = case.put(&server, &["--parallel", "2"]);
    case.assert_stored(&output);
    let stderr = text(&output.stderr);
    let (_, stored, ranges) = resumed_ranged(&stderr).unwrap_or_else(|| panic!("did not resume: {stderr}"));
    assert_eq!((stored, ranges), (case.size(), 1), "{stderr}");
    assert_eq!(range_commits(&case.log_text()[mark..]), Vec::new(), "nothing sent again");
}

/// The server dies right after the rename: the file is whole, the
/// session is gone after recovery, and a re-run (whose remembered
/// session no longer exists) uploads it again, correctly.
#[test]
fn a_crash_after_the_commit_rename_leaves_the_whole_file() {
    let case = Case::new(SIZE, 34);
    let server = crash_then_restart(&case, "127.0.0.1:0", "commit.after-rename");
    let stored = fs::read(case.stored("big.bin")).expect("the renamed file");
    assert_same_bytes(&stored, &case.data, "the file published before the crash");
    assert_eq!(entries(&case.root().join(".ferry/uploads")), Vec::<String>::new(), "recovery removed it");

    let output = case.put(&server, &["--parallel", "2"]);
    case.assert_stored(&output);
    let stderr = text(&output.stderr);
    assert!(!stderr.contains("resuming upload"), "resumed a session that is gone: {stderr}");
}

/// The server dies at `point` and is restarted on the same address while
/// `ferry put --parallel 2` is still retrying: the same run finishes.
fn ride_out(point: &str, seed: u64) {
    let case = Case::new(SIZE, seed);
    let mut server = case.serve(Some(point));
    let addr = server.addr.clone();
    let mut put = case.put_command(&server.url(), &["--parallel", "2"]).spawn().expect("spawn put");
    wait_for_the_crash(&mut server, &mut put);
    case.assert_nothing_partial("big.bin");
    let _restarted = Serve::start(&case.root(), &case.log(), &addr, None);
    let output = wait_output(put, "ferry put --parallel 2 across a server crash");
    case.assert_stored(&output);
}

macro_rules! ride_out_tests {
    ($($name:ident => $point:literal,)*) => {$(
        #[test]
        fn $name() {
            ride_out($point, line!().into());
        }
    )*};
}

ride_out_tests! {
    put_rides_out_a_crash_after_a_range_sync => "range.after-data-sync",
    put_rides_out_a_crash_after_commit_verification => "commit.after-verify",
    put_rides_out_a_crash_after_the_commit_file_sync => "commit.after-file-sync",
    put_rides_out_a_crash_after_the_commit_rename => "commit.after-rename",
    put_rides_out_a_crash_after_the_commit_dir_sync => "commit.after-dir-sync",
}
