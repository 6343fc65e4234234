//! Ranged upload sessions (`Store::create_ranged_upload`, `write_range`,
//! `commit_ranged`, `RangeWrite`), as conformance rules: registered in
//! `conformance!` with the others, so each runs as `local::RULE` and
//! `s3::RULE`.
//!
//! Backends differ here by design: the local store stages ranges (in a
//! preallocated session file, `local/ranged.rs`); an object store cannot,
//! and answers `Error::Unsupported`. A rule asks the fixture
//! ([`Fixture::stages_ranges`]); where the backend cannot, it checks that
//! the ranged upload is refused and leaves nothing behind
//! ([`unsupported_here`]), and that ordinary sessions are not disturbed.
//!
//! The rules are in two files: this one holds the shared helpers and the
//! core of a session (the round trip, conflicts, range lengths, the
//! commit's checks, ordinary and ranged sessions side by side);
//! `ranged_limits.rs` holds its limits and edges (aborts, too many
//! ranges, expiry, targets in the way, recovery, empty files, refused
//! starts).

// Statuses list ranges: a list of one range is what is meant.
#![allow(clippy::single_range_in_vec_init)]

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use ferry_store::{
    ByteRange, EntryKind, Error, RangeWrite, Result, Sha256, Store, UploadId, UploadStatus, WriteOptions,
};

use crate::support::{Fixture, STEP_TIMEOUT, WRITE_CHUNK, content, data, path, put, read_all, within, write_all};
use crate::{check_listed_digest, resumable};

/// Bytes per write when writers interleave: small, odd, so that concurrent
/// writers' chunks alternate.
const SMALL_CHUNK: usize = (64 << 10) - 3;

impl Fixture {
    /// Whether the backend stages ranged uploads. The local store does; an
    /// object store cannot write a file out of order, and answers
    /// `Error::Unsupported` (the trait's default).
    pub(crate) fn stages_ranges(&self) -> bool {
        match self {
            Fixture::Local(_) => true,
            #[cfg(feature = "s3")]
            Fixture::S3(_) => false,
        }
    }
}

/// The options of a ranged upload of `size` bytes.
pub(crate) fn ranged(size: u64) -> WriteOptions {
    WriteOptions { size: Some(size), ..WriteOptions::default() }
}

/// On a backend that does not stage ranges: asserts that this ranged
/// upload is refused with Unsupported and leaves nothing (nothing visible,
/// no session, nothing staged), and returns true: the rule has nothing
/// more to check there. False on a backend that stages ranges.
pub(crate) async fn unsupported_here(fixture: &Fixture, store: &dyn Store, raw: &str, options: WriteOptions) -> bool {
    if fixture.stages_ranges() {
        return false;
    }
    expect_err!(
        store.create_ranged_upload(&path(raw), options).await,
        Error::Unsupported { .. },
        "{raw}: a ranged upload on a backend that cannot stage ranges"
    );
    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "{raw}: after an unsupported ranged upload");
    assert_eq!(store.count_uploads().await.unwrap(), 0, "{raw}: count_uploads after an unsupported ranged upload");
    fixture.assert_nothing_staged("after an unsupported ranged upload").await;
    true
}

/// A writer for `range`, which must be granted.
pub(crate) async fn open_range(store: &dyn Store, id: &UploadId, range: Range<u64>) -> Box<dyn RangeWrite> {
    within("write_range", store.write_range(id, range.start, range.end - range.start))
        .await
        .unwrap_or_else(|e| panic!("write_range {range:?}: {e}"))
}

/// Writes `bytes` in `chunk`-byte pieces.
pub(crate) async fn feed(writer: &mut Box<dyn RangeWrite>, bytes: Bytes, chunk: usize) -> Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + chunk).min(bytes.len());
        writer.write(bytes.slice(at..end)).await?;
        at = end;
    }
    Ok(())
}

/// `bytes[range]`.
pub(crate) fn slice(bytes: &Bytes, range: Range<u64>) -> Bytes {
    bytes.slice(range.start as usize..range.end as usize)
}

