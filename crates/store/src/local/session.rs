//! Upload sessions on disk: `.ferry/uploads/<id>/` holds `data` (the bytes
//! received so far) and, for resumable uploads, `journal`: the session's
//! options, its durable committed offset and the SHA-256 state at exactly that
//! offset.
//!
//! The journal file has two fixed-size slots, each a JSON record followed by
//! its SHA-256. Checkpoint *n* overwrites slot *n* mod 2 in place and
//! fdatasyncs, after `fdatasync(data)`: so the journal never claims bytes that
//! are not on disk, and a crash mid-write can tear only the slot being
//! written, never the previous checkpoint in the other one. Writing in place
//! needs no rename and no directory sync; the rename-based version cost about
//! a quarter of an upload's throughput here (docs/performance.md).
//!
//! Recovery reads the valid slot with the higher sequence number and
//! truncates `data` to its offset, which is idempotent: a crash during
//! recovery is recovered the same way.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

use crate::{Error, Result, Sha256, StorePath, UploadId, WriteMode, WriteOptions};

pub(super) const DATA: &str = "data";
const JOURNAL: &str = "journal";
const FORMAT_VERSION: u32 = 1;
/// Bytes per journal slot: a record (options, path up to 1 KiB, hash state)
/// and its digest fit with room to spare.
const SLOT: usize = 4096;

/// The journal of a resumable upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Journal {
    pub version: u32,
    /// Checkpoint number: the record goes to slot `seq % 2`.
    pub seq: u64,
    pub path: String,
    pub create_only: bool,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// Seconds and nanoseconds since the epoch (seconds may be negative).
    pub mtime: Option<(i64, u32)>,
    pub permissions: Option<u32>,
    /// Durable bytes of `data`.
    pub committed: u64,
    /// Hex of the serialised SHA-256 state after `committed` bytes (unused
    /// by ranged sessions, which hash at commit).
    pub hash_state: String,
    /// Ranged sessions only: the durable ranges as `(start, end)`, sorted,
    /// merged and disjoint; `committed` is then the end of the one starting
    /// at 0. Absent from ordinary sessions' records (and from journals
    /// written before ranged sessions existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Vec<(u64, u64)>>,
}

impl Journal {
    pub fn new(path: &StorePath, options: &WriteOptions) -> Self {
        Self {
            version: FORMAT_VERSION,
            seq: 0,
            path: path.as_str().to_owned(),
            create_only: options.mode == WriteMode::CreateOnly,
            size: options.size,
            sha256: options.sha256.map(|d| d.to_hex()),
            mtime: options.mtime.map(split_time),
            permissions: options.permissions,
            committed: 0,
            hash_state: encode_state(&sha2::Sha256::default()),
            ranges: None,
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
            upload_id: None,
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
        std::fs::create_dir(&self.dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::UploadExists {
                id: self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            },
            _ => io(e),
        })?;
        let data =
            std::fs::OpenOptions::new().write(true).create_new(true).mode_0600().open(self.data()).map_err(io)?;
        if let Some(journal) = journal {
            self.write_journal(journal)?;
            // The new session directory must survive a crash too.
            sync_dir(self.dir.parent().unwrap_or(&self.dir))?;
        }
        Ok(data)
    }

    /// Writes the journal record into its slot and syncs it (see the module
    /// docs). The first record also creates the file and syncs the directory.
    pub fn write_journal(&self, journal: &Journal) -> Result<()> {
        let io = |e| Error::io("writing an upload journal", e);
        let record = encode_slot(journal)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(JOURNAL))
            .map_err(io)?;
        let slot = (journal.seq % 2) * SLOT as u64;
        file.write_all_at(&record, slot).map_err(io)?;
        if journal.seq == 0 {
            file.set_len(2 * SLOT as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
            return sync_dir(&self.dir);
        }
        file.sync_data().map_err(io)
    }

