//! Atomic commit under concurrency: readers only ever see whole versions,
//! a download keeps its version when the file is replaced, concurrent writers
//! each commit whole (last wins), create-only lets exactly one through.

use ferry_client::{Code, UploadOptions};
use ferry_proto::v1::DownloadRequest;
use ferry_proto::v1::download_response::Kind;

use crate::harness::{TestServer, download_bytes, random_bytes, sha256_hex, upload_bytes};

const VERSION_SIZE: usize = 3 * 1024 * 1024 + 17;

/// Version `v` of a file: every byte is `v`, so any mix of versions shows.
fn version(v: u8) -> Vec<u8> {
    vec![v; VERSION_SIZE]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_only_see_whole_versions_while_a_path_is_overwritten() {
    let server = TestServer::start().await;
    let client = server.client().await;
    upload_bytes(&client, "hot.bin", &version(1)).await.expect("first version");

    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for v in 2..=30u8 {
                upload_bytes(&client, "hot.bin", &version(v)).await.expect("overwrite");
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..15 {
                // The client checks the SHA-256 of what it received against the server's.
                let data = download_bytes(&client, "hot.bin").await.expect("download verifies");
                assert_eq!(data.len(), VERSION_SIZE, "a partial version was visible");
                assert!(data.iter().all(|&b| b == data[0]), "a mix of versions was visible");
                seen.insert(data[0]);
            }
            seen
        }));
    }
    writer.await.expect("writer");
    for reader in readers {
        assert!(!reader.await.expect("reader").is_empty());
    }
    assert_eq!(download_bytes(&client, "hot.bin").await.expect("final"), version(30), "the last commit wins");
    assert!(server.staging_drains().await);
}

/// A download streams the version it opened, even if the path is replaced
/// and then deleted while it is being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_keeps_its_version_when_the_file_is_replaced() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let old = random_bytes(32 * 1024 * 1024, 11);
    upload_bytes(&client, "v.bin", &old).await.expect("old version");

    let mut raw = server.raw().await;
    let mut stream = raw
        .download(DownloadRequest { path: "v.bin".into(), offset: 0, length: None })
        .await
        .expect("open")
        .into_inner();
    let Some(Kind::Info(info)) = stream.message().await.expect("info").and_then(|m| m.kind) else {
        panic!("a download starts with info")
    };
    assert_eq!(info.sha256, sha256_hex(&old));

    upload_bytes(&client, "v.bin", b"new version").await.expect("replace");
    client.delete("v.bin").await.expect("delete");

    let mut received = Vec::with_capacity(old.len());
    while let Some(message) = stream.message().await.expect("chunk") {
        let Some(Kind::Chunk(chunk)) = message.kind else { panic!("only chunks after info") };
        received.extend_from_slice(&chunk.data);
    }
    assert!(received == old, "the download must deliver the version it opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overwrites_each_commit_whole() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let uploads: Vec<_> = (1..=8u8)
        .map(|v| {
            let client = client.clone();
            tokio::spawn(async move { upload_bytes(&client, "same.bin", &version(v)).await })
        })
        .collect();
    for upload in uploads {
        upload.await.expect("task").expect("every overwrite succeeds");
    }
    let data = download_bytes(&client, "same.bin").await.expect("download");
    assert_eq!(data.len(), VERSION_SIZE);
    assert!(data.iter().all(|&b| b == data[0]) && (1..=8).contains(&data[0]), "one whole version");
    assert!(server.staging_drains().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_create_only_lets_exactly_one_through() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let uploads: Vec<_> = (1..=8u8)
        .map(|v| {
            let client = client.clone();
            tokio::spawn(async move {
                let data = version(v);
                let options =
                    UploadOptions { size: Some(data.len() as u64), create_only: true, ..UploadOptions::default() };
                client.upload("once.bin", std::io::Cursor::new(data), options, |_| {}).await
            })
        })
        .collect();
    let mut winners = 0;
    for upload in uploads {
        match upload.await.expect("task") {
            Ok(_) => winners += 1,
            Err(e) => assert_eq!(e.code(), Some(Code::AlreadyExists), "{e}"),
        }
    }
    assert_eq!(winners, 1);
    let data = download_bytes(&client, "once.bin").await.expect("download");
    assert!(data.len() == VERSION_SIZE && data.iter().all(|&b| b == data[0]));
    assert!(server.staging_drains().await, "losers leave nothing staged");
}
