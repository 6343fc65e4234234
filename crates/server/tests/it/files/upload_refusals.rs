//! `UploadFiles`, files refused one by one: each failure is answered for
//! its file and the stream goes on; the quota and the size limit apply per
//! file; symbolic links and special files are refused as `Upload` refuses
//! them.

use std::collections::BTreeSet;

use ferry_proto::v1::upload_files_response::Result as Outcome;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{UploadHeader, UploadRequest, WriteMode};
use ferry_server::{Limits, ServerOptions};
use tonic::Code;

use super::{
    MIB, WRITER, chunk, file_msgs, files_on_disk, finish, header, header_msg, put, refused, scoped_options, stored,
    upload_files_raw,
};
use crate::harness::{TestServer, random_bytes, sha256_hex, upload_bytes};
use crate::metrics::{render, sample};

/// Per-file failures are answered for that file, in order, and the stream
/// goes on: every file after a failure is stored. Failed files leave
/// nothing visible (an existing file stays as it was), nothing staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_file_failures_do_not_stop_the_stream() {
    let server = TestServer::start_with(scoped_options()).await;
    let raw = server.raw().await;
    put(&server, "team/exists", b"already here\n");
    put(&server, "team/dir/inside", b"inside a directory\n");
    let before = server.snapshot();

    let good = |n: usize| random_bytes(100 + n * 13, 500 + n as u64);
    let ten = random_bytes(10, 1);
    let big = random_bytes(MIB + MIB / 2, 2);
    let mut bad_crc = chunk(&ten);
    if let Some(Kind::Chunk(c)) = &mut bad_crc.kind {
        c.crc32c = Some(crc32c::crc32c(&ten) ^ 1);
    }
    let mut bad_crc_big = chunk(&big[MIB..]);
    if let Some(Kind::Chunk(c)) = &mut bad_crc_big.kind {
        c.crc32c = c.crc32c.map(|crc| crc ^ 0x8000_0000);
    }
    let wrong = sha256_hex(b"not the data");

    let mut messages = Vec::new();
    let mut expected: Vec<(String, Code)> = Vec::new();
    let mut good_count = 0;
    let mut good_file = |messages: &mut Vec<UploadRequest>, expected: &mut Vec<(String, Code)>| {
        let path = format!("team/good{good_count}");
        messages.extend(file_msgs(&path, &good(good_count), true, good_count % 2 == 0));
        expected.push((path, Code::Ok));
        good_count += 1;
    };
    // Each failure as (path, its messages, its code); a good file goes before and after each.
    let failures: Vec<(&str, Vec<UploadRequest>, Code)> = vec![
        ("../x", file_msgs("../x", &ten, true, true), Code::InvalidArgument),
        (".ferry/uploads/x", file_msgs(".ferry/uploads/x", &ten, true, true), Code::InvalidArgument),
        ("other/x", file_msgs("other/x", &ten, true, true), Code::PermissionDenied),
        (
            "team/exists",
            {
                let mut m = file_msgs("team/exists", &ten, true, true);
                m[0] = header_msg(UploadHeader {
                    path: "team/exists".into(),
                    size: Some(10),
                    mode: WriteMode::CreateOnly as i32,
                    ..Default::default()
                });
                m
            },
            Code::AlreadyExists,
        ),
        ("team/short", vec![header("team/short", Some(11)), chunk(&ten), finish("")], Code::InvalidArgument),
        ("team/short-no-finish", vec![header("team/short-no-finish", Some(11)), chunk(&ten)], Code::InvalidArgument),
        ("team/long", vec![header("team/long", Some(9)), chunk(&ten), finish("")], Code::InvalidArgument),
        ("team/bad-sha", vec![header("team/bad-sha", Some(10)), chunk(&ten), finish(&wrong)], Code::InvalidArgument),
        (
            "team/bad-sha-header",
            vec![
                header_msg(UploadHeader {
                    path: "team/bad-sha-header".into(),
                    size: Some(10),
                    sha256: wrong.clone(),
                    ..Default::default()
                }),
                chunk(&ten),
            ],
            Code::InvalidArgument,
        ),
        (
            "team/shas-disagree",
            vec![
                header_msg(UploadHeader {
                    path: "team/shas-disagree".into(),
                    size: Some(10),
                    sha256: sha256_hex(&ten),
                    ..Default::default()
                }),
                chunk(&ten),
                finish(&wrong),
            ],
            Code::InvalidArgument,
        ),
        ("team/bad-crc", vec![header("team/bad-crc", Some(10)), bad_crc, finish("")], Code::InvalidArgument),
        ("team/dir", file_msgs("team/dir", &ten, true, true), Code::FailedPrecondition),
        ("team/exists/below", file_msgs("team/exists/below", &ten, true, true), Code::FailedPrecondition),
        (
            "team/big-bad-sha",
            vec![
                header("team/big-bad-sha", Some(big.len() as u64)),
                chunk(&big[..MIB]),
                chunk(&big[MIB..]),
                finish(&wrong),
            ],
            Code::InvalidArgument,
        ),
        (
            "team/big-bad-crc",
            vec![header("team/big-bad-crc", Some(big.len() as u64)), chunk(&big[..MIB]), bad_crc_big, finish("")],
            Code::InvalidArgument,
        ),
        (
            "team/big-short",
            vec![header("team/big-short", Some(big.len() as u64 + 1)), chunk(&big[..MIB]), chunk(&big[MIB..])],
            Code::InvalidArgument,
        ),
        ("team/unsized-no-finish", vec![header("team/unsized-no-finish", None), chunk(&ten)], Code::InvalidArgument),
        ("team/dir", file_msgs("team/dir", &big, true, true), Code::FailedPrecondition),
    ];
    good_file(&mut messages, &mut expected);
    for (path, file, code) in failures {
        messages.extend(file);
        expected.push((path.to_owned(), code));
        good_file(&mut messages, &mut expected);
    }

    let (answers, status) = upload_files_raw(&raw, Some(WRITER), messages).await;
    assert!(status.is_none(), "per-file failures do not end the call: {status:?}");
    assert_eq!(answers.len(), expected.len(), "one answer per file: {answers:#?}");
    let mut stored_paths = BTreeSet::new();
    for (i, (path, code)) in expected.iter().enumerate() {
        match code {
            Code::Ok => {
                let info = stored(&answers, i);
                assert_eq!(info.path, *path);
                let n: usize = path.trim_start_matches("team/good").parse().expect("a good file's number");
                let on_disk = std::fs::read(server.root().join(path)).expect("a good file is stored");
                assert!(on_disk == good(n), "{path}: the stored bytes differ");
                stored_paths.insert(path.clone());
            }
            code => {
                refused(&answers, i, path, *code);
            }
        }
    }

    // Nothing of the failed files is visible; what was there is as it was.
    assert_eq!(std::fs::read(server.root().join("team/exists")).expect("team/exists"), b"already here\n");
    assert_eq!(std::fs::read(server.root().join("team/dir/inside")).expect("team/dir/inside"), b"inside a directory\n");
    let mut all = stored_paths;
    all.extend(["team/exists".to_owned(), "team/dir/inside".to_owned()]);
    assert_eq!(files_on_disk(&server), all, "only the good files were added");
    assert!(server.staging_drains().await, "nothing staged after the stream: {:?}", server.snapshot());
    let after = server.snapshot();
    for (path, _) in before.iter() {
        assert!(after.contains_key(path), "{path} disappeared");
    }
    assert_eq!(std::fs::read(server.outside().join("secret")).expect("outside"), b"outside the root");
}