    /// The newest valid journal record, or `None` if the session does not
    /// exist (or never got one).
    pub fn read_journal(&self) -> Result<Option<Journal>> {
        let bytes = match std::fs::read(self.dir.join(JOURNAL)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading an upload journal", e)),
        };
        let newest = bytes.chunks(SLOT).take(2).filter_map(decode_slot).max_by_key(|journal| journal.seq);
        match newest {
            Some(journal) => Ok(Some(journal)),
            None => Err(Error::io("reading an upload journal", std::io::Error::other("no valid journal record"))),
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

/// A slot: 4-byte length, the JSON record, its SHA-256, zero padding.
fn encode_slot(journal: &Journal) -> Result<Vec<u8>> {
    let json =
        serde_json::to_vec(journal).map_err(|e| Error::io("writing an upload journal", std::io::Error::other(e)))?;
    if 4 + json.len() + 32 > SLOT {
        return Err(Error::io("writing an upload journal", std::io::Error::other("journal record too large")));
    }
    let mut slot = Vec::with_capacity(SLOT);
    slot.extend_from_slice(&(json.len() as u32).to_le_bytes());
    slot.extend_from_slice(&json);
    slot.extend_from_slice(&Sha256::of(&json).0);
    slot.resize(SLOT, 0);
    Ok(slot)
}

/// The record in a slot, if it is whole (a torn or empty slot is `None`).
fn decode_slot(slot: &[u8]) -> Option<Journal> {
    let len = u32::from_le_bytes(slot.get(..4)?.try_into().ok()?) as usize;
    let json = slot.get(4..4 + len)?;
    let digest = slot.get(4 + len..4 + len + 32)?;
    (len > 0 && Sha256::of(json).0 == digest).then(|| serde_json::from_slice(json).ok()).flatten()
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("syncing a directory", e))
}

/// Start-up recovery: every session without a journal (an upload that was
/// not resumable, or crashed while being created) or without data (crashed
/// after publishing) is removed; every other ordinary one is truncated to
/// its journaled offset. Ranged sessions are kept as they are: bytes
/// outside their committed ranges are simply not counted (and are written
/// again). Returns (kept, removed).
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
            (Some(journal), Some(_)) if journal.ranges.is_some() => kept += 1,
            (Some(journal), Some(len)) if len >= journal.committed => {
                if len > journal.committed {
                    let data = std::fs::OpenOptions::new().write(true).open(session.data()).map_err(io)?;
                    data.set_len(journal.committed).map_err(io)?;
                    data.sync_all().map_err(io)?;
                }
                kept += 1;
                crate::crash::point("recovery.after-first-session");
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
    fn a_torn_slot_falls_back_to_the_previous_checkpoint() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("test", e))?;
        let session = SessionDir { dir: dir.path().to_owned() };
        let mut journal = Journal::new(&StorePath::parse("a")?, &WriteOptions::default());
        for (seq, committed) in [(0, 0), (1, 100), (2, 200)] {
            journal.seq = seq;
            journal.committed = committed;
            session.write_journal(&journal)?;
        }
        assert_eq!(session.read_journal()?.map(|j| j.committed), Some(200));
        // Tear the newest record (slot 0, seq 2): the other slot still holds seq 1.
        let file =
            std::fs::OpenOptions::new().write(true).open(dir.path().join(JOURNAL)).map_err(|e| Error::io("test", e))?;
        file.write_all_at(b"garbage", 10).map_err(|e| Error::io("test", e))?;
        assert_eq!(session.read_journal()?.map(|j| j.committed), Some(100));
        Ok(())
    }

    #[test]
    fn times_round_trip_either_side_of_the_epoch() {
        for time in [UNIX_EPOCH + Duration::new(5, 7), UNIX_EPOCH - Duration::new(5, 7), UNIX_EPOCH] {
            assert_eq!(join_time(split_time(time)), time);
        }
    }
}