/// Writes `range` of the file `bytes` as one writer and finishes it: the
/// status `finish` returns.
pub(crate) async fn send(store: &dyn Store, id: &UploadId, bytes: &Bytes, range: Range<u64>) -> UploadStatus {
    let mut writer = open_range(store, id, range.clone()).await;
    feed(&mut writer, slice(bytes, range.clone()), WRITE_CHUNK)
        .await
        .unwrap_or_else(|e| panic!("writing {range:?}: {e}"));
    assert_eq!(writer.received(), range.end - range.start, "{range:?}: received");
    within("finish", writer.finish()).await.unwrap_or_else(|e| panic!("finishing {range:?}: {e}"))
}

/// Writes several ranges at once: every writer is granted first, then each
/// writes on its own task, in small chunks (so that they interleave), and
/// finishes. Each finish's status holds (at least) its own range.
async fn send_concurrently(store: &Arc<dyn Store>, id: &UploadId, bytes: &Bytes, ranges: &[Range<u64>]) {
    let mut writers = Vec::new();
    for range in ranges {
        writers.push((range.clone(), open_range(store.as_ref(), id, range.clone()).await));
    }
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|(range, mut writer)| {
            let part = slice(bytes, range.clone());
            tokio::spawn(async move {
                feed(&mut writer, part, SMALL_CHUNK).await.unwrap_or_else(|e| panic!("writing {range:?}: {e}"));
                let status = writer.finish().await.unwrap_or_else(|e| panic!("finishing {range:?}: {e}"));
                (range, status)
            })
        })
        .collect();
    for task in tasks {
        let (range, status) = within("a concurrent writer", task).await.unwrap();
        let ranges = status.ranges.expect("a ranged session's status has ranges");
        assert!(
            ranges.iter().any(|r| r.start <= range.start && range.end <= r.end),
            "the status after finishing {range:?} does not hold it: {ranges:?}"
        );
    }
}

/// What `upload_status` says of a ranged session: (ranges, committed).
pub(crate) async fn ranges_of(store: &dyn Store, id: &UploadId) -> (Vec<Range<u64>>, u64) {
    let status = store.upload_status(id).await.unwrap_or_else(|e| panic!("status of ranged session {id}: {e}"));
    (status.ranges.expect("a ranged session's status has ranges"), status.committed)
}

/// Writes every range the session still misses (from `upload_status`).
pub(crate) async fn fill(store: &dyn Store, id: &UploadId, bytes: &Bytes) {
    let size = bytes.len() as u64;
    let (ranges, _) = ranges_of(store, id).await;
    let mut at = 0;
    for range in ranges.iter().chain([&(size..size)]) {
        if range.start > at {
            send(store, id, bytes, at..range.start).await;
        }
        at = at.max(range.end);
    }
    assert_eq!(ranges_of(store, id).await, (vec![0..size], size), "after filling the gaps");
}

/// The session is gone: status, range writes, commit and abort all say
/// UploadNotFound.
pub(crate) async fn assert_session_gone(store: &dyn Store, id: &UploadId, what: &str) {
    expect_err!(store.upload_status(id).await, Error::UploadNotFound { .. }, "{what}: status");
    expect_err!(within(what, store.write_range(id, 0, 1)).await, Error::UploadNotFound { .. }, "{what}: write_range");
    expect_err!(within(what, store.commit_ranged(id, None)).await, Error::UploadNotFound { .. }, "{what}: commit");
    expect_err!(within(what, store.abort_upload(id)).await, Error::UploadNotFound { .. }, "{what}: abort");
}

// ------------------------------------------------------------- ranged uploads

