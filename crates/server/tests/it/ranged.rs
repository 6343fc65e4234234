//! Ranged upload sessions at the protocol level, with the raw stub: tiny
//! ranges sent out of order and at once, conflicts between them, commits
//! with gaps, wrong digests, malformed range streams, mixing with ordinary
//! sessions, abort, the range limit, restarts, idle streams, expiry,
//! create-only and the quota.
//! The client library's `upload_parallel` is `ranged_client.rs`.

use std::ops::Range;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, UNIX_EPOCH};

use ferry_client::Code;
use ferry_proto::v1::ferry_client::FerryClient;
use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{
    AbortUploadRequest, ByteRange, Chunk, CommitUploadRequest, CreateUploadRequest, FileInfo, QueryUploadRequest,
    QueryUploadResponse, StatRequest, UploadFinish, UploadHeader, UploadRequest, UploadSessionRequest,
    UploadSessionResponse, UploadSessionStart, WriteMode, upload_request,
};
use ferry_server::{Limits, ServerOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::harness::{TestServer, random_bytes, sha256_hex, upload_bytes};

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

// ---------------------------------------------------------------------------

/// Three ranges (the last ending on an odd byte) written by three streams
/// open at once, each half sent before any is closed, closed out of order;
/// then CommitUpload publishes the file with the declared mtime and mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_from_concurrent_streams_out_of_order_make_the_file() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let size = 300 * KIB + 7;
    let data = random_bytes(size as usize, 901);
    let mtime = prost_types::Timestamp { seconds: 1_600_000_000, nanos: 123_456_789 };
    let declared = UploadHeader { mtime: Some(mtime), permissions: Some(0o640), ..header("dir/out.bin", Some(size)) };
    let id = create(&mut raw, declared, true).await.expect("create");
    let fresh = query(&mut raw, &id).await.expect("query");
    assert_eq!((fresh.path.as_str(), fresh.size, fresh.ranged), ("dir/out.bin", Some(size), true));
    assert_eq!((fresh.committed_offset, fresh.committed_ranges.len()), (0, 0));

    let (a, b, c) = (0..100 * KIB, 100 * KIB..200 * KIB, 200 * KIB..size);
    // Each on a connection of its own.
    let (mut conns, mut streams) = (Vec::new(), Vec::new());
    for range in [&c, &a, &b] {
        conns.push(server.raw().await);
        let conn = conns.last_mut().expect("a connection");
        streams.push(RangeStream::open(conn, &id, range.start, Some(range.end - range.start)).await.expect("open"));
    }
    let [sc, sa, sb] = <[RangeStream; 3]>::try_from(streams).ok().expect("three streams");
    for (stream, range) in [(&sc, &c), (&sa, &a), (&sb, &b)] {
        let half = range.start + (range.end - range.start) / 2;
        assert!(stream.send(part(&data, range.start..half)).await);
    }
    for (stream, range) in [(&sb, &b), (&sc, &c), (&sa, &a)] {
        let half = range.start + (range.end - range.start) / 2;
        assert!(stream.send(part(&data, half..range.end)).await);
    }
    assert!(committed(&mut raw, &id).await.is_empty(), "nothing is committed before a range is closed");

    assert_eq!(sb.close().await.expect("b").offset, b.start);
    let state = query(&mut raw, &id).await.expect("query");
    assert_eq!(committed(&mut raw, &id).await, [(b.start, b.end)]);
    assert_eq!(state.committed_offset, 0, "no range starts at 0 yet");
    sc.close().await.expect("c");
    assert_eq!(committed(&mut raw, &id).await, [(b.start, size)], "b and c merge");
    assert_eq!(query(&mut raw, &id).await.expect("query").committed_offset, 0);
    sa.close().await.expect("a");
    assert_eq!(committed(&mut raw, &id).await, [(0, size)]);
    assert_eq!(query(&mut raw, &id).await.expect("query").committed_offset, size);
    assert!(!server.root().join("dir/out.bin").exists(), "nothing is visible before the commit");

    let file = commit(&mut raw, &id, &sha256_hex(&data)).await.expect("commit");
    assert_eq!((file.mtime, file.permissions), (Some(mtime), 0o640));
    check_published(&server, &mut raw, &id, "dir/out.bin", &data, &file).await;
    assert!(server.staging_drains().await, "staging: {:?}", server.snapshot());
    let meta = std::fs::metadata(server.root().join("dir/out.bin")).expect("metadata");
    assert_eq!(meta.modified().expect("mtime"), UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789));
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let again = commit(&mut raw, &id, "").await.expect_err("a second commit");
    assert_eq!(again.code(), Code::NotFound);
}

