//! Ranged upload sessions at the protocol level, with the raw stub: tiny
//! ranges sent out of order and at once, conflicts between them, commits
//! with gaps, wrong digests, malformed range streams, mixing with ordinary
//! sessions, abort, the range limit, restarts, idle streams, expiry,
//! create-only and the quota.
//! The client library's `upload_parallel` is `ranged_client.rs`.
//!
//! This file holds the calls and the range stream the tests share; the
//! tests are in `ranged/`: `ranges.rs` (writing ranges: at once, in
//! conflict, malformed, the range limit), `commit.rs` (what CommitUpload
//! checks) and `sessions.rs` (ordinary sessions beside ranged ones, abort,
//! restart, idle streams, expiry).

mod commit;
mod ranges;
mod sessions;

use std::ops::Range;
use std::time::Duration;

use ferry_client::Code;
use ferry_proto::v1::ferry_client::FerryClient;
use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{
    AbortUploadRequest, ByteRange, Chunk, CommitUploadRequest, CreateUploadRequest, FileInfo, QueryUploadRequest,
    QueryUploadResponse, StatRequest, UploadHeader, UploadSessionRequest, UploadSessionResponse, UploadSessionStart,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::harness::{TestServer, sha256_hex};

pub(crate) type Raw = FerryClient<Channel>;

const KIB: u64 = 1024;
/// Bytes per chunk of a range stream: several chunks even for small ranges.
const CHUNK: usize = 16 * 1024;
/// Bound on anything that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(10);

fn header(path: &str, size: Option<u64>) -> UploadHeader {
    UploadHeader { path: path.into(), size, ..Default::default() }
}

async fn create(raw: &mut Raw, header: UploadHeader, ranged: bool) -> Result<String, Status> {
    let reply = raw.create_upload(CreateUploadRequest { header: Some(header), ranged }).await?.into_inner();
    assert_eq!(reply.ranged, ranged, "the reply echoes `ranged`");
    Ok(reply.upload_id)
}

/// A ranged session for `size` bytes at `path`.
pub(crate) async fn create_ranged(raw: &mut Raw, path: &str, size: u64) -> String {
    create(raw, header(path, Some(size)), true).await.expect("create a ranged session")
}

async fn query(raw: &mut Raw, id: &str) -> Result<QueryUploadResponse, Status> {
    Ok(raw.query_upload(QueryUploadRequest { upload_id: id.into() }).await?.into_inner())
}

/// The committed ranges QueryUpload reports, as `(start, end)`.
async fn committed(raw: &mut Raw, id: &str) -> Vec<(u64, u64)> {
    let reply = query(raw, id).await.expect("query");
    assert!(reply.ranged, "a ranged session says so");
    reply.committed_ranges.iter().map(|r| (r.offset, r.offset + r.length)).collect()
}

async fn commit(raw: &mut Raw, id: &str, sha256: &str) -> Result<FileInfo, Status> {
    let request = CommitUploadRequest { upload_id: id.into(), sha256: sha256.into() };
    let reply = raw.commit_upload(request).await?.into_inner();
    Ok(reply.file.expect("CommitUpload answers with the file"))
}

async fn abort(raw: &mut Raw, id: &str) -> Result<(), Status> {
    raw.abort_upload(AbortUploadRequest { upload_id: id.into() }).await.map(drop)
}

fn part(data: &[u8], range: Range<u64>) -> &[u8] {
    &data[range.start as usize..range.end as usize]
}

fn message(kind: Kind) -> UploadSessionRequest {
    UploadSessionRequest { kind: Some(kind) }
}

fn chunk(data: &[u8], crc32c: Option<u32>) -> UploadSessionRequest {
    message(Kind::Chunk(Chunk { data: data.to_vec().into(), crc32c }))
}

/// An open `UploadSession` stream: requests go in through `tx`.
pub(crate) struct RangeStream {
    tx: mpsc::Sender<UploadSessionRequest>,
    replies: Streaming<UploadSessionResponse>,
}

impl RangeStream {
    /// Opens a stream whose start carries `length` (a range stream) or not
    /// (an ordinary one). Refusals of the start itself come back here.
    pub(crate) async fn open(raw: &mut Raw, id: &str, offset: u64, length: Option<u64>) -> Result<Self, Status> {
        let (tx, rx) = mpsc::channel(64);
        let start = UploadSessionStart { upload_id: id.into(), offset, length };
        tx.send(message(Kind::Start(start))).await.expect("queue the start");
        let replies = raw.upload_session(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, replies })
    }

    /// Sends `data` in chunks with their CRC32C. False if the server stopped listening.
    pub(crate) async fn send(&self, data: &[u8]) -> bool {
        for piece in data.chunks(CHUNK) {
            if self.tx.send(chunk(piece, Some(crc32c::crc32c(piece)))).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn push(&self, request: UploadSessionRequest) {
        let _ = self.tx.send(request).await;
    }

    /// Half-closes: the range the server then answers it committed (its
    /// only and last message), or the status the stream failed with.
    pub(crate) async fn close(self) -> Result<ByteRange, Status> {
        let Self { tx, mut replies } = self;
        drop(tx);
        let reply = tokio::time::timeout(PROMPTLY, replies.message()).await.expect("an answer to the half-close")?;
        let Some(UploadSessionResponse { kind: Some(Reply::RangeCommitted(range)) }) = reply else {
            panic!("expected range_committed, got {reply:?}")
        };
        assert!(replies.message().await?.is_none(), "range_committed is the last message");
        Ok(range)
    }

    /// The status the stream fails with, without half-closing.
    async fn outcome(mut self) -> Status {
        match tokio::time::timeout(PROMPTLY, self.replies.message()).await.expect("the stream ends") {
            Err(status) => status,
            Ok(reply) => panic!("expected the stream to fail, got {reply:?}"),
        }
    }
}

/// Sends `data[range]` as one range stream.
pub(crate) async fn send_range(raw: &mut Raw, id: &str, data: &[u8], range: Range<u64>) -> Result<ByteRange, Status> {
    let length = range.end - range.start;
    let stream = RangeStream::open(raw, id, range.start, Some(length)).await?;
    assert!(stream.send(part(data, range.clone())).await, "the server stopped listening");
    let committed = stream.close().await?;
    assert_eq!((committed.offset, committed.length), (range.start, length), "range_committed names the range");
    Ok(committed)
}

/// Opens a range stream once the range is free: a cancelled writer lets go
/// of its range when the server notices, which is asynchronous.
async fn open_when_free(raw: &mut Raw, id: &str, range: Range<u64>) -> RangeStream {
    for _ in 0..400 {
        match RangeStream::open(raw, id, range.start, Some(range.end - range.start)).await {
            Ok(stream) => return stream,
            Err(status) if status.code() == Code::Aborted => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(status) => panic!("opening {range:?}: {status:?}"),
        }
    }
    panic!("{range:?} was never freed")
}

/// The code a failed call ended with (OK if it succeeded).
fn code<T>(result: Result<T, Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// Checks the published file and that its session is gone.
async fn check_published(server: &TestServer, raw: &mut Raw, id: &str, path: &str, data: &[u8], file: &FileInfo) {
    assert_eq!((file.path.as_str(), file.size), (path, data.len() as u64));
    assert_eq!(file.sha256, sha256_hex(data));
    assert!(std::fs::read(server.root().join(path)).expect("the published file") == data, "{path} differs");
    let info = raw.stat(StatRequest { path: path.into() }).await.expect("stat").into_inner().info.expect("info");
    assert_eq!((info.size, info.sha256.as_str()), (file.size, file.sha256.as_str()), "Stat knows the digest");
    assert_eq!(code(query(raw, id).await), Code::NotFound, "the commit ends the session");
    assert!(!server.staging().join(id).exists(), "the session's directory is removed");
}
