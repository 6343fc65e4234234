//! Many files per stream: `UploadFiles` (bidirectional, one answer per
//! file, in order), `DownloadFiles` (server streaming, info + chunks or a
//! FileError per path) and `MakeDirectory` (unary, idempotent). Protocol
//! cases go through the raw generated stub; the happy paths through the
//! real client (`Client::upload_files`, `download_files`, `make_directory`).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_client::{DownloadTarget, LocalFile};
use ferry_proto::v1::download_files_response::Kind as Part;
use ferry_proto::v1::ferry_client::FerryClient;
use ferry_proto::v1::upload_files_response::Result as Outcome;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{
    Chunk, DownloadFilesRequest, EntryKind, FileError, FileInfo, ListRequest, MakeDirectoryRequest,
    UploadFilesResponse, UploadFinish, UploadHeader, UploadRequest, WriteMode,
};
use ferry_server::auth::token_digest;
use ferry_server::{AuthOptions, Grant, Limits, Permission, Scope, ServerOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::harness::{TestServer, random_bytes, sha256_hex, upload_bytes};
use crate::metrics::{render, sample};

type Raw = FerryClient<Channel>;

const MIB: usize = 1024 * 1024;
/// How long an answer the server owes may take before the test says it hangs.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Messages.

fn header_msg(header: UploadHeader) -> UploadRequest {
    UploadRequest { kind: Some(Kind::Header(header)) }
}

/// A header declaring `size` (or not), nothing else.
fn header(path: &str, size: Option<u64>) -> UploadRequest {
    header_msg(UploadHeader { path: path.into(), size, ..Default::default() })
}

/// A chunk with its correct CRC32C.
fn chunk(data: &[u8]) -> UploadRequest {
    UploadRequest { kind: Some(Kind::Chunk(Chunk { data: data.to_vec().into(), crc32c: Some(crc32c::crc32c(data)) })) }
}

fn finish(sha256: &str) -> UploadRequest {
    UploadRequest { kind: Some(Kind::Finish(UploadFinish { sha256: sha256.into() })) }
}

/// `data` as chunks of at most 1 MiB (none for an empty file).
fn chunks(data: &[u8]) -> Vec<UploadRequest> {
    data.chunks(MIB).map(chunk).collect()
}

/// One whole file: header (declaring the size or not), chunks, and a finish
/// with the digest (or no finish at all).
fn file_msgs(path: &str, data: &[u8], declared: bool, with_finish: bool) -> Vec<UploadRequest> {
    let mut messages = vec![header(path, declared.then_some(data.len() as u64))];
    messages.extend(chunks(data));
    if with_finish {
        messages.push(finish(&sha256_hex(data)));
    }
    messages
}

fn with_auth<T>(message: T, auth: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = auth {
        let value = format!("Bearer {token}").parse().expect("an ASCII header value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Sends `messages` as one UploadFiles stream (half-closed after the last)
/// and reads every answer: the answers, and the status that ended the call
/// if it was not OK (also when the call was refused outright).
async fn upload_files_raw(
    raw: &Raw,
    auth: Option<&str>,
    messages: Vec<UploadRequest>,
) -> (Vec<UploadFilesResponse>, Option<Status>) {
    let mut raw = raw.clone();
    let work = async move {
        let mut replies = match raw.upload_files(with_auth(tokio_stream::iter(messages), auth)).await {
            Ok(replies) => replies.into_inner(),
            Err(status) => return (Vec::new(), Some(status)),
        };
        let mut answers = Vec::new();
        loop {
            match replies.message().await {
                Ok(Some(answer)) => answers.push(answer),
                Ok(None) => return (answers, None),
                Err(status) => return (answers, Some(status)),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work).await.expect("the UploadFiles call must end")
}

/// The stored file of answer `index`, which must be a success.
#[track_caller]
fn stored(answers: &[UploadFilesResponse], index: usize) -> &FileInfo {
    let answer = &answers[index];
    assert_eq!(answer.index, index as u64, "answer {index} is out of order: {answers:#?}");
    match &answer.result {
        Some(Outcome::File(info)) => info,
        other => panic!("file #{index}: expected it stored, got {other:?}"),
    }
}

/// The error of answer `index`, which must be a FileError for `path` with `code`.
#[track_caller]
fn refused(answers: &[UploadFilesResponse], index: usize, path: &str, code: Code) -> FileError {
    let answer = &answers[index];
    assert_eq!(answer.index, index as u64, "answer {index} is out of order: {answers:#?}");
    match &answer.result {
        Some(Outcome::Error(error)) => {
            assert_eq!(
                (error.path.as_str(), Code::from_i32(error.code)),
                (path, code),
                "file #{index}: wrong error ({})",
                error.message
            );
            error.clone()
        }
        other => panic!("file #{index} ({path}): expected {code:?}, got {other:?}"),
    }
}

/// Every regular file under the served root (`.ferry` aside), relative.
fn files_on_disk(server: &TestServer) -> BTreeSet<String> {
    server
        .snapshot()
        .keys()
        .filter_map(|p| p.strip_prefix("root/"))
        .filter(|p| !p.starts_with(".ferry") && server.root().join(p).is_file())
        .map(str::to_owned)
        .collect()
}

fn mtime_of(info: &FileInfo) -> SystemTime {
    SystemTime::try_from(info.mtime.expect("an mtime")).expect("a valid mtime")
}

fn disk_meta(server: &TestServer, path: &str) -> (SystemTime, u32) {
    let meta = std::fs::metadata(server.root().join(path)).unwrap_or_else(|e| panic!("{path} on disk: {e}"));
    (meta.modified().expect("mtime"), meta.permissions().mode() & 0o777)
}

// ---------------------------------------------------------------------------
// A held stream: messages go out one by one, answers are read as they come.

struct Held {
    tx: mpsc::Sender<UploadRequest>,
    answers: mpsc::UnboundedReceiver<Result<UploadFilesResponse, Status>>,
    call: JoinHandle<()>,
}

impl Held {
    fn open(raw: &Raw) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let mut raw = raw.clone();
        let call = tokio::spawn(async move {
            let mut replies = match raw.upload_files(ReceiverStream::new(rx)).await {
                Ok(replies) => replies.into_inner(),
                Err(status) => {
                    let _ = answers_tx.send(Err(status));
                    return;
                }
            };
            loop {
                match replies.message().await {
                    Ok(Some(answer)) => {
                        let _ = answers_tx.send(Ok(answer));
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = answers_tx.send(Err(status));
                        return;
                    }
                }
            }
        });
        Self { tx, answers, call }
    }

    async fn send(&self, messages: Vec<UploadRequest>) {
        for message in messages {
            self.tx.send(message).await.expect("the stream is open");
        }
    }

    /// The next answer, which must come within [`ANSWER_WITHIN`].
    async fn answer(&mut self, what: &str) -> Result<UploadFilesResponse, Status> {
        match tokio::time::timeout(ANSWER_WITHIN, self.answers.recv()).await {
            Ok(Some(answer)) => answer,
            Ok(None) => panic!("{what}: the call ended without this answer"),
            Err(_) => panic!("{what}: no answer within {ANSWER_WITHIN:?} (the server is holding it back)"),
        }
    }

    /// Half-closes the stream and collects what is left, up to the end of the call.
    async fn close(mut self) -> Vec<Result<UploadFilesResponse, Status>> {
        drop(self.tx);
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(answer) = self.answers.recv().await {
                rest.push(answer);
            }
        })
        .await;
        assert!(ended.is_ok(), "the call must end after the stream is closed (got {rest:?})");
        self.call.await.expect("the call task");
        rest
    }
}

// ---------------------------------------------------------------------------
// Tokens.

const WRITER: &str = "files-writer-secret";
const READER: &str = "files-reader-secret";

/// WRITER: everything under `team/`; READER: read and list under `team/`.
fn scoped_options() -> ServerOptions {
    let grant = |name: &str, permissions: &[Permission]| Grant {
        name: name.into(),
        scopes: vec![Scope::new("team/", permissions.iter().copied()).expect("scope")],
        requests_per_second: None,
        bytes_per_second: None,
    };
    let tokens = vec![
        (token_digest(WRITER), grant("writer", &Permission::ALL)),
        (token_digest(READER), grant("reader", &[Permission::Read, Permission::List])),
    ];
    ServerOptions { auth: AuthOptions { tokens, clients: Vec::new() }, ..Default::default() }
}

fn put(server: &TestServer, path: &str, data: &[u8]) {
    let full = server.root().join(path);
    std::fs::create_dir_all(full.parent().expect("a parent")).expect("create dirs");
    std::fs::write(full, data).expect("write file");
}

// ---------------------------------------------------------------------------
// UploadFiles.

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
        held.send(file_msgs(&never, &data, true, true)).await;
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

// ---------------------------------------------------------------------------
// DownloadFiles.

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

// ---------------------------------------------------------------------------
// MakeDirectory.

async fn list_all(raw: &Raw, auth: Option<&str>, path: &str, recursive: bool) -> Vec<(String, bool)> {
    let request = with_auth(ListRequest { path: path.into(), recursive }, auth);
    let mut stream = raw.clone().list(request).await.expect("list").into_inner();
    let mut entries = Vec::new();
    while let Some(batch) = stream.message().await.expect("a batch") {
        entries.extend(batch.entries.into_iter().map(|e| (e.path, e.kind == EntryKind::Directory as i32)));
    }
    entries
}

/// MakeDirectory makes a directory and its parents (listed as directories,
/// the empty leaf too), succeeds again on an existing one, refuses a file
/// in the way (ALREADY_EXISTS at the path, FAILED_PRECONDITION at a
/// parent) and an invalid path (INVALID_ARGUMENT), changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_directory_creates_nested_directories_idempotently() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let raw = server.raw().await;

    let made = client.make_directory("m/a/b").await.expect("make m/a/b");
    assert_eq!((made.path.as_str(), made.is_dir, made.size, made.sha256), ("m/a/b", true, 0, None));
    for dir in ["m", "m/a", "m/a/b"] {
        assert!(server.root().join(dir).is_dir(), "{dir} on disk");
        assert!(client.stat(dir).await.expect("stat").is_dir, "{dir}: stat");
    }
    let dir = |p: &str| (p.to_owned(), true);
    let file = |p: &str| (p.to_owned(), false);
    assert_eq!(list_all(&raw, None, "", true).await, [dir("m"), dir("m/a"), dir("m/a/b")]);
    assert_eq!(list_all(&raw, None, "m/a/b", false).await, []);

    // Idempotent, also for a parent, and beside an existing one.
    for again in ["m/a/b", "m/a", "m"] {
        let made = client.make_directory(again).await.unwrap_or_else(|e| panic!("{again} again: {e}"));
        assert_eq!((made.path.as_str(), made.is_dir), (again, true));
    }
    client.make_directory("m/a/c").await.expect("a sibling");
    assert_eq!(list_all(&raw, None, "m", true).await, [dir("m/a"), dir("m/a/b"), dir("m/a/c")]);

    // Files in the way.
    upload_bytes(&client, "m/f.txt", b"a file").await.expect("upload");
    let before = server.snapshot();
    let code = |r: Result<ferry_client::RemoteFile, ferry_client::Error>| r.expect_err("refused").code();
    assert_eq!(code(client.make_directory("m/f.txt").await), Some(Code::AlreadyExists));
    assert_eq!(code(client.make_directory("m/f.txt/sub").await), Some(Code::FailedPrecondition));
    assert_eq!(code(client.make_directory("m/f.txt/sub/deeper").await), Some(Code::FailedPrecondition));
    for invalid in ["", "../x", "/abs", "m//x", "m/./x", ".ferry", ".ferry/uploads/x", "m\\x", "a/\u{1}"] {
        let status = raw.clone().make_directory(MakeDirectoryRequest { path: invalid.into() }).await;
        assert_eq!(status.expect_err(invalid).code(), Code::InvalidArgument, "{invalid:?}");
    }
    assert_eq!(server.snapshot(), before, "refusals change nothing");
    // Symbolic links are never followed: through one, or at the path itself.
    std::os::unix::fs::symlink(server.outside(), server.root().join("m/link")).expect("symlink");
    let before = server.snapshot();
    for through in ["m/link", "m/link/x", "m/link/x/y"] {
        assert_eq!(code(client.make_directory(through).await), Some(Code::PermissionDenied), "{through}");
    }
    assert_eq!(server.snapshot(), before, "refusals change nothing");
    assert_eq!(std::fs::read(server.root().join("m/f.txt")).expect("the file"), b"a file");
    assert!(std::fs::symlink_metadata(server.root().join("m/link")).expect("link").file_type().is_symlink());
    std::fs::remove_file(server.root().join("m/link")).expect("remove the link");

    // Files go into a made directory; it is listed once.
    upload_bytes(&client, "m/a/b/x", b"x").await.expect("upload into it");
    assert_eq!(
        list_all(&raw, None, "", true).await,
        [dir("m"), dir("m/a"), dir("m/a/b"), file("m/a/b/x"), dir("m/a/c"), file("m/f.txt")]
    );
    // And an upload onto a made, empty directory is refused.
    let status = upload_bytes(&client, "m/a/c", b"onto a directory").await.expect_err("onto a directory");
    assert_eq!(status.code(), Some(Code::FailedPrecondition));
    assert!(server.root().join("m/a/c").is_dir());
}

/// MakeDirectory is a write: a token may make directories only where it
/// may write (the full matrix is in auth.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_directory_needs_write_permission() {
    let server = TestServer::start_with(scoped_options()).await;
    let raw = server.raw().await;
    let make = |path: &str, auth: Option<&str>| {
        let mut raw = raw.clone();
        let request = with_auth(MakeDirectoryRequest { path: path.into() }, auth);
        async move { raw.make_directory(request).await.map(|r| r.into_inner()) }
    };
    assert_eq!(make("team/d", None).await.expect_err("no token").code(), Code::Unauthenticated);
    assert_eq!(make("team/d", Some(READER)).await.expect_err("reader").code(), Code::PermissionDenied);
    assert_eq!(make("other/d", Some(WRITER)).await.expect_err("outside").code(), Code::PermissionDenied);
    assert!(!server.root().join("team/d").exists() && !server.root().join("other").exists());
    let info = make("team/d/e", Some(WRITER)).await.expect("writer inside").info.expect("info");
    assert_eq!((info.path.as_str(), info.kind), ("team/d/e", EntryKind::Directory as i32));
    assert!(server.root().join("team/d/e").is_dir());
}
