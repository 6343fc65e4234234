//! End-to-end tests of the `ferry` binary: a real `ferry serve` on a free
//! loopback port, with its root in a temporary directory, driven by real
//! client processes. Every test starts its own server, so tests share no state
//! and run in parallel.
//!
//! The harness comes first (`TestServer`, `ferry`, `random_bytes` and a few
//! assertions), then the tests, grouped by command.

// A test reports a broken precondition by panicking with a message.
#![allow(clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

mod support;
use support::{MIB, random_bytes};

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

// ---------------------------------------------------------------------------
// put / get
// ---------------------------------------------------------------------------

#[test]
fn put_then_get_round_trips_a_multi_chunk_file() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    // Several 1 MiB chunks and a partial last one.
    let data = random_bytes(3 * MIB + 12_345, 1);
    let local = work.path().join("big.bin");
    fs::write(&local, &data).expect("write the local file");

    let uploaded = put(&server, &local, "nested/dir/big.bin");
    assert_eq!(uploaded.path, "nested/dir/big.bin");
    assert_eq!(uploaded.size, data.len() as u64);

    // The server stores it at the same relative path, parents created.
    let stored = fs::read(server.stored("nested/dir/big.bin")).expect("the upload is under the server root");
    assert_same_bytes(&stored, &data, "stored file");

    // stat agrees with what put reported.
    let stat = stat_json(&server, "nested/dir/big.bin");
    assert_eq!(stat["path"], "nested/dir/big.bin");
    assert_eq!(stat["type"], "file");
    assert_eq!(stat["size"], data.len() as u64);
    assert_eq!(stat["sha256"], uploaded.sha256.as_str());

    let copy = work.path().join("copy.bin");
    let output = ferry(&server, &["get", "nested/dir/big.bin", utf8(&copy)]);
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty(), "get to a file wrote to stdout");
    assert_same_bytes(&fs::read(&copy).expect("get wrote the local copy"), &data, "downloaded copy");
}

#[test]
fn put_and_get_preserve_mtime_and_permissions() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let local = work.path().join("kept.txt");
    fs::write(&local, b"metadata travels with the data\n").expect("write the local file");
    // 2017-07-14T02:40:00.123456789Z: a fixed past time, with nanoseconds to catch truncation.
    let mtime = UNIX_EPOCH + Duration::new(1_500_000_000, 123_456_789);
    let file = fs::File::options().write(true).open(&local).expect("open the local file");
    file.set_modified(mtime).expect("set the local mtime");
    file.set_permissions(fs::Permissions::from_mode(0o640)).expect("set the local mode");
    drop(file);

    put(&server, &local, "kept.txt");
    let stored = fs::metadata(server.stored("kept.txt")).expect("the upload is under the server root");
    assert_eq!(stored.permissions().mode() & 0o777, 0o640, "mode of the stored file");
    assert_eq!(stored.modified().expect("stored mtime"), mtime, "mtime of the stored file");

    let stat = stat_json(&server, "kept.txt");
    assert_eq!(stat["permissions"], "0640");
    assert_eq!(stat["mtime"], "2017-07-14T02:40:00.123456789Z");

    let copy = work.path().join("copy.txt");
    assert_exit(&ferry(&server, &["get", "kept.txt", utf8(&copy)]), 0);
    let restored = fs::metadata(&copy).expect("get wrote the local copy");
    assert_eq!(restored.permissions().mode() & 0o777, 0o640, "mode of the downloaded copy");
    assert_eq!(restored.modified().expect("copy mtime"), mtime, "mtime of the downloaded copy");
}

#[test]
fn dash_reads_stdin_for_put_and_writes_stdout_for_get() {
    let server = TestServer::start();
    let content = b"data from stdin, back out through stdout\n";

    // `... | ferry put - remote.txt`
    let mut command = client_command(&server, &["put", "-", "remote.txt"]);
    let mut child = command.stdin(Stdio::piped()).spawn().expect("spawn ferry put -");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(content).expect("write to ferry put's stdin");
    drop(stdin); // end of input
    let output = wait_output(child, "ferry put -");
    assert_exit(&output, 0);
    let uploaded = parse_uploaded(&text(&output.stderr));
    assert_eq!((uploaded.path.as_str(), uploaded.size), ("remote.txt", content.len() as u64));
    let stored = fs::read(server.stored("remote.txt")).expect("the upload is under the server root");
    assert_same_bytes(&stored, content, "stored file");

    // `ferry get remote.txt -` prints exactly the bytes and nothing else.
    let output = ferry(&server, &["get", "remote.txt", "-"]);
    assert_exit(&output, 0);
    assert_same_bytes(&output.stdout, content, "get - output");
    assert!(output.stderr.is_empty(), "get - wrote to stderr: {}", text(&output.stderr));

    // A range: `--offset 5 --length 4` is "from".
    let output = ferry(&server, &["get", "--offset", "5", "--length", "4", "remote.txt", "-"]);
    assert_exit(&output, 0);
    assert_eq!(text(&output.stdout), "from");

    // An offset alone runs to the end.
    let output = ferry(&server, &["get", "--offset", "16", "remote.txt", "-"]);
    assert_exit(&output, 0);
    assert_same_bytes(&output.stdout, &content[16..], "get --offset 16 output");
}

