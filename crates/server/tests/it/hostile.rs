//! Hostile and malformed input. Every case must get its documented status
//! code, write nothing anywhere (inside or outside the root), leave nothing
//! staged, and leave the server serving.

use ferry_client::Code;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{
    Chunk, DeleteRequest, DownloadRequest, ListRequest, StatRequest, UploadFinish, UploadHeader, UploadRequest,
    WriteMode,
};

use crate::harness::{TestServer, download_bytes, sha256_hex, upload_bytes};

fn header(path: &str) -> UploadRequest {
    with_header(UploadHeader { path: path.to_owned(), ..Default::default() })
}

fn with_header(header: UploadHeader) -> UploadRequest {
    UploadRequest { kind: Some(Kind::Header(header)) }
}

fn sized(path: &str, size: u64) -> UploadRequest {
    with_header(UploadHeader { path: path.to_owned(), size: Some(size), ..Default::default() })
}

fn chunk(data: &[u8]) -> UploadRequest {
    UploadRequest { kind: Some(Kind::Chunk(Chunk { data: data.to_vec().into(), crc32c: None })) }
}

fn chunk_with_crc(data: &[u8], crc32c: u32) -> UploadRequest {
    UploadRequest { kind: Some(Kind::Chunk(Chunk { data: data.to_vec().into(), crc32c: Some(crc32c) })) }
}

fn finish(sha256: &str) -> UploadRequest {
    UploadRequest { kind: Some(Kind::Finish(UploadFinish { sha256: sha256.to_owned() })) }
}

/// A well-formed upload of `data` to `path` (size unknown, digest at the end).
fn good(path: &str, data: &[u8]) -> Vec<UploadRequest> {
    vec![header(path), chunk(data), finish(&sha256_hex(data))]
}

fn bad_path(path: &str) -> Vec<UploadRequest> {
    good(path, b"payload")
}

