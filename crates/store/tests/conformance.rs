//! The storage semantics, as one conformance suite: every rule of the
//! `Store` and `Upload` contracts (`src/lib.rs`) is written once, as an
//! async function over a `Fixture` (`support/mod.rs`), and instantiated for
//! every backend by `conformance!`: `local::RULE` runs against a temporary directory,
//! `s3::RULE` (feature `s3`) against a moto server (`support/s3.rs` says how
//! it is found, started and stopped, and why each S3 test runs in a child
//! process).
//!
//! Where the backends differ by design (their module docs), a rule asks the
//! fixture for the documented behaviour instead of accepting either: the
//! committed offset after `sync` (everything received locally, the last part
//! boundary in S3), whether empty directories exist, whether two instances
//! may serve one root at once.
//!
//! ```text
//! cargo test -p ferry-store --test conformance                  # local only
//! cargo test -p ferry-store --features s3 --test conformance    # local and S3
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_store::{
    ByteRange, EntryKind, Error, Metadata, NewFile, Sha256, UploadId, UploadStatus, WriteMode, WriteOptions,
};
use tokio_stream::StreamExt;

use support::{
    Entry, Fixture, PART_SIZE, content, data, dir, file, list_batches, list_entries, path, put, read_all, within,
    write_all,
};

/// The rules of ranged upload sessions: the helpers and the core rules.
#[path = "conformance/ranged.rs"]
mod ranged;
use ranged::{
    ranged_and_ordinary_sessions_do_not_mix, ranged_calls_leave_a_live_stream_alone, ranged_commit_checks,
    ranged_conflicts, ranged_range_lengths, ranged_round_trip,
};

/// The rules of ranged upload sessions: their limits and edges.
#[path = "conformance/ranged_limits.rs"]
mod ranged_limits;
use ranged_limits::{
    ranged_a_granted_range_can_be_finished, ranged_abort_preempts_writers, ranged_create_refusals, ranged_empty_file,
    ranged_expiry, ranged_recovery, ranged_target_in_the_way, ranged_too_many_ranges,
};

/// Instantiates every rule for every backend: `local::RULE`, `s3::RULE`.
macro_rules! conformance {
    ($($rule:ident),* $(,)?) => {
        mod local {
            $(
                #[test]
                fn $rule() {
                    let fixture = crate::support::Fixture::local();
                    crate::support::run(crate::$rule(&fixture));
                }
            )*
        }

        #[cfg(feature = "s3")]
        mod s3 {
            use crate::support::s3::{Plan, S3Fixture, plan};

            $(
                #[test]
                fn $rule() {
                    if let Plan::Run(endpoint) = plan(concat!("s3::", stringify!($rule))) {
                        let fixture = crate::support::Fixture::S3(S3Fixture::new(&endpoint));
                        crate::support::run(crate::$rule(&fixture));
                    }
                }
            )*
        }
    };
}

conformance!(
    round_trips_at_boundary_sizes,
    metadata_is_kept,
    ranges,
    create_only,
    overwrite_is_atomic,
    downloads_are_snapshots,
    list_pagination_and_prefixes,
    delete,
    path_conflicts,
    session_resume,
    resume_preempts_the_older_stream,
    abort,
    abort_preempts_a_live_stream,
    gc_expires_abandoned_sessions,
    digest_mismatch_leaves_nothing,
    size_mismatch_leaves_nothing,
    chosen_upload_ids,
    a_taken_upload_id_is_refused_while_streaming,
    reserved_name_is_never_listed,
    count_uploads,
    put_files_round_trip,
    put_files_failures_are_per_file,
    put_files_same_path_twice_last_wins,
    create_dir_makes_empty_directories,
    create_dir_refuses_files_in_the_way,
    created_directories_delete_like_directories,
    files_in_a_created_directory,
    // Ranged upload sessions (conformance/ranged.rs, conformance/ranged_limits.rs).
    ranged_round_trip,
    ranged_conflicts,
    ranged_range_lengths,
    ranged_commit_checks,
    ranged_and_ordinary_sessions_do_not_mix,
    ranged_calls_leave_a_live_stream_alone,
    ranged_abort_preempts_writers,
    ranged_too_many_ranges,
    ranged_a_granted_range_can_be_finished,
    ranged_expiry,
    ranged_target_in_the_way,
    ranged_recovery,
    ranged_empty_file,
    ranged_create_refusals,
);

fn resumable() -> WriteOptions {
    WriteOptions { resumable: true, ..WriteOptions::default() }
}

/// The digest `stat` or `list` reported is right; a backend that always
/// knows it must report it.
fn check_listed_digest(fixture: &Fixture, what: &str, listed: Option<Sha256>, expected: Sha256) {
    match listed {
        Some(listed) => assert_eq!(listed, expected, "{what}: wrong sha256"),
        None => assert!(!fixture.stat_knows_digest(), "{what}: no sha256, but this backend always knows it"),
    }
}

/// Compares listings entry by entry, reporting the first difference (a
/// listing of thousands would be unreadable whole).
fn assert_listing(actual: &[Entry], expected: &[Entry], what: &str) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a, e, "{what}: entry {i} differs");
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: {} entries listed, {} expected (first extra: {:?})",
        actual.len(),
        expected.len(),
        actual.get(expected.len()).or(expected.get(actual.len()))
    );
}

/// The depth-first listing of a tree of files: every directory, then what
/// is in it, siblings by name.
fn model_listing(files: &[&str], under: Option<&str>, recursive: bool) -> Vec<Entry> {
    let mut entries = BTreeSet::new();
    let base: Vec<&str> = under.map(|u| u.split('/').collect()).unwrap_or_default();
    for raw in files {
        let segments: Vec<&str> = raw.split('/').collect();
        if segments.len() <= base.len() || segments[..base.len()] != base[..] {
            continue;
        }
        let depth = if recursive { segments.len() } else { base.len() + 1 };
        for end in base.len() + 1..=depth {
            let kind = if end == segments.len() { EntryKind::File } else { EntryKind::Directory };
            entries.insert((segments[..end].to_vec(), kind == EntryKind::File));
        }
    }
    // BTreeSet of segment vectors: a directory sorts before its contents.
    entries
        .into_iter()
        .map(|(segments, is_file)| (segments.join("/"), if is_file { EntryKind::File } else { EntryKind::Directory }))
        .collect()
}

// ---------------------------------------------------------------- round trips

/// Files of 0, 1, part-1, part, part+1 and 2*part+3 bytes come back byte for
/// byte, with their SHA-256 in the metadata of the commit, `stat`, `list`
/// and `read`. Even sizes declare size and digest up front; odd ones declare
/// nothing and give the digest at commit.
async fn round_trips_at_boundary_sizes(fixture: &Fixture) {
    let store = fixture.open().await;
    let p = PART_SIZE;
    let sizes = [0, 1, p - 1, p, p + 1, 2 * p + 3];
    for (i, size) in sizes.into_iter().enumerate() {
        let raw = format!("sizes/{size:09}.bin");
        let bytes = data(size, i as u64 + 1);
        let digest = Sha256::of(&bytes);
        let declared = i % 2 == 0;
        let options = match declared {
            true => WriteOptions { size: Some(size), sha256: Some(digest), ..WriteOptions::default() },
            false => WriteOptions::default(),
        };
        let mut upload = store.create_upload(&path(&raw), options).await.unwrap();
        assert_eq!(upload.declared_size(), declared.then_some(size), "{raw}: declared size");
        write_all(&mut upload, &bytes).await.unwrap();
        assert_eq!(upload.received(), size, "{raw}: received");
        let final_sha256 = (!declared).then_some(digest);
        let meta = upload.commit(final_sha256).await.unwrap();
        assert_eq!(
            (meta.path.as_str(), meta.kind, meta.size, meta.sha256),
            (raw.as_str(), EntryKind::File, size, Some(digest)),
            "{raw}: the commit's metadata"
        );

        let stat = store.stat(&path(&raw)).await.unwrap();
        assert_eq!((stat.path.as_str(), stat.kind, stat.size), (raw.as_str(), EntryKind::File, size), "{raw}: stat");
        check_listed_digest(fixture, &format!("{raw}: stat"), stat.sha256, digest);

        let (download, got) = read_all(store.as_ref(), &raw, ByteRange::ALL).await.unwrap();
        assert_eq!(
            (download.offset, download.length, download.meta.size, download.meta.sha256),
            (0, size, size, Some(digest)),
            "{raw}: the download's header"
        );
        assert!(
            got.len() as u64 == size && got == bytes,
            "{raw}: read {} bytes that differ from those written",
            got.len()
        );
    }

    let listed: Vec<Metadata> = list_batches(store.as_ref(), Some("sizes"), false).await.unwrap().concat();
    let listed_sizes: Vec<u64> = listed.iter().map(|m| m.size).collect();
    assert_eq!(listed_sizes, sizes, "list: sizes");
    for (i, meta) in listed.iter().enumerate() {
        let digest = Sha256::of(&data(sizes[i], i as u64 + 1));
        check_listed_digest(fixture, &format!("list: {}", meta.path), meta.sha256, digest);
    }
    fixture.assert_nothing_staged("after the round trips").await;
}

