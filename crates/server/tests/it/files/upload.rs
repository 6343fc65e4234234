//! `UploadFiles`, files sent and answered: a tree of small files and a
//! large one through the client, every way the raw protocol may send a
//! file, a lone file answered with the stream left open, and the client's
//! answer per file.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_client::LocalFile;
use ferry_proto::v1::EntryKind;
use ferry_proto::v1::upload_files_response::Result as Outcome;
use ferry_proto::v1::upload_request::Kind;
use tonic::Code;

use super::{Held, MIB, disk_meta, file_msgs, files_on_disk, mtime_of, stored, upload_files_raw};
use crate::harness::{TestServer, random_bytes, sha256_hex, upload_bytes};

/// 300 small files (0..8 KiB, some empty, in nested directories, with
/// various mtimes and permission bits) and one of 3 MiB among them, through
/// `Client::upload_files`: one result per file, in order, each with the
/// right size, digest, mtime and permissions; on disk byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_uploads_a_tree_of_small_files_and_a_large_one() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let local = tempfile::tempdir().expect("temp dir");
    let modes = [0o644, 0o600, 0o640, 0o755, 0o700];
    let mut expected = Vec::new();
    let mut files = Vec::new();
    for i in 0..301usize {
        let (remote, data) = match i {
            150 => ("tree/big.bin".to_owned(), random_bytes(3 * MIB + 17, 1000)),
            _ => {
                let size = if i % 37 == 0 { 0 } else { (i * 997) % (8 * 1024 + 1) };
                (format!("tree/d{}/f{i:03}.bin", i % 7), random_bytes(size, i as u64))
            }
        };
        let source = local.path().join(format!("src-{i}"));
        std::fs::write(&source, &data).expect("write source");
        let mtime = UNIX_EPOCH + Duration::new(1_500_000_000 + i as u64 * 3600, (i as u32) * 1000);
        let mode = modes[i % modes.len()];
        let handle = std::fs::File::options().write(true).open(&source).expect("open source");
        handle.set_modified(mtime).expect("set mtime");
        handle.set_permissions(std::fs::Permissions::from_mode(mode)).expect("set mode");
        files.push(LocalFile { local: source, remote: remote.clone(), create_only: false });
        expected.push((remote, data, mtime, mode));
    }
    assert!(expected.iter().filter(|(_, data, ..)| data.is_empty()).count() >= 8, "some empty files");

    let results = tokio::time::timeout(Duration::from_secs(60), client.upload_files(files))
        .await
        .expect("upload_files must finish")
        .expect("the stream");
    assert_eq!(results.len(), expected.len(), "one result per file");
    for (result, (remote, data, mtime, mode)) in results.iter().zip(&expected) {
        let file = result.as_ref().unwrap_or_else(|e| panic!("{remote}: {e}"));
        assert_eq!(
            (file.path.as_str(), file.is_dir, file.size, file.sha256.as_deref()),
            (remote.as_str(), false, data.len() as u64, Some(sha256_hex(data).as_str())),
            "{remote}: the answer"
        );
        assert_eq!((file.mtime, file.permissions), (Some(*mtime), *mode), "{remote}: the answer's metadata");
        let on_disk = std::fs::read(server.root().join(remote)).expect("stored file");
        assert!(on_disk == *data, "{remote}: the stored bytes differ");
        assert_eq!(disk_meta(&server, remote), (*mtime, *mode), "{remote}: mtime and mode on disk");
    }
    let all: BTreeSet<String> = expected.iter().map(|(remote, ..)| remote.clone()).collect();
    assert_eq!(files_on_disk(&server), all, "exactly these files are stored");
    assert!(server.staging_drains().await, "nothing staged after the stream");
}

