//! [`LocalStore`]: a directory on a local filesystem as a [`Store`].
//!
//! Layout under the root: the files themselves, at their paths, plus the
//! reserved `.ferry/` directory (never served) holding `uploads/` (upload
//! sessions, on the same filesystem so commit is a rename; see `session.rs`)
//! and `lock` (one server per root).
//!
//! Blocking filesystem calls run on tokio's blocking pool, one chunk at a
//! time, so no thread is parked while a slow peer applies backpressure.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustix::fs::{self, AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::{
    BoxStream, ByteRange, Download, EntryKind, Error, Metadata, NewFile, RangeWrite, Result, Sha256, Store, StorePath,
    Upload, UploadId, UploadStatus, WriteOptions,
};

mod batch;
mod claims;
mod digest_cache;
mod list;
mod ranged;
mod read;
mod resolve;
mod session;
mod upload;
mod writer;

pub use upload::SYNC_INTERVAL;

use resolve::Purpose;

/// Bytes per chunk read for downloads (the server's send chunk size).
pub const DEFAULT_READ_CHUNK: usize = 1024 * 1024;

/// Tuning for a [`LocalStore`].
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Bytes per chunk of a download stream.
    pub read_chunk: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self { read_chunk: DEFAULT_READ_CHUNK }
    }
}

/// A store rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: OwnedFd,
    uploads_dir: PathBuf,
    sessions: claims::Sessions,
    /// Shared by all uploads: bytes they may have queued for the disk.
    write_budget: Arc<tokio::sync::Semaphore>,
    read_chunk: usize,
    /// Downloads running now: their chunks shrink as they grow in number.
    running_reads: std::sync::atomic::AtomicUsize,
    /// Held for the store's lifetime: an exclusive `flock` on `.ferry/lock`.
    _lock: OwnedFd,
}

impl LocalStore {
    /// Opens (creating if missing) the store rooted at `root`.
    ///
    /// Fails if another process holds the root (one server per root: recovery
    /// would otherwise truncate a live upload). Upload sessions are recovered
    /// here: resumable ones are truncated to their journaled offset, the rest
    /// (non-resumable uploads cut short by a stop) are removed.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, LocalOptions::default())
    }

    /// [`LocalStore::open`] with options.
    pub fn open_with(root: impl AsRef<Path>, options: LocalOptions) -> Result<Self> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(|e| Error::io("creating the root directory", e))?;
        let root_fd = fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io("opening the root directory", e.into()))?;
        let state_dir = root.join(crate::RESERVED_NAME);
        let uploads_dir = state_dir.join("uploads");
        std::fs::create_dir_all(&uploads_dir).map_err(|e| Error::io("creating the uploads directory", e))?;

        let lock = fs::open(
            state_dir.join("lock"),
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Error::io("opening the lock file", e.into()))?;
        match fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(Error::io(
                    "locking the root",
                    std::io::Error::other("another ferry server is using this root"),
                ));
            }
            Err(e) => return Err(Error::io("locking the root", e.into())),
        }

        let (kept, removed) = session::recover(&uploads_dir)?;
        if kept + removed > 0 {
            tracing::info!(resumable = kept, removed, "recovered upload sessions");
        }
        let inner = Inner {
            root: root_fd,
            uploads_dir,
            sessions: claims::Sessions::default(),
            write_budget: Arc::new(tokio::sync::Semaphore::new(upload::WRITE_BUDGET)),
            read_chunk: options.read_chunk.max(1),
            running_reads: std::sync::atomic::AtomicUsize::new(0),
            _lock: lock,
        };
        Ok(Self { inner: Arc::new(inner) })
    }
}

/// Runs blocking filesystem work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::io("running a filesystem task", std::io::Error::other(e)))?
}

#[async_trait::async_trait]
impl Store for LocalStore {
    async fn stat(&self, path: &StorePath) -> Result<Metadata> {
        let inner = self.inner.clone();
        let path = path.clone();
        blocking(move || {
            let (parents, name) = path.split_last();
            let parent = resolve::open_dir(inner.root.as_fd(), &parents, &path, Purpose::Read)?;
            let st = resolve::stat_entry(parent.as_fd(), name, &path)?;
            let kind = resolve::entry_kind(&st, &path)?;
            let sha256 = match kind {
                EntryKind::File => read::open_file(parent.as_fd(), name, &path)
                    .ok()
                    .and_then(|(file, st)| digest_cache::load(&file, &st)),
                EntryKind::Directory => None,
            };
            Ok(resolve::metadata(path, kind, &st, sha256))
        })
        .await
    }

    async fn read(&self, path: &StorePath, range: ByteRange) -> Result<Download> {
        read::read(self.inner.clone(), path.clone(), range).await
    }

    async fn create_upload(&self, path: &StorePath, options: WriteOptions) -> Result<Box<dyn Upload>> {
        Ok(Box::new(upload::LocalUpload::start(self.inner.clone(), path.clone(), options).await?))
    }

    async fn resume_upload(&self, id: &UploadId, offset: u64) -> Result<Box<dyn Upload>> {
        Ok(Box::new(upload::LocalUpload::resume(self.inner.clone(), id.clone(), offset).await?))
    }