/// The mtime and permissions an upload declares are what `stat`, `list`
/// and `read` report; without them, the mtime is about now and the
/// permissions are 0644.
async fn metadata_is_kept(fixture: &Fixture) {
    let store = fixture.open().await;
    let cases = [
        ("meta/modern", UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789), 0o640),
        ("meta/old", UNIX_EPOCH + Duration::new(86_400, 5), 0o600),
        ("meta/before-epoch", UNIX_EPOCH - Duration::new(86_400, 0), 0o444),
    ];
    for (raw, mtime, permissions) in cases {
        let bytes = data(100, 3);
        let options = WriteOptions { mtime: Some(mtime), permissions: Some(permissions), ..WriteOptions::default() };
        let mut upload = store.create_upload(&path(raw), options).await.unwrap();
        write_all(&mut upload, &bytes).await.unwrap();
        let meta = upload.commit(None).await.unwrap();
        assert_eq!((meta.mtime, meta.permissions), (mtime, permissions), "{raw}: the commit's metadata");
        let stat = store.stat(&path(raw)).await.unwrap();
        assert_eq!((stat.mtime, stat.permissions), (mtime, permissions), "{raw}: stat");
        let (download, _) = read_all(store.as_ref(), raw, ByteRange::ALL).await.unwrap();
        assert_eq!((download.meta.mtime, download.meta.permissions), (mtime, permissions), "{raw}: read");
        let listed = list_batches(store.as_ref(), Some(raw), false).await.unwrap().concat();
        assert_eq!(listed.len(), 1, "{raw}: listing a file lists the file");
        assert_eq!((listed[0].mtime, listed[0].permissions), (mtime, permissions), "{raw}: list");
    }

    let before = SystemTime::now() - Duration::from_secs(5);
    let meta = put(store.as_ref(), "meta/default", &data(10, 4)).await;
    let after = SystemTime::now() + Duration::from_secs(5);
    let stat = store.stat(&path("meta/default")).await.unwrap();
    assert_eq!(stat.permissions, 0o644, "default permissions");
    assert_eq!(meta.mtime, stat.mtime, "the commit's mtime is the stored one");
    assert!(before <= stat.mtime && stat.mtime <= after, "default mtime {:?} is not about now", stat.mtime);
}

/// Ranges: start, middle, end, a length past the end (cut), `offset == size`
/// (empty), `offset > size` (error), an overflowing length (error).
async fn ranges(fixture: &Fixture) {
    let store = fixture.open().await;
    let size = 3 * (1 << 20) + 1234; // a few download chunks
    let bytes = data(size, 5);
    let digest = Sha256::of(&bytes);
    put(store.as_ref(), "r.bin", &bytes).await;

    let cases: [(&str, u64, Option<u64>, u64, u64); 8] = [
        ("start", 0, Some(10), 0, 10),
        ("middle", 1_500_000, Some(1_200_000), 1_500_000, 1_200_000),
        ("to the end", size - 10, None, size - 10, 10),
        ("past the end, cut", size - 10, Some(1000), size - 10, 10),
        ("whole", 0, None, 0, size),
        ("empty at the end", size, None, size, 0),
        ("empty at the end, with a length", size, Some(5), size, 0),
        ("zero length", 7, Some(0), 7, 0),
    ];
    for (what, offset, length, want_offset, want_length) in cases {
        let (download, got) = read_all(store.as_ref(), "r.bin", ByteRange { offset, length })
            .await
            .unwrap_or_else(|e| panic!("range {what}: {e}"));
        assert_eq!((download.offset, download.length), (want_offset, want_length), "range {what}: resolved range");
        assert_eq!((download.meta.size, download.meta.sha256), (size, Some(digest)), "range {what}: metadata");
        let (start, end) = (want_offset as usize, (want_offset + want_length) as usize);
        assert!(got == bytes[start..end], "range {what}: {} bytes that differ from bytes {start}..{end}", got.len());
    }

    expect_err!(
        store.read(&path("r.bin"), ByteRange { offset: size + 1, length: None }).await,
        Error::RangeStartsPastEnd { offset, size: s } if offset == size + 1 && s == size,
        "a range starting past the end"
    );
    expect_err!(
        store.read(&path("r.bin"), ByteRange { offset: size + 1, length: Some(1) }).await,
        Error::RangeStartsPastEnd { .. },
        "a range starting past the end, with a length"
    );
    expect_err!(
        store.read(&path("r.bin"), ByteRange { offset: 1, length: Some(u64::MAX) }).await,
        Error::RangeOverflow { offset: 1, length: u64::MAX },
        "an overflowing range"
    );

    put(store.as_ref(), "empty", &Bytes::new()).await;
    let (download, got) = read_all(store.as_ref(), "empty", ByteRange::ALL).await.unwrap();
    assert_eq!((download.offset, download.length, got.len()), (0, 0, 0), "an empty file");
    expect_err!(
        store.read(&path("empty"), ByteRange { offset: 1, length: None }).await,
        Error::RangeStartsPastEnd { offset: 1, size: 0 },
        "past the end of an empty file"
    );
}

// ----------------------------------------------------------- publish and replace

/// A create-only upload of an existing path fails with AlreadyExists when it
/// starts, and again at commit if the file appeared meanwhile; nothing is
/// replaced and nothing is left behind.
async fn create_only(fixture: &Fixture) {
    let store = fixture.open().await;
    let create_only = || WriteOptions { mode: WriteMode::CreateOnly, ..WriteOptions::default() };
    let first = data(1000, 6);
    put(store.as_ref(), "c/exists", &first).await;

    expect_err!(
        store.create_upload(&path("c/exists"), create_only()).await,
        Error::AlreadyExists { .. },
        "create-only over an existing file"
    );
    expect_err!(
        store.create_upload(&path("c/exists"), WriteOptions { resumable: true, ..create_only() }).await,
        Error::AlreadyExists { .. },
        "resumable create-only over an existing file"
    );
    assert!(content(store.as_ref(), "c/exists").await == first, "the existing file was replaced");

    // The file appears while the create-only upload is in flight.
    let mine = data(PART_SIZE + 10, 7);
    let theirs = data(2000, 8);
    let mut upload = store.create_upload(&path("c/raced"), create_only()).await.unwrap();
    write_all(&mut upload, &mine).await.unwrap();
    put(store.as_ref(), "c/raced", &theirs).await;
    expect_err!(upload.commit(None).await, Error::AlreadyExists { .. }, "create-only commit over a file that appeared");
    assert!(content(store.as_ref(), "c/raced").await == theirs, "the file that appeared was replaced");

    // And the same for a resumable one.
    let options = WriteOptions { resumable: true, ..create_only() };
    let mut upload = store.create_upload(&path("c/raced-resumable"), options).await.unwrap();
    let id = upload.id().clone();
    write_all(&mut upload, &mine).await.unwrap();
    put(store.as_ref(), "c/raced-resumable", &theirs).await;
    expect_err!(upload.commit(None).await, Error::AlreadyExists { .. }, "resumable create-only commit");
    assert!(content(store.as_ref(), "c/raced-resumable").await == theirs, "the file that appeared was replaced");
    expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "the failed session is gone");

    // Two small create-only uploads racing for one new path: both are
    // admitted, exactly one commits (a conditional write, not a check).
    let mut one = store.create_upload(&path("c/race"), create_only()).await.unwrap();
    let mut two = store.create_upload(&path("c/race"), create_only()).await.unwrap();
    write_all(&mut one, &data(3000, 9)).await.unwrap();
    write_all(&mut two, &data(3000, 10)).await.unwrap();
    let (a, b) = tokio::join!(one.commit(None), two.commit(None));
    assert!(a.is_ok() != b.is_ok(), "exactly one racing create-only upload commits: {a:?} / {b:?}");
    let loser = if a.is_ok() { b } else { a };
    expect_err!(loser, Error::AlreadyExists { .. }, "the other racing create-only upload");

    // A create-only file of several parts, under a name that needs escaping
    // in a URL: on S3 the parts are assembled by a conditional completion
    // (If-None-Match, a request ferry signs itself), which must reach the key.
    let big = data(2 * PART_SIZE + 10, 11);
    let name = "c/new big+file ~é%.bin";
    let mut upload = store.create_upload(&path(name), create_only()).await.unwrap();
    write_all(&mut upload, &big).await.unwrap();
    upload.commit(None).await.unwrap();
    assert!(content(store.as_ref(), name).await == big, "create-only of a new multi-part file");
    let mut again = store.create_upload(&path("c/new-big"), create_only()).await.unwrap();
    write_all(&mut again, &big).await.unwrap();
    put(store.as_ref(), "c/new-big", &data(10, 12)).await;
    expect_err!(
        again.commit(None).await,
        Error::AlreadyExists { .. },
        "multi-part create-only over a file that appeared"
    );

    // A create-only upload of a new path works.
    let mut upload = store.create_upload(&path("c/new"), create_only()).await.unwrap();
    write_all(&mut upload, &first).await.unwrap();
    upload.commit(None).await.unwrap();
    assert!(content(store.as_ref(), "c/new").await == first, "create-only of a new path");
    fixture.assert_nothing_staged("after create-only").await;
}

