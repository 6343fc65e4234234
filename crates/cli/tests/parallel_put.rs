//! `ferry put --parallel N`, end to end: a file of at least two pieces goes
//! through a ranged session (N range streams at once, then one verified
//! commit); a smaller one, or a server that cannot stage ranges (S3), gets
//! one ordinary stream. The real binary runs against a real `ferry serve`
//! whose log is kept (with the ranged service at debug level, so that the
//! ranges each run sent can be counted): a plain upload, a CLI killed and
//! run again, server crash points (with the `crash-points` feature: the
//! server dies, is restarted, and either the same `ferry put` rides it out or
//! a re-run finishes), the S3 fallback (moto), small files, and the flags
//! `--parallel` cannot go with. Three tests probe races: the same put run
//! twice at once, and calls cut while the server claims a range or commits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;

mod support;
use support::{MIB, Moto, TIMEOUT};

/// The harness: the server, a work directory, the CLI, what the server did.
#[path = "parallel_put/harness.rs"]
mod harness;
use harness::*;

const EXIT_USAGE: i32 = 2;
const EXIT_EXISTS: i32 = 4;
/// What `ferry put` says when it does not split the file.
const ONE_STREAM: &str = "ferry: sending in one stream";

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Four connections, four pieces (the last one short): every piece went as
/// one range, the file is whole, its mtime and mode travelled with it, and
/// nothing is left behind.
#[test]
fn parallel_put_stores_the_file_with_its_metadata() {
    let case = Case::new(3 * PIECE + 2 * MIB + 4321, 50);
    // 2017-07-14T02:40:00.123456789Z: a fixed past time, with nanoseconds to catch truncation.
    let mtime = UNIX_EPOCH + Duration::new(1_500_000_000, 123_456_789);
    let file = fs::File::options().write(true).open(case.local()).expect("open the local file");
    file.set_modified(mtime).expect("set the local mtime");
    file.set_permissions(fs::Permissions::from_mode(0o640)).expect("set the local mode");
    drop(file);
    let server = case.serve(None);

    let output = case.put(&server, &["--parallel", "4"]);
    case.assert_stored(&output);
    let stderr = text(&output.stderr);
    assert!(!stderr.contains(ONE_STREAM), "a 4-piece file was sent in one stream: {stderr}");

    let stored = fs::metadata(case.stored("big.bin")).expect("stored file");
    assert_eq!(stored.permissions().mode() & 0o777, 0o640, "mode of the stored file");
    assert_eq!(stored.modified().expect("stored mtime"), mtime, "mtime of the stored file");

    let log = case.log_text();
    assert_eq!(sessions_created(&log), (1, 0), "one ranged session: {log}");
    let mut sent = range_commits(&log);
    sent.sort_unstable();
    assert_eq!(sent, pieces(case.size()), "one range per piece");
    assert!(log.contains("ranged upload committed"), "{log}");

    let stat = run(client_command(&server.url(), &case.state(), &["stat", "--json", "big.bin"]));
    assert_exit(&stat, 0);
    let stat: Value = serde_json::from_slice(&stat.stdout).expect("stat --json prints JSON");
    assert_eq!(stat["sha256"], case.sha256().as_str());
    assert_eq!(stat["size"], case.size());
    assert_eq!(stat["permissions"], "0640");
    assert_eq!(stat["mtime"], "2017-07-14T02:40:00.123456789Z");
}

/// `ferry put --parallel 2` SIGKILLed once a range is durable, then run
/// again: the second run continues the remembered session, sends exactly
/// the pieces the server lacked, and the file is whole.
#[test]
fn a_killed_parallel_put_resumes_sending_only_the_missing_pieces() {
    interrupted_then_rerun("KILL", 62);
}

/// The same after Ctrl-C (SIGINT): exit 130, and the session is kept for
/// the re-run.
#[test]
fn an_interrupted_parallel_put_resumes_sending_only_the_missing_pieces() {
    interrupted_then_rerun("INT", 63);
}

