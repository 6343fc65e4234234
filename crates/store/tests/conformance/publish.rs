//! Publishing and replacing: create-only uploads (refused at the start
//! and at the commit), overwrites that are atomic, and downloads that
//! stream the version they opened.

use ferry_store::{ByteRange, Error, Sha256, WriteMode, WriteOptions};
use tokio_stream::StreamExt;

use crate::support::{
    Fixture, PART_SIZE, content, data, file, list_batches, list_entries, path, put, read_all, write_all,
};
use crate::{assert_listing, check_listed_digest};

/// A create-only upload of an existing path fails with AlreadyExists when it
/// starts, and again at commit if the file appeared meanwhile; nothing is
/// replaced and nothing is left behind.
pub(crate) async fn create_only(fixture: &Fixture) {
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
pub(crate) async fn overwrite_is_atomic(fixture: &Fixture) {
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
pub(crate) async fn downloads_are_snapshots(fixture: &Fixture) {
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