/// While an overwrite is in flight, `stat`, `read` and `list` show the old
/// version; after its commit, the new one. A dropped plain upload leaves the
/// old version and nothing staged; to a new path, nothing visible.
async fn overwrite_is_atomic(fixture: &Fixture) {
    let store = fixture.open().await;
    let p = PART_SIZE;
    let (v1, v2, v3) = (data(p + 1, 11), data(p + 100, 12), data(p + 7, 13));
    let (d1, d2) = (Sha256::of(&v1), Sha256::of(&v2));
    put(store.as_ref(), "o.bin", &v1).await;

    let options = WriteOptions { size: Some(v2.len() as u64), sha256: Some(d2), ..WriteOptions::default() };
    let mut upload = store.create_upload(&path("o.bin"), options).await.unwrap();
    write_all(&mut upload, &v2).await.unwrap(); // a whole part is in the backend by now
    let stat = store.stat(&path("o.bin")).await.unwrap();
    assert_eq!(stat.size, p + 1, "stat during an overwrite");
    check_listed_digest(fixture, "stat during an overwrite", stat.sha256, d1);
    let (download, got) = read_all(store.as_ref(), "o.bin", ByteRange::ALL).await.unwrap();
    assert_eq!(download.meta.sha256, Some(d1), "read during an overwrite: metadata");
    assert!(got == v1, "read during an overwrite: the bytes are not the old version's");
    let listed = list_batches(store.as_ref(), None, false).await.unwrap().concat();
    assert_eq!(listed.iter().map(|m| (m.path.as_str(), m.size)).collect::<Vec<_>>(), [("o.bin", p + 1)], "list");

    let meta = upload.commit(None).await.unwrap();
    assert_eq!((meta.size, meta.sha256), (p + 100, Some(d2)), "the overwrite's commit");
    let stat = store.stat(&path("o.bin")).await.unwrap();
    assert_eq!(stat.size, p + 100, "stat after the overwrite");
    check_listed_digest(fixture, "stat after the overwrite", stat.sha256, d2);
    assert!(content(store.as_ref(), "o.bin").await == v2, "read after the overwrite");

    // Dropped before commit.
    let mut upload = store.create_upload(&path("o.bin"), WriteOptions::default()).await.unwrap();
    write_all(&mut upload, &v3).await.unwrap();
    drop(upload);
    assert!(content(store.as_ref(), "o.bin").await == v2, "a dropped overwrite replaced the file");
    assert_eq!(store.stat(&path("o.bin")).await.unwrap().size, p + 100, "stat after a dropped overwrite");
    fixture.assert_nothing_staged("after a dropped overwrite").await;

    let mut upload = store.create_upload(&path("fresh/new.bin"), WriteOptions::default()).await.unwrap();
    write_all(&mut upload, &v3).await.unwrap();
    drop(upload);
    expect_err!(store.stat(&path("fresh/new.bin")).await, Error::NotFound { .. }, "a dropped upload's path");
    expect_err!(store.stat(&path("fresh")).await, Error::NotFound { .. }, "a dropped upload's parent");
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[file("o.bin")], "after dropped uploads");
    fixture.assert_nothing_staged("after a dropped upload").await;
}

/// A download streams the version it opened, even if the file is replaced
/// or deleted meanwhile.
async fn downloads_are_snapshots(fixture: &Fixture) {
    let store = fixture.open().await;
    let (v1, v2) = (data(3 * (1 << 20) + 5, 21), data(2 * (1 << 20) + 9, 22));

    put(store.as_ref(), "snap.bin", &v1).await;
    let mut download = store.read(&path("snap.bin"), ByteRange::ALL).await.unwrap();
    let mut got = download.body.next().await.unwrap().unwrap().to_vec();
    put(store.as_ref(), "snap.bin", &v2).await;
    while let Some(chunk) = download.body.next().await {
        got.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("reading on after a replacement: {e}")));
    }
    assert!(got == v1, "a download mixed versions after a replacement ({} bytes)", got.len());

    let mut download = store.read(&path("snap.bin"), ByteRange::ALL).await.unwrap();
    let mut got = download.body.next().await.unwrap().unwrap().to_vec();
    store.delete(&path("snap.bin")).await.unwrap();
    while let Some(chunk) = download.body.next().await {
        got.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("reading on after a delete: {e}")));
    }
    assert!(got == v2, "a download broke off after a delete ({} bytes)", got.len());
}

// -------------------------------------------------------------------- listing

/// Listings come in batches of at most 1,000; one level or the whole
/// subtree depth-first, each directory's entries by name; a prefix lists
/// only what is under that directory (not its name-prefixed siblings); a
/// path naming a file lists that file; a missing path is NotFound.
///
/// The 2,500 files of `many/` are seeded straight into the backend (moto
/// takes ~25 ms per upload through the store); the tree is uploaded.
async fn list_pagination_and_prefixes(fixture: &Fixture) {
    let store = fixture.open().await;
    let many: Vec<(String, Bytes)> = (0..2500)
        .map(|i| {
            let raw = format!("many/f{i:04}");
            let bytes = Bytes::from(raw.clone());
            (raw, bytes)
        })
        .collect();
    fixture.seed(&many).await;
    let tree = ["top.txt", "tree/a/x", "tree/a/y/z", "tree/a.txt", "tree/ab", "tree/b", "tree/a-b/c"];
    for raw in tree {
        put(store.as_ref(), raw, &Bytes::from(raw)).await;
    }
    let all: Vec<&str> = many.iter().map(|(raw, _)| raw.as_str()).chain(tree).collect();

    for (dir_, recursive) in [(Some("many"), false), (None, true)] {
        let what = format!("list {dir_:?} (recursive: {recursive})");
        let batches = list_batches(store.as_ref(), dir_, recursive).await.unwrap();
        for (i, batch) in batches.iter().enumerate() {
            assert!(batch.len() <= 1000, "{what}: batch {i} holds {} entries", batch.len());
        }
        let entries: Vec<Metadata> = batches.concat();
        let pairs: Vec<Entry> = entries.iter().map(|m| (m.path.as_str().to_owned(), m.kind)).collect();
        assert_listing(&pairs, &model_listing(&all, dir_, recursive), &what);
        for meta in entries.iter().filter(|m| m.kind == EntryKind::File) {
            // Every file holds its own path.
            let (raw, size) = (meta.path.as_str(), meta.size);
            assert_eq!(size, raw.len() as u64, "{what}: size of {raw}");
            let digest = Sha256::of(raw.as_bytes());
            match tree.contains(&raw) {
                true => check_listed_digest(fixture, &format!("{what}: {raw}"), meta.sha256, digest),
                false => assert!(meta.sha256.is_none_or(|d| d == digest), "{what}: wrong sha256 for {raw}"),
            }
        }
    }
    let (download, got) = read_all(store.as_ref(), "many/f1234", ByteRange::ALL).await.unwrap();
    assert_eq!(got, b"many/f1234", "a seeded file's bytes");
    assert_eq!(download.meta.sha256, Some(Sha256::of(b"many/f1234")), "a seeded file's digest, computed");

    let cases: [(Option<&str>, bool, Vec<Entry>); 8] = [
        (None, false, vec![dir("many"), file("top.txt"), dir("tree")]),
        (
            Some("tree"),
            false,
            vec![dir("tree/a"), dir("tree/a-b"), file("tree/a.txt"), file("tree/ab"), file("tree/b")],
        ),
        (Some("tree/a"), false, vec![file("tree/a/x"), dir("tree/a/y")]),
        (Some("tree/a"), true, vec![file("tree/a/x"), dir("tree/a/y"), file("tree/a/y/z")]),
        (
            Some("tree"),
            true,
            vec![
                dir("tree/a"),
                file("tree/a/x"),
                dir("tree/a/y"),
                file("tree/a/y/z"),
                dir("tree/a-b"),
                file("tree/a-b/c"),
                file("tree/a.txt"),
                file("tree/ab"),
                file("tree/b"),
            ],
        ),
        (Some("top.txt"), false, vec![file("top.txt")]),
        (Some("top.txt"), true, vec![file("top.txt")]),
        (Some("tree/a/y/z"), false, vec![file("tree/a/y/z")]),
    ];
    for (dir_, recursive, expected) in cases {
        let what = format!("list {dir_:?} (recursive: {recursive})");
        let listed = list_entries(store.as_ref(), dir_, recursive).await;
        assert_listing(&listed, &expected, &what);
    }
    let single = list_batches(store.as_ref(), Some("top.txt"), false).await.unwrap().concat();
    assert_eq!(single[0].size, 7, "listing a file: its size");

    for missing in ["nothing", "tree/a/nothing", "tree/a/x/below", "tre"] {
        expect_err!(
            list_batches(store.as_ref(), Some(missing), false).await,
            Error::NotFound { .. },
            "listing missing path {missing:?}"
        );
    }
}

