//! `ferry put` and `ferry get` killed mid-transfer and run again: each
//! continues where the first left off (the server's committed offset, the
//! partial file beside the target) instead of starting over.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    MIB, TIMEOUT, TestServer, assert_exit, assert_same_bytes, client_command, dir_entries, ferry, random_bytes, run,
    text, utf8,
};

/// `ferry put` killed mid-upload and run again continues where the server's
/// committed offset is, instead of starting over.
#[test]
fn put_resumes_after_the_cli_itself_was_killed() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let data = random_bytes(320 * MIB, 320);
    let local = work.path().join("big.bin");
    fs::write(&local, &data).expect("write the local file");

    let mut first = client_command(&server, &["put", "-q", utf8(&local), "big.bin"]).spawn().expect("spawn put");
    // Kill it once the server has made some of it durable (one checkpoint).
    let deadline = Instant::now() + TIMEOUT;
    while committed_in_journal(&server) < 32 * MIB as u64 {
        assert!(first.try_wait().expect("poll put").is_none(), "the upload finished before it could be killed");
        assert!(Instant::now() < deadline, "no checkpoint within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().expect("SIGKILL ferry put");
    let _ = first.wait();
    assert!(!server.stored("big.bin").exists(), "nothing visible before the upload completes");

    let second = ferry(&server, &["put", utf8(&local), "big.bin"]);
    assert_exit(&second, 0);
    let stderr = text(&second.stderr);
    let resumed_at: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("resuming upload ").and_then(|rest| rest.rsplit(' ').next()?.parse().ok()))
        .unwrap_or_else(|| panic!("the second put did not resume: {stderr}"));
    assert!(resumed_at >= 32 * MIB as u64, "resumed at byte {resumed_at}");
    assert_same_bytes(&fs::read(server.stored("big.bin")).expect("stored file"), &data, "resumed upload");
    assert_eq!(dir_entries(&server.dir.path().join("state")), Vec::<String>::new(), "the session is forgotten");
}

/// `ferry get` killed mid-download and run again continues from the partial
/// file it left beside the target, verifies the whole, and cleans up.
#[test]
fn get_resumes_after_the_cli_itself_was_killed() {
    let server = TestServer::start();
    let data = random_bytes(320 * MIB, 321);
    fs::write(server.stored("big.bin"), &data).expect("write the remote file");
    // An upload-like first read caches the digest, as for any file ferry stored.
    assert_exit(&ferry(&server, &["stat", "big.bin"]), 0);
    assert_exit(
        &run({
            let mut c = client_command(&server, &["get", "-q", "big.bin", "-"]);
            c.stdout(Stdio::null());
            c
        }),
        0,
    );

    let work = tempfile::tempdir().expect("create a work directory");
    let target = work.path().join("copy.bin");
    let mut first = client_command(&server, &["get", "-q", "big.bin", utf8(&target)]).spawn().expect("spawn get");
    let deadline = Instant::now() + TIMEOUT;
    while part_file_len(work.path()) < 64 * MIB as u64 {
        assert!(first.try_wait().expect("poll get").is_none(), "the download finished before it could be killed");
        assert!(Instant::now() < deadline, "the partial download never grew");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().expect("SIGKILL ferry get");
    let _ = first.wait();
    assert!(!target.exists(), "nothing under the target name before the download is verified");

    let second = ferry(&server, &["get", "big.bin", utf8(&target)]);
    assert_exit(&second, 0);
    let stderr = text(&second.stderr);
    let resumed_at: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("resuming download at byte ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the second get did not resume: {stderr}"));
    assert!(resumed_at >= 64 * MIB as u64, "resumed at byte {resumed_at}");
    assert_same_bytes(&fs::read(&target).expect("downloaded file"), &data, "resumed download");
    assert_eq!(dir_entries(work.path()), vec!["copy.bin".to_owned()], "the partial file is gone");
}

/// The size of the `.NAME.*.ferry-part` file in `dir`, if any.
fn part_file_len(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ferry-part"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// The largest committed offset in any upload journal on the server. A
/// journal holds two 4 KiB slots, each a little-endian u32 length and a JSON
/// record (then its digest); a slot being rewritten may not parse.
fn committed_in_journal(server: &TestServer) -> u64 {
    let Ok(sessions) = fs::read_dir(server.root.join(".ferry/uploads")) else { return 0 };
    let record = |slot: &[u8]| -> Option<u64> {
        let len = u32::from_le_bytes(slot.get(..4)?.try_into().ok()?) as usize;
        serde_json::from_slice::<Value>(slot.get(4..4 + len)?).ok()?.get("committed")?.as_u64()
    };
    sessions
        .flatten()
        .filter_map(|s| fs::read(s.path().join("journal")).ok())
        .flat_map(|journal| journal.chunks(4096).filter_map(record).collect::<Vec<_>>())
        .max()
        .unwrap_or(0)
}
