//! Ranged upload sessions, continued (`ranged.rs` has the helpers and the
//! core rules): the limits and edges of a session's life. Aborts and
//! expiry take a session from its writers; a session holds at most
//! `MAX_RANGES` ranges, and a granted range can always be finished; a
//! target in the way keeps the session for another commit; a session
//! survives a restart; an empty file; refused starts and taken ids.
//!
//! Registered in `conformance!` like the other rules; on a backend that
//! does not stage ranges each checks the refusal ([`unsupported_here`]).

// Statuses list ranges: a list of one range is what is meant.
#![allow(clippy::single_range_in_vec_init)]

use std::ops::Range;
use std::time::{Duration, UNIX_EPOCH};

use ferry_store::{EntryKind, Error, Sha256, UploadId, UploadStatus, WriteMode, WriteOptions};

use crate::ranged::{assert_session_gone, feed, fill, open_range, ranged, ranges_of, send, slice, unsupported_here};
use crate::support::{Fixture, WRITE_CHUNK, content, data, path, put, within, write_all};
use crate::{check_listed_digest, resumable};

/// Separate committed (or being written) ranges a local ranged session
/// tracks at most (`MAX_RANGES`, `local/ranged.rs`).
const MAX_RANGES: usize = 32;

/// Sorts and merges touching or overlapping ranges: the model of the
/// ranges a status reports.
fn merged(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for range in ranges {
        match out.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => out.push(range),
        }
    }
    out
}

/// An abort takes a ranged session from its live writers: each one's
/// `preempted` completes, and its next write or finish (whether its range
/// is complete or not) is Preempted; the session is gone.
pub(crate) async fn ranged_abort_preempts_writers(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "ranged/aborted.bin";
    let size = 3000;
    let bytes = data(size, 309);
    if unsupported_here(fixture, store.as_ref(), raw, ranged(size)).await {
        return;
    }
    let id = store.create_ranged_upload(&path(raw), ranged(size)).await.unwrap();
    send(store.as_ref(), &id, &bytes, 0..1000).await;
    let mut partial_finish = open_range(store.as_ref(), &id, 1000..2000).await;
    feed(&mut partial_finish, slice(&bytes, 1000..1500), WRITE_CHUNK).await.unwrap();
    let mut partial_write = open_range(store.as_ref(), &id, 2000..2500).await;
    feed(&mut partial_write, slice(&bytes, 2000..2100), WRITE_CHUNK).await.unwrap();
    let mut complete = open_range(store.as_ref(), &id, 2500..size).await;
    feed(&mut complete, slice(&bytes, 2500..size), WRITE_CHUNK).await.unwrap();

    let abort = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.abort_upload(&id).await })
    };
    for (what, writer) in
        [("partial, finishing", &partial_finish), ("partial", &partial_write), ("complete", &complete)]
    {
        within(&format!("the {what} writer's preempted()"), writer.preempted()).await;
    }
    expect_err!(
        partial_write.write(slice(&bytes, 2100..2200)).await,
        Error::Preempted { .. },
        "a preempted range writer's write"
    );
    drop(partial_write);
    expect_err!(
        within("finish", complete.finish()).await,
        Error::Preempted { .. },
        "a preempted complete range's finish"
    );
    // Checked last, so that the rest is checked whatever it says.
    let partial_finished = within("finish", partial_finish.finish()).await;
    within("the abort", abort).await.unwrap().unwrap();

    assert_session_gone(store.as_ref(), &id, "an aborted ranged session").await;
    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "an aborted ranged upload's path");
    assert_eq!(store.count_uploads().await.unwrap(), 0, "count_uploads after aborting a ranged session");
    fixture.assert_nothing_staged("after aborting a ranged session").await;
    expect_err!(partial_finished, Error::Preempted { .. }, "a preempted partial range's finish");
}

