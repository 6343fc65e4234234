//! The tree tests' harness: a `ferry serve` over `DIR/root` and a client
//! environment isolated in `DIR`, tree snapshots, and output parsing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use crate::support::{Server, sha256_hex};

pub(crate) const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Longest any client process may take before the test gives up on it.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);

/// A server over `dir/root`, and a client environment isolated in `dir`.
pub(crate) struct Env {
    pub(crate) server: Server,
    pub(crate) dir: TempDir,
    pub(crate) root: PathBuf,
}

impl Env {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().expect("create the test's temporary directory");
        let root = dir.path().join("root");
        let server = Server::start(&root, None, &[]);
        assert!(server.url.is_some(), "ferry serve did not start");
        assert!(root.is_dir(), "ferry serve did not create its root");
        Self { server, dir, root }
    }

    /// A client environment against `server`, which serves something other
    /// than a local root (S3): `root` stays empty.
    pub(crate) fn with_server(server: Server) -> Self {
        let dir = tempfile::tempdir().expect("create the test's temporary directory");
        let root = dir.path().join("root");
        Self { server, dir, root }
    }

    /// A scratch directory for local trees, inside the test's directory.
    pub(crate) fn local(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::create_dir_all(&path).expect("create a local directory");
        path
    }

    /// `ferry --server URL ARGS…`, with nothing from the caller's environment.
    pub(crate) fn ferry(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        let what = format!("{command:?}");
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
        wait_output(child, &what)
    }

    /// The command [`Env::ferry`] runs, to spawn and handle by hand.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(FERRY);
        for var in [
            "FERRY_SERVER",
            "FERRY_TOKEN",
            "FERRY_TOKEN_FILE",
            "FERRY_CA_CERT",
            "FERRY_CERT",
            "FERRY_KEY",
            "FERRY_TLS_SERVER_NAME",
            "FERRY_COMPRESS",
            "FERRY_STATE_DIR",
            "RUST_LOG",
        ] {
            command.env_remove(var);
        }
        command
            .arg("--server")
            .arg(self.server.url())
            .args(args)
            .env("FERRY_STATE_DIR", self.dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }
}

/// Waits for `child` and collects its output, killing it after [`TIMEOUT`].
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

pub(crate) fn utf8(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn show(output: &Output) -> String {
    format!("status {}\nstdout: {}\nstderr: {}", output.status, text(&output.stdout), text(&output.stderr))
}

#[track_caller]
pub(crate) fn assert_success(output: &Output, what: &str) {
    assert!(output.status.success(), "{what} failed:\n{}", show(output));
}

#[track_caller]
pub(crate) fn assert_failure(output: &Output, what: &str) {
    assert!(
        !output.status.success() && output.status.code().is_some(),
        "{what} should exit non-zero (and not by a signal):\n{}",
        show(output)
    );
}

/// What a tree holds at one relative path, as far as these tests care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// Mode is `& 0o777`; mtime in whole seconds.
    File {
        size: u64,
        sha256: String,
        mode: u32,
        mtime: i64,
    },
    Dir,
    Symlink(PathBuf),
    Other,
}

/// Every entry under `dir` (not itself), by `/`-separated relative path,
/// never following a symlink.
pub(crate) fn scan(dir: &Path) -> BTreeMap<String, Node> {
    pub(crate) fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let entry = entry.expect("read a directory entry");
            let name = entry.file_name().into_string().expect("UTF-8 names");
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).expect("lstat an entry");
            let node = if meta.file_type().is_symlink() {
                Node::Symlink(fs::read_link(&path).expect("read a symlink"))
            } else if meta.is_dir() {
                walk(&path, &rel, out);
                Node::Dir
            } else if meta.is_file() {
                let data = fs::read(&path).expect("read a file");
                Node::File {
                    size: meta.len(),
                    sha256: sha256_hex(&data),
                    mode: meta.mode() & 0o777,
                    mtime: meta.mtime(),
                }
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out);
    out
}

