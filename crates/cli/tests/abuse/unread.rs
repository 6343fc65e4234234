//! Clients that never read their download: stalled downloads hold a few
//! chunks, not the file, and a connection full of unread downloads stays
//! within the documented download bound.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ferry_client::{Client, Range};
use sha2::Digest as _;

use crate::support::{MIB, Server, random_bytes};
use crate::{DOWNLOAD, PATIENCE, assert_server_alive, peak_rss_mib, polite_round_trip, proto, raw, report};

/// Four clients, each on its own connection, start downloading a 256 MiB
/// file and stop reading after the first chunk. HTTP/2 flow control and the
/// server's bounded read-ahead must hold the server to a few chunks per
/// download: if it buffered the file, one stalled download alone would put
/// its RSS past 256 MiB. A polite client is served meanwhile, and the stalled
/// downloads, once read again, complete and verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_nobody_reads_hold_a_few_chunks_not_the_file() {
    const FILE: usize = 256 * MIB;
    const STALLED: usize = 4;
    /// Measured: about 65 MiB, some 8 MiB per stalled download (read-ahead,
    /// the message being sent, the send buffer) over a 30 MiB baseline.
    const BOUND_MIB: u64 = 128;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let expected_sha256 = write_big_file(&root.join("big.bin"), FILE);
    let mut server = Server::start(&root, None, &[]);

    let gate = Gate::new();
    let mut stalled = Vec::new();
    for n in 0..STALLED {
        // One connection each: a stalled stream holds its connection's window.
        let client = Client::connect(server.url()).await.expect("connect");
        let sink = GatedSink { gate: gate.clone(), written: 0 };
        stalled.push(tokio::spawn(async move { client.download("big.bin", Range::ALL, sink, |_| {}).await }));
        // One at a time: the first computes and caches the digest, the others reuse it.
        gate.wait_for_blocked(n + 1).await;
    }
    // Time for a server without backpressure to read the whole file into
    // memory (a fraction of a second); a correct one just waits.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let polite = polite_round_trip(server.url(), "polite.bin", 2).await;
    let peak = peak_rss_mib(&server);
    assert!(stalled.iter().all(|download| !download.is_finished()), "a stalled download ended while stalled");

    // Reading again: every stalled download completes, verified by the client
    // against the server's SHA-256.
    gate.open();
    for download in stalled {
        let (file, sink) = tokio::time::timeout(PATIENCE, download)
            .await
            .expect("a stalled download completes once read again")
            .expect("download task")
            .expect("the stalled download completes and verifies");
        assert_eq!(file.size, FILE as u64);
        assert_eq!(file.sha256.as_deref(), Some(expected_sha256.as_str()));
        assert_eq!(sink.written, FILE as u64, "bytes written by the stalled client");
    }
    assert_server_alive(&mut server);

    report("4 stalled 256 MiB downloads", peak, started);
    eprintln!("abuse:   polite 8 MiB round trip {polite:.2?}");
    assert!(peak < BOUND_MIB, "server peak RSS {peak} MiB with {STALLED} stalled downloads (bound {BOUND_MIB} MiB)");
}

/// One connection asks for 60 downloads (just under the default limit of 64,
/// so that the polite client still gets a slot) and never reads a byte of
/// any. Each unread download pins about 4 chunks (read-ahead 2, the chunk
/// being encoded, the chunk h2 holds): the documented bound is base +
/// downloads × 4 MiB (docs/operations.md, "Memory bound"). Before the
/// read-ahead and the default limit were lowered, 128 such downloads
/// reached 786 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_full_of_unread_downloads_stays_within_the_download_bound() {
    const STREAMS: usize = 60;
    /// ~40 MiB base + 60 unread downloads × 4 MiB, plus slack for allocator pages.
    const BOUND_MIB: u64 = 40 + STREAMS as u64 * 4 + 64;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    write_big_file(&root.join("big.bin"), 64 * MIB);
    let mut server = Server::start(&root, None, &[]);
    // Cache the digest first, or each download would compute it.
    Client::connect(server.url())
        .await
        .expect("connect")
        .download("big.bin", Range::ALL, std::io::sink(), |_| {})
        .await
        .expect("a first download");

    let mut conn = raw::Conn::connect(server.addr()).await;
    for _ in 0..STREAMS {
        let id = conn.open(DOWNLOAD).await;
        assert!(conn.send_message(id, &proto::bytes_field(1, b"big.bin"), true).await, "download request");
    }
    // Never read: give the server time to fill whatever it buffers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polite = polite_round_trip(server.url(), "polite.bin", 5).await;
    let peak = peak_rss_mib(&server);
    drop(conn);
    assert_server_alive(&mut server);

    report("60 unread downloads on one connection", peak, started);
    eprintln!("abuse:   polite 8 MiB round trip {polite:.2?}");
    assert!(peak < BOUND_MIB, "server peak RSS {peak} MiB with {STREAMS} unread downloads (bound {BOUND_MIB} MiB)");
}

/// Writes `size` bytes (a 1 MiB random block, repeated) to `path`; returns
/// their SHA-256.
fn write_big_file(path: &Path, size: usize) -> String {
    let block = random_bytes(MIB, 256);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create the big file"));
    let mut hasher = sha2::Sha256::new();
    for _ in 0..size / MIB {
        file.write_all(&block).expect("write the big file");
        hasher.update(&block);
    }
    file.flush().expect("flush the big file");
    hex::encode(hasher.finalize())
}

/// Holds writers until opened; counts the writers it holds.
#[derive(Debug, Clone)]
struct Gate(Arc<(Mutex<GateState>, Condvar)>);

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    blocked: usize,
}

impl Gate {
    fn new() -> Self {
        Self(Arc::new((Mutex::new(GateState::default()), Condvar::new())))
    }

    fn pass(&self) {
        let (state, changed) = &*self.0;
        let mut state = state.lock().expect("gate");
        if !state.open {
            state.blocked += 1;
            while !state.open {
                state = changed.wait(state).expect("gate");
            }
        }
    }

    fn open(&self) {
        let (state, changed) = &*self.0;
        state.lock().expect("gate").open = true;
        changed.notify_all();
    }

    async fn wait_for_blocked(&self, writers: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.0.0.lock().expect("gate").blocked < writers {
            assert!(Instant::now() < deadline, "the download never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A download's destination that stops taking bytes (so the client stops
/// reading its stream) until the gate opens.
#[derive(Debug)]
struct GatedSink {
    gate: Gate,
    written: u64,
}

impl Write for GatedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.gate.pass();
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
