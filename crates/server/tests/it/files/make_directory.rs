//! `MakeDirectory`: nested directories made idempotently, files and
//! links in the way refused, and the write permission it needs.

use ferry_proto::v1::{EntryKind, ListRequest, MakeDirectoryRequest};
use tonic::Code;

use super::{READER, Raw, WRITER, scoped_options, with_auth};
use crate::harness::{TestServer, upload_bytes};

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
        let status =
            raw.clone().make_directory(MakeDirectoryRequest { path: invalid.into(), ..Default::default() }).await;
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
        let request = with_auth(MakeDirectoryRequest { path: path.into(), ..Default::default() }, auth);
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
