//! The harness of `parallel_put.rs`: a `ferry serve` whose log is kept
//! ([`Serve`]), a work directory with its local file ([`Case`]), running
//! the CLI, and reading what the server did: its log, its upload journals,
//! and its threads and open files in /proc.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::Digest as _;
use tempfile::TempDir;

use crate::support::{TIMEOUT, random_bytes, sha256_hex};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// Bytes per piece (and so per range stream).
pub(crate) const PIECE: usize = ferry_client::PIECE as usize;

/// Leaves nothing of the caller's environment that ferry reads.
fn clean_env(command: &mut Command) {
    for var in
        ["FERRY_SERVER", "FERRY_LISTEN", "FERRY_ROOT", "FERRY_STATE_DIR", "FERRY_TOKEN", "FERRY_CRASH_AT", "RUST_LOG"]
    {
        command.env_remove(var);
    }
}

/// A `ferry serve` over a local root, its log appended to a file; killed
/// when dropped.
pub(crate) struct Serve {
    pub(crate) child: Child,
    /// `host:port`.
    pub(crate) addr: String,
    /// Kept open so the server never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Serve {
    /// `ferry serve --listen LISTEN --root ROOT`, dying at `crash_at` if set.
    pub(crate) fn start(root: &Path, log: &Path, listen: &str, crash_at: Option<&str>) -> Self {
        let log = fs::OpenOptions::new().create(true).append(true).open(log).expect("open the server log");
        let mut command = Command::new(FERRY);
        clean_env(&mut command);
        command.args(["serve", "--listen", listen, "--root"]).arg(root);
        command.env("RUST_LOG", "info,ferry_server=debug");
        if let Some(point) = crash_at {
            command.env("FERRY_CRASH_AT", point);
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = command.spawn().expect("spawn ferry serve");
        let stdout = child.stdout.take().expect("the server's stdout is piped");
        // On a thread, so that a server that never prints fails the test instead of hanging it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let _ = tx.send(read.map(|_| (line, reader)));
        });
        let (line, reader) = match rx.recv_timeout(TIMEOUT) {
            Ok(Ok(read)) => read,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ferry serve did not start: {:?}", other.map(|r| r.map(|(line, _)| line)));
            }
        };
        let Some(addr) = line.trim_end().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("expected `listening on ADDR` from ferry serve, got {line:?}");
        };
        Self { child, addr: addr.to_owned(), _stdout: reader }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A work directory: the server's root, its log, the CLI's state dir, and a
/// local file `big.bin` of deterministic random bytes.
pub(crate) struct Case {
    pub(crate) dir: TempDir,
    pub(crate) data: Vec<u8>,
}

