//! `MakeDirectory` with a time and permission bits: set on a directory made
//! now or before, reported back and by `Stat`/`List`; bad values refused
//! before anything is made.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, UNIX_EPOCH};

use ferry_client::Code;
use ferry_proto::v1::MakeDirectoryRequest;

use crate::harness::{TestServer, upload_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_directory_sets_time_and_permissions() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mtime = UNIX_EPOCH + Duration::from_secs(1_234_567_890);

    // A new directory (and its parent, which gets neither).
    let made = client.make_directory_with("a/new", Some(mtime), Some(0o750)).await.expect("make a/new");
    assert!(made.is_dir);
    assert_eq!((made.mtime, made.permissions), (Some(mtime), 0o750), "the reply");
    let on_disk = std::fs::metadata(server.root().join("a/new")).expect("a/new on disk");
    assert_eq!((on_disk.mode() & 0o777, on_disk.mtime()), (0o750, 1_234_567_890), "on disk");
    assert_ne!(std::fs::metadata(server.root().join("a")).expect("a").mtime(), 1_234_567_890);

    // A directory made by an upload, after its file is in: only what is given changes.
    upload_bytes(&client, "b/f.txt", b"x").await.expect("upload");
    let before = client.stat("b").await.expect("stat b");
    let set = client.make_directory_with("b", None, Some(0o700)).await.expect("permissions of b");
    assert_eq!((set.mtime, set.permissions), (before.mtime, 0o700));
    let set = client.make_directory_with("b", Some(mtime), None).await.expect("time of b");
    assert_eq!((set.mtime, set.permissions), (Some(mtime), 0o700));
    let stat = client.stat("b").await.expect("stat b");
    assert_eq!((stat.mtime, stat.permissions), (Some(mtime), 0o700), "stat agrees");

    // The owner keeps rwx: the server can still write into it.
    let sealed = client.make_directory_with("b", None, Some(0o555)).await.expect("seal b");
    assert_eq!(sealed.permissions, 0o755);
    upload_bytes(&client, "b/g.txt", b"y").await.expect("upload into a sealed directory");

    // Without either, nothing about an existing directory changes.
    let plain = client.make_directory("a/new").await.expect("make a/new again");
    assert_eq!((plain.mtime, plain.permissions), (Some(mtime), 0o750));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_directory_refuses_bad_metadata_before_making_anything() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let bad_time = MakeDirectoryRequest {
        path: "t".into(),
        mtime: Some(prost_types::Timestamp { seconds: 0, nanos: 1_000_000_000 }),
        permissions: None,
    };
    let status = raw.make_directory(bad_time).await.expect_err("nanos out of range");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_bits = MakeDirectoryRequest { path: "p".into(), mtime: None, permissions: Some(0o10000) };
    let status = raw.make_directory(bad_bits).await.expect_err("bits past 0o7777");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for name in ["t", "p"] {
        assert!(!server.root().join(name).exists(), "{name} was made");
    }

    // A file in the way: ALREADY_EXISTS, the file untouched.
    let client = server.client().await;
    upload_bytes(&client, "f", b"file").await.expect("upload");
    let error = client.make_directory_with("f", None, Some(0o700)).await.expect_err("a file in the way");
    assert_eq!(error.code(), Some(Code::AlreadyExists));
    let file = std::fs::metadata(server.root().join("f")).expect("f");
    assert!(file.is_file() && file.permissions().mode() & 0o777 != 0o700);
}
