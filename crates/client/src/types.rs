//! Plain Rust views of the wire messages.

use std::time::SystemTime;

use ferry_proto::v1::{EntryKind, FileInfo};

/// A file or directory on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    pub mtime: Option<SystemTime>,
    pub permissions: u32,
    /// SHA-256 (hex), when the server has it.
    pub sha256: Option<String>,
}

impl From<FileInfo> for RemoteFile {
    fn from(info: FileInfo) -> Self {
        Self {
            is_dir: info.kind == EntryKind::Directory as i32,
            path: info.path,
            size: info.size,
            mtime: info.mtime.and_then(|ts| SystemTime::try_from(ts).ok()),
            permissions: info.permissions,
            sha256: Some(info.sha256).filter(|s| !s.is_empty()),
        }
    }
}

/// What an upload declares besides its path.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Exact size, when known (a file's length; not stdin's).
    pub size: Option<u64>,
    /// Fail with ALREADY_EXISTS instead of replacing an existing file.
    pub create_only: bool,
    /// Modification time to give the stored file.
    pub mtime: Option<SystemTime>,
    /// Permission bits to give the stored file.
    pub permissions: Option<u32>,
}

/// A byte range to download: `length` bytes from `offset`, or to the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub length: Option<u64>,
}

impl Range {
    pub const ALL: Range = Range { offset: 0, length: None };
}
