//! Tokens and scopes: the auth matrix.
//!
//! Every RPC of `ferry.v1.Ferry` × {no token, unknown token, a known token
//! outside its scopes, a known token inside them} → the exact status code,
//! and a refused call changes nothing on disk. Then malformed credentials,
//! filtered listings, the open health and reflection services, and the
//! per-token request rate and bandwidth.

use std::time::{Duration, Instant};

use ferry_client::ClientOptions;
use ferry_proto::v1::ferry_client::FerryClient;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{
    AbortUploadRequest, ByteRange, Chunk, CommitUploadRequest, CreateUploadRequest, DeleteRequest,
    DownloadFilesRequest, DownloadRequest, EntryKind, ListRequest, MakeDirectoryRequest, QueryUploadRequest,
    QueryUploadResponse, StatRequest, UploadFinish, UploadHeader, UploadRequest, UploadSessionRequest,
    UploadSessionStart, download_files_response, download_response, upload_files_response, upload_request,
    upload_session_request,
};
use ferry_server::auth::token_digest;
use ferry_server::{AuthOptions, Grant, Permission, Scope, ServerOptions};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::harness::{TestServer, download_bytes, random_bytes, upload_bytes};

type Raw = FerryClient<Channel>;

/// Everything, everywhere: sets the stage for the others.
const ADMIN: &str = "admin-secret";
/// read, write, delete and list under `team/`.
const WRITER: &str = "writer-secret";
/// read and list under `team/`.
const READER: &str = "reader-secret";
/// write only under `team/`: can drop files in, never see them.
const DROPBOX: &str = "dropbox-secret";
/// A well-formed bearer header with a token the server does not know.
const UNKNOWN: &str = "Bearer not-a-configured-token";

const TEAM_FILE: &[u8] = b"team file\n";
const OTHER_FILE: &[u8] = b"other file\n";
const UPLOAD_DATA: &[u8] = b"uploaded through the matrix\n";
const SESSION_DATA: &[u8] = b"sent through an upload session\n";
const MIB: usize = 1024 * 1024;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn scope(prefix: &str, permissions: &[Permission]) -> Scope {
    Scope::new(prefix, permissions.iter().copied()).expect("scope")
}

fn grant(name: &str, scopes: Vec<Scope>) -> Grant {
    Grant { name: name.into(), scopes, requests_per_second: None, bytes_per_second: None }
}

fn with_tokens(tokens: Vec<(&str, Grant)>) -> ServerOptions {
    let tokens = tokens.into_iter().map(|(token, grant)| (token_digest(token), grant)).collect();
    ServerOptions { auth: AuthOptions { tokens, clients: Vec::new() }, ..Default::default() }
}

/// A message with `authorization: <auth>`, or no such header.
fn request<T>(message: T, auth: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = auth {
        request.metadata_mut().insert("authorization", value.parse().expect("an ASCII header value"));
    }
    request
}

/// Writes a file straight into the served root.
fn put(server: &TestServer, path: &str, data: &[u8]) {
    let full = server.root().join(path);
    std::fs::create_dir_all(full.parent().expect("a parent")).expect("create dirs");
    std::fs::write(full, data).expect("write file");
}

fn staged(server: &TestServer) -> usize {
    std::fs::read_dir(server.staging()).map(Iterator::count).unwrap_or(0)
}

async fn token_client(server: &TestServer, token: &str) -> ferry_client::Client {
    let options = ClientOptions { token: Some(token.into()), ..Default::default() };
    server.client_with(options).await.expect("connect with a token")
}

// ---------------------------------------------------------------------------
// The matrix.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Upload,
    Download,
    Stat,
    List,
    Delete,
    CreateUpload,
    QueryUpload,
    AbortUpload,
    UploadSession,
    /// `Upload` continuing a session (`header.upload_id`) rather than starting one.
    UploadResume,
    UploadFiles,
    DownloadFiles,
    MakeDirectory,
    /// `CreateUpload` of a ranged session.
    CreateRangedUpload,
    /// `UploadSession` writing a range of a ranged session (its start has a length).
    UploadRange,
    CommitUpload,
}

impl Rpc {
    /// Every method of `ferry.v1.Ferry`, and the second ways into `Upload`,
    /// `CreateUpload` and `UploadSession`.
    const ALL: [Rpc; 16] = [
        Rpc::Upload,
        Rpc::Download,
        Rpc::Stat,
        Rpc::List,
        Rpc::Delete,
        Rpc::CreateUpload,
        Rpc::QueryUpload,
        Rpc::AbortUpload,
        Rpc::UploadSession,
        Rpc::UploadResume,
        Rpc::UploadFiles,
        Rpc::DownloadFiles,
        Rpc::MakeDirectory,
        Rpc::CreateRangedUpload,
        Rpc::UploadRange,
        Rpc::CommitUpload,
    ];