impl Case {
    pub(crate) fn new(size: usize, seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = random_bytes(size, seed);
        let case = Self { dir, data };
        fs::write(case.local(), &case.data).expect("write the local file");
        case
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub(crate) fn local(&self) -> PathBuf {
        self.dir.path().join("big.bin")
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub(crate) fn size(&self) -> u64 {
        self.data.len() as u64
    }

    pub(crate) fn sha256(&self) -> String {
        sha256_hex(&self.data)
    }

    /// Where the server keeps `remote`.
    pub(crate) fn stored(&self, remote: &str) -> PathBuf {
        self.root().join(remote)
    }

    pub(crate) fn serve(&self, crash_at: Option<&str>) -> Serve {
        Serve::start(&self.root(), &self.log(), "127.0.0.1:0", crash_at)
    }

    /// The server's log so far.
    pub(crate) fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// `ferry put ARGS… LOCAL big.bin` against `url`, not yet started.
    pub(crate) fn put_command(&self, url: &str, args: &[&str]) -> Command {
        let mut command = client_command(url, &self.state(), &["put"]);
        command.args(args).arg(self.local()).arg("big.bin");
        command
    }

    /// Runs `ferry put ARGS… LOCAL big.bin` to completion.
    pub(crate) fn put(&self, server: &Serve, args: &[&str]) -> Output {
        run(self.put_command(&server.url(), args))
    }

    /// Nothing partial or corrupt at `remote`: absent, or exactly the data.
    #[cfg(feature = "crash-points")]
    #[track_caller]
    pub(crate) fn assert_nothing_partial(&self, remote: &str) {
        if let Ok(stored) = fs::read(self.stored(remote)) {
            assert_same_bytes(&stored, &self.data, "a partial or corrupt file is visible");
        }
    }

    /// The upload finished cleanly: the stored bytes are the local file's,
    /// the summary names its digest, no session is left on the server and
    /// none is remembered.
    #[track_caller]
    pub(crate) fn assert_stored(&self, output: &Output) {
        assert_exit(output, 0);
        assert!(output.stdout.is_empty(), "put wrote to stdout: {}", text(&output.stdout));
        assert_eq!(summary_sha256(&text(&output.stderr)), self.sha256(), "the digest put reported");
        assert_same_bytes(&fs::read(self.stored("big.bin")).expect("the stored file"), &self.data, "stored file");
        assert_eq!(entries(&self.root().join(".ferry/uploads")), Vec::<String>::new(), "sessions left");
        assert_eq!(entries(&self.state()), Vec::<String>::new(), "the session is forgotten");
    }
}

/// A client command (`args[0]` is the subcommand), not yet started.
pub(crate) fn client_command(url: &str, state: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(FERRY);
    clean_env(&mut command);
    command.args(args).env("FERRY_SERVER", url).env("FERRY_STATE_DIR", state);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Runs `command` to completion, output captured.
pub(crate) fn run(mut command: Command) -> Output {
    let what = format!("{command:?}");
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
    wait_output(child, &what)
}

/// Waits for `child` and collects its output, killing it after `TIMEOUT`.
pub(crate) fn wait_output(child: Child, what: &str) -> Output {
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

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
pub(crate) fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "unexpected exit status ({})\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr),
    );
}

/// Compares byte buffers without dumping megabytes into the failure message.
#[track_caller]
pub(crate) fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual != expected {
        let first_difference = actual.iter().zip(expected).position(|(a, e)| a != e);
        panic!("{what}: {} bytes, expected {}; first difference at {first_difference:?}", actual.len(), expected.len());
    }
}

/// The digest in put's summary `uploaded PATH (N bytes, sha256 HEX)`.
#[track_caller]
pub(crate) fn summary_sha256(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| l.starts_with("uploaded "))
        .find_map(|l| l.rsplit_once(", sha256 ")?.1.strip_suffix(')').map(str::to_owned))
        .unwrap_or_else(|| panic!("no upload summary: {stderr:?}"))
}

/// `resuming upload ID with N bytes stored in K ranges`: (ID, N, K).
pub(crate) fn resumed_ranged(stderr: &str) -> Option<(String, u64, usize)> {
    stderr.lines().find_map(|l| {
        let (id, rest) = l.strip_prefix("resuming upload ")?.split_once(" with ")?;
        let (bytes, rest) = rest.split_once(" bytes stored in ")?;
        let ranges = rest.strip_suffix(" ranges")?;
        Some((id.to_owned(), bytes.parse().ok()?, ranges.parse().ok()?))
    })
}

/// Names in `dir` (none if it does not exist), sorted.
pub(crate) fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The committed ranges the upload journals under `root` record. A journal
/// has two 4 KiB slots, each a little-endian u32 length, a JSON record and
/// its SHA-256; the valid slot with the higher `seq` is current (a slot
/// being rewritten may not be valid).
pub(crate) fn journal_ranges(root: &Path) -> Vec<(u64, u64)> {
    let slot_record = |slot: &[u8]| -> Option<Value> {
        let len = u32::from_le_bytes(slot.get(..4)?.try_into().ok()?) as usize;
        let json = slot.get(4..4 + len)?;
        let digest = slot.get(4 + len..4 + len + 32)?;
        if len == 0 || sha2::Sha256::digest(json).as_slice() != digest {
            return None;
        }
        serde_json::from_slice(json).ok()
    };
    let Ok(sessions) = fs::read_dir(root.join(".ferry/uploads")) else { return Vec::new() };
    let mut ranges = Vec::new();
    for session in sessions.flatten() {
        let Ok(journal) = fs::read(session.path().join("journal")) else { continue };
        let current = journal.chunks(4096).filter_map(slot_record).max_by_key(|r| r["seq"].as_u64());
        let Some(current) = current else { continue };
        for range in current["ranges"].as_array().into_iter().flatten() {
            if let (Some(start), Some(end)) = (range[0].as_u64(), range[1].as_u64()) {
                ranges.push((start, end));
            }
        }
    }
    ranges
}