/// A ranged upload round trip: ranges written out of order, some by
/// writers at once; `upload_status` (and each `finish`) shows the durable
/// ranges merged and sorted, with `committed` the end of the one starting
/// at 0; the commit publishes exactly the bytes, with the declared mtime,
/// permissions and digest; then the session is gone.
pub(crate) async fn ranged_round_trip(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "ranged/round trip.bin";
    let size = 3 * (1 << 20) + 12_345; // past the 1 MiB blocks the commit hashes, and the read chunks
    let bytes = data(size, 301);
    let digest = Sha256::of(&bytes);
    let mtime = UNIX_EPOCH + Duration::new(1_600_000_000, 987_654_321);
    let options = WriteOptions { sha256: Some(digest), mtime: Some(mtime), permissions: Some(0o640), ..ranged(size) };
    if unsupported_here(fixture, store.as_ref(), raw, options.clone()).await {
        return;
    }

    let id = within("create_ranged_upload", store.create_ranged_upload(&path(raw), options)).await.unwrap();
    assert_eq!(UploadId::parse(id.as_str()).ok().as_ref(), Some(&id), "a well-formed id");
    let status = |committed, ranges: Vec<Range<u64>>| UploadStatus {
        id: id.clone(),
        path: path(raw),
        committed,
        size: Some(size),
        ranges: Some(ranges),
    };
    assert_eq!(store.upload_status(&id).await.unwrap(), status(0, vec![]), "a new ranged session");
    assert_eq!(store.count_uploads().await.unwrap(), 1, "count_uploads with a ranged session");

    // The tail first: no range starts at 0, so nothing is committed in order.
    let tail = 2_000_000..size;
    let finished = send(store.as_ref(), &id, &bytes, tail.clone()).await;
    assert_eq!(finished, status(0, vec![tail.clone()]), "the status the tail's finish returns");
    assert_eq!(store.upload_status(&id).await.unwrap(), finished, "upload_status after the tail");

    // The head and a middle piece, by two writers at once.
    send_concurrently(&store, &id, &bytes, &[1_300_000..2_000_000, 0..700_000]).await;
    let expected = status(700_000, vec![0..700_000, 1_300_000..size]);
    assert_eq!(store.upload_status(&id).await.unwrap(), expected, "after the head and a middle piece");
    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "an unfinished ranged upload is not visible");

    // The gap, by three writers at once.
    send_concurrently(&store, &id, &bytes, &[1_000_000..1_300_000, 700_000..800_000, 800_000..1_000_000]).await;
    assert_eq!(store.upload_status(&id).await.unwrap(), status(size, vec![0..size]), "every byte written");
    assert_eq!(store.count_uploads().await.unwrap(), 1, "count_uploads before the commit");

    let meta = within("commit_ranged", store.commit_ranged(&id, Some(digest))).await.unwrap();
    assert_eq!(
        (meta.path.as_str(), meta.kind, meta.size, meta.sha256, meta.mtime, meta.permissions),
        (raw, EntryKind::File, size, Some(digest), Some(mtime), 0o640),
        "the ranged commit's metadata"
    );
    let stat = store.stat(&path(raw)).await.unwrap();
    assert_eq!(
        (stat.kind, stat.size, stat.mtime, stat.permissions),
        (EntryKind::File, size, Some(mtime), 0o640),
        "stat after the ranged commit"
    );
    check_listed_digest(fixture, "stat after the ranged commit", stat.sha256, digest);
    let (download, got) = read_all(store.as_ref(), raw, ByteRange::ALL).await.unwrap();
    assert_eq!((download.meta.size, download.meta.sha256), (size, Some(digest)), "the download's header");
    assert!(got == bytes[..], "a ranged upload's {} bytes differ from those written", got.len());

    assert_session_gone(store.as_ref(), &id, "a committed ranged session").await;
    assert_eq!(store.count_uploads().await.unwrap(), 0, "count_uploads after the ranged commit");
    fixture.assert_nothing_staged("after a ranged round trip").await;
}