    /// A target inside `team/` and one outside it. For the session RPCs this
    /// is the path of a session the admin opens just before the call.
    fn targets(self) -> (&'static str, &'static str) {
        match self {
            Rpc::Upload => ("team/uploaded.txt", "other/uploaded.txt"),
            Rpc::Download | Rpc::Stat | Rpc::DownloadFiles => ("team/a.txt", "other/b.txt"),
            Rpc::UploadFiles => ("team/many.txt", "other/many.txt"),
            Rpc::MakeDirectory => ("team/made", "other/made"),
            Rpc::List => ("team", "other"),
            Rpc::Delete => ("team/doomed.txt", "other/doomed.txt"),
            Rpc::CreateUpload => ("team/created.bin", "other/created.bin"),
            Rpc::CreateRangedUpload => ("team/ranged.bin", "other/ranged.bin"),
            Rpc::QueryUpload
            | Rpc::AbortUpload
            | Rpc::UploadSession
            | Rpc::UploadResume
            | Rpc::UploadRange
            | Rpc::CommitUpload => ("team/session.bin", "other/session.bin"),
        }
    }

    fn on_session(self) -> bool {
        matches!(
            self,
            Rpc::QueryUpload
                | Rpc::AbortUpload
                | Rpc::UploadSession
                | Rpc::UploadResume
                | Rpc::UploadRange
                | Rpc::CommitUpload
        )
    }

    /// Needs a ranged session (for `CommitUpload`, with all its data sent).
    fn on_ranged_session(self) -> bool {
        matches!(self, Rpc::UploadRange | Rpc::CommitUpload)
    }

    /// Would create a file, a directory or a session if it were let through.
    fn creates(self) -> bool {
        matches!(
            self,
            Rpc::Upload
                | Rpc::CreateUpload
                | Rpc::UploadSession
                | Rpc::UploadResume
                | Rpc::UploadFiles
                | Rpc::MakeDirectory
                | Rpc::CreateRangedUpload
                | Rpc::CommitUpload
        )
    }
}

#[derive(Debug)]
struct Case {
    rpc: Rpc,
    auth: Option<String>,
    target: &'static str,
    expect: Code,
}

fn matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    for rpc in Rpc::ALL {
        let (inside, outside) = rpc.targets();
        // A token that lacks the permission `rpc` needs, inside its prefix,
        // and the tokens that have it.
        let (lacking, allowed): (&str, &[&str]) = match rpc {
            Rpc::Download | Rpc::Stat | Rpc::List | Rpc::DownloadFiles => (DROPBOX, &[READER, WRITER]),
            Rpc::Delete => (READER, &[WRITER]),
            _ => (READER, &[WRITER, DROPBOX]),
        };
        let mut case = |auth: Option<String>, target, expect| cases.push(Case { rpc, auth, target, expect });
        case(None, inside, Code::Unauthenticated);
        // Authentication comes first: no hint about paths without a token.
        case(None, outside, Code::Unauthenticated);
        case(Some(UNKNOWN.into()), inside, Code::Unauthenticated);
        case(Some(UNKNOWN.into()), outside, Code::Unauthenticated);
        case(Some(bearer(WRITER)), outside, Code::PermissionDenied);
        case(Some(bearer(READER)), outside, Code::PermissionDenied);
        case(Some(bearer(lacking)), inside, Code::PermissionDenied);
        for token in allowed {
            case(Some(bearer(token)), inside, Code::Ok);
        }
    }
    cases
}

async fn matrix_server() -> TestServer {
    let all = Permission::ALL;
    let server = TestServer::start_with(with_tokens(vec![
        (ADMIN, grant("admin", vec![Scope::everything()])),
        (WRITER, grant("writer", vec![scope("team/", &all)])),
        (READER, grant("reader", vec![scope("team/", &[Permission::Read, Permission::List])])),
        (DROPBOX, grant("dropbox", vec![scope("team/", &[Permission::Write])])),
    ]))
    .await;
    put(&server, "team/a.txt", TEAM_FILE);
    put(&server, "other/b.txt", OTHER_FILE);
    server
}

