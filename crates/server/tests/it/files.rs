//! Many files per stream: `UploadFiles` (bidirectional, one answer per
//! file, in order), `DownloadFiles` (server streaming, info + chunks or a
//! FileError per path) and `MakeDirectory` (unary, idempotent). Protocol
//! cases go through the raw generated stub; the happy paths through the
//! real client (`Client::upload_files`, `download_files`, `make_directory`).
//!
//! This file holds what the tests share (messages, the raw calls, a held
//! stream, tokens); the tests are in `files/`: `upload.rs` (files sent and
//! answered in order), `upload_refusals.rs` (per-file refusals),
//! `upload_stream_ends.rs` (streams that end early), `download.rs` and
//! `make_directory.rs`.

mod download;
mod make_directory;
mod upload;
mod upload_refusals;
mod upload_stream_ends;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use ferry_proto::v1::ferry_client::FerryClient;
use ferry_proto::v1::upload_files_response::Result as Outcome;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{Chunk, FileError, FileInfo, UploadFilesResponse, UploadFinish, UploadHeader, UploadRequest};
use ferry_server::auth::token_digest;
use ferry_server::{AuthOptions, Grant, Permission, Scope, ServerOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::harness::{TestServer, sha256_hex};

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

    /// Like [`Held::send`], but the server may have ended the call already
    /// (after a bad message): then the rest is not sent.
    async fn send_unless_ended(&self, messages: Vec<UploadRequest>) {
        for message in messages {
            if self.tx.send(message).await.is_err() {
                return;
            }
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
