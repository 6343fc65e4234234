//! `UploadFiles`, streams that end early: errors of the stream itself, a
//! cancelled or half-closed stream, an idle one. What was answered stays;
//! the file in progress leaves nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_client::LocalFile;
use ferry_proto::v1::upload_files_response::Result as Outcome;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{UploadHeader, UploadRequest};
use ferry_server::ServerOptions;
use tonic::Code;

use super::{Held, MIB, chunk, chunks, file_msgs, finish, header, header_msg, refused, upload_files_raw};
use crate::harness::{TestServer, random_bytes};

/// Errors of the stream itself end the call with a status: a chunk or a
/// finish before any header, a header continuing a resumable upload
/// (upload_id or offset), an empty message, data after a finish. Files
/// answered before stay stored; nothing is staged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_end_the_call_and_answered_files_stay() {
    let server = TestServer::start().await;
    let raw = server.raw().await;
    let data = random_bytes(1000, 1);

    // At the very start: nothing is answered, nothing stored.
    let empty = UploadRequest { kind: None };
    for (what, first) in [("a chunk", chunk(&data)), ("a finish", finish("")), ("an empty message", empty)] {
        let mut messages = vec![first];
        messages.extend(file_msgs("start/after", &data, true, true));
        let (answers, status) = upload_files_raw(&raw, None, messages).await;
        let status = status.unwrap_or_else(|| panic!("{what} before any header must end the call"));
        assert_eq!(status.code(), Code::InvalidArgument, "{what} first: {status:?}");
        assert!(answers.is_empty(), "{what} first: {answers:?}");
        assert!(!server.root().join("start/after").exists(), "{what} first: a later file was stored");
    }

    // Later in the stream. The file whose messages are malformed (when it
    // has a valid header) is answered or not, depending on whether the
    // server ended it before the bad message; either way, stored iff
    // answered with success.
    let cases: Vec<(&str, Vec<UploadRequest>)> = vec![
        (
            "a header with upload_id",
            vec![header_msg(UploadHeader { path: "case".into(), upload_id: "0".repeat(32), ..Default::default() })],
        ),
        (
            "a header with an offset",
            vec![header_msg(UploadHeader { path: "case".into(), size: Some(10), offset: 5, ..Default::default() })],
        ),
        ("an empty message", vec![UploadRequest { kind: None }]),
        ("a second finish", vec![header("case", Some(3)), chunk(b"abc"), finish(""), finish("")]),
        ("data after finish", vec![header("case", Some(3)), chunk(b"ab"), finish(""), chunk(b"c")]),
    ];
    for (n, (what, mut bad)) in cases.into_iter().enumerate() {
        let dir = format!("s{n}");
        let paths =
            [format!("{dir}/first"), format!("{dir}/second.big"), format!("{dir}/third"), format!("{dir}/case")];
        for message in &mut bad {
            if let Some(Kind::Header(header)) = &mut message.kind {
                header.path = paths[3].clone();
            }
        }
        let mut held = Held::open(&raw);
        let big = random_bytes(MIB + 10, 2);
        // The first (small, batched) is answered when the second (large)
        // starts, the second when the third starts.
        held.send(file_msgs(&paths[0], &data, true, true)).await;
        held.send(file_msgs(&paths[1], &big, true, true)).await;
        held.send(file_msgs(&paths[2], &data, true, true)).await;
        for (i, path) in paths[..2].iter().enumerate() {
            let answer = held.answer(&format!("{what}: {path}")).await.expect("an answer");
            assert_eq!(answer.index, i as u64, "{what}");
            match answer.result {
                Some(Outcome::File(info)) => assert_eq!(&info.path, path, "{what}"),
                other => panic!("{what}: {path}: {other:?}"),
            }
        }
        held.send(bad).await;
        let never = format!("{dir}/never");
        // The server may already have ended the call on the bad message.
        held.send_unless_ended(file_msgs(&never, &data, true, true)).await;
        let mut rest = held.close().await;
        let end = match rest.pop() {
            Some(Err(status)) => status,
            other => panic!("{what}: expected the call to end with a status, got {other:?} after {rest:?}"),
        };
        assert_eq!(end.code(), Code::InvalidArgument, "{what}: {end:?}");
        let mut answered = BTreeSet::new();
        for (i, answer) in rest.into_iter().enumerate() {
            let answer = answer.unwrap_or_else(|e| panic!("{what}: a status before the end: {e:?}"));
            assert_eq!(answer.index, i as u64 + 2, "{what}: answers in order");
            let path = &paths[2 + i];
            match answer.result {
                Some(Outcome::File(info)) => {
                    assert_eq!(&info.path, path, "{what}");
                    assert!(server.root().join(path).exists(), "{what}: {path} answered but not stored");
                    answered.insert(path.clone());
                }
                Some(Outcome::Error(error)) => assert_eq!(&error.path, path, "{what}"),
                None => panic!("{what}: an answer without a result"),
            }
        }
        assert_eq!(std::fs::read(server.root().join(&paths[0])).expect("first"), data, "{what}");
        assert!(std::fs::read(server.root().join(&paths[1])).expect("second") == big, "{what}");
        for path in paths[2..].iter().chain([&never]) {
            let stored = server.root().join(path).exists();
            assert_eq!(stored, answered.contains(path), "{what}: {path} is stored iff answered so");
        }
    }
    assert!(server.staging_drains().await, "nothing staged after stream errors: {:?}", server.snapshot());
}

