//! Limits: each holds, a refusal is RESOURCE_EXHAUSTED (the transport's own
//! caps aside) and leaves nothing behind, and the server keeps serving
//! everyone else afterwards.

use std::time::Duration;

use ferry_client::{Client, Code, UploadOptions};
use ferry_proto::v1::ferry_client::FerryClient;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{Chunk, DownloadRequest, StatRequest, UploadFinish, UploadHeader, UploadRequest, UploadResponse};
use ferry_server::{Limits, ServerOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::harness::{TestServer, download_bytes, random_bytes, sha256_hex, upload_bytes};
use crate::metrics::{render, sample};

const MIB: usize = 1024 * 1024;

type Raw = FerryClient<Channel>;

fn with_limits(limits: Limits) -> ServerOptions {
    ServerOptions { limits, ..ServerOptions::default() }
}

/// The message of a final RESOURCE_EXHAUSTED error (a limit that waiting
/// does not lift: no retry advice); anything else fails the test.
#[track_caller]
fn exhausted<T: std::fmt::Debug>(result: Result<T, ferry_client::Error>, what: &str) -> String {
    let (message, retry) = refusal(result, what);
    assert_eq!(retry, None, "{what}: a final refusal carries no retry advice");
    message
}

/// The message of a RESOURCE_EXHAUSTED error that says when to retry (a
/// busy slot), whose `RetryInfo` must say half a second.
#[track_caller]
fn busy<T: std::fmt::Debug>(result: Result<T, ferry_client::Error>, what: &str) -> String {
    let (message, retry) = refusal(result, what);
    assert_eq!(retry, Some(std::time::Duration::from_millis(500)), "{what}: retry advice");
    message
}

#[track_caller]
fn refusal<T: std::fmt::Debug>(
    result: Result<T, ferry_client::Error>,
    what: &str,
) -> (String, Option<std::time::Duration>) {
    match result {
        Err(ferry_client::Error::Status(status)) if status.code() == Code::ResourceExhausted => {
            let retry = tonic_types::StatusExt::get_details_retry_info(&status).and_then(|info| info.retry_delay);
            (status.message().to_owned(), retry)
        }
        other => panic!("{what}: expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
}

/// An upload whose size is not declared (stdin-style): checked as it grows.
async fn upload_unsized(
    client: &Client,
    path: &str,
    data: &[u8],
) -> Result<ferry_client::RemoteFile, ferry_client::Error> {
    client.upload(path, std::io::Cursor::new(data.to_vec()), UploadOptions::default(), |_| {}).await
}

async fn create_upload(client: &Client, path: &str, size: u64) -> Result<String, ferry_client::Error> {
    client.create_upload(path, &UploadOptions { size: Some(size), ..Default::default() }).await
}

/// A refused upload left no file at `path` and nothing staged.
async fn nothing_left(server: &TestServer, client: &Client, path: &str) {
    let stat = client.stat(path).await;
    assert_eq!(stat.as_ref().err().and_then(|e| e.code()), Some(Code::NotFound), "{path} must not exist: {stat:?}");
    assert!(!server.root().join(path).exists(), "{path} must not be on disk");
    assert!(server.staging_drains().await, "a refused upload must leave nothing staged");
}

/// The server still serves: a fresh client uploads, downloads and deletes a
/// small file.
async fn still_serves(server: &TestServer, tag: &str) {
    let client = server.client().await;
    let path = format!("probe/{tag}.bin");
    let data = random_bytes(64 * 1024, tag.len() as u64);
    upload_bytes(&client, &path, &data).await.unwrap_or_else(|e| panic!("probe upload after {tag}: {e}"));
    let fetched = download_bytes(&client, &path).await.unwrap_or_else(|e| panic!("probe download after {tag}: {e}"));
    assert!(fetched == data, "probe after {tag}: downloaded bytes differ");
    client.delete(&path).await.unwrap_or_else(|e| panic!("probe delete after {tag}: {e}"));
}

/// Retries `attempt` (bounded, ~5 s) until it succeeds: slots are released
/// when the server notices a stream ended, which is asynchronous.
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ferry_client::Error>>,
{
    let mut last = None;
    for _ in 0..200 {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: still failing after ~5 s: {last:?}");
}

/// Waits (bounded) until `n` uploads are staged: each admitted upload has a
/// session directory, created after admission.
async fn staged(server: &TestServer, n: usize) -> usize {
    let count = || std::fs::read_dir(server.staging()).map(|d| d.count()).unwrap_or(0);
    for _ in 0..200 {
        if count() == n {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    count()
}

fn header(path: &str) -> UploadRequest {
    UploadRequest { kind: Some(Kind::Header(UploadHeader { path: path.to_owned(), ..Default::default() })) }
}

/// An upload stream held open: the header is sent, the rest waits on `tx`.
struct Held {
    tx: mpsc::Sender<UploadRequest>,
    call: JoinHandle<Result<tonic::Response<UploadResponse>, Status>>,
}

impl Held {
    fn open(raw: &Raw, path: &str) -> Self {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(header(path)).expect("queue the header");
        let mut raw = raw.clone();
        let call = tokio::spawn(async move { raw.upload(ReceiverStream::new(rx)).await });
        Self { tx, call }
    }

    /// Sends `data` and the finish message; the server's answer.
    async fn finish(self, data: &[u8]) -> Result<UploadResponse, Status> {
        let chunk = Chunk { data: data.to_vec().into(), crc32c: None };
        let finish = UploadFinish { sha256: sha256_hex(data) };
        // A send fails only if the server already answered: the call says why.
        let _ = self.tx.send(UploadRequest { kind: Some(Kind::Chunk(chunk)) }).await;
        let _ = self.tx.send(UploadRequest { kind: Some(Kind::Finish(finish)) }).await;
        drop(self.tx);
        tokio::time::timeout(Duration::from_secs(10), self.call)
            .await
            .expect("the upload must be answered")
            .expect("upload task")
            .map(tonic::Response::into_inner)
    }

    /// Cancels the call (the stream is reset).
    fn cancel(self) {
        self.call.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_file_size_holds_for_declared_and_growing_uploads() {
    let limit = MIB + 100; // not a multiple of the client's 1 MiB chunks
    let limits = Limits { max_file_size: Some(limit as u64), ..Limits::default() };
    let server = TestServer::start_with(with_limits(limits)).await;
    let client = server.client().await;
    let over = random_bytes(limit + 1, 1);
    let exact = random_bytes(limit, 2);

    // Declared over the limit: refused at the header.
    let message = exhausted(upload_bytes(&client, "over-declared.bin", &over).await, "declared size over the limit");
    assert!(message.contains(&limit.to_string()), "the message names the limit: {message}");
    nothing_left(&server, &client, "over-declared.bin").await;
    still_serves(&server, "declared").await;

    // The same for a resumable session, at CreateUpload.
    exhausted(create_upload(&client, "over-session.bin", limit as u64 + 1).await, "CreateUpload over the limit");
    nothing_left(&server, &client, "over-session.bin").await;
    still_serves(&server, "create-upload").await;

    // Unknown size: admitted, then refused when it grows past the limit.
    exhausted(upload_unsized(&client, "over-growing.bin", &over).await, "unknown size growing past the limit");
    nothing_left(&server, &client, "over-growing.bin").await;
    // In small chunks too: the refusal comes at the chunk that crosses.
    let small_chunks = ferry_client::ClientOptions { chunk_size: 64 * 1024, ..Default::default() };
    let small = server.client_with(small_chunks).await.expect("connect");
    exhausted(upload_unsized(&small, "over-growing-small.bin", &over).await, "small chunks growing past the limit");
    nothing_left(&server, &client, "over-growing-small.bin").await;
    still_serves(&server, "growing").await;

    // Exactly at the limit: accepted, declared or not, and by CreateUpload.
    let stored = upload_bytes(&client, "exact-declared.bin", &exact).await.expect("declared, exactly at the limit");
    assert_eq!(stored.size, limit as u64);
    let stored =
        upload_unsized(&client, "exact-growing.bin", &exact).await.expect("unknown size, exactly at the limit");
    assert_eq!(stored.size, limit as u64);
    assert!(download_bytes(&client, "exact-growing.bin").await.expect("download") == exact);
    let id = create_upload(&client, "exact-session.bin", limit as u64).await.expect("CreateUpload at the limit");
    client.abort_upload(&id).await.expect("abort");
    assert!(server.staging_drains().await);
    still_serves(&server, "exact").await;
}

/// Quota 10 MiB with 6 MiB already in the root when the server starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_existing_files_uploads_deletes_and_replacements() {
    let limits = Limits { quota_bytes: Some(10 * MIB as u64), ..Limits::default() };
    let mut server = TestServer::start_with(with_limits(limits)).await;
    // Placed behind the server's back, then measured by a restart.
    // Nested, to see that start-up walks the whole tree.
    std::fs::create_dir_all(server.root().join("pre/deep")).expect("mkdir");
    std::fs::write(server.root().join("pre/deep/a.bin"), random_bytes(6 * MIB - 1000, 10)).expect("write");
    std::fs::write(server.root().join("pre/b.bin"), random_bytes(1000, 11)).expect("write");
    server.restart().await;
    let client = server.client().await;
    let quota_used = || async { sample(&render(&server).await, "ferry_quota_used_bytes") };
    // `serve` measures the root before it answers its first call, in its own
    // task: one answered call means the measurement is done.
    assert_eq!(client.stat("pre/b.bin").await.expect("stat").size, 1000);
    assert_eq!(quota_used().await, Some(6.0 * MIB as f64), "start-up measures the files already there");

    // 6 + 5 > 10: refused, by Upload (declared or growing) and CreateUpload.
    let five = random_bytes(5 * MIB, 5);
    let message = exhausted(upload_bytes(&client, "five.bin", &five).await, "5 MiB over a 10 MiB quota with 6 used");
    assert!(message.contains("quota"), "the message names the quota: {message}");
    nothing_left(&server, &client, "five.bin").await;
    exhausted(upload_unsized(&client, "five.bin", &five).await, "5 MiB of unknown size");
    nothing_left(&server, &client, "five.bin").await;
    exhausted(create_upload(&client, "five.bin", five.len() as u64).await, "CreateUpload of 5 MiB");
    nothing_left(&server, &client, "five.bin").await;
    still_serves(&server, "quota-refused").await;

    // 6 + 4 = 10: fits exactly (so the refusals above reserved nothing).
    let four = random_bytes(4 * MIB, 4);
    upload_bytes(&client, "four.bin", &four).await.expect("4 MiB fits");
    assert_eq!(quota_used().await, Some(10.0 * MIB as f64));
    // Full: even one byte is refused, while reads go on.
    exhausted(upload_bytes(&client, "one.bin", b"x").await, "one byte over a full quota");
    nothing_left(&server, &client, "one.bin").await;
    assert_eq!(download_bytes(&client, "four.bin").await.expect("download when full"), four);

    // Deleting frees quota: 6 MiB - 1000 back, and then 5 MiB fit.
    client.delete("pre/deep/a.bin").await.expect("delete");
    assert_eq!(quota_used().await, Some(4.0 * MIB as f64 + 1000.0));
    upload_bytes(&client, "five.bin", &five).await.expect("5 MiB fits after a delete");
    assert_eq!(quota_used().await, Some(9.0 * MIB as f64 + 1000.0));
    still_serves(&server, "after-delete").await;

    // Replacing four.bin (4 MiB) by 1 MiB - 1000 counts the difference:
    // 9 MiB + 1000 - 4 MiB + 1 MiB - 1000 = 6 MiB.
    upload_bytes(&client, "four.bin", &random_bytes(MIB - 1000, 1)).await.expect("replace by a smaller file");
    assert_eq!(quota_used().await, Some(6.0 * MIB as f64));
    // So exactly 4 MiB fit again, and then not one byte more.
    upload_bytes(&client, "again.bin", &four).await.expect("4 MiB after the replacement");
    assert_eq!(quota_used().await, Some(10.0 * MIB as f64));
    exhausted(upload_bytes(&client, "one.bin", b"x").await, "one byte over a full quota");
    nothing_left(&server, &client, "one.bin").await;
    assert!(std::fs::read(server.root().join("five.bin")).expect("five.bin") == five);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_space_reserve_refuses_uploads_before_a_byte_is_written() {
    // A reserve no disk can leave: every upload is refused, reads go on.
    let limits = Limits { min_free_bytes: u64::MAX / 2, ..Limits::default() };
    let server = TestServer::start_with(with_limits(limits)).await;
    let client = server.client().await;
    let existing = random_bytes(100_000, 3);
    std::fs::write(server.root().join("existing.bin"), &existing).expect("write");
    let before = server.snapshot();
    let data = random_bytes(1000, 4);

    let message = exhausted(upload_bytes(&client, "new.bin", &data).await, "declared size under a huge reserve");
    assert!(message.contains("free space"), "the message says free space: {message}");
    let message = exhausted(create_upload(&client, "new.bin", 1000).await, "CreateUpload under a huge reserve");
    assert!(message.contains("free space"), "the message says free space: {message}");
    // Unknown size: checked against the reserve alone, refused as well.
    let message = exhausted(upload_unsized(&client, "new.bin", &data).await, "unknown size under a huge reserve");
    assert!(message.contains("free space"), "the message says free space: {message}");
    nothing_left(&server, &client, "new.bin").await;
    assert_eq!(server.snapshot(), before, "refusals write nothing");
    // Everyone else is still served.
    assert_eq!(download_bytes(&client, "existing.bin").await.expect("download"), existing);
    assert_eq!(server.client().await.stat("existing.bin").await.expect("stat").size, existing.len() as u64);

    // No reserve: uploads work, and one larger than any disk is refused.
    let server = TestServer::start_with(with_limits(Limits { min_free_bytes: 0, ..Limits::default() })).await;
    let client = server.client().await;
    upload_bytes(&client, "new.bin", &data).await.expect("upload without a reserve");
    let huge = UploadOptions { size: Some(u64::MAX / 2), ..Default::default() };
    let result = client.upload("huge.bin", std::io::Cursor::new(data.clone()), huge, |_| {}).await;
    let message = exhausted(result, "a declared size larger than the disk");
    assert!(message.contains("free space"), "the message says free space: {message}");
    nothing_left(&server, &client, "huge.bin").await;
    still_serves(&server, "free-space").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upload_slots_are_held_and_released() {
    let limits = Limits { max_concurrent_uploads: 2, ..Limits::default() };
    let server = TestServer::start_with(with_limits(limits)).await;
    let raw = server.raw().await;
    let client = server.client().await;

    let first = Held::open(&raw, "held/1.bin");
    let second = Held::open(&raw, "held/2.bin");
    assert_eq!(staged(&server, 2).await, 2, "both held uploads are admitted");
    let message = busy(upload_bytes(&client, "third.bin", b"third").await, "a third upload");
    assert!(message.contains("2 uploads"), "the message names the limit: {message}");
    busy(upload_unsized(&client, "third.bin", b"third").await, "a third upload of unknown size");
    assert_eq!(staged(&server, 2).await, 2, "the refusal staged nothing");
    assert!(client.stat("third.bin").await.is_err());
    // Other calls take no upload slot: downloads and listings go on.
    still_serves_without_upload(&server, &client).await;

    // One finishes: its slot is free again.
    let data = random_bytes(10_000, 1);
    let stored = first.finish(&data).await.expect("the first held upload commits");
    assert_eq!(stored.file.expect("file").size, data.len() as u64);
    eventually("an upload after one finished", || upload_bytes(&client, "after-finish.bin", b"ok")).await;

    // The other is cancelled: its slot comes back, its session is discarded.
    second.cancel();
    assert!(server.staging_drains().await, "the cancelled upload is discarded");
    // Both slots are free: two can be held at once again, and no third.
    eventually("an upload after one was cancelled", || upload_bytes(&client, "after-cancel.bin", b"ok")).await;
    let third = Held::open(&raw, "held/3.bin");
    let fourth = Held::open(&raw, "held/4.bin");
    assert_eq!(staged(&server, 2).await, 2, "two uploads are admitted again");
    busy(upload_bytes(&client, "fifth.bin", b"fifth").await, "a third upload, again");
    third.finish(b"3").await.expect("third commits");
    fourth.finish(b"4").await.expect("fourth commits");
    assert!(server.staging_drains().await);
    assert!(!server.root().join("held/2.bin").exists(), "the cancelled upload committed nothing");
    assert!(!server.root().join("third.bin").exists() && !server.root().join("fifth.bin").exists());
    still_serves(&server, "upload-slots").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_download_slot_is_held_by_an_unread_stream() {
    let limits = Limits { max_concurrent_downloads: 1, ..Limits::default() };
    let server = TestServer::start_with(with_limits(limits)).await;
    // Far more than the HTTP/2 windows (2 MiB stream, 4 MiB connection) and
    // the store's read-ahead: an unread download cannot finish on its own.
    let big = random_bytes(16 * MIB, 9);
    std::fs::write(server.root().join("big.bin"), &big).expect("write");
    let client = server.client().await;
    let mut raw = server.raw().await;

    let request = DownloadRequest { path: "big.bin".into(), offset: 0, length: None };
    let held = raw.download(request).await.expect("the first download is admitted").into_inner();
    // Admitted: the slot was taken before the response headers were sent.
    let message = busy(download_bytes(&client, "big.bin").await, "a second download");
    assert!(message.contains("1 downloads"), "the message names the limit: {message}");
    // Everything else goes on: uploads have their own slots.
    still_serves_without_download(&client).await;

    drop(held);
    let fetched = eventually("a download after the first was dropped", || download_bytes(&client, "big.bin")).await;
    assert!(fetched == big, "downloaded bytes differ");
    // And the slot came back after that one completed.
    assert!(download_bytes(&client, "big.bin").await.expect("another download") == big);
    still_serves(&server, "download-slots").await;
}

/// Stats, downloads and listings work while every upload slot is taken.
async fn still_serves_without_upload(server: &TestServer, client: &Client) {
    std::fs::write(server.root().join("placed.bin"), b"placed").expect("write");
    assert_eq!(client.stat("placed.bin").await.expect("stat").size, 6);
    assert_eq!(download_bytes(client, "placed.bin").await.expect("download while uploads are full"), b"placed");
    let mut listing = client.list("", false).await.expect("list");
    assert!(listing.next_batch().await.expect("batch").is_some());
}

/// Uploads, stats and lists work while every download slot is taken.
async fn still_serves_without_download(client: &Client) {
    let stored = upload_bytes(client, "during.bin", b"during").await.expect("upload while downloads are full");
    assert_eq!(stored.size, 6);
    assert_eq!(client.stat("during.bin").await.expect("stat").size, 6);
    let mut listing = client.list("", false).await.expect("list");
    assert!(listing.next_batch().await.expect("batch").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_the_third_client_until_one_leaves() {
    let limits = Limits { max_connections: 2, ..Limits::default() };
    let server = TestServer::start_with(with_limits(limits)).await;
    let first = server.client().await;
    let second = server.client().await;
    upload_bytes(&first, "a.bin", b"a").await.expect("first client");
    upload_bytes(&second, "b.bin", b"b").await.expect("second client");

    // The server accepts the third TCP connection and answers its calls
    // with UNAVAILABLE, saying why (then closes it): a retryable code, not
    // the bare transport error a plain close would give.
    for _ in 0..5 {
        match Client::connect(&server.url).await {
            Err(ferry_client::Error::Connect { .. }) => {}
            Err(other) => panic!("connecting: {other:?}"),
            Ok(third) => match third.stat("a.bin").await {
                Err(ferry_client::Error::Status(status)) => {
                    assert_eq!(status.code(), Code::Unavailable, "a third connection's call: {status:?}");
                    assert!(status.message().contains("connection limit (2)"), "{status:?}");
                }
                other => panic!("a third connection must be refused, got {other:?}"),
            },
        }
    }
    let refused = sample(&render(&server).await, "ferry_connections_refused_total");
    // At least one per client; tonic's channel reconnects in the background
    // after a failed call, so usually more (observed 10..=15 for 5 clients).
    assert!(refused >= Some(5.0), "every refusal is counted: {refused:?}");
    // The two connected clients are not disturbed.
    assert_eq!(download_bytes(&first, "b.bin").await.expect("first client still served"), b"b");
    assert_eq!(download_bytes(&second, "a.bin").await.expect("second client still served"), b"a");

    // One leaves: a new client gets its slot (released when the server sees
    // the connection close).
    drop(first);
    let (fresh, fetched) = eventually("a client after one left", || async {
        let fresh = Client::connect(&server.url).await?;
        let fetched = download_bytes(&fresh, "a.bin").await?;
        Ok((fresh, fetched))
    })
    .await;
    assert_eq!(fetched, b"a");
    upload_bytes(&fresh, "c.bin", b"c").await.expect("the new client uploads");
    assert_eq!(download_bytes(&second, "c.bin").await.expect("second client still served"), b"c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_cap_queues_streams_on_one_connection() {
    let options = ServerOptions { max_concurrent_streams: 4, ..ServerOptions::default() };
    let server = TestServer::start_with(options).await;
    let mut raw = server.raw().await;
    // One call first, so that the client has the server's SETTINGS.
    let missing = raw.stat(StatRequest { path: "missing".into() }).await.expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);

    // Opened one by one, each seen at the server before the next: 0..4 are
    // the open streams, 4 and 5 the ones beyond the cap.
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(Held::open(&raw, &format!("streams/{i}.bin")));
        assert_eq!(staged(&server, i + 1).await, i + 1, "stream {i} reaches the server");
    }
    held.push(Held::open(&raw, "streams/4.bin"));
    held.push(Held::open(&raw, "streams/5.bin"));
    // The server does not refuse them: the client holds them back (HTTP/2
    // SETTINGS_MAX_CONCURRENT_STREAMS), so they never reach it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(staged(&server, 4).await, 4, "the fifth and sixth wait rather than open");
    assert!(held.iter().all(|h| !h.call.is_finished()), "nothing is refused");
    // Any call on that connection waits too, even a unary one...
    let waiting = tokio::time::timeout(Duration::from_millis(200), raw.stat(StatRequest { path: "missing".into() }));
    assert!(waiting.await.is_err(), "a call on a saturated connection waits for a stream");
    // ...while another connection is served at once: the cap is per connection.
    still_serves(&server, "other-connection").await;

    let mut held = held.into_iter().enumerate();
    let mut finished = Vec::new();
    let mut finish = async |i: usize, upload: Held| {
        let data = random_bytes(1000 + i, i as u64);
        let reply = upload.finish(&data).await.unwrap_or_else(|e| panic!("stream {i} commits: {e:?}"));
        finished.push((i, data, reply));
    };
    // One open stream ends: one waiting stream opens and is admitted.
    let (i, upload) = held.next().expect("stream 0");
    finish(i, upload).await;
    assert_eq!(staged(&server, 4).await, 4, "a waiting stream opens once an earlier one finished");
    let (i, upload) = held.next().expect("stream 1");
    finish(i, upload).await;
    assert_eq!(staged(&server, 4).await, 4, "the other waiting stream opens");
    // The rest, the two that waited among them, complete.
    for (i, upload) in held {
        finish(i, upload).await;
    }
    for (i, data, reply) in finished {
        assert_eq!(reply.file.expect("file").size, data.len() as u64);
        assert!(std::fs::read(server.root().join(format!("streams/{i}.bin"))).expect("stored") == data);
    }
    assert!(server.staging_drains().await);
    still_serves(&server, "streams").await;
}

/// The Rust client retries a refusal that says when to come back (a busy
/// upload slot) after at least that long, and gives up at once on one that
/// does not (a quota): it used to retry both, eight times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_retries_busy_refusals_and_not_final_ones() {
    let limits = Limits { quota_bytes: Some(MIB as u64), max_concurrent_uploads: 1, ..Limits::default() };
    let server = TestServer::start_with(with_limits(limits)).await;
    let client = server.client().await;
    let raw = server.raw().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = ferry_client::RetryPolicy::default();
    let refused = |text: &str, code: &str| {
        let series = format!("ferry_requests_total{{method=\"/ferry.v1.Ferry/UploadSession\",code=\"{code}\"}}");
        sample(text, &series).unwrap_or(0.0)
    };

    // Final: a file of unknown size growing past the quota.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, random_bytes(2 * MIB, 5)).expect("write");
    let id = client.create_upload("big.bin", &UploadOptions::default()).await.expect("CreateUpload");
    let error = client.upload_file_resumable(&big, &id, &policy, |_| {}).await.expect_err("over the quota");
    assert_eq!(error.code(), Some(Code::ResourceExhausted), "{error}");
    assert!(!error.is_transient(), "a quota refusal is final");
    assert_eq!(refused(&render(&server).await, "RESOURCE_EXHAUSTED"), 1.0, "refused once, not retried");
    client.abort_upload(&id).await.expect("abort");

    // Busy: the only upload slot is held; the client waits and succeeds once it frees.
    let small = dir.path().join("small.bin");
    std::fs::write(&small, b"small").expect("write");
    let held = Held::open(&raw, "held.bin");
    assert_eq!(staged(&server, 1).await, 1, "the held upload is admitted");
    let id = client.create_upload("small.bin", &UploadOptions::default()).await.expect("CreateUpload");
    let waiting = {
        let (client, small, policy) = (client.clone(), small.clone(), policy.clone());
        tokio::spawn(async move { client.upload_file_resumable(&small, &id, &policy, |_| {}).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused(&render(&server).await, "RESOURCE_EXHAUSTED") < 2.0 {
        assert!(tokio::time::Instant::now() < deadline, "the second upload was never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.finish(b"held").await.expect("the held upload commits");
    let stored = waiting.await.expect("task").expect("the busy upload is retried and lands");
    assert_eq!(stored.size, 5);
    assert_eq!(download_bytes(&client, "small.bin").await.expect("download"), b"small");
}
