//! End-to-end tests of the `ferry` binary: a real `ferry serve` on a free
//! loopback port, with its root in a temporary directory, driven by real
//! client processes. Every test starts its own server, so tests share no state
//! and run in parallel.
//!
//! This file is the harness (`TestServer`, `ferry`, `random_bytes` and a few
//! assertions); the tests are in `cli/`, grouped by command: `put_get.rs`,
//! `resume.rs` (put and get killed and run again), `exit_codes.rs` (exit
//! codes and error messages), `ls.rs`, `rm.rs` and `serve.rs`.

// A test reports a broken precondition by panicking with a message.
#![allow(clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

mod support;
use support::{MIB, random_bytes};

/// `ferry put` and `ferry get`.
#[path = "cli/put_get.rs"]
mod put_get;

/// `ferry put` and `ferry get` killed and run again.
#[path = "cli/resume.rs"]
mod resume;

/// Exit codes and error messages.
#[path = "cli/exit_codes.rs"]
mod exit_codes;

/// `ferry ls`.
#[path = "cli/ls.rs"]
mod ls;

/// `ferry rm`.
#[path = "cli/rm.rs"]
mod rm;

/// `ferry serve`.
#[path = "cli/serve.rs"]
mod serve;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Longest any ferry process may take before a test gives up on it, so a hang
/// fails the test instead of stalling the whole run.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Exit codes, from `EXIT_CODES_HELP` in `src/cli.rs`.
const EXIT_OTHER: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_NOT_FOUND: i32 = 3;
const EXIT_EXISTS: i32 = 4;
const EXIT_UNAVAILABLE: i32 = 6;

/// A `ferry` command whose behaviour cannot depend on the caller's environment.
fn ferry_command() -> Command {
    let mut command = Command::new(FERRY);
    for var in ["FERRY_SERVER", "FERRY_LISTEN", "FERRY_ROOT", "FERRY_STATE_DIR", "RUST_LOG"] {
        command.env_remove(var);
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// `ferry serve` on a free loopback port. Logs are discarded; stdout carries
/// the one `listening on ADDR` line.
fn serve_command(root: &Path) -> Command {
    let mut command = ferry_command();
    command.args(["serve", "--listen", "127.0.0.1:0", "--root"]).arg(root).stderr(Stdio::null());
    command
}

/// A running `ferry serve`, killed when dropped.
struct TestServer {
    child: Child,
    /// `http://127.0.0.1:PORT`, as the clients take it.
    url: String,
    /// The served directory: `dir/root`, so that a path escaping the root
    /// would land in `dir`, where a test can look for it.
    root: PathBuf,
    dir: TempDir,
    /// The read end of the server's stdout, kept open so the server never
    /// writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl TestServer {
    /// Starts a server on a fresh root (which `ferry serve` creates) and waits
    /// for its `listening on` line: once printed, the port is bound.
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("create the server's temporary directory");
        let root = dir.path().join("root");
        let mut child = serve_command(&root).spawn().expect("spawn ferry serve");
        let stdout = child.stdout.take().expect("the server's stdout is piped");

        // Read the line on a thread so a server that never prints fails the test instead of hanging it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let _ = tx.send(read.map(|_| (line, reader)));
        });
        let (line, reader) = match rx.recv_timeout(TIMEOUT) {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                let _ = child.kill();
                panic!("cannot read the server's stdout: {e}");
            }
            Err(_) => {
                let _ = child.kill();
                panic!("ferry serve printed nothing within {TIMEOUT:?}");
            }
        };
        let Some(addr) = line.trim_end().strip_prefix("listening on ") else {
            let _ = child.kill();
            let status = child.wait();
            panic!("expected `listening on ADDR` from ferry serve, got {line:?} (server: {status:?})");
        };
        let url = format!("http://{addr}");
        Self { child, url, root, dir, _stdout: reader }
    }

    /// Where the server keeps the file at `remote`.
    fn stored(&self, remote: &str) -> PathBuf {
        self.root.join(remote)
    }

    /// Sends SIGTERM and waits for the server to exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed: {kill}");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server process") {
                return status;
            }
            assert!(Instant::now() < deadline, "ferry serve still running {TIMEOUT:?} after SIGTERM");
            // Polling for the exit only: the server has no way to tell us it is stopping.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client command (`args[0]` is the subcommand) aimed at `server` through
