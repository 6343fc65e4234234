//! An upload into a [`LocalStore`](super::LocalStore).
//!
//! Data goes to a server-named file in `.ferry/staging/` (same filesystem as
//! the root). Each chunk is hashed as it arrives, then written by a writer task
//! on the blocking pool, fed by a small bounded channel: memory per upload is at most
//! `WRITE_QUEUE + 1` chunks, and a slow disk slows the sender (backpressure
//! reaches the client through HTTP/2 flow control).
//!
//! Commit: check size and digests → set permissions, mtime and the digest
//! xattr → fsync the file → create missing parent directories → rename into
//! place (`RENAME_NOREPLACE` for create-only) → fsync the parent directory.
//! The staged file is a `TempPath`: on any failure, or when the upload is
//! dropped, it is deleted, so nothing partial is ever visible or left behind.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use rustix::fs::{self, Mode, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::Digest as _;
use tempfile::TempPath;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::resolve::{self, Purpose};
use super::{Inner, blocking, digest_cache};
use crate::{EntryKind, Error, Metadata, Result, Sha256, StorePath, Upload, WriteMode, WriteOptions};

/// Chunks queued between the network and the disk.
const WRITE_QUEUE: usize = 4;
/// Staged bytes between background syncs (see `write_chunks`).
const SYNC_INTERVAL: u64 = 32 * 1024 * 1024;
/// Permission bits when the client gives none.
const DEFAULT_PERMISSIONS: u32 = 0o644;

pub(super) struct LocalUpload {
    inner: Arc<Inner>,
    path: StorePath,
    options: WriteOptions,
    received: u64,
    /// Digest of everything accepted, updated as chunks arrive (in `write`,
    /// while the writer task writes earlier chunks: measured faster than
    /// hashing on the blocking pool, whose hand-offs cost more than they save).
    hasher: sha2::Sha256,
    /// `None` once the writer has been told the data is complete.
    queue: Option<mpsc::Sender<Bytes>>,
    writer: Option<JoinHandle<Result<Staged>>>,
}

impl std::fmt::Debug for LocalUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalUpload")
            .field("path", &self.path)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// Everything the writer produced: the staged file and its size.
struct Staged {
    file: File,
    temp_path: TempPath,
    size: u64,
}