/// A range overlapping a committed one, or one a live stream writes, is
/// ABORTED; a neighbour that only touches it is not. Once the live writer
/// is cancelled, its range is free, and what it wrote is written over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_ranges_are_aborted_until_the_writer_lets_go() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(64 * KIB as usize, 902);
    let id = create_ranged(&mut raw, "overlap.bin", data.len() as u64).await;
    send_range(&mut raw, &id, &data, 0..16 * KIB).await.expect("the first range");

    for overlapping in [8 * KIB..24 * KIB, 0..1, 16 * KIB - 1..16 * KIB + 1, 0..64 * KIB] {
        let status =
            RangeStream::open(&mut raw, &id, overlapping.start, Some(overlapping.end - overlapping.start)).await;
        assert_eq!(code(status), Code::Aborted, "{overlapping:?} overlaps the committed 0..16K");
    }
    let live = RangeStream::open(&mut raw, &id, 32 * KIB, Some(16 * KIB)).await.expect("a live writer");
    assert!(live.send(&random_bytes(8 * KIB as usize, 9)).await, "the live writer sends other bytes");
    for overlapping in [40 * KIB..56 * KIB, 24 * KIB..32 * KIB + 1, 47 * KIB..48 * KIB, 32 * KIB..48 * KIB] {
        let status =
            RangeStream::open(&mut raw, &id, overlapping.start, Some(overlapping.end - overlapping.start)).await;
        assert_eq!(code(status), Code::Aborted, "{overlapping:?} overlaps the live 32K..48K");
    }
    // Neighbours on both sides of the live range.
    send_range(&mut raw, &id, &data, 16 * KIB..32 * KIB).await.expect("touching on the left");
    send_range(&mut raw, &id, &data, 48 * KIB..64 * KIB).await.expect("touching on the right");
    assert_eq!(committed(&mut raw, &id).await, [(0, 32 * KIB), (48 * KIB, 64 * KIB)]);
    assert_eq!(code(commit(&mut raw, &id, "").await), Code::Aborted, "a commit while a range is being written");

    drop(live); // the client cancels
    let again = open_when_free(&mut raw, &id, 32 * KIB..48 * KIB).await;
    assert!(again.send(part(&data, 32 * KIB..48 * KIB)).await);
    again.close().await.expect("the freed range");
    assert_eq!(committed(&mut raw, &id).await, [(0, 64 * KIB)]);
    let file = commit(&mut raw, &id, &sha256_hex(&data)).await.expect("commit");
    check_published(&server, &mut raw, &id, "overlap.bin", &data, &file).await;
}

/// A commit with bytes missing is FAILED_PRECONDITION and keeps the
/// session; while a range stream is open it is ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_gaps_keeps_the_session_and_one_during_a_write_is_aborted() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let size = 50 * KIB + 3;
    let data = random_bytes(size as usize, 903);
    let id = create_ranged(&mut raw, "gaps.bin", size).await;
    let sha256 = sha256_hex(&data);

    assert_eq!(code(commit(&mut raw, &id, &sha256).await), Code::FailedPrecondition, "nothing sent");
    send_range(&mut raw, &id, &data, 10 * KIB..20 * KIB).await.expect("a middle range");
    send_range(&mut raw, &id, &data, 30 * KIB..size).await.expect("the tail");
    for missing in [0..10 * KIB, 20 * KIB..30 * KIB] {
        assert_eq!(code(commit(&mut raw, &id, &sha256).await), Code::FailedPrecondition, "{missing:?} missing");
        assert_eq!(committed(&mut raw, &id).await.last(), Some(&(30 * KIB, size)), "the session stays");
        send_range(&mut raw, &id, &data, missing).await.expect("fill the gap");
    }
    assert_eq!(committed(&mut raw, &id).await, [(0, size)]);

    // Covered, but a (needless) range stream is still open: not while it writes.
    let other = create_ranged(&mut raw, "gaps2.bin", size).await;
    send_range(&mut raw, &other, &data, 0..size - 1).await.expect("all but the last byte");
    let last = RangeStream::open(&mut raw, &other, size - 1, Some(1)).await.expect("the last byte");
    let status = commit(&mut raw, &other, &sha256).await.expect_err("a commit while a range is written");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(last.send(part(&data, size - 1..size)).await);
    last.close().await.expect("the last byte is committed after the refused commit");
    let file = commit(&mut raw, &other, &sha256).await.expect("commit");
    check_published(&server, &mut raw, &other, "gaps2.bin", &data, &file).await;

    assert!(!server.root().join("gaps.bin").exists());
    let file = commit(&mut raw, &id, &sha256).await.expect("commit once covered");
    check_published(&server, &mut raw, &id, "gaps.bin", &data, &file).await;
    assert!(server.staging_drains().await, "staging: {:?}", server.snapshot());
}

