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