/// Only the regular files of a scan.
pub(crate) fn files(tree: &BTreeMap<String, Node>) -> BTreeMap<String, Node> {
    tree.iter().filter(|(_, node)| matches!(node, Node::File { .. })).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Asserts two scans are equal, naming the first differences.
#[track_caller]
pub(crate) fn assert_same_tree(actual: &BTreeMap<String, Node>, expected: &BTreeMap<String, Node>, what: &str) {
    if actual == expected {
        return;
    }
    let mut problems = Vec::new();
    for (path, node) in expected {
        match actual.get(path) {
            None => problems.push(format!("missing {path} ({node:?})")),
            Some(got) if got != node => problems.push(format!("{path}: got {got:?}, expected {node:?}")),
            Some(_) => {}
        }
    }
    for (path, node) in actual {
        if !expected.contains_key(path) {
            problems.push(format!("unexpected {path} ({node:?})"));
        }
    }
    problems.truncate(20);
    panic!("{what}: trees differ:\n  {}", problems.join("\n  "));
}

/// `path`'s inode number (which changes when ferry replaces a file, since it
/// always renames a new file into place).
pub(crate) fn inode(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display())).ino()
}

pub(crate) fn inodes(dir: &Path) -> BTreeMap<String, u64> {
    files(&scan(dir)).into_keys().map(|rel| (rel.clone(), inode(&dir.join(&rel)))).collect()
}

pub(crate) fn time(secs: i64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(u64::try_from(secs).expect("a time after the epoch"), nanos)
}

/// Writes a file (parents created) with the given mode and mtime.
pub(crate) fn write_file(path: &Path, content: &[u8], mode: u32, mtime: SystemTime) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("create parent directories");
    fs::write(path, content).expect("write a file");
    let file = fs::File::options().write(true).open(path).expect("open the file");
    file.set_permissions(fs::Permissions::from_mode(mode)).expect("set the mode");
    file.set_modified(mtime).expect("set the mtime");
}

/// Rewrites a file's bytes in place, keeping its inode, mode and exact mtime.
pub(crate) fn rewrite_keeping_mtime(path: &Path, content: &[u8]) {
    let mtime = fs::metadata(path).expect("stat the file").modified().expect("an mtime");
    fs::write(path, content).expect("rewrite the file");
    fs::File::options().write(true).open(path).expect("open the file").set_modified(mtime).expect("restore the mtime");
}

/// The counts in a summary line such as `3 uploaded, 17 skipped, 0 failed`:
/// the number before each word, from the last line naming all of `words`.
pub(crate) fn summary(stderr: &str, words: &[&str]) -> Option<Vec<u64>> {
    let line = stderr.lines().rev().find(|line| words.iter().all(|w| line.contains(w)))?;
    let tokens: Vec<&str> =
        line.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == ':').filter(|t| !t.is_empty()).collect();
    words
        .iter()
        .map(|word| {
            let at = tokens.iter().position(|t| t.starts_with(word))?;
            tokens.get(at.checked_sub(1)?)?.parse().ok()
        })
        .collect()
}

/// `put -r`'s final `N uploaded, M skipped, K failed` line, asserted present.
#[track_caller]
pub(crate) fn put_summary(output: &Output) -> (u64, u64, u64) {
    let stderr = text(&output.stderr);
    let counts = summary(&stderr, &["uploaded", "skipped", "failed"])
        .unwrap_or_else(|| panic!("no `N uploaded, M skipped, K failed` summary on stderr:\n{}", show(output)));
    (counts[0], counts[1], counts[2])
}

/// `get -r`'s final `N downloaded, M skipped, K failed` line, asserted present.
#[track_caller]
pub(crate) fn get_summary(output: &Output) -> (u64, u64, u64) {
    let stderr = text(&output.stderr);
    let counts = summary(&stderr, &["downloaded", "skipped", "failed"])
        .unwrap_or_else(|| panic!("no `N downloaded, M skipped, K failed` summary on stderr:\n{}", show(output)));
    (counts[0], counts[1], counts[2])
}