/// A digest that does not match the data, given at commit or declared at
/// creation, ends the session with nothing published. A malformed one is
/// refused before anything is checked, and the session stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_at_commit_discards_the_session() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(40 * KIB as usize + 1, 904);
    let (right, wrong) = (sha256_hex(&data), sha256_hex(b"other bytes"));
    let size = Some(data.len() as u64);
    let cases = [
        ("given.bin", String::new(), wrong.clone()),
        ("declared.bin", wrong.clone(), String::new()),
        ("both.bin", right.clone(), wrong.clone()),
        ("disagree.bin", wrong.clone(), right.clone()),
    ];
    for (path, declared, given) in cases {
        let id = create(&mut raw, UploadHeader { sha256: declared, ..header(path, size) }, true).await.expect(path);
        send_range(&mut raw, &id, &data, 0..data.len() as u64).await.expect("the whole file");
        let status = commit(&mut raw, &id, &given).await.expect_err(path);
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(!server.root().join(path).exists(), "{path}: nothing is published");
        assert_eq!(code(query(&mut raw, &id).await), Code::NotFound, "{path}: the session is over");
        assert!(server.staging_drains().await, "{path}: staging {:?}", server.snapshot());
    }

    let id =
        create(&mut raw, UploadHeader { sha256: right.clone(), ..header("ok.bin", size) }, true).await.expect("ok");
    send_range(&mut raw, &id, &data, 0..data.len() as u64).await.expect("the whole file");
    for malformed in ["xyz", &right[1..], &"g".repeat(64)] {
        let status = commit(&mut raw, &id, malformed).await.expect_err(malformed);
        assert_eq!(status.code(), Code::InvalidArgument, "{malformed}: {status:?}");
        assert_eq!(committed(&mut raw, &id).await, [(0, data.len() as u64)], "a malformed digest keeps the session");
    }
    assert_eq!(code(commit(&mut raw, &"0".repeat(32), "").await), Code::NotFound, "an unknown id");
    assert_eq!(code(commit(&mut raw, "../../etc", "").await), Code::InvalidArgument, "a malformed id");
    // The declared digest alone is enough.
    let file = commit(&mut raw, &id, "").await.expect("commit with the declared digest");
    check_published(&server, &mut raw, &id, "ok.bin", &data, &file).await;
}

