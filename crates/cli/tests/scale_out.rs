//! Stateless front ends over one bucket: two `ferry serve` processes over the
//! same S3 prefix (moto; or Ceph RGW: `eval "$(scripts/ceph-rgw.sh start)"`
//! then `cargo test -p ferry --test scale_out`). An upload started on server A is resumed and
//! committed on server B after A is killed, and both servers then serve the
//! same file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_client::{Client, Range, RetryPolicy, UploadOptions};
use support::{MIB, Moto, Server, random_bytes, sha256_hex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_started_on_one_server_is_finished_on_another() {
    let Some(moto) = Moto::start() else { return };
    let bucket = moto.bucket("scale-out");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let storage = &format!("s3://{bucket}/scale-out-{nanos}");
    let mut a = Server::start_s3(&moto, storage);
    let b = Server::start_s3(&moto, storage);

    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(40 * MIB, 21);
    let source = dir.path().join("big.bin");
    std::fs::write(&source, &data).unwrap();

    // Start on A; kill A once two 8 MiB parts are durable in the bucket.
    let on_a = Client::connect(a.url()).await.unwrap();
    let options = UploadOptions { size: Some(data.len() as u64), ..UploadOptions::default() };
    let id = on_a.create_upload("models/big.bin", &options).await.unwrap();
    let committed = Arc::new(AtomicU64::new(0));
    let seen = committed.clone();
    let no_retry = RetryPolicy { max_attempts_without_progress: 0, ..RetryPolicy::default() };
    let upload = tokio::spawn({
        let (source, id) = (source.clone(), id.clone());
        async move { on_a.upload_file_resumable(&source, &id, &no_retry, move |n| seen.store(n, Ordering::SeqCst)).await }
    });
    while committed.load(Ordering::SeqCst) < 16 * MIB as u64 {
        assert!(!upload.is_finished(), "the upload finished before A could be killed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    a.kill();
    assert!(upload.await.unwrap().is_err(), "the upload on A was cut");

    // B sees the session, from the bucket alone, and finishes it.
    let on_b = Client::connect(b.url()).await.unwrap();
    let state = on_b.query_upload(&id).await.expect("B knows the session");
    assert_eq!(state.path, "models/big.bin");
    assert!(state.committed >= 16 * MIB as u64 && state.committed < data.len() as u64, "{}", state.committed);
    assert_eq!(state.committed % (8 * MIB as u64), 0, "S3 sessions commit whole parts");
    let sent_again = Arc::new(AtomicU64::new(u64::MAX));
    let first = sent_again.clone();
    let stored = on_b
        .upload_file_resumable(&source, &id, &RetryPolicy::default(), move |n| {
            let _ = first.compare_exchange(u64::MAX, n, Ordering::SeqCst, Ordering::SeqCst);
        })
        .await
        .expect("B finishes the upload");
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert!(sent_again.load(Ordering::SeqCst) >= state.committed, "B resumed at the committed offset, not at 0");

    // A restarted and B serve the same object.
    let a2 = Server::start_s3(&moto, storage);
    for url in [a2.url(), b.url()] {
        let client = Client::connect(url).await.unwrap();
        let (file, bytes) = client.download("models/big.bin", Range::ALL, Vec::new(), |_| {}).await.unwrap();
        assert_eq!(file.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
        assert!(bytes == data, "{url} serves the committed file");
        assert!(client.query_upload(&id).await.is_err(), "the session is gone once committed");
    }
}

/// A backend outage is UNAVAILABLE, never a partial object: with the S3
/// server gone, calls fail after the retry timeout with UNAVAILABLE, and
/// once it is back the server serves again, with nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_is_unavailable_and_loses_nothing() {
    let Some(mut moto) = Moto::start() else { return };
    if moto.bucket.is_some() {
        eprintln!("SKIPPED: the outage test stops its own moto; an external S3 server is configured");
        return;
    }
    let bucket = moto.bucket("outage");
    let storage = format!("s3://{bucket}/ferry");
    let server = Server::start_s3_with(&moto, &storage, &["--s3-retry-timeout", "2s"]);
    let client = Client::connect(server.url()).await.unwrap();
    let data = random_bytes(3 * MIB, 22);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("a.bin");
    std::fs::write(&source, &data).unwrap();
    client.upload_file(&source, "before.bin", UploadOptions::default(), |_| {}).await.expect("upload while up");

    let endpoint = moto.endpoint.clone();
    moto.stop();
    let started = std::time::Instant::now();
    let down = client.stat("before.bin").await.expect_err("S3 is down");
    assert_eq!(down.code(), Some(ferry_client::Code::Unavailable), "{down}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "gave up after the retry timeout");
    let failed = client.upload_file(&source, "during.bin", UploadOptions::default(), |_| {}).await;
    assert_eq!(failed.expect_err("no upload while S3 is down").code(), Some(ferry_client::Code::Unavailable));

    // moto keeps data in memory, so a restarted one is empty: what matters is
    // that the server recovers and never reports the failed upload as stored.
    let moto = Moto::restart_at(&endpoint);
    moto.bucket(&bucket);
    client.upload_file(&source, "after.bin", UploadOptions::default(), |_| {}).await.expect("serving again");
    assert!(client.stat("during.bin").await.is_err(), "nothing of the failed upload is visible");
}
