//! ferry's storage layer. It knows nothing of gRPC: the server turns client
//! input into a [`StorePath`], calls a [`Store`], and maps [`Error`] to a
//! status code in one place.
//!
//! | concept | file |
//! |---|---|
//! | validated paths (traversal impossible by construction) | `path.rs` |
//! | the semantic error enum | `error.rs` |
//! | SHA-256 digests | `digest.rs` |
//! | the `Store` / `Upload` traits and their types | `lib.rs` (here) |
//! | the local-directory backend | `local/` |

use std::fmt::{self, Debug};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_core::Stream;

pub mod crash;
mod digest;
mod error;
pub mod local;
mod path;
#[cfg(feature = "s3")]
pub mod s3;

pub use digest::{DigestParseError, Sha256};
pub use error::{Error, Result};
pub use local::LocalStore;
pub use path::{MAX_PATH_LEN, MAX_SEGMENT_LEN, PathError, RESERVED_NAME, StorePath};

/// A boxed, sendable stream, as the trait's methods return them.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
}

/// What the store knows about a file or directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub path: StorePath,
    pub kind: EntryKind,
    /// Bytes; 0 for directories.
    pub size: u64,
    /// `None` where the store keeps no time: directories of a store without
    /// directory metadata (S3: directories there are key prefixes).
    pub mtime: Option<SystemTime>,
    /// Permission bits (mode & 0o777).
    pub permissions: u32,
    /// The file's SHA-256 when known without reading the file.
    pub sha256: Option<Sha256>,
}

/// A byte range of a file: `length` bytes from `offset`, or to the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub length: Option<u64>,
}

impl ByteRange {
    /// The whole file.
    pub const ALL: ByteRange = ByteRange { offset: 0, length: None };

    /// Clamps the range to a file of `size` bytes: `(offset, length)`.
    ///
    /// `offset == size` is a valid empty range; `offset > size` and an
    /// `offset + length` that overflows are errors; a length past the end is
    /// cut at the end (as HTTP ranges are).
    pub fn resolve(self, size: u64) -> Result<(u64, u64)> {
        if let Some(length) = self.length
            && self.offset.checked_add(length).is_none()
        {
            return Err(Error::RangeOverflow { offset: self.offset, length });
        }
        if self.offset > size {
            return Err(Error::RangeStartsPastEnd { offset: self.offset, size });
        }
        let available = size - self.offset;
        Ok((self.offset, self.length.map_or(available, |l| l.min(available))))
    }
}

/// Whether an upload may replace an existing file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace atomically; of concurrent uploads, the last to commit wins.
    #[default]
    Overwrite,
    /// Fail with [`Error::AlreadyExists`] if the path exists: checked when the
    /// upload starts and again, atomically, at commit.
    CreateOnly,
}

/// The id of an upload session: 32 lowercase hex characters (128 random bits).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    /// Validates an id a client sent.
    pub fn parse(raw: &str) -> Result<Self> {
        let valid = raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid { Ok(Self(raw.to_owned())) } else { Err(Error::InvalidUploadId) }
    }

    /// A fresh random id.
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::io("generating an upload id", std::io::Error::other(e.to_string())))?;
        Ok(Self(hex::encode(bytes)))
    }

    /// The id a protocol derives from its own name for an upload (a
    /// ByteStream resource name, say), so that the same name finds the same
    /// session after a restart: the first 128 bits of SHA-256(`key`).
    pub fn derived(key: &str) -> Self {
        use sha2::Digest as _;
        Self(hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.0)
    }
}

/// What a resumable upload's journal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: UploadId,
    pub path: StorePath,
    /// Bytes that are durable (fsynced and journaled): a resume continues here.
    /// Never decreases; may be less than what a client has sent.
    pub committed: u64,
    /// The declared size, if any.
    pub size: Option<u64>,
    /// Ranged sessions ([`Store::create_ranged_upload`]): the durable
    /// ranges, sorted, merged and disjoint. `committed` is then the end of
    /// the one starting at 0 (0 if none does). `None` for ordinary sessions.
    pub ranges: Option<Vec<std::ops::Range<u64>>>,
}

/// Everything an upload declares up front.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub mode: WriteMode,
    /// Exact size, if known: more or fewer bytes fail the upload.
    pub size: Option<u64>,
    /// Expected digest, if known: a mismatch fails the upload before commit.
    pub sha256: Option<Sha256>,
    /// Modification time for the stored file (now, if unset).
    pub mtime: Option<SystemTime>,
    /// Permission bits (0o644 if unset).
    pub permissions: Option<u32>,
    /// Keep the session when the upload is dropped unfinished, so that it can
    /// be resumed ([`Store::resume_upload`]); otherwise dropping discards it.
    pub resumable: bool,
    /// The session's id, if the caller chooses it ([`UploadId::derived`]);
    /// a session with that id already existing is [`Error::UploadExists`].
    /// Otherwise the store picks a random one.
    pub upload_id: Option<UploadId>,
}

/// A whole file for [`Store::put_files`]: its bytes, in memory.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub path: StorePath,
    /// As for an upload; `resumable` and `upload_id` are ignored.
    pub options: WriteOptions,
    pub data: Bytes,
}