/// Range streams that break the rules fail and commit nothing of their
/// range, which stays free; the session is not poisoned by their bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_range_streams_commit_nothing() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let status = create(&mut raw, header("nosize.bin", None), true).await.expect_err("ranged without a size");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(server.staging_drains().await, "nothing staged for a refused creation");

    let size = 32 * KIB + 5;
    let data = random_bytes(size as usize, 905);
    let junk = random_bytes(size as usize + 16 * KIB as usize, 906);
    let id = create_ranged(&mut raw, "strict.bin", size).await;
    let r = 0..16 * KIB;
    let refused_starts = [
        (0, 0, Code::InvalidArgument),
        (size - 4, 5, Code::OutOfRange),
        (size, 1, Code::OutOfRange),
        (u64::MAX - 1, 4, Code::OutOfRange),
    ];
    for (offset, length, expect) in refused_starts {
        let status = RangeStream::open(&mut raw, &id, offset, Some(length)).await;
        assert_eq!(code(status), expect, "offset {offset}, length {length}");
    }

    // Short: half-closed after 10 KiB of 16. (A failed range is freed as its
    // stream ends, which the client may see a moment before: hence
    // `open_when_free` below.)
    let short = RangeStream::open(&mut raw, &id, r.start, Some(16 * KIB)).await.expect("open");
    assert!(short.send(&junk[..10 * KIB as usize]).await);
    assert_eq!(code(short.close().await), Code::InvalidArgument, "a range cut short");
    // Long: 20 KiB into 16.
    let long = open_when_free(&mut raw, &id, r.clone()).await;
    let _ = long.send(&junk[..20 * KIB as usize]).await; // the server may stop listening
    assert_eq!(code(long.close().await), Code::InvalidArgument, "a range overrun");
    // A chunk failing its CRC32C.
    let corrupt = open_when_free(&mut raw, &id, r.clone()).await;
    corrupt.push(chunk(&junk[..8 * KIB as usize], Some(crc32c::crc32c(b"other bytes")))).await;
    let status = corrupt.outcome().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("CRC32C"), "{status:?}");
    // A finish with a digest (it belongs to CommitUpload), even the right one.
    let digest = open_when_free(&mut raw, &id, r.clone()).await;
    assert!(digest.send(part(&data, r.clone())).await);
    digest.push(message(Kind::Finish(UploadFinish { sha256: sha256_hex(part(&data, r.clone())) }))).await;
    assert_eq!(code(digest.close().await), Code::InvalidArgument, "a finish with a digest");
    // Data after an empty finish; a second start.
    let after = open_when_free(&mut raw, &id, r.clone()).await;
    assert!(after.send(part(&data, r.clone())).await);
    after.push(message(Kind::Finish(UploadFinish::default()))).await;
    after.push(chunk(b"more", None)).await;
    assert_eq!(code(after.close().await), Code::InvalidArgument, "data after the finish");
    let twice = open_when_free(&mut raw, &id, r.clone()).await;
    let start = UploadSessionStart { upload_id: id.clone(), offset: r.start, length: Some(16 * KIB) };
    twice.push(message(Kind::Start(start))).await;
    assert_eq!(code(twice.close().await), Code::InvalidArgument, "a second start");
    assert!(committed(&mut raw, &id).await.is_empty(), "none of them committed anything");

    // The range is free; an empty finish (no digest) is a valid end.
    let good = open_when_free(&mut raw, &id, r.clone()).await;
    assert!(good.send(part(&data, r.clone())).await);
    good.push(message(Kind::Finish(UploadFinish::default()))).await;
    good.close().await.expect("a finish without a digest ends the range");
    send_range(&mut raw, &id, &data, r.end..size).await.expect("the rest");
    let file = commit(&mut raw, &id, &sha256_hex(&data)).await.expect("commit");
    check_published(&server, &mut raw, &id, "strict.bin", &data, &file).await;
}

/// An ordinary session takes no range streams and no CommitUpload; a ranged
/// one takes no ordinary stream (neither way in), and such a refusal does
/// not preempt its live range writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_and_ranged_sessions_do_not_mix() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(20 * KIB as usize, 907);
    let size = data.len() as u64;

    let ordinary = create(&mut raw, header("ordinary.bin", Some(size)), false).await.expect("create");
    let state = query(&mut raw, &ordinary).await.expect("query");
    assert!(!state.ranged && state.committed_ranges.is_empty(), "{state:?}");
    assert_eq!(code(RangeStream::open(&mut raw, &ordinary, 0, Some(size)).await), Code::FailedPrecondition);
    assert_eq!(code(commit(&mut raw, &ordinary, "").await), Code::FailedPrecondition);
    let stream = RangeStream::open(&mut raw, &ordinary, 0, None).await.expect("the ordinary way still works");
    assert!(stream.send(&data).await);
    stream.push(message(Kind::Finish(UploadFinish { sha256: sha256_hex(&data) }))).await;
    drop(stream.tx);
    let mut replies = stream.replies;
    let mut stored = None;
    while let Some(reply) = replies.message().await.expect("the ordinary upload") {
        if let Some(Reply::File(file)) = reply.kind {
            stored = Some(file);
        }
    }
    assert_eq!(stored.expect("the stored file").sha256, sha256_hex(&data));

    let ranged = create_ranged(&mut raw, "ranged.bin", size).await;
    let live = RangeStream::open(&mut raw, &ranged, 0, Some(size)).await.expect("a live range writer");
    assert!(live.send(part(&data, 0..size / 2)).await);
    let status = RangeStream::open(&mut raw, &ranged, 0, None).await.map(drop);
    assert_eq!(code(status), Code::FailedPrecondition, "UploadSession without a length");
    let resume = UploadHeader { upload_id: ranged.clone(), offset: 0, ..Default::default() };
    let messages = vec![UploadRequest { kind: Some(upload_request::Kind::Header(resume)) }];
    let status = raw.upload(tokio_stream::iter(messages)).await;
    assert_eq!(code(status), Code::FailedPrecondition, "Upload continuing a ranged session");
    assert!(live.send(part(&data, size / 2..size)).await, "the range writer was not preempted");
    live.close().await.expect("the range writer completes");
    let file = commit(&mut raw, &ranged, &sha256_hex(&data)).await.expect("commit");
    check_published(&server, &mut raw, &ranged, "ranged.bin", &data, &file).await;
}

