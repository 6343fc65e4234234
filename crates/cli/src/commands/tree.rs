//! `ferry put -r` and `ferry get -r`: whole directory trees, several files
//! at a time (`-j`), skipping files that are already identical (same size
//! and SHA-256), so an interrupted tree transfer is finished by running it
//! again.
//!
//! On download the CLI is the extractor: every path the server names is
//! checked like a server path (relative, no `.`/`..`, no `\`, no NUL), lands
//! under the destination only, and is never written through a symbolic link.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use ferry_client::{Client, Range, RemoteFile, RetryPolicy, UploadOptions};
use sha2::Digest as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Files at least this big go through a resumable session (retried from the
/// committed offset); smaller ones in one plain stream.
const RESUMABLE_FROM: u64 = 8 * 1024 * 1024;

/// How a tree transfer went.
#[derive(Debug, Default)]
struct Tally {
    transferred: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
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

/// Every regular file under `dir`, with its `/`-separated relative path.
/// Symbolic links are reported and skipped, never followed; names that are
/// not UTF-8 (no ferry path can carry them) are reported and counted in
/// `unsendable`.
fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>, unsendable: &mut u64) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            eprintln!("ferry: cannot send {}: the name is not UTF-8", path.display());
            *unsendable += 1;
            continue;
        };
        let child = if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
        let kind = entry.file_type().with_context(|| format!("cannot read {}", path.display()))?;
        if kind.is_symlink() {
            eprintln!("ferry: skipping {}: symbolic links are not followed", path.display());
        } else if kind.is_dir() {
            walk(&path, &child, out, unsendable)?;
        } else if kind.is_file() {
            out.push((child, path));
        } else {
            eprintln!("ferry: skipping {}: not a regular file", path.display());
        }
    }
    Ok(())
}

fn join_remote(prefix: &str, rel: &str) -> String {
    match prefix.trim_end_matches('/') {
        "" => rel.to_owned(),
        prefix => format!("{prefix}/{rel}"),
    }
}

/// `ferry put -r LOCAL_DIR REMOTE_PREFIX`.
pub async fn put(
    client: Client,
    local: &Path,
    prefix: &str,
    jobs: usize,
    no_clobber: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    if !std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?.is_dir() {
        bail!("{} is not a directory (put -r uploads a directory tree)", local.display());
    }
    let (mut files, mut unsendable) = (Vec::new(), 0);
    walk(local, "", &mut files, &mut unsendable)?;
    let tally = Arc::new(Tally::default());
    tally.failed.fetch_add(unsendable, Ordering::Relaxed);
    let slots = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = JoinSet::new();
    for (rel, path) in files {
        let (client, tally, slots) = (client.clone(), tally.clone(), slots.clone());
        let remote = join_remote(prefix, &rel);
        tasks.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            let outcome = put_one(&client, &path, &remote, no_clobber).await;
            match outcome {
                Ok(true) => tally.transferred.fetch_add(1, Ordering::Relaxed),
                Ok(false) => tally.skipped.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    eprintln!("ferry: {}: {e:#}", path.display());
                    tally.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }
    while tasks.join_next().await.is_some() {}
    tally.finish("uploaded", quiet)
}

/// Uploads one file unless the server has it already; whether it sent it.
async fn put_one(client: &Client, path: &Path, remote: &str, no_clobber: bool) -> anyhow::Result<bool> {
    if let Ok(existing) = client.stat(remote).await
        && !existing.is_dir
        && identical(client, path, &existing).await
    {
        return Ok(false);
    }
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if size < RESUMABLE_FROM {
        let options = UploadOptions { create_only: no_clobber, ..UploadOptions::default() };
        client.upload_file(path, remote, options, |_| {}).await?;
    } else {
        let meta = std::fs::metadata(path)?;
        let mut options = UploadOptions {
            size: Some(size),
            mtime: meta.modified().ok(),
            create_only: no_clobber,
            ..UploadOptions::default()
        };
        {
            use std::os::unix::fs::PermissionsExt;
            options.permissions = Some(meta.permissions().mode() & 0o777);
        }
        let id = client.create_upload(remote, &options).await?;
        client.upload_file_resumable(path, &id, &RetryPolicy::default(), |_| {}).await?;
    }
    Ok(true)
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

/// Creates `dest/rel` directory by directory, refusing to pass through a
/// symbolic link (or a file) at any level.
fn safe_create_dirs(dest: &Path, rel: &Path) -> anyhow::Result<PathBuf> {
    let mut at = dest.to_owned();
    for component in rel.components() {
        at.push(component);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                bail!("{} is a symbolic link: not writing through it", at.display())
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!("{} exists and is not a directory", at.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&at) {
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

/// `ferry get -r REMOTE_PREFIX LOCAL_DIR`.
pub async fn get(
    client: Client,
    prefix: &str,
    local: &Path,
    jobs: usize,
    force: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let prefix = prefix.trim_end_matches('/');
    let mut listing = client.list(prefix, true).await?;
    let mut entries = Vec::new();
    while let Some(batch) = listing.next_batch().await? {
        entries.extend(batch);
    }
    if entries.len() == 1 && entries[0].path == prefix && !entries[0].is_dir {
        bail!("{prefix} is a file: use `ferry get` without -r");
    }
    std::fs::create_dir_all(local).with_context(|| format!("cannot create {}", local.display()))?;
    if std::fs::symlink_metadata(local)?.file_type().is_symlink() {
        bail!("{} is a symbolic link: not writing through it", local.display());
    }
    let tally = Arc::new(Tally::default());
    let slots = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = JoinSet::new();
    for entry in entries {
        let rel = match prefix {
            "" => Some(entry.path.as_str()),
            prefix => entry.path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')),
        };
        let rel = match rel.map(local_relative) {
            Some(Ok(rel)) => rel,
            Some(Err(e)) => {
                eprintln!("ferry: {e:#}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            None => {
                eprintln!("ferry: the server listed {:?}, outside {prefix:?}: refused", entry.path);
                tally.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if entry.is_dir {
            if let Err(e) = safe_create_dirs(local, &rel) {
                eprintln!("ferry: {e:#}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let (client, tally, slots, local) = (client.clone(), tally.clone(), slots.clone(), local.to_owned());
        tasks.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            match get_one(&client, &entry, &local, &rel, force).await {
                Ok(true) => tally.transferred.fetch_add(1, Ordering::Relaxed),
                Ok(false) => tally.skipped.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    eprintln!("ferry: {}: {e:#}", entry.path);
                    tally.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }
    while tasks.join_next().await.is_some() {}
    tally.finish("downloaded", quiet)
}

/// Downloads one file unless an identical one is there; whether it did.
async fn get_one(client: &Client, entry: &RemoteFile, dest: &Path, rel: &Path, force: bool) -> anyhow::Result<bool> {
    let parent = match rel.parent() {
        Some(parent) if parent != Path::new("") => safe_create_dirs(dest, parent)?,
        _ => dest.to_owned(),
    };
    let target = parent.join(rel.file_name().context("a file name")?);
    match std::fs::symlink_metadata(&target) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("{} is a symbolic link: not writing through it", target.display())
        }
        Ok(_) if identical(client, &target, entry).await => return Ok(false),
        _ => {}
    }
    client.download_file(&entry.path, Range::ALL, &target, force, |_| {}).await?;
    Ok(true)
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
    fn directories_are_never_created_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        assert!(safe_create_dirs(dir.path(), Path::new("sub/deeper")).is_err());
        assert!(!outside.path().join("deeper").exists());
        assert!(safe_create_dirs(dir.path(), Path::new("ok/deeper")).unwrap().is_dir());
    }
}
