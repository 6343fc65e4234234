//! Crash tests: a real `ferry serve` is SIGKILLed at named points of its write
//! path (`FERRY_CRASH_AT`, compiled in only with the `crash-points` feature,
//! which the test command enables), and at random moments. After a restart:
//! no partial or corrupt file is visible, the committed offset is at least
//! the last one acknowledged, and the upload resumes to the right SHA-256.

#![cfg(feature = "crash-points")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ferry_client::{Client, Code, RetryPolicy, UploadOptions};

mod support;
use support::{MIB, Server, random_bytes, sha256_hex};

/// A work dir with the server's root and a local file of `size` bytes.
struct Case {
    dir: tempfile::TempDir,
    data: Vec<u8>,
}

impl Case {
    fn new(size: usize, seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = random_bytes(size, seed);
        std::fs::write(dir.path().join("source.bin"), &data).expect("write the local file");
        Self { dir, data }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn source(&self) -> PathBuf {
        self.dir.path().join("source.bin")
    }

    fn options(&self) -> UploadOptions {
        UploadOptions { size: Some(self.data.len() as u64), ..UploadOptions::default() }
    }

    /// Nothing partial or corrupt at `remote`: absent, or exactly the data.
    fn assert_nothing_partial(&self, remote: &str) {
        if let Ok(stored) = std::fs::read(self.root().join(remote)) {
            assert!(stored == self.data, "a partial or corrupt file is visible at {remote}");
        }
    }

    /// After a restart: the committed offset is at least `acked`, and the
    /// upload completes (or had already been committed) with the right digest.
    async fn resume_and_check(&self, client: &Client, id: &str, remote: &str, acked: u64) {
        match client.query_upload(id).await {
            Ok(state) => {
                assert!(state.committed >= acked, "committed {} < acknowledged {acked}", state.committed);
                let file = client
                    .upload_file_resumable(&self.source(), id, &RetryPolicy::default(), |_| {})
                    .await
                    .expect("resume after the crash");
                assert_eq!(file.sha256.as_deref(), Some(sha256_hex(&self.data).as_str()));
            }
            // The crash came after the file was renamed into place: the
            // session is gone and the file must be whole.
            Err(e) if e.code() == Some(Code::NotFound) => {
                let stat = client.stat(remote).await.expect("the committed file");
                assert_eq!(stat.sha256.as_deref(), Some(sha256_hex(&self.data).as_str()));
            }
            Err(e) => panic!("query after the crash: {e}"),
        }
        assert!(std::fs::read(self.root().join(remote)).expect("stored file") == self.data);
    }
}

fn assert_killed(status: ExitStatus) {
    assert_eq!(status.signal(), Some(9), "expected death by SIGKILL, got {status}");
}

/// One upload of 80 MiB (checkpoints at 32 and 64 MiB, then the commit),
/// with the server set to die at `point`.
async fn crash_during_upload(point: &str) {
    let case = Case::new(80 * MIB + 3, 80);
    let mut server = Server::start(&case.root(), Some(point), &[]);
    let client = Client::connect(server.url()).await.expect("connect");
    let id = client.create_upload("crash.bin", &case.options()).await.expect("create");
    let acked = Arc::new(AtomicU64::new(0));
    let seen = acked.clone();
    let no_retry = RetryPolicy { max_attempts_without_progress: 0, ..RetryPolicy::default() };
    let result = client
        .upload_file_resumable(&case.source(), &id, &no_retry, move |n| {
            seen.fetch_max(n, Ordering::Relaxed);
        })
        .await;
    assert!(result.is_err(), "the server should have died at {point}");
    assert_killed(server.wait());
    case.assert_nothing_partial("crash.bin");

    let restarted = Server::start(&case.root(), None, &[]);
    let client = Client::connect(restarted.url()).await.expect("connect after restart");
    case.assert_nothing_partial("crash.bin");
    case.resume_and_check(&client, &id, "crash.bin", acked.load(Ordering::Relaxed)).await;
}

macro_rules! crash_point_tests {
    ($($name:ident => $point:literal,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            assert!(ferry_store::crash::POINTS.contains(&$point), "unknown crash point {}", $point);
            crash_during_upload($point).await;
        }
    )*};
}

crash_point_tests! {
    crash_before_a_checkpoint_data_sync => "checkpoint.before-data-sync",
    crash_after_a_checkpoint_data_sync => "checkpoint.after-data-sync",
    crash_after_a_journal_update => "checkpoint.after-journal",
    crash_after_verification => "commit.after-verify",
    crash_after_the_commit_file_sync => "commit.after-file-sync",
    crash_after_the_rename => "commit.after-rename",
    crash_after_the_directory_sync => "commit.after-dir-sync",
}