/// Refusing a range stream or a commit on an ordinary session does not wait
/// for the stream that is writing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_calls_on_an_ordinary_session_being_written_are_refused_at_once() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(20 * KIB as usize, 908);
    let ordinary = create(&mut raw, header("busy.bin", Some(data.len() as u64)), false).await.expect("create");
    let writer = RangeStream::open(&mut raw, &ordinary, 0, None).await.expect("an ordinary stream");
    assert!(writer.send(&data[..4 * KIB as usize]).await);

    let mut other = server.raw().await;
    let range = tokio::time::timeout(Duration::from_secs(3), RangeStream::open(&mut other, &ordinary, 0, Some(8)))
        .await
        .map(code);
    let committing = tokio::time::timeout(Duration::from_secs(3), commit(&mut other, &ordinary, "")).await.map(code);
    // (Err: no answer within 3 s.)
    assert_eq!(
        (range, committing),
        (Ok(Code::FailedPrecondition), Ok(Code::FailedPrecondition)),
        "a range stream and CommitUpload on an ordinary session that a stream is writing"
    );
    drop(writer);
}

/// AbortUpload ends the live range streams (ABORTED) and removes the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_ends_live_range_streams() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(64 * KIB as usize, 909);
    let id = create_ranged(&mut raw, "aborted.bin", data.len() as u64).await;
    send_range(&mut raw, &id, &data, 0..16 * KIB).await.expect("a committed range");
    let first = RangeStream::open(&mut raw, &id, 16 * KIB, Some(16 * KIB)).await.expect("open");
    let mut conn = server.raw().await;
    let second = RangeStream::open(&mut conn, &id, 40 * KIB, Some(8 * KIB)).await.expect("open");
    assert!(first.send(part(&data, 16 * KIB..24 * KIB)).await);
    assert!(second.send(part(&data, 40 * KIB..44 * KIB)).await);

    tokio::time::timeout(PROMPTLY, abort(&mut raw, &id)).await.expect("the abort does not wait").expect("abort");
    for stream in [first, second] {
        let status = stream.outcome().await;
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
    }
    assert_eq!(code(query(&mut raw, &id).await), Code::NotFound);
    assert_eq!(code(RangeStream::open(&mut raw, &id, 48 * KIB, Some(KIB)).await), Code::NotFound);
    assert_eq!(code(commit(&mut raw, &id, "").await), Code::NotFound);
    assert!(server.staging_drains().await, "staging: {:?}", server.snapshot());
    assert!(!server.root().join("aborted.bin").exists());
}