/// A range is granted only if the committed ranges merged with it, plus the
/// ranges being written, number at most `MAX_RANGES` (each writer may finish
/// or not): so a granted range can always be recorded, and a range that joins
/// committed ones is still granted at the limit.
pub(crate) async fn ranged_too_many_ranges(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "ranged/many.bin";
    let size = 1000;
    let bytes = data(size, 310);
    if unsupported_here(fixture, store.as_ref(), raw, ranged(size)).await {
        return;
    }
    let id = store.create_ranged_upload(&path(raw), ranged(size)).await.unwrap();
    let one = |i: u64| 10 * i..10 * i + 1;
    for i in 0..20 {
        send(store.as_ref(), &id, &bytes, one(i)).await;
    }
    // 20 committed + 11 being written + 1 new = 32: granted; then no more.
    let mut live = Vec::new();
    for i in 20..32 {
        live.push((one(i), open_range(store.as_ref(), &id, one(i)).await));
    }
    let too_many = |offset: u64, length: u64, what: &'static str| {
        let store = store.clone();
        let id = id.clone();
        async move {
            expect_err!(
                within("write_range", store.write_range(&id, offset, length)).await,
                Error::TooManyRanges { max: MAX_RANGES, .. },
                "{what} at {offset}"
            );
        }
    };
    too_many(500, 1, "a separate range with 32 counted").await;
    // A writer dropped unfinished frees its place.
    let (dropped, writer) = live.pop().unwrap();
    drop(writer);
    let mut touching = open_range(store.as_ref(), &id, 191..195).await;
    feed(&mut touching, slice(&bytes, 191..195), WRITE_CHUNK).await.unwrap();
    within("finish", touching.finish()).await.unwrap();

    let expected: Vec<Range<u64>> = merged((0..20).map(one).chain([191..195]).collect());
    assert_eq!(ranges_of(store.as_ref(), &id).await, (expected.clone(), 1), "the committed ranges");
    for (range, mut writer) in live {
        feed(&mut writer, slice(&bytes, range.clone()), WRITE_CHUNK).await.unwrap();
        within("finish", writer.finish()).await.unwrap_or_else(|e| panic!("finishing {range:?}: {e}"));
    }
    let expected = merged(expected.into_iter().chain((20..31).map(one)).collect());
    assert_eq!(expected.len(), 31, "the model's ranges");
    assert_eq!(ranges_of(store.as_ref(), &id).await, (expected, 1), "the committed ranges, all writers finished");
    // 31 committed: one more separate range fits (32), the next does not,
    // but one joining two committed ranges does.
    send(store.as_ref(), &id, &bytes, dropped.clone()).await;
    too_many(500, 1, "a 33rd separate range").await;
    send(store.as_ref(), &id, &bytes, 1..10).await;
    assert_eq!(ranges_of(store.as_ref(), &id).await.0.len(), 31, "joining two committed ranges");

    fill(store.as_ref(), &id, &bytes).await;
    within("commit_ranged", store.commit_ranged(&id, None)).await.unwrap();
    assert!(content(store.as_ref(), raw).await == bytes, "the bytes after many ranges");
    fixture.assert_nothing_staged("after many ranges").await;
}

/// A range that `write_range` granted can be finished once its bytes have
/// arrived, whatever the other writers do. Here 31 ranges are committed; a
/// writer bridging two of them is live, and a second, separate one must be
/// refused (if granted, it must still finish);
/// then the bridging writer is dropped unfinished, and the second finishes.
pub(crate) async fn ranged_a_granted_range_can_be_finished(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "ranged/granted.bin";
    let size = 1000;
    let bytes = data(size, 311);
    if unsupported_here(fixture, store.as_ref(), raw, ranged(size)).await {
        return;
    }
    let id = store.create_ranged_upload(&path(raw), ranged(size)).await.unwrap();
    for i in 0..MAX_RANGES as u64 - 1 {
        send(store.as_ref(), &id, &bytes, 2 * i..2 * i + 1).await;
    }
    let bridge = open_range(store.as_ref(), &id, 1..2).await;
    match within("write_range", store.write_range(&id, 500, 1)).await {
        Ok(mut granted) => {
            drop(bridge);
            granted.write(slice(&bytes, 500..501)).await.unwrap();
            within("finish", granted.finish()).await.unwrap_or_else(|e| {
                panic!("finishing a granted range after a bridging writer was dropped: expected Ok, got {e:?}")
            });
        }
        Err(Error::TooManyRanges { .. }) => drop(bridge),
        Err(other) => panic!("a separate range beside a bridging writer: got {other:?}"),
    }

    fill(store.as_ref(), &id, &bytes).await;
    within("commit_ranged", store.commit_ranged(&id, None)).await.unwrap();
    assert!(content(store.as_ref(), raw).await == bytes, "the bytes");
    fixture.assert_nothing_staged("after a granted range").await;
}

