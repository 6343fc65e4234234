//! Upload sessions on disk: `.ferry/uploads/<id>/` holds `data` (the bytes
//! received so far) and, for resumable uploads, `journal.json`: the session's
//! options, its durable committed offset and the SHA-256 state at exactly that
//! offset.
//!
//! Durability order, at every checkpoint: `fdatasync(data)`, then write
//! `journal.tmp`, fsync it, rename it over `journal.json`, fsync the session
//! directory. So the journal never claims bytes that are not on disk, and a
//! crash at any point leaves either the old journal or the new one. Recovery
//! truncates `data` to the journaled offset, which is idempotent: a crash
//! during recovery is recovered the same way.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

use crate::{Error, Result, Sha256, StorePath, UploadId, WriteMode, WriteOptions};

pub(super) const DATA: &str = "data";
const JOURNAL: &str = "journal.json";
const JOURNAL_TMP: &str = "journal.tmp";
const FORMAT_VERSION: u32 = 1;

/// The journal of a resumable upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Journal {
    pub version: u32,
    pub path: String,
    pub create_only: bool,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// Seconds and nanoseconds since the epoch (seconds may be negative).
    pub mtime: Option<(i64, u32)>,
    pub permissions: Option<u32>,
    /// Durable bytes of `data`.
    pub committed: u64,
    /// Hex of the serialised SHA-256 state after `committed` bytes.
    pub hash_state: String,
}

impl Journal {
    pub fn new(path: &StorePath, options: &WriteOptions) -> Self {
        Self {
            version: FORMAT_VERSION,
            path: path.as_str().to_owned(),
            create_only: options.mode == WriteMode::CreateOnly,
            size: options.size,
            sha256: options.sha256.map(|d| d.to_hex()),
            mtime: options.mtime.map(split_time),
            permissions: options.permissions,
            committed: 0,
            hash_state: encode_state(&sha2::Sha256::default()),
        }
    }

    /// The options and path this session was created with.
    pub fn options(&self) -> Result<(StorePath, WriteOptions)> {
        let corrupt = || Error::io("reading an upload journal", std::io::Error::other("inconsistent journal"));
        let path = StorePath::parse(&self.path).map_err(|_| corrupt())?;
        let sha256 = self.sha256.as_deref().map(Sha256::from_hex).transpose().map_err(|_| corrupt())?;
        let options = WriteOptions {
            mode: if self.create_only { WriteMode::CreateOnly } else { WriteMode::Overwrite },
            size: self.size,
            sha256,
            mtime: self.mtime.map(join_time),
            permissions: self.permissions,
            resumable: true,
        };
        Ok((path, options))
    }

    pub fn hasher(&self) -> Result<sha2::Sha256> {
        let corrupt = || Error::io("reading an upload journal", std::io::Error::other("bad hash state"));
        let bytes = hex::decode(&self.hash_state).map_err(|_| corrupt())?;
        let state = SerializedState::<sha2::Sha256>::try_from(bytes.as_slice()).map_err(|_| corrupt())?;
        sha2::Sha256::deserialize(&state).map_err(|_| corrupt())
    }
}

pub(super) fn encode_state(hasher: &sha2::Sha256) -> String {
    hex::encode(hasher.serialize())
}

fn split_time(time: SystemTime) -> (i64, u32) {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (after.as_secs() as i64, after.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            match before.subsec_nanos() {
                0 => (-(before.as_secs() as i64), 0),
                nanos => (-(before.as_secs() as i64) - 1, 1_000_000_000 - nanos),
            }
        }
    }
}

fn join_time((secs, nanos): (i64, u32)) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(u64::from(nanos))
    }
}

/// Where a session's files live.
#[derive(Debug, Clone)]
pub(super) struct SessionDir {
    pub dir: PathBuf,
}

impl SessionDir {
    pub fn new(uploads: &Path, id: &UploadId) -> Self {
        Self { dir: uploads.join(id.as_str()) }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join(DATA)
    }