/// `ferry get big - | head -c 10`: the reader going away is not an error.
#[test]
fn get_to_a_closed_stdout_pipe_exits_0() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    // Far more than a pipe buffer plus the client's write queue, so the writes must hit the closed pipe.
    let data = random_bytes(8 * MIB, 8);
    put_bytes(&server, work.path(), "big.bin", &data);

    let mut child = client_command(&server, &["get", "big.bin", "-"]).spawn().expect("spawn ferry get -");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut head = [0u8; 10];
    stdout.read_exact(&mut head).expect("read the first bytes");
    assert_eq!(head, data[..10], "first bytes of get - output");
    drop(stdout); // like `head` exiting

    let output = wait_output(child, "ferry get big.bin - with its stdout closed");
    assert_exit(&output, 0);
    assert!(output.stderr.is_empty(), "a broken pipe printed an error: {}", text(&output.stderr));
}

/// A client that stops reading must not make the server buffer the file:
/// HTTP/2 flow control and the bounded read-ahead stop the server after a few
/// chunks, so its memory stays far below the file's size.
#[test]
fn a_stalled_download_does_not_grow_server_memory() {
    const FILE: usize = 256 * MIB;
    const BOUND_KIB: u64 = 96 * 1024;
    let server = TestServer::start();
    // Written straight into the root (faster than an upload); zeros are as good as any bytes here.
    let mut file = fs::File::create(server.stored("big.bin")).expect("create the big file");
    let block = vec![0u8; MIB];
    for _ in 0..FILE / MIB {
        file.write_all(&block).expect("write the big file");
    }
    drop(file);

    let mut child = client_command(&server, &["get", "big.bin", "-"]).spawn().expect("spawn ferry get -");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut first = vec![0u8; MIB];
    stdout.read_exact(&mut first).expect("the download starts");
    // Stop reading. A server without backpressure would read the whole file
    // into memory well within this pause; a correct one waits.
    std::thread::sleep(Duration::from_secs(1));
    let peak = server_peak_rss_kib(&server);
    assert!(peak < BOUND_KIB, "server peak RSS {peak} KiB while a client stalled on a {FILE}-byte download");

    // Resuming reading completes the download correctly.
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("read the rest");
    assert_eq!(first.len() + rest.len(), FILE, "bytes received after the stall");
    drop(stdout);
    assert_exit(&wait_output(child, "ferry get big.bin -"), 0);
}

/// The server's peak resident memory (VmHWM) so far.
fn server_peak_rss_kib(server: &TestServer) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", server.child.id())).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmHWM value")
}

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

/// A failed download never leaves a partial file, under the target's name or
/// as a `.NAME.*.ferry-part` temporary beside it.
#[test]
fn failed_get_leaves_no_partial_local_file() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let uploads = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, uploads.path(), "small.txt", b"twelve bytes");
    let target = work.path().join("target.bin");

    // Missing remote: NOT_FOUND.
    let output = ferry(&server, &["get", "missing.bin", utf8(&target)]);
    assert_exit(&output, EXIT_NOT_FOUND);
    assert_eq!(dir_entries(work.path()), Vec::<String>::new(), "files left behind by a failed get");

    // A range past the end: refused once the temporary file exists.
    let output = ferry(&server, &["get", "--offset", "100", "small.txt", utf8(&target)]);
    assert_exit(&output, EXIT_OTHER);
    assert!(error_line(&output).contains("OUT_OF_RANGE"), "{}", text(&output.stderr));
    assert_eq!(dir_entries(work.path()), Vec::<String>::new(), "files left behind by a failed get");
}

// ---------------------------------------------------------------------------
// Exit codes and error messages
// ---------------------------------------------------------------------------