/// A range overlapping a committed range or one being written is
/// RangeConflict (touching is not overlapping); of two writers racing for
/// overlapping ranges exactly one gets its range. A writer dropped
/// unfinished commits nothing, and its range can be written again.
pub(crate) async fn ranged_conflicts(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "ranged/conflicts.bin";
    let size = 1000;
    let bytes = data(size, 302);
    if unsupported_here(fixture, store.as_ref(), raw, ranged(size)).await {
        return;
    }
    let id = store.create_ranged_upload(&path(raw), ranged(size)).await.unwrap();
    send(store.as_ref(), &id, &bytes, 100..200).await;
    let mut live = open_range(store.as_ref(), &id, 400..500).await;
    // Not this range's bytes: they must be written again, and replaced.
    feed(&mut live, data(30, 399), WRITE_CHUNK).await.unwrap();

    let cases: [(u64, u64, &str); 9] = [
        (100, 100, "exactly a committed range"),
        (150, 10, "inside a committed range"),
        (50, 51, "over a committed range's start"),
        (199, 51, "over a committed range's end"),
        (0, size, "over everything"),
        (400, 100, "exactly a live writer's range"),
        (450, 10, "inside a live writer's range"),
        (350, 51, "over a live writer's start"),
        (499, 101, "over a live writer's end"),
    ];
    for (offset, length, what) in cases {
        expect_err!(
            within(what, store.write_range(&id, offset, length)).await,
            Error::RangeConflict { offset: o, length: l, .. } if o == offset && l == length,
            "{length} bytes at {offset}: {what}"
        );
    }
    // Touching is not overlapping: the range between the committed one and the live one.
    let finished = send(store.as_ref(), &id, &bytes, 200..400).await;
    assert_eq!((finished.ranges, finished.committed), (Some(vec![100..400]), 0), "a range touching both");

    // Two writers racing for overlapping ranges: exactly one is granted.
    let (a, b) = tokio::join!(store.write_range(&id, 600, 100), store.write_range(&id, 650, 100));
    assert!(a.is_ok() != b.is_ok(), "exactly one of two overlapping writers is granted: {a:?} / {b:?}");
    let (winner, loser) = if a.is_ok() { (a, b) } else { (b, a) };
    expect_err!(loser.map(drop), Error::RangeConflict { .. }, "the other of two overlapping writers");
    drop(winner); // unfinished: its range is free again

    // The live writer, dropped unfinished: nothing of it counts, and its range is free again.
    assert_eq!(live.received(), 30, "the live writer's received");
    drop(live);
    assert_eq!(ranges_of(store.as_ref(), &id).await, (vec![100..400], 0), "after dropping a writer unfinished");
    send(store.as_ref(), &id, &bytes, 400..500).await;
    assert_eq!(ranges_of(store.as_ref(), &id).await, (vec![100..500], 0), "the dropped writer's range, written again");

    fill(store.as_ref(), &id, &bytes).await;
    within("commit_ranged", store.commit_ranged(&id, None)).await.unwrap();
    assert!(content(store.as_ref(), raw).await == bytes[..], "the bytes after conflicts and a dropped writer");
    fixture.assert_nothing_staged("after range conflicts").await;
}

/// A range's length is exact: `finish` after fewer bytes is SizeMismatch
/// (and commits nothing of the range), a write past its end is
/// SizeMismatch; a range outside the file (or whose end overflows) is
/// RangeOutsideFile. The refused ranges can be written again.
pub(crate) async fn ranged_range_lengths(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "ranged/lengths.bin";
    let size = 1000;
    let bytes = data(size, 303);
    if unsupported_here(fixture, store.as_ref(), raw, ranged(size)).await {
        return;
    }
    let id = store.create_ranged_upload(&path(raw), ranged(size)).await.unwrap();

    let mut short = open_range(store.as_ref(), &id, 0..100).await;
    feed(&mut short, slice(&bytes, 0..99), 40).await.unwrap();
    assert_eq!(short.received(), 99, "received, one byte short");
    expect_err!(
        within("finish", short.finish()).await,
        Error::SizeMismatch { declared: 100, received: 99 },
        "finishing a range one byte short"
    );
    assert_eq!(ranges_of(store.as_ref(), &id).await, (vec![], 0), "a short range is not committed");

    let mut long = open_range(store.as_ref(), &id, 100..200).await;
    long.write(slice(&bytes, 100..160)).await.unwrap();
    expect_err!(
        long.write(slice(&bytes, 160..201)).await,
        Error::SizeMismatch { declared: 100, received: 101 },
        "a write past the range's end"
    );
    drop(long);
    let mut long = open_range(store.as_ref(), &id, 100..200).await;
    expect_err!(
        long.write(slice(&bytes, 100..201)).await,
        Error::SizeMismatch { declared: 100, received: 101 },
        "one write longer than the range"
    );
    drop(long);
    assert_eq!(ranges_of(store.as_ref(), &id).await, (vec![], 0), "an overlong range is not committed");

    let outside: [(u64, u64); 8] =
        [(990, 11), (999, 2), (size, 1), (size + 1, 0), (5000, 10), (u64::MAX, 1), (1, u64::MAX), (u64::MAX, u64::MAX)];
    for (offset, length) in outside {
        expect_err!(
            within("write_range", store.write_range(&id, offset, length)).await,
            Error::RangeOutsideFile { offset: o, length: l, size: s } if o == offset && l == length && s == size,
            "{length} bytes at {offset} of a file of {size}"
        );
    }
    // Ending exactly at the end is inside.
    send(store.as_ref(), &id, &bytes, 990..size).await;
    // The refused ranges, written again in full.
    send(store.as_ref(), &id, &bytes, 0..100).await;
    send(store.as_ref(), &id, &bytes, 100..200).await;
    assert_eq!(ranges_of(store.as_ref(), &id).await, (vec![0..200, 990..size], 200), "after the good ranges");

    fill(store.as_ref(), &id, &bytes).await;
    within("commit_ranged", store.commit_ranged(&id, None)).await.unwrap();
    assert!(content(store.as_ref(), raw).await == bytes[..], "the bytes after refused ranges");
    fixture.assert_nothing_staged("after refused range lengths").await;
}