/// A download: the whole file's metadata and a stream of the range's bytes.
pub struct Download {
    /// Metadata of the version being streamed, `sha256` always set.
    pub meta: Metadata,
    /// The resolved range: first byte and byte count.
    pub offset: u64,
    pub length: u64,
    /// The bytes, in order, in chunks of at most the store's chunk size.
    pub body: BoxStream<Result<Bytes>>,
}

impl Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("meta", &self.meta)
            .field("offset", &self.offset)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// A storage backend. Dyn-safe: the server holds an `Arc<dyn Store>`.
///
/// Every backend upholds the same rules:
/// - **Atomic publish.** Nothing is visible at a path until [`Upload::commit`]
///   returns; a dropped, failed or mismatching upload leaves nothing visible
///   and nothing behind.
/// - **Snapshot reads.** A [`Download`] streams the version it opened, even if
///   the file is replaced or deleted meanwhile.
/// - **No escape.** Paths resolve beneath the root only; symbolic links are
///   never followed ([`Error::Symlink`]).
#[async_trait::async_trait]
pub trait Store: Debug + Send + Sync + 'static {
    /// Metadata of a file or directory.
    async fn stat(&self, path: &StorePath) -> Result<Metadata>;

    /// Opens a file for reading a range of it.
    async fn read(&self, path: &StorePath, range: ByteRange) -> Result<Download>;

    /// Starts an upload session to `path`. Conflicts that can be seen now (the
    /// path is a directory, a parent is a file, create-only and the file
    /// exists) fail here, before any data is sent.
    async fn create_upload(&self, path: &StorePath, options: WriteOptions) -> Result<Box<dyn Upload>>;

    /// Continues a resumable upload at `offset`, which must equal its committed
    /// offset ([`Error::OffsetMismatch`] otherwise). A stream still writing to
    /// the session is preempted first: its next call fails with
    /// [`Error::Preempted`]. Survives restarts: the session lives on disk.
    async fn resume_upload(&self, id: &UploadId, offset: u64) -> Result<Box<dyn Upload>>;

    /// The durable state of a resumable upload.
    async fn upload_status(&self, id: &UploadId) -> Result<UploadStatus>;

    /// Discards a resumable upload (preempting a stream still writing to it).
    async fn abort_upload(&self, id: &UploadId) -> Result<()>;

    /// Discards resumable uploads untouched for longer than `idle`; returns
    /// how many. Uploads with a live stream are kept.
    async fn expire_uploads(&self, idle: Duration) -> Result<usize>;

    /// The entries under `dir` (the root when `None`), in batches: one level,
    /// or the whole subtree depth-first when `recursive`. Each directory's
    /// entries come sorted by name. A `dir` naming a file yields just that file.
    async fn list(&self, dir: Option<&StorePath>, recursive: bool) -> Result<BoxStream<Result<Vec<Metadata>>>>;

    /// Deletes a file or an empty directory.
    async fn delete(&self, path: &StorePath) -> Result<()>;

    /// Stores several whole files, each with the same guarantees as an upload
    /// (verified, then published atomically and durably), and returns one
    /// result per file, in order, once all are done. Meant for many small
    /// files: a backend may share the cost of durability across the batch.
    /// Files of one batch with the same path are applied in order.
    async fn put_files(&self, files: Vec<NewFile>) -> Vec<Result<Metadata>> {
        let mut results = Vec::with_capacity(files.len());
        for file in files {
            results.push(put_whole(self, file).await);
        }
        results
    }

    /// Creates the directory `path` and any missing parents, and returns its
    /// metadata. An existing directory is success; a file in the way is
    /// [`Error::AlreadyExists`] (or [`Error::ParentNotDirectory`] for a parent).
    async fn create_dir(&self, path: &StorePath) -> Result<Metadata>;

    /// Sets the existing directory `path`'s modification time and permission
    /// bits (`mode & 0o777`), those given, and returns its metadata. The
    /// store's own user keeps `rwx` (0o700), so that it can go on serving
    /// the directory. Not synced: the attributes reach the disk with the
    /// filesystem's next commit (a tree copy sets them for every directory,
    /// and an fsync each would cost more than the copy's files).
    /// [`Error::NotFound`] if no directory is there (nothing, or a file);
    /// backends without directory metadata answer [`Error::Unsupported`].
    async fn set_dir_metadata(
        &self,
        path: &StorePath,
        mtime: Option<SystemTime>,
        permissions: Option<u32>,
    ) -> Result<Metadata> {
        let _ = (path, mtime, permissions);
        Err(Error::Unsupported { what: "directory times and permissions" })
    }

    /// Starts a *ranged* upload session to `path`: the file (whose size
    /// `options` must declare) arrives as byte ranges, written by
    /// [`Store::write_range`] in any order and by any number of writers at
    /// once, and is published by [`Store::commit_ranged`]. Resumable by
    /// nature: the session and its committed ranges survive restarts. The
    /// same conflicts as [`Store::create_upload`] fail here. Backends that
    /// cannot stage ranges answer [`Error::Unsupported`].
    async fn create_ranged_upload(&self, path: &StorePath, options: WriteOptions) -> Result<UploadId> {
        let _ = (path, options);
        Err(Error::Unsupported { what: "ranged uploads" })
    }

    /// Starts writing `length` bytes at `offset` of a ranged session. The
    /// range must lie inside the file and overlap neither a committed range
    /// nor one being written ([`Error::RangeConflict`]).
    async fn write_range(&self, id: &UploadId, offset: u64, length: u64) -> Result<Box<dyn RangeWrite>> {
        let _ = (id, offset, length);
        Err(Error::Unsupported { what: "ranged uploads" })
    }

    /// Publishes a ranged upload once its committed ranges cover the whole
    /// file ([`Error::RangesMissing`] otherwise, and the session stays):
    /// reads the data back to verify its SHA-256 (against the declared
    /// digest and `final_sha256`), then publishes atomically, as
    /// [`Upload::commit`] does. [`Error::RangesInFlight`] while a range is
    /// still being written.
    async fn commit_ranged(&self, id: &UploadId, final_sha256: Option<Sha256>) -> Result<Metadata> {
        let _ = (id, final_sha256);
        Err(Error::Unsupported { what: "ranged uploads" })
    }

    /// Bytes free for new files, if the backend has such a limit (a local
    /// filesystem does; an object store does not). Used to refuse uploads
    /// that cannot fit before they start.
    async fn free_space(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// How many resumable upload sessions the store holds.
    async fn count_uploads(&self) -> Result<usize>;
}