/// A client that goes away mid-file (the call is cancelled after half of a
/// large file) leaves nothing of that file, nothing staged; what was
/// answered before stays; the server goes on serving. A stream that is
/// closed mid-file (half-close) gets that file refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_leaves_no_partial_file() {
    let server = TestServer::start().await;
    let raw = server.raw().await;
    let small = random_bytes(2000, 1);
    let big = random_bytes(6 * MIB, 2);

    let mut held = Held::open(&raw);
    held.send(file_msgs("cancel/small", &small, true, true)).await;
    held.send(vec![header("cancel/big.bin", Some(big.len() as u64))]).await;
    let answer = held.answer("the small file").await.expect("an answer");
    assert!(matches!(answer.result, Some(Outcome::File(_))), "{answer:?}");
    held.send(chunks(&big[..3 * MIB])).await;
    // The large file is being staged.
    let mut staged = false;
    for _ in 0..200 {
        if std::fs::read_dir(server.staging()).map(|d| d.count() > 0).unwrap_or(false) {
            staged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(staged, "the large file is staged while it arrives");
    held.call.abort();
    drop(held.tx);
    assert!(server.staging_drains().await, "a cancelled stream leaves nothing staged: {:?}", server.snapshot());
    assert!(!server.root().join("cancel/big.bin").exists(), "a partial file became visible");
    assert_eq!(std::fs::read(server.root().join("cancel/small")).expect("the answered file"), small);

    // Half-closed in the middle of a large and of a small file.
    for (path, size) in [("cancel/half-big.bin", big.len()), ("cancel/half-small", 5000)] {
        let held = Held::open(&raw);
        held.send(vec![header(path, Some(size as u64))]).await;
        held.send(chunks(&big[..size / 2])).await;
        let rest = held.close().await;
        let [Ok(answer)] = rest.as_slice() else { panic!("{path}: expected one answer, got {rest:?}") };
        refused(std::slice::from_ref(answer), 0, path, Code::InvalidArgument);
        assert!(!server.root().join(path).exists(), "{path}: a partial file became visible");
    }
    assert!(server.staging_drains().await);

    // Still serving.
    let client = server.client().await;
    let local = tempfile::tempdir().expect("temp dir");
    std::fs::write(local.path().join("x"), b"after the cancel").expect("write");
    let file = LocalFile { local: local.path().join("x"), remote: "cancel/after".into(), create_only: false };
    let results = client.upload_files(vec![file]).await.expect("a new stream");
    assert_eq!(results[0].as_ref().expect("stored").size, 16);
}

/// A stream that goes silent is ended after the idle timeout with
/// DEADLINE_EXCEEDED: what was answered stays, the file in progress is
/// discarded (nothing staged, nothing visible).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_ends_with_deadline_exceeded() {
    let options = ServerOptions { stream_idle_timeout: Duration::from_millis(500), ..Default::default() };
    let server = TestServer::start_with(options).await;
    let raw = server.raw().await;
    let small = random_bytes(1000, 1);
    let big = random_bytes(3 * MIB, 2);
    let mut held = Held::open(&raw);
    held.send(file_msgs("idle/small", &small, true, true)).await;
    held.send(vec![header("idle/big", Some(big.len() as u64))]).await;
    held.send(chunks(&big[..MIB])).await;
    let answer = held.answer("the small file").await.expect("an answer");
    assert!(matches!(&answer.result, Some(Outcome::File(info)) if info.path == "idle/small"), "{answer:?}");
    // Silence: the server ends the call.
    let end = held.answer("the idle timeout").await;
    assert_eq!(end.expect_err("the call ends").code(), Code::DeadlineExceeded);
    assert!(server.staging_drains().await, "the file in progress is discarded: {:?}", server.snapshot());
    assert!(!server.root().join("idle/big").exists(), "a partial file became visible");
    assert_eq!(std::fs::read(server.root().join("idle/small")).expect("answered, so stored"), small);
}