// --------------------------------------------------------------------- delete

/// Delete removes a file; a non-empty directory is DirectoryNotEmpty; a
/// missing path is NotFound. An emptied directory stays (local) or is gone
/// (S3: directories are key prefixes).
async fn delete(fixture: &Fixture) {
    let store = fixture.open().await;
    for raw in ["d/f1", "d/f2", "d/sub/f3"] {
        put(store.as_ref(), raw, &data(10, 31)).await;
    }

    store.delete(&path("d/f1")).await.unwrap();
    expect_err!(store.stat(&path("d/f1")).await, Error::NotFound { .. }, "stat of a deleted file");
    expect_err!(store.read(&path("d/f1"), ByteRange::ALL).await, Error::NotFound { .. }, "read of a deleted file");
    assert_listing(&list_entries(store.as_ref(), Some("d"), false).await, &[file("d/f2"), dir("d/sub")], "list d");

    expect_err!(store.delete(&path("d")).await, Error::DirectoryNotEmpty { .. }, "delete of a non-empty directory");
    expect_err!(store.delete(&path("d/sub")).await, Error::DirectoryNotEmpty { .. }, "delete of d/sub");
    assert_eq!(store.stat(&path("d/sub/f3")).await.unwrap().size, 10, "a refused delete removed something");

    for missing in ["missing", "d/missing", "missing/deeper", "d/f2/below"] {
        expect_err!(store.delete(&path(missing)).await, Error::NotFound { .. }, "delete of missing {missing:?}");
    }

    store.delete(&path("d/sub/f3")).await.unwrap();
    if fixture.keeps_empty_directories() {
        assert_eq!(store.stat(&path("d/sub")).await.unwrap().kind, EntryKind::Directory, "an emptied directory");
        assert_listing(&list_entries(store.as_ref(), Some("d"), false).await, &[file("d/f2"), dir("d/sub")], "list d");
        store.delete(&path("d/sub")).await.unwrap();
    }
    expect_err!(store.stat(&path("d/sub")).await, Error::NotFound { .. }, "stat of a deleted or emptied directory");
    expect_err!(store.delete(&path("d/sub")).await, Error::NotFound { .. }, "delete of a deleted directory");
    assert_listing(&list_entries(store.as_ref(), Some("d"), false).await, &[file("d/f2")], "list d");

    store.delete(&path("d/f2")).await.unwrap();
    if fixture.keeps_empty_directories() {
        assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("d")], "an emptied tree");
        store.delete(&path("d")).await.unwrap();
    }
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[], "everything deleted");

    // A path can be used again, and its metadata is the new file's.
    let again = data(20, 32);
    put(store.as_ref(), "d/f1", &again).await;
    let stat = store.stat(&path("d/f1")).await.unwrap();
    assert_eq!(stat.size, 20, "a re-created file");
    check_listed_digest(fixture, "a re-created file", stat.sha256, Sha256::of(&again));
}

/// Conflicts that can be seen before any data is sent fail the upload's
/// start; directories are not files to read.
async fn path_conflicts(fixture: &Fixture) {
    let store = fixture.open().await;
    put(store.as_ref(), "dir/file", &data(10, 41)).await;

    expect_err!(
        store.create_upload(&path("dir"), WriteOptions::default()).await,
        Error::IsDirectory { .. },
        "an upload to a directory"
    );
    expect_err!(
        store.create_upload(&path("dir/file/below"), WriteOptions::default()).await,
        Error::ParentNotDirectory { .. },
        "an upload below a file"
    );
    expect_err!(store.read(&path("dir"), ByteRange::ALL).await, Error::IsDirectory { .. }, "reading a directory");
    let stat = store.stat(&path("dir")).await.unwrap();
    assert_eq!((stat.kind, stat.size, stat.sha256), (EntryKind::Directory, 0, None), "stat of a directory");
    for missing in ["missing", "dir/missing", "dir/file/below"] {
        expect_err!(store.stat(&path(missing)).await, Error::NotFound { .. }, "stat of {missing:?}");
        expect_err!(store.read(&path(missing), ByteRange::ALL).await, Error::NotFound { .. }, "read of {missing:?}");
    }
    fixture.assert_nothing_staged("after refused uploads").await;
}

// ------------------------------------------------------------------- sessions

/// A resumable upload survives its stream and its store instance: `sync`
/// reports the committed offset (local: everything received; S3: the last
/// part boundary), `upload_status` shows it, a resume continues exactly
/// there (any other offset is OffsetMismatch), also on another instance
/// over the same root or bucket (S3: another server, at the same time;
/// local: after a restart), and the commit has the right bytes and digest.
async fn session_resume(fixture: &Fixture) {
    let p = PART_SIZE;
    let total = 2 * p + 12_345;
    let bytes = data(total, 51);
    let digest = Sha256::of(&bytes);
    let raw = "resume/file.bin";
    let options = WriteOptions { size: Some(total), sha256: Some(digest), ..resumable() };

    let store = fixture.open().await;
    let mut upload = store.create_upload(&path(raw), options).await.unwrap();
    let id = upload.id().clone();
    assert_eq!(UploadId::parse(id.as_str()).ok().as_ref(), Some(&id), "a well-formed id");
    let first = p + 1000;
    write_all(&mut upload, &bytes.slice(..first as usize)).await.unwrap();
    assert_eq!(upload.received(), first, "received");
    assert!(upload.committed() <= first, "committed {} > received {first}", upload.committed());
    let committed = upload.sync().await.unwrap();
    assert_eq!(committed, fixture.committed_after_sync(first), "sync's committed offset after {first} bytes");
    assert_eq!(upload.committed(), committed, "committed() after sync");
    drop(upload);

    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "an unfinished upload is not visible");
    let status = store.upload_status(&id).await.unwrap();
    let expected = UploadStatus { id: id.clone(), path: path(raw), committed, size: Some(total), ranges: None };
    assert_eq!(status, expected, "status of a dropped resumable upload");
    assert_eq!(store.count_uploads().await.unwrap(), 1, "count_uploads");

    for wrong in [committed + 1, committed - 1, 0, total] {
        if wrong == committed {
            continue;
        }
        expect_err!(
            within("a resume at a wrong offset", store.resume_upload(&id, wrong)).await,
            Error::OffsetMismatch { offset, committed: c, .. } if offset == wrong && c == committed,
            "resume at {wrong} (committed {committed})"
        );
    }
    let status = store.upload_status(&id).await.unwrap();
    assert_eq!(status.committed, committed, "a refused resume changed the session");

    let mut upload = within("a resume", store.resume_upload(&id, committed)).await.unwrap();
    assert_eq!(
        (upload.id(), upload.received(), upload.committed(), upload.declared_size()),
        (&id, committed, committed, Some(total)),
        "a resumed upload"
    );
    let second = 2 * p + 100;
    write_all(&mut upload, &bytes.slice(committed as usize..second as usize)).await.unwrap();
    let committed = upload.sync().await.unwrap();
    assert_eq!(committed, fixture.committed_after_sync(second), "sync's committed offset after {second} bytes");
    drop(upload);

    // Another instance: another server at the same time (S3), or the same
    // root after a restart (local: one instance per root).
    let first_store = match fixture.concurrent_instances() {
        true => Some(store),
        false => {
            drop(store);
            None
        }
    };
    let other = fixture.open().await;
    let status = other.upload_status(&id).await.unwrap();
    assert_eq!((status.committed, status.size), (committed, Some(total)), "status on another instance");
    let mut upload = within("a resume on another instance", other.resume_upload(&id, committed)).await.unwrap();
    assert_eq!(upload.received(), committed, "received after a resume on another instance");
    write_all(&mut upload, &bytes.slice(committed as usize..)).await.unwrap();
    let meta = upload.commit(Some(digest)).await.unwrap();
    assert_eq!((meta.size, meta.sha256), (total, Some(digest)), "the resumed upload's commit");
    assert!(content(other.as_ref(), raw).await == bytes, "the resumed upload's bytes");

    expect_err!(other.upload_status(&id).await, Error::UploadNotFound { .. }, "status of a committed session");
    expect_err!(other.resume_upload(&id, total).await, Error::UploadNotFound { .. }, "resume of a committed session");
    assert_eq!(other.count_uploads().await.unwrap(), 0, "count_uploads after the commit");
    if let Some(first_store) = first_store {
        assert!(content(first_store.as_ref(), raw).await == bytes, "the first instance sees the file");
        expect_err!(first_store.upload_status(&id).await, Error::UploadNotFound { .. }, "status on the first");
    }
    expect_err!(
        other.upload_status(&UploadId::derived("never created")).await,
        Error::UploadNotFound { .. },
        "status of an unknown id"
    );
    expect_err!(
        other.resume_upload(&UploadId::derived("never created"), 0).await,
        Error::UploadNotFound { .. },
        "resume of an unknown id"
    );
    fixture.assert_nothing_staged("after a resumed upload").await;
}

