//! Uploads into a [`LocalStore`](super::LocalStore), as sessions.
//!
//! Every upload writes to `.ferry/uploads/<id>/data` (never served, same
//! filesystem as the root). Each chunk is hashed as it arrives, then written
//! by a writer task on the blocking pool, fed by a small bounded queue: memory
//! per upload is at most `WRITE_QUEUE + 1` chunks (and all uploads share
//! `WRITE_BUDGET` bytes of queue), and a slow disk slows the
//! sender (backpressure reaches the client through HTTP/2 flow control).
//!
//! Every [`SYNC_INTERVAL`] bytes a checkpoint follows the data through the
//! same queue. The writer then fdatasyncs the file and, for a resumable
//! upload, journals the offset and the hash state at exactly that offset
//! (`session.rs`), on another thread so that writing goes on meanwhile (the
//! writer task is `writer.rs`). The
//! committed offset advances when that is done.
//!
//! Commit: check size and digests → set permissions, mtime and the digest
//! xattr → fsync the file → create missing parent directories → rename into
//! place (`RENAME_NOREPLACE` for create-only) → fsync the parent directory →
//! remove the session. A failed commit removes the session too: nothing
//! partial is ever visible, and nothing is left behind.
//!
//! An upload that is dropped unfinished is discarded, unless it is
//! resumable: then its session stays on disk at its committed offset.
//! A resumable session is *claimed* by the one stream writing to it
//! (`claims.rs`). Ranged sessions, written by many streams at once, are
//! `ranged.rs`.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rustix::fs::{self, Mode, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::Digest as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::claims::{Claim, SessionGuard};
use super::resolve::{self, Purpose};
use super::session::{Journal, SessionDir, encode_state};
use super::writer::{Finished, Item, Writer};
use super::{Inner, blocking, digest_cache};
use crate::{
    EntryKind, Error, Metadata, Result, Sha256, StorePath, Upload, UploadId, UploadStatus, WriteMode, WriteOptions,
    crash,
};

/// Chunks queued between the network and the disk.
const WRITE_QUEUE: usize = 2;
/// Bytes queued for the disk across all uploads of the store at once. One
/// upload may queue up to WRITE_QUEUE chunks; with many at once they share
/// this, so that memory stays bounded whatever the concurrency (measured:
/// 64 uploads at once, docs/performance.md).
pub(super) const WRITE_BUDGET: usize = 64 * 1024 * 1024;
/// Bytes between checkpoints (fdatasync + journal). Also bounds what a crash
/// can lose of a resumable upload, and what a client must send again.
pub const SYNC_INTERVAL: u64 = 32 * 1024 * 1024;
/// Permission bits when the client gives none.
const DEFAULT_PERMISSIONS: u32 = 0o644;

pub(super) struct LocalUpload {
    inner: Arc<Inner>,
    id: UploadId,
    session: SessionDir,
    path: StorePath,
    options: WriteOptions,
    received: u64,
    /// Digest of everything accepted, updated as chunks arrive (while the
    /// writer task writes earlier ones: measured faster than hashing on the
    /// blocking pool, whose hand-offs cost more than they save on 2 cores).
    hasher: sha2::Sha256,
    last_checkpoint: u64,
    committed: watch::Receiver<u64>,
    /// `None` once the writer has been told the data is complete.
    queue: Option<mpsc::Sender<Item>>,
    writer: Option<JoinHandle<Result<Finished>>>,
    /// Resumable uploads only.
    claim: Option<Claim>,
    /// Non-resumable uploads only: removes the session when dropped.
    _discard: Option<Discard>,
}

impl std::fmt::Debug for LocalUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalUpload")
            .field("id", &self.id)
            .field("path", &self.path)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// Removes a non-resumable upload's session when the upload goes away.
#[derive(Debug)]
struct Discard(SessionDir);

impl Drop for Discard {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove() {
            tracing::warn!(error = %e, "could not remove a discarded upload");
        }
    }
}

impl LocalUpload {
    /// Checks for conflicts visible now, then creates the session.
    pub(super) async fn start(inner: Arc<Inner>, path: StorePath, options: WriteOptions) -> Result<Self> {
        let (check_inner, check_path, mode) = (inner.clone(), path.clone(), options.mode);
        blocking(move || check_target(&check_inner, &check_path, mode)).await?;
        let id = match &options.upload_id {
            Some(id) => id.clone(),
            None => UploadId::random()?,
        };
        let session = SessionDir::new(&inner.uploads_dir, &id);
        // Before claiming: a claim would preempt a live stream of that session.
        if options.upload_id.is_some() && session.dir.exists() {
            return Err(Error::UploadExists { id: id.to_string() });
        }
        let journal = options.resumable.then(|| Journal::new(&path, &options));
        let claim = match options.resumable {
            true => Some(inner.sessions.claim(&id).await),
            false => None,
        };
        let (create, journal_for_create) = (session.clone(), journal.clone());
        let file = blocking(move || create.create(journal_for_create.as_ref())).await?;
        let discard = (!options.resumable).then(|| Discard(session.clone()));
        Ok(Self::spawn(inner, id, session, path, options, journal, file, sha2::Sha256::new(), 0, claim, discard))
    }