#[test]
fn missing_remote_paths_exit_3() {
    let server = TestServer::start();
    let commands: [&[&str]; 4] =
        [&["get", "no/such/file", "-"], &["stat", "no/such/file"], &["ls", "no/such/dir"], &["rm", "no/such/file"]];
    for args in commands {
        let output = ferry(&server, args);
        assert_exit(&output, EXIT_NOT_FOUND);
        let line = error_line(&output);
        assert!(line.contains("NOT_FOUND"), "ferry {args:?}: {line}");
        assert!(output.stdout.is_empty(), "ferry {args:?} wrote to stdout: {}", text(&output.stdout));
    }
}

#[test]
fn put_no_clobber_onto_an_existing_file_exits_4() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let original = work.path().join("original.txt");
    let replacement = work.path().join("replacement.txt");
    fs::write(&original, b"original").expect("write the local file");
    fs::write(&replacement, b"replacement").expect("write the local file");
    put(&server, &original, "file.txt");

    let output = ferry(&server, &["put", "--no-clobber", utf8(&replacement), "file.txt"]);
    assert_exit(&output, EXIT_EXISTS);
    assert!(error_line(&output).contains("ALREADY_EXISTS"), "{}", text(&output.stderr));
    assert_eq!(fs::read(server.stored("file.txt")).expect("read the stored file"), b"original");

    // Without --no-clobber the same upload replaces the file.
    put(&server, &replacement, "file.txt");
    assert_eq!(fs::read(server.stored("file.txt")).expect("read the stored file"), b"replacement");
}

#[test]
fn get_replaces_an_existing_local_file_only_with_force() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let uploads = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, uploads.path(), "remote.txt", b"from the server");
    let local = work.path().join("local.txt");
    fs::write(&local, b"precious local data").expect("write the local file");

    let output = ferry(&server, &["get", "remote.txt", utf8(&local)]);
    assert_exit(&output, EXIT_EXISTS);
    let line = error_line(&output);
    assert!(line.contains("already exists") && line.contains("--force"), "{line}");
    assert_eq!(fs::read(&local).expect("read the local file"), b"precious local data");
    assert_eq!(dir_entries(work.path()), ["local.txt"], "a refused get left files behind");

    let output = ferry(&server, &["get", "--force", "remote.txt", utf8(&local)]);
    assert_exit(&output, 0);
    assert_eq!(fs::read(&local).expect("read the local file"), b"from the server");
    assert_eq!(dir_entries(work.path()), ["local.txt"], "get --force left files behind");
}

#[test]
fn unreachable_server_exits_6() {
    let url = format!("http://127.0.0.1:{}", unused_port());
    let url = url.as_str();
    for args in [&["stat", "--server", url, "x"][..], &["ls", "--server", url], &["get", "--server", url, "x", "-"]] {
        let mut command = ferry_command();
        command.args(args);
        let output = run(command);
        assert_exit(&output, EXIT_UNAVAILABLE);
        let line = error_line(&output);
        assert!(line.contains(url), "the error should name the server: {line}");
    }
}

#[test]
fn bad_flags_and_arguments_exit_2() {
    // clap rejects these before any connection is attempted.
    for args in [
        &["put", "--no-such-flag", "x"][..],
        &["get"],
        &["frobnicate"],
        &["put", "--chunk-size", "0", "x"],
        &["get", "--offset", "minus-one", "x", "-"],
        &["serve", "--listen", "not-an-address"],
    ] {
        let mut command = ferry_command();
        command.args(args);
        let output = run(command);
        assert_exit(&output, EXIT_USAGE);
        assert!(output.stdout.is_empty(), "ferry {args:?} wrote to stdout: {}", text(&output.stdout));
        assert!(text(&output.stderr).contains("error"), "ferry {args:?}: no usage error: {}", text(&output.stderr));
    }
}

#[test]
fn paths_escaping_the_root_are_refused() {
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("create a work directory");
    let local = work.path().join("x");
    fs::write(&local, b"must not leave the root").expect("write the local file");

    let output = ferry(&server, &["put", utf8(&local), "../x"]);
    assert_exit(&output, EXIT_OTHER);
    let line = error_line(&output);
    assert!(line.contains("invalid path") && line.contains("'..'"), "{line}");
    assert!(line.contains("INVALID_ARGUMENT"), "{line}");
    // `../x` from the root is `dir/x`, beside the root.
    assert!(!server.dir.path().join("x").exists(), "put ../x wrote outside the root");

    let output = ferry(&server, &["put", utf8(&local), "/tmp/x"]);
    assert_exit(&output, EXIT_OTHER);
    assert!(error_line(&output).contains("must be relative"), "{}", text(&output.stderr));

    for args in [&["get", "../x", "-"][..], &["stat", "a/../../x"], &["rm", "../root"], &["ls", ".."]] {
        let output = ferry(&server, args);
        assert_exit(&output, EXIT_OTHER);
        let line = error_line(&output);
        assert!(line.contains("invalid path"), "ferry {args:?}: {line}");
    }
    assert!(server.root.is_dir(), "rm ../root removed the root");
}

