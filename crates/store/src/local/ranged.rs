//! Ranged uploads into a [`LocalStore`](super::LocalStore): one file written
//! as byte ranges by several streams at once, then verified and published.
//!
//! The session is an ordinary session directory (`session.rs`) whose `data`
//! is preallocated to the declared size, and whose journal records the
//! committed ranges instead of one offset. Each range writer `pwrite`s at
//! its offsets; when its range is complete it fdatasyncs the file and
//! records the range in the journal (merged with its neighbours), so the
//! journal never claims bytes that are not on disk. The ranges being written
//! are tracked in memory (`claims.rs`) and never overlap each other or a
//! committed range.
//!
//! SHA-256 cannot be computed out of order, so the commit reads the whole
//! file back (from the page cache, usually) and hashes it, then publishes it
//! as any upload is: permissions, mtime, digest xattr, fsync, rename, fsync
//! of the parent.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;

use bytes::Bytes;
use sha2::Digest as _;

use super::claims::{Claim, RangeGuard, Slot};
use super::session::{Journal, SessionDir};
use super::upload::{check_target, publish};
use super::{Inner, blocking};
use crate::{Error, Metadata, RangeWrite, Result, Sha256, StorePath, UploadId, UploadStatus, WriteOptions};

/// Separate committed ranges a session tracks at most: the journal record
/// must fit its 4 KiB slot with a path of 1 KiB. A range is granted only if
/// the committed ranges merged with it, plus the ranges being written,
/// number at most this; so a client that hands out pieces in order can keep
/// up to 16 streams busy (each piece in flight also splits the committed ones).
pub(super) const MAX_RANGES: usize = 32;
/// Bytes read at a time when the commit hashes the file.
const HASH_BLOCK: usize = 1024 * 1024;

/// Creates a ranged session: checks the target, journals the options with
/// no committed ranges, and reserves the file's space.
pub(super) async fn create(inner: Arc<Inner>, path: StorePath, options: WriteOptions) -> Result<UploadId> {
    let size = options.size.ok_or(Error::RangedNeedsSize)?;
    let id = match &options.upload_id {
        Some(id) => id.clone(),
        None => UploadId::random()?,
    };
    let session = SessionDir::new(&inner.uploads_dir, &id);
    blocking(move || {
        check_target(&inner, &path, options.mode)?;
        let mut journal = Journal::new(&path, &WriteOptions { resumable: true, ..options });
        journal.ranges = Some(Vec::new());
        let data = session.create(Some(&journal))?;
        reserve(&data, size).inspect_err(|_| {
            let _ = session.remove();
        })
    })
    .await?;
    Ok(id)
}

/// Allocates the file's blocks now, so that a full disk fails the creation,
/// not a range halfway; a filesystem that cannot is given a sparse file.
fn reserve(data: &File, size: u64) -> Result<()> {
    if size == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(data, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOSPC) => Err(Error::StorageFull),
        Err(_) => data.set_len(size).map_err(|e| Error::io("sizing a ranged upload", e)),
    }
}

/// Starts writing `offset..offset + length` of a ranged session.
pub(super) async fn write_range(
    inner: Arc<Inner>,
    id: UploadId,
    offset: u64,
    length: u64,
) -> Result<Box<dyn RangeWrite>> {
    let session = SessionDir::new(&inner.uploads_dir, &id);
    // Before waiting for the session: an ordinary session's stream holds it
    // for its whole life, and a call that can only fail must not wait for that.
    let (check, check_id) = (session.clone(), id.clone());
    blocking(move || read_ranged(&check, &check_id).map(drop)).await?;
    let slot = inner.sessions.slot(&id);
    // Watched before waiting: an abort that comes meanwhile preempts this writer.
    let claim = slot.watch();
    // Shared with the other writers; waits while an abort removes the session.
    let guard = slot.share().await;
    let (claim_slot, claim_id) = (slot.clone(), id.clone());
    let opened = blocking(move || {
        let mut writing = claim_slot.writing();
        let journal = read_ranged(&session, &claim_id)?;
        let size = journal.size.unwrap_or(0);
        let end = offset.checked_add(length).filter(|end| *end <= size);
        let Some(end) = end else { return Err(Error::RangeOutsideFile { offset, length, size }) };
        let range = offset..end;
        let committed = committed_ranges(&journal);
        if committed.iter().chain(writing.iter()).any(|other| overlaps(other, &range)) {
            return Err(Error::RangeConflict { id: claim_id.to_string(), offset, length });
        }
        // Any of the ranges being written may finish, in any order, or not at
        // all, and each can add at most one separate range: counted that way,
        // a range granted here can always be recorded. (A range that joins
        // committed ones counts as they merge, so a session at the limit can
        // still be completed.)
        let mut with_new = committed.clone();
        with_new.push(range.clone());
        if merge(with_new).len() + writing.len() > MAX_RANGES {
            return Err(Error::TooManyRanges { id: claim_id.to_string(), max: MAX_RANGES });
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(session.data())
            .map_err(|e| Error::io("opening a ranged upload", e))?;
        writing.push(range.clone());
        // Made here, so that the range is given back even if the caller
        // goes away (a cancelled call) before this returns to it.
        Ok((file, Writing { slot: claim_slot.clone(), range }))
    })
    .await;
    let (file, writing) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            if matches!(e, Error::UploadNotFound { .. }) {
                drop(guard);
                inner.sessions.forget(&id);
            }
            return Err(e);
        }
    };
    Ok(Box::new(LocalRangeWrite {
        inner,
        id,
        slot,
        range: writing.range.clone(),
        written: 0,
        file: Arc::new(file),
        claim,
        writing: Some(writing),
        _guard: guard,
    }))
}