/// Two interrupted sessions with bytes past their journals; the server dies
/// while recovering them; the next start recovers both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_recovery_is_recovered() {
    let case = Case::new(40 * MIB, 41);
    let mut ids = Vec::new();
    // Each session is left by a server that died right after its first
    // checkpoint: 32 MiB journaled, possibly more written.
    for remote in ["one.bin", "two.bin"] {
        let mut server = Server::start(&case.root(), Some("checkpoint.after-journal"), &[]);
        let client = Client::connect(server.url()).await.expect("connect");
        let id = client.create_upload(remote, &case.options()).await.expect("create");
        let no_retry = RetryPolicy { max_attempts_without_progress: 0, ..RetryPolicy::default() };
        let _ = client.upload_file_resumable(&case.source(), &id, &no_retry, |_| {}).await;
        assert_killed(server.wait());
        ids.push((remote, id));
    }
    for (_, id) in &ids {
        let data = case.root().join(".ferry/uploads").join(id).join("data");
        let mut file = std::fs::OpenOptions::new().append(true).open(data).expect("session data");
        std::io::Write::write_all(&mut file, b"never journaled").expect("append");
    }

    let mut crashing = Server::start(&case.root(), Some("recovery.after-first-session"), &[]);
    assert!(crashing.url.is_none(), "the server died before listening");
    assert_killed(crashing.wait());

    let server = Server::start(&case.root(), None, &[]);
    let client = Client::connect(server.url()).await.expect("connect");
    for (remote, id) in &ids {
        case.resume_and_check(&client, id, remote, 0).await;
    }
}

/// The collector dies after removing the first of two expired sessions: the
/// next start sees one session gone, the other whole, and no debris.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_expiry_leaves_no_debris() {
    let case = Case::new(MIB, 7);
    let mut ids = Vec::new();
    {
        let server = Server::start(&case.root(), None, &[]);
        let client = Client::connect(server.url()).await.expect("connect");
        for remote in ["a.bin", "b.bin"] {
            ids.push(client.create_upload(remote, &case.options()).await.expect("create"));
        }
    }
    // Make both sessions look an hour idle.
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for id in &ids {
        let journal = std::fs::File::options()
            .write(true)
            .open(case.root().join(".ferry/uploads").join(id).join("journal"))
            .expect("journal");
        journal.set_modified(an_hour_ago).expect("age the journal");
    }

    let mut crashing = Server::start(&case.root(), Some("expiry.after-first-removal"), &["--upload-ttl", "10m"]);
    assert_killed(crashing.wait());

    let server = Server::start(&case.root(), None, &[]);
    let client = Client::connect(server.url()).await.expect("connect");
    let mut alive = 0;
    for id in &ids {
        match client.query_upload(id).await {
            Ok(state) => {
                assert_eq!(state.committed, 0);
                alive += 1;
            }
            Err(e) => assert_eq!(e.code(), Some(Code::NotFound), "{e}"),
        }
    }
    assert_eq!(alive, 1, "exactly the first session was removed before the crash");
    let sessions = std::fs::read_dir(case.root().join(".ferry/uploads")).expect("uploads").count();
    assert_eq!(sessions, 1, "no half-removed session is left behind");
}

/// SIGKILL at moments nobody chose, a few times over one upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_during_an_upload_lose_nothing_acknowledged() {
    let case = Case::new(160 * MIB, 160);
    let mut server = Server::start(&case.root(), None, &[]);
    let id = {
        let client = Client::connect(server.url()).await.expect("connect");
        client.create_upload("random.bin", &case.options()).await.expect("create")
    };
    let acked = Arc::new(AtomicU64::new(0));
    let source = case.source();
    for round in 0..3u64 {
        let client = Client::connect(server.url()).await.expect("connect");
        let seen = acked.clone();
        let no_retry = RetryPolicy { max_attempts_without_progress: 0, ..RetryPolicy::default() };
        let upload = client.upload_file_resumable(&source, &id, &no_retry, move |n| {
            seen.fetch_max(n, Ordering::Relaxed);
        });
        // A delay from the clock's nanoseconds: 20-220 ms into the stream.
        let nanos = u64::from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos());
        let delay = Duration::from_millis(20 + (nanos + round * 7919) % 200);
        let _ = tokio::time::timeout(delay, upload).await;
        server.kill();
        case.assert_nothing_partial("random.bin");
        server = Server::start(&case.root(), None, &[]);
        let client = Client::connect(server.url()).await.expect("connect after restart");
        match client.query_upload(&id).await {
            Ok(state) => assert!(state.committed >= acked.load(Ordering::Relaxed), "round {round}"),
            Err(e) if e.code() == Some(Code::NotFound) => break, // finished before the kill
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    let client = Client::connect(server.url()).await.expect("connect");
    case.resume_and_check(&client, &id, "random.bin", acked.load(Ordering::Relaxed)).await;
}
