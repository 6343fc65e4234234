//! Upload-session rules of the local store that need no network: expiry,
//! and what dropping an upload leaves behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use ferry_store::{Error, LocalStore, Store, StorePath, WriteOptions};

fn resumable() -> WriteOptions {
    WriteOptions { resumable: true, size: Some(10), ..WriteOptions::default() }
}

fn sessions(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join(".ferry/uploads")).unwrap().count()
}

#[tokio::test]
async fn abandoned_sessions_expire_and_live_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let path = StorePath::parse("x.bin").unwrap();

    let mut abandoned = store.create_upload(&path, resumable()).await.unwrap();
    abandoned.write(Bytes::from_static(b"abc")).await.unwrap();
    assert_eq!(abandoned.sync().await.unwrap(), 3);
    let abandoned_id = abandoned.id().clone();
    drop(abandoned);

    let live = store.create_upload(&path, resumable()).await.unwrap();
    let live_id = live.id().clone();
    tokio::time::sleep(Duration::from_millis(20)).await;

    assert_eq!(store.expire_uploads(Duration::from_millis(10)).await.unwrap(), 1);
    assert!(matches!(store.upload_status(&abandoned_id).await, Err(Error::UploadNotFound { .. })));
    assert_eq!(store.upload_status(&live_id).await.unwrap().committed, 0, "a session with a live stream stays");
    assert_eq!(store.expire_uploads(Duration::from_secs(3600)).await.unwrap(), 0, "nothing is that old");
    drop(live);
}

#[tokio::test]
async fn dropping_an_upload_keeps_it_only_if_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let path = StorePath::parse("y.bin").unwrap();

    let mut once = store.create_upload(&path, WriteOptions::default()).await.unwrap();
    once.write(Bytes::from_static(b"abc")).await.unwrap();
    drop(once);
    assert_eq!(sessions(dir.path()), 0, "a non-resumable upload leaves nothing");

    let mut kept = store.create_upload(&path, resumable()).await.unwrap();
    kept.write(Bytes::from_static(b"abcde")).await.unwrap();
    let committed = kept.sync().await.unwrap();
    let id = kept.id().clone();
    drop(kept);
    assert_eq!(sessions(dir.path()), 1);
    let status = store.upload_status(&id).await.unwrap();
    assert_eq!((status.committed, status.size, status.path.as_str()), (committed, Some(10), "y.bin"));

    let mut resumed = store.resume_upload(&id, committed).await.unwrap();
    resumed.write(Bytes::from_static(b"fghij")).await.unwrap();
    let meta = resumed.commit(None).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("y.bin")).unwrap(), b"abcdefghij");
    assert_eq!(meta.sha256, Some(ferry_store::Sha256::of(b"abcdefghij")));
    assert_eq!(sessions(dir.path()), 0, "a committed session is gone");
}
