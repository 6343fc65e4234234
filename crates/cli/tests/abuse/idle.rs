//! Thousands of idle streams; clients that never send: idle uploads hold
//! their slots until the idle timeout (excess uploads are refused), and
//! hundreds of admitted idle uploads end at the idle timeout while a
//! client is served.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry_client::{Client, Code, Range, RetryPolicy, UploadOptions};

use crate::support::{Server, random_bytes};
use crate::{
    DEADLINE_EXCEEDED, PATIENCE, POLITE_SIZE, POLITE_TIMEOUT, RESOURCE_EXHAUSTED, UPLOAD, UPLOAD_SESSION,
    assert_server_alive, peak_rss_mib, polite_round_trip, proto, raw, report, staged, wait_until_nothing_staged,
};

/// What an idle stream sends before falling silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Idle {
    /// `Upload`: a valid header (the server admits and stages the upload), then nothing.
    HeaderOnly,
    /// `Upload`: request headers only, not one message.
    Silent,
    /// `UploadSession`: request headers only, not even the start message.
    SilentSession,
}

/// 16 connections × 128 streams (the per-connection stream limit): a third
/// each of [`Idle`]'s kinds, opened at once on each connection.
const IDLE_CONNECTIONS: usize = 16;
const IDLE_STREAMS: usize = 128;
const IDLE_KINDS: [Idle; 3] = [Idle::HeaderOnly, Idle::Silent, Idle::SilentSession];
/// Header-only streams among them: stream `i` of a connection is `IDLE_KINDS[i % 3]`.
const IDLE_HEADER_ONLY: usize = IDLE_CONNECTIONS * IDLE_STREAMS.div_ceil(3);

/// How many of the idle streams are of `kind`.
fn idle_streams_of(kind: Idle) -> usize {
    IDLE_CONNECTIONS * (0..IDLE_STREAMS).filter(|i| IDLE_KINDS[i % 3] == kind).count()
}

/// Opens the 2,048 idle streams, each connection in its own task, which
/// returns every stream's kind and how it ended. `ended` counts the streams
/// that have ended so far.
fn open_idle_streams(addr: &str, ended: &Arc<AtomicUsize>) -> Vec<tokio::task::JoinHandle<Vec<(Idle, raw::End)>>> {
    (0..IDLE_CONNECTIONS)
        .map(|c| {
            let (addr, ended) = (addr.to_owned(), ended.clone());
            tokio::spawn(async move {
                let mut conn = raw::Conn::connect(&addr).await;
                conn.count_ends(ended);
                let mut kinds = HashMap::new();
                for i in 0..IDLE_STREAMS {
                    let kind = IDLE_KINDS[i % 3];
                    let id = conn.open(if kind == Idle::SilentSession { UPLOAD_SESSION } else { UPLOAD }).await;
                    if kind == Idle::HeaderOnly {
                        // Refused uploads may already be answered: the send is not checked.
                        let header = proto::upload_header(&format!("idle/{c}-{i}.bin"), Some(1024));
                        conn.send_message(id, &header, false).await;
                    }
                    kinds.insert(id, kind);
                }
                conn.wait_all().await.into_iter().map(|(id, end)| (kinds[&id], end)).collect()
            })
        })
        .collect()
}

