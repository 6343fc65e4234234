//! `ferry_client::upload_parallel`: one file over several connections
//! through a ranged session, in `PIECE`-byte range streams, then
//! `CommitUpload` with the digest the client computed meanwhile. The
//! protocol-level cases are `ranged.rs`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use ferry_client::{Client, Code, Error, PIECE, RemoteFile, RetryPolicy, UploadOptions, upload_parallel};

use crate::harness::{TestServer, random_bytes, sha256_hex};
use crate::proxy::FaultProxy;
use crate::ranged::send_range;

const MIB: u64 = 1024 * 1024;

/// Small backoffs, so retries cost the tests little time.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        ..RetryPolicy::default()
    }
}

/// `count` connections to `url`, each its own client (its own HTTP/2 connection).
async fn connect(url: &str, count: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(Client::connect(url).await.expect("connect"));
    }
    clients
}

/// `data` in a local file (in `dir`).
fn local_file(dir: &tempfile::TempDir, data: &[u8]) -> PathBuf {
    let path = dir.path().join("local.bin");
    std::fs::write(&path, data).expect("write the local file");
    path
}

fn options(size: u64) -> UploadOptions {
    UploadOptions {
        size: Some(size),
        mtime: Some(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
        permissions: Some(0o600),
        ..UploadOptions::default()
    }
}

/// What the progress callback was told, and whether the target was ever
/// visible while it was told (it must not be: nothing before the commit).
#[derive(Clone)]
struct Progress {
    values: Arc<Mutex<Vec<u64>>>,
    target: PathBuf,
    visible: Arc<Mutex<bool>>,
}

impl Progress {
    fn new(target: PathBuf) -> Self {
        Self { values: Arc::default(), target, visible: Arc::default() }
    }

    fn callback(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let this = self.clone();
        move |bytes| {
            this.values.lock().expect("values").push(bytes);
            if this.target.exists() {
                *this.visible.lock().expect("visible") = true;
            }
        }
    }

    fn values(&self) -> Vec<u64> {
        self.values.lock().expect("values").clone()
    }

    /// One report at the start (what the session had), then one per piece
    /// sent, never going back, ending at `size`; the target never visible.
    fn check(&self, had: u64, pieces: usize, size: u64) {
        let values = self.values();
        assert_eq!(values.first(), Some(&had), "the first report is what the session had: {values:?}");
        assert_eq!(values.len(), 1 + pieces, "one report per piece sent: {values:?}");
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
        assert_eq!(values.last(), Some(&size), "{values:?}");
        assert!(!*self.visible.lock().expect("visible"), "the file was visible before the commit");
    }
}

/// The stored file is `data`, with the options' mtime and mode, and the
/// session is over.
async fn check_stored(server: &TestServer, client: &Client, id: &str, remote: &str, data: &[u8], file: &RemoteFile) {
    let sha256 = sha256_hex(data);
    let mtime = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
    assert_eq!((file.path.as_str(), file.size, file.sha256.as_deref()), (remote, data.len() as u64, Some(&*sha256)));
    assert_eq!((file.mtime, file.permissions), (Some(mtime), 0o600));
    let path = server.root().join(remote);
    assert!(std::fs::read(&path).expect("the stored file") == data, "{remote} differs");
    let meta = std::fs::metadata(&path).expect("metadata");
    assert_eq!((meta.modified().expect("mtime"), meta.permissions().mode() & 0o777), (mtime, 0o600));
    let gone = client.query_upload(id).await.expect_err("the commit ends the session");
    assert_eq!(gone.code(), Some(Code::NotFound));
    assert!(server.staging_drains().await, "staging: {:?}", server.snapshot());
}

async fn start_ranged(client: &Client, remote: &str, size: u64) -> String {
    client.create_ranged_upload(remote, &options(size)).await.expect("create").expect("the server stages ranges")
}

// ---------------------------------------------------------------------------

/// 3 pieces (the last short) over 3 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_goes_up_in_pieces_over_three_connections() {
    let server = TestServer::start().await;
    let data = random_bytes(2 * PIECE as usize + 8 * MIB as usize + 3, 950);
    let dir = tempfile::tempdir().expect("temp dir");
    let local = local_file(&dir, &data);
    let clients = connect(&server.url, 3).await;
    let id = start_ranged(&clients[0], "big/file.bin", data.len() as u64).await;
    let progress = Progress::new(server.root().join("big/file.bin"));

    let file = upload_parallel(&clients, &local, &id, &quick_retries(), progress.callback()).await.expect("upload");
    check_stored(&server, &clients[0], &id, "big/file.bin", &data, &file).await;
    progress.check(0, 3, data.len() as u64);
}

/// A session that has some ranges already (one whole piece, and a part of
/// another that is not on a piece boundary): only the rest travels,
/// counted on the wire by a proxy that cuts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_committed_ranges_gets_only_the_rest() {
    let server = TestServer::start().await;
    let size = 2 * PIECE + MIB - 5;
    let data = random_bytes(size as usize, 951);
    let dir = tempfile::tempdir().expect("temp dir");
    let local = local_file(&dir, &data);
    let mut raw = server.raw().await;
    let id = start_ranged(&server.client().await, "rest.bin", size).await;
    let odd = 5 * MIB + 3..7 * MIB;
    send_range(&mut raw, &id, &data, PIECE..2 * PIECE).await.expect("the second piece");
    send_range(&mut raw, &id, &data, odd.clone()).await.expect("a part of the first");
    let had = PIECE + (odd.end - odd.start);

    let proxy = FaultProxy::start(server.addr(), u64::MAX, u64::MAX).await;
    let clients = connect(&proxy.url, 2).await;
    let progress = Progress::new(server.root().join("rest.bin"));
    let file = upload_parallel(&clients, &local, &id, &quick_retries(), progress.callback()).await.expect("upload");
    // Three pieces: 0..odd.start, odd.end..PIECE and the third.
    progress.check(had, 3, size);
    let sent = proxy.upstream_bytes();
    assert!(sent >= size - had && sent < size - had + MIB, "{sent} bytes sent for {} missing", size - had);
    assert_eq!(proxy.cuts(), 0);
    check_stored(&server, &clients[0], &id, "rest.bin", &data, &file).await;
}