/// `FERRY_SERVER`, not yet started.
fn client_command(server: &TestServer, args: &[&str]) -> Command {
    let mut command = ferry_command();
    // Remembered upload sessions go to the test's directory, not the user's.
    command.args(args).env("FERRY_SERVER", &server.url).env("FERRY_STATE_DIR", server.dir.path().join("state"));
    command
}

/// Runs a client command against `server` and returns its output.
fn ferry(server: &TestServer, args: &[&str]) -> Output {
    run(client_command(server, args))
}

/// Runs `command` to completion, stdin empty, stdout and stderr captured.
fn run(mut command: Command) -> Output {
    let what = format!("{command:?}");
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
    wait_output(child, &what)
}

/// Waits for `child` and collects its output, killing it after `TIMEOUT`.
fn wait_output(child: Child, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(output) => output.unwrap_or_else(|e| panic!("cannot collect the output of {what}: {e}")),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{what} did not finish within {TIMEOUT:?}");
        }
    }
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing what the process printed when it differs.
#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "unexpected exit status ({})\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr),
    );
}

/// Asserts that a failed command reported its error as exactly one line
/// starting with `ferry: `, and returns that line.
#[track_caller]
fn error_line(output: &Output) -> String {
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line error on stderr, got {stderr:?}");
    assert!(lines[0].starts_with("ferry: "), "error line does not start with `ferry: `: {stderr:?}");
    lines[0].to_owned()
}

/// Compares byte buffers without dumping megabytes into the failure message.
#[track_caller]
fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual != expected {
        let first_difference = actual.iter().zip(expected).position(|(a, e)| a != e);
        panic!("{what}: {} bytes, expected {}; first difference at {first_difference:?}", actual.len(), expected.len());
    }
}

/// The summary `ferry put` prints on stderr: `uploaded PATH (N bytes, sha256 HEX)`.
#[derive(Debug)]
struct Uploaded {
    path: String,
    size: u64,
    sha256: String,
}

/// Uploads `local` to `remote`, asserting success; returns the parsed summary.
#[track_caller]
fn put(server: &TestServer, local: &Path, remote: &str) -> Uploaded {
    let output = ferry(server, &["put", utf8(local), remote]);
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty(), "put wrote to stdout: {}", text(&output.stdout));
    parse_uploaded(&text(&output.stderr))
}

/// Writes `content` to a file under `dir` and uploads it to `remote`.
#[track_caller]
fn put_bytes(server: &TestServer, dir: &Path, remote: &str, content: &[u8]) -> Uploaded {
    let local = dir.join(remote.replace('/', "_"));
    fs::write(&local, content).expect("write the local file");
    put(server, &local, remote)
}

#[track_caller]
fn parse_uploaded(stderr: &str) -> Uploaded {
    let line = stderr.strip_suffix('\n').unwrap_or(stderr);
    let parsed = (|| {
        assert!(!line.contains('\n'), "put printed more than its summary line: {stderr:?}");
        let (path, details) = line.strip_prefix("uploaded ")?.rsplit_once(" (")?;
        let (size, sha256) = details.strip_suffix(')')?.split_once(" bytes, sha256 ")?;
        Some(Uploaded { path: path.to_owned(), size: size.parse().ok()?, sha256: sha256.to_owned() })
    })();
    let uploaded = parsed.unwrap_or_else(|| panic!("not an upload summary: {stderr:?}"));
    assert!(is_sha256_hex(&uploaded.sha256), "not a SHA-256 digest: {:?}", uploaded.sha256);
    uploaded
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `ferry stat --json PATH`, parsed.
#[track_caller]
fn stat_json(server: &TestServer, remote: &str) -> Value {
    let output = ferry(server, &["stat", "--json", remote]);
    assert_exit(&output, 0);
    serde_json::from_slice(&output.stdout).expect("stat --json prints one JSON object")
}

/// stdout split into lines.
fn stdout_lines(output: &Output) -> Vec<String> {
    text(&output.stdout).lines().map(str::to_owned).collect()
}

/// Names in `dir`, sorted.
fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read the directory")
        .map(|entry| entry.expect("read a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A port on 127.0.0.1 that nothing listens on: bound, read, released.
fn unused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("read the bound address").port()
}
