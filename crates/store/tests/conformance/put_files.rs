//! `put_files`: a batch of whole files stored in order, one result per
//! file; failures are per file; a path twice in a batch, the last wins.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_store::{ByteRange, EntryKind, Error, NewFile, Sha256, WriteMode, WriteOptions};

use crate::support::{Fixture, content, data, dir, file, list_entries, path, put, read_all, within};
use crate::{assert_listing, check_listed_digest, declared_file, new_file};

/// `put_files` stores every file of a batch (empty ones, nested ones, with
/// and without declared size, digest, mtime and permissions) and answers
/// one result per file, in order, each with the metadata an upload's
/// commit would have; `stat`, `read` and `list` then agree.
pub(crate) async fn put_files_round_trip(fixture: &Fixture) {
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
            Some(want) => assert_eq!(meta.mtime, Some(want), "{raw}: the result's mtime"),
            None => assert!(
                meta.mtime.is_some_and(|t| before <= t && t <= after),
                "{raw}: mtime {:?} not about now",
                meta.mtime
            ),
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
pub(crate) async fn put_files_failures_are_per_file(fixture: &Fixture) {
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
pub(crate) async fn put_files_same_path_twice_last_wins(fixture: &Fixture) {
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