/// `expire_uploads` removes an idle ranged session and keeps one with a
/// live range writer, which then finishes and commits.
pub(crate) async fn ranged_expiry(fixture: &Fixture) {
    let store = fixture.open().await;
    let size = 100;
    let bytes = data(size, 312);
    if unsupported_here(fixture, store.as_ref(), "gc/ranged-idle", ranged(size)).await {
        return;
    }
    let idle = store.create_ranged_upload(&path("gc/ranged-idle"), ranged(size)).await.unwrap();
    send(store.as_ref(), &idle, &bytes, 0..50).await;
    let live_id = store.create_ranged_upload(&path("gc/ranged-live"), ranged(size)).await.unwrap();
    let mut live = open_range(store.as_ref(), &live_id, 0..50).await;
    feed(&mut live, slice(&bytes, 0..20), WRITE_CHUNK).await.unwrap();

    assert_eq!(store.expire_uploads(Duration::from_secs(3600)).await.unwrap(), 0, "nothing is an hour old");
    assert_eq!(store.count_uploads().await.unwrap(), 2, "both ranged sessions are there");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.expire_uploads(Duration::from_millis(10)).await.unwrap(), 1, "expired ranged sessions");
    assert_session_gone(store.as_ref(), &idle, "an expired ranged session").await;
    assert_eq!(ranges_of(store.as_ref(), &live_id).await, (vec![], 0), "a ranged session with a live writer stays");
    assert_eq!(store.count_uploads().await.unwrap(), 1, "count_uploads after expiry");

    feed(&mut live, slice(&bytes, 20..50), WRITE_CHUNK)
        .await
        .unwrap_or_else(|e| panic!("the live range writer, after expiry: {e}"));
    within("finish", live.finish()).await.unwrap();
    send(store.as_ref(), &live_id, &bytes, 50..size).await;
    within("commit_ranged", store.commit_ranged(&live_id, None)).await.unwrap();
    assert!(content(store.as_ref(), "gc/ranged-live").await == bytes, "the live ranged session's commit");
    expect_err!(store.stat(&path("gc/ranged-idle")).await, Error::NotFound { .. }, "an expired session's path");
    fixture.assert_nothing_staged("after ranged expiry").await;
}