/// The raw protocol, every way a file may be sent: size declared or not,
/// with or without finish (finish required without a size), empty, small
/// (batched) and over 1 MiB (streamed), with mtime and permissions or
/// without. Answers: one per file, index 0..n in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_stream_answers_every_kind_of_file_in_order() {
    let server = TestServer::start().await;
    let raw = server.raw().await;
    let mtime = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    struct Sent {
        path: &'static str,
        data: Vec<u8>,
        declared: bool,
        with_finish: bool,
    }
    let sent = [
        Sent { path: "k/small-declared-finish", data: random_bytes(5000, 1), declared: true, with_finish: true },
        Sent { path: "k/small-declared-no-finish", data: random_bytes(4096, 2), declared: true, with_finish: false },
        Sent { path: "k/unsized-small", data: random_bytes(3000, 3), declared: false, with_finish: true },
        Sent { path: "k/empty-declared", data: Vec::new(), declared: true, with_finish: false },
        Sent { path: "k/empty-unsized", data: Vec::new(), declared: false, with_finish: true },
        Sent { path: "k/large-declared", data: random_bytes(2 * MIB + 3, 4), declared: true, with_finish: false },
        Sent { path: "k/exactly-1mib", data: random_bytes(MIB, 5), declared: true, with_finish: true },
        Sent { path: "k/large-unsized", data: random_bytes(MIB + 1, 6), declared: false, with_finish: true },
        Sent { path: "k/deep/er/small", data: random_bytes(10, 7), declared: true, with_finish: true },
        Sent { path: "k/last", data: random_bytes(100, 8), declared: true, with_finish: false },
    ];
    let mut messages = Vec::new();
    for (i, file) in sent.iter().enumerate() {
        let mut file_messages = file_msgs(file.path, &file.data, file.declared, file.with_finish);
        if i % 2 == 1 {
            // Every other file carries an mtime, permission bits and the digest up front.
            let Some(Kind::Header(header)) = &mut file_messages[0].kind else { unreachable!() };
            header.mtime = Some(mtime.into());
            header.permissions = Some(0o750);
            header.sha256 = sha256_hex(&file.data);
        }
        messages.extend(file_messages);
    }
    let before = SystemTime::now() - Duration::from_secs(5);
    let (answers, status) = upload_files_raw(&raw, None, messages).await;
    assert!(status.is_none(), "the call ends OK: {status:?}");
    assert_eq!(answers.len(), sent.len(), "one answer per file: {answers:#?}");
    for (i, file) in sent.iter().enumerate() {
        let info = stored(&answers, i);
        assert_eq!(
            (info.path.as_str(), info.kind, info.size, info.sha256.as_str()),
            (file.path, EntryKind::File as i32, file.data.len() as u64, sha256_hex(&file.data).as_str()),
            "{}: the answer",
            file.path
        );
        let (want_mtime, want_mode) = if i % 2 == 1 { (Some(mtime), 0o750) } else { (None, 0o644) };
        assert_eq!(info.permissions, want_mode, "{}: permissions", file.path);
        match want_mtime {
            Some(want) => assert_eq!(mtime_of(info), want, "{}: mtime", file.path),
            None => assert!(mtime_of(info) >= before, "{}: the mtime is about now", file.path),
        }
        assert_eq!(disk_meta(&server, file.path), (mtime_of(info), want_mode), "{}: on disk", file.path);
        let on_disk = std::fs::read(server.root().join(file.path)).expect("stored file");
        assert!(on_disk == file.data, "{}: the stored bytes differ", file.path);
    }
    assert!(server.staging_drains().await, "nothing staged after the stream");
}

/// The group commit does not wait for more files: a client that sends one
/// whole file (finish included) and then waits, stream still open, gets
/// its answer. The same for the next file, batched or streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_file_is_answered_without_closing_the_stream() {
    let server = TestServer::start().await;
    let raw = server.raw().await;
    let mut held = Held::open(&raw);
    let files = [
        ("lone/one", random_bytes(100, 1), true),
        ("lone/two", random_bytes(5000, 2), true),
        ("lone/three-unsized", random_bytes(300, 3), false),
        ("lone/four-big", random_bytes(MIB + 1, 4), true),
    ];
    for (i, (path, data, declared)) in files.iter().enumerate() {
        held.send(file_msgs(path, data, *declared, true)).await;
        let answer = held.answer(&format!("{path}, sent whole with the stream left open")).await.expect("an answer");
        assert_eq!(answer.index, i as u64);
        match answer.result {
            Some(Outcome::File(info)) => assert_eq!((info.path.as_str(), info.size), (*path, data.len() as u64)),
            other => panic!("{path}: {other:?}"),
        }
        assert!(std::fs::read(server.root().join(path)).expect("stored before its answer") == *data);
    }
    let rest = held.close().await;
    assert!(rest.is_empty(), "nothing more after the close: {rest:?}");
}

/// `Client::upload_files` answers per file: a local file that cannot be
/// read and a create-only file that exists remotely fail alone, and the
/// others are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_upload_files_reports_each_file() {
    let server = TestServer::start().await;
    let client = server.client().await;
    upload_bytes(&client, "each/exists", b"remote").await.expect("upload");
    let local = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, data: &[u8]| {
        std::fs::write(local.path().join(name), data).expect("write");
        local.path().join(name)
    };
    let file = |local, remote: &str, create_only| LocalFile { local, remote: remote.into(), create_only };
    let files = vec![
        file(write("a", b"a"), "each/a", false),
        file(local.path().join("missing"), "each/missing", false),
        file(write("b", b"bb"), "each/b", false),
        file(write("c", b"ccc"), "each/exists", true),
        file(write("d", b"dddd"), "each/d", true),
        file(write("e", b"eeeee"), "each/exists/below", false),
        file(write("f", b"ffffff"), "each/f", false),
    ];
    let results = client.upload_files(files).await.expect("the stream");
    assert_eq!(results.len(), 7);
    for (i, (path, size)) in [(0, ("each/a", 1)), (2, ("each/b", 2)), (4, ("each/d", 4)), (6, ("each/f", 6))] {
        let stored = results[i].as_ref().unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!((stored.path.as_str(), stored.size), (path, size));
        assert_eq!(std::fs::metadata(server.root().join(path)).expect("stored").len(), size);
    }
    assert!(
        matches!(&results[1], Err(ferry_client::Error::Io { .. })),
        "a local file that cannot be read: {:?}",
        results[1]
    );
    assert_eq!(results[3].as_ref().expect_err("create-only").code(), Some(Code::AlreadyExists));
    assert_eq!(results[5].as_ref().expect_err("below a file").code(), Some(Code::FailedPrecondition));
    assert_eq!(std::fs::read(server.root().join("each/exists")).expect("untouched"), b"remote");
    assert!(!server.root().join("each/missing").exists());
    assert!(server.staging_drains().await);
}