    /// Reopens a resumable session at its committed offset.
    pub(super) async fn resume(inner: Arc<Inner>, id: UploadId, offset: u64) -> Result<Self> {
        let session = SessionDir::new(&inner.uploads_dir, &id);
        // Before claiming: a claim would preempt the range writers of a ranged session.
        let (check, check_id) = (session.clone(), id.clone());
        blocking(move || match check.read_journal()? {
            Some(journal) if journal.ranges.is_some() => Err(Error::RangedUpload { id: check_id.to_string() }),
            _ => Ok(()),
        })
        .await?;
        let claim = inner.sessions.claim(&id).await;
        let (open, open_id) = (session.clone(), id.clone());
        let opened = blocking(move || {
            let not_found = || Error::UploadNotFound { id: open_id.to_string() };
            let journal = open.read_journal()?.ok_or_else(not_found)?;
            if offset != journal.committed {
                return Err(Error::OffsetMismatch { id: open_id.to_string(), offset, committed: journal.committed });
            }
            let io = |e| Error::io("reopening an upload", e);
            let mut file = std::fs::OpenOptions::new().write(true).open(open.data()).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => not_found(),
                _ => io(e),
            })?;
            // Bytes past the journaled offset may be there (written, not yet
            // journaled): they are not committed, and the client sends them again.
            file.set_len(journal.committed).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
            Ok((journal, file))
        })
        .await;
        let (journal, file) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                if matches!(e, Error::UploadNotFound { .. }) {
                    inner.sessions.forget(&id);
                }
                return Err(e);
            }
        };
        let (path, options) = journal.options()?;
        let hasher = journal.hasher()?;
        let committed = journal.committed;
        Ok(Self::spawn(inner, id, session, path, options, Some(journal), file, hasher, committed, Some(claim), None))
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        inner: Arc<Inner>,
        id: UploadId,
        session: SessionDir,
        path: StorePath,
        options: WriteOptions,
        journal: Option<Journal>,
        file: File,
        hasher: sha2::Sha256,
        committed: u64,
        claim: Option<(SessionGuard, Claim)>,
        discard: Option<Discard>,
    ) -> Self {
        let (queue, items) = mpsc::channel(WRITE_QUEUE);
        let (committed_tx, committed_rx) = watch::channel(committed);
        let (guard, claim) = match claim {
            Some((guard, claim)) => (Some(guard), Some(claim)),
            None => (None, None),
        };
        let writer = Writer { session: session.clone(), journal, committed: Arc::new(committed_tx), claim: guard };
        let writer = tokio::spawn(writer.run(items, file));
        Self {
            inner,
            id,
            session,
            path,
            options,
            received: committed,
            hasher,
            last_checkpoint: committed,
            committed: committed_rx,
            queue: Some(queue),
            writer: Some(writer),
            claim,
            _discard: discard,
        }
    }

    fn check_claim(&self) -> Result<()> {
        match &self.claim {
            Some(claim) if !claim.is_current() => Err(Error::Preempted { id: self.id.to_string() }),
            _ => Ok(()),
        }
    }

    async fn send(&mut self, item: Item) -> Result<()> {
        let Some(queue) = &self.queue else {
            return Err(Error::io("writing an upload", std::io::Error::other("upload already finished")));
        };
        if queue.send(item).await.is_err() {
            // The writer stopped early: its error says why.
            self.finish_writer().await?;
            return Err(Error::io("writing an upload", std::io::Error::other("writer stopped")));
        }
        Ok(())
    }

    /// Closes the queue and waits for the writer (and its syncs) to finish.
    async fn finish_writer(&mut self) -> Result<Finished> {
        self.queue = None;
        match self.writer.take() {
            Some(handle) => handle.await.map_err(|e| Error::io("writing an upload", std::io::Error::other(e)))?,
            None => Err(Error::io("writing an upload", std::io::Error::other("upload already finished"))),
        }
    }

    fn checkpoint(&self, reply: Option<oneshot::Sender<Result<()>>>) -> Item {
        Item::Checkpoint { offset: self.received, hash_state: encode_state(&self.hasher), reply }
    }
}