/// The admin opens a session at `path` (sized for `SESSION_DATA`) for
/// `rpc`: a ranged one if it needs one, with all its data sent for a commit.
async fn admin_session(raw: &mut Raw, rpc: Rpc, path: &str) -> String {
    let header = UploadHeader { path: path.into(), size: Some(SESSION_DATA.len() as u64), ..Default::default() };
    let ranged = rpc.on_ranged_session();
    let reply = raw.create_upload(request(CreateUploadRequest { header: Some(header), ranged }, Some(&bearer(ADMIN))));
    let id = reply.await.expect("the admin opens a session").into_inner().upload_id;
    if rpc == Rpc::CommitUpload {
        let range = send_range(raw, Some(&bearer(ADMIN)), &id).await.expect("the admin sends the data");
        assert_eq!((range.offset, range.length), (0, SESSION_DATA.len() as u64));
    }
    id
}

/// Sends `SESSION_DATA` as the one range of the ranged session `id`.
async fn send_range(raw: &mut Raw, auth: Option<&str>, id: &str) -> Result<ByteRange, Status> {
    use upload_session_request::Kind;
    let start = UploadSessionStart { upload_id: id.into(), offset: 0, length: Some(SESSION_DATA.len() as u64) };
    let messages = vec![
        UploadSessionRequest { kind: Some(Kind::Start(start)) },
        UploadSessionRequest { kind: Some(Kind::Chunk(Chunk { data: SESSION_DATA.to_vec().into(), crc32c: None })) },
    ];
    let mut replies = raw.upload_session(request(tokio_stream::iter(messages), auth)).await?.into_inner();
    let mut answers = Vec::new();
    while let Some(reply) = replies.message().await? {
        answers.push(reply.kind);
    }
    match answers.as_slice() {
        [Some(Reply::RangeCommitted(range))] => Ok(*range),
        other => panic!("a range stream answers range_committed only, got {other:?}"),
    }
}

async fn admin_query(raw: &mut Raw, id: &str) -> Result<String, Status> {
    Ok(admin_state(raw, id).await?.path)
}

async fn admin_state(raw: &mut Raw, id: &str) -> Result<QueryUploadResponse, Status> {
    let reply = raw.query_upload(request(QueryUploadRequest { upload_id: id.into() }, Some(&bearer(ADMIN)))).await?;
    Ok(reply.into_inner())
}

async fn admin_abort(raw: &mut Raw, id: &str) {
    let _ = raw.abort_upload(request(AbortUploadRequest { upload_id: id.into() }, Some(&bearer(ADMIN)))).await;
}

