//! Resolving a [`StorePath`] beneath the root, one directory at a time, with
//! `O_NOFOLLOW` at every step. Together with `StorePath`'s invariants (no `..`,
//! no absolute paths) this makes escaping the root impossible: no symbolic
//! link is ever followed, so even one planted inside the root by someone with
//! shell access leads nowhere.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::{EntryKind, Error, Metadata, Result, Sha256, StorePath};

/// Why a path is being resolved: it decides what a file in the middle of the
/// path means ("not found" to a reader, a conflict to a writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Read,
    Write,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Mode for directories ferry creates.
const DIR_MODE: Mode = Mode::from_raw_mode(0o755);

/// Opens the directory `segments` beneath `root` (the root itself when empty).
pub(super) fn open_dir(root: BorrowedFd<'_>, segments: &[&str], path: &StorePath, purpose: Purpose) -> Result<OwnedFd> {
    let mut current = open_root(root)?;
    for segment in segments {
        current = fs::openat(&current, *segment, DIR_FLAGS, Mode::empty())
            .map_err(|errno| classify(current.as_fd(), segment, errno, path, purpose, "opening a directory"))?;
    }
    Ok(current)
}

/// Like [`open_dir`], creating missing directories on the way. Each new
/// directory's parent is fsynced so the new entry survives a crash.
pub(super) fn open_dir_creating(root: BorrowedFd<'_>, segments: &[&str], path: &StorePath) -> Result<OwnedFd> {
    let mut current = open_root(root)?;
    for segment in segments {
        let next = match fs::openat(&current, *segment, DIR_FLAGS, Mode::empty()) {
            Err(Errno::NOENT) => {
                match fs::mkdirat(&current, *segment, DIR_MODE) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => {
                        return Err(classify(
                            current.as_fd(),
                            segment,
                            errno,
                            path,
                            Purpose::Write,
                            "creating a directory",
                        ));
                    }
                }
                fs::fsync(&current).map_err(|e| Error::io("syncing a new directory's parent", e.into()))?;
                fs::openat(&current, *segment, DIR_FLAGS, Mode::empty())
            }
            other => other,
        };
        current = next
            .map_err(|errno| classify(current.as_fd(), segment, errno, path, Purpose::Write, "opening a directory"))?;
    }
    Ok(current)
}

/// Whether `path` itself names a regular file (not a link, not a directory).
pub(super) fn is_file_at(root: BorrowedFd<'_>, path: &StorePath) -> bool {
    let (parents, name) = path.split_last();
    open_dir(root, &parents, path, Purpose::Read)
        .and_then(|parent| stat_entry(parent.as_fd(), name, path))
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
}

/// A fresh descriptor for the root directory itself.
pub(super) fn open_root(dir: BorrowedFd<'_>) -> Result<OwnedFd> {
    fs::openat(dir, ".", DIR_FLAGS, Mode::empty()).map_err(|e| Error::io("opening the root", e.into()))
}

/// Turns an errno from an `*at` call on `dir/name` into a semantic error.
pub(super) fn classify(
    dir: BorrowedFd<'_>,
    name: &str,
    errno: Errno,
    path: &StorePath,
    purpose: Purpose,
    op: &'static str,
) -> Error {
    let path_string = || path.as_str().to_owned();
    match errno {
        Errno::NOENT => Error::NotFound { path: path_string() },
        Errno::LOOP => Error::Symlink { path: path_string() },
        Errno::NOTDIR => match fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                Error::Symlink { path: path_string() }
            }
            _ if purpose == Purpose::Write => Error::ParentNotDirectory { path: path_string() },
            _ => Error::NotFound { path: path_string() },
        },
        other => Error::io(op, other.into()),
    }
}

/// `lstat` of `dir/name`, without following a link.
pub(super) fn stat_entry(dir: BorrowedFd<'_>, name: &str, path: &StorePath) -> Result<Stat> {
    fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|errno| classify(dir, name, errno, path, Purpose::Read, "reading metadata"))
}

/// What a stat says the entry is, as ferry sees it.
pub(super) fn entry_kind(st: &Stat, path: &StorePath) -> Result<EntryKind> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(EntryKind::File),
        FileType::Directory => Ok(EntryKind::Directory),
        FileType::Symlink => Err(Error::Symlink { path: path.as_str().to_owned() }),
        _ => Err(Error::NotAFile { path: path.as_str().to_owned() }),
    }
}

/// Builds [`Metadata`] from a stat.
pub(super) fn metadata(path: StorePath, kind: EntryKind, st: &Stat, sha256: Option<Sha256>) -> Metadata {
    Metadata {
        path,
        kind,
        size: if kind == EntryKind::File { st.st_size.max(0) as u64 } else { 0 },
        mtime: Some(mtime_of(st)),
        permissions: st.st_mode & 0o777,
        sha256,
    }
}

pub(super) fn mtime_of(st: &Stat) -> SystemTime {
    let nanos = st.st_mtime_nsec.clamp(0, 999_999_999) as u32;
    if st.st_mtime >= 0 {
        UNIX_EPOCH + Duration::new(st.st_mtime as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::new(st.st_mtime.unsigned_abs(), 0) + Duration::from_nanos(u64::from(nanos))
    }
}
