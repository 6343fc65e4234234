//! Listings from a [`LocalStore`](super::LocalStore): a depth-first walk on the
//! blocking pool that sends batches through a small bounded channel, so a
//! directory tree of any size streams in bounded memory (one directory's names
//! at a time per level, for sorting).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use rustix::fs::{self, Dir, Mode, OFlags};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::resolve::{self, Purpose};
use super::{Inner, blocking, digest_cache, read};
use crate::{BoxStream, EntryKind, Error, Metadata, Result, StorePath};

/// Entries per batch (one gRPC message): ~1,000 paths of at most 1 KiB stay
/// well under the message-size limit.
pub(super) const BATCH: usize = 1000;

enum Start {
    Dir(OwnedFd),
    File(Metadata),
}

pub(super) async fn list(
    inner: Arc<Inner>,
    dir: Option<StorePath>,
    recursive: bool,
) -> Result<BoxStream<Result<Vec<Metadata>>>> {
    let (start_inner, start_dir) = (inner.clone(), dir.clone());
    let start = blocking(move || open_start(&start_inner, start_dir.as_ref())).await?;
    let (tx, rx) = mpsc::channel(2);
    match start {
        Start::File(meta) => {
            let _ = tx.send(Ok(vec![meta])).await;
        }
        Start::Dir(fd) => {
            tokio::task::spawn_blocking(move || {
                let mut batch = Vec::new();
                let walked = walk(&fd, dir.as_ref(), recursive, &mut batch, &tx);
                let last = match walked {
                    Ok(true) if !batch.is_empty() => Ok(batch),
                    Ok(_) => return,
                    Err(e) => Err(e),
                };
                let _ = tx.blocking_send(last);
            });
        }
    }
    Ok(Box::pin(ReceiverStream::new(rx)))
}

fn open_start(inner: &Inner, dir: Option<&StorePath>) -> Result<Start> {
    let Some(dir) = dir else {
        return resolve::open_root(inner.root.as_fd()).map(Start::Dir);
    };
    let (parents, name) = dir.split_last();
    let parent = resolve::open_dir(inner.root.as_fd(), &parents, dir, Purpose::Read)?;
    let st = resolve::stat_entry(parent.as_fd(), name, dir)?;
    match resolve::entry_kind(&st, dir)? {
        EntryKind::Directory => {
            let fd = fs::openat(
                &parent,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|errno| {
                resolve::classify(parent.as_fd(), name, errno, dir, Purpose::Read, "opening a directory")
            })?;
            Ok(Start::Dir(fd))
        }
        EntryKind::File => {
            let sha256 =
                read::open_file(parent.as_fd(), name, dir).ok().and_then(|(f, st)| digest_cache::load(&f, &st));
            Ok(Start::File(resolve::metadata(dir.clone(), EntryKind::File, &st, sha256)))
        }
    }
}

/// Walks `dir`, pushing entries into `batch` and sending full batches.
/// Returns `Ok(false)` when the receiver went away.
fn walk(
    dir: &OwnedFd,
    dir_path: Option<&StorePath>,
    recursive: bool,
    batch: &mut Vec<Metadata>,
    tx: &mpsc::Sender<Result<Vec<Metadata>>>,
) -> Result<bool> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir).map_err(|e| Error::io("listing a directory", e.into()))? {
        let entry = entry.map_err(|e| Error::io("listing a directory", e.into()))?;
        let raw = entry.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let Some(name) = OsStr::from_bytes(raw).to_str() else {
            tracing::debug!("skipping a name that is not UTF-8");
            continue;
        };
        // Names a client could not have sent (and `.ferry` at the top) are not listed.
        match StorePath::child_of(dir_path, name) {
            Ok(path) => names.push(path),
            Err(e) => tracing::debug!(error = %e, "skipping a name that is not a valid ferry path"),
        }
    }
    names.sort_unstable();

    for path in names {
        let name = path.file_name();
        let st = match resolve::stat_entry(dir.as_fd(), name, &path) {
            Ok(st) => st,
            Err(Error::NotFound { .. }) => continue, // deleted meanwhile
            Err(e) => return Err(e),
        };
        // Symbolic links and special files are never served, so never listed.
        let Ok(kind) = resolve::entry_kind(&st, &path) else { continue };
        let sha256 = match kind {
            EntryKind::File => {
                read::open_file(dir.as_fd(), name, &path).ok().and_then(|(f, st)| digest_cache::load(&f, &st))
            }
            EntryKind::Directory => None,
        };
        batch.push(resolve::metadata(path.clone(), kind, &st, sha256));
        if batch.len() >= BATCH && tx.blocking_send(Ok(std::mem::take(batch))).is_err() {
            return Ok(false);
        }
        if recursive && kind == EntryKind::Directory {
            let child = match fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(child) => child,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(errno) => {
                    return Err(resolve::classify(
                        dir.as_fd(),
                        name,
                        errno,
                        &path,
                        Purpose::Read,
                        "opening a directory",
                    ));
                }
            };
            if !walk(&child, Some(&path), recursive, batch, tx)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
