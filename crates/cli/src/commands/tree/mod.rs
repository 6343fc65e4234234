//! `ferry put -r` and `ferry get -r`: whole directory trees, skipping files
//! that are already identical (same size and SHA-256), so an interrupted
//! tree transfer is finished by running it again.
//!
//! Small files travel many to a stream (`UploadFiles` / `DownloadFiles`),
//! in groups spread over `-j` streams at once; files of
//! [`RESUMABLE_FROM`] bytes and more get a stream each, resumable both ways
//! (a remembered session on upload, a `.NAME.*.ferry-part` beside the target on
//! download), so a re-run of an interrupted tree continues them.
//! Empty directories are made on the far side too.
//!
//! On download the CLI is the extractor: every path the server names is
//! checked like a server path (relative, no `.`/`..`, no `\\`, no NUL), lands
//! under the destination only, and is never written through a symbolic link.
//!
//! | part | file |
//! |---|---|
//! | walking, checks, the tally | `mod.rs` (here) |
//! | `put -r` | `put.rs` |
//! | `get -r` | `get.rs` |
//! | directories' times and permission bits, both ways | `dirs.rs` |

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use ferry_client::{Client, Range, RemoteFile};
use sha2::Digest as _;

mod dirs;
mod get;
mod put;

pub use get::get;
pub use put::put;

/// Files at least this big get a stream of their own (a resumable session
/// on upload, retried from the committed offset); smaller ones travel many
/// to a stream.
const RESUMABLE_FROM: u64 = 8 * 1024 * 1024;
/// At most this many files per multi-file stream...
const GROUP_FILES: usize = 1000;
/// ... and this many bytes.
const GROUP_BYTES: u64 = 64 * 1024 * 1024;
/// Attempts for a group whose stream broke (the files it had not finished
/// are sent again) before they count as failed.
const GROUP_ATTEMPTS: u32 = 3;

/// How a tree transfer went.
#[derive(Debug, Default)]
struct Tally {
    transferred: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn add(&self, outcome: &anyhow::Result<bool>, what: &str) {
        match outcome {
            Ok(true) => self.transferred.fetch_add(1, Ordering::Relaxed),
            Ok(false) => self.skipped.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("ferry: {what}: {e:#}");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn finish(&self, verb: &str, quiet: bool) -> anyhow::Result<()> {
        let (done, skipped, failed) = (
            self.transferred.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        if !quiet || failed > 0 {
            eprintln!("{done} {verb}, {skipped} skipped (identical), {failed} failed");
        }
        match failed {
            0 => Ok(()),
            n => bail!("{n} file(s) failed (see above); run the same command again to retry them"),
        }
    }
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hex::encode(hasher.finalize())),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// Whether the local file has the remote file's size and digest. A server
/// reports digests in listings only when it has them cached; an empty
/// ranged read makes it compute (and cache) the digest without sending data.
async fn identical(client: &Client, local: &Path, remote: &RemoteFile) -> bool {
    match std::fs::symlink_metadata(local) {
        Ok(meta) if meta.is_file() && meta.len() == remote.size => {}
        _ => return false,
    }
    let expected = match remote.sha256.clone() {
        Some(digest) => digest,
        None => {
            let empty = Range { offset: 0, length: Some(0) };
            match client.download(&remote.path, empty, std::io::sink(), |_| {}).await {
                Ok((info, _)) => match info.sha256 {
                    Some(digest) => digest,
                    None => return false,
                },
                Err(_) => return false,
            }
        }
    };
    let local = local.to_owned();
    tokio::task::spawn_blocking(move || sha256_of(&local)).await.ok().and_then(Result::ok).as_deref()
        == Some(expected.as_str())
}

/// What a local tree holds that can be sent.
#[derive(Debug, Default)]
struct LocalTree {
    /// Regular files: `/`-separated relative path, and local path.
    files: Vec<(String, PathBuf)>,
    /// Every directory below the top, parents before their children.
    dirs: Vec<dirs::LocalDir>,
    /// Entries that cannot be sent (names that are not UTF-8).
    unsendable: u64,
}

/// Walks `dir`: every regular file, with its relative path. Symbolic links
/// are reported and skipped, never followed; names that are not UTF-8 (no
/// ferry path can carry them) are reported and counted. Returns how many
/// entries of `dir` will be sent (files, and directories sent themselves).
fn walk(dir: &Path, rel: &str, tree: &mut LocalTree) -> anyhow::Result<usize> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    let mut sent = 0;
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            eprintln!("ferry: cannot send {}: the name is not UTF-8", path.display());
            tree.unsendable += 1;
            continue;
        };
        let child = if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
        let kind = entry.file_type().with_context(|| format!("cannot read {}", path.display()))?;
        if kind.is_symlink() {
            eprintln!("ferry: skipping {}: symbolic links are not followed", path.display());
        } else if kind.is_dir() {
            let at = tree.dirs.len();
            tree.dirs.push(dirs::LocalDir { rel: child.clone(), path: path.clone(), empty: false });
            if walk(&path, &child, tree)? == 0 {
                tree.dirs[at].empty = true;
            }
            sent += 1;
        } else if kind.is_file() {
            tree.files.push((child, path));
            sent += 1;
        } else {
            eprintln!("ferry: skipping {}: not a regular file", path.display());
        }
    }
    Ok(sent)
}