/// Calls `rpc` on `target` with `auth`; when the call succeeds, checks that
/// it did what it should. Returns the id of a session the call created.
async fn call(
    server: &TestServer,
    raw: &mut Raw,
    rpc: Rpc,
    auth: Option<&str>,
    target: &str,
    session: Option<&str>,
) -> Result<Option<String>, Status> {
    let session = session.unwrap_or_default().to_owned();
    match rpc {
        Rpc::Upload => {
            let header =
                UploadHeader { path: target.into(), size: Some(UPLOAD_DATA.len() as u64), ..Default::default() };
            let messages = vec![
                UploadRequest { kind: Some(upload_request::Kind::Header(header)) },
                UploadRequest {
                    kind: Some(upload_request::Kind::Chunk(Chunk { data: UPLOAD_DATA.to_vec().into(), crc32c: None })),
                },
            ];
            let reply = raw.upload(request(tokio_stream::iter(messages), auth)).await?.into_inner();
            assert_eq!(reply.file.expect("the stored file").path, target);
            assert_eq!(std::fs::read(server.root().join(target)).expect("uploaded file"), UPLOAD_DATA);
        }
        Rpc::Download => {
            let mut stream =
                raw.download(request(DownloadRequest { path: target.into(), ..Default::default() }, auth)).await?;
            let mut data = Vec::new();
            while let Some(message) = stream.get_mut().message().await? {
                if let Some(download_response::Kind::Chunk(chunk)) = message.kind {
                    data.extend_from_slice(&chunk.data);
                }
            }
            assert_eq!(data, std::fs::read(server.root().join(target)).expect("served file"));
        }
        Rpc::Stat => {
            let reply = raw.stat(request(StatRequest { path: target.into() }, auth)).await?.into_inner();
            assert_eq!(reply.info.expect("info").path, target);
        }
        Rpc::List => {
            let mut stream =
                raw.list(request(ListRequest { path: target.into(), recursive: true }, auth)).await?.into_inner();
            let mut paths = Vec::new();
            while let Some(batch) = stream.message().await? {
                paths.extend(batch.entries.into_iter().map(|entry| entry.path));
            }
            let inside = format!("{target}/");
            assert!(!paths.is_empty() && paths.iter().all(|p| p.starts_with(&inside)), "{paths:?}");
        }
        Rpc::Delete => {
            raw.delete(request(DeleteRequest { path: target.into() }, auth)).await?;
            assert!(!server.root().join(target).exists(), "a deleted file is gone");
        }
        Rpc::CreateUpload => {
            let header = UploadHeader { path: target.into(), size: Some(8), ..Default::default() };
            let id =
                raw.create_upload(request(CreateUploadRequest { header: Some(header), ranged: false }, auth)).await?;
            let id = id.into_inner().upload_id;
            assert_eq!(admin_query(raw, &id).await.expect("the new session"), target);
            return Ok(Some(id));
        }
        Rpc::QueryUpload => {
            let reply = raw.query_upload(request(QueryUploadRequest { upload_id: session.clone() }, auth)).await?;
            let reply = reply.into_inner();
            assert_eq!((reply.path.as_str(), reply.upload_id.as_str()), (target, session.as_str()));
        }
        Rpc::AbortUpload => {
            raw.abort_upload(request(AbortUploadRequest { upload_id: session.clone() }, auth)).await?;
            let after = admin_query(raw, &session).await;
            assert_eq!(after.expect_err("an aborted session is gone").code(), Code::NotFound);
        }
        Rpc::UploadSession => {
            use upload_session_request::Kind;
            let messages = vec![
                UploadSessionRequest {
                    kind: Some(Kind::Start(UploadSessionStart { upload_id: session, offset: 0, length: None })),
                },
                UploadSessionRequest {
                    kind: Some(Kind::Chunk(Chunk { data: SESSION_DATA.to_vec().into(), crc32c: None })),
                },
                UploadSessionRequest { kind: Some(Kind::Finish(UploadFinish::default())) },
            ];
            let mut replies = raw.upload_session(request(tokio_stream::iter(messages), auth)).await?.into_inner();
            let mut stored = None;
            while let Some(reply) = replies.message().await? {
                if let Some(Reply::File(file)) = reply.kind {
                    stored = Some(file);
                }
            }
            assert_eq!(stored.expect("the session ends with the stored file").path, target);
            assert_eq!(std::fs::read(server.root().join(target)).expect("uploaded file"), SESSION_DATA);
        }
        Rpc::UploadResume => {
            let header = UploadHeader { upload_id: session, offset: 0, ..Default::default() };
            let messages = vec![
                UploadRequest { kind: Some(upload_request::Kind::Header(header)) },
                UploadRequest {
                    kind: Some(upload_request::Kind::Chunk(Chunk { data: SESSION_DATA.to_vec().into(), crc32c: None })),
                },
            ];
            let reply = raw.upload(request(tokio_stream::iter(messages), auth)).await?.into_inner();
            assert_eq!(reply.file.expect("the stored file").path, target);
            assert_eq!(std::fs::read(server.root().join(target)).expect("uploaded file"), SESSION_DATA);
        }
        // A path the caller may not use is that file's error, not the call's:
        // it is returned as the status the file failed with.
        Rpc::UploadFiles => {
            use upload_files_response::Result as Outcome;
            let header =
                UploadHeader { path: target.into(), size: Some(UPLOAD_DATA.len() as u64), ..Default::default() };
            let messages = vec![
                UploadRequest { kind: Some(upload_request::Kind::Header(header)) },
                UploadRequest {
                    kind: Some(upload_request::Kind::Chunk(Chunk { data: UPLOAD_DATA.to_vec().into(), crc32c: None })),
                },
                UploadRequest { kind: Some(upload_request::Kind::Finish(UploadFinish::default())) },
            ];
            let mut replies = raw.upload_files(request(tokio_stream::iter(messages), auth)).await?.into_inner();
            let mut answers = Vec::new();
            while let Some(reply) = replies.message().await? {
                answers.push(reply);
            }
            assert_eq!(answers.len(), 1, "one answer for one file: {answers:?}");
            let answer = answers.remove(0);
            assert_eq!(answer.index, 0);
            match answer.result.expect("a result") {
                Outcome::Error(error) => {
                    assert_eq!(error.path, target);
                    return Err(Status::new(Code::from_i32(error.code), error.message));
                }
                Outcome::File(file) => assert_eq!(file.path, target),
            }
            assert_eq!(std::fs::read(server.root().join(target)).expect("uploaded file"), UPLOAD_DATA);
        }
        Rpc::DownloadFiles => {
            use download_files_response::Kind;
            let paths = vec![target.to_owned()];
            let mut stream = raw.download_files(request(DownloadFilesRequest { paths }, auth)).await?.into_inner();
            let (mut info, mut data) = (None, Vec::new());
            while let Some(message) = stream.message().await? {
                match message.kind.expect("a part") {
                    Kind::Info(file) => info = Some(file),
                    Kind::Chunk(chunk) => data.extend_from_slice(&chunk.data),
                    Kind::Error(error) => {
                        assert_eq!(error.path, target);
                        return Err(Status::new(Code::from_i32(error.code), error.message));
                    }
                }
            }
            assert_eq!(info.expect("the file's info").path, target);
            assert_eq!(data, std::fs::read(server.root().join(target)).expect("served file"));
        }
        Rpc::MakeDirectory => {
            let reply = raw
                .make_directory(request(MakeDirectoryRequest { path: target.into(), ..Default::default() }, auth))
                .await?;
            let info = reply.into_inner().info.expect("info");
            assert_eq!((info.path.as_str(), info.kind), (target, EntryKind::Directory as i32));
            assert!(server.root().join(target).is_dir(), "the directory was made");
        }
        Rpc::CreateRangedUpload => {
            let header = UploadHeader { path: target.into(), size: Some(8), ..Default::default() };
            let reply = raw.create_upload(request(CreateUploadRequest { header: Some(header), ranged: true }, auth));
            let reply = reply.await?.into_inner();
            assert!(reply.ranged, "a ranged session");
            let state = admin_state(raw, &reply.upload_id).await.expect("the new session");
            assert_eq!((state.path.as_str(), state.ranged), (target, true));
            return Ok(Some(reply.upload_id));
        }
        Rpc::UploadRange => {
            let range = send_range(raw, auth, &session).await?;
            assert_eq!((range.offset, range.length), (0, SESSION_DATA.len() as u64));
            let state = admin_state(raw, &session).await.expect("the session");
            assert_eq!(state.committed_ranges, [range], "the range is committed");
        }
        Rpc::CommitUpload => {
            let commit = CommitUploadRequest { upload_id: session.clone(), sha256: String::new() };
            let file = raw.commit_upload(request(commit, auth)).await?.into_inner().file.expect("the stored file");
            assert_eq!(file.path, target);
            assert_eq!(std::fs::read(server.root().join(target)).expect("committed file"), SESSION_DATA);
            let after = admin_query(raw, &session).await;
            assert_eq!(after.expect_err("a committed session is gone").code(), Code::NotFound);
        }
    }
    Ok(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_authenticates_then_checks_its_scope() {
    let server = matrix_server().await;
    let mut raw = server.raw().await;
    let cases = matrix();
    let mut failures = Vec::new();
    for case in &cases {
        let (rpc, target) = (case.rpc, case.target);
        // Each case starts from the same state: the file to delete is there.
        if rpc == Rpc::Delete {
            put(&server, target, b"delete me\n");
        }
        let session = match rpc.on_session() {
            true => Some(admin_session(&mut raw, rpc, target).await),
            false => None,
        };
        let before = server.snapshot();
        let outcome = call(&server, &mut raw, rpc, case.auth.as_deref(), target, session.as_deref()).await;
        let code = outcome.as_ref().map_or_else(Status::code, |_| Code::Ok);
        if code != case.expect {
            failures.push(format!("{case:?}: got {code:?} ({outcome:?})"));
        }
        if case.expect != Code::Ok {
            // A refused call touches nothing: no file, no staged upload, no deletion.
            if server.snapshot() != before {
                failures.push(format!("{case:?}: the refused call changed the disk"));
            }
            if rpc == Rpc::Delete && !server.root().join(target).exists() {
                failures.push(format!("{case:?}: the refused delete removed the file"));
            }
            if rpc.creates() && server.root().join(target).exists() {
                failures.push(format!("{case:?}: the refused upload left a file"));
            }
            if matches!(rpc, Rpc::Upload | Rpc::CreateUpload | Rpc::CreateRangedUpload | Rpc::UploadFiles)
                && staged(&server) != 0
            {
                failures.push(format!("{case:?}: the refused upload left something in staging"));
            }
        }
        // Clean up, so that each case starts from the same state.
        for id in session.iter().chain(outcome.ok().flatten().iter()) {
            admin_abort(&mut raw, id).await;
        }
        if rpc.creates() {
            let _ = std::fs::remove_file(server.root().join(target));
            let _ = std::fs::remove_dir(server.root().join(target));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    // Refused or not, nothing is left staged, and nothing leaked outside the root.
    assert!(server.staging_drains().await, "staging: {:?}", server.snapshot());
    assert_eq!(std::fs::read(server.outside().join("secret")).expect("outside"), b"outside the root");
    assert_eq!(std::fs::read(server.root().join("other/b.txt")).expect("other/b.txt"), OTHER_FILE);
}

/// Spot checks through the real client: its `token` option becomes the header.
#[tokio::test]
async fn the_client_sends_its_token() {
    let server = matrix_server().await;
    let anonymous = server.client().await;
    let writer = token_client(&server, WRITER).await;
    let reader = token_client(&server, READER).await;
    let code = |result: Result<(), ferry_client::Error>| result.map_or_else(|e| e.code(), |()| Some(Code::Ok));

    assert_eq!(code(anonymous.stat("team/a.txt").await.map(drop)), Some(Code::Unauthenticated));
    assert_eq!(code(reader.stat("team/a.txt").await.map(drop)), Some(Code::Ok));
    assert_eq!(code(reader.stat("other/b.txt").await.map(drop)), Some(Code::PermissionDenied));
    assert_eq!(download_bytes(&reader, "team/a.txt").await.expect("reader downloads"), TEAM_FILE);
    assert_eq!(code(upload_bytes(&reader, "team/r.txt", b"r").await.map(drop)), Some(Code::PermissionDenied));
    assert_eq!(code(upload_bytes(&writer, "other/w.txt", b"w").await.map(drop)), Some(Code::PermissionDenied));
    assert_eq!(code(upload_bytes(&writer, "team/w.txt", b"w").await.map(drop)), Some(Code::Ok));
    assert_eq!(code(reader.delete("team/w.txt").await), Some(Code::PermissionDenied));
    assert_eq!(code(writer.delete("team/w.txt").await), Some(Code::Ok));
    assert!(!server.root().join("team/r.txt").exists() && !server.root().join("other/w.txt").exists());
    assert!(server.staging_drains().await);
}

// ---------------------------------------------------------------------------
// Malformed credentials.

#[tokio::test]
async fn malformed_authorization_is_unauthenticated() {
    let server = matrix_server().await;
    let mut raw = server.raw().await;
    let near_miss = bearer(&WRITER[..WRITER.len() - 1]);
    let no_space = format!("Bearer{WRITER}");
    let refused = [
        "Basic xyz",
        "Basic d3JpdGVyOnNlY3JldA==",
        WRITER,
        "Token writer-secret",
        "Bearer",
        "Bearer ",
        no_space.as_str(),
        near_miss.as_str(),
        UNKNOWN,
    ];
    for auth in refused {
        let status = raw.stat(request(StatRequest { path: "team/a.txt".into() }, Some(auth))).await;
        assert_eq!(status.map(drop).expect_err(auth).code(), Code::Unauthenticated, "{auth:?}");
        let messages = vec![UploadRequest {
            kind: Some(upload_request::Kind::Header(UploadHeader { path: "team/x".into(), ..Default::default() })),
        }];
        let status = raw.upload(request(tokio_stream::iter(messages), Some(auth))).await;
        assert_eq!(status.map(drop).expect_err(auth).code(), Code::Unauthenticated, "{auth:?}");
    }
    // A header value that is not text (obs-text bytes) cannot carry a token.
    let mut binary = Request::new(StatRequest { path: "team/a.txt".into() });
    let value = tonic::metadata::MetadataValue::try_from(b"Bearer \xffwriter-secret".as_slice()).expect("obs-text");
    binary.metadata_mut().insert("authorization", value);
    assert_eq!(raw.stat(binary).await.map(drop).expect_err("binary").code(), Code::Unauthenticated);
    // The controls: the same call with the real token, either spelling of the scheme.
    for auth in [bearer(WRITER), format!("bearer {WRITER}")] {
        let reply = raw.stat(request(StatRequest { path: "team/a.txt".into() }, Some(&auth))).await;
        assert!(reply.is_ok(), "{auth:?}: {reply:?}");
    }
    assert!(!server.root().join("team/x").exists());
}

// ---------------------------------------------------------------------------
// Filtered listings.

async fn list_paths(client: &ferry_client::Client, dir: &str, recursive: bool) -> Result<Vec<String>, Code> {
    let code = |e: ferry_client::Error| e.code().expect("a status");
    let mut listing = client.list(dir, recursive).await.map_err(code)?;
    let mut paths = Vec::new();
    while let Some(batch) = listing.next_batch().await.map_err(code)? {
        paths.extend(batch.into_iter().map(|entry| entry.path));
    }
    Ok(paths)
}

#[tokio::test]
async fn listings_show_only_the_way_to_a_list_scope_and_what_is_in_it() {
    const SUB: &str = "sub-lister-secret";
    let server = TestServer::start_with(with_tokens(vec![
        (ADMIN, grant("admin", vec![Scope::everything()])),
        (SUB, grant("sub", vec![scope("team/sub", &[Permission::List])])),
    ]))
    .await;
    for path in ["root.txt", "team/a.txt", "team/sub/x.txt", "team/sub/deep/y.txt", "team/subx/z.txt", "other/b.txt"] {
        put(&server, path, path.as_bytes());
    }
    let sub = token_client(&server, SUB).await;
    let admin = token_client(&server, ADMIN).await;

    let everything = list_paths(&admin, "", true).await.expect("admin lists");
    // The control: 6 files and 5 directories, all visible to the admin.
    assert_eq!(everything.len(), 11, "{everything:?}");

    let expected = ["team", "team/sub", "team/sub/deep", "team/sub/deep/y.txt", "team/sub/x.txt"];
    assert_eq!(list_paths(&sub, "", true).await, Ok(expected.map(String::from).to_vec()));
    assert_eq!(list_paths(&sub, "", false).await, Ok(vec!["team".to_owned()]));
    assert_eq!(list_paths(&sub, "team", false).await, Ok(vec!["team/sub".to_owned()]));
    assert_eq!(list_paths(&sub, "team", true).await, Ok(expected[1..].iter().map(|p| p.to_string()).collect()));
    assert_eq!(list_paths(&sub, "team/sub", false).await, Ok(vec!["team/sub/deep".into(), "team/sub/x.txt".into()]));
    for refused in ["other", "team/subx", "team/a.txt"] {
        assert_eq!(list_paths(&sub, refused, true).await, Err(Code::PermissionDenied), "{refused}");
    }
    // Stat follows the listing: the way in and the scope, nothing beside it,
    // and list alone does not allow a download.
    for seen in ["team", "team/sub", "team/sub/x.txt"] {
        assert!(sub.stat(seen).await.is_ok(), "{seen}");
    }
    for hidden in ["team/a.txt", "team/subx", "other/b.txt", "root.txt"] {
        assert_eq!(sub.stat(hidden).await.expect_err(hidden).code(), Some(Code::PermissionDenied), "{hidden}");
    }
    let download = download_bytes(&sub, "team/sub/x.txt").await;
    assert_eq!(download.expect_err("list is not read").code(), Some(Code::PermissionDenied));
}

// ---------------------------------------------------------------------------
// Health and reflection.

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let server = matrix_server().await;
    let channel = Channel::from_shared(server.url.clone()).expect("url").connect().await.expect("connect");

    // The control: this server does want a token for ferry itself.
    let refused = server.raw().await.stat(StatRequest { path: "team/a.txt".into() }).await;
    assert_eq!(refused.map(drop).expect_err("no token").code(), Code::Unauthenticated);

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "ferry.v1.Ferry"] {
        let reply = health.check(HealthCheckRequest { service: service.into() }).await.expect("health check");
        assert_eq!(reply.into_inner().status(), ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let ask =
        ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices("".into())) };
    let mut replies =
        reflection.server_reflection_info(tokio_stream::iter([ask])).await.expect("reflection").into_inner();
    let reply: ServerReflectionResponse = replies.message().await.expect("a reply").expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("not a service list: {reply:?}")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "ferry.v1.Ferry"), "{names:?}");
    assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "{names:?}");

    // The older v1alpha that grpcurl still speaks.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};
        let mut reflection = ServerReflectionClient::new(channel);
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("ferry.v1.Ferry".into())),
        };
        let mut replies = reflection.server_reflection_info(tokio_stream::iter([ask])).await.expect("v1alpha");
        let reply: ServerReflectionResponse = replies.get_mut().message().await.expect("a reply").expect("one reply");
        let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
            panic!("not a file descriptor: {reply:?}")
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}