/// Refuses an upload whose target can be seen to conflict already.
pub(super) fn check_target(inner: &Inner, path: &StorePath, mode: WriteMode) -> Result<()> {
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

#[async_trait::async_trait]
impl Upload for LocalUpload {
    fn id(&self) -> &UploadId {
        &self.id
    }

    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.check_claim()?;
        let received = self.received + data.len() as u64;
        if let Some(declared) = self.options.size
            && received > declared
        {
            return Err(Error::SizeMismatch { declared, received });
        }
        self.hasher.update(&data);
        self.received = received;
        let bytes = u32::try_from(data.len().min(WRITE_BUDGET)).unwrap_or(u32::MAX);
        let budget = self
            .inner
            .write_budget
            .clone()
            .acquire_many_owned(bytes.max(1))
            .await
            .map_err(|_| Error::io("writing an upload", std::io::Error::other("the write budget was closed")))?;
        self.send(Item::Data(data, budget)).await?;
        if self.received - self.last_checkpoint >= SYNC_INTERVAL {
            self.last_checkpoint = self.received;
            let checkpoint = self.checkpoint(None);
            self.send(checkpoint).await?;
        }
        Ok(())
    }

    fn received(&self) -> u64 {
        self.received
    }

    fn declared_size(&self) -> Option<u64> {
        self.options.size
    }

    fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    async fn sync(&mut self) -> Result<u64> {
        self.check_claim()?;
        let (reply, done) = oneshot::channel();
        let checkpoint = self.checkpoint(Some(reply));
        self.send(checkpoint).await?;
        match done.await {
            Ok(result) => result.map(|()| self.received),
            Err(_) => {
                self.finish_writer().await?;
                Err(Error::io("syncing an upload", std::io::Error::other("writer stopped")))
            }
        }
    }

    async fn committed_past(&self, seen: u64) {
        let mut committed = self.committed.clone();
        if committed.wait_for(|offset| *offset > seen).await.is_err() {
            // The writer is gone: nothing more will be committed here.
            std::future::pending::<()>().await;
        }
    }

    async fn preempted(&self) {
        match &self.claim {
            Some(claim) => claim.taken_over().await,
            None => std::future::pending().await,
        }
    }

    async fn commit(mut self: Box<Self>, final_sha256: Option<Sha256>) -> Result<Metadata> {
        self.check_claim()?;
        let Finished { file, claim } = self.finish_writer().await?;
        self.check_claim()?;
        let outcome = self.publish(file, final_sha256).await;
        // Committed or not, the session is over: its data is in place, or it
        // failed a check it can never pass. The claim is held until it is gone.
        let (session, id, inner) = (self.session.clone(), self.id.clone(), self.inner.clone());
        let removed = blocking(move || session.remove()).await;
        drop(claim);
        inner.sessions.forget(&id);
        let meta = outcome?;
        removed?;
        Ok(meta)
    }
}

impl LocalUpload {
    async fn publish(&mut self, file: File, final_sha256: Option<Sha256>) -> Result<Metadata> {
        let size = self.received;
        if let Some(declared) = self.options.size
            && size != declared
        {
            return Err(Error::SizeMismatch { declared, received: size });
        }
        let sha256 = Sha256::from(self.hasher.clone());
        for expected in [self.options.sha256, final_sha256].into_iter().flatten() {
            if expected != sha256 {
                return Err(Error::DigestMismatch { expected, actual: sha256 });
            }
        }
        crash::point("commit.after-verify");
        let (inner, path, options, data) =
            (self.inner.clone(), self.path.clone(), self.options.clone(), self.session.data());
        blocking(move || publish(&inner, path, &options, file, &data, sha256)).await
    }
}

/// Makes the staged file durable and renames it into place.
pub(super) fn publish(
    inner: &Inner,
    path: StorePath,
    options: &WriteOptions,
    file: File,
    data: &std::path::Path,
    sha256: Sha256,
) -> Result<Metadata> {
    let st = finish_file(&file, options, &sha256)?;
    file.sync_all().map_err(|e| Error::io("syncing staged data", e))?;
    crash::point("commit.after-file-sync");

    let (parents, name) = path.split_last();
    let parent = resolve::open_dir_creating(inner.root.as_fd(), &parents, &path)?;
    place(&parent, data, name, &path, options.mode)?;
    crash::point("commit.after-rename");
    fs::fsync(&parent).map_err(|e| Error::io("syncing the parent directory", e.into()))?;
    crash::point("commit.after-dir-sync");
    Ok(resolve::metadata(path, EntryKind::File, &st, Some(sha256)))
}