/// Splits `items` (with their sizes) into groups for `jobs` streams: about
/// an equal share each, but at most `max_files` files and `max_bytes`
/// bytes, so that a failed stream costs little to redo and the streams
/// finish close together.
fn groups<T>(items: Vec<T>, size: impl Fn(&T) -> u64, jobs: usize, max_files: usize, max_bytes: u64) -> Vec<Vec<T>> {
    let share = items.len().div_ceil(jobs.max(1)).clamp(1, max_files);
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for item in items {
        let item_size = size(&item);
        if !current.is_empty() && (current.len() >= share || bytes + item_size > max_bytes) {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += item_size;
        current.push(item);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

fn join_remote(prefix: &str, rel: &str) -> String {
    match prefix.trim_end_matches('/') {
        "" => rel.to_owned(),
        prefix => format!("{prefix}/{rel}"),
    }
}

/// The local path for a server-supplied relative path, checked: relative,
/// no `.`/`..`/empty segments, no `\` or NUL.
fn local_relative(rel: &str) -> anyhow::Result<PathBuf> {
    let valid = !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.contains(['\\', '\0'])
        && rel.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
    let path = PathBuf::from(rel);
    if !valid || path.components().any(|c| !matches!(c, Component::Normal(_))) {
        bail!("the server named an unsafe path {rel:?}: refused");
    }
    Ok(path)
}

/// The wait before another attempt after `attempt` failed ones: a growing
/// step, and never sooner than the server asked (a busy refusal's
/// `RetryInfo`, capped at 5 s).
fn retry_wait(attempt: u32, asked: impl IntoIterator<Item = Option<std::time::Duration>>) -> std::time::Duration {
    let asked = asked.into_iter().flatten().max().unwrap_or_default();
    (std::time::Duration::from_millis(200) * attempt).max(asked.min(std::time::Duration::from_secs(5)))
}

/// Creates `dest/rel` directory by directory, refusing to pass through a
/// symbolic link (or a file) at any level.
/// `last_mode`, if given, is the mode the last directory is made with (the
/// umask applies), so that a directory listed as private is never looser,
/// not even before the copy's last step sets its bits exactly.
fn safe_create_dirs(dest: &Path, rel: &Path, last_mode: Option<u32>) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let mut at = dest.to_owned();
    let last = rel.components().count();
    for (depth, component) in rel.components().enumerate() {
        at.push(component);
        let mut builder = std::fs::DirBuilder::new();
        if let Some(mode) = last_mode.filter(|_| depth + 1 == last) {
            builder.mode(mode & 0o777 | 0o700);
        }
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                bail!("{} is a symbolic link: not writing through it", at.display())
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!("{} exists and is not a directory", at.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match builder.create(&at) {
                Ok(()) => {}
                // Another task made it meanwhile: check what is there now.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir()) {
                        bail!("{} appeared and is not a directory", at.display());
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", at.display())),
            },
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", at.display())),
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_paths_are_checked_like_server_paths() {
        assert!(local_relative("a/b.txt").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b", "a/\0"] {
            assert!(local_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn groups_share_the_files_within_their_limits() {
        let sizes = |groups: &[Vec<u64>]| groups.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(sizes(&groups(vec![1; 10], |s| *s, 4, 1000, 1 << 30)), vec![3, 3, 3, 1]);
        assert_eq!(sizes(&groups(vec![1; 10], |s| *s, 1, 4, 1 << 30)), vec![4, 4, 2]);
        assert_eq!(sizes(&groups(vec![5, 5, 5, 1], |s| *s, 1, 1000, 10)), vec![2, 2]);
        assert!(groups(Vec::<u64>::new(), |s| *s, 4, 1000, 10).is_empty());
    }

    #[test]
    fn empty_directories_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/empty")).unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/f"), b"x").unwrap();
        let mut tree = LocalTree::default();
        walk(dir.path(), "", &mut tree).unwrap();
        let empty: Vec<&str> = tree.dirs.iter().filter(|d| d.empty).map(|d| d.rel.as_str()).collect();
        assert_eq!(empty, ["a/empty"]);
        let all: Vec<&str> = tree.dirs.iter().map(|d| d.rel.as_str()).collect();
        assert_eq!(all, ["a", "a/empty", "b", "b/c"], "every directory, parents first");
        assert_eq!(tree.files.len(), 1);
    }

    #[test]
    fn directories_are_never_created_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        assert!(safe_create_dirs(dir.path(), Path::new("sub/deeper"), None).is_err());
        assert!(!outside.path().join("deeper").exists());
        assert!(safe_create_dirs(dir.path(), Path::new("ok/deeper"), None).unwrap().is_dir());
        // A private directory is made private, whatever the umask allows.
        use std::os::unix::fs::PermissionsExt as _;
        let private = safe_create_dirs(dir.path(), Path::new("ok/private"), Some(0o700)).unwrap();
        assert_eq!(std::fs::metadata(private).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