/// A resume takes a session over from a stream still writing to it: that
/// stream's `preempted` completes and its next calls fail with Preempted,
/// without harming the session, which the new stream finishes.
async fn resume_preempts_the_older_stream(fixture: &Fixture) {
    let store = fixture.open().await;
    let p = PART_SIZE;
    let bytes = data(p + 5000, 61);
    let raw = "preempt.bin";
    let mut old = store.create_upload(&path(raw), resumable()).await.unwrap();
    let id = old.id().clone();
    write_all(&mut old, &bytes.slice(..(p + 10) as usize)).await.unwrap();
    let committed = old.sync().await.unwrap();

    let resume = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.resume_upload(&id, committed).await })
    };
    within("the older stream's preempted()", old.preempted()).await;
    expect_err!(old.write(Bytes::from_static(b"late")).await, Error::Preempted { .. }, "a preempted stream's write");
    expect_err!(old.sync().await, Error::Preempted { .. }, "a preempted stream's sync");
    expect_err!(old.commit(None).await, Error::Preempted { .. }, "a preempted stream's commit");

    let mut new = within("the resume", resume).await.unwrap().unwrap();
    assert_eq!(new.received(), committed, "the resumed stream's offset");
    write_all(&mut new, &bytes.slice(committed as usize..)).await.unwrap();
    let meta = new.commit(None).await.unwrap();
    assert_eq!(meta.sha256, Some(Sha256::of(&bytes)), "the new stream's commit");
    assert!(content(store.as_ref(), raw).await == bytes, "the new stream's bytes");
    fixture.assert_nothing_staged("after a takeover").await;
}

/// An aborted session is gone: status, resume and abort say UploadNotFound,
/// nothing is visible and nothing is staged.
async fn abort(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "aborted.bin";
    let mut upload = store.create_upload(&path(raw), resumable()).await.unwrap();
    let id = upload.id().clone();
    write_all(&mut upload, &data(PART_SIZE + 10, 71)).await.unwrap();
    let committed = upload.sync().await.unwrap();
    drop(upload);

    within("an abort", store.abort_upload(&id)).await.unwrap();
    expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "status after an abort");
    expect_err!(store.resume_upload(&id, committed).await, Error::UploadNotFound { .. }, "resume after an abort");
    expect_err!(store.abort_upload(&id).await, Error::UploadNotFound { .. }, "a second abort");
    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "an aborted upload's path");
    assert_eq!(store.count_uploads().await.unwrap(), 0, "count_uploads after an abort");
    expect_err!(
        store.abort_upload(&UploadId::derived("never created")).await,
        Error::UploadNotFound { .. },
        "abort of an unknown id"
    );
    fixture.assert_nothing_staged("after an abort").await;
}

/// An abort takes the session from a stream still writing to it: the
/// stream is preempted, and the session is gone.
async fn abort_preempts_a_live_stream(fixture: &Fixture) {
    let store = fixture.open().await;
    let raw = "aborted-live.bin";
    let mut live = store.create_upload(&path(raw), resumable()).await.unwrap();
    let id = live.id().clone();
    write_all(&mut live, &data(PART_SIZE + 10, 72)).await.unwrap();
    live.sync().await.unwrap();

    let abort = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { store.abort_upload(&id).await })
    };
    within("the live stream's preempted()", live.preempted()).await;
    expect_err!(live.write(Bytes::from_static(b"late")).await, Error::Preempted { .. }, "a preempted write");
    expect_err!(live.commit(None).await, Error::Preempted { .. }, "a preempted commit");
    within("the abort", abort).await.unwrap().unwrap();

    expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "status after an abort");
    expect_err!(store.stat(&path(raw)).await, Error::NotFound { .. }, "an aborted upload's path");
    fixture.assert_nothing_staged("after aborting a live stream").await;
}

/// `expire_uploads` removes sessions idle for longer than it is told, and
/// keeps those with a live stream (which can still commit).
async fn gc_expires_abandoned_sessions(fixture: &Fixture) {
    let store = fixture.open().await;
    let mut abandoned = store.create_upload(&path("gc/abandoned"), resumable()).await.unwrap();
    let abandoned_id = abandoned.id().clone();
    write_all(&mut abandoned, &data(PART_SIZE + 10, 81)).await.unwrap();
    abandoned.sync().await.unwrap();
    drop(abandoned);

    let bytes = data(100, 82);
    let mut live = store.create_upload(&path("gc/live"), resumable()).await.unwrap();
    let live_id = live.id().clone();
    write_all(&mut live, &bytes.slice(..50)).await.unwrap();
    live.sync().await.unwrap();

    assert_eq!(store.expire_uploads(Duration::from_secs(3600)).await.unwrap(), 0, "nothing is an hour old");
    assert_eq!(store.count_uploads().await.unwrap(), 2, "both sessions are still there");

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.expire_uploads(Duration::from_millis(10)).await.unwrap(), 1, "expired sessions");
    expect_err!(store.upload_status(&abandoned_id).await, Error::UploadNotFound { .. }, "an expired session");
    assert_eq!(store.upload_status(&live_id).await.unwrap().path, path("gc/live"), "a live session stays");
    assert_eq!(store.count_uploads().await.unwrap(), 1, "count_uploads after expiry");

    write_all(&mut live, &bytes.slice(50..)).await.unwrap();
    live.commit(None).await.unwrap();
    assert!(content(store.as_ref(), "gc/live").await == bytes, "the live session's commit");
    expect_err!(store.stat(&path("gc/abandoned")).await, Error::NotFound { .. }, "an expired session's path");
    fixture.assert_nothing_staged("after expiry").await;
}

/// A declared or final SHA-256 that the data does not have fails the commit
/// with DigestMismatch: nothing visible (an existing file stays as it
/// was), no session left, nothing staged.
async fn digest_mismatch_leaves_nothing(fixture: &Fixture) {
    let store = fixture.open().await;
    let bytes = data(PART_SIZE + 5, 91);
    let (real, wrong) = (Sha256::of(&bytes), Sha256::of(b"something else"));

    let options = WriteOptions { size: Some(bytes.len() as u64), sha256: Some(wrong), ..WriteOptions::default() };
    let mut upload = store.create_upload(&path("dm/declared"), options).await.unwrap();
    write_all(&mut upload, &bytes).await.unwrap();
    expect_err!(
        upload.commit(None).await,
        Error::DigestMismatch { expected, actual } if expected == wrong && actual == real,
        "a wrong declared digest"
    );
    expect_err!(store.stat(&path("dm/declared")).await, Error::NotFound { .. }, "after a digest mismatch");
    fixture.assert_nothing_staged("after a declared digest mismatch").await;

    let mut upload = store.create_upload(&path("dm/final"), resumable()).await.unwrap();
    let id = upload.id().clone();
    write_all(&mut upload, &bytes).await.unwrap();
    upload.sync().await.unwrap();
    expect_err!(
        upload.commit(Some(wrong)).await,
        Error::DigestMismatch { expected, actual } if expected == wrong && actual == real,
        "a wrong final digest"
    );
    expect_err!(store.stat(&path("dm/final")).await, Error::NotFound { .. }, "after a final digest mismatch");
    expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "the mismatching session");
    assert_eq!(store.count_uploads().await.unwrap(), 0, "count_uploads after a mismatch");
    fixture.assert_nothing_staged("after a final digest mismatch").await;

    let old = data(1000, 92);
    put(store.as_ref(), "dm/existing", &old).await;
    let options = WriteOptions { sha256: Some(wrong), ..resumable() };
    let mut upload = store.create_upload(&path("dm/existing"), options).await.unwrap();
    write_all(&mut upload, &bytes).await.unwrap();
    expect_err!(upload.commit(None).await, Error::DigestMismatch { .. }, "a mismatching overwrite");
    assert!(content(store.as_ref(), "dm/existing").await == old, "a mismatching overwrite replaced the file");
    let stat = store.stat(&path("dm/existing")).await.unwrap();
    assert_eq!(stat.size, 1000, "stat after a mismatching overwrite");
    check_listed_digest(fixture, "stat after a mismatching overwrite", stat.sha256, Sha256::of(&old));
    fixture.assert_nothing_staged("after a mismatching overwrite").await;
}