/// Starts `ferry put --parallel 2` of a 6-piece file, sends it `signal`
/// once the journal shows a committed range, and runs it again.
fn interrupted_then_rerun(signal: &str, seed: u64) {
    let case = Case::new(5 * PIECE + 7 * MIB + 3, seed);
    let server = case.serve(None);
    let seen = stop_after_a_range(&case, &server, signal);

    // Let the server notice the cut streams, then look at what it kept.
    std::thread::sleep(Duration::from_millis(200));
    let kept = journal_ranges(&case.root());
    let sessions = entries(&case.root().join(".ferry/uploads"));
    assert_eq!(sessions.len(), 1, "one session on the server: {sessions:?}");
    let remembered = entries(&case.state());
    assert_eq!(remembered.len(), 1, "one session remembered: {remembered:?}");
    let remembered_id = fs::read_to_string(case.state().join(&remembered[0])).expect("the remembered id");
    assert_eq!(remembered_id.trim(), sessions[0], "the CLI remembers the server's session");

    let mark = case.log_text().len();
    let second = case.put(&server, &["--parallel", "2"]);
    case.assert_stored(&second);
    let stderr = text(&second.stderr);
    let (id, stored, ranges) =
        resumed_ranged(&stderr).unwrap_or_else(|| panic!("the second put did not resume: {stderr}"));
    assert_eq!(id, sessions[0], "resumed the remembered session");
    assert!(stored >= total(&kept) && stored >= seen && stored < case.size(), "resumed with {stored} bytes stored");
    assert!(ranges >= 1, "{stderr}");
    assert!(!stderr.contains(ONE_STREAM), "{stderr}");

    let sent = range_commits(&case.log_text()[mark..]);
    assert_eq!(total(&sent), case.size() - stored, "the second run sent what the server lacked: {sent:?}");
    for (start, end) in &sent {
        assert!(
            kept.iter().all(|(s, e)| end <= s || e <= start),
            "{start}..{end} sent again though the server had it ({kept:?})"
        );
    }
    assert_eq!(sessions_created(&case.log_text()), (1, 0), "no new session for the second run");
}

/// The same `ferry put --parallel 2` started again while the first still
/// runs: the second finds the first's remembered session and joins it. One
/// of them commits; the other finds the session gone, and, as an ordinary
/// `ferry put` does in that case (resume.rs, `committed_elsewhere`), must
/// accept the stored file when it holds exactly its bytes.
#[test]
fn the_same_parallel_put_twice_at_once_succeeds_twice() {
    let case = Case::new(5 * PIECE + 3, 77);
    let server = case.serve(None);
    let first = case.put_command(&server.url(), &["--parallel", "2"]).spawn().expect("spawn the first put");
    let deadline = Instant::now() + TIMEOUT;
    while entries(&case.state()).is_empty() {
        assert!(Instant::now() < deadline, "the first put remembered no session");
        std::thread::sleep(Duration::from_millis(1));
    }
    let second = case.put(&server, &["--parallel", "2"]);
    let first = wait_output(first, "the first ferry put --parallel 2");
    let stderr = text(&second.stderr);
    assert!(resumed_ranged(&stderr).is_some(), "the second put joined the first's session: {stderr}");
    // Both runs stored this very file; neither may report a failure.
    assert_exit(&second, 0);
    assert_exit(&first, 0);
    case.assert_stored(&first);
    case.assert_stored(&second);
}

