//! One large file over several connections at once:
//! `ferry_client::download_parallel` fetches pieces of `PIECE` bytes with
//! ranged `Download`s, writes them in place into a temp file beside the
//! target, verifies the whole against the server's SHA-256 and renames it
//! into place with the server's mtime and permission bits.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_client::{Client, Code, Error, PIECE, RemoteFile, RetryPolicy, UploadOptions, download_parallel};

use crate::harness::{TestServer, random_bytes, sha256_hex};
use crate::proxy::FaultProxy;

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

/// Uploads `data` to `remote` with an mtime and permission bits of its own.
async fn upload_with_meta(client: &Client, remote: &str, data: &[u8], mtime: SystemTime, mode: u32) -> RemoteFile {
    let options = UploadOptions {
        size: Some(data.len() as u64),
        mtime: Some(mtime),
        permissions: Some(mode),
        ..UploadOptions::default()
    };
    let stored = client.upload(remote, std::io::Cursor::new(data.to_vec()), options, |_| {}).await.expect("upload");
    assert_eq!((stored.size, stored.mtime, stored.permissions), (data.len() as u64, Some(mtime), mode));
    stored
}

/// Places `data` at `remote` in the served root by hand, with an mtime and
/// permission bits, and returns what a download of it must answer. No digest
/// is cached, so the server computes it on the first request. Cheaper than
/// an upload (no fsync): with uploads of all these files, the disk traffic
/// of this module made resume.rs's test of durable-offset acknowledgements
/// (timing-sensitive) fail in most runs of the whole binary.
fn place(server: &TestServer, remote: &str, data: &[u8], mtime: SystemTime, mode: u32) -> RemoteFile {
    let path = server.root().join(remote);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("parent dirs");
    std::fs::write(&path, data).expect("place file");
    let handle = std::fs::File::options().write(true).open(&path).expect("open placed file");
    handle.set_modified(mtime).expect("set mtime");
    handle.set_permissions(std::fs::Permissions::from_mode(mode)).expect("set mode");
    RemoteFile {
        path: remote.to_owned(),
        is_dir: false,
        size: data.len() as u64,
        mtime: Some(mtime),
        permissions: mode,
        sha256: Some(sha256_hex(data)),
    }
}

/// The names in a directory, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Records what a progress callback was told: the calls and the largest value.
#[derive(Clone, Default)]
struct Progress {
    calls: Arc<AtomicU64>,
    max: Arc<AtomicU64>,
}

impl Progress {
    fn callback(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let (calls, max) = (self.calls.clone(), self.max.clone());
        move |bytes| {
            calls.fetch_add(1, Ordering::Relaxed);
            max.fetch_max(bytes, Ordering::Relaxed);
        }
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// Downloads `remote` over `connections` clients into a fresh directory and
/// checks everything: bytes, digest, mtime, mode, progress, no part left.
async fn download_and_check(server: &TestServer, remote: &str, data: &[u8], stored: &RemoteFile, connections: usize) {
    let clients = connect(&server.url, connections).await;
    let local = tempfile::tempdir().expect("temp dir");
    let target = local.path().join("copy.bin");
    let progress = Progress::default();
    let file = download_parallel(&clients, remote, &target, false, &quick_retries(), progress.callback())
        .await
        .unwrap_or_else(|e| panic!("download over {connections} connections: {e}"));

    let sha256 = sha256_hex(data);
    assert_eq!(
        (file.path.as_str(), file.is_dir, file.size, file.sha256.as_deref()),
        (remote, false, data.len() as u64, Some(sha256.as_str())),
        "{connections} connections: the returned file"
    );
    assert_eq!((file.mtime, file.permissions), (stored.mtime, stored.permissions), "{connections} connections");
    assert!(std::fs::read(&target).expect("read copy") == data, "{connections} connections: the copy differs");
    let meta = std::fs::metadata(&target).expect("copy metadata");
    assert_eq!(
        meta.modified().expect("mtime"),
        stored.mtime.expect("stored mtime"),
        "{connections} connections: mtime"
    );
    assert_eq!(meta.permissions().mode() & 0o777, stored.permissions, "{connections} connections: mode");
    assert_eq!(names_in(local.path()), ["copy.bin"], "{connections} connections: no .ferry-part left");
    assert_eq!(progress.max(), data.len() as u64, "{connections} connections: progress reaches the size");
    // One report per piece, each after the piece is written.
    assert_eq!(progress.calls(), (data.len() as u64).div_ceil(PIECE), "{connections} connections: progress calls");
}

// ---------------------------------------------------------------------------

/// 3 pieces and 12345 bytes (4 pieces, the last short), over 3 connections
/// and over 5 (more connections than pieces: the extra ones have nothing to do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_arrives_whole_over_several_connections() {
    let server = TestServer::start().await;
    let data = random_bytes(3 * PIECE as usize + 12345, 401);
    let mtime = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    let stored = upload_with_meta(&server.client().await, "big/par.bin", &data, mtime, 0o640).await;

    download_and_check(&server, "big/par.bin", &data, &stored, 3).await;
    download_and_check(&server, "big/par.bin", &data, &stored, 5).await;
}

/// Exactly two pieces (the smallest file cut into pieces, the last one
/// full), of a file placed in the root by other means: no digest cached, so
/// the server computes it on the first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_two_pieces_of_a_file_placed_by_hand() {
    let server = TestServer::start().await;
    let data = random_bytes(2 * PIECE as usize, 402);
    let mtime = UNIX_EPOCH + Duration::new(1_500_000_000, 7);
    let placed = place(&server, "placed.bin", &data, mtime, 0o600);
    let stat = server.client().await.stat("placed.bin").await.expect("stat");
    assert_eq!(stat, RemoteFile { sha256: None, ..placed.clone() }, "nothing cached yet");