/// A declared size that the data does not have fails the upload with
/// SizeMismatch (more bytes: at the write or the commit; fewer: at the
/// commit), leaving nothing visible and nothing staged.
async fn size_mismatch_leaves_nothing(fixture: &Fixture) {
    let store = fixture.open().await;
    for resumable in [false, true] {
        let short = format!("sm/short-{resumable}");
        let options = WriteOptions { size: Some(100), resumable, ..WriteOptions::default() };
        let mut upload = store.create_upload(&path(&short), options.clone()).await.unwrap();
        let id = upload.id().clone();
        write_all(&mut upload, &data(99, 101)).await.unwrap();
        expect_err!(
            upload.commit(None).await,
            Error::SizeMismatch { declared: 100, received: 99 },
            "{short}: fewer bytes than declared"
        );
        expect_err!(store.stat(&path(&short)).await, Error::NotFound { .. }, "{short}");
        expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "{short}: the session");

        let long = format!("sm/long-{resumable}");
        let mut upload = store.create_upload(&path(&long), options).await.unwrap();
        let id = upload.id().clone();
        match write_all(&mut upload, &data(101, 102)).await {
            Err(Error::SizeMismatch { declared: 100, .. }) => {
                // Refused at the write: the stream ends here; a resumable session stays at its committed offset.
                drop(upload);
                if resumable {
                    assert_eq!(store.upload_status(&id).await.unwrap().committed, 0, "{long}: the session");
                    store.abort_upload(&id).await.unwrap();
                }
            }
            Err(other) => panic!("{long}: more bytes than declared: expected SizeMismatch, got {other:?}"),
            Ok(()) => {
                expect_err!(
                    upload.commit(None).await,
                    Error::SizeMismatch { declared: 100, received: 101 },
                    "{long}: more bytes than declared"
                );
                expect_err!(store.upload_status(&id).await, Error::UploadNotFound { .. }, "{long}: the session");
            }
        }
        expect_err!(store.stat(&path(&long)).await, Error::NotFound { .. }, "{long}");
    }
    fixture.assert_nothing_staged("after size mismatches").await;
}

/// A session id the caller chooses (`UploadId::derived`) is the session's;
/// a second session with it is UploadExists; after the commit the id is free.
async fn chosen_upload_ids(fixture: &Fixture) {
    let store = fixture.open().await;
    let id = UploadId::derived("conformance/chosen");
    let chosen = || WriteOptions { upload_id: Some(id.clone()), ..resumable() };
    let bytes = data(300, 111);

    let mut upload = store.create_upload(&path("ids/a"), chosen()).await.unwrap();
    assert_eq!(upload.id(), &id, "the chosen id");
    write_all(&mut upload, &bytes.slice(..100)).await.unwrap();
    let committed = upload.sync().await.unwrap();
    drop(upload);

    expect_err!(
        within("a create with a taken id", store.create_upload(&path("ids/b"), chosen())).await,
        Error::UploadExists { .. },
        "a second session with the same id"
    );
    let status = store.upload_status(&id).await.unwrap();
    assert_eq!((status.path.as_str(), status.committed), ("ids/a", committed), "the first session is untouched");

    let mut upload = within("a resume", store.resume_upload(&id, committed)).await.unwrap();
    write_all(&mut upload, &bytes.slice(committed as usize..)).await.unwrap();
    upload.commit(None).await.unwrap();
    assert!(content(store.as_ref(), "ids/a").await == bytes, "the chosen-id upload's bytes");
    expect_err!(store.stat(&path("ids/b")).await, Error::NotFound { .. }, "the refused upload's path");

    let upload = store.create_upload(&path("ids/b"), chosen()).await.unwrap();
    assert_eq!(upload.id(), &id, "the id is free again after the commit");
    drop(upload);
    store.abort_upload(&id).await.unwrap();
    fixture.assert_nothing_staged("after chosen ids").await;
}

/// A second session with the id of one that a stream is writing to is
/// UploadExists, at once, and the stream goes on undisturbed.
async fn a_taken_upload_id_is_refused_while_streaming(fixture: &Fixture) {
    let store = fixture.open().await;
    let id = UploadId::derived("conformance/taken");
    let chosen = || WriteOptions { upload_id: Some(id.clone()), ..resumable() };
    let bytes = data(300, 112);

    let mut live = store.create_upload(&path("taken/a"), chosen()).await.unwrap();
    write_all(&mut live, &bytes.slice(..100)).await.unwrap();
    expect_err!(
        within("a create with the id of a live session", store.create_upload(&path("taken/b"), chosen())).await,
        Error::UploadExists { .. },
        "a second session with the id of a live one"
    );
    write_all(&mut live, &bytes.slice(100..))
        .await
        .unwrap_or_else(|e| panic!("the live stream, after the refusal: {e}"));
    live.commit(None).await.unwrap();
    assert!(content(store.as_ref(), "taken/a").await == bytes, "the live stream's bytes");
    expect_err!(store.stat(&path("taken/b")).await, Error::NotFound { .. }, "the refused upload's path");
    fixture.assert_nothing_staged("after a refused id").await;
}

/// The store's own state (`.ferry`) never shows in a listing, whatever is in
/// flight; a user's file named `.ferry` below the top level does.
async fn reserved_name_is_never_listed(fixture: &Fixture) {
    let store = fixture.open().await;
    for raw in ["a.txt", "sub/.ferry", "sub/b"] {
        put(store.as_ref(), raw, &data(10, 121)).await;
    }
    let mut kept = store.create_upload(&path("sub/kept"), resumable()).await.unwrap();
    write_all(&mut kept, &data(PART_SIZE + 1, 122)).await.unwrap();
    kept.sync().await.unwrap();
    drop(kept);
    let mut plain = store.create_upload(&path("sub/in-flight"), WriteOptions::default()).await.unwrap();
    write_all(&mut plain, &data(PART_SIZE + 1, 123)).await.unwrap();

    let expected = [file("a.txt"), dir("sub"), file("sub/.ferry"), file("sub/b")];
    assert_listing(&list_entries(store.as_ref(), None, true).await, &expected, "recursive listing of the root");
    assert_listing(&list_entries(store.as_ref(), None, false).await, &[file("a.txt"), dir("sub")], "the root");
    assert_listing(&list_entries(store.as_ref(), Some("sub"), false).await, &expected[2..], "sub");
    assert_eq!(store.stat(&path("sub/.ferry")).await.unwrap().kind, EntryKind::File, "a user's .ferry file");
    drop(plain);
}

/// `count_uploads` counts the resumable sessions the store holds: live or
/// at rest, not plain uploads, not finished or aborted sessions.
async fn count_uploads(fixture: &Fixture) {
    let store = fixture.open().await;
    assert_eq!(store.count_uploads().await.unwrap(), 0, "an empty store");

    let mut plain = store.create_upload(&path("n/plain"), WriteOptions::default()).await.unwrap();
    write_all(&mut plain, &data(10, 131)).await.unwrap();
    let mut live = store.create_upload(&path("n/live"), resumable()).await.unwrap();
    write_all(&mut live, &data(10, 132)).await.unwrap();
    let mut rest = store.create_upload(&path("n/rest"), resumable()).await.unwrap();
    write_all(&mut rest, &data(10, 133)).await.unwrap();
    rest.sync().await.unwrap();
    let rest_id = rest.id().clone();
    drop(rest);
    assert_eq!(store.count_uploads().await.unwrap(), 2, "one live and one resting session (and a plain upload)");

    live.commit(None).await.unwrap();
    assert_eq!(store.count_uploads().await.unwrap(), 1, "after a commit");
    store.abort_upload(&rest_id).await.unwrap();
    assert_eq!(store.count_uploads().await.unwrap(), 0, "after an abort");
    plain.commit(None).await.unwrap();
    assert_eq!(store.count_uploads().await.unwrap(), 0, "after the plain upload");
}

// ------------------------------------------------------------------ put_files

/// A whole file for `put_files`, declaring nothing.
fn new_file(raw: &str, bytes: &Bytes) -> NewFile {
    NewFile { path: path(raw), options: WriteOptions::default(), data: bytes.clone() }
}

/// A whole file for `put_files` with its size and digest declared.
fn declared_file(raw: &str, bytes: &Bytes) -> NewFile {
    let options =
        WriteOptions { size: Some(bytes.len() as u64), sha256: Some(Sha256::of(bytes)), ..WriteOptions::default() };
    NewFile { path: path(raw), options, data: bytes.clone() }
}