/// Every connection is cut after a piece and 2 MiB of the next. The first
/// two pieces go over the two connections, and the third (3 MiB) over one
/// of them after its piece: it is cut, sent again over a new connection,
/// and the file arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_cut_off_with_their_connection_are_sent_again() {
    let server = TestServer::start().await;
    let data = random_bytes(2 * PIECE as usize + 3 * MIB as usize, 952);
    let dir = tempfile::tempdir().expect("temp dir");
    let local = local_file(&dir, &data);
    let proxy = FaultProxy::start(server.addr(), PIECE + 2 * MIB, u64::MAX).await;
    let clients = connect(&proxy.url, 2).await;
    let id = start_ranged(&server.client().await, "flaky.bin", data.len() as u64).await;
    let progress = Progress::new(server.root().join("flaky.bin"));

    let file = upload_parallel(&clients, &local, &id, &quick_retries(), progress.callback())
        .await
        .expect("upload through cuts");
    assert!(proxy.cuts() >= 1, "3 pieces, at most one whole per connection, 2 clients: a cut");
    check_stored(&server, &server.client().await, &id, "flaky.bin", &data, &file).await;
    progress.check(0, 3, data.len() as u64);
}

/// An empty file and a one-piece file; a local file of another size and a
/// session that is not ranged are refused without harm; a size is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_and_refusals() {
    let server = TestServer::start().await;
    let clients = connect(&server.url, 2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    for (remote, len) in [("empty.bin", 0), ("small.bin", 100 * 1024 + 1)] {
        let data = random_bytes(len, 953);
        let local = local_file(&dir, &data);
        let id = start_ranged(&clients[0], remote, len as u64).await;
        let progress = Progress::new(server.root().join(remote));
        let file = upload_parallel(&clients, &local, &id, &quick_retries(), progress.callback()).await.expect(remote);
        check_stored(&server, &clients[0], &id, remote, &data, &file).await;
        progress.check(0, usize::from(len > 0), len as u64);
    }

    let local = local_file(&dir, b"eleven byte");
    let id = start_ranged(&clients[0], "mismatch.bin", 12).await;
    let error = upload_parallel(&clients, &local, &id, &quick_retries(), |_| {}).await.expect_err("another size");
    assert!(matches!(error, Error::Protocol(_)), "{error:?}");
    let state = clients[0].query_upload(&id).await.expect("the session is untouched");
    assert_eq!(state.ranges, Some(Vec::new()));
    clients[0].abort_upload(&id).await.expect("abort");

    let ordinary = clients[0].create_upload("ordinary.bin", &options(11)).await.expect("create");
    let error = upload_parallel(&clients, &local, &ordinary, &quick_retries(), |_| {}).await.expect_err("not ranged");
    assert!(error.to_string().contains("not a ranged session"), "{error}");
    clients[0].abort_upload(&ordinary).await.expect("abort");

    let no_size = UploadOptions { size: None, ..options(0) };
    assert!(clients[0].create_ranged_upload("nosize.bin", &no_size).await.is_err(), "a ranged upload needs a size");
    let empty: &[Client] = &[];
    assert!(upload_parallel(empty, &local, &id, &quick_retries(), |_| {}).await.is_err(), "no connection");
    assert!(server.staging_drains().await, "staging: {:?}", server.snapshot());
    for name in ["mismatch.bin", "ordinary.bin", "nosize.bin"] {
        assert!(!server.root().join(name).exists(), "{name}");
    }
}

/// Create-only through the client: a path that exists is refused at once;
/// one that appears meanwhile is refused at the commit, leaving it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_only_through_the_client() {
    let server = TestServer::start().await;
    let clients = connect(&server.url, 2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = random_bytes(64 * 1024, 954);
    let local = local_file(&dir, &data);
    let create_only = UploadOptions { create_only: true, ..options(data.len() as u64) };
    std::fs::write(server.root().join("taken.bin"), b"taken").expect("place a file");
    let refused = clients[0].create_ranged_upload("taken.bin", &create_only).await.expect_err("exists");
    assert_eq!(refused.code(), Some(Code::AlreadyExists));

    let id = clients[0].create_ranged_upload("late.bin", &create_only).await.expect("create").expect("ranged");
    let target = server.root().join("late.bin");
    let appear = move |_bytes: u64| {
        let _ = std::fs::write(&target, b"theirs");
    };
    let error = upload_parallel(&clients, &local, &id, &quick_retries(), appear).await.expect_err("appeared");
    assert_eq!(error.code(), Some(Code::AlreadyExists), "{error:?}");
    assert_eq!(std::fs::read(server.root().join("late.bin")).expect("theirs"), b"theirs");
    let state = clients[0].query_upload(&id).await.expect("the session stays");
    let ranges: Option<Vec<(u64, u64)>> = state.ranges.map(|r| r.iter().map(|r| (r.start, r.end)).collect());
    assert_eq!(ranges, Some(vec![(0, data.len() as u64)]));
    clients[0].abort_upload(&id).await.expect("abort");
    assert!(server.staging_drains().await);
}