/// A range stream whose call is cut while the server is claiming its range
/// must not leave the range claimed, or every later stream of that range
/// is refused as overlapping (ABORTED) until the server restarts, and
/// re-runs retry for half a minute and fail. The claim is made inside a
/// blocking task (`write_range`, crates/store/src/local/ranged.rs), which
/// runs to its end even when the call is dropped (client killed, Ctrl-C).
/// That window is normally a fraction of a millisecond (the killed-put tests
/// above hit it now and then); here the session's `data` is swapped for a
/// FIFO, so that the claim's `open(2)` waits until the test lets it go,
/// after the CLI is dead.
#[test]
fn a_range_stream_cut_while_its_range_is_claimed_does_not_block_the_rerun() {
    let case = Case::new(4 * PIECE + 5, 71);
    let server = case.serve(None);
    stop_after_a_range(&case, &server, "KILL");
    std::thread::sleep(Duration::from_millis(200));
    let sessions = entries(&case.root().join(".ferry/uploads"));
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = case.root().join(".ferry/uploads").join(&sessions[0]);

    let (data, aside) = (session.join("data"), session.join("data.aside"));
    fs::rename(&data, &aside).expect("move the staged file aside");
    let mkfifo = Command::new("mkfifo").arg(&data).status().expect("run mkfifo");
    assert!(mkfifo.success(), "mkfifo: {mkfifo}");

    // The re-run's range streams reach the claim: the first waits in open(2)
    // (holding the list of claims: the others wait for it).
    let mut rerun = case.put_command(&server.url(), &["-q", "--parallel", "2"]);
    let mut rerun = rerun.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn put");
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads_waiting_on_a_fifo(server.child.id()) == 0 {
        assert!(Instant::now() < deadline, "the server's range claims never reached the staged file");
        std::thread::sleep(Duration::from_millis(5));
    }
    rerun.kill().expect("SIGKILL ferry put");
    let _ = rerun.wait();
    // The server drops the cut calls; then the opens complete (the one
    // waiting, and any after it), and the staged file comes back.
    std::thread::sleep(Duration::from_millis(300));
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        const O_NONBLOCK: i32 = 0o4000; // Linux
        let reader = fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(&data).expect("open the FIFO");
        let deadline = Instant::now() + Duration::from_secs(10);
        while threads_waiting_on_a_fifo(server.child.id()) > 0 {
            assert!(Instant::now() < deadline, "the server's opens did not complete");
            std::thread::sleep(Duration::from_millis(5));
        }
        fs::rename(&aside, &data).expect("put the staged file back");
        std::thread::sleep(Duration::from_millis(100));
        drop(reader);
    }

    // Nobody writes to the session now: a re-run must finish promptly (a
    // healthy one takes about a second; a refused range is retried for ~30 s).
    let output =
        run_within(case.put_command(&server.url(), &["--parallel", "2"]), Duration::from_secs(10), &case, "the re-run");
    case.assert_stored(&output);
}

/// Ctrl-C while the server verifies the staged file (the ranged commit
/// reads the whole file back): the commit goes on without its caller and
/// publishes the file; a re-run must then succeed too, whether it finds the
/// session or not.
#[test]
fn a_put_interrupted_during_its_commit_is_finished_by_a_rerun() {
    let case = Case::new(6 * PIECE, 72);
    let server = case.serve(None);
    let mut put = case.put_command(&server.url(), &["-q", "--parallel", "2"]);
    let mut put = put.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn put");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let whole = journal_ranges(&case.root()) == vec![(0, case.size())];
        let session = entries(&case.root().join(".ferry/uploads")).pop();
        let staged = session.map(|id| case.root().join(".ferry/uploads").join(id).join("data"));
        if whole && staged.is_some_and(|staged| has_open_for_reading(server.child.id(), &staged)) {
            break;
        }
        assert!(put.try_wait().expect("poll put").is_none(), "the upload ended before its commit was seen");
        assert!(Instant::now() < deadline, "no commit within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    signal_process(put.id(), "INT");
    let status = put.wait().expect("reap put");
    assert_eq!(status.code(), Some(130), "Ctrl-C exits 130: {status}");
    // The server's commit runs to its end regardless.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !case.stored("big.bin").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(stored) = fs::read(case.stored("big.bin")) {
        assert_same_bytes(&stored, &case.data, "the file the interrupted commit published");
    }
    let uploads = case.root().join(".ferry/uploads");
    let left: Vec<(String, Vec<String>)> =
        entries(&uploads).into_iter().map(|s| (s.clone(), entries(&uploads.join(s)))).collect();
    let published = case.stored("big.bin").exists();

    let output =
        run_within(case.put_command(&server.url(), &["--parallel", "2"]), Duration::from_secs(20), &case, "the re-run");
    if !output.status.success() {
        let log = case.log_text();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("request refused") || l.contains("ERROR")).collect();
        panic!(
            "the re-run failed ({}): {}\nafter the interrupted commit: file published: {published}; \
             sessions left (id, files): {left:?}\nthe server said: {errors:#?}",
            output.status,
            text(&output.stderr).trim()
        );
    }
    case.assert_stored(&output);
}

/// A file one byte short of two pieces goes as one ordinary stream; one of
/// exactly two pieces is split.
#[test]
fn a_file_under_two_pieces_goes_in_one_stream() {
    let small = Case::new(2 * PIECE - 1, 5);
    let server = small.serve(None);
    let output = small.put(&server, &["--parallel", "4"]);
    small.assert_stored(&output);
    assert!(text(&output.stderr).contains(ONE_STREAM), "{}", text(&output.stderr));
    let log = small.log_text();
    assert_eq!(sessions_created(&log), (0, 1), "one ordinary session: {log}");
    assert_eq!(range_commits(&log), Vec::new());

    let two = Case::new(2 * PIECE, 6);
    let server = two.serve(None);
    let output = two.put(&server, &["--parallel", "4"]);
    two.assert_stored(&output);
    assert!(!text(&output.stderr).contains(ONE_STREAM), "{}", text(&output.stderr));
    let mut sent = range_commits(&two.log_text());
    sent.sort_unstable();
    assert_eq!(sent, pieces(two.size()), "two pieces, two ranges");
}