// ---------------------------------------------------------------------------
// ls
// ---------------------------------------------------------------------------

/// Files uploaded by [`populate`], with their contents.
const TREE: [(&str, &[u8]); 3] =
    [("a.txt", b"alpha\n"), ("dir/b.txt", b"bravo, a little longer\n"), ("dir/sub/c.txt", b"charlie\n")];

/// Uploads [`TREE`] and makes an empty directory beside it; returns each
/// file's upload summary in `TREE` order.
fn populate(server: &TestServer) -> Vec<Uploaded> {
    let sources = tempfile::tempdir().expect("create a directory for upload sources");
    let uploaded = TREE.iter().map(|(remote, content)| put_bytes(server, sources.path(), remote, content)).collect();
    // Made directly in the root: ferry creates directories only as parents of files.
    fs::create_dir(server.stored("empty")).expect("create an empty directory in the root");
    uploaded
}

#[test]
fn ls_marks_directories_with_a_trailing_slash() {
    let server = TestServer::start();
    populate(&server);

    // Sorted; the server's own `.ferry` directory is never listed.
    let output = ferry(&server, &["ls"]);
    assert_exit(&output, 0);
    assert_eq!(stdout_lines(&output), ["a.txt", "dir/", "empty/"]);

    // A subdirectory lists root-relative paths, one level only.
    let output = ferry(&server, &["ls", "dir"]);
    assert_exit(&output, 0);
    assert_eq!(stdout_lines(&output), ["dir/b.txt", "dir/sub/"]);

    let output = ferry(&server, &["ls", "empty"]);
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty(), "an empty directory listed {:?}", text(&output.stdout));
}

#[test]
fn ls_recursive_lists_nested_files() {
    let server = TestServer::start();
    populate(&server);

    let output = ferry(&server, &["ls", "-r"]);
    assert_exit(&output, 0);
    assert_eq!(stdout_lines(&output), ["a.txt", "dir/", "dir/b.txt", "dir/sub/", "dir/sub/c.txt", "empty/"]);

    let output = ferry(&server, &["ls", "--recursive", "dir"]);
    assert_exit(&output, 0);
    assert_eq!(stdout_lines(&output), ["dir/b.txt", "dir/sub/", "dir/sub/c.txt"]);
}

#[test]
fn ls_json_prints_one_object_per_line() {
    let server = TestServer::start();
    let uploaded = populate(&server);

    let output = ferry(&server, &["ls", "-r", "--json"]);
    assert_exit(&output, 0);
    let entries: Vec<Value> = stdout_lines(&output)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object: {line:?}: {e}")))
        .collect();
    let paths: Vec<&str> = entries.iter().map(|e| e["path"].as_str().expect("path is a string")).collect();
    assert_eq!(paths, ["a.txt", "dir", "dir/b.txt", "dir/sub", "dir/sub/c.txt", "empty"]);

    for entry in &entries {
        let object = entry.as_object().expect("each line is a JSON object");
        let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["mtime", "path", "permissions", "sha256", "size", "type"], "{entry}");

        let permissions = entry["permissions"].as_str().expect("permissions is a string");
        assert!(
            permissions.len() == 4 && permissions.bytes().all(|b| (b'0'..=b'7').contains(&b)),
            "permissions should be 4 octal digits: {entry}"
        );
        let mtime = entry["mtime"].as_str().expect("mtime is a string");
        assert!(mtime.contains('T') && mtime.ends_with('Z'), "mtime should be RFC 3339 UTC: {entry}");

        let path = entry["path"].as_str().expect("path is a string");
        match TREE.iter().position(|(remote, _)| *remote == path) {
            Some(i) => {
                assert_eq!(entry["type"], "file", "{entry}");
                assert_eq!(entry["size"], TREE[i].1.len() as u64, "{entry}");
                assert_eq!(entry["sha256"], uploaded[i].sha256.as_str(), "{entry}");
            }
            None => {
                assert_eq!(entry["type"], "dir", "{entry}");
                assert_eq!(entry["sha256"], Value::Null, "{entry}");
            }
        }
    }
}