/// Expects a ranged commit to be refused with RangesMissing, these numbers.
async fn expect_missing(store: &dyn Store, id: &UploadId, missing: u64, first_gap: u64, what: &str) {
    expect_err!(
        within(what, store.commit_ranged(id, None)).await,
        Error::RangesMissing { missing: m, first_gap: g, .. } if m == missing && g == first_gap,
        "a commit {what}: expected {missing} bytes missing from {first_gap}"
    );
}

/// A ranged commit checks the ranges first: gaps are RangesMissing (how
/// many bytes, and where the first gap starts), a live writer is
/// RangesInFlight, and the session stays for more ranges. Then the digest:
/// a wrong final or declared SHA-256 is DigestMismatch, nothing is visible
/// (an existing file stays as it was) and the session is gone.
pub(crate) async fn ranged_commit_checks(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "ranged/checked.bin";
    let size = 1000;
    let bytes = data(size, 304);
    let (real, wrong) = (Sha256::of(&bytes), Sha256::of(b"not these bytes"));
    let options = WriteOptions { sha256: Some(real), ..ranged(size) };
    if unsupported_here(fixture, store.as_ref(), raw, options.clone()).await {
        return;
    }
    let id = store.create_ranged_upload(&path(raw), options).await.unwrap();
    expect_missing(store.as_ref(), &id, size, 0, "with nothing written").await;
    for range in [100..200, 300..400, 900..size] {
        send(store.as_ref(), &id, &bytes, range).await;
    }
    expect_missing(store.as_ref(), &id, 700, 0, "with nothing at the start").await;
    send(store.as_ref(), &id, &bytes, 0..100).await;
    expect_missing(store.as_ref(), &id, 600, 200, "with two gaps").await;
    send(store.as_ref(), &id, &bytes, 400..900).await;
    expect_missing(store.as_ref(), &id, 100, 200, "with one gap").await;
    assert_eq!(
        ranges_of(store.as_ref(), &id).await,
        (vec![0..200, 300..size], 200),
        "the session after refused commits"
    );

    let mut live = open_range(store.as_ref(), &id, 200..300).await;
    feed(&mut live, slice(&bytes, 200..250), WRITE_CHUNK).await.unwrap();
    expect_err!(
        within("commit_ranged", store.commit_ranged(&id, None)).await,
        Error::RangesInFlight { .. },
        "a commit while a range is being written"
    );
    feed(&mut live, slice(&bytes, 250..300), WRITE_CHUNK)
        .await
        .unwrap_or_else(|e| panic!("the live writer, after a refused commit: {e}"));
    let finished = within("finish", live.finish()).await.unwrap();
    assert_eq!((finished.ranges, finished.committed), (Some(vec![0..size]), size), "the last range");

    expect_err!(
        within("commit_ranged", store.commit_ranged(&id, Some(wrong))).await,
        Error::DigestMismatch { expected, actual } if expected == wrong && actual == real,
        "a ranged commit with a wrong final digest"
    );
    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "after a final digest mismatch");
    assert_session_gone(store.as_ref(), &id, "a ranged session after a digest mismatch").await;
    assert_eq!(store.count_uploads().await.unwrap(), 0, "count_uploads after a digest mismatch");
    fixture.assert_nothing_staged("after a ranged final digest mismatch").await;

    // A wrong declared digest, over an existing file.
    let raw = "ranged/existing.bin";
    let old = data(500, 305);
    put(store.as_ref(), raw, &old).await;
    let id =
        store.create_ranged_upload(&path(raw), WriteOptions { sha256: Some(wrong), ..ranged(size) }).await.unwrap();
    send(store.as_ref(), &id, &bytes, 0..size).await;
    expect_err!(
        within("commit_ranged", store.commit_ranged(&id, None)).await,
        Error::DigestMismatch { expected, actual } if expected == wrong && actual == real,
        "a ranged commit with a wrong declared digest"
    );
    assert!(content(store.as_ref(), raw).await == old, "a mismatching ranged upload replaced the file");
    let stat = store.stat(&path(raw)).await.unwrap();
    assert_eq!(stat.size, 500, "stat after a mismatching ranged overwrite");
    check_listed_digest(fixture, "stat after a mismatching ranged overwrite", stat.sha256, Sha256::of(&old));
    assert_session_gone(store.as_ref(), &id, "a ranged session after a declared digest mismatch").await;
    fixture.assert_nothing_staged("after a ranged declared digest mismatch").await;
}