/// The S3 backend cannot stage ranges: `--parallel` falls back to one
/// stream, and the object is whole.
#[test]
fn an_s3_server_gets_one_stream() {
    let Some(moto) = Moto::start() else { return };
    let bucket = moto.bucket("parallel-put");
    let nanos = std::time::SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let server = support::Server::start_s3(&moto, &format!("s3://{bucket}/parallel-put-{nanos}"));
    let case = Case::new(40 * MIB, 40);
    let url = server.url().to_owned();

    let output = run(case.put_command(&url, &["--parallel", "4"]));
    assert_exit(&output, 0);
    let stderr = text(&output.stderr);
    assert!(stderr.contains(ONE_STREAM), "no fallback to one stream: {stderr}");
    assert_eq!(summary_sha256(&stderr), case.sha256());
    assert_eq!(entries(&case.state()), Vec::<String>::new(), "the session is forgotten");

    let stat = run(client_command(&url, &case.state(), &["stat", "--json", "big.bin"]));
    assert_exit(&stat, 0);
    let stat: Value = serde_json::from_slice(&stat.stdout).expect("stat --json prints JSON");
    assert_eq!(stat["sha256"], case.sha256().as_str());
    assert_eq!(stat["size"], case.size());
    let copy = case.dir.path().join("copy.bin");
    let got = run(client_command(&url, &case.state(), &["get", "-q", "big.bin", copy.to_str().unwrap()]));
    assert_exit(&got, 0);
    assert_same_bytes(&fs::read(&copy).expect("downloaded copy"), &case.data, "the object on S3");
}

/// `--no-clobber` holds for a ranged session: an existing target refuses
/// it before anything is sent, and nothing is remembered.
#[test]
fn parallel_put_no_clobber_refuses_an_existing_file() {
    let case = Case::new(2 * PIECE, 8);
    let server = case.serve(None);
    fs::write(case.stored("big.bin"), b"already here").expect("an existing remote file");
    let output = case.put(&server, &["--parallel", "2", "--no-clobber"]);
    assert_exit(&output, EXIT_EXISTS);
    assert_eq!(fs::read(case.stored("big.bin")).expect("the existing file"), b"already here");
    assert_eq!(entries(&case.root().join(".ferry/uploads")), Vec::<String>::new(), "sessions left");
    assert_eq!(entries(&case.state()), Vec::<String>::new(), "nothing remembered");
}

/// `--parallel` does not go with `-r` or `--no-resume`, and is 1..=64:
/// usage errors, before any connection (the server named does not exist).
#[test]
fn parallel_conflicts_are_usage_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = dir.path().join("f.bin");
    fs::write(&local, b"x").expect("a local file");
    let local = local.to_str().unwrap();
    let state = dir.path().join("state");
    let nowhere = "http://127.0.0.1:1";
    for args in [
        vec!["put", "--parallel", "2", "-r", dir.path().to_str().unwrap(), "tree/"],
        vec!["put", "--parallel", "2", "--recursive", dir.path().to_str().unwrap(), "tree/"],
        vec!["put", "--parallel", "2", "--no-resume", local, "f.bin"],
        vec!["put", "--no-resume", "--parallel", "4", local],
        vec!["put", "--parallel", "0", local],
        vec!["put", "--parallel", "65", local],
    ] {
        let output = run(client_command(nowhere, &state, &args));
        assert_exit(&output, EXIT_USAGE);
        let stderr = text(&output.stderr);
        assert!(stderr.contains("--parallel"), "{args:?}: the error does not name --parallel: {stderr}");
    }
    assert!(!state.exists(), "nothing remembered");
}

// ---------------------------------------------------------------------------
// Server crash points (builds with the `crash-points` feature)
// ---------------------------------------------------------------------------

#[cfg(feature = "crash-points")]
#[path = "parallel_put/crash.rs"]
mod crash;
