//! What the process-level tests share: a `ferry serve` child process over a
//! root, and deterministic test data.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

pub const MIB: usize = 1024 * 1024;
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A `ferry serve` process over a root, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://ADDR`, or `None` if the server died before listening.
    pub url: Option<String>,
}

impl Server {
    /// `ferry serve --root ROOT --listen LISTEN EXTRA…`; `crash_at` sets
    /// `FERRY_CRASH_AT` (effective only in builds with the crash points).
    pub fn start_with(root: &Path, listen: &str, crash_at: Option<&str>, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.args(["serve", "--listen", listen, "--root"]).arg(root).args(extra);
        command.env_remove("FERRY_CRASH_AT").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        if let Some(point) = crash_at {
            command.env("FERRY_CRASH_AT", point);
        }
        let mut child = command.spawn().expect("spawn ferry serve");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let url = line.trim().strip_prefix("listening on ").map(|addr| format!("http://{addr}"));
        Self { child, url }
    }

    /// A server on a free loopback port.
    pub fn start(root: &Path, crash_at: Option<&str>, extra: &[&str]) -> Self {
        Self::start_with(root, "127.0.0.1:0", crash_at, extra)
    }

    pub fn url(&self) -> &str {
        self.url.as_deref().expect("the server is listening")
    }

    /// `host:port` it listens on.
    pub fn addr(&self) -> &str {
        self.url().trim_start_matches("http://")
    }

    /// Waits for the process to end on its own.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll ferry serve") {
                return status;
            }
            assert!(Instant::now() < deadline, "ferry serve did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deterministic, incompressible bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}