/// Ordinary and ranged sessions do not mix. An ordinary session's status
/// has no ranges; `write_range` and `commit_ranged` on it are
/// NotRangedUpload (Unsupported where ranges are not staged) and leave it
/// as it was. `resume_upload` of a ranged session is RangedUpload, at any
/// offset, and does not preempt its range writers; a new session with a
/// ranged session's id is UploadExists.
pub(crate) async fn ranged_and_ordinary_sessions_do_not_mix(fixture: &Fixture) {
    let store = fixture.open().await;
    let plain_raw = "kind/plain.bin";
    let plain_bytes = data(300, 306);
    let mut plain =
        store.create_upload(&path(plain_raw), WriteOptions { size: Some(300), ..resumable() }).await.unwrap();
    let plain_id = plain.id().clone();
    write_all(&mut plain, &plain_bytes.slice(..100)).await.unwrap();
    let committed = plain.sync().await.unwrap();
    drop(plain);
    let before = store.upload_status(&plain_id).await.unwrap();
    assert_eq!(before.ranges, None, "an ordinary session's status has no ranges");
    refuse_ranged_calls(fixture, store.as_ref(), &plain_id, "an ordinary session at rest").await;
    assert_eq!(store.upload_status(&plain_id).await.unwrap(), before, "the ordinary session after ranged calls");
    let mut plain = within("a resume", store.resume_upload(&plain_id, committed)).await.unwrap();
    write_all(&mut plain, &plain_bytes.slice(committed as usize..)).await.unwrap();
    plain.commit(None).await.unwrap();
    assert!(content(store.as_ref(), plain_raw).await == plain_bytes, "the ordinary session's bytes");

    let raw = "kind/ranged.bin";
    let size = 200;
    let bytes = data(size, 307);
    if unsupported_here(fixture, store.as_ref(), raw, ranged(size)).await {
        return;
    }
    let id = store.create_ranged_upload(&path(raw), ranged(size)).await.unwrap();
    let mut live = open_range(store.as_ref(), &id, 0..100).await;
    feed(&mut live, slice(&bytes, 0..50), WRITE_CHUNK).await.unwrap();
    for offset in [0, 50, 100, size] {
        expect_err!(
            within("resume_upload", store.resume_upload(&id, offset)).await,
            Error::RangedUpload { .. },
            "resume_upload of a ranged session at {offset}"
        );
    }
    let chosen = Some(id.clone());
    expect_err!(
        within(
            "create_upload",
            store.create_upload(&path("kind/other"), WriteOptions { upload_id: chosen.clone(), ..resumable() })
        )
        .await,
        Error::UploadExists { .. },
        "an ordinary session with a ranged session's id"
    );
    expect_err!(
        within(
            "create_ranged_upload",
            store.create_ranged_upload(&path("kind/other"), WriteOptions { upload_id: chosen, ..ranged(10) })
        )
        .await,
        Error::UploadExists { .. },
        "a ranged session with a ranged session's id"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), live.preempted()).await.is_err(),
        "a refused resume preempted a range writer"
    );
    feed(&mut live, slice(&bytes, 50..100), WRITE_CHUNK)
        .await
        .unwrap_or_else(|e| panic!("a range writer after refused resumes: {e}"));
    within("finish", live.finish()).await.unwrap_or_else(|e| panic!("a range writer after refused resumes: {e}"));
    send(store.as_ref(), &id, &bytes, 100..size).await;
    within("commit_ranged", store.commit_ranged(&id, None)).await.unwrap();
    assert!(content(store.as_ref(), raw).await == bytes, "the ranged session's bytes");
    expect_err!(store.stat(&path("kind/other")).await, Error::NotFound { .. }, "the refused sessions' path");
    fixture.assert_nothing_staged("after mixing session kinds").await;
}