    download_and_check(&server, "placed.bin", &data, &placed, 2).await;
}

/// Files of less than two pieces (empty, one byte, a few KiB, one byte short
/// of two pieces) and any file over a single connection are plain downloads,
/// with the same outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_and_a_single_connection_fall_back_to_a_plain_download() {
    let server = TestServer::start().await;
    let clients = connect(&server.url, 3).await;
    let local = tempfile::tempdir().expect("temp dir");
    let mtime = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
    let sizes = [0, 1, 12345, 2 * PIECE as usize - 1];
    for (i, size) in sizes.into_iter().enumerate() {
        let remote = format!("small/{size}.bin");
        let data = random_bytes(size, 410 + i as u64);
        let stored = place(&server, &remote, &data, mtime, 0o644);
        let target = local.path().join(format!("{size}.bin"));
        let progress = Progress::default();
        let file = download_parallel(&clients, &remote, &target, false, &quick_retries(), progress.callback())
            .await
            .unwrap_or_else(|e| panic!("{remote}: {e}"));
        assert_eq!(file, stored, "{remote}: the returned file");
        assert!(std::fs::read(&target).expect("read copy") == data, "{remote}: the copy differs");
        let meta = std::fs::metadata(&target).expect("copy metadata");
        assert_eq!((meta.modified().expect("mtime"), meta.permissions().mode() & 0o777), (mtime, 0o644), "{remote}");
        assert_eq!(progress.max(), size as u64, "{remote}: progress reaches the size");
    }

    // Two pieces over a single connection.
    let data = random_bytes(2 * PIECE as usize, 419);
    let stored = place(&server, "one/conn.bin", &data, mtime, 0o600);
    let target = local.path().join("conn.bin");
    let file = download_parallel(&clients[..1], "one/conn.bin", &target, false, &quick_retries(), |_| {})
        .await
        .expect("one connection");
    assert_eq!(file, stored);
    assert!(std::fs::read(&target).expect("read copy") == data, "one connection: the copy differs");

    let mut expected: Vec<String> = sizes.iter().map(|size| format!("{size}.bin")).collect();
    expected.push("conn.bin".into());
    expected.sort();
    assert_eq!(names_in(local.path()), expected, "only the targets, no .ferry-part");

    // No connection at all is refused before anything happens.
    let none = download_parallel(&[], "one/conn.bin", &local.path().join("none.bin"), false, &quick_retries(), |_| {})
        .await
        .expect_err("no connections");
    assert!(matches!(none, Error::Protocol(_)), "{none:?}");
    assert!(!local.path().join("none.bin").exists());
}