    /// Creates the directory and an empty data file; journals resumable ones.
    pub fn create(&self, journal: Option<&Journal>) -> Result<File> {
        let io = |e| Error::io("creating an upload session", e);
        std::fs::create_dir(&self.dir).map_err(io)?;
        let data =
            std::fs::OpenOptions::new().write(true).create_new(true).mode_0600().open(self.data()).map_err(io)?;
        if let Some(journal) = journal {
            self.write_journal(journal)?;
            // The new session directory must survive a crash too.
            sync_dir(self.dir.parent().unwrap_or(&self.dir))?;
        }
        Ok(data)
    }

    /// Atomically replaces the journal (see the module docs for the order).
    pub fn write_journal(&self, journal: &Journal) -> Result<()> {
        let io = |e| Error::io("writing an upload journal", e);
        let tmp = self.dir.join(JOURNAL_TMP);
        let encoded = serde_json::to_vec(journal).map_err(|e| io(std::io::Error::other(e)))?;
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(&encoded).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, self.dir.join(JOURNAL)).map_err(io)?;
        sync_dir(&self.dir)
    }

    /// The journal, or `None` if the session does not exist (or never got one).
    pub fn read_journal(&self) -> Result<Option<Journal>> {
        match std::fs::read(self.dir.join(JOURNAL)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::io("reading an upload journal", std::io::Error::other(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading an upload journal", e)),
        }
    }

    /// When the journal last changed: the session's last sign of life.
    pub fn last_activity(&self) -> Option<SystemTime> {
        std::fs::metadata(self.dir.join(JOURNAL)).and_then(|m| m.modified()).ok()
    }

    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing an upload session", e)),
        }
    }
}

/// Opening with mode 0600 without a unix-only import at every call site.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("syncing a directory", e))
}

/// Start-up recovery: every session without a journal (an upload that was
/// not resumable, or crashed while being created) or without data (crashed
/// after publishing) is removed; every other one is truncated to its
/// journaled offset. Returns (kept, removed).
pub(super) fn recover(uploads: &Path) -> Result<(usize, usize)> {
    let io = |e| Error::io("recovering upload sessions", e);
    let (mut kept, mut removed) = (0, 0);
    for entry in std::fs::read_dir(uploads).map_err(io)? {
        let entry = entry.map_err(io)?;
        let session = SessionDir { dir: entry.path() };
        let journal = match session.read_journal() {
            Ok(journal) => journal,
            Err(e) => {
                tracing::warn!(session = %entry.path().display(), error = %e, "discarding an unreadable upload session");
                None
            }
        };
        let data_len = std::fs::metadata(session.data()).map(|m| m.len()).ok();
        match (journal, data_len) {
            (Some(journal), Some(len)) if len >= journal.committed => {
                if len > journal.committed {
                    let data = std::fs::OpenOptions::new().write(true).open(session.data()).map_err(io)?;
                    data.set_len(journal.committed).map_err(io)?;
                    data.sync_all().map_err(io)?;
                }
                let _ = std::fs::remove_file(session.dir.join(JOURNAL_TMP));
                kept += 1;
            }
            _ => {
                session.remove()?;
                removed += 1;
            }
        }
    }
    Ok((kept, removed))
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    #[test]
    fn journal_restores_the_hash_state() -> Result<()> {
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"first half, ");
        let mut journal = Journal::new(&StorePath::parse("a")?, &WriteOptions::default());
        journal.hash_state = encode_state(&hasher);
        let mut resumed = journal.hasher()?;
        resumed.update(b"second half");
        assert_eq!(Sha256::from(resumed), Sha256::of(b"first half, second half"));
        Ok(())
    }

    #[test]
    fn times_round_trip_either_side_of_the_epoch() {
        for time in [UNIX_EPOCH + Duration::new(5, 7), UNIX_EPOCH - Duration::new(5, 7), UNIX_EPOCH] {
            assert_eq!(join_time(split_time(time)), time);
        }
    }
}