/// `put_files` stores every file of a batch (empty ones, nested ones, with
/// and without declared size, digest, mtime and permissions) and answers
/// one result per file, in order, each with the metadata an upload's
/// commit would have; `stat`, `read` and `list` then agree.
async fn put_files_round_trip(fixture: &Fixture) {
    let store = fixture.open().await;
    let mtime = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    let files: Vec<(&str, Bytes)> = vec![
        ("pf/empty", Bytes::new()),
        ("pf/one", data(1, 201)),
        ("pf/sub/kib", data(1024, 202)),
        ("pf/sub/deep/big", data(300_000, 203)),
        ("pf/also-empty", Bytes::new()),
        ("top", data(77, 204)),
    ];
    let batch: Vec<NewFile> = files
        .iter()
        .enumerate()
        .map(|(i, (raw, bytes))| match i % 3 {
            0 => new_file(raw, bytes),
            1 => declared_file(raw, bytes),
            _ => NewFile {
                options: WriteOptions {
                    mtime: Some(mtime),
                    permissions: Some(0o640),
                    ..declared_file(raw, bytes).options
                },
                ..new_file(raw, bytes)
            },
        })
        .collect();
    let before = SystemTime::now() - Duration::from_secs(5);
    let results = within("put_files", store.put_files(batch)).await;
    let after = SystemTime::now() + Duration::from_secs(5);
    assert_eq!(results.len(), files.len(), "one result per file");
    for (i, ((raw, bytes), result)) in files.iter().zip(&results).enumerate() {
        let meta = result.as_ref().unwrap_or_else(|e| panic!("{raw}: put_files failed: {e}"));
        let digest = Sha256::of(bytes);
        assert_eq!(
            (meta.path.as_str(), meta.kind, meta.size, meta.sha256),
            (*raw, EntryKind::File, bytes.len() as u64, Some(digest)),
            "{raw}: the result's metadata (result {i})"
        );
        let (want_mtime, want_permissions) = match i % 3 {
            2 => (Some(mtime), 0o640),
            _ => (None, 0o644),
        };
        assert_eq!(meta.permissions, want_permissions, "{raw}: the result's permissions");
        match want_mtime {
            Some(want) => assert_eq!(meta.mtime, want, "{raw}: the result's mtime"),
            None => assert!(before <= meta.mtime && meta.mtime <= after, "{raw}: mtime {:?} not about now", meta.mtime),
        }
        let stat = store.stat(&path(raw)).await.unwrap();
        assert_eq!(
            (stat.kind, stat.size, stat.mtime, stat.permissions),
            (EntryKind::File, bytes.len() as u64, meta.mtime, meta.permissions),
            "{raw}: stat"
        );
        check_listed_digest(fixture, &format!("{raw}: stat"), stat.sha256, digest);
        let (download, got) = read_all(store.as_ref(), raw, ByteRange::ALL).await.unwrap();
        assert_eq!(download.meta.sha256, Some(digest), "{raw}: the download's digest");
        assert!(got == bytes[..], "{raw}: read {} bytes that differ from those put", got.len());
    }
    let expected = [
        dir("pf"),
        file("pf/also-empty"),
        file("pf/empty"),
        file("pf/one"),
        dir("pf/sub"),
        dir("pf/sub/deep"),
        file("pf/sub/deep/big"),
        file("pf/sub/kib"),
        file("top"),
    ];
    assert_listing(&list_entries(store.as_ref(), None, true).await, &expected, "after put_files");
    assert!(within("an empty batch", store.put_files(Vec::new())).await.is_empty(), "an empty batch");
    fixture.assert_nothing_staged("after put_files").await;
}

/// In one batch, files that fail (create-only onto an existing file, fewer
/// bytes than declared, a wrong digest, a parent that is a file, a path
/// that is a directory) fail alone, with their own error, at their own
/// position: the files around them are stored, the failed ones leave
/// nothing visible, and what was there stays as it was.
async fn put_files_failures_are_per_file(fixture: &Fixture) {
    let store = fixture.open().await;
    let existing = data(500, 211);
    put(store.as_ref(), "pe/exists", &existing).await;
    put(store.as_ref(), "pe/dir/inside", &data(5, 212)).await;
    let good: Vec<Bytes> = (0..6).map(|i| data(100 + i, 220 + i)).collect();
    let wrong = Sha256::of(b"not these bytes");
    let short = data(9, 213);
    let mismatching = data(64, 214);

    let batch = vec![
        declared_file("pe/good0", &good[0]),
        NewFile {
            options: WriteOptions { mode: WriteMode::CreateOnly, ..WriteOptions::default() },
            ..new_file("pe/exists", &data(10, 215))
        },
        declared_file("pe/good1", &good[1]),
        NewFile { options: WriteOptions { size: Some(10), ..WriteOptions::default() }, ..new_file("pe/short", &short) },
        declared_file("pe/good2", &good[2]),
        NewFile {
            options: WriteOptions { sha256: Some(wrong), ..WriteOptions::default() },
            ..new_file("pe/mismatch", &mismatching)
        },
        new_file("pe/good3", &good[3]),
        new_file("pe/exists/below", &data(10, 216)),
        new_file("pe/good4", &good[4]),
        new_file("pe/dir", &data(10, 217)),
        declared_file("pe/good5", &good[5]),
    ];
    let results = within("put_files", store.put_files(batch)).await;
    assert_eq!(results.len(), 11, "one result per file");
    let mut results = results.into_iter();
    let mut next = || results.next().expect("a result");
    for (i, expect) in (0..11).map(|i| (i, i % 2 == 0)) {
        let result = next();
        if expect {
            let bytes = &good[i / 2];
            let meta = result.unwrap_or_else(|e| panic!("good file {}: {e}", i / 2));
            assert_eq!((meta.size, meta.sha256), (bytes.len() as u64, Some(Sha256::of(bytes))), "good file {}", i / 2);
            continue;
        }
        match i {
            1 => expect_err!(result, Error::AlreadyExists { .. }, "create-only onto an existing file"),
            3 => expect_err!(result, Error::SizeMismatch { declared: 10, received: 9 }, "fewer bytes than declared"),
            5 => expect_err!(
                result,
                Error::DigestMismatch { expected, actual } if expected == wrong && actual == Sha256::of(&mismatching),
                "a wrong digest"
            ),
            7 => expect_err!(result, Error::ParentNotDirectory { .. }, "a parent that is a file"),
            9 => expect_err!(result, Error::IsDirectory { .. }, "a path that is a directory"),
            _ => unreachable!(),
        }
    }
    for (i, bytes) in good.iter().enumerate() {
        assert!(content(store.as_ref(), &format!("pe/good{i}")).await == bytes[..], "pe/good{i}: its bytes");
    }
    assert!(content(store.as_ref(), "pe/exists").await == existing, "create-only replaced the existing file");
    for missing in ["pe/short", "pe/mismatch", "pe/exists/below"] {
        expect_err!(store.stat(&path(missing)).await, Error::NotFound { .. }, "{missing}: a failed file is visible");
    }
    assert_eq!(store.stat(&path("pe/dir")).await.unwrap().kind, EntryKind::Directory, "pe/dir is still a directory");
    assert_listing(
        &list_entries(store.as_ref(), Some("pe/dir"), true).await,
        &[file("pe/dir/inside")],
        "the directory a file was refused at",
    );
    fixture.assert_nothing_staged("after a batch with failures").await;
}

/// Two files with the same path in one batch are applied in order: both
/// succeed (overwrite mode) and the last one is what is stored.
async fn put_files_same_path_twice_last_wins(fixture: &Fixture) {
    let store = fixture.open().await;
    let (first, second, third) = (data(1000, 231), data(10, 232), data(2000, 233));
    let batch = vec![
        declared_file("twice/f", &first),
        declared_file("twice/other", &third),
        NewFile {
            options: WriteOptions { permissions: Some(0o600), ..declared_file("twice/f", &second).options },
            ..new_file("twice/f", &second)
        },
    ];
    let results = within("put_files", store.put_files(batch)).await;
    assert_eq!(results.len(), 3, "one result per file");
    for (i, result) in results.iter().enumerate() {
        assert!(result.is_ok(), "file {i}: {result:?}");
    }
    assert_eq!(results[0].as_ref().unwrap().sha256, Some(Sha256::of(&first)), "the first version's result");
    assert_eq!(results[2].as_ref().unwrap().sha256, Some(Sha256::of(&second)), "the second version's result");
    assert!(content(store.as_ref(), "twice/f").await == second, "the last version of twice/f wins");
    let stat = store.stat(&path("twice/f")).await.unwrap();
    assert_eq!((stat.size, stat.permissions), (10, 0o600), "stat: the last version's metadata");
    check_listed_digest(fixture, "stat twice/f", stat.sha256, Sha256::of(&second));
    assert!(content(store.as_ref(), "twice/other").await == third, "the file between them");
    assert_listing(
        &list_entries(store.as_ref(), None, true).await,
        &[dir("twice"), file("twice/f"), file("twice/other")],
        "one entry per path",
    );
    fixture.assert_nothing_staged("after a batch with one path twice").await;
}

