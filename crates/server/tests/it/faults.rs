//! Transfers through a link that keeps dropping.

use ferry_client::{Client, RetryPolicy, UploadOptions};

use crate::harness::{TestServer, download_bytes, random_bytes, sha256_hex};
use crate::proxy::FaultProxy;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_upload_survives_repeated_connection_cuts() {
    let server = TestServer::start().await;
    let proxy = FaultProxy::start(server.addr(), 12 * MIB, u64::MAX).await;
    let data = random_bytes(64 * MIB as usize + 5, 64);
    let local = tempfile::tempdir().expect("temp dir");
    let source = local.path().join("flaky.bin");
    std::fs::write(&source, &data).expect("write source");

    let options = UploadOptions { size: Some(data.len() as u64), ..UploadOptions::default() };
    let policy = RetryPolicy { initial_backoff: std::time::Duration::from_millis(10), ..RetryPolicy::default() };
    // The same upload without cuts, for comparison.
    let direct = server.client().await;
    let started = std::time::Instant::now();
    let id = direct.create_upload("direct.bin", &options).await.expect("create");
    direct.upload_file_resumable(&source, &id, &policy, |_| {}).await.expect("direct upload");
    let uncut = started.elapsed();

    let client = Client::connect(&proxy.url).await.expect("connect through the proxy");
    let started = std::time::Instant::now();
    let id = client.create_upload("flaky.bin", &options).await.expect("create");
    let stored = client.upload_file_resumable(&source, &id, &policy, |_| {}).await.expect("upload through cuts");
    let cut = started.elapsed();

    assert_eq!(stored.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert!(download_bytes(&direct, "flaky.bin").await.expect("download") == data);
    let cuts = proxy.cuts();
    assert!(cuts >= 4, "a 64 MiB upload through a 12 MiB budget is cut at least 4 times, got {cuts}");
    // What is sent again after a cut is what was in flight, at most one sync
    // window plus one chunk (the server keeps everything it received).
    let resent = proxy.upstream_bytes() - data.len() as u64;
    let bound = cuts * (ferry_store::local::SYNC_INTERVAL + MIB);
    eprintln!(
        "{cuts} cuts, {resent} bytes re-sent in all ({} per cut); {:.3} s with cuts vs {:.3} s without: {:.1} ms per cut",
        resent / cuts.max(1),
        cut.as_secs_f64(),
        uncut.as_secs_f64(),
        (cut.as_secs_f64() - uncut.as_secs_f64()) * 1e3 / cuts.max(1) as f64
    );
    assert!(resent <= bound, "re-sent {resent} bytes over {cuts} cuts (bound {bound})");
    assert!(server.staging_drains().await);
}

/// Two clients resume the same session at once: they take it from each other
/// until one commits; both then report the stored file, which is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_resuming_one_session_both_end_with_the_whole_file() {
    let server = TestServer::start().await;
    let data = random_bytes(48 * MIB as usize, 48);
    let local = tempfile::tempdir().expect("temp dir");
    let source = local.path().join("shared.bin");
    std::fs::write(&source, &data).expect("write source");
    let options = UploadOptions { size: Some(data.len() as u64), ..UploadOptions::default() };
    let id = server.client().await.create_upload("shared.bin", &options).await.expect("create");

    let policy = RetryPolicy { initial_backoff: std::time::Duration::from_millis(5), ..RetryPolicy::default() };
    let uploads: Vec<_> = (0..2)
        .map(|_| {
            let (url, source, id, policy) = (server.url.clone(), source.clone(), id.clone(), policy.clone());
            tokio::spawn(async move {
                let client = Client::connect(&url).await.expect("connect");
                client.upload_file_resumable(&source, &id, &policy, |_| {}).await
            })
        })
        .collect();
    for upload in uploads {
        let stored = upload.await.expect("task").expect("each client ends with the stored file");
        assert_eq!(stored.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    }
    assert!(download_bytes(&server.client().await, "shared.bin").await.expect("download") == data);
    assert!(server.staging_drains().await);
}

/// A resumable download through a link that drops every 12 MiB: it continues
/// from the partial file each time and ends verified and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_download_survives_repeated_connection_cuts() {
    let server = TestServer::start().await;
    let data = random_bytes(64 * MIB as usize + 9, 65);
    crate::harness::upload_bytes(&server.client().await, "down.bin", &data).await.expect("upload");
    let proxy = FaultProxy::start(server.addr(), u64::MAX, 12 * MIB).await;
    let local = tempfile::tempdir().expect("temp dir");
    let target = local.path().join("down.bin");

    let client = Client::connect(&proxy.url).await.expect("connect through the proxy");
    let policy = RetryPolicy { initial_backoff: std::time::Duration::from_millis(10), ..RetryPolicy::default() };
    let file = client
        .download_file_resumable("down.bin", &target, false, &policy, |_| {}, |_| {})
        .await
        .expect("download through cuts");
    assert_eq!(file.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert!(std::fs::read(&target).expect("downloaded") == data);
    let cuts = proxy.cuts();
    assert!(cuts >= 4, "a 64 MiB download through a 12 MiB budget is cut at least 4 times, got {cuts}");
    // Bytes fetched again after a cut are those in flight: the HTTP/2 window
    // and the client's write queue, a few MiB.
    let refetched = proxy.downstream_bytes().saturating_sub(data.len() as u64);
    eprintln!("{cuts} cuts, {refetched} bytes fetched again ({} per cut)", refetched / cuts.max(1));
    assert!(refetched <= cuts * 8 * MIB, "fetched {refetched} bytes again over {cuts} cuts");
    assert_eq!(std::fs::read_dir(local.path()).expect("dir").count(), 1, "no partial file is left");
}
