//! Writing ranges: three streams at once, out of order, make the file;
//! overlapping ranges are refused until the writer lets go; malformed
//! range streams commit nothing; at most 32 separate ranges.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, UNIX_EPOCH};

use ferry_client::Code;
use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::{UploadFinish, UploadHeader, UploadSessionStart};

use super::{
    KIB, RangeStream, check_published, chunk, code, commit, committed, create, create_ranged, header, message,
    open_when_free, part, query, send_range,
};
use crate::harness::{TestServer, random_bytes, sha256_hex};

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