/// Limits apply per file: over the quota or the size limit, a file is
/// RESOURCE_EXHAUSTED, while earlier and later files that fit are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_size_limit_refuse_single_files() {
    let limits = Limits { quota_bytes: Some(100_000), ..Limits::default() };
    let server = TestServer::start_with(ServerOptions { limits, ..Default::default() }).await;
    let raw = server.raw().await;
    let sizes: [(usize, bool, Code); 7] = [
        (40_000, true, Code::Ok),                 // 40 000 used
        (40_000, true, Code::Ok),                 // 80 000
        (40_000, true, Code::ResourceExhausted),  // would be 120 000
        (15_000, true, Code::Ok),                 // 95 000
        (10_000, false, Code::ResourceExhausted), // grows past 100 000
        (5_000, false, Code::Ok),                 // exactly 100 000
        (1, true, Code::ResourceExhausted),       // full
    ];
    let mut messages = Vec::new();
    for (i, (size, declared, _)) in sizes.iter().enumerate() {
        messages.extend(file_msgs(&format!("q/{i}"), &random_bytes(*size, i as u64), *declared, true));
    }
    let (answers, status) = upload_files_raw(&raw, None, messages).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(answers.len(), sizes.len(), "{answers:#?}");
    for (i, (size, _, code)) in sizes.iter().enumerate() {
        let path = format!("q/{i}");
        match code {
            Code::Ok => {
                assert_eq!(stored(&answers, i).size, *size as u64);
                assert!(std::fs::read(server.root().join(&path)).expect("stored") == random_bytes(*size, i as u64));
            }
            code => {
                let error = refused(&answers, i, &path, *code);
                assert!(error.message.contains("quota"), "the message names the quota: {}", error.message);
                assert!(!server.root().join(&path).exists(), "{path}: refused but stored");
            }
        }
    }
    assert!(server.staging_drains().await);

    let limits = Limits { max_file_size: Some(50_000), ..Limits::default() };
    let server = TestServer::start_with(ServerOptions { limits, ..Default::default() }).await;
    let raw = server.raw().await;
    let sizes: [(usize, bool, Code); 5] = [
        (50_000, true, Code::Ok),
        (50_001, true, Code::ResourceExhausted),
        (60_000, false, Code::ResourceExhausted),
        (2 * MIB, true, Code::ResourceExhausted),
        (50_000, false, Code::Ok),
    ];
    let mut messages = Vec::new();
    for (i, (size, declared, _)) in sizes.iter().enumerate() {
        messages.extend(file_msgs(&format!("m/{i}"), &random_bytes(*size, i as u64), *declared, true));
    }
    let (answers, status) = upload_files_raw(&raw, None, messages).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(answers.len(), sizes.len(), "{answers:#?}");
    for (i, (size, _, code)) in sizes.iter().enumerate() {
        let path = format!("m/{i}");
        match code {
            Code::Ok => assert_eq!(stored(&answers, i).size, *size as u64),
            code => {
                refused(&answers, i, &path, *code);
                assert!(!server.root().join(&path).exists(), "{path}: refused but stored");
            }
        }
    }
    assert!(server.staging_drains().await);
}