/// `write_range` and `commit_ranged` of an ordinary session are refused:
/// NotRangedUpload, or Unsupported on a backend that does not stage ranges.
async fn refuse_ranged_calls(fixture: &Fixture, store: &dyn Store, id: &UploadId, what: &str) {
    let expected = if fixture.stages_ranges() { "NotRangedUpload" } else { "Unsupported" };
    // Both calls are made whatever the first answers, so that a failure names every wrong answer.
    let write = tokio::time::timeout(STEP_TIMEOUT, store.write_range(id, 0, 10)).await.map(|r| r.map(drop));
    let commit = tokio::time::timeout(STEP_TIMEOUT, store.commit_ranged(id, None)).await.map(|r| r.map(drop));
    let mut wrong = Vec::new();
    for (call, outcome) in [("write_range", write), ("commit_ranged", commit)] {
        match outcome {
            Ok(Err(Error::NotRangedUpload { .. })) if fixture.stages_ranges() => {}
            Ok(Err(Error::Unsupported { .. })) if !fixture.stages_ranges() => {}
            Ok(other) => wrong.push(format!("{call} answered {other:?}")),
            Err(_) => wrong.push(format!("{call} did not complete within {STEP_TIMEOUT:?} (hung)")),
        }
    }
    assert!(wrong.is_empty(), "ranged calls to {what}: expected Err({expected}) from each; {}", wrong.join("; "));
}

/// `write_range` and `commit_ranged` of an ordinary session that a stream
/// is writing to are refused at once, as at rest, and the stream goes on
/// undisturbed (not preempted) to its commit.
pub(crate) async fn ranged_calls_leave_a_live_stream_alone(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "kind/live.bin";
    let bytes = data(300, 308);
    let mut live = store.create_upload(&path(raw), WriteOptions { size: Some(300), ..resumable() }).await.unwrap();
    let id = live.id().clone();
    write_all(&mut live, &bytes.slice(..100)).await.unwrap();
    live.sync().await.unwrap();
    refuse_ranged_calls(fixture, store.as_ref(), &id, "an ordinary session with a live stream").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), live.preempted()).await.is_err(),
        "ranged calls preempted an ordinary stream"
    );
    write_all(&mut live, &bytes.slice(100..)).await.unwrap_or_else(|e| panic!("the live stream, after them: {e}"));
    live.commit(None).await.unwrap();
    assert!(content(store.as_ref(), raw).await == bytes, "the live stream's bytes");
    fixture.assert_nothing_staged("after ranged calls to a live stream").await;
}
