//! Resumable uploads: sessions that survive dropped streams and restarts,
//! offsets that only count durable bytes, takeover of a stale stream, abort,
//! idle timeout, acknowledgements, and start-up recovery.

use std::time::Duration;

use ferry_client::Code;
use ferry_proto::v1::ferry_client::FerryClient;
use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{
    AbortUploadRequest, Chunk, CreateUploadRequest, FileInfo, QueryUploadRequest, UploadFinish, UploadHeader,
    UploadRequest, UploadSessionRequest, UploadSessionResponse, UploadSessionStart, upload_request,
};
use ferry_server::ServerOptions;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::harness::{TestServer, download_bytes, random_bytes, sha256_hex};

const MIB: usize = 1024 * 1024;
const SYNC_INTERVAL: usize = ferry_store::local::SYNC_INTERVAL as usize;

type Raw = FerryClient<Channel>;

async fn create(raw: &mut Raw, path: &str, size: usize) -> String {
    let header = UploadHeader { path: path.into(), size: Some(size as u64), ..Default::default() };
    raw.create_upload(CreateUploadRequest { header: Some(header), ranged: false })
        .await
        .expect("create")
        .into_inner()
        .upload_id
}

async fn committed(raw: &mut Raw, id: &str) -> Result<u64, Status> {
    Ok(raw.query_upload(QueryUploadRequest { upload_id: id.into() }).await?.into_inner().committed_offset)
}

/// An open `UploadSession` stream: requests go in through `tx`.
struct Session {
    tx: mpsc::Sender<UploadSessionRequest>,
    replies: Streaming<UploadSessionResponse>,
}