// ---------------------------------------------------------------------------
// Request rate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_request_rate_is_refused_and_others_are_not() {
    const LIMITED: &str = "limited-secret";
    const FREE: &str = "free-secret";
    let limited_grant = Grant { requests_per_second: Some(2.0), ..grant("limited", vec![Scope::everything()]) };
    let server = TestServer::start_with(with_tokens(vec![
        (LIMITED, limited_grant),
        (FREE, grant("free", vec![Scope::everything()])),
    ]))
    .await;
    put(&server, "a.txt", b"a");
    let mut raw = server.raw().await;
    let stat = |token: &str| request(StatRequest { path: "a.txt".into() }, Some(&bearer(token)));

    let burst = Instant::now();
    let mut codes = Vec::new();
    for _ in 0..10 {
        match raw.stat(stat(LIMITED)).await {
            Ok(_) => codes.push(Code::Ok),
            Err(status) => {
                // A refusal for now: it says when the next call fits (at
                // most half a second at 2 per second).
                if status.code() == Code::ResourceExhausted {
                    let retry = tonic_types::StatusExt::get_details_retry_info(&status).and_then(|i| i.retry_delay);
                    assert!(retry.is_some_and(|r| !r.is_zero() && r <= Duration::from_millis(500)), "{retry:?}");
                }
                codes.push(status.code());
            }
        }
    }
    let refused = codes.iter().filter(|c| **c == Code::ResourceExhausted).count();
    assert_eq!(codes[0], Code::Ok, "{codes:?}");
    assert!(refused >= 1, "a burst of 10 at 2 per second: {codes:?}");
    assert!(codes.iter().all(|c| matches!(c, Code::Ok | Code::ResourceExhausted)), "{codes:?}");

    // The limit is the token's, not the connection's: a new connection is
    // still over it (as long as the bucket cannot have refilled meanwhile).
    let mut fresh = server.raw().await;
    let again = fresh.stat(stat(LIMITED)).await.map_or_else(|s| s.code(), |_| Code::Ok);
    if burst.elapsed() < Duration::from_millis(450) {
        assert_eq!(again, Code::ResourceExhausted);
    }

    // Another token is not affected, on either connection.
    for raw in [&mut raw, &mut fresh] {
        assert!(raw.stat(stat(FREE)).await.is_ok(), "another token still works");
    }
    // And the limited token recovers once its second has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(raw.stat(stat(LIMITED)).await.is_ok(), "the bucket refills");
}

