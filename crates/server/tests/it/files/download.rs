//! `DownloadFiles`: each path answered in order with its file or a
//! FileError, the read scope checked per path, and the client writing
//! targets with their metadata.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_client::DownloadTarget;
use ferry_proto::v1::download_files_response::Kind as Part;
use ferry_proto::v1::{DownloadFilesRequest, EntryKind, FileInfo};
use tonic::{Code, Status};

use super::{MIB, READER, Raw, WRITER, put, scoped_options, with_auth};
use crate::harness::{TestServer, random_bytes, sha256_hex};

/// What a DownloadFiles stream said, file by file.
#[derive(Debug, PartialEq)]
enum Got {
    File { info: FileInfo, data: Vec<u8> },
    Error { path: String, code: Code },
}

async fn download_files_raw(raw: &Raw, auth: Option<&str>, paths: Vec<String>) -> Result<Vec<Got>, Status> {
    let mut raw = raw.clone();
    let work = async move {
        let mut stream = raw.download_files(with_auth(DownloadFilesRequest { paths }, auth)).await?.into_inner();
        let mut got = Vec::new();
        while let Some(message) = stream.message().await? {
            match message.kind.expect("a message with content") {
                Part::Info(info) => got.push(Got::File { info, data: Vec::new() }),
                Part::Chunk(chunk) => match got.last_mut() {
                    Some(Got::File { data, .. }) => data.extend_from_slice(&chunk.data),
                    other => panic!("a chunk after {other:?}"),
                },
                Part::Error(error) => {
                    got.push(Got::Error { path: error.path, code: Code::from_i32(error.code) });
                }
            }
        }
        Ok(got)
    };
    tokio::time::timeout(Duration::from_secs(30), work).await.expect("the DownloadFiles call must end")
}

#[track_caller]
fn expect_file(got: &Got, path: &str, data: &[u8]) {
    match got {
        Got::File { info, data: received } => {
            assert_eq!(
                (info.path.as_str(), info.kind, info.size, info.sha256.as_str()),
                (path, EntryKind::File as i32, data.len() as u64, sha256_hex(data).as_str()),
                "{path}: its info"
            );
            assert!(received == data, "{path}: {} bytes received that differ", received.len());
        }
        other => panic!("{path}: expected the file, got {other:?}"),
    }
}

/// Several files in order, small and large, their info then their bytes;
/// a path that cannot be sent gets a FileError in its place (missing:
/// NOT_FOUND, a directory: FAILED_PRECONDITION, invalid: INVALID_ARGUMENT)
/// and the files after it still come. Up to 4096 paths; more is
/// INVALID_ARGUMENT for the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_files_sends_each_path_in_order() {
    let server = TestServer::start().await;
    let raw = server.raw().await;
    let (a, big, c) = (random_bytes(1234, 1), random_bytes(3 * MIB + 5, 2), random_bytes(70_000, 3));
    put(&server, "dl/a.txt", &a);
    put(&server, "dl/big.bin", &big);
    put(&server, "dl/empty", b"");
    put(&server, "dl/sub/c.txt", &c);
    std::os::unix::fs::symlink(server.outside().join("secret"), server.root().join("dl/link")).expect("symlink");

    let paths =
        ["dl/a.txt", "dl/missing", "dl/big.bin", "dl/empty", "dl", "../x", "dl/link", "dl/sub/c.txt", "dl/a.txt"];
    let got = download_files_raw(&raw, None, paths.map(String::from).to_vec()).await.expect("the call");
    assert_eq!(got.len(), paths.len(), "one entry per path: {:?}", got.iter().map(short).collect::<Vec<_>>());
    expect_file(&got[0], "dl/a.txt", &a);
    assert_eq!(got[1], Got::Error { path: "dl/missing".into(), code: Code::NotFound });
    expect_file(&got[2], "dl/big.bin", &big);
    expect_file(&got[3], "dl/empty", b"");
    assert_eq!(got[4], Got::Error { path: "dl".into(), code: Code::FailedPrecondition });
    assert_eq!(got[5], Got::Error { path: "../x".into(), code: Code::InvalidArgument });
    assert_eq!(got[6], Got::Error { path: "dl/link".into(), code: Code::PermissionDenied });
    expect_file(&got[7], "dl/sub/c.txt", &c);
    expect_file(&got[8], "dl/a.txt", &a);

    // No paths: an empty stream.
    assert_eq!(download_files_raw(&raw, None, Vec::new()).await.expect("no paths"), Vec::new());
    // 4096 paths are fine; 4097 are refused before anything is sent.
    let many: Vec<String> = (0..4096).map(|i| if i % 2 == 0 { "dl/empty" } else { "dl/a.txt" }.into()).collect();
    let got = download_files_raw(&raw, None, many.clone()).await.expect("4096 paths");
    assert_eq!(got.len(), 4096);
    for (i, entry) in got.iter().enumerate() {
        match i % 2 {
            0 => expect_file(entry, "dl/empty", b""),
            _ => expect_file(entry, "dl/a.txt", &a),
        }
    }
    let mut too_many = many;
    too_many.push("dl/a.txt".into());
    let status = download_files_raw(&raw, None, too_many).await.expect_err("4097 paths");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

fn short(got: &Got) -> String {
    match got {
        Got::File { info, data } => format!("{} ({} bytes)", info.path, data.len()),
        Got::Error { path, code } => format!("{path}: {code:?}"),
    }
}

