//! `ferry put` rides out a server restart on its own: the server is SIGKILLed
//! mid-upload and started again on the same address; the running `ferry put`
//! backs off, reconnects, asks for the committed offset and finishes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{MIB, Server, TIMEOUT, random_bytes};

#[test]
fn put_retries_through_a_server_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let data = random_bytes(256 * MIB, 256);
    let local = dir.path().join("big.bin");
    std::fs::write(&local, &data).expect("local file");

    let mut server = Server::start(&root, None, &[]);
    let addr = server.addr().to_owned();
    let mut put = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["put", "-q"])
        .arg(&local)
        .arg("big.bin")
        .env("FERRY_SERVER", server.url())
        .env("FERRY_STATE_DIR", dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry put");

    // Kill the server once the upload is well under way.
    let deadline = Instant::now() + TIMEOUT;
    while staged_bytes(&root) < 48 * MIB as u64 {
        assert!(put.try_wait().expect("poll put").is_none(), "the upload finished before the server could be killed");
        assert!(Instant::now() < deadline, "the upload never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let _restarted = Server::start_with(&root, &addr, None, &[]);

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = put.try_wait().expect("poll put") {
            break status;
        }
        assert!(Instant::now() < deadline, "ferry put did not finish after the restart");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut put.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(status.success(), "ferry put failed across the restart: {status}: {stderr}");
    assert!(std::fs::read(root.join("big.bin")).expect("stored") == data, "stored bytes differ");
}

/// Bytes in the server's upload sessions so far.
fn staged_bytes(root: &std::path::Path) -> u64 {
    let Ok(sessions) = std::fs::read_dir(root.join(".ferry/uploads")) else { return 0 };
    sessions.flatten().filter_map(|s| std::fs::metadata(s.path().join("data")).ok()).map(|m| m.len()).max().unwrap_or(0)
}

/// SIGTERM: an upload in flight finishes; a download whose reader stalled is
/// cut once the grace period is over; the server exits cleanly.
#[test]
fn sigterm_lets_transfers_finish_within_the_grace_period() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let mut server = Server::start(&root, None, &["--shutdown-grace", "3s"]);
    std::fs::write(root.join("stalled.bin"), vec![7u8; 64 * MIB]).expect("a file to download");
    let data = random_bytes(128 * MIB, 128);
    let local = dir.path().join("up.bin");
    std::fs::write(&local, &data).expect("local file");

    let ferry = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.args(args).env("FERRY_SERVER", server.url()).env("FERRY_STATE_DIR", dir.path().join("state"));
        command.stdin(Stdio::null()).stderr(Stdio::piped());
        command
    };
    // A download that stops being read: it holds a stream open indefinitely.
    let mut stalled = ferry(&["get", "-q", "stalled.bin", "-"]).stdout(Stdio::piped()).spawn().expect("spawn get");
    let mut first = [0u8; 1];
    std::io::Read::read_exact(stalled.stdout.as_mut().expect("stdout"), &mut first).expect("the download started");
    // An upload under way when the signal comes.
    let mut put = ferry(&["put", "-q", "--no-resume", local.to_str().expect("utf-8"), "up.bin"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn put");
    let deadline = Instant::now() + TIMEOUT;
    while staged_bytes(&root) < 16 * MIB as u64 {
        assert!(put.try_wait().expect("poll put").is_none(), "the upload finished before the signal");
        assert!(Instant::now() < deadline, "the upload never got going");
        std::thread::sleep(Duration::from_millis(2));
    }

    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().expect("kill");
    assert!(kill.success());
    let put_status = put.wait().expect("wait for put");
    assert!(put_status.success(), "the upload in flight must finish: {put_status}");
    assert!(std::fs::read(root.join("up.bin")).expect("stored") == data);

    let server_status = server.wait();
    assert!(server_status.success(), "ferry serve exits cleanly after the grace period: {server_status}");
    assert!(signalled.elapsed() < Duration::from_secs(3 + 10), "the stalled download held the server up");
    let _ = stalled.kill();
    let _ = stalled.wait();
}