/// A range being written, listed in its slot until this is dropped.
#[derive(Debug)]
struct Writing {
    slot: Arc<Slot>,
    range: Range<u64>,
}

impl Drop for Writing {
    /// An unfinished range is free to be written again.
    fn drop(&mut self) {
        let range = self.range.clone();
        self.slot.writing().retain(|r| *r != range);
    }
}

/// Publishes a ranged session whose ranges cover the file.
pub(super) async fn commit(inner: Arc<Inner>, id: UploadId, final_sha256: Option<Sha256>) -> Result<Metadata> {
    let session = SessionDir::new(&inner.uploads_dir, &id);
    let (check, check_id) = (session.clone(), id.clone());
    blocking(move || read_ranged(&check, &check_id).map(drop)).await?;
    let slot = inner.sessions.slot(&id);
    let Some(guard) = slot.try_hold() else { return Err(Error::RangesInFlight { id: id.to_string() }) };
    // In a task of its own: a caller that goes away (the client cancelled)
    // must not leave the file published and the session behind.
    tokio::spawn(publish_and_end(inner, id, final_sha256, session, guard))
        .await
        .map_err(|e| Error::io("committing a ranged upload", std::io::Error::other(e)))?
}

/// The commit, once the session is held.
async fn publish_and_end(
    inner: Arc<Inner>,
    id: UploadId,
    final_sha256: Option<Sha256>,
    session: SessionDir,
    guard: super::claims::SessionGuard,
) -> Result<Metadata> {
    let (commit_inner, commit_id, commit_session) = (inner.clone(), id.clone(), session.clone());
    let outcome = blocking(move || {
        let journal = read_ranged(&commit_session, &commit_id)?;
        let (path, options) = journal.options()?;
        let size = options.size.unwrap_or(0);
        if let Some((missing, first_gap)) = gaps(&committed_ranges(&journal), size) {
            return Err(Error::RangesMissing { id: commit_id.to_string(), missing, first_gap });
        }
        let io = |e| Error::io("reading back a ranged upload", e);
        // Read-only: an earlier attempt whose rename failed may have given
        // the file its final permission bits already, owner-write or not.
        let file = std::fs::File::open(commit_session.data()).map_err(io)?;
        rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o600))
            .map_err(|e| Error::io("reading back a ranged upload", e.into()))?;
        let sha256 = hash_file(&file, size).map_err(io)?;
        for expected in [options.sha256, final_sha256].into_iter().flatten() {
            if expected != sha256 {
                return Err(Error::DigestMismatch { expected, actual: sha256 });
            }
        }
        crate::crash::point("commit.after-verify");
        publish(&commit_inner, path, &options, file, &commit_session.data(), sha256)
    })
    .await;
    // Published, or failed a check it can never pass: the session is over.
    // Any other failure (ranges missing, the target in the way, the disk)
    // keeps it, for the client to mend and commit again, or to abort.
    let over = matches!(outcome, Ok(_) | Err(Error::DigestMismatch { .. }));
    if !over {
        drop(guard);
        return outcome;
    }
    let removed = blocking(move || session.remove()).await;
    drop(guard);
    inner.sessions.forget(&id);
    let meta = outcome?;
    removed?;
    Ok(meta)
}

/// The session's journal, if it is a ranged one.
fn read_ranged(session: &SessionDir, id: &UploadId) -> Result<Journal> {
    let journal = session.read_journal()?.ok_or_else(|| Error::UploadNotFound { id: id.to_string() })?;
    match journal.ranges {
        Some(_) => Ok(journal),
        None => Err(Error::NotRangedUpload { id: id.to_string() }),
    }
}

