//! The storage layer's error: a small semantic enum that the server maps to
//! gRPC status codes in exactly one place. Variants carry only what the client
//! sent (its path, its numbers); OS detail stays inside [`Error::Io`], which
//! the server logs and never forwards.

use std::io;

use crate::{PathError, Sha256};

/// Result alias for storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid path: {0}")]
    InvalidPath(#[from] PathError),
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("{path}: already exists")]
    AlreadyExists { path: String },
    #[error("{path}: is a directory")]
    IsDirectory { path: String },
    #[error("{path}: a parent of this path is a file")]
    ParentNotDirectory { path: String },
    #[error("{path}: not a regular file")]
    NotAFile { path: String },
    #[error("{path}: directory not empty")]
    DirectoryNotEmpty { path: String },
    #[error("{path}: passes through a symbolic link, which ferry never follows")]
    Symlink { path: String },
    #[error("range starts at byte {offset}, past the end of the file ({size} bytes)")]
    RangeStartsPastEnd { offset: u64, size: u64 },
    #[error("range offset {offset} + length {length} overflows")]
    RangeOverflow { offset: u64, length: u64 },
    #[error("declared size is {declared} bytes but {received} bytes were received")]
    SizeMismatch { declared: u64, received: u64 },
    #[error("sha256 mismatch: expected {expected}, received data hashes to {actual}")]
    DigestMismatch { expected: Sha256, actual: Sha256 },
    #[error("storage is full")]
    StorageFull,
    #[error("upload ids are 32 lowercase hex characters")]
    InvalidUploadId,
    #[error("upload {id}: no such upload (unknown, finished, aborted or expired)")]
    UploadNotFound { id: String },
    /// A session with the id the caller chose already exists.
    #[error("upload {id} already exists")]
    UploadExists { id: String },
    /// A write must continue exactly at the durable committed offset.
    #[error("write at offset {offset}, but upload {id} has {committed} bytes committed")]
    OffsetMismatch { id: String, offset: u64, committed: u64 },
    /// Another stream resumed (or aborted) this upload.
    #[error("upload {id} was taken over by another stream")]
    Preempted { id: String },
    /// The backend cannot do this (an object store cannot stage ranges).
    #[error("this server's storage does not support {what}")]
    Unsupported { what: &'static str },
    /// A ranged upload needs its size declared up front.
    #[error("a ranged upload needs the file's size declared")]
    RangedNeedsSize,
    /// A sequential write or resume to a ranged session.
    #[error("upload {id} is ranged: send it in ranges (start.length) and complete it with CommitUpload")]
    RangedUpload { id: String },
    /// A range write or ranged commit to an ordinary session.
    #[error("upload {id} is not ranged: continue it at its committed offset")]
    NotRangedUpload { id: String },
    #[error("range of {length} bytes at offset {offset} lies outside the file ({size} bytes)")]
    RangeOutsideFile { offset: u64, length: u64, size: u64 },
    /// The range overlaps one already committed, or one another stream is
    /// writing.
    #[error(
        "range of {length} bytes at offset {offset} of upload {id} overlaps a committed range or one being written"
    )]
    RangeConflict { id: String, offset: u64, length: u64 },
    /// Committing the range would leave more separate ranges than a session
    /// tracks.
    #[error("upload {id} would have more than {max} separate committed ranges; send ranges next to committed ones")]
    TooManyRanges { id: String, max: usize },
    /// A ranged commit before every byte is committed.
    #[error("upload {id} is missing {missing} bytes (the first gap starts at offset {first_gap})")]
    RangesMissing { id: String, missing: u64, first_gap: u64 },
    /// A ranged commit while range streams are still writing.
    #[error("upload {id} still has ranges being written (or is being committed)")]
    RangesInFlight { id: String },
    /// Anything unexpected. `op` says what was being done; the source holds the
    /// OS error. Never sent to clients.
    #[error("storage I/O error while {op}: {source}")]
    Io { op: &'static str, source: io::Error },
    /// A remote backend (an object store) could not be reached or kept
    /// failing after its retries. Transient from the client's view; the
    /// detail is logged, never sent.
    #[error("storage backend unavailable while {op}: {detail}")]
    Unavailable { op: &'static str, detail: String },
}

impl Error {
    /// Wraps an unexpected I/O error, turning "no space" into [`Error::StorageFull`].
    pub fn io(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(code)
                if code == rustix::io::Errno::NOSPC.raw_os_error()
                    || code == rustix::io::Errno::DQUOT.raw_os_error() =>
            {
                Error::StorageFull
            }
            _ => Error::Io { op, source },
        }
    }

    /// The same failure, restated for `path`: for an error that several
    /// files of one batch share (their directory could not be created or
    /// synced), each file gets its own copy naming it.
    pub fn clone_for(&self, path: &crate::StorePath) -> Self {
        let path = path.as_str().to_owned();
        match self {
            Error::NotFound { .. } => Error::NotFound { path },
            Error::AlreadyExists { .. } => Error::AlreadyExists { path },
            Error::IsDirectory { .. } => Error::IsDirectory { path },
            Error::ParentNotDirectory { .. } => Error::ParentNotDirectory { path },
            Error::NotAFile { .. } => Error::NotAFile { path },
            Error::DirectoryNotEmpty { .. } => Error::DirectoryNotEmpty { path },
            Error::Symlink { .. } => Error::Symlink { path },
            Error::StorageFull => Error::StorageFull,
            Error::Unavailable { op, detail } => Error::Unavailable { op, detail: detail.clone() },
            Error::Io { op, source } => Error::Io { op, source: io::Error::new(source.kind(), source.to_string()) },
            other => Error::Io { op: "storing a batch", source: io::Error::other(other.to_string()) },
        }
    }
}