#[test]
fn ls_long_shows_type_permissions_size_and_name() {
    let server = TestServer::start();
    populate(&server);

    let output = ferry(&server, &["ls", "-l"]);
    assert_exit(&output, 0);
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 3, "{lines:?}");
    // PERMISSIONS SIZE MTIME NAME
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split_whitespace().collect()).collect();
    for (line, fields) in lines.iter().zip(&fields) {
        assert_eq!(fields.len(), 4, "expected `PERMS SIZE MTIME NAME`: {line:?}");
    }
    assert!(lines[0].starts_with("-rw"), "{:?}", lines[0]);
    assert_eq!(fields[0][1], TREE[0].1.len().to_string(), "{:?}", lines[0]);
    assert_eq!(fields[0][3], "a.txt");
    assert!(lines[1].starts_with('d'), "{:?}", lines[1]);
    assert_eq!(fields[1][3], "dir/");
    assert!(lines[2].starts_with('d'), "{:?}", lines[2]);
    assert_eq!(fields[2][3], "empty/");
}

// ---------------------------------------------------------------------------
// rm
// ---------------------------------------------------------------------------

#[test]
fn rm_removes_a_file() {
    let server = TestServer::start();
    let sources = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, sources.path(), "doomed.txt", b"short-lived");

    let output = ferry(&server, &["rm", "doomed.txt"]);
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty() && output.stderr.is_empty(), "rm printed something: {output:?}");
    assert!(!server.stored("doomed.txt").exists(), "the file is still under the root");
    assert_exit(&ferry(&server, &["stat", "doomed.txt"]), EXIT_NOT_FOUND);
}

#[test]
fn rm_refuses_a_non_empty_directory() {
    let server = TestServer::start();
    let sources = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, sources.path(), "dir/keep.txt", b"still here");

    let output = ferry(&server, &["rm", "dir"]);
    assert_exit(&output, EXIT_OTHER);
    assert!(error_line(&output).contains("FAILED_PRECONDITION"), "{}", text(&output.stderr));
    assert_eq!(fs::read(server.stored("dir/keep.txt")).expect("the file survives"), b"still here");
}

#[test]
fn rm_removes_an_empty_directory() {
    let server = TestServer::start();
    let sources = tempfile::tempdir().expect("create a directory for upload sources");
    put_bytes(&server, sources.path(), "dir/only.txt", b"the last file");

    // Emptied through ferry, then removed through ferry.
    assert_exit(&ferry(&server, &["rm", "dir/only.txt"]), 0);
    assert_eq!(dir_entries(&server.stored("dir")), Vec::<String>::new());
    assert_exit(&ferry(&server, &["rm", "dir"]), 0);
    assert!(!server.stored("dir").exists(), "the directory is still under the root");
    assert_exit(&ferry(&server, &["stat", "dir"]), EXIT_NOT_FOUND);
}

// ---------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------

#[test]
fn second_server_on_the_same_root_is_refused() {
    let server = TestServer::start();

    let mut second = serve_command(&server.root);
    second.stderr(Stdio::piped());
    let output = run(second);
    assert!(!output.status.success(), "a second server started on the same root");
    assert!(output.stdout.is_empty(), "the second server printed {:?}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("another ferry server"), "unexpected error: {stderr}");

    // The first server is unaffected.
    assert_exit(&ferry(&server, &["ls"]), 0);
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let mut server = TestServer::start();
    // A completed request shows the server is serving, shutdown handling included.
    assert_exit(&ferry(&server, &["ls"]), 0);

    let status = server.terminate();
    assert!(status.success(), "ferry serve exited with {status} on SIGTERM");
    // Gone for good: the port no longer answers.
    assert_exit(&ferry(&server, &["ls"]), EXIT_UNAVAILABLE);
}

/// `listening on ADDR` is the readiness signal, so a supervisor may stop the
/// server right after it. Before the handlers were registered ahead of that
/// line, each attempt lost the race about half the time; ten attempts catch a
/// regression almost surely.
#[test]
fn serve_stops_cleanly_on_sigterm_right_after_startup() {
    for attempt in 1..=10 {
        let mut server = TestServer::start();
        let status = server.terminate();
        assert!(status.success(), "attempt {attempt}: ferry serve exited with {status} on SIGTERM");
    }
}