/// With the default limits (passed explicitly): of the 688 header-only
/// uploads, the server admits `--max-concurrent-uploads` (64) and refuses the
/// rest with RESOURCE_EXHAUSTED at once; the admitted ones and the 1,360
/// streams that never send a message end with DEADLINE_EXCEEDED after
/// `--idle-timeout`.
///
/// Meanwhile a polite client downloads at once (downloads have their own
/// slots). Its upload, though, is refused with RESOURCE_EXHAUSTED while the
/// idle uploads hold every upload slot, as documented (admission refuses, it
/// does not queue), and the resumable upload that `ferry put` uses retries
/// until the idle timeout frees a slot. Note what this pins: one client with
/// 64 streams that send a header and then nothing, on a single connection,
/// locks every other client out of uploading for the whole idle timeout; with
/// the default 60 s, the client's default retry policy (8 attempts, about 10
/// to 20 s of backoff) gives up first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_hold_upload_slots_until_the_idle_timeout_and_excess_uploads_are_refused() {
    const UPLOAD_SLOTS: usize = 64;
    const IDLE_SECS: u64 = 6;
    /// Measured: about 67 MiB.
    const BOUND_MIB: u64 = 128;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let fixture = random_bytes(POLITE_SIZE, 10);
    std::fs::write(root.join("fixture.bin"), &fixture).expect("a file to download");
    let mut server = Server::start(
        &root,
        None,
        &[
            "--idle-timeout",
            &format!("{IDLE_SECS}s"),
            "--max-concurrent-uploads",
            &UPLOAD_SLOTS.to_string(),
            "--max-concurrent-streams",
            &IDLE_STREAMS.to_string(),
        ],
    );

    let ended = Arc::new(AtomicUsize::new(0));
    let connections = open_idle_streams(server.addr(), &ended);
    assert_eq!(idle_streams_of(Idle::HeaderOnly), IDLE_HEADER_ONLY);
    let refused = IDLE_HEADER_ONLY - UPLOAD_SLOTS;
    // Every slot taken and every excess upload refused; nothing else ended yet.
    // The first upload staged starts the first idle clock (within a poll).
    let (deadline, mut first_staged) = (Instant::now() + PATIENCE, None);
    while staged(&root) < UPLOAD_SLOTS || ended.load(Ordering::SeqCst) < refused {
        if first_staged.is_none() && staged(&root) > 0 {
            first_staged = Some(Instant::now());
        }
        assert!(ended.load(Ordering::SeqCst) <= refused, "idle streams ended before all were open");
        assert!(Instant::now() < deadline, "{} staged, {} ended", staged(&root), ended.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_staged = first_staged.unwrap_or_else(Instant::now);

    let polite_started = Instant::now();
    let client = Client::connect(server.url()).await.expect("the polite client connects");
    // Downloads are admitted separately: served at once.
    let (file, back) =
        tokio::time::timeout(POLITE_TIMEOUT, client.download("fixture.bin", Range::ALL, Vec::new(), |_| {}))
            .await
            .expect("the polite download is served within the timeout")
            .expect("polite download");
    assert!(back == fixture && file.size == fixture.len() as u64, "the polite download's bytes differ");
    let polite_download = polite_started.elapsed();

    // A plain upload while the idle streams hold every slot: refused at once.
    let data = random_bytes(POLITE_SIZE, 11);
    let options = UploadOptions { size: Some(data.len() as u64), ..UploadOptions::default() };
    let plain = client.upload("polite.bin", std::io::Cursor::new(data.clone()), options.clone(), |_| {}).await;
    // Only meaningful while the slots are certainly still held (not so on a
    // machine too slow to get here within half the idle timeout).
    if first_staged.elapsed() < Duration::from_secs(IDLE_SECS / 2) {
        let error = plain.expect_err("an upload while every slot is held by an idle stream");
        assert_eq!(error.code(), Some(Code::ResourceExhausted), "{error}");
    }

    // The resumable upload retries until the idle timeout frees a slot.
    let local = dir.path().join("polite.bin");
    std::fs::write(&local, &data).expect("local file");
    let policy = RetryPolicy {
        max_attempts_without_progress: 100,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
    };
    let resumable = async {
        let id = client.create_upload("polite.bin", &options).await.expect("create the session");
        client.upload_file_resumable(&local, &id, &policy, |_| {}).await.expect("the resumable upload")
    };
    let stored = tokio::time::timeout(POLITE_TIMEOUT, resumable).await.expect("the resumable upload finishes");
    assert_eq!(stored.size, data.len() as u64);
    assert!(std::fs::read(root.join("polite.bin")).expect("polite.bin") == data, "polite.bin bytes");
    let polite_upload = polite_started.elapsed();

    let mut counts: HashMap<(Idle, Option<u32>), usize> = HashMap::new();
    for connection in connections {
        let ends =
            tokio::time::timeout(PATIENCE, connection).await.expect("every idle stream ends").expect("connection task");
        for (kind, end) in ends {
            *counts.entry((kind, end.grpc_status())).or_default() += 1;
        }
    }
    let expected = HashMap::from([
        ((Idle::HeaderOnly, Some(DEADLINE_EXCEEDED)), UPLOAD_SLOTS),
        ((Idle::HeaderOnly, Some(RESOURCE_EXHAUSTED)), refused),
        ((Idle::Silent, Some(DEADLINE_EXCEEDED)), idle_streams_of(Idle::Silent)),
        ((Idle::SilentSession, Some(DEADLINE_EXCEEDED)), idle_streams_of(Idle::SilentSession)),
    ]);
    assert_eq!(counts, expected, "how the idle streams ended");
    wait_until_nothing_staged(&root).await;
    assert!(!root.join("idle").exists(), "an idle upload committed something");
    assert_server_alive(&mut server);

    let peak = peak_rss_mib(&server);
    report("2,048 idle streams, 64 upload slots", peak, started);
    eprintln!(
        "abuse:   polite download {polite_download:.2?}; polite upload (waits for a slot) done at {polite_upload:.2?}"
    );
    assert!(peak < BOUND_MIB, "server peak RSS {peak} MiB with 2,048 idle streams (bound {BOUND_MIB} MiB)");
}

/// The same 2,048 idle streams with the upload limit raised above them, so
/// that all 688 header-only uploads are admitted and staged at once: the most
/// an idle client can make the server hold. Every stream ends with
/// DEADLINE_EXCEEDED, nothing is left staged, a polite client is served
/// while they are all open, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_admitted_idle_uploads_end_at_the_idle_timeout_while_a_client_is_served() {
    /// Opening the streams takes well under a second: the rest is for the
    /// polite client, which must start while every idle stream is open.
    const IDLE_TIMEOUT: &str = "6s";
    /// Measured: 100 to 195 MiB, most of it the blocking-thread pool: the 688
    /// uploads staged at once grow it to its 512-thread limit (515 threads
    /// seen), some 200 KiB each, and what they have touched is counted until
    /// they exit. The streams themselves cost about 25 KiB each; buffering
    /// even 64 KiB more per stream would add 128 MiB. The bound is the
    /// project's target for heavy concurrency.
    const BOUND_MIB: u64 = 256;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let mut server = Server::start(
        &root,
        None,
        &["--idle-timeout", IDLE_TIMEOUT, "--max-concurrent-uploads", "1024", "--max-concurrent-streams", "128"],
    );

    let ended = Arc::new(AtomicUsize::new(0));
    let connections = open_idle_streams(server.addr(), &ended);
    // All header-only uploads staged means the server is holding every stream.
    let deadline = Instant::now() + PATIENCE;
    while staged(&root) < IDLE_HEADER_ONLY {
        assert_eq!(ended.load(Ordering::SeqCst), 0, "idle streams ended before all were open");
        assert!(Instant::now() < deadline, "only {} of {IDLE_HEADER_ONLY} uploads staged", staged(&root));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ended.load(Ordering::SeqCst), 0, "idle streams ended before the polite client started");
    let polite = polite_round_trip(server.url(), "polite.bin", 1).await;

    for connection in connections {
        let ends =
            tokio::time::timeout(PATIENCE, connection).await.expect("every idle stream ends").expect("connection task");
        assert_eq!(ends.len(), IDLE_STREAMS, "streams per connection");
        for (kind, end) in ends {
            assert_eq!(end.grpc_status(), Some(DEADLINE_EXCEEDED), "{kind:?} stream: {end:?}");
        }
    }
    wait_until_nothing_staged(&root).await;
    assert!(!root.join("idle").exists(), "an idle upload committed something");
    assert_server_alive(&mut server);

    let peak = peak_rss_mib(&server);
    report("2,048 idle streams, 688 uploads admitted", peak, started);
    eprintln!("abuse:   polite 8 MiB round trip {polite:.2?}");
    assert!(peak < BOUND_MIB, "server peak RSS {peak} MiB with 2,048 idle streams (bound {BOUND_MIB} MiB)");
}
