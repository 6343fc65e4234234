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

    /// A server over `s3://BUCKET/PREFIX` on moto, on a free loopback port.
    pub fn start_s3(moto: &Moto, storage: &str) -> Self {
        Self::start_s3_with(moto, storage, &[])
    }

    pub fn start_s3_with(moto: &Moto, storage: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--storage", storage, "--s3-endpoint", &moto.endpoint]);
        command.args(extra);
        command.envs(moto.env()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
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

/// An S3 server for the tests: the one named by `FERRY_TEST_S3_ENDPOINT`
/// (with its bucket `FERRY_TEST_S3_BUCKET` and the AWS_* credentials of the
/// environment: `eval "$(scripts/ceph-rgw.sh start)"` sets all of them), or
/// else a moto server (Python `moto[server]`, in memory) on a free loopback
/// port, killed when dropped. `None` (after saying SKIPPED) when neither is
/// available and `FERRY_REQUIRE_S3` is unset; scripts/test.sh installs moto
/// in target/py-test-env and sets `FERRY_REQUIRE_S3=1`.
pub struct Moto {
    child: Option<Child>,
    pub endpoint: String,
    /// An existing bucket to use instead of creating one (external servers).
    pub bucket: Option<String>,
}

impl Moto {
    pub fn start() -> Option<Self> {
        if let (Ok(endpoint), Ok(bucket)) =
            (std::env::var("FERRY_TEST_S3_ENDPOINT"), std::env::var("FERRY_TEST_S3_BUCKET"))
        {
            return Some(Self { child: None, endpoint, bucket: Some(bucket) });
        }
        let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-test-env/bin/moto_server");
        let binary = std::env::var_os("FERRY_MOTO_SERVER").map(std::path::PathBuf::from).unwrap_or(default);
        if !binary.exists() {
            assert!(
                std::env::var_os("FERRY_REQUIRE_S3").is_none(),
                "no moto_server at {} (FERRY_REQUIRE_S3 is set)",
                binary.display()
            );
            eprintln!("SKIPPED: no moto_server (run scripts/test.sh, or set FERRY_MOTO_SERVER)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Some(Self::spawn(&binary, port))
    }

    /// A new moto on the port a stopped one used (moto keeps nothing).
    pub fn restart_at(endpoint: &str) -> Self {
        let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-test-env/bin/moto_server");
        let binary = std::env::var_os("FERRY_MOTO_SERVER").map(std::path::PathBuf::from).unwrap_or(default);
        let port = endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
        Self::spawn(&binary, port)
    }

    /// Stops a moto this test started.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(binary: &Path, port: u16) -> Self {
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let moto = Self { child: Some(child), endpoint: format!("http://127.0.0.1:{port}"), bucket: None };
        let deadline = Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// A bucket for a test: `name`, created (moto takes unsigned requests),
    /// or the external server's existing one.
    pub fn bucket(&self, name: &str) -> String {
        match &self.bucket {
            Some(bucket) => bucket.clone(),
            None => {
                self.create_bucket(name);
                name.to_owned()
            }
        }
    }

    fn create_bucket(&self, name: &str) {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to moto");
        write!(stream, "PUT /{name} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "creating bucket {name}: {response}");
    }

    /// The environment `ferry serve --storage s3://…` needs to reach it
    /// (an external server's credentials come from the test's environment).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self.child {
            None => Vec::new(),
            Some(_) => vec![
                ("AWS_ACCESS_KEY_ID", "ferry-test".into()),
                ("AWS_SECRET_ACCESS_KEY", "ferry-test".into()),
                ("AWS_REGION", "us-east-1".into()),
            ],
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