impl Session {
    async fn open(raw: &mut Raw, id: &str, offset: u64) -> Result<Self, Status> {
        let (tx, rx) = mpsc::channel(8);
        let start = UploadSessionStart { upload_id: id.into(), offset, length: None };
        tx.send(UploadSessionRequest { kind: Some(Kind::Start(start)) }).await.expect("queue start");
        let replies = raw.upload_session(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, replies })
    }

    /// Sends `data` in 1 MiB chunks. False if the server stopped listening.
    async fn send(&self, data: &[u8]) -> bool {
        for chunk in data.chunks(MIB) {
            let crc32c = Some(crc32c::crc32c(chunk));
            let message =
                UploadSessionRequest { kind: Some(Kind::Chunk(Chunk { data: chunk.to_vec().into(), crc32c })) };
            if self.tx.send(message).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Reads acknowledgements, without sending anything, until one reaches
    /// `at_least`; returns them all.
    async fn acks_until(&mut self, at_least: u64) -> Vec<u64> {
        let mut acks = Vec::new();
        while acks.last().is_none_or(|&last| last < at_least) {
            match self.replies.message().await.expect("a reply").expect("the stream goes on").kind {
                Some(Reply::CommittedOffset(offset)) => acks.push(offset),
                other => panic!("expected an acknowledgement, got {other:?}"),
            }
        }
        acks
    }

    /// Sends finish and collects the replies: (acknowledged offsets, file).
    async fn finish(mut self, sha256: &str) -> Result<(Vec<u64>, FileInfo), Status> {
        let finish = UploadSessionRequest { kind: Some(Kind::Finish(UploadFinish { sha256: sha256.into() })) };
        let _ = self.tx.send(finish).await;
        drop(self.tx);
        let mut acks = Vec::new();
        while let Some(reply) = self.replies.message().await? {
            match reply.kind {
                Some(Reply::CommittedOffset(offset)) => acks.push(offset),
                Some(Reply::File(file)) => return Ok((acks, file)),
                other => panic!("unexpected reply {other:?}"),
            }
        }
        panic!("the session ended without the file")
    }

    /// Half-closes without finishing: the server keeps everything it received
    /// and answers ABORTED with the committed offset (returned).
    async fn end(self) -> u64 {
        let Session { tx, replies } = self;
        drop(tx);
        let status = Session { tx: mpsc::channel(1).0, replies }.outcome().await;
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        trailer_offset(&status).expect("the committed offset")
    }

    /// The status the server ends the stream with.
    async fn outcome(mut self) -> Status {
        loop {
            match self.replies.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    }
}

/// Resumes at the committed offset the server reports, as a client would:
/// query, open, and on ABORTED retry at the offset from its trailer.
async fn resume(raw: &mut Raw, id: &str) -> (Session, u64) {
    let mut offset = committed(raw, id).await.expect("query");
    for _ in 0..10 {
        match Session::open(raw, id, offset).await {
            Ok(session) => return (session, offset),
            Err(status) if status.code() == Code::Aborted => {
                offset = trailer_offset(&status).expect("ABORTED carries the committed offset");
            }
            Err(status) => panic!("resume failed: {status:?}"),
        }
    }
    panic!("could not resume");
}

/// The committed offset an ABORTED status carries (the client's public helper,
/// which must agree with the server's trailer).
fn trailer_offset(status: &Status) -> Option<u64> {
    assert_eq!(ferry_server::status::COMMITTED_OFFSET_TRAILER, "ferry-committed-offset");
    ferry_client::committed_offset(status)
}

/// Waits (bounded) until the committed offset reaches `at_least`.
async fn wait_committed(raw: &mut Raw, id: &str, at_least: u64) -> u64 {
    for _ in 0..400 {
        let now = committed(raw, id).await.expect("query");
        if now >= at_least {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("committed offset never reached {at_least}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_at_the_committed_offset() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(80 * MIB + 123, 21);
    let id = create(&mut raw, "resumed.bin", data.len()).await;
    assert_eq!(committed(&mut raw, &id).await.expect("query"), 0);

    let first = Session::open(&mut raw, &id, 0).await.expect("open");
    assert!(first.send(&data[..50 * MIB]).await);
    // Everything sent so far is received and synced when the stream dies.
    let synced = wait_committed(&mut raw, &id, SYNC_INTERVAL as u64).await;
    drop(first);

    let (second, offset) = resume(&mut raw, &id).await;
    assert!(offset >= synced && offset <= 50 * MIB as u64, "resumed at {offset}");
    assert!(!server.root().join("resumed.bin").exists(), "nothing visible before commit");
    assert!(second.send(&data[offset as usize..]).await);
    let (_, file) = second.finish(&sha256_hex(&data)).await.expect("finish");
    assert_eq!(file.sha256, sha256_hex(&data));
    assert!(download_bytes(&server.client().await, "resumed.bin").await.expect("download") == data);
    let gone = committed(&mut raw, &id).await.expect_err("the session ends with the commit");
    assert_eq!(gone.code(), Code::NotFound);
    assert!(server.staging_drains().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_offset_is_aborted_with_the_committed_offset() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let id = create(&mut raw, "o.bin", 10).await;
    let status = Session::open(&mut raw, &id, 5).await.err().expect("offset 5 of an empty upload");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(trailer_offset(&status), Some(0));

    let unknown = Session::open(&mut raw, &"0".repeat(32), 0).await.err().expect("unknown id");
    assert_eq!(unknown.code(), Code::NotFound);
    let malformed = Session::open(&mut raw, "../../etc", 0).await.err().expect("malformed id");
    assert_eq!(malformed.code(), Code::InvalidArgument);
}

/// A client that noticed the disconnect first is not locked out by the
/// server's stale stream: the resume takes over, the stale stream is ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_preempts_a_stale_stream() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(6 * MIB, 5);
    let id = create(&mut raw, "p.bin", data.len()).await;

    let stale = Session::open(&mut raw, &id, 0).await.expect("open");
    assert!(stale.send(&data[..2 * MIB]).await);
    let (fresh, offset) = resume(&mut server.raw().await, &id).await;
    assert_eq!(stale.outcome().await.code(), Code::Aborted, "the stale stream is preempted");

    assert!(fresh.send(&data[offset as usize..]).await);
    let (_, file) = fresh.finish(&sha256_hex(&data)).await.expect("finish");
    assert_eq!(file.size, data.len() as u64);
}

/// A corrupted chunk is refused on arrival and never reaches the session,
/// which keeps everything before it and completes after a resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_failing_its_crc_is_refused_without_poisoning_the_session() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(3 * MIB, 32);
    let id = create(&mut raw, "crc.bin", data.len()).await;
    let session = Session::open(&mut raw, &id, 0).await.expect("open");
    assert!(session.send(&data[..MIB]).await);
    let corrupt = Chunk { data: data[MIB..2 * MIB].to_vec().into(), crc32c: Some(crc32c::crc32c(b"other bytes")) };
    session.tx.send(UploadSessionRequest { kind: Some(Kind::Chunk(corrupt)) }).await.expect("queue the bad chunk");
    let status = session.outcome().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("CRC32C"), "{status:?}");
    assert_eq!(committed(&mut raw, &id).await.expect("query"), MIB as u64, "everything before the bad chunk is kept");

    let (resumed, offset) = resume(&mut raw, &id).await;
    assert!(resumed.send(&data[offset as usize..]).await);
    let (_, file) = resumed.finish(&sha256_hex(&data)).await.expect("finish");
    assert_eq!(file.sha256, sha256_hex(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_discards_the_session() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let id = create(&mut raw, "a.bin", 10).await;
    raw.abort_upload(AbortUploadRequest { upload_id: id.clone() }).await.expect("abort");
    assert_eq!(committed(&mut raw, &id).await.expect_err("aborted").code(), Code::NotFound);
    let again = raw.abort_upload(AbortUploadRequest { upload_id: id }).await.expect_err("twice");
    assert_eq!(again.code(), Code::NotFound);
    assert!(server.staging_drains().await);
    assert!(!server.root().join("a.bin").exists());
}

/// A silent stream is ended (no whole-call deadline), keeping what it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_ended_and_keeps_its_bytes() {
    let options = ServerOptions { stream_idle_timeout: Duration::from_millis(300), ..ServerOptions::default() };
    let server = TestServer::start_with(options).await;
    let mut raw = server.raw().await;
    let id = create(&mut raw, "idle.bin", 10 * MIB).await;
    let session = Session::open(&mut raw, &id, 0).await.expect("open");
    assert!(session.send(&random_bytes(3 * MIB, 1)).await);
    let tx = session.tx.clone(); // keep the request stream open but silent
    assert_eq!(session.outcome().await.code(), Code::DeadlineExceeded);
    assert_eq!(committed(&mut raw, &id).await.expect("query"), 3 * MIB as u64);
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_acknowledges_durable_offsets_as_data_flows() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(100 * MIB, 9);
    let id = create(&mut raw, "acked.bin", data.len()).await;
    let mut session = Session::open(&mut raw, &id, 0).await.expect("open");
    assert!(session.send(&data).await);
    // Nothing more is sent: each durable step is told as its sync finishes,
    // not at the next chunk (a client may wait for it to free its buffer).
    let last_step = (data.len() as u64 / SYNC_INTERVAL as u64) * SYNC_INTERVAL as u64;
    let mut acks = tokio::time::timeout(Duration::from_secs(60), session.acks_until(last_step))
        .await
        .expect("acknowledgements up to the last 32 MiB step, without another chunk");
    let (more, file) = session.finish(&sha256_hex(&data)).await.expect("finish");
    acks.extend(more);
    assert!(acks.len() >= 2, "expected acknowledgements at 32 MiB steps, got {acks:?}");
    assert!(acks.windows(2).all(|w| w[0] < w[1]), "acknowledged offsets only grow: {acks:?}");
    assert!(acks.iter().all(|&a| a % SYNC_INTERVAL as u64 == 0 && a <= data.len() as u64), "{acks:?}");
    assert_eq!(file.sha256, sha256_hex(&data));
}

/// Sessions live on disk: a restart keeps them, and start-up recovery cuts
/// bytes that were written but never journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_and_recovery_truncates_to_the_journal() {
    let mut server = TestServer::start().await;
    let data = random_bytes(40 * MIB + 7, 77);
    let id = {
        let mut raw = server.raw().await;
        let id = create(&mut raw, "restart.bin", data.len()).await;
        let session = Session::open(&mut raw, &id, 0).await.expect("open");
        assert!(session.send(&data[..40 * MIB]).await);
        assert_eq!(session.end().await, 40 * MIB as u64, "everything received is kept");
        id
    };
    // Debris of a crash: one session never journaled, and bytes past the
    // journaled offset of ours.
    let uploads = server.staging();
    std::fs::create_dir(uploads.join("f".repeat(32))).expect("debris session");
    std::fs::write(uploads.join("f".repeat(32)).join("data"), b"half-created").expect("debris data");
    let ours = uploads.join(&id).join("data");
    let mut file = std::fs::OpenOptions::new().append(true).open(&ours).expect("open data");
    std::io::Write::write_all(&mut file, b"written but never journaled").expect("append");
    drop(file);

    server.restart().await;
    assert!(!uploads.join("f".repeat(32)).exists(), "an unjournaled session is removed at start-up");
    assert_eq!(std::fs::metadata(&ours).expect("data").len(), 40 * MIB as u64, "truncated to the journal");

    let mut raw = server.raw().await;
    let (session, offset) = resume(&mut raw, &id).await;
    assert_eq!(offset, 40 * MIB as u64);
    assert!(session.send(&data[offset as usize..]).await);
    let (_, file) = session.finish(&sha256_hex(&data)).await.expect("finish after restart");
    assert_eq!(file.sha256, sha256_hex(&data), "the journaled hash state continues the digest");
}

/// The plain client-streaming Upload can continue a session too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming_upload_continues_a_session() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let data = random_bytes(3 * MIB, 4);
    let id = create(&mut raw, "cs.bin", data.len()).await;
    let first = Session::open(&mut raw, &id, 0).await.expect("open");
    assert!(first.send(&data[..MIB]).await);
    let offset = first.end().await;
    assert_eq!(offset, MIB as u64);

    let continue_header = |extra_path: &str| UploadRequest {
        kind: Some(upload_request::Kind::Header(UploadHeader {
            path: extra_path.into(),
            upload_id: id.clone(),
            offset,
            ..Default::default()
        })),
    };
    let chunk = |bytes: &[u8]| UploadRequest {
        kind: Some(upload_request::Kind::Chunk(Chunk { data: bytes.to_vec().into(), crc32c: None })),
    };
    let refused = raw.upload(tokio_stream::iter(vec![continue_header("other.bin")])).await.expect_err("path too");
    assert_eq!(refused.code(), Code::InvalidArgument);

    let messages = vec![continue_header(""), chunk(&data[offset as usize..])];
    let file = raw.upload(tokio_stream::iter(messages)).await.expect("continue").into_inner().file.expect("file");
    assert_eq!(file.sha256, sha256_hex(&data));
}