/// A target in the way at the ranged commit (a file that appeared, for a
/// create-only upload; a directory; a file as a parent) fails the commit
/// with the same error as an ordinary upload's, publishes nothing, and
/// keeps the session: it can be aborted, or committed again once the way
/// is clear (with its declared metadata).
pub(crate) async fn ranged_target_in_the_way(fixture: &Fixture) {
    let store = fixture.open().await;
    let create_only = |size| WriteOptions { mode: WriteMode::CreateOnly, ..ranged(size) };
    let size = 2000;
    let (mine, theirs) = (data(size, 313), data(300, 314));
    put(store.as_ref(), "co/exists", &theirs).await;
    if unsupported_here(fixture, store.as_ref(), "co/raced", create_only(size)).await {
        return;
    }
    expect_err!(
        store.create_ranged_upload(&path("co/exists"), create_only(size)).await,
        Error::AlreadyExists { .. },
        "a create-only ranged upload over an existing file"
    );

    // The file appears before the commit; the session is then aborted.
    let id = store.create_ranged_upload(&path("co/raced"), create_only(size)).await.unwrap();
    send(store.as_ref(), &id, &mine, 0..size).await;
    put(store.as_ref(), "co/raced", &theirs).await;
    for attempt in ["", " again"] {
        expect_err!(
            within("commit_ranged", store.commit_ranged(&id, None)).await,
            Error::AlreadyExists { .. },
            "a create-only ranged commit over a file that appeared{attempt}"
        );
        assert!(content(store.as_ref(), "co/raced").await == theirs, "the file that appeared was replaced");
        assert_eq!(ranges_of(store.as_ref(), &id).await, (vec![0..size], size), "the session is kept{attempt}");
    }
    assert_eq!(store.count_uploads().await.unwrap(), 1, "count_uploads with the kept session");
    within("abort", store.abort_upload(&id)).await.unwrap();
    assert_session_gone(store.as_ref(), &id, "the kept session, aborted").await;
    assert!(content(store.as_ref(), "co/raced").await == theirs, "the abort touched the file that appeared");

    // The file appears, then goes: the kept session commits, with its metadata.
    let mtime = UNIX_EPOCH + Duration::new(1_500_000_000, 5);
    let options = WriteOptions { mtime: Some(mtime), permissions: Some(0o444), ..create_only(size) };
    let id = store.create_ranged_upload(&path("co/retried"), options).await.unwrap();
    send(store.as_ref(), &id, &mine, 0..size).await;
    put(store.as_ref(), "co/retried", &theirs).await;
    expect_err!(
        within("commit_ranged", store.commit_ranged(&id, None)).await,
        Error::AlreadyExists { .. },
        "a create-only ranged commit over a file that appeared"
    );
    store.delete(&path("co/retried")).await.unwrap();
    let meta = within("commit_ranged", store.commit_ranged(&id, None))
        .await
        .unwrap_or_else(|e| panic!("committing again once the file in the way is gone: {e}"));
    assert_eq!(
        (meta.size, meta.sha256, meta.mtime, meta.permissions),
        (size, Some(Sha256::of(&mine)), Some(mtime), 0o444),
        "the commit again's metadata"
    );
    assert!(content(store.as_ref(), "co/retried").await == mine, "the bytes committed again");

    // A directory at the path, then a file as the parent.
    let id = store.create_ranged_upload(&path("co/dir-later"), ranged(size)).await.unwrap();
    send(store.as_ref(), &id, &mine, 0..size).await;
    store.create_dir(&path("co/dir-later")).await.unwrap();
    expect_err!(
        within("commit_ranged", store.commit_ranged(&id, None)).await,
        Error::IsDirectory { .. },
        "a ranged commit onto a directory that appeared"
    );
    assert_eq!(store.stat(&path("co/dir-later")).await.unwrap().kind, EntryKind::Directory, "still a directory");
    store.delete(&path("co/dir-later")).await.unwrap();
    within("commit_ranged", store.commit_ranged(&id, None)).await.unwrap();
    assert!(content(store.as_ref(), "co/dir-later").await == mine, "the bytes once the directory is gone");

    let id = store.create_ranged_upload(&path("co/parent/file"), ranged(size)).await.unwrap();
    send(store.as_ref(), &id, &mine, 0..size).await;
    put(store.as_ref(), "co/parent", &theirs).await;
    expect_err!(
        within("commit_ranged", store.commit_ranged(&id, None)).await,
        Error::ParentNotDirectory { .. },
        "a ranged commit below a file that appeared"
    );
    assert!(content(store.as_ref(), "co/parent").await == theirs, "the file that appeared as the parent");
    assert_eq!(ranges_of(store.as_ref(), &id).await, (vec![0..size], size), "the session is kept");
    within("abort", store.abort_upload(&id)).await.unwrap();
    fixture.assert_nothing_staged("after targets in the way").await;
}

