//! What the conformance rules (`tests/conformance.rs`) stand on: a [`Fixture`]
//! per test (a fresh, empty store of one backend, reopenable as another
//! instance over the same root or bucket, with the backend's documented
//! differences as knobs), and small helpers to write, read and list.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_store::{ByteRange, Download, EntryKind, LocalStore, Metadata, Result, Sha256, Store, StorePath, Upload};
use tokio_stream::StreamExt;

#[cfg(feature = "s3")]
pub mod s3;

/// The part size every backend is tested with: S3's minimum, which keeps the
/// data of the boundary-size rules small. The local store has no parts; the
/// same sizes still cross its 1 MiB read chunks.
pub const PART_SIZE: u64 = 5 << 20;

/// Bytes per `Upload::write` in the helpers: odd, so that writes straddle
/// part and chunk boundaries instead of lining up with them.
pub const WRITE_CHUNK: usize = (1 << 20) - 17;

/// The most a download chunk may be: both backends' default read chunk.
pub const READ_CHUNK: usize = 1 << 20;

/// How long one step that could hang (a takeover waiting for a stream) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a whole rule may take.
pub const RULE_TIMEOUT: Duration = Duration::from_secs(120);

/// A fresh, empty store of one backend, for one test.
#[derive(Debug)]
pub enum Fixture {
    Local(LocalFixture),
    #[cfg(feature = "s3")]
    S3(s3::S3Fixture),
}

/// A local store rooted at a fresh temporary directory.
#[derive(Debug)]
pub struct LocalFixture {
    root: tempfile::TempDir,
    /// Whether the filesystem keeps user extended attributes, where the
    /// local store caches digests.
    xattrs: bool,
}

impl Fixture {
    pub fn local() -> Self {
        let root = tempfile::Builder::new()
            .prefix("conformance-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("creating a temporary root");
        let probe = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).expect("creating a probe file");
        let xattrs =
            rustix::fs::setxattr(probe.path(), "user.ferry.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
        Fixture::Local(LocalFixture { root, xattrs })
    }

    /// Opens a store over this fixture's root or bucket: a new instance on
    /// every call. A local root admits one instance at a time (it is locked),
    /// so drop the previous one first unless [`Fixture::concurrent_instances`].
    pub async fn open(&self) -> Arc<dyn Store> {
        match self {
            Fixture::Local(local) => Arc::new(LocalStore::open(local.root.path()).expect("opening the local store")),
            #[cfg(feature = "s3")]
            Fixture::S3(s3) => s3.open().await,
        }
    }

    /// Whether two store instances may serve the same root at once. S3
    /// servers are stateless front ends over a bucket; a local root is locked
    /// by the one server using it (a second instance is a restart).
    pub fn concurrent_instances(&self) -> bool {
        match self {
            Fixture::Local(_) => false,
            #[cfg(feature = "s3")]
            Fixture::S3(_) => true,
        }
    }

    /// Whether a directory outlives its last file. In S3 directories are key
    /// prefixes: deleting the last file under one removes it.
    pub fn keeps_empty_directories(&self) -> bool {
        match self {
            Fixture::Local(_) => true,
            #[cfg(feature = "s3")]
            Fixture::S3(_) => false,
        }
    }

    /// Whether directories have times and permission bits of their own. In
    /// S3 they are key prefixes (or empty markers): `set_dir_metadata` is
    /// `Unsupported` and their time is the epoch.
    pub fn keeps_dir_metadata(&self) -> bool {
        match self {
            Fixture::Local(_) => true,
            #[cfg(feature = "s3")]
            Fixture::S3(_) => false,
        }
    }

    /// Whether `stat` and `list` know the SHA-256 of a file the store wrote.
    /// S3 keeps it in the file's record; the local store caches it in an
    /// extended attribute, which some filesystems do not have ("simply never
    /// hit the cache").
    pub fn stat_knows_digest(&self) -> bool {
        match self {
            Fixture::Local(local) => local.xattrs,
            #[cfg(feature = "s3")]
            Fixture::S3(_) => true,
        }
    }

    /// The committed offset `Upload::sync` reports after `received` bytes of
    /// a fresh upload: everything for the local store (fdatasync + journal),
    /// the last part boundary for S3 (a partial part is not durable).
    pub fn committed_after_sync(&self, received: u64) -> u64 {
        match self {
            Fixture::Local(_) => received,
            #[cfg(feature = "s3")]
            Fixture::S3(_) => received - received % PART_SIZE,
        }
    }

    /// Creates files straight in the backend's storage, bypassing the store
    /// (as another program would: they have no recorded digest). Fast, for
    /// rules that need thousands of files.
    pub async fn seed(&self, files: &[(String, Bytes)]) {
        match self {
            Fixture::Local(local) => {
                for (raw, bytes) in files {
                    let file = local.root.path().join(path(raw).as_str());
                    std::fs::create_dir_all(file.parent().expect("a parent")).expect("creating a seeded directory");
                    std::fs::write(&file, bytes).expect("seeding a file");
                }
            }
            #[cfg(feature = "s3")]
            Fixture::S3(s3) => s3.seed(files).await,
        }
    }

    /// What the backend holds for uploads that are not finished: local
    /// session directories; S3 session records and multipart uploads.
    pub async fn staged(&self) -> Vec<String> {
        match self {
            Fixture::Local(local) => {
                let uploads = local.root.path().join(".ferry/uploads");
                let mut staged: Vec<String> = std::fs::read_dir(uploads)
                    .expect("reading .ferry/uploads")
                    .map(|entry| format!("session {}", entry.expect("a directory entry").file_name().to_string_lossy()))
                    .collect();
                staged.sort();
                staged
            }
            #[cfg(feature = "s3")]
            Fixture::S3(s3) => s3.staged().await,
        }
    }

    /// Asserts that nothing of any upload is left behind. A dropped S3
    /// upload aborts its multipart upload in the background: allow it a moment.
    pub async fn assert_nothing_staged(&self, context: &str) {
        let mut staged = self.staged().await;
        for _ in 0..50 {
            if staged.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            staged = self.staged().await;
        }
        panic!("{context}: expected nothing staged, found {staged:?}");
    }
}

/// Runs a rule on a fresh multi-threaded runtime, within [`RULE_TIMEOUT`].
pub fn run<F: Future<Output = ()>>(rule: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("building a runtime");
    runtime.block_on(async {
        tokio::time::timeout(RULE_TIMEOUT, rule).await.expect("the rule did not finish in time");
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// Awaits a step that must not hang (one that waits for a takeover, say).
pub async fn within<T>(what: &str, step: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, step).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: did not complete within {STEP_TIMEOUT:?} (hung)"),
    }
}

/// `expect_err!(result, Error::NotFound { .. }, "context {}", x)`: the
/// result is that error (a guard may follow the pattern), or the test fails
/// saying what came instead.
macro_rules! expect_err {
    ($result:expr, $pattern:pat $(if $guard:expr)?, $($context:tt)+) => {
        match $result {
            Err($pattern) $(if $guard)? => {}
            other => panic!(
                "{}: expected Err({}), got {:?}",
                format!($($context)+),
                stringify!($pattern),
                other.map(|_| ())
            ),
        }
    };
}

pub fn path(raw: &str) -> StorePath {
    StorePath::parse(raw).expect("a valid store path")
}

/// `len` deterministic pseudo-random bytes: `seed` picks the sequence, so
/// two versions of a file differ everywhere.
pub fn data(len: u64, seed: u64) -> Bytes {
    let len = usize::try_from(len).expect("test data fits in memory");
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Writes `bytes` in [`WRITE_CHUNK`] pieces.
pub async fn write_all(upload: &mut Box<dyn Upload>, bytes: &Bytes) -> Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + WRITE_CHUNK).min(bytes.len());
        upload.write(bytes.slice(at..end)).await?;
        at = end;
    }
    Ok(())
}

