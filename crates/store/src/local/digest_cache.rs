//! The digest of each file, cached in an extended attribute of the file
//! itself (`user.ferry.sha256`). Uploads write it before the rename, so the
//! digest travels with the inode and is never out of step with the data ferry
//! wrote. It is keyed by size and mtime: a file changed by something other than
//! ferry no longer matches and is hashed again on its next download.
//! Filesystems without user xattrs simply never hit the cache.

use std::fs::File;
use std::io::Read;

use rustix::fs::{self, Stat, XattrFlags};
use sha2::Digest as _;

use crate::{Error, Result, Sha256};

const XATTR_NAME: &str = "user.ferry.sha256";

fn cache_key(st: &Stat) -> String {
    format!("1 {} {} {}", st.st_size, st.st_mtime, st.st_mtime_nsec)
}

/// The cached digest, if present and still valid for this size and mtime.
pub(super) fn load(file: &File, st: &Stat) -> Option<Sha256> {
    let mut buf = [0u8; 160];
    let len = fs::fgetxattr(file, XATTR_NAME, &mut buf).ok()?;
    let value = std::str::from_utf8(&buf[..len]).ok()?;
    let (key, hex) = value.rsplit_once(' ')?;
    if key != cache_key(st) {
        return None;
    }
    Sha256::from_hex(hex).ok()
}

/// Caches `digest` for the file as it is now (best effort).
pub(super) fn store(file: &File, st: &Stat, digest: &Sha256) {
    let value = format!("{} {}", cache_key(st), digest.to_hex());
    if let Err(errno) = fs::fsetxattr(file, XATTR_NAME, value.as_bytes(), XattrFlags::empty()) {
        tracing::debug!(%errno, "could not cache a digest in an extended attribute");
    }
}

/// The digest of a file that has none cached: reads it whole from the start.
/// Leaves the file position at the end; callers seek before reading on.
pub(super) fn compute(mut file: &File) -> Result<Sha256> {
    std::io::Seek::rewind(&mut file).map_err(|e| Error::io("hashing a file", e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("hashing a file", e)),
        }
    }
    Ok(hasher.into())
}
