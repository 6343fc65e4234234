//! Round trips at boundary sizes, ranged downloads, stdin-style uploads.

use ferry_client::{Code, Range, UploadOptions};
use ferry_proto::DEFAULT_CHUNK_SIZE as CHUNK;

use crate::harness::{TestServer, download_bytes, random_bytes, sha256_hex, upload_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_at_boundary_sizes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for (i, size) in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * 1024 * 1024 + 1000].into_iter().enumerate() {
        let data = random_bytes(size, i as u64);
        let path = format!("sizes/file-{size}");
        let stored = upload_bytes(&client, &path, &data).await.expect("upload");
        assert_eq!(stored.size, size as u64);
        assert_eq!(stored.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
        assert_eq!(std::fs::read(server.root().join(&path)).expect("stored file"), data, "on disk, size {size}");
        assert_eq!(download_bytes(&client, &path).await.expect("download"), data, "downloaded, size {size}");
    }
    assert!(server.staging_drains().await, "staging must be empty after commits");
}

/// ≥ 129 MiB through files on both sides: constant memory paths, fsync, rename.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_file_round_trip_through_files() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let local = tempfile::tempdir().expect("temp dir");
    let source = local.path().join("big.bin");
    let data = random_bytes(129 * 1024 * 1024 + 7, 42);
    std::fs::write(&source, &data).expect("write source");

    let stored = client.upload_file(&source, "big/big.bin", UploadOptions::default(), |_| {}).await.expect("upload");
    assert_eq!(stored.size, data.len() as u64);
    let target = local.path().join("copy.bin");
    let fetched = client.download_file("big/big.bin", Range::ALL, &target, false, |_| {}).await.expect("download");
    assert_eq!(fetched.sha256, stored.sha256);
    assert!(std::fs::read(&target).expect("read copy") == data, "downloaded copy differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_downloads() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let data = random_bytes(3 * CHUNK + 123, 7);
    let size = data.len() as u64;
    upload_bytes(&client, "r.bin", &data).await.expect("upload");

    let get = |offset: u64, length: Option<u64>| {
        let client = client.clone();
        async move { client.download("r.bin", Range { offset, length }, Vec::new(), |_| {}).await.map(|(_, b)| b) }
    };
    assert_eq!(get(0, None).await.expect("offset 0"), data);
    assert_eq!(get(size - 1, None).await.expect("last byte"), &data[data.len() - 1..]);
    assert_eq!(get(size, None).await.expect("offset == size is empty"), Vec::<u8>::new());
    assert_eq!(get(CHUNK as u64 - 3, Some(10)).await.expect("across a chunk edge"), &data[CHUNK - 3..CHUNK + 7]);
    assert_eq!(get(5, Some(size * 2)).await.expect("length past the end is cut"), &data[5..]);
    assert_eq!(get(0, Some(0)).await.expect("zero length"), Vec::<u8>::new());

    let past = get(size + 1, None).await.expect_err("offset past the end");
    assert_eq!(past.code(), Some(Code::OutOfRange), "{past}");
    let overflow = get(1, Some(u64::MAX)).await.expect_err("offset + length overflows");
    assert_eq!(overflow.code(), Some(Code::OutOfRange), "{overflow}");
}

/// Unknown size (like stdin): the client sends the digest in the finish message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_unknown_size_is_verified_by_finish_digest() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let data = random_bytes(2 * CHUNK + 5, 3);
    let stored = client
        .upload("stream.bin", std::io::Cursor::new(data.clone()), UploadOptions::default(), |_| {})
        .await
        .expect("upload");
    assert_eq!(stored.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert_eq!(download_bytes(&client, "stream.bin").await.expect("download"), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtime_and_permissions_are_kept() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789);
    let options = UploadOptions { size: Some(3), mtime: Some(mtime), permissions: Some(0o640), ..Default::default() };
    let stored = client.upload("m.txt", std::io::Cursor::new(b"abc".to_vec()), options, |_| {}).await.expect("upload");
    assert_eq!(stored.mtime, Some(mtime));
    assert_eq!(stored.permissions, 0o640);
    let on_disk = std::fs::metadata(server.root().join("m.txt")).expect("stored");
    assert_eq!(on_disk.modified().expect("mtime"), mtime);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(on_disk.permissions().mode() & 0o777, 0o640);
}
