//! gzip and zstd, negotiated per call: round trips both ways, and a
//! compression bomb (a tiny message that inflates past the message limit)
//! refused without the server inflating it.

use ferry_client::{ClientOptions, Compression};
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{Chunk, UploadHeader, UploadRequest};
use tonic::codec::CompressionEncoding;

use crate::harness::{TestServer, download_bytes, random_bytes, upload_bytes};

#[tokio::test]
async fn compressed_round_trips_in_both_directions() {
    let server = TestServer::start().await;
    // Compressible data, so that compression really happens on the wire.
    let mut data = b"2026-11-22T06:00:00Z,INFO,host-001,request took 12 ms\n".repeat(40_000);
    data.extend_from_slice(&random_bytes(100_000, 9));
    for (name, codec) in [("gzip", Compression::Gzip), ("zstd", Compression::Zstd)] {
        let options = ClientOptions { compression: Some(codec), ..ClientOptions::default() };
        let client = server.client_with(options).await.expect("connect");
        let path = format!("compressed/{name}.log");
        let stored = upload_bytes(&client, &path, &data).await.expect("compressed upload");
        assert_eq!(stored.size, data.len() as u64);
        assert!(download_bytes(&client, &path).await.expect("compressed download") == data, "{name}");
        // A client that does not ask gets the same bytes, uncompressed.
        assert!(download_bytes(&server.client().await, &path).await.expect("plain download") == data);
    }
}

#[tokio::test]
async fn a_compression_bomb_is_refused_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    for encoding in [CompressionEncoding::Zstd, CompressionEncoding::Gzip] {
        let mut raw = server.raw().await.send_compressed(encoding);
        // 64 MiB of zeros: a few kilobytes compressed, 16× the message limit inflated.
        let bomb = vec![0u8; 64 * 1024 * 1024];
        let messages = vec![
            UploadRequest { kind: Some(Kind::Header(UploadHeader { path: "bomb.bin".into(), ..Default::default() })) },
            UploadRequest { kind: Some(Kind::Chunk(Chunk { data: bomb.into(), crc32c: None })) },
        ];
        let refused = raw.upload(tokio_stream::iter(messages)).await.expect_err("the bomb is refused");
        // tonic inflates into a buffer capped at the message limit and fails
        // the stream as soon as the cap is hit.
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        assert!(refused.message().contains("size limit"), "{refused:?}");
        assert!(!server.root().join("bomb.bin").exists());
    }
    assert!(server.staging_drains().await, "nothing staged is left behind");
    let client = server.client().await;
    let data = random_bytes(1 << 20, 3);
    upload_bytes(&client, "after.bin", &data).await.expect("still serving");
    assert!(download_bytes(&client, "after.bin").await.expect("download") == data);
}