/// Without `overwrite`, an existing local file is refused (and left as it
/// was); with it, the file is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_local_file_is_replaced_only_with_overwrite() {
    let server = TestServer::start().await;
    let data = random_bytes(2 * PIECE as usize + 777, 420);
    let mtime = UNIX_EPOCH + Duration::new(1_650_000_000, 0);
    let stored = place(&server, "over.bin", &data, mtime, 0o640);
    let clients = connect(&server.url, 3).await;
    let local = tempfile::tempdir().expect("temp dir");
    let target = local.path().join("over.bin");
    std::fs::write(&target, b"the local version").expect("write local");
    let before = std::fs::metadata(&target).expect("metadata");

    let refused = download_parallel(&clients, "over.bin", &target, false, &quick_retries(), |_| {})
        .await
        .expect_err("the local file exists");
    assert!(matches!(&refused, Error::LocalExists(path) if path == &target), "{refused:?}");
    assert_eq!(std::fs::read(&target).expect("read local"), b"the local version");
    let after = std::fs::metadata(&target).expect("metadata");
    assert_eq!((after.modified().expect("mtime"), after.ino()), (before.modified().expect("mtime"), before.ino()));
    assert_eq!(names_in(local.path()), ["over.bin"], "nothing else written");

    let file =
        download_parallel(&clients, "over.bin", &target, true, &quick_retries(), |_| {}).await.expect("overwrite");
    assert_eq!(file, stored);
    assert!(std::fs::read(&target).expect("read copy") == data, "the replaced copy differs");
    let meta = std::fs::metadata(&target).expect("metadata");
    assert_eq!((meta.modified().expect("mtime"), meta.permissions().mode() & 0o777), (mtime, 0o640));
    assert_eq!(names_in(local.path()), ["over.bin"], "no .ferry-part left");
}

/// A missing remote file is NOT_FOUND, and nothing is created locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_remote_file_is_not_found() {
    let server = TestServer::start().await;
    let clients = connect(&server.url, 3).await;
    let local = tempfile::tempdir().expect("temp dir");
    let target = local.path().join("missing.bin");

    let missing =
        download_parallel(&clients, "no/such.bin", &target, true, &quick_retries(), |_| {}).await.expect_err("missing");
    assert_eq!(missing.code(), Some(Code::NotFound), "{missing:?}");
    assert!(names_in(local.path()).is_empty(), "nothing created: {:?}", names_in(local.path()));
}

/// Both connections go through a proxy that cuts each after 18 MiB: one
/// piece and 2 MiB of the next. A connection carries one whole piece at
/// most, so the 3 whole pieces of the file (and a short fourth) need at
/// least 3 connections over the 2 clients: at least one cut, in the middle
/// of a piece. The interrupted piece is fetched again (over a new
/// connection) and the file arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_cut_off_with_their_connection_are_fetched_again() {
    let server = TestServer::start().await;
    let data = random_bytes(3 * PIECE as usize + 4321, 430);
    let mtime = UNIX_EPOCH + Duration::new(1_620_000_000, 42);
    let stored = place(&server, "flaky.bin", &data, mtime, 0o640);
    let budget = PIECE + 2 * MIB;
    let proxy = FaultProxy::start(server.addr(), u64::MAX, budget).await;
    let clients = connect(&proxy.url, 2).await;
    let local = tempfile::tempdir().expect("temp dir");
    let target = local.path().join("flaky.bin");
    let progress = Progress::default();

    let file = download_parallel(&clients, "flaky.bin", &target, false, &quick_retries(), progress.callback())
        .await
        .expect("download through cuts");
    assert_eq!(file, stored);
    assert!(std::fs::read(&target).expect("read copy") == data, "the copy differs");
    let meta = std::fs::metadata(&target).expect("metadata");
    assert_eq!((meta.modified().expect("mtime"), meta.permissions().mode() & 0o777), (mtime, 0o640));
    assert_eq!(names_in(local.path()), ["flaky.bin"], "no .ferry-part left");
    let cuts = proxy.cuts();
    assert!(cuts >= 1, "3 whole pieces, at most one per connection, 2 clients: at least one cut, got {cuts}");
    // What a cut loses is the part of a piece it interrupted: at most what
    // the connection carried beyond its one whole piece.
    let refetched = proxy.downstream_bytes().saturating_sub(data.len() as u64);
    eprintln!("{cuts} cuts, {refetched} bytes fetched again");
    assert!(refetched <= cuts * (budget - PIECE) + MIB, "fetched {refetched} bytes again over {cuts} cuts");
    // A failed attempt reports no progress: one report per piece, ending at the size.
    assert_eq!(progress.max(), data.len() as u64);
    assert_eq!(progress.calls(), 4, "one report per piece");
}

