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
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;
use sha2::Digest as _;
use tempfile::TempDir;

mod support;
use support::{MIB, Moto, TIMEOUT, random_bytes, sha256_hex};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
/// Bytes per piece (and so per range stream).
const PIECE: usize = ferry_client::PIECE as usize;
const EXIT_USAGE: i32 = 2;
const EXIT_EXISTS: i32 = 4;
/// What `ferry put` says when it does not split the file.
const ONE_STREAM: &str = "ferry: sending in one stream";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

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
struct Serve {
    child: Child,
    /// `host:port`.
    addr: String,
    /// Kept open so the server never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Serve {
    /// `ferry serve --listen LISTEN --root ROOT`, dying at `crash_at` if set.
    fn start(root: &Path, log: &Path, listen: &str, crash_at: Option<&str>) -> Self {
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

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(&mut self) {
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
struct Case {
    dir: TempDir,
    data: Vec<u8>,
}

impl Case {
    fn new(size: usize, seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = random_bytes(size, seed);
        let case = Self { dir, data };
        fs::write(case.local(), &case.data).expect("write the local file");
        case
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn local(&self) -> PathBuf {
        self.dir.path().join("big.bin")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn sha256(&self) -> String {
        sha256_hex(&self.data)
    }

    /// Where the server keeps `remote`.
    fn stored(&self, remote: &str) -> PathBuf {
        self.root().join(remote)
    }

    fn serve(&self, crash_at: Option<&str>) -> Serve {
        Serve::start(&self.root(), &self.log(), "127.0.0.1:0", crash_at)
    }

    /// The server's log so far.
    fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// `ferry put ARGS… LOCAL big.bin` against `url`, not yet started.
    fn put_command(&self, url: &str, args: &[&str]) -> Command {
        let mut command = client_command(url, &self.state(), &["put"]);
        command.args(args).arg(self.local()).arg("big.bin");
        command
    }

    /// Runs `ferry put ARGS… LOCAL big.bin` to completion.
    fn put(&self, server: &Serve, args: &[&str]) -> Output {
        run(self.put_command(&server.url(), args))
    }

    /// Nothing partial or corrupt at `remote`: absent, or exactly the data.
    #[cfg(feature = "crash-points")]
    #[track_caller]
    fn assert_nothing_partial(&self, remote: &str) {
        if let Ok(stored) = fs::read(self.stored(remote)) {
            assert_same_bytes(&stored, &self.data, "a partial or corrupt file is visible");
        }
    }

    /// The upload finished cleanly: the stored bytes are the local file's,
    /// the summary names its digest, no session is left on the server and
    /// none is remembered.
    #[track_caller]
    fn assert_stored(&self, output: &Output) {
        assert_exit(output, 0);
        assert!(output.stdout.is_empty(), "put wrote to stdout: {}", text(&output.stdout));
        assert_eq!(summary_sha256(&text(&output.stderr)), self.sha256(), "the digest put reported");
        assert_same_bytes(&fs::read(self.stored("big.bin")).expect("the stored file"), &self.data, "stored file");
        assert_eq!(entries(&self.root().join(".ferry/uploads")), Vec::<String>::new(), "sessions left");
        assert_eq!(entries(&self.state()), Vec::<String>::new(), "the session is forgotten");
    }
}

/// A client command (`args[0]` is the subcommand), not yet started.
fn client_command(url: &str, state: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(FERRY);
    clean_env(&mut command);
    command.args(args).env("FERRY_SERVER", url).env("FERRY_STATE_DIR", state);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Runs `command` to completion, output captured.
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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

/// Compares byte buffers without dumping megabytes into the failure message.
#[track_caller]
fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual != expected {
        let first_difference = actual.iter().zip(expected).position(|(a, e)| a != e);
        panic!("{what}: {} bytes, expected {}; first difference at {first_difference:?}", actual.len(), expected.len());
    }
}

/// The digest in put's summary `uploaded PATH (N bytes, sha256 HEX)`.
#[track_caller]
fn summary_sha256(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| l.starts_with("uploaded "))
        .find_map(|l| l.rsplit_once(", sha256 ")?.1.strip_suffix(')').map(str::to_owned))
        .unwrap_or_else(|| panic!("no upload summary: {stderr:?}"))
}

/// `resuming upload ID with N bytes stored in K ranges`: (ID, N, K).
fn resumed_ranged(stderr: &str) -> Option<(String, u64, usize)> {
    stderr.lines().find_map(|l| {
        let (id, rest) = l.strip_prefix("resuming upload ")?.split_once(" with ")?;
        let (bytes, rest) = rest.split_once(" bytes stored in ")?;
        let ranges = rest.strip_suffix(" ranges")?;
        Some((id.to_owned(), bytes.parse().ok()?, ranges.parse().ok()?))
    })
}

/// Names in `dir` (none if it does not exist), sorted.
fn entries(dir: &Path) -> Vec<String> {
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
fn journal_ranges(root: &Path) -> Vec<(u64, u64)> {
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

fn total(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(start, end)| end - start).sum()
}

/// The ranges (start, end) the server logged as committed in `log`.
fn range_commits(log: &str) -> Vec<(u64, u64)> {
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
fn sessions_created(log: &str) -> (usize, usize) {
    let ranged = log.matches("ranged upload session created").count();
    (ranged, log.matches("upload session created").count() - ranged)
}

/// The file's pieces, as `upload_parallel` cuts a fresh upload.
fn pieces(size: u64) -> Vec<(u64, u64)> {
    (0..size.div_ceil(PIECE as u64)).map(|i| (i * PIECE as u64, ((i + 1) * PIECE as u64).min(size))).collect()
}

/// Starts `ferry put -q --parallel 2`, and sends it `signal` (`KILL` or
/// `INT`) as soon as the session's journal shows a committed range; returns
/// the bytes the journal showed.
fn stop_after_a_range(case: &Case, server: &Serve, signal: &str) -> u64 {
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

fn signal_process(pid: u32, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// Threads of process `pid` blocked opening a FIFO that has no reader yet.
fn threads_waiting_on_a_fifo(pid: u32) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter(|t| fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.trim() == "wait_for_partner"))
        .count()
}

/// Whether process `pid` has `path` open for reading (as the ranged commit
/// opens the staged file to verify it; range writers open it write-only).
fn has_open_for_reading(pid: u32, path: &Path) -> bool {
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
fn run_within(mut command: Command, limit: Duration, case: &Case, what: &str) -> Output {
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
mod crash {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::ExitStatus;

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
}