/// The quota counts what is stored: a path sent twice in one stream (the
/// second replaces the first) counts once, so what is left of the quota
/// is still usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_a_path_sent_twice_in_one_stream_once() {
    let limits = Limits { quota_bytes: Some(100_000), ..Limits::default() };
    let server = TestServer::start_with(ServerOptions { limits, ..Default::default() }).await;
    let raw = server.raw().await;
    let (first, second) = (random_bytes(40_000, 1), random_bytes(40_000, 2));
    let mut messages = file_msgs("dup/f", &first, true, true);
    messages.extend(file_msgs("dup/f", &second, true, true));
    let (answers, status) = upload_files_raw(&raw, None, messages).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!((stored(&answers, 0).size, stored(&answers, 1).size), (40_000, 40_000));
    assert!(std::fs::read(server.root().join("dup/f")).expect("dup/f") == second, "the second version wins");
    let used = sample(&render(&server).await, "ferry_quota_used_bytes");
    assert_eq!(used, Some(40_000.0), "one 40 000-byte file is stored");
    // So 60 000 bytes more fit.
    let client = server.client().await;
    let stored = upload_bytes(&client, "dup/rest", &random_bytes(60_000, 3)).await;
    assert_eq!(stored.expect("60 000 bytes fit in what is left").size, 60_000);
}