// ----------------------------------------------------------------- create_dir

/// `create_dir` makes an empty directory (and its missing parents): its
/// metadata says Directory, `stat` agrees, it is listed one level and
/// recursively, and listing it gives nothing. Making it again succeeds.
async fn create_dir_makes_empty_directories(fixture: &Fixture) {
    let store = fixture.open().await;
    let meta = within("create_dir", store.create_dir(&path("empty"))).await.unwrap();
    assert_eq!((meta.path.as_str(), meta.kind, meta.size, meta.sha256), ("empty", EntryKind::Directory, 0, None));
    let stat = store.stat(&path("empty")).await.unwrap();
    assert_eq!((stat.kind, stat.size), (EntryKind::Directory, 0), "stat of an empty directory");
    assert_listing(&list_entries(store.as_ref(), None, false).await, &[dir("empty")], "the root, one level");
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("empty")], "the root, recursive");
    assert_listing(&list_entries(store.as_ref(), Some("empty"), false).await, &[], "the empty directory");
    assert_listing(&list_entries(store.as_ref(), Some("empty"), true).await, &[], "the empty directory, recursive");

    // Idempotent.
    let again = within("create_dir again", store.create_dir(&path("empty"))).await.unwrap();
    assert_eq!((again.path.as_str(), again.kind), ("empty", EntryKind::Directory), "making it again");
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("empty")], "after making it again");

    // Nested: every level is made.
    let meta = within("create_dir nested", store.create_dir(&path("n/a/b"))).await.unwrap();
    assert_eq!((meta.path.as_str(), meta.kind), ("n/a/b", EntryKind::Directory), "a nested directory");
    for level in ["n", "n/a", "n/a/b"] {
        assert_eq!(store.stat(&path(level)).await.unwrap().kind, EntryKind::Directory, "stat {level}");
    }
    let expected = [dir("empty"), dir("n"), dir("n/a"), dir("n/a/b")];
    assert_listing(&list_entries(store.as_ref(), None, true).await, &expected, "the root, recursive");
    assert_listing(&list_entries(store.as_ref(), None, false).await, &[dir("empty"), dir("n")], "the root");
    assert_listing(&list_entries(store.as_ref(), Some("n"), false).await, &[dir("n/a")], "n");
    assert_listing(&list_entries(store.as_ref(), Some("n"), true).await, &expected[2..], "n, recursive");
    // A deeper level under existing ones, and the existing ones again.
    store.create_dir(&path("n/a/c")).await.unwrap();
    store.create_dir(&path("n/a")).await.unwrap();
    assert_listing(
        &list_entries(store.as_ref(), Some("n/a"), false).await,
        &[dir("n/a/b"), dir("n/a/c")],
        "n/a after adding n/a/c",
    );
    // Beside files, in name order.
    put(store.as_ref(), "n/file", &data(3, 241)).await;
    assert_listing(
        &list_entries(store.as_ref(), Some("n"), true).await,
        &[dir("n/a"), dir("n/a/b"), dir("n/a/c"), file("n/file")],
        "n, recursive, with a file",
    );
    fixture.assert_nothing_staged("after create_dir").await;
}

/// A file in the way: at the path itself AlreadyExists, at a parent
/// ParentNotDirectory; the file is untouched and no directory appears.
async fn create_dir_refuses_files_in_the_way(fixture: &Fixture) {
    let store = fixture.open().await;
    let bytes = data(42, 251);
    put(store.as_ref(), "f", &bytes).await;
    put(store.as_ref(), "d/g", &bytes).await;
    expect_err!(store.create_dir(&path("f")).await, Error::AlreadyExists { .. }, "a file at the path");
    expect_err!(store.create_dir(&path("d/g")).await, Error::AlreadyExists { .. }, "a nested file at the path");
    expect_err!(store.create_dir(&path("f/sub")).await, Error::ParentNotDirectory { .. }, "a file as the parent");
    expect_err!(
        store.create_dir(&path("d/g/sub/deeper")).await,
        Error::ParentNotDirectory { .. },
        "a file as a grandparent"
    );
    for raw in ["f", "d/g"] {
        let stat = store.stat(&path(raw)).await.unwrap();
        assert_eq!((stat.kind, stat.size), (EntryKind::File, 42), "{raw}: still the file");
        assert!(content(store.as_ref(), raw).await == bytes, "{raw}: its bytes");
    }
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("d"), file("d/g"), file("f")], "the tree");
}

/// A created directory deletes like a directory: empty, it goes (and is
/// then gone: stat, list, a second delete); holding an empty directory, it
/// is DirectoryNotEmpty. A file cannot be uploaded onto it.
async fn created_directories_delete_like_directories(fixture: &Fixture) {
    let store = fixture.open().await;
    store.create_dir(&path("gone")).await.unwrap();
    store.create_dir(&path("p/q")).await.unwrap();
    expect_err!(
        store.create_upload(&path("gone"), WriteOptions::default()).await,
        Error::IsDirectory { .. },
        "an upload onto an empty directory"
    );
    let results = store.put_files(vec![new_file("gone", &data(3, 261))]).await;
    expect_err!(results.into_iter().next().expect("a result"), Error::IsDirectory { .. }, "put_files onto it");

    store.delete(&path("gone")).await.unwrap();
    expect_err!(store.stat(&path("gone")).await, Error::NotFound { .. }, "stat of a deleted empty directory");
    expect_err!(store.delete(&path("gone")).await, Error::NotFound { .. }, "a second delete");
    expect_err!(list_batches(store.as_ref(), Some("gone"), false).await, Error::NotFound { .. }, "listing it");
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("p"), dir("p/q")], "after the delete");

    expect_err!(store.delete(&path("p")).await, Error::DirectoryNotEmpty { .. }, "a directory holding an empty one");
    assert_eq!(store.stat(&path("p/q")).await.unwrap().kind, EntryKind::Directory, "the refused delete kept p/q");
    store.delete(&path("p/q")).await.unwrap();
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("p")], "after deleting p/q");
    store.delete(&path("p")).await.unwrap();
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[], "everything deleted");
    // Made again after its delete.
    store.create_dir(&path("gone")).await.unwrap();
    assert_listing(&list_entries(store.as_ref(), None, true).await, &[dir("gone")], "made again");
}

/// Files go into a created directory (by upload and by put_files); the
/// directory is then listed once, not once as made and once as holding
/// files, and it stays when its last file is deleted (it was made).
async fn files_in_a_created_directory(fixture: &Fixture) {
    let store = fixture.open().await;
    store.create_dir(&path("u/v")).await.unwrap();
    put(store.as_ref(), "u/x", &data(10, 271)).await;
    let results = store.put_files(vec![new_file("u/v/y", &data(20, 272)), new_file("u/z", &data(30, 273))]).await;
    assert!(results.iter().all(Result::is_ok), "put_files into created directories: {results:?}");

    let expected = [dir("u"), dir("u/v"), file("u/v/y"), file("u/x"), file("u/z")];
    assert_listing(&list_entries(store.as_ref(), None, true).await, &expected, "the root, recursive");
    assert_listing(&list_entries(store.as_ref(), None, false).await, &[dir("u")], "the root, one level");
    assert_listing(
        &list_entries(store.as_ref(), Some("u"), false).await,
        &[dir("u/v"), file("u/x"), file("u/z")],
        "u, one level",
    );
    assert_listing(&list_entries(store.as_ref(), Some("u"), true).await, &expected[1..], "u, recursive");
    // Making it again changes nothing.
    store.create_dir(&path("u/v")).await.unwrap();
    assert_listing(&list_entries(store.as_ref(), None, true).await, &expected, "after making u/v again");

    expect_err!(store.delete(&path("u/v")).await, Error::DirectoryNotEmpty { .. }, "u/v holds a file");
    store.delete(&path("u/v/y")).await.unwrap();
    assert_eq!(store.stat(&path("u/v")).await.unwrap().kind, EntryKind::Directory, "a made directory, emptied");
    assert_listing(
        &list_entries(store.as_ref(), Some("u"), true).await,
        &[dir("u/v"), file("u/x"), file("u/z")],
        "u after emptying u/v",
    );
    store.delete(&path("u/v")).await.unwrap();
    expect_err!(store.stat(&path("u/v")).await, Error::NotFound { .. }, "u/v after its delete");
    fixture.assert_nothing_staged("after files in created directories").await;
}