/// A ranged session survives a restart: the store reopened on the same
/// root reports exactly the committed ranges (the bytes of a range not
/// finished do not count, and it can be written again), and the upload
/// completes with its declared metadata.
pub(crate) async fn ranged_recovery(fixture: &Fixture) {
    let raw = "ranged/recovered.bin";
    let size = 2 * (1 << 20) + 777;
    let bytes = data(size, 315);
    let digest = Sha256::of(&bytes);
    let mtime = UNIX_EPOCH + Duration::new(1_400_000_000, 1);
    let options = WriteOptions { sha256: Some(digest), mtime: Some(mtime), permissions: Some(0o600), ..ranged(size) };
    let store = fixture.open().await;
    if unsupported_here(fixture, store.as_ref(), raw, options.clone()).await {
        return;
    }
    let id = store.create_ranged_upload(&path(raw), options).await.unwrap();
    for range in [2_000_000..size, 0..300_000, 1_000_000..1_500_000] {
        send(store.as_ref(), &id, &bytes, range).await;
    }
    let mut unfinished = open_range(store.as_ref(), &id, 300_000..1_000_000).await;
    feed(&mut unfinished, data(200_000, 316), WRITE_CHUNK).await.unwrap();
    drop(unfinished);
    let before = store.upload_status(&id).await.unwrap();
    let expected = UploadStatus {
        id: id.clone(),
        path: path(raw),
        committed: 300_000,
        size: Some(size),
        ranges: Some(vec![0..300_000, 1_000_000..1_500_000, 2_000_000..size]),
    };
    assert_eq!(before, expected, "the status before the restart");

    // A restart: another instance over the same root (or, where instances
    // may share one, beside the first).
    let first = fixture.concurrent_instances().then_some(store);
    let store = fixture.open().await;
    assert_eq!(store.upload_status(&id).await.unwrap(), expected, "the status after the restart");
    assert_eq!(store.count_uploads().await.unwrap(), 1, "count_uploads after the restart");
    send(store.as_ref(), &id, &bytes, 300_000..1_000_000).await;
    send(store.as_ref(), &id, &bytes, 1_500_000..2_000_000).await;
    let meta = within("commit_ranged", store.commit_ranged(&id, Some(digest))).await.unwrap();
    assert_eq!(
        (meta.size, meta.sha256, meta.mtime, meta.permissions),
        (size, Some(digest), Some(mtime), 0o600),
        "the recovered upload's commit"
    );
    assert!(content(store.as_ref(), raw).await == bytes[..], "the recovered upload's bytes");
    assert_session_gone(store.as_ref(), &id, "a recovered session, committed").await;
    drop(first);
    fixture.assert_nothing_staged("after a recovered ranged upload").await;
}

/// A ranged upload of zero bytes: no range to write (any is outside the
/// file), committed at once as an empty file with its declared metadata.
pub(crate) async fn ranged_empty_file(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "ranged/empty";
    let empty = Sha256::of(b"");
    let options = WriteOptions { sha256: Some(empty), permissions: Some(0o600), ..ranged(0) };
    if unsupported_here(fixture, store.as_ref(), raw, options.clone()).await {
        return;
    }
    let id = store.create_ranged_upload(&path(raw), options).await.unwrap();
    let status = store.upload_status(&id).await.unwrap();
    assert_eq!((status.committed, status.size, status.ranges), (0, Some(0), Some(vec![])), "an empty ranged session");
    expect_err!(
        within("write_range", store.write_range(&id, 0, 1)).await,
        Error::RangeOutsideFile { offset: 0, length: 1, size: 0 },
        "a range of an empty file"
    );
    let meta = within("commit_ranged", store.commit_ranged(&id, Some(empty))).await.unwrap();
    assert_eq!(
        (meta.kind, meta.size, meta.sha256, meta.permissions),
        (EntryKind::File, 0, Some(empty), 0o600),
        "an empty ranged commit"
    );
    let stat = store.stat(&path(raw)).await.unwrap();
    assert_eq!((stat.kind, stat.size), (EntryKind::File, 0), "stat of an empty ranged upload");
    check_listed_digest(fixture, "stat of an empty ranged upload", stat.sha256, empty);
    assert!(content(store.as_ref(), raw).await.is_empty(), "an empty ranged upload's bytes");
    assert_session_gone(store.as_ref(), &id, "an empty ranged session, committed").await;
    assert_eq!(store.count_uploads().await.unwrap(), 0, "count_uploads after an empty ranged upload");
    fixture.assert_nothing_staged("after an empty ranged upload").await;
}

