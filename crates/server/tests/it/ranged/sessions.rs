//! A ranged session beside ordinary ones and over time: the two kinds do
//! not mix, AbortUpload ends live range streams, committed ranges survive
//! a restart, an idle range stream is ended, and a session being written
//! does not expire.

use std::time::Duration;

use ferry_client::Code;
use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{UploadFinish, UploadHeader, UploadRequest, upload_request};
use ferry_server::ServerOptions;

use super::{
    KIB, PROMPTLY, RangeStream, abort, check_published, code, commit, committed, create, create_ranged, header,
    message, open_when_free, part, query, send_range,
};
use crate::harness::{TestServer, random_bytes, sha256_hex};

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
