//! Transfers through a link that keeps dropping.

use ferry_client::{Client, RetryPolicy, UploadOptions};

use crate::harness::{TestServer, download_bytes, random_bytes, sha256_hex};
use crate::proxy::FaultProxy;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_upload_survives_repeated_connection_cuts() {
    let server = TestServer::start().await;
    let proxy = FaultProxy::start(server.addr(), 12 * MIB).await;
    let data = random_bytes(64 * MIB as usize + 5, 64);
    let local = tempfile::tempdir().expect("temp dir");
    let source = local.path().join("flaky.bin");
    std::fs::write(&source, &data).expect("write source");

    let client = Client::connect(&proxy.url).await.expect("connect through the proxy");
    let options = UploadOptions { size: Some(data.len() as u64), ..UploadOptions::default() };
    let id = client.create_upload("flaky.bin", &options).await.expect("create");
    let policy = RetryPolicy { initial_backoff: std::time::Duration::from_millis(10), ..RetryPolicy::default() };
    let stored = client.upload_file_resumable(&source, &id, &policy, |_| {}).await.expect("upload through cuts");

    assert_eq!(stored.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    let direct = server.client().await;
    assert!(download_bytes(&direct, "flaky.bin").await.expect("download") == data);
    let cuts = proxy.cuts();
    assert!(cuts >= 4, "a 64 MiB upload through a 12 MiB budget is cut at least 4 times, got {cuts}");
    // What is sent again after a cut is what was in flight, at most one sync
    // window plus one chunk (the server keeps everything it received).
    let resent = proxy.upstream_bytes() - data.len() as u64;
    let bound = cuts * (ferry_store::local::SYNC_INTERVAL + MIB);
    eprintln!("{cuts} cuts, {resent} bytes re-sent in all ({} per cut)", resent / cuts.max(1));
    assert!(resent <= bound, "re-sent {resent} bytes over {cuts} cuts (bound {bound})");
    assert!(server.staging_drains().await);
}