pub(crate) fn total(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(start, end)| end - start).sum()
}

/// The ranges (start, end) the server logged as committed in `log`.
pub(crate) fn range_commits(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter(|l| l.contains("range committed"))
        .map(|line| {
            let field = |name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name)?.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            };
            let offset = field("offset=");
            (offset, offset + field("length="))
        })
        .collect()
}

/// Ranged sessions the server created, and ordinary ones, per its log.
pub(crate) fn sessions_created(log: &str) -> (usize, usize) {
    let ranged = log.matches("ranged upload session created").count();
    (ranged, log.matches("upload session created").count() - ranged)
}

/// The file's pieces, as `upload_parallel` cuts a fresh upload.
pub(crate) fn pieces(size: u64) -> Vec<(u64, u64)> {
    (0..size.div_ceil(PIECE as u64)).map(|i| (i * PIECE as u64, ((i + 1) * PIECE as u64).min(size))).collect()
}

/// Starts `ferry put -q --parallel 2`, and sends it `signal` (`KILL` or
/// `INT`) as soon as the session's journal shows a committed range; returns
/// the bytes the journal showed.
pub(crate) fn stop_after_a_range(case: &Case, server: &Serve, signal: &str) -> u64 {
    let mut put = case.put_command(&server.url(), &["-q", "--parallel", "2"]);
    let mut put = put.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn put");
    let deadline = Instant::now() + TIMEOUT;
    let seen = loop {
        let stored = total(&journal_ranges(&case.root()));
        if stored > 0 {
            break stored;
        }
        assert!(put.try_wait().expect("poll put").is_none(), "the upload ended before a range was seen");
        assert!(Instant::now() < deadline, "no range committed within {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(1));
    };
    signal_process(put.id(), signal);
    let status = put.wait().expect("reap put");
    match signal {
        "INT" => assert_eq!(status.code(), Some(130), "Ctrl-C exits 130: {status}"),
        _ => assert!(!status.success(), "the upload finished before it could be killed"),
    }
    assert!(seen < case.size(), "the journal claims the whole file: {seen}");
    assert!(!case.stored("big.bin").exists(), "nothing visible before the commit");
    seen
}

pub(crate) fn signal_process(pid: u32, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// Threads of process `pid` blocked opening a FIFO that has no reader yet.
pub(crate) fn threads_waiting_on_a_fifo(pid: u32) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter(|t| fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.trim() == "wait_for_partner"))
        .count()
}

/// Whether process `pid` has `path` open for reading (as the ranged commit
/// opens the staged file to verify it; range writers open it write-only).
pub(crate) fn has_open_for_reading(pid: u32, path: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| target == path)
            && fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
                .ok()
                .and_then(|info| {
                    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim().to_owned();
                    u32::from_str_radix(&flags, 8).ok()
                })
                .is_some_and(|flags| flags & 0o3 != 0o1)
    })
}

/// Runs `command`, allowing it `limit`; on overrun kills it and panics with
/// what it printed and the server's refusals.
#[track_caller]
pub(crate) fn run_within(mut command: Command, limit: Duration, case: &Case, what: &str) -> Output {
    let mut child = command.spawn().expect("spawn ferry");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("poll ferry").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect the output");
            let log = case.log_text();
            let refusals: Vec<&str> = log.lines().filter(|l| l.contains("request refused")).collect();
            panic!(
                "{what} did not finish within {limit:?}\nits stderr: {}\nthe server refused: {refusals:#?}",
                text(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect the output")
}
