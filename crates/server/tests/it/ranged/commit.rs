//! What CommitUpload checks: every byte present and no range being
//! written, the digest (given or declared), create-only again at the
//! commit, and the quota.

use ferry_client::Code;
use ferry_proto::v1::{UploadHeader, WriteMode};
use ferry_server::{Limits, ServerOptions};

use super::{
    KIB, RangeStream, check_published, code, commit, committed, create, create_ranged, header, part, query, send_range,
};
use crate::harness::{TestServer, random_bytes, sha256_hex, upload_bytes};

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