/// Gives a staged file its mtime, cached digest and permissions; returns its
/// stat as it will be published. The digest goes before the permissions:
/// setting an extended attribute needs write permission, which the file's
/// own bits may not give its owner.
pub(super) fn finish_file(file: &File, options: &WriteOptions, sha256: &Sha256) -> Result<fs::Stat> {
    if let Some(mtime) = options.mtime {
        let mtime = to_timespec(mtime);
        let times = Timestamps { last_access: mtime, last_modification: mtime };
        fs::futimens(file, &times).map_err(|e| Error::io("setting the modification time", e.into()))?;
    }
    let stat = || fs::fstat(file).map_err(|e| Error::io("reading staged metadata", e.into()));
    // Keyed by size and mtime, which the permissions do not change.
    digest_cache::store(file, &stat()?, sha256);
    let permissions = options.permissions.unwrap_or(DEFAULT_PERMISSIONS) & 0o777 | 0o400;
    fs::fchmod(file, Mode::from_raw_mode(permissions)).map_err(|e| Error::io("setting permissions", e.into()))?;
    stat()
}

/// Renames the durable staged file `staged` to `name` in `parent` (refusing
/// to replace anything when create-only).
pub(super) fn place(
    parent: &std::os::fd::OwnedFd,
    staged: &std::path::Path,
    name: &str,
    path: &StorePath,
    mode: WriteMode,
) -> Result<()> {
    let renamed = match mode {
        WriteMode::Overwrite => fs::renameat(fs::CWD, staged, parent, name),
        WriteMode::CreateOnly => fs::renameat_with(fs::CWD, staged, parent, name, fs::RenameFlags::NOREPLACE),
    };
    renamed.map_err(|errno| match errno {
        Errno::EXIST if mode == WriteMode::CreateOnly => Error::AlreadyExists { path: path.as_str().to_owned() },
        Errno::ISDIR | Errno::EXIST | Errno::NOTEMPTY => Error::IsDirectory { path: path.as_str().to_owned() },
        other => resolve::classify(parent.as_fd(), name, other, path, Purpose::Write, "publishing an upload"),
    })
}

/// The journaled state of a resumable upload.
pub(super) async fn status(inner: Arc<Inner>, id: UploadId) -> Result<UploadStatus> {
    blocking(move || {
        let session = SessionDir::new(&inner.uploads_dir, &id);
        let journal = session.read_journal()?.ok_or_else(|| Error::UploadNotFound { id: id.to_string() })?;
        let (path, options) = journal.options()?;
        let ranges = journal.ranges.map(|ranges| ranges.into_iter().map(|(start, end)| start..end).collect());
        Ok(UploadStatus { id, path, committed: journal.committed, size: options.size, ranges })
    })
    .await
}

/// Discards a resumable upload, taking it over from any stream first.
pub(super) async fn abort(inner: Arc<Inner>, id: UploadId) -> Result<()> {
    let (guard, _claim) = inner.sessions.claim(&id).await;
    let session = SessionDir::new(&inner.uploads_dir, &id);
    let removal_id = id.clone();
    let removed = blocking(move || {
        if session.read_journal()?.is_none() {
            return Err(Error::UploadNotFound { id: removal_id.to_string() });
        }
        session.remove()
    })
    .await;
    drop(guard);
    inner.sessions.forget(&id);
    removed
}

/// Removes resumable sessions idle for longer than `idle` and not owned by a
/// live stream.
pub(super) async fn expire(inner: Arc<Inner>, idle: Duration) -> Result<usize> {
    let scan_inner = inner.clone();
    let stale: Vec<UploadId> = blocking(move || {
        let now = SystemTime::now();
        let entries = std::fs::read_dir(&scan_inner.uploads_dir).map_err(|e| Error::io("listing uploads", e))?;
        Ok(entries
            .flatten()
            .filter_map(|entry| UploadId::parse(entry.file_name().to_str()?).ok())
            .filter(|id| {
                let last = SessionDir::new(&scan_inner.uploads_dir, id).last_activity();
                // No journal: a live non-resumable upload (or debris recovery removes).
                last.is_some_and(|last| now.duration_since(last).unwrap_or_default() > idle)
            })
            .collect())
    })
    .await?;
    let mut removed = 0;
    for id in stale {
        let Some(guard) = inner.sessions.hold_idle(&id) else { continue };
        let session = SessionDir::new(&inner.uploads_dir, &id);
        blocking(move || session.remove()).await?;
        crash::point("expiry.after-first-removal");
        drop(guard);
        inner.sessions.forget(&id);
        tracing::info!(upload = %id, "expired an abandoned upload");
        removed += 1;
    }
    Ok(removed)
}

pub(super) fn to_timespec(time: SystemTime) -> Timespec {
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