/// One whole file through an ordinary upload: what [`Store::put_files`]
/// does for backends without a batched path.
pub async fn put_whole<S: Store + ?Sized>(store: &S, file: NewFile) -> Result<Metadata> {
    let options = WriteOptions { resumable: false, upload_id: None, ..file.options };
    let mut upload = store.create_upload(&file.path, options).await?;
    if !file.data.is_empty() {
        upload.write(file.data).await?;
    }
    upload.commit(None).await
}

/// An upload in progress. Dropping it without [`Upload::commit`] discards it,
/// unless it is resumable: then the session stays, at its committed offset.
#[async_trait::async_trait]
pub trait Upload: Debug + Send {
    /// The session's id.
    fn id(&self) -> &UploadId;

    /// Appends `data`. Waits while the backend is busy (backpressure).
    async fn write(&mut self, data: Bytes) -> Result<()>;

    /// Bytes accepted so far (committed, and in flight to the disk).
    fn received(&self) -> u64;

    /// The size declared when the upload was created, if any.
    fn declared_size(&self) -> Option<u64>;

    /// The latest durable offset known. Advances in the background as data
    /// is synced (every few MiB), and at [`Upload::sync`].
    fn committed(&self) -> u64;

    /// Makes everything accepted so far durable; returns the committed offset.
    async fn sync(&mut self) -> Result<u64>;

    /// Completes once the committed offset is past `seen` (as a background
    /// sync finishes), so that a stream can tell its client without waiting
    /// for the next chunk. Backends that commit only as data arrives never
    /// complete it.
    async fn committed_past(&self, seen: u64);

    /// Completes when another stream takes the session over (resume or abort).
    async fn preempted(&self);

    /// Verifies the declared size and digests (those from [`WriteOptions`] and
    /// `final_sha256`, which a client may learn only after sending), makes the
    /// data durable and publishes it atomically at the upload's path.
    async fn commit(self: Box<Self>, final_sha256: Option<Sha256>) -> Result<Metadata>;
}

/// One range of a ranged upload, being written by one stream. Dropping it
/// unfinished commits nothing of the range (it may be written again).
#[async_trait::async_trait]
pub trait RangeWrite: Debug + Send {
    /// Writes the range's next bytes. Waits while the backend is busy.
    async fn write(&mut self, data: Bytes) -> Result<()>;

    /// Bytes of the range written so far.
    fn received(&self) -> u64;

    /// Completes when the session is taken from this writer (aborted).
    async fn preempted(&self);

    /// Makes the whole range durable and records it as committed
    /// ([`Error::SizeMismatch`] if fewer bytes than its length arrived);
    /// returns the session's status after it.
    async fn finish(self: Box<Self>) -> Result<UploadStatus>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_resolution() {
        let r = |offset, length| ByteRange { offset, length };
        assert_eq!(ByteRange::ALL.resolve(10).ok(), Some((0, 10)));
        assert_eq!(r(9, None).resolve(10).ok(), Some((9, 1)));
        assert_eq!(r(10, None).resolve(10).ok(), Some((10, 0)));
        assert_eq!(r(2, Some(3)).resolve(10).ok(), Some((2, 3)));
        assert_eq!(r(8, Some(30)).resolve(10).ok(), Some((8, 2)));
        assert!(matches!(r(11, None).resolve(10), Err(Error::RangeStartsPastEnd { offset: 11, size: 10 })));
        assert!(matches!(r(1, Some(u64::MAX)).resolve(10), Err(Error::RangeOverflow { .. })));
    }
}