/// At most 32 separate ranges, committed (merged with the new one) and being
/// written together; a range that joins others is granted even at the limit. The path is as long
/// as a path may be, and made of quotes (twice as long in the journal's JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_32_separate_ranges_are_refused() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(80 * KIB as usize, 910);
    let segment = "\"".repeat(ferry_store::MAX_SEGMENT_LEN);
    let path = [segment.as_str(); 4].join("/") + "/x";
    let path = &path[path.len() - ferry_store::MAX_PATH_LEN..];
    let id = create_ranged(&mut raw, path, data.len() as u64).await;
    // 31 ranges of 1 KiB, one every other KiB: 0..1K, 2K..3K, …, 60K..61K.
    for i in 0..31 {
        send_range(&mut raw, &id, &data, 2 * i * KIB..(2 * i + 1) * KIB).await.expect("a separate range");
    }
    let live = RangeStream::open(&mut raw, &id, 62 * KIB, Some(KIB)).await.expect("the 32nd, being written");
    let status = RangeStream::open(&mut raw, &id, 64 * KIB, Some(KIB)).await.map(drop);
    assert_eq!(code(status), Code::FailedPrecondition, "a 33rd, counting the one being written");
    assert!(live.send(part(&data, 62 * KIB..63 * KIB)).await);
    live.close().await.expect("the 32nd");
    assert_eq!(committed(&mut raw, &id).await.len(), 32);
    let status = RangeStream::open(&mut raw, &id, 64 * KIB, Some(KIB)).await.map(drop);
    assert_eq!(code(status), Code::FailedPrecondition, "a 33rd committed");
    assert_eq!(code(commit(&mut raw, &id, "").await), Code::FailedPrecondition, "gaps");

    // A range joining two committed ones is granted at the limit.
    send_range(&mut raw, &id, &data, KIB..2 * KIB).await.expect("joining the first two");
    assert_eq!(committed(&mut raw, &id).await.len(), 31);
    send_range(&mut raw, &id, &data, 70 * KIB..71 * KIB).await.expect("now a 32nd fits");
    // Fill every gap: the session works on, and the file is whole.
    let (mut gaps, mut at) = (Vec::new(), 0);
    for (start, end) in committed(&mut raw, &id).await {
        gaps.push(at..start);
        at = end;
    }
    gaps.push(at..data.len() as u64);
    for gap in gaps.into_iter().filter(|gap| !gap.is_empty()) {
        send_range(&mut raw, &id, &data, gap).await.expect("a gap");
    }
    assert_eq!(committed(&mut raw, &id).await, [(0, data.len() as u64)]);
    let file = commit(&mut raw, &id, &sha256_hex(&data)).await.expect("commit");
    check_published(&server, &mut raw, &id, path, &data, &file).await;
    assert!(server.staging_drains().await, "staging: {:?}", server.snapshot());
}

/// A restart keeps a ranged session with its committed ranges (and its
/// preallocated file whole); a range cut off by it commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_ranges_survive_a_restart() {
    let mut server = TestServer::start().await;
    let size = 200 * KIB + 5;
    let data = random_bytes(size as usize, 911);
    let id = {
        let mut raw = server.raw().await;
        let id = create_ranged(&mut raw, "restart.bin", size).await;
        send_range(&mut raw, &id, &data, 100 * KIB..size).await.expect("the second half");
        send_range(&mut raw, &id, &data, 0..50 * KIB).await.expect("the first quarter");
        let cut = RangeStream::open(&mut raw, &id, 50 * KIB, Some(50 * KIB)).await.expect("open");
        assert!(cut.send(&random_bytes(20 * KIB as usize, 5)).await);
        drop(cut);
        id
    };
    server.restart().await;
    let staged = server.staging().join(&id).join("data");
    assert_eq!(std::fs::metadata(&staged).expect("staged data").len(), size, "recovery keeps the whole file");

    let mut raw = server.raw().await;
    let state = query(&mut raw, &id).await.expect("the session survives");
    assert_eq!((state.path.as_str(), state.size, state.committed_offset), ("restart.bin", Some(size), 50 * KIB));
    assert_eq!(committed(&mut raw, &id).await, [(0, 50 * KIB), (100 * KIB, size)]);
    assert_eq!(code(commit(&mut raw, &id, "").await), Code::FailedPrecondition);
    send_range(&mut raw, &id, &data, 50 * KIB..100 * KIB).await.expect("the range cut off by the restart");
    let file = commit(&mut raw, &id, &sha256_hex(&data)).await.expect("commit after the restart");
    check_published(&server, &mut raw, &id, "restart.bin", &data, &file).await;
    assert!(server.staging_drains().await, "staging: {:?}", server.snapshot());
}

/// A silent range stream is ended (DEADLINE_EXCEEDED) and its range freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_range_stream_is_ended_and_its_range_freed() {
    let options = ServerOptions { stream_idle_timeout: Duration::from_millis(300), ..ServerOptions::default() };
    let server = TestServer::start_with(options).await;
    let mut raw = server.raw().await;
    let data = random_bytes(24 * KIB as usize, 912);
    let id = create_ranged(&mut raw, "idle.bin", data.len() as u64).await;
    let silent = RangeStream::open(&mut raw, &id, 0, Some(data.len() as u64)).await.expect("open");
    assert!(silent.send(part(&data, 0..8 * KIB)).await);
    let tx = silent.tx.clone(); // open, but silent
    assert_eq!(silent.outcome().await.code(), Code::DeadlineExceeded);
    drop(tx);
    assert!(committed(&mut raw, &id).await.is_empty());
    let again = open_when_free(&mut raw, &id, 0..data.len() as u64).await;
    assert!(again.send(&data).await);
    again.close().await.expect("the range again");
    let file = commit(&mut raw, &id, &sha256_hex(&data)).await.expect("commit");
    check_published(&server, &mut raw, &id, "idle.bin", &data, &file).await;
}