// ---------------------------------------------------------------------------
// Bandwidth.

const SLOW: &str = "slow-secret";
const FAST: &str = "fast-secret";
/// 3 MiB at 1 MiB/s with a quarter second of burst: about 2.75 s.
const THROTTLED_AT_LEAST: Duration = Duration::from_millis(1500);

async fn bandwidth_server() -> TestServer {
    let slow = Grant { bytes_per_second: Some(MIB as u64), ..grant("slow", vec![Scope::everything()]) };
    TestServer::start_with(with_tokens(vec![(SLOW, slow), (FAST, grant("fast", vec![Scope::everything()]))])).await
}

async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(30), work).await.expect("a transfer under 30 s");
    (out, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bandwidth_limit_slows_its_downloads() {
    let server = bandwidth_server().await;
    let data = random_bytes(3 * MIB, 61);
    put(&server, "big.bin", &data);
    let (slow, fast) = (token_client(&server, SLOW).await, token_client(&server, FAST).await);

    let (got, fast_took) = timed(download_bytes(&fast, "big.bin")).await;
    assert!(got.expect("fast download") == data);
    let (got, slow_took) = timed(download_bytes(&slow, "big.bin")).await;
    assert!(got.expect("slow download") == data);
    assert!(slow_took >= THROTTLED_AT_LEAST, "throttled download took {slow_took:?}");
    assert!(fast_took < THROTTLED_AT_LEAST, "unthrottled download took {fast_took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bandwidth_limit_slows_its_uploads() {
    let server = bandwidth_server().await;
    let data = random_bytes(3 * MIB, 62);
    let (slow, fast) = (token_client(&server, SLOW).await, token_client(&server, FAST).await);

    let (stored, fast_took) = timed(upload_bytes(&fast, "fast.bin", &data)).await;
    assert_eq!(stored.expect("fast upload").size, data.len() as u64);
    let (stored, slow_took) = timed(upload_bytes(&slow, "slow.bin", &data)).await;
    assert_eq!(stored.expect("slow upload").size, data.len() as u64);
    assert!(std::fs::read(server.root().join("slow.bin")).expect("slow.bin") == data);
    assert!(slow_took >= THROTTLED_AT_LEAST, "throttled upload took {slow_took:?}");
    assert!(fast_took < THROTTLED_AT_LEAST, "unthrottled upload took {fast_took:?}");
}