    async fn create_ranged_upload(&self, path: &StorePath, options: WriteOptions) -> Result<UploadId> {
        ranged::create(self.inner.clone(), path.clone(), options).await
    }

    async fn write_range(&self, id: &UploadId, offset: u64, length: u64) -> Result<Box<dyn RangeWrite>> {
        ranged::write_range(self.inner.clone(), id.clone(), offset, length).await
    }

    async fn commit_ranged(&self, id: &UploadId, final_sha256: Option<Sha256>) -> Result<Metadata> {
        ranged::commit(self.inner.clone(), id.clone(), final_sha256).await
    }

    async fn upload_status(&self, id: &UploadId) -> Result<UploadStatus> {
        upload::status(self.inner.clone(), id.clone()).await
    }

    async fn abort_upload(&self, id: &UploadId) -> Result<()> {
        upload::abort(self.inner.clone(), id.clone()).await
    }

    async fn expire_uploads(&self, idle: Duration) -> Result<usize> {
        upload::expire(self.inner.clone(), idle).await
    }

    async fn list(&self, dir: Option<&StorePath>, recursive: bool) -> Result<BoxStream<Result<Vec<Metadata>>>> {
        list::list(self.inner.clone(), dir.cloned(), recursive).await
    }

    async fn put_files(&self, files: Vec<NewFile>) -> Vec<Result<Metadata>> {
        batch::put_files(self.inner.clone(), files).await
    }

    async fn create_dir(&self, path: &StorePath) -> Result<Metadata> {
        let inner = self.inner.clone();
        let path = path.clone();
        blocking(move || {
            let segments: Vec<&str> = path.segments().collect();
            // Creates each missing level (fsyncing its parent), refusing a file in the way.
            let dir = resolve::open_dir_creating(inner.root.as_fd(), &segments, &path).map_err(|e| match e {
                Error::ParentNotDirectory { .. } if resolve::is_file_at(inner.root.as_fd(), &path) => {
                    Error::AlreadyExists { path: path.as_str().to_owned() }
                }
                other => other,
            })?;
            let st = fs::fstat(&dir).map_err(|e| Error::io("reading a directory's metadata", e.into()))?;
            Ok(resolve::metadata(path, EntryKind::Directory, &st, None))
        })
        .await
    }

    async fn set_dir_metadata(
        &self,
        path: &StorePath,
        mtime: Option<SystemTime>,
        permissions: Option<u32>,
    ) -> Result<Metadata> {
        let inner = self.inner.clone();
        let path = path.clone();
        blocking(move || {
            let segments: Vec<&str> = path.segments().collect();
            let dir = resolve::open_dir(inner.root.as_fd(), &segments, &path, Purpose::Read)?;
            if let Some(permissions) = permissions {
                // The server must still be able to list, create and remove in it.
                let mode = Mode::from_raw_mode(permissions & 0o777 | 0o700);
                fs::fchmod(&dir, mode).map_err(|e| Error::io("setting a directory's permissions", e.into()))?;
            }
            if let Some(mtime) = mtime {
                let mtime = upload::to_timespec(mtime);
                let times = fs::Timestamps { last_access: mtime, last_modification: mtime };
                fs::futimens(&dir, &times).map_err(|e| Error::io("setting a directory's time", e.into()))?;
            }
            let st = fs::fstat(&dir).map_err(|e| Error::io("reading a directory's metadata", e.into()))?;
            Ok(resolve::metadata(path, EntryKind::Directory, &st, None))
        })
        .await
    }

    async fn free_space(&self) -> Result<Option<u64>> {
        let inner = self.inner.clone();
        blocking(move || {
            let st = fs::fstatvfs(&inner.root).map_err(|e| Error::io("reading free space", e.into()))?;
            // What an unprivileged writer can use (f_bavail), as df shows it.
            Ok(Some(st.f_bavail.saturating_mul(st.f_frsize)))
        })
        .await
    }

    async fn count_uploads(&self) -> Result<usize> {
        let inner = self.inner.clone();
        blocking(move || {
            let entries = std::fs::read_dir(&inner.uploads_dir).map_err(|e| Error::io("listing upload sessions", e))?;
            // Resumable sessions have a journal; plain uploads in progress do not.
            Ok(entries.filter_map(std::result::Result::ok).filter(|e| e.path().join("journal").is_file()).count())
        })
        .await
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        let inner = self.inner.clone();
        let path = path.clone();
        blocking(move || {
            let (parents, name) = path.split_last();
            let parent = resolve::open_dir(inner.root.as_fd(), &parents, &path, Purpose::Read)?;
            let st = resolve::stat_entry(parent.as_fd(), name, &path)?;
            let flags = match resolve::entry_kind(&st, &path)? {
                EntryKind::File => AtFlags::empty(),
                EntryKind::Directory => AtFlags::REMOVEDIR,
            };
            fs::unlinkat(&parent, name, flags).map_err(|errno| match errno {
                Errno::NOTEMPTY | Errno::EXIST => Error::DirectoryNotEmpty { path: path.as_str().to_owned() },
                other => resolve::classify(parent.as_fd(), name, other, &path, Purpose::Read, "deleting"),
            })?;
            fs::fsync(&parent).map_err(|e| Error::io("syncing a directory after delete", e.into()))
        })
        .await
    }
}