/// Expiry discards an untouched ranged session, but not one a range stream
/// is writing, however long that takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_being_written_does_not_expire() {
    let options = ServerOptions { upload_ttl: Duration::from_millis(300), ..ServerOptions::default() };
    let server = TestServer::start_with(options).await;
    let mut raw = server.raw().await;
    let data = random_bytes(16 * KIB as usize, 913);
    let size = data.len() as u64;
    let idle = create_ranged(&mut raw, "abandoned.bin", size).await;
    let busy = create_ranged(&mut raw, "busy.bin", size).await;
    let writer = RangeStream::open(&mut raw, &busy, 0, Some(size)).await.expect("open");
    assert!(writer.send(part(&data, 0..KIB)).await);
    // The sweep runs every second: two of them at least.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(code(query(&mut raw, &idle).await), Code::NotFound, "the untouched session expired");
    assert!(writer.send(part(&data, KIB..size)).await);
    writer.close().await.expect("the range, after more than the TTL");
    let file = commit(&mut raw, &busy, &sha256_hex(&data)).await.expect("commit");
    check_published(&server, &mut raw, &busy, "busy.bin", &data, &file).await;
}

/// Create-only is checked at creation and again at the commit, which then
/// fails with ALREADY_EXISTS, touches nothing and keeps the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_fails_at_commit_if_the_file_appeared() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(30 * KIB as usize, 914);
    let create_only =
        |path: &str| UploadHeader { mode: WriteMode::CreateOnly as i32, ..header(path, Some(data.len() as u64)) };
    std::fs::write(server.root().join("taken.bin"), b"already here").expect("place a file");
    let status = create(&mut raw, create_only("taken.bin"), true).await.expect_err("the path exists");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    let id = create(&mut raw, create_only("late.bin"), true).await.expect("create");
    send_range(&mut raw, &id, &data, 0..data.len() as u64).await.expect("the whole file");
    std::fs::write(server.root().join("late.bin"), b"someone else's").expect("the file appears");
    let status = commit(&mut raw, &id, &sha256_hex(&data)).await.expect_err("the file appeared");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(std::fs::read(server.root().join("late.bin")).expect("theirs"), b"someone else's");
    assert_eq!(committed(&mut raw, &id).await, [(0, data.len() as u64)], "the session stays");

    std::fs::remove_file(server.root().join("late.bin")).expect("remove theirs");
    let file = commit(&mut raw, &id, &sha256_hex(&data)).await.expect("commit once the path is free");
    check_published(&server, &mut raw, &id, "late.bin", &data, &file).await;
}

/// The quota holds for ranged uploads too: a file staged as ranges while
/// nothing was used is not published past the quota once something else
/// has taken the room meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_holds_for_ranged_uploads() {
    let quota = 100 * KIB;
    let limits = Limits { quota_bytes: Some(quota), ..Limits::default() };
    let server = TestServer::start_with(ServerOptions { limits, ..ServerOptions::default() }).await;
    let mut raw = server.raw().await;
    let status = create(&mut raw, header("huge.bin", Some(quota + 1)), true).await.expect_err("over the quota");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let data = random_bytes(60 * KIB as usize, 915);
    let id = create_ranged(&mut raw, "ranged.bin", data.len() as u64).await;
    let staged = send_range(&mut raw, &id, &data, 0..data.len() as u64).await;
    let plain = upload_bytes(&server.client().await, "plain.bin", &random_bytes(60 * KIB as usize, 916)).await;
    let committing = commit(&mut raw, &id, &sha256_hex(&data)).await;
    let outcomes = [code(staged), plain.map_or_else(|e| e.code().expect("a status"), |_| Code::Ok), code(committing)];
    let published: u64 = ["ranged.bin", "plain.bin"]
        .iter()
        .filter_map(|name| std::fs::metadata(server.root().join(name)).ok())
        .map(|meta| meta.len())
        .sum();
    assert!(
        published <= quota,
        "{published} bytes published under a quota of {quota} (range, plain upload, commit: {outcomes:?})"
    );
    assert!(outcomes.iter().all(|c| matches!(c, Code::Ok | Code::ResourceExhausted)), "{outcomes:?}");
}