impl LocalUpload {
    /// Checks for conflicts visible now, then creates the staged file.
    pub(super) async fn start(inner: Arc<Inner>, path: StorePath, options: WriteOptions) -> Result<Self> {
        let (check_inner, check_path, mode) = (inner.clone(), path.clone(), options.mode);
        let temp = blocking(move || {
            check_target(&check_inner, &check_path, mode)?;
            tempfile::Builder::new()
                .prefix("upload-")
                .suffix(".part")
                .tempfile_in(&check_inner.staging_dir)
                .map_err(|e| Error::io("creating a staged file", e))
        })
        .await?;
        let (file, temp_path) = temp.into_parts();
        let (queue, chunks) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_chunks(chunks, file, temp_path));
        Ok(Self {
            inner,
            path,
            options,
            received: 0,
            hasher: sha2::Sha256::new(),
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// The writer's outcome (after the queue has been closed or refused data).
    async fn finish_writer(&mut self) -> Result<Staged> {
        self.queue = None;
        match self.writer.take() {
            Some(handle) => handle.await.map_err(|e| Error::io("writing staged data", std::io::Error::other(e)))?,
            None => Err(Error::io("writing staged data", std::io::Error::other("upload already finished"))),
        }
    }
}

/// Refuses an upload whose target can be seen to conflict already.
fn check_target(inner: &Inner, path: &StorePath, mode: WriteMode) -> Result<()> {
    let (parents, name) = path.split_last();
    let parent = match resolve::open_dir(inner.root.as_fd(), &parents, path, Purpose::Write) {
        Ok(parent) => parent,
        // Missing parents are created at commit.
        Err(Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    match resolve::stat_entry(parent.as_fd(), name, path) {
        Err(Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
        Ok(st) => match resolve::entry_kind(&st, path)? {
            EntryKind::Directory => Err(Error::IsDirectory { path: path.as_str().to_owned() }),
            EntryKind::File if mode == WriteMode::CreateOnly => {
                Err(Error::AlreadyExists { path: path.as_str().to_owned() })
            }
            EntryKind::File => Ok(()),
        },
    }
}

/// The writer task: write each chunk, in order, until the queue closes.
///
/// Every [`SYNC_INTERVAL`] bytes it also starts an `fdatasync` of the staged
/// file on another thread (one at a time, never waited for by the writer).
/// The kernel otherwise keeps a whole large upload dirty in memory until the
/// commit's fsync, which then stalled the commit for ~0.3 s per GiB here;
/// syncing as we go overlaps that write-back with the transfer.
async fn write_chunks(mut chunks: mpsc::Receiver<Bytes>, file: File, temp_path: TempPath) -> Result<Staged> {
    let (mut file, mut size) = (file, 0u64);
    let mut unsynced = 0u64;
    let mut syncing: Option<JoinHandle<Result<()>>> = None;
    while let Some(data) = chunks.recv().await {
        size += data.len() as u64;
        unsynced += data.len() as u64;
        file = blocking(move || {
            file.write_all(&data).map_err(|e| Error::io("writing staged data", e))?;
            Ok(file)
        })
        .await?;
        if unsynced >= SYNC_INTERVAL && syncing.as_ref().is_none_or(|s| s.is_finished()) {
            if let Some(previous) = syncing.take() {
                join_sync(previous).await?;
            }
            let handle = file.try_clone().map_err(|e| Error::io("syncing staged data", e))?;
            syncing = Some(tokio::task::spawn_blocking(move || {
                handle.sync_data().map_err(|e| Error::io("syncing staged data", e))
            }));
            unsynced = 0;
        }
    }
    if let Some(previous) = syncing {
        join_sync(previous).await?;
    }
    Ok(Staged { file, temp_path, size })
}

/// A failed background sync fails the upload: after a failed fsync, Linux may
/// have dropped the dirty pages, so the staged data can no longer be trusted.
async fn join_sync(sync: JoinHandle<Result<()>>) -> Result<()> {
    sync.await.map_err(|e| Error::io("syncing staged data", std::io::Error::other(e)))?
}

#[async_trait::async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let received = self.received + data.len() as u64;
        if let Some(declared) = self.options.size
            && received > declared
        {
            return Err(Error::SizeMismatch { declared, received });
        }
        let Some(queue) = &self.queue else {
            return Err(Error::io("writing staged data", std::io::Error::other("upload already finished")));
        };
        self.hasher.update(&data);
        if queue.send(data).await.is_err() {
            // The writer stopped early: its error says why.
            return match self.finish_writer().await {
                Err(e) => Err(e),
                Ok(_) => Err(Error::io("writing staged data", std::io::Error::other("writer stopped"))),
            };
        }
        self.received = received;
        Ok(())
    }

    fn received(&self) -> u64 {
        self.received
    }

    async fn commit(mut self: Box<Self>, final_sha256: Option<Sha256>) -> Result<Metadata> {
        let staged = self.finish_writer().await?;
        let sha256 = Sha256::from(std::mem::take(&mut self.hasher));
        if let Some(declared) = self.options.size
            && staged.size != declared
        {
            return Err(Error::SizeMismatch { declared, received: staged.size });
        }
        for expected in [self.options.sha256, final_sha256].into_iter().flatten() {
            if expected != sha256 {
                return Err(Error::DigestMismatch { expected, actual: sha256 });
            }
        }
        let LocalUpload { inner, path, options, .. } = *self;
        blocking(move || publish(&inner, path, &options, staged, sha256)).await
    }
}

/// Makes the staged file durable and renames it into place.
fn publish(inner: &Inner, path: StorePath, options: &WriteOptions, staged: Staged, sha256: Sha256) -> Result<Metadata> {
    let Staged { file, temp_path, .. } = staged;
    let permissions = options.permissions.unwrap_or(DEFAULT_PERMISSIONS) & 0o777 | 0o400;
    fs::fchmod(&file, Mode::from_raw_mode(permissions)).map_err(|e| Error::io("setting permissions", e.into()))?;
    if let Some(mtime) = options.mtime {
        let mtime = to_timespec(mtime);
        let times = Timestamps { last_access: mtime, last_modification: mtime };
        fs::futimens(&file, &times).map_err(|e| Error::io("setting the modification time", e.into()))?;
    }
    let st = fs::fstat(&file).map_err(|e| Error::io("reading staged metadata", e.into()))?;
    digest_cache::store(&file, &st, &sha256);
    file.sync_all().map_err(|e| Error::io("syncing staged data", e))?;

    let (parents, name) = path.split_last();
    let parent = resolve::open_dir_creating(inner.root.as_fd(), &parents, &path)?;
    let renamed = match options.mode {
        WriteMode::Overwrite => fs::renameat(fs::CWD, &*temp_path, &parent, name),
        WriteMode::CreateOnly => fs::renameat_with(fs::CWD, &*temp_path, &parent, name, fs::RenameFlags::NOREPLACE),
    };
    renamed.map_err(|errno| match errno {
        Errno::EXIST if options.mode == WriteMode::CreateOnly => {
            Error::AlreadyExists { path: path.as_str().to_owned() }
        }
        Errno::ISDIR | Errno::EXIST | Errno::NOTEMPTY => Error::IsDirectory { path: path.as_str().to_owned() },
        other => resolve::classify(parent.as_fd(), name, other, &path, Purpose::Write, "publishing an upload"),
    })?;
    // The data now lives at its path: the staged name must not be deleted.
    let _published = temp_path.keep();
    fs::fsync(&parent).map_err(|e| Error::io("syncing the parent directory", e.into()))?;
    Ok(resolve::metadata(path, EntryKind::File, &st, Some(sha256)))
}

fn to_timespec(time: std::time::SystemTime) -> Timespec {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => Timespec { tv_sec: after.as_secs() as i64, tv_nsec: i64::from(after.subsec_nanos()) },
        Err(before) => {
            let before = before.duration();
            let mut tv_sec = -(before.as_secs() as i64);
            let mut tv_nsec = -i64::from(before.subsec_nanos());
            if tv_nsec < 0 {
                tv_sec -= 1;
                tv_nsec += 1_000_000_000;
            }
            Timespec { tv_sec, tv_nsec }
        }
    }
}