/// At a symbolic link or a special file, a file of a multi-file stream
/// fails as it would alone (`Upload`): through a link to a directory or
/// over a link, PERMISSION_DENIED; over a FIFO, FAILED_PRECONDITION; small
/// (batched) or large (streamed) alike. The links and the FIFOs stay, and
/// nothing is written outside the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_special_files_are_refused_as_upload_refuses_them() {
    use std::os::unix::fs::FileTypeExt;
    let server = TestServer::start().await;
    let raw = server.raw().await;
    std::os::unix::fs::symlink(server.outside(), server.root().join("link")).expect("dir symlink");
    for size in ["small", "large"] {
        let link = server.root().join(format!("filelink-{size}"));
        std::os::unix::fs::symlink(server.outside().join("secret"), link).expect("file symlink");
        let fifo = std::process::Command::new("mkfifo").arg(server.root().join(format!("fifo-{size}"))).status();
        assert!(fifo.expect("run mkfifo").success(), "mkfifo failed");
    }
    let before = server.snapshot();
    let (small, big) = (random_bytes(100, 1), random_bytes(MIB + 100, 2));
    let cases = [
        ("link/planted-{size}", Code::PermissionDenied),
        ("filelink-{size}", Code::PermissionDenied),
        ("fifo-{size}", Code::FailedPrecondition),
    ];
    let mut messages = Vec::new();
    let mut expected = Vec::new();
    for (pattern, code) in cases {
        for (size, data) in [("small", &small), ("large", &big)] {
            let path = pattern.replace("{size}", size);
            // The reference: the same path alone, through Upload.
            let alone = raw.clone().upload(tokio_stream::iter(file_msgs(&path, &small, true, true))).await;
            assert_eq!(alone.expect_err(&path).code(), code, "{path} through Upload");
            messages.extend(file_msgs(&path, data, true, true));
            expected.push((path.clone(), code, size));
            let good = format!("good-after-{}", path.replace('/', "-"));
            messages.extend(file_msgs(&good, &small, true, true));
            expected.push((good, Code::Ok, "small"));
        }
    }
    let (answers, status) = upload_files_raw(&raw, None, messages).await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(answers.len(), expected.len(), "{answers:#?}");
    let mut failures = Vec::new();
    for (i, (path, code, size)) in expected.iter().enumerate() {
        let got = match &answers[i].result {
            Some(Outcome::File(_)) => Code::Ok,
            Some(Outcome::Error(error)) => Code::from_i32(error.code),
            None => Code::Unknown,
        };
        assert_eq!(answers[i].index, i as u64);
        if got != *code {
            failures.push(format!("{path} ({size} file): expected {code:?}, got {got:?}"));
        }
        let kind = std::fs::symlink_metadata(server.root().join(path)).map(|m| m.file_type());
        if path.starts_with("filelink") && !kind.as_ref().is_ok_and(|k| k.is_symlink()) {
            failures.push(format!("{path}: the symbolic link was replaced ({kind:?})"));
        }
        if path.starts_with("fifo") && !kind.as_ref().is_ok_and(|k| k.is_fifo()) {
            failures.push(format!("{path}: the FIFO was replaced ({kind:?})"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(std::fs::read(server.outside().join("secret")).expect("secret"), b"outside the root");
    let after = server.snapshot();
    let outside_changed: Vec<_> =
        after.keys().filter(|p| p.starts_with("outside") && before.get(*p) != after.get(*p)).collect();
    assert!(outside_changed.is_empty(), "written outside the root: {outside_changed:?}");
    assert!(server.staging_drains().await);
}