/// The remote file is replaced (atomically: a new file renamed over it, as
/// the server commits; same size, other bytes) when the first piece is
/// written. Deterministic: pieces 0 and 1 are requested at the start, and
/// piece 2 only after a progress callback returned, which (a `Once`) is
/// after the rename; so piece 2 sees the new file. The download fails saying
/// the file changed, the local file is untouched and no temp file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_during_the_download_is_an_error() {
    let server = TestServer::start().await;
    let data = random_bytes(2 * PIECE as usize + 999, 440);
    let mtime = UNIX_EPOCH + Duration::new(1_630_000_000, 0);
    place(&server, "moving.bin", &data, mtime, 0o644);
    let mut other = data.clone();
    other[0] ^= 0xff;
    let (root, staged) = (server.root(), server.root().join(".moving.bin.new"));
    std::fs::write(&staged, &other).expect("write the replacement");
    let clients = connect(&server.url, 2).await;
    let local = tempfile::tempdir().expect("temp dir");
    let target = local.path().join("moving.bin");
    std::fs::write(&target, b"the local version").expect("write local");

    let replaced = Arc::new(std::sync::Once::new());
    let replace = {
        let replaced = replaced.clone();
        move |_bytes: u64| {
            // Concurrent callers wait until the first one has renamed.
            replaced.call_once(|| std::fs::rename(&staged, root.join("moving.bin")).expect("replace"));
        }
    };
    let changed = download_parallel(&clients, "moving.bin", &target, true, &quick_retries(), replace)
        .await
        .expect_err("the file changed");
    assert!(replaced.is_completed(), "the replacement happened");
    match &changed {
        Error::Protocol(message) => assert_eq!(message, "moving.bin changed during the download"),
        other => panic!("expected a protocol error saying it changed, got {other:?}"),
    }
    assert_eq!(std::fs::read(&target).expect("read local"), b"the local version", "the local file is untouched");
    assert_eq!(names_in(local.path()), ["moving.bin"], "no .ferry-part left");
}

/// One connection is cut every 8 MiB, before it can ever finish a 16 MiB
/// piece: it gives its piece back and stops, and the healthy connections
/// fetch the whole file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_keeps_failing_hands_its_pieces_to_the_others() {
    let server = TestServer::start().await;
    let data = random_bytes(4 * PIECE as usize + 77, 450);
    let mtime = UNIX_EPOCH + Duration::new(1_640_000_000, 0);
    let stored = place(&server, "shared.bin", &data, mtime, 0o644);
    let proxy = FaultProxy::start(server.addr(), u64::MAX, 8 * MIB).await;
    let mut clients = connect(&proxy.url, 1).await;
    clients.extend(connect(&server.url, 2).await);
    let local = tempfile::tempdir().expect("temp dir");
    let target = local.path().join("shared.bin");
    let policy = RetryPolicy { max_attempts_without_progress: 2, ..quick_retries() };

    let file = download_parallel(&clients, "shared.bin", &target, false, &policy, |_| {})
        .await
        .expect("the healthy connections finish the download");
    assert_eq!(file, stored);
    assert!(std::fs::read(&target).expect("read copy") == data, "the copy differs");
    assert!(proxy.cuts() >= 1, "the bad connection was cut");
    assert_eq!(names_in(local.path()), ["shared.bin"], "no .ferry-part left");
}

/// A file replaced by a shorter one while its pieces are fetched: the
/// pieces past the new end are refused by the server, and that is reported
/// as the file having changed, with nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_shrinks_during_the_download_is_reported_as_changed() {
    let server = TestServer::start().await;
    let data = random_bytes(3 * PIECE as usize + 999, 460);
    place(&server, "shrinking.bin", &data, UNIX_EPOCH + Duration::new(1_650_000_000, 0), 0o644);
    let (root, staged) = (server.root(), server.root().join(".shrinking.bin.new"));
    std::fs::write(&staged, b"short").expect("write the replacement");
    // One connection: pieces are fetched one after another, so every piece
    // after the first is asked for after the swap.
    let mut clients = connect(&server.url, 1).await;
    clients.extend(connect(&server.url, 1).await);
    let clients = vec![clients.remove(0), clients.remove(0)];
    let local = tempfile::tempdir().expect("temp dir");
    let target = local.path().join("shrinking.bin");
    let replaced = Arc::new(std::sync::Once::new());
    let replace = {
        let replaced = replaced.clone();
        move |_bytes: u64| replaced.call_once(|| std::fs::rename(&staged, root.join("shrinking.bin")).expect("replace"))
    };

    let error = download_parallel(&clients, "shrinking.bin", &target, false, &quick_retries(), replace)
        .await
        .expect_err("the file changed");
    assert!(error.to_string().contains("changed during the download"), "{error}");
    assert!(names_in(local.path()).is_empty(), "nothing left: {:?}", names_in(local.path()));
}