/// Starting a ranged upload: without a declared size it is RangedNeedsSize;
/// the conflicts an ordinary upload's start sees fail it too; a chosen id
/// is the session's, and a taken one (by a ranged or ordinary session) is
/// UploadExists either way, leaving the session that has it as it was.
pub(crate) async fn ranged_create_refusals(fixture: &Fixture) {
    let store = fixture.open().await;
    put(store.as_ref(), "cr/file", &data(10, 317)).await;
    if unsupported_here(fixture, store.as_ref(), "cr/new", ranged(10)).await {
        return;
    }
    let refusals: [(&str, WriteOptions, &str); 4] = [
        ("cr/new", WriteOptions::default(), "no declared size"),
        ("cr", ranged(10), "a directory"),
        ("cr/file/below", ranged(10), "below a file"),
        ("cr/file", WriteOptions { mode: WriteMode::CreateOnly, ..ranged(10) }, "create-only over a file"),
    ];
    for (raw, options, what) in refusals {
        let result = within(what, store.create_ranged_upload(&path(raw), options)).await;
        match (what, result) {
            ("no declared size", Err(Error::RangedNeedsSize)) => {}
            ("a directory", Err(Error::IsDirectory { .. })) => {}
            ("below a file", Err(Error::ParentNotDirectory { .. })) => {}
            ("create-only over a file", Err(Error::AlreadyExists { .. })) => {}
            (what, other) => panic!("a ranged upload to {raw} ({what}): got {other:?}"),
        }
    }
    assert_eq!(store.count_uploads().await.unwrap(), 0, "count_uploads after refused ranged uploads");
    fixture.assert_nothing_staged("after refused ranged uploads").await;

    let chosen = UploadId::derived("conformance/ranged-chosen");
    let with_id = |id: &UploadId, options: WriteOptions| WriteOptions { upload_id: Some(id.clone()), ..options };
    let id = store.create_ranged_upload(&path("cr/a"), with_id(&chosen, ranged(10))).await.unwrap();
    assert_eq!(id, chosen, "the chosen id");
    let bytes = data(10, 318);
    send(store.as_ref(), &id, &bytes, 0..5).await;
    let before = store.upload_status(&id).await.unwrap();
    expect_err!(
        within("create_ranged_upload", store.create_ranged_upload(&path("cr/b"), with_id(&id, ranged(10)))).await,
        Error::UploadExists { .. },
        "a second ranged session with a taken id"
    );
    assert_eq!(store.upload_status(&id).await.unwrap(), before, "the session with the id is untouched");

    let plain_id = UploadId::derived("conformance/ranged-plain");
    let mut plain = store.create_upload(&path("cr/c"), with_id(&plain_id, resumable())).await.unwrap();
    write_all(&mut plain, &data(20, 319)).await.unwrap();
    plain.sync().await.unwrap();
    drop(plain);
    let plain_before = store.upload_status(&plain_id).await.unwrap();
    expect_err!(
        within("create_ranged_upload", store.create_ranged_upload(&path("cr/d"), with_id(&plain_id, ranged(10)))).await,
        Error::UploadExists { .. },
        "a ranged session with an ordinary session's id"
    );
    assert_eq!(store.upload_status(&plain_id).await.unwrap(), plain_before, "the ordinary session is untouched");

    send(store.as_ref(), &id, &bytes, 5..10).await;
    within("commit_ranged", store.commit_ranged(&id, None)).await.unwrap();
    assert!(content(store.as_ref(), "cr/a").await == bytes, "the chosen-id ranged upload's bytes");
    store.abort_upload(&plain_id).await.unwrap();
    for missing in ["cr/b", "cr/d", "cr/new"] {
        expect_err!(store.stat(&path(missing)).await, Error::NotFound { .. }, "{missing}: a refused upload's path");
    }
    fixture.assert_nothing_staged("after chosen ranged ids").await;
}