/// Uploads `bytes` to `path` (overwriting) with its size and digest declared.
pub async fn put(store: &dyn Store, raw: &str, bytes: &Bytes) -> Metadata {
    let options = ferry_store::WriteOptions {
        size: Some(bytes.len() as u64),
        sha256: Some(Sha256::of(bytes)),
        ..Default::default()
    };
    let mut upload = store.create_upload(&path(raw), options).await.unwrap_or_else(|e| panic!("create {raw}: {e}"));
    write_all(&mut upload, bytes).await.unwrap_or_else(|e| panic!("write {raw}: {e}"));
    upload.commit(None).await.unwrap_or_else(|e| panic!("commit {raw}: {e}"))
}

/// A download's header and all of its bytes, each chunk checked against
/// [`READ_CHUNK`].
pub async fn read_all(store: &dyn Store, raw: &str, range: ByteRange) -> Result<(Download, Vec<u8>)> {
    let mut download = store.read(&path(raw), range).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = download.body.next().await {
        let chunk = chunk?;
        assert!(chunk.len() <= READ_CHUNK, "{raw}: a download chunk of {} bytes", chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    download.body = Box::pin(tokio_stream::empty());
    Ok((download, bytes))
}

/// The file's whole content.
pub async fn content(store: &dyn Store, raw: &str) -> Vec<u8> {
    read_all(store, raw, ByteRange::ALL).await.unwrap_or_else(|e| panic!("reading {raw}: {e}")).1
}

/// A listing, batch by batch.
pub async fn list_batches(store: &dyn Store, dir: Option<&str>, recursive: bool) -> Result<Vec<Vec<Metadata>>> {
    let dir = dir.map(path);
    let mut stream = store.list(dir.as_ref(), recursive).await?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch?);
    }
    Ok(batches)
}

/// A listing as `(path, kind)` pairs, in the order listed.
pub async fn list_entries(store: &dyn Store, dir: Option<&str>, recursive: bool) -> Vec<Entry> {
    list_batches(store, dir, recursive)
        .await
        .unwrap_or_else(|e| panic!("listing {dir:?} (recursive: {recursive}): {e}"))
        .into_iter()
        .flatten()
        .map(|meta| (meta.path.as_str().to_owned(), meta.kind))
        .collect()
}

/// A listed entry, as the rules compare them.
pub type Entry = (String, EntryKind);

/// Shorthand for expected listings.
pub fn file(raw: &str) -> Entry {
    (raw.to_owned(), EntryKind::File)
}

pub fn dir(raw: &str) -> Entry {
    (raw.to_owned(), EntryKind::Directory)
}
