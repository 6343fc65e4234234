//! Floods of tiny messages: 1-byte messages are stored intact, floods of
//! tiny or empty DATA frames are cut.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::support::Server;
use crate::{
    ENHANCE_YOUR_CALM, OK, PATIENCE, UPLOAD, assert_server_alive, peak_rss_mib, polite_round_trip, proto, raw, report,
    wait_until_nothing_staged,
};

/// Tiny messages are legal (only an empty one is not), and a flood of them
/// must cost the server neither correctness nor memory:
/// - two clients send 1-byte chunk messages, 1,600 to a 16 KiB DATA frame,
///   as fast as flow control lets them, until the polite client is done (at
///   least 100,000 each): both commit exactly the bytes sent;
/// - a client sends each 1-byte message in a DATA frame of its own (10 bytes
///   each), 200,000 of them: that is the small-frame flood HTTP/2 servers
///   guard against, and the server (h2's DATA-frame budget) cuts the
///   connection with GOAWAY ENHANCE_YOUR_CALM; nothing is committed;
/// - a client sends 1,000 empty DATA frames: cut the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_tiny_messages_are_stored_intact_and_floods_of_tiny_frames_are_cut() {
    const FLOODS: u64 = 2;
    const AT_LEAST: u64 = 100_000;
    /// 1-byte chunk messages are 10 bytes on the wire: 1,600 fill a 16 KiB frame.
    const PER_FRAME: u64 = 1_600;
    const TINY_FRAMES: u64 = 200_000;
    /// Measured: about 50 MiB.
    const BOUND_MIB: u64 = 96;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let mut server = Server::start(&root, None, &[]);
    let addr = server.addr().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let mut floods = Vec::new();
    for n in 0..FLOODS {
        let (addr, stop) = (addr.clone(), stop.clone());
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        floods.push((
            n,
            sent,
            tokio::spawn(async move {
                let mut conn = raw::Conn::connect(&addr).await;
                let id = conn.open(UPLOAD).await;
                // No declared size: the finish message carries the digest.
                assert!(conn.send_message(id, &proto::upload_header(&format!("flood-{n}.bin"), None), false).await);
                let (mut hasher, mut count) = (sha2::Sha256::new(), 0u64);
                while !(stop.load(Ordering::SeqCst) && count >= AT_LEAST) {
                    let mut frame = Vec::with_capacity(PER_FRAME as usize * 10);
                    for i in count..count + PER_FRAME {
                        let byte = flood_byte(n, i);
                        hasher.update([byte]);
                        frame.extend(proto::grpc_frame(&proto::upload_chunk(&[byte])));
                    }
                    if !conn.send_data(id, &frame, false).await {
                        return (count, conn.wait(id).await); // cut short: the end says why
                    }
                    count += PER_FRAME;
                    counter.store(count, Ordering::SeqCst);
                }
                conn.send_message(id, &proto::upload_finish(&hex::encode(hasher.finalize())), true).await;
                (count, conn.wait(id).await)
            }),
        ));
    }
    let tiny_frames = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut conn = raw::Conn::connect(&addr).await;
            let id = conn.open(UPLOAD).await;
            assert!(conn.send_message(id, &proto::upload_header("tiny-frames.bin", None), false).await);
            let messages: Vec<u8> =
                (0..TINY_FRAMES).flat_map(|i| proto::grpc_frame(&proto::upload_chunk(&[flood_byte(9, i)]))).collect();
            conn.send_data_in_frames_of(id, &messages, 10, false).await;
            (conn.wait(id).await, conn.goaway())
        }
    });
    let empty_frames = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut conn = raw::Conn::connect(&addr).await;
            let id = conn.open(UPLOAD).await;
            assert!(conn.send_message(id, &proto::upload_header("empty-frames.bin", None), false).await);
            conn.send_empty_data_frames(id, 1_000).await;
            (conn.wait(id).await, conn.goaway())
        }
    });

    // The floods are under way before the polite client starts and cannot
    // end before it is done: they run until `stop`.
    let deadline = Instant::now() + PATIENCE;
    while floods.iter().any(|(_, sent, _)| sent.load(Ordering::SeqCst) < 10 * PER_FRAME) {
        assert!(Instant::now() < deadline, "the floods never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let polite = polite_round_trip(server.url(), "polite.bin", 3).await;
    assert!(floods.iter().all(|(_, _, flood)| !flood.is_finished()), "a flood ended before it was told to");
    stop.store(true, Ordering::SeqCst);

    let mut messages = 0u64;
    for (n, _, flood) in floods {
        let (count, end) = tokio::time::timeout(PATIENCE, flood).await.expect("the flood ends").expect("flood task");
        assert_eq!(end.grpc_status(), Some(OK), "flood {n} after {count} messages: {end:?}");
        assert!(count >= AT_LEAST, "flood {n} sent only {count} messages");
        let expected: Vec<u8> = (0..count).map(|i| flood_byte(n, i)).collect();
        let stored = std::fs::read(root.join(format!("flood-{n}.bin"))).expect("the flood's file");
        assert!(stored == expected, "flood {n}: stored bytes differ");
        messages += count;
    }
    for (what, task) in [("tiny DATA frames", tiny_frames), ("empty DATA frames", empty_frames)] {
        let (end, goaway) = tokio::time::timeout(PATIENCE, task).await.expect("the flood is cut").expect("flood task");
        eprintln!("abuse:   {what}: {end:?}, GOAWAY code {goaway:?}");
        assert_eq!(end.grpc_status(), None, "{what}: the call must not complete: {end:?}");
        // The GOAWAY can be lost when the server's close resets the connection
        // first; a clean close is as good: the point is the cut.
        assert!(
            matches!(goaway, None | Some(ENHANCE_YOUR_CALM)) && matches!(end, raw::End::GoAway(_) | raw::End::Closed),
            "{what}: {end:?}, GOAWAY {goaway:?}"
        );
    }
    assert!(!root.join("tiny-frames.bin").exists() && !root.join("empty-frames.bin").exists(), "a cut flood committed");
    wait_until_nothing_staged(&root).await;
    assert_server_alive(&mut server);

    let peak = peak_rss_mib(&server);
    report("tiny-message and tiny-frame floods", peak, started);
    eprintln!("abuse:   {messages} 1-byte messages stored; polite 8 MiB round trip {polite:.2?}");
    assert!(peak < BOUND_MIB, "server peak RSS {peak} MiB during 1-byte floods (bound {BOUND_MIB} MiB)");
}

/// The byte at `index` of flood `seed`.
fn flood_byte(seed: u64, index: u64) -> u8 {
    ((index ^ (seed << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}