/// A caller's read scope applies per path: a path outside it is a
/// PERMISSION_DENIED FileError, and the paths around it are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_files_checks_each_path_against_the_read_scope() {
    let server = TestServer::start_with(scoped_options()).await;
    let raw = server.raw().await;
    put(&server, "team/a.txt", b"team a\n");
    put(&server, "team/c.txt", b"team c\n");
    put(&server, "other/b.txt", b"other b\n");
    let paths: Vec<String> = ["team/a.txt", "other/b.txt", "other/missing", "team/c.txt"].map(String::from).to_vec();
    for token in [READER, WRITER] {
        let got = download_files_raw(&raw, Some(token), paths.clone()).await.expect("the call");
        assert_eq!(got.len(), 4, "{token}: {got:?}");
        expect_file(&got[0], "team/a.txt", b"team a\n");
        // Outside the scope, existing or not: the same answer.
        assert_eq!(got[1], Got::Error { path: "other/b.txt".into(), code: Code::PermissionDenied }, "{token}");
        assert_eq!(got[2], Got::Error { path: "other/missing".into(), code: Code::PermissionDenied }, "{token}");
        expect_file(&got[3], "team/c.txt", b"team c\n");
    }
    let status = download_files_raw(&raw, None, paths).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
}

/// Walks `dir` for leftovers of downloads (`.ferry-part` files).
fn part_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(part_files(&path));
        } else if path.to_string_lossy().contains("ferry-part") {
            found.push(path.display().to_string());
        }
    }
    found
}

/// `Client::download_files` writes each file to its target with the
/// server's mtime and permission bits; without `overwrite` it refuses an
/// existing target (untouched) and still writes the others; a missing remote
/// file fails alone; no temporary file is ever left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_download_files_writes_targets_with_metadata() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let upload = |path: &'static str, data: Vec<u8>, mtime: SystemTime, permissions: u32| {
        let client = client.clone();
        async move {
            let options = ferry_client::UploadOptions {
                size: Some(data.len() as u64),
                mtime: Some(mtime),
                permissions: Some(permissions),
                ..Default::default()
            };
            client.upload(path, std::io::Cursor::new(data), options, |_| {}).await.expect("upload");
        }
    };
    let t = |secs: u64| UNIX_EPOCH + Duration::new(secs, 987_654_321);
    let (a, big, c) = (random_bytes(4321, 1), random_bytes(2 * MIB + 99, 2), random_bytes(10, 3));
    upload("get/a.txt", a.clone(), t(1_400_000_000), 0o640).await;
    upload("get/big.bin", big.clone(), t(1_500_000_000), 0o755).await;
    upload("get/empty", Vec::new(), t(1_600_000_000), 0o600).await;
    upload("get/sub/c.txt", c.clone(), t(1_700_000_000), 0o644).await;

    let local = tempfile::tempdir().expect("temp dir");
    let dir = local.path();
    std::fs::write(dir.join("a.txt"), b"local, keep me").expect("an existing target");
    let target = |remote: &str, name: &str| DownloadTarget { remote: remote.into(), local: dir.join(name) };
    let targets = vec![
        target("get/a.txt", "a.txt"),
        target("get/big.bin", "big.bin"),
        target("get/missing", "missing"),
        target("get/empty", "empty"),
        target("get/sub/c.txt", "no-such-dir/c.txt"),
        target("get/sub/c.txt", "c.txt"),
    ];
    let results = client.download_files(targets.clone(), false).await.expect("the stream");
    assert_eq!(results.len(), targets.len());
    match &results[0] {
        Err(ferry_client::Error::LocalExists(path)) => assert_eq!(path, &dir.join("a.txt")),
        other => panic!("an existing target without overwrite: {other:?}"),
    }
    assert_eq!(std::fs::read(dir.join("a.txt")).expect("a.txt"), b"local, keep me", "the existing target changed");
    assert_eq!(results[2].as_ref().expect_err("missing").code(), Some(Code::NotFound));
    assert!(!dir.join("missing").exists());
    assert!(results[4].is_err(), "a target in a missing directory: {:?}", results[4]);
    assert!(!dir.join("no-such-dir").exists());
    let local_meta = |name: &str| {
        let meta = std::fs::metadata(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        (meta.modified().expect("mtime"), meta.permissions().mode() & 0o777)
    };
    for (i, name, data, mtime, mode) in [
        (1, "big.bin", &big, t(1_500_000_000), 0o755),
        (3, "empty", &Vec::new(), t(1_600_000_000), 0o600),
        (5, "c.txt", &c, t(1_700_000_000), 0o644),
    ] {
        let file = results[i].as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((file.size, file.sha256.as_deref()), (data.len() as u64, Some(sha256_hex(data).as_str())), "{name}");
        assert!(std::fs::read(dir.join(name)).expect("downloaded") == *data, "{name}: the bytes differ");
        assert_eq!(local_meta(name), (mtime, mode), "{name}: mtime and mode");
    }
    assert_eq!(part_files(dir), Vec::<String>::new(), "temporary files left behind");

    // With overwrite: the existing target is replaced, the rest again.
    let results = client.download_files(targets, true).await.expect("the stream");
    let a_file = results[0].as_ref().expect("a.txt with overwrite");
    assert_eq!(a_file.sha256.as_deref(), Some(sha256_hex(&a).as_str()));
    assert_eq!(std::fs::read(dir.join("a.txt")).expect("a.txt"), a);
    assert_eq!(local_meta("a.txt"), (t(1_400_000_000), 0o640), "a.txt: mtime and mode");
    assert!(results[1].is_ok() && results[3].is_ok() && results[5].is_ok(), "{results:?}");
    assert_eq!(results[2].as_ref().expect_err("missing").code(), Some(Code::NotFound));
    assert!(std::fs::read(dir.join("big.bin")).expect("big.bin") == big);
    assert_eq!(part_files(dir), Vec::<String>::new(), "temporary files left behind");
}