fn committed_ranges(journal: &Journal) -> Vec<Range<u64>> {
    journal.ranges.iter().flatten().map(|&(start, end)| start..end).collect()
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Sorts and merges touching or overlapping ranges; drops empty ones.
pub(super) fn merge(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// The bytes of `0..size` the ranges miss, and where the first gap starts;
/// `None` if they cover it all.
pub(super) fn gaps(ranges: &[Range<u64>], size: u64) -> Option<(u64, u64)> {
    let covered: u64 = ranges.iter().map(|r| r.end.min(size) - r.start.min(size)).sum();
    if covered >= size {
        return None;
    }
    let first_gap = match ranges.first() {
        Some(first) if first.start == 0 => first.end,
        _ => 0,
    };
    Some((size - covered, first_gap))
}

fn hash_file(file: &File, size: u64) -> std::io::Result<Sha256> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; HASH_BLOCK];
    let mut offset = 0;
    while offset < size {
        let want = HASH_BLOCK.min((size - offset) as usize);
        file.read_exact_at(&mut buf[..want], offset)?;
        hasher.update(&buf[..want]);
        offset += want as u64;
    }
    Ok(Sha256::from(hasher))
}

/// One stream's range of a ranged session.
struct LocalRangeWrite {
    inner: Arc<Inner>,
    id: UploadId,
    slot: Arc<Slot>,
    range: Range<u64>,
    written: u64,
    file: Arc<File>,
    claim: Claim,
    /// `None` once the range is recorded as committed.
    writing: Option<Writing>,
    _guard: RangeGuard,
}

impl std::fmt::Debug for LocalRangeWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRangeWrite")
            .field("id", &self.id)
            .field("range", &self.range)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl LocalRangeWrite {
    fn length(&self) -> u64 {
        self.range.end - self.range.start
    }
}

#[async_trait::async_trait]
impl RangeWrite for LocalRangeWrite {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        if !self.claim.is_current() {
            return Err(Error::Preempted { id: self.id.to_string() });
        }
        let received = self.written + data.len() as u64;
        if received > self.length() {
            return Err(Error::SizeMismatch { declared: self.length(), received });
        }
        let (file, at) = (self.file.clone(), self.range.start + self.written);
        blocking(move || file.write_all_at(&data, at).map_err(|e| Error::io("writing a range", e))).await?;
        self.written = received;
        Ok(())
    }

    fn received(&self) -> u64 {
        self.written
    }

    async fn preempted(&self) {
        self.claim.taken_over().await;
    }

    async fn finish(mut self: Box<Self>) -> Result<UploadStatus> {
        if !self.claim.is_current() {
            return Err(Error::Preempted { id: self.id.to_string() });
        }
        if self.written != self.length() {
            return Err(Error::SizeMismatch { declared: self.length(), received: self.written });
        }
        let (file, slot, range, id) = (self.file.clone(), self.slot.clone(), self.range.clone(), self.id.clone());
        let session = SessionDir::new(&self.inner.uploads_dir, &id);
        // Into the blocking call: recorded or not, the range stops being
        // "written" when it ends, even if this call is cancelled meanwhile.
        let writing = self.writing.take();
        let status = blocking(move || {
            file.sync_data().map_err(|e| Error::io("syncing a range", e))?;
            crate::crash::point("range.after-data-sync");
            let listed = slot.writing();
            let mut journal = read_ranged(&session, &id)?;
            let mut ranges = committed_ranges(&journal);
            ranges.push(range.clone());
            let ranges = merge(ranges);
            if ranges.len() > MAX_RANGES {
                return Err(Error::TooManyRanges { id: id.to_string(), max: MAX_RANGES });
            }
            journal.committed = ranges.first().filter(|r| r.start == 0).map_or(0, |r| r.end);
            journal.ranges = Some(ranges.iter().map(|r| (r.start, r.end)).collect());
            journal.seq += 1;
            session.write_journal(&journal)?;
            drop(listed);
            drop(writing);
            let (path, options) = journal.options()?;
            Ok(UploadStatus { id, path, committed: journal.committed, size: options.size, ranges: Some(ranges) })
        })
        .await?;
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_gaps_are_found() {
        assert_eq!(merge(vec![8..10, 0..4, 4..6, 9..12, 3..3]), vec![0..6, 8..12]);
        assert_eq!(gaps(&[0..6, 8..12], 12), Some((2, 6)));
        let one = |range: Range<u64>| vec![range];
        assert_eq!(gaps(&one(2..12), 12), Some((2, 0)));
        assert_eq!(gaps(&one(0..12), 12), None);
        assert_eq!(gaps(&[], 0), None);
        assert_eq!(gaps(&[], 5), Some((5, 0)));
    }
}
