//! ByteStream writes ride ferry's durable sessions: a write interrupted by a
//! server restart resumes where QueryWriteStatus says, and the tutorial
//! services store through the same machinery (1 KiB chunks included).

use ferry_proto::compat::bytestream::byte_stream_client::ByteStreamClient;
use ferry_proto::compat::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use ferry_proto::compat::file_server::RequestSend;
use ferry_proto::compat::file_server::file_transfer_client::FileTransferClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{TestServer, random_bytes, sha256_hex};

async fn bytestream(server: &TestServer) -> ByteStreamClient<Channel> {
    let channel = Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    ByteStreamClient::new(channel)
        .max_decoding_message_size(ferry_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(ferry_proto::MAX_MESSAGE_SIZE)
}

/// Write requests for `data[from..to]`, 1 MiB each, the last one finishing if asked.
fn writes(name: &str, data: &[u8], from: usize, to: usize, finish: bool) -> Vec<WriteRequest> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let end = (at + (1 << 20)).min(to);
        out.push(WriteRequest {
            resource_name: if at == from { name.to_owned() } else { String::new() },
            write_offset: at as i64,
            finish_write: finish && end == to,
            data: data[at..end].to_vec().into(),
        });
        at = end;
    }
    out
}

async fn read_all(client: &mut ByteStreamClient<Channel>, name: &str, offset: i64, limit: i64) -> Vec<u8> {
    let request = ReadRequest { resource_name: name.to_owned(), read_offset: offset, read_limit: limit };
    let mut stream = client.read(request).await.expect("read").into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await.expect("read stream") {
        out.extend_from_slice(&message.data);
    }
    out
}

#[tokio::test]
async fn a_bytestream_write_resumes_after_a_server_restart() {
    let mut server = TestServer::start().await;
    let data = random_bytes(24 << 20, 11);
    let hash = sha256_hex(&data);
    let name = format!("main/uploads/5b1a8a36-0f7e-4a43-8e0b-5d2b3c4d5e6f/blobs/{hash}/{}", data.len());

    // Half the blob, then the stream ends without finish_write: the session keeps it.
    let mut client = bytestream(&server).await;
    let half = data.len() / 2;
    let cut = client.write(tokio_stream::iter(writes(&name, &data, 0, half, false))).await.expect_err("unfinished");
    assert_eq!(cut.code(), Code::Aborted, "{cut:?}");
    drop(client);

    server.restart().await;
    let mut client = bytestream(&server).await;
    let status = client
        .query_write_status(QueryWriteStatusRequest { resource_name: name.clone() })
        .await
        .expect("the write survives the restart")
        .into_inner();
    assert!(!status.complete);
    let committed = status.committed_size as usize;
    assert!(committed > 0 && committed <= half, "committed {committed} of {half} sent");

    // The client resumes at the committed size (sending a little before it is harmless).
    let from = committed.saturating_sub(4096);
    let done = client.write(tokio_stream::iter(writes(&name, &data, from, data.len(), true))).await.expect("resume");
    assert_eq!(done.into_inner().committed_size, data.len() as i64);
    let status = client.query_write_status(QueryWriteStatusRequest { resource_name: name.clone() }).await.unwrap();
    assert!(status.get_ref().complete);

    let blob = format!("main/blobs/{hash}/{}", data.len());
    assert!(read_all(&mut client, &blob, 0, 0).await == data);
    assert!(read_all(&mut client, &blob, 1000, 5000).await == data[1000..6000]);
    assert!(std::fs::read(server.root().join(format!("cas/main/blobs/{hash}"))).unwrap() == data);
    assert!(server.staging_drains().await);
}

#[tokio::test]
async fn a_blob_whose_bytes_do_not_match_its_name_is_refused() {
    let server = TestServer::start().await;
    let mut client = bytestream(&server).await;
    let data = random_bytes(3 << 20, 12);
    let wrong = sha256_hex(b"something else");
    let name = format!("uploads/0d1e2f30-1111-2222-3333-444455556666/blobs/{wrong}/{}", data.len());
    let refused = client.write(tokio_stream::iter(writes(&name, &data, 0, data.len(), true))).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(!server.root().join(format!("cas/blobs/{wrong}")).exists());
    // A write offset past the committed size is OUT_OF_RANGE.
    let name = format!("uploads/0d1e2f30-1111-2222-3333-777788889999/blobs/{}/{}", sha256_hex(&data), data.len());
    let ahead = client.write(tokio_stream::iter(writes(&name, &data, 1 << 20, data.len(), true))).await.unwrap_err();
    assert_eq!(ahead.code(), Code::NotFound, "no write in progress at that name: {ahead:?}");
}

#[tokio::test]
async fn file_transfer_merges_one_kib_chunks_and_commits_atomically() {
    let server = TestServer::start().await;
    let channel = Channel::from_shared(server.url.clone()).unwrap().connect().await.unwrap();
    let mut client = FileTransferClient::new(channel);
    let data = random_bytes(8 << 20, 13);
    let chunks: Vec<RequestSend> = data.chunks(1024).map(|c| RequestSend { data: c.to_vec().into() }).collect();
    let mut request = tonic::Request::new(tokio_stream::iter(chunks));
    request.metadata_mut().insert("x-ferry-path", "tutorial/one-kib.bin".parse().unwrap());
    let reply = client.send_file(request).await.expect("SendFile");
    assert!(reply.get_ref().ok);
    assert_eq!(reply.metadata().get("x-ferry-path").unwrap(), "tutorial/one-kib.bin");
    assert!(std::fs::read(server.root().join("tutorial/one-kib.bin")).unwrap() == data);
    assert!(server.staging_drains().await);
}