/// (what, messages, expected code)
fn upload_cases() -> Vec<(&'static str, Vec<UploadRequest>, Code)> {
    use Code::*;
    let long_path = "a/".repeat(512) + "b";
    let long_segment = "s".repeat(256);
    let wrong_digest = sha256_hex(b"something else");
    vec![
        ("parent traversal", bad_path("../escape"), InvalidArgument),
        ("deep traversal", bad_path("a/../../escape"), InvalidArgument),
        ("traversal at the end", bad_path("a/.."), InvalidArgument),
        ("absolute path", bad_path("/etc/passwd"), InvalidArgument),
        ("double-slash absolute", bad_path("//etc/passwd"), InvalidArgument),
        ("empty segment", bad_path("a//b"), InvalidArgument),
        ("dot segment", bad_path("a/./b"), InvalidArgument),
        ("dot", bad_path("."), InvalidArgument),
        ("dot dot", bad_path(".."), InvalidArgument),
        ("empty path", bad_path(""), InvalidArgument),
        ("trailing slash", bad_path("dir/"), InvalidArgument),
        ("backslash traversal", bad_path("..\\..\\escape"), InvalidArgument),
        ("NUL byte", bad_path("nul\0byte"), InvalidArgument),
        ("control character", bad_path("ctrl\x01char"), InvalidArgument),
        ("newline", bad_path("new\nline"), InvalidArgument),
        ("path over 1024 bytes", bad_path(&long_path), InvalidArgument),
        ("segment over 255 bytes", bad_path(&long_segment), InvalidArgument),
        ("reserved state directory", bad_path(".ferry/uploads/x"), InvalidArgument),
        ("chunk before header", vec![chunk(b"x"), header("a.txt")], InvalidArgument),
        ("finish before header", vec![finish(""), header("a.txt")], InvalidArgument),
        ("empty stream", vec![], InvalidArgument),
        ("message with nothing in it", vec![header("a.txt"), UploadRequest { kind: None }], InvalidArgument),
        ("two headers", vec![header("a.txt"), chunk(b"x"), header("b.txt")], InvalidArgument),
        ("data after finish", vec![header("a.txt"), finish(""), chunk(b"x")], InvalidArgument),
        ("two finishes", vec![header("a.txt"), finish(""), finish("")], InvalidArgument),
        (
            "malformed header digest",
            vec![
                with_header(UploadHeader { path: "a.txt".into(), sha256: "xyz".into(), ..Default::default() }),
                chunk(b"x"),
                finish(""),
            ],
            InvalidArgument,
        ),
        (
            "wrong header digest",
            vec![
                with_header(UploadHeader {
                    path: "a.txt".into(),
                    size: Some(1),
                    sha256: wrong_digest.clone(),
                    ..Default::default()
                }),
                chunk(b"x"),
            ],
            InvalidArgument,
        ),
        ("malformed finish digest", vec![header("a.txt"), chunk(b"x"), finish("not-hex")], InvalidArgument),
        ("wrong finish digest", vec![header("a.txt"), chunk(b"x"), finish(&wrong_digest)], InvalidArgument),
        ("more bytes than declared", vec![sized("a.txt", 2), chunk(b"xyz")], InvalidArgument),
        ("chunk with a wrong CRC32C", vec![sized("a.txt", 3), chunk_with_crc(b"xyz", 0xdead_beef)], InvalidArgument),
        ("fewer bytes than declared (short upload)", vec![sized("a.txt", 10), chunk(b"xyz")], InvalidArgument),
        ("unknown size and no finish (truncation)", vec![header("a.txt"), chunk(b"xyz")], InvalidArgument),
        (
            "unknown write mode",
            vec![with_header(UploadHeader { path: "a.txt".into(), mode: 99, ..Default::default() }), finish("")],
            InvalidArgument,
        ),
        (
            "permissions out of range",
            vec![
                with_header(UploadHeader { path: "a.txt".into(), permissions: Some(0o17777), ..Default::default() }),
                finish(""),
            ],
            InvalidArgument,
        ),
        (
            "mtime with negative nanos",
            vec![
                with_header(UploadHeader {
                    path: "a.txt".into(),
                    mtime: Some(prost_types::Timestamp { seconds: 0, nanos: -5 }),
                    ..Default::default()
                }),
                finish(""),
            ],
            InvalidArgument,
        ),
        (
            "mtime past year 9999",
            vec![
                with_header(UploadHeader {
                    path: "a.txt".into(),
                    mtime: Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }),
                    ..Default::default()
                }),
                finish(""),
            ],
            InvalidArgument,
        ),
        (
            "message over the size limit",
            vec![header("a.txt"), chunk(&vec![0u8; ferry_proto::MAX_MESSAGE_SIZE + 1]), finish("")],
            OutOfRange,
        ),
        ("upload onto a directory", good("dir", b"x"), FailedPrecondition),
        ("upload under a file", good("file.txt/child", b"x"), FailedPrecondition),
        (
            "create-only onto an existing file",
            vec![
                with_header(UploadHeader {
                    path: "file.txt".into(),
                    mode: WriteMode::CreateOnly as i32,
                    ..Default::default()
                }),
                chunk(b"x"),
                finish(&sha256_hex(b"x")),
            ],
            AlreadyExists,
        ),
        ("through a symlink to outside", good("link/planted", b"x"), PermissionDenied),
        ("over a symlink to an outside file", good("filelink", b"x"), PermissionDenied),
    ]
}

/// A root with a directory, a file, and two symlinks leading outside it.
async fn prepared() -> TestServer {
    let server = TestServer::start().await;
    let client = server.client().await;
    upload_bytes(&client, "dir/inside.txt", b"inside").await.expect("upload");
    upload_bytes(&client, "file.txt", b"original").await.expect("upload");
    std::os::unix::fs::symlink(server.outside(), server.root().join("link")).expect("dir symlink");
    std::os::unix::fs::symlink(server.outside().join("secret"), server.root().join("filelink")).expect("file symlink");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_get_their_code_and_change_nothing() {
    let server = prepared().await;
    let mut raw = server.raw().await;
    let before = server.snapshot();
    let cases = upload_cases();
    assert!(cases.len() >= 30, "the issue asks for at least 30 hostile inputs");
    for (what, messages, want) in cases {
        let result = raw.upload(tokio_stream::iter(messages)).await;
        let status = result.expect_err(what);
        assert_eq!(status.code(), want, "{what}: {status:?}");
        assert!(!status.message().contains(&server.root().display().to_string()), "{what}: leaks a server path");
        assert!(server.staging_drains().await, "{what}: staged data left behind");
        assert_eq!(server.snapshot(), before, "{what}: something was written");
    }
    // Still serving, and the originals are intact.
    let client = server.client().await;
    assert_eq!(download_bytes(&client, "file.txt").await.expect("original"), b"original");
    assert_eq!(std::fs::read(server.outside().join("secret")).expect("secret"), b"outside the root");
    raw.upload(tokio_stream::iter(good("after.txt", b"fine"))).await.expect("a good upload after all that");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reads_and_deletes_get_their_code() {
    let server = prepared().await;
    rustix_mkfifo(&server.root().join("fifo"));
    let mut raw = server.raw().await;
    let before = server.snapshot();

    let download = |path: &str, offset: u64, length: Option<u64>| DownloadRequest { path: path.into(), offset, length };
    let download_cases = [
        ("download traversal", download("../outside/secret", 0, None), Code::InvalidArgument),
        ("download absolute", download("/etc/passwd", 0, None), Code::InvalidArgument),
        ("download a directory", download("dir", 0, None), Code::FailedPrecondition),
        ("download through a symlink", download("link/secret", 0, None), Code::PermissionDenied),
        ("download a symlink to outside", download("filelink", 0, None), Code::PermissionDenied),
        ("download a FIFO (must not hang)", download("fifo", 0, None), Code::FailedPrecondition),
        ("download missing", download("missing", 0, None), Code::NotFound),
        ("download past the end", download("file.txt", 9, None), Code::OutOfRange),
        ("download with overflowing range", download("file.txt", 1, Some(u64::MAX)), Code::OutOfRange),
    ];
    for (what, request, want) in download_cases {
        let status = raw.download(request).await.expect_err(what);
        assert_eq!(status.code(), want, "{what}: {status:?}");
    }
    for (what, path, want) in [
        ("stat through a symlink", "link/secret", Code::PermissionDenied),
        ("stat traversal", "a/../../x", Code::InvalidArgument),
        ("stat reserved", ".ferry", Code::InvalidArgument),
    ] {
        let status = raw.stat(StatRequest { path: path.into() }).await.expect_err(what);
        assert_eq!(status.code(), want, "{what}: {status:?}");
    }
    for (what, path, want) in
        [("list through a symlink", "link", Code::PermissionDenied), ("list traversal", "..", Code::InvalidArgument)]
    {
        let status = raw.list(ListRequest { path: path.into(), recursive: true }).await.expect_err(what);
        assert_eq!(status.code(), want, "{what}: {status:?}");
    }
    for (what, path, want) in [
        ("delete through a symlink", "link/secret", Code::PermissionDenied),
        ("delete a symlink", "filelink", Code::PermissionDenied),
        ("delete traversal", "../outside/secret", Code::InvalidArgument),
        ("delete the reserved directory", ".ferry", Code::InvalidArgument),
        ("delete missing", "missing", Code::NotFound),
    ] {
        let status = raw.delete(DeleteRequest { path: path.into() }).await.expect_err(what);
        assert_eq!(status.code(), want, "{what}: {status:?}");
    }
    assert_eq!(server.snapshot(), before, "nothing may change");
    let listed = server.client().await.list("", true).await.expect("list");
    drop(listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_never_show_symlinks_or_special_files() {
    let server = prepared().await;
    rustix_mkfifo(&server.root().join("fifo"));
    let client = server.client().await;
    let mut listing = client.list("", true).await.expect("list");
    let mut seen = Vec::new();
    while let Some(batch) = listing.next_batch().await.expect("batch") {
        seen.extend(batch.into_iter().map(|e| e.path));
    }
    assert_eq!(seen, ["dir", "dir/inside.txt", "file.txt"]);
}

/// A client that goes away mid-upload leaves nothing: not at the path, not staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_upload_leaves_nothing() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(sized("cancelled.bin", 64 * 1024 * 1024)).await.expect("send header");
    let call = tokio::spawn(async move { raw.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    for _ in 0..4 {
        tx.send(chunk(&vec![7u8; 1024 * 1024])).await.expect("send chunk");
    }
    // Wait until the server has really staged something, then cancel.
    for _ in 0..200 {
        if std::fs::read_dir(server.staging()).expect("staging").count() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    call.abort();
    drop(tx);
    assert!(server.staging_drains().await, "the abandoned upload must be discarded");
    assert!(!server.root().join("cancelled.bin").exists());
    upload_bytes(&server.client().await, "ok.txt", b"still serving").await.expect("server still serves");
}

fn rustix_mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
}
