//! An S3-compatible object store as a [`Store`] (feature `s3`): AWS S3,
//! Ceph RGW, MinIO, Garage, moto.
//!
//! Layout under `s3://BUCKET/PREFIX/`:
//!
//! | key | what |
//! |---|---|
//! | `PATH` | a file, as one object (written by a multipart upload, visible only once completed) |
//! | `.ferry/meta/PATH` | the file's SHA-256, size, mtime and permissions, tied to the object's ETag |
//! | `.ferry/uploads/ID` | a resumable session: the multipart upload id, the parts done, the hash state |
//!
//! Everything a session needs lives in the bucket, so any server over the
//! same bucket can resume it: servers are stateless front ends. Directories
//! do not exist in S3; they are the prefixes of keys (so an empty directory
//! cannot exist, and deleting the last file of one removes it).
//!
//! Transient errors are retried with backoff by object_store; what still
//! fails is [`Error::Unavailable`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

use crate::{
    BoxStream, ByteRange, Download, EntryKind, Error, Metadata, NewFile, Result, Sha256, Store, StorePath, Upload,
    UploadId, UploadStatus, WriteOptions,
};

mod complete;
mod credentials;
mod dirs;
mod upload;

/// Where and how to reach the bucket. Credentials come from the standard AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`, …) and, on AWS, instance or web
/// identity credentials.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix everything lives under ("" for the bucket's root).
    pub prefix: String,
    /// Endpoint URL for non-AWS servers (`http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Bytes per multipart part (at least 5 MiB, S3's minimum for all but the last).
    pub part_size: usize,
    /// Bytes per download chunk.
    pub read_chunk: usize,
    /// How long a failing request is retried (with backoff) before the
    /// backend counts as unavailable.
    pub retry_timeout: Duration,
}

impl S3Config {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn from_url(url: &str) -> std::result::Result<Self, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| format!("{url:?}: expected s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url:?}: no bucket name"));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: None,
            region: None,
            part_size: DEFAULT_PART_SIZE,
            read_chunk: 1024 * 1024,
            retry_timeout: Duration::from_secs(30),
        })
    }
}

/// 8 MiB parts: over S3's 5 MiB minimum, and at most two in memory per upload
/// (the one filling and the one in flight).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// The S3 backend.
#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    s3: AmazonS3,
    prefix: String,
    part_size: usize,
    read_chunk: usize,
    /// Sessions with a live stream in this process (a resume elsewhere is not seen).
    live: upload::Live,
    /// For the one request ferry signs itself (`complete.rs`).
    endpoint: complete::Endpoint,
}

/// What `.ferry/meta/PATH` holds.
#[derive(Debug, Serialize, Deserialize)]
struct FileRecord {
    etag: Option<String>,
    size: u64,
    sha256: String,
    /// Nanoseconds from the epoch, negative before it.
    mtime_ns: Option<i128>,
    permissions: u32,
}

/// A time as signed nanoseconds from the Unix epoch (files may predate it).
pub(super) fn to_unix_ns(time: SystemTime) -> i128 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

fn from_unix_ns(ns: i128) -> SystemTime {
    let magnitude = Duration::from_nanos(u64::try_from(ns.unsigned_abs()).unwrap_or(u64::MAX));
    match ns >= 0 {
        true => SystemTime::UNIX_EPOCH + magnitude,
        false => SystemTime::UNIX_EPOCH - magnitude,
    }
}

impl S3Store {
    /// Connects to the bucket and checks that it can be listed.
    pub async fn open(config: S3Config) -> Result<Self> {
        // reqwest's rustls has no built-in provider here: use ring, as tonic does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: 10,
            retry_timeout: config.retry_timeout,
        };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&config.bucket).with_retry(retry);
        // The environment first (from_env); then the shared files awscli uses.
        builder = credentials::from_shared_files(builder, config.region.is_some());
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        let endpoint = {
            use object_store::aws::AmazonS3ConfigKey as Setting;
            let region = builder.get_config_value(&Setting::Region).unwrap_or_else(|| "us-east-1".into());
            let base = builder
                .get_config_value(&Setting::Endpoint)
                .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
            let client = reqwest::Client::builder()
                .timeout(config.retry_timeout.max(Duration::from_secs(30)))
                .build()
                .map_err(|e| backend("configuring the S3 client", &e))?;
            complete::Endpoint {
                bucket_url: format!("{}/{}", base.trim_end_matches('/'), config.bucket),
                region,
                client,
            }
        };
        let s3 = builder.build().map_err(|e| backend("configuring the S3 client", &e))?;
        let store = Self {
            inner: Arc::new(Inner {
                s3,
                prefix: config.prefix.trim_matches('/').to_owned(),
                part_size: config.part_size.max(MIN_PART_SIZE),
                read_chunk: config.read_chunk.max(1),
                live: upload::Live::default(),
                endpoint,
            }),
        };
        // Fail at start-up, not on the first request, if the bucket is unreachable.
        let probe = store.inner.key_raw(".ferry/uploads");
        store.inner.s3.list_with_delimiter(Some(&probe)).await.map_err(|e| backend("listing the bucket", &e))?;
        Ok(store)
    }
}

/// File records read at once while listing: a listing of thousands of files
/// would otherwise wait for thousands of GETs one after another.
const LISTING_CONCURRENCY: usize = 32;
/// Small files stored at once by [`Store::put_files`].
const PUT_CONCURRENCY: usize = 8;

impl Inner {
    fn key_raw(&self, rel: &str) -> Key {
        match self.prefix.as_str() {
            "" => Key::from(rel),
            prefix => Key::from(format!("{prefix}/{rel}")),
        }
    }

    fn key(&self, path: &StorePath) -> Key {
        self.key_raw(path.as_str())
    }

    fn meta_key(&self, path: &StorePath) -> Key {
        self.key_raw(&format!(".ferry/meta/{}", path.as_str()))
    }

    fn session_key(&self, id: &UploadId) -> Key {
        self.key_raw(&format!(".ferry/uploads/{id}"))
    }

    /// The store path of a key under the prefix, if it is a served one.
    fn store_path(&self, key: &Key) -> Option<StorePath> {
        let key = key.as_ref();
        let rel = match self.prefix.as_str() {
            "" => key,
            prefix => key.strip_prefix(prefix)?.strip_prefix('/')?,
        };
        StorePath::parse(rel).ok()
    }

    async fn file_record(&self, path: &StorePath) -> Option<FileRecord> {
        let bytes = self.s3.get(&self.meta_key(path)).await.ok()?.bytes().await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Metadata of a file object, with its digest when the record matches it.
    async fn file_metadata(&self, path: &StorePath, object: &ObjectMeta) -> Metadata {
        let record = self.file_record(path).await.filter(|r| r.size == object.size && r.etag == object.e_tag);
        let mtime = record
            .as_ref()
            .and_then(|r| r.mtime_ns)
            .map(from_unix_ns)
            .unwrap_or_else(|| SystemTime::from(object.last_modified));
        Metadata {
            path: path.clone(),
            kind: EntryKind::File,
            size: object.size,
            mtime: Some(mtime),
            permissions: record.as_ref().map_or(0o644, |r| r.permissions),
            sha256: record.and_then(|r| Sha256::from_hex(&r.sha256).ok()),
        }
    }

    /// [`Inner::file_metadata`] of many files, [`LISTING_CONCURRENCY`] record
    /// reads at a time (one GET each), in the order given.
    async fn files_metadata(&self, files: Vec<(StorePath, ObjectMeta)>) -> Vec<Metadata> {
        let mut entries = Vec::with_capacity(files.len());
        for batch in files.chunks(LISTING_CONCURRENCY) {
            let reads: Vec<_> = batch.iter().map(|(path, object)| self.file_metadata(path, object)).collect();
            entries.extend(futures_util::future::join_all(reads).await);
        }
        entries
    }

    fn directory(path: StorePath) -> Metadata {
        Metadata { path, kind: EntryKind::Directory, size: 0, mtime: None, permissions: 0o755, sha256: None }
    }

    /// Whether any object lives under `path/`, or `path` was made as an
    /// empty directory (`dirs.rs`).
    async fn is_directory(&self, path: &StorePath) -> Result<bool> {
        let prefix = self.key(path);
        let listing =
            self.s3.list_with_delimiter(Some(&prefix)).await.map_err(|e| backend("listing a directory", &e))?;
        if !listing.objects.is_empty() || !listing.common_prefixes.is_empty() {
            return Ok(true);
        }
        self.has_marker(path).await
    }

    /// Reads the whole object to learn its digest (objects not written by ferry).
    async fn compute_digest(&self, key: &Key) -> Result<Sha256> {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        let mut body =
            self.s3.get(key).await.map_err(|e| map_error(e, key.as_ref(), "reading an object"))?.into_stream();
        while let Some(chunk) = body.next().await {
            hasher.update(&chunk.map_err(|e| backend("reading an object", &e))?);
        }
        Ok(Sha256(hasher.finalize().into()))
    }
}

/// A failure the client cannot fix: logged in full, UNAVAILABLE on the wire.
fn backend(op: &'static str, error: &dyn std::fmt::Display) -> Error {
    Error::Unavailable { op, detail: error.to_string() }
}

/// object_store's errors, in the store's terms.
fn map_error(error: object_store::Error, path: &str, op: &'static str) -> Error {
    match error {
        object_store::Error::NotFound { .. } => Error::NotFound { path: path.to_owned() },
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            Error::AlreadyExists { path: path.to_owned() }
        }
        other => backend(op, &other),
    }
}

#[async_trait]
impl Store for S3Store {
    async fn stat(&self, path: &StorePath) -> Result<Metadata> {
        let inner = &self.inner;
        match inner.s3.head(&inner.key(path)).await {
            Ok(object) => Ok(inner.file_metadata(path, &object).await),
            Err(object_store::Error::NotFound { .. }) if inner.is_directory(path).await? => {
                Ok(Inner::directory(path.clone()))
            }
            Err(e) => Err(map_error(e, path.as_str(), "reading metadata")),
        }
    }

    async fn read(&self, path: &StorePath, range: ByteRange) -> Result<Download> {
        let inner = self.inner.clone();
        let key = inner.key(path);
        let object = match inner.s3.head(&key).await {
            Ok(object) => object,
            Err(object_store::Error::NotFound { .. }) if inner.is_directory(path).await? => {
                return Err(Error::IsDirectory { path: path.as_str().to_owned() });
            }
            Err(e) => return Err(map_error(e, path.as_str(), "opening an object")),
        };
        let mut meta = inner.file_metadata(path, &object).await;
        if meta.sha256.is_none() {
            meta.sha256 = Some(inner.compute_digest(&key).await?);
        }
        let (offset, length) = range.resolve(object.size)?;
        let body: BoxStream<Result<Bytes>> = match length {
            0 => Box::pin(tokio_stream::empty()),
            _ => {
                // Pin the version: a replacement meanwhile fails the read
                // (Precondition) instead of mixing two versions.
                let options = GetOptions {
                    range: Some(GetRange::Bounded(offset..offset + length)),
                    if_match: object.e_tag.clone(),
                    ..GetOptions::default()
                };
                let stream = inner
                    .s3
                    .get_opts(&key, options)
                    .await
                    .map_err(|e| map_error(e, path.as_str(), "reading an object"))?
                    .into_stream();
                Box::pin(rechunk(stream, inner.read_chunk))
            }
        };
        Ok(Download { meta, offset, length, body })
    }

    async fn create_upload(&self, path: &StorePath, options: WriteOptions) -> Result<Box<dyn Upload>> {
        // A file cannot be stored where a directory is, or under a file.
        if self.inner.is_directory(path).await? {
            return Err(Error::IsDirectory { path: path.as_str().to_owned() });
        }
        let (parents, _) = path.split_last();
        let mut parent = String::new();
        for segment in parents {
            parent = if parent.is_empty() { segment.to_owned() } else { format!("{parent}/{segment}") };
            if self.inner.s3.head(&self.inner.key_raw(&parent)).await.is_ok() {
                return Err(Error::ParentNotDirectory { path: path.as_str().to_owned() });
            }
        }
        if options.mode == crate::WriteMode::CreateOnly && self.inner.s3.head(&self.inner.key(path)).await.is_ok() {
            return Err(Error::AlreadyExists { path: path.as_str().to_owned() });
        }
        Ok(Box::new(upload::S3Upload::create(self.inner.clone(), path.clone(), options).await?))
    }

    async fn resume_upload(&self, id: &UploadId, offset: u64) -> Result<Box<dyn Upload>> {
        Ok(Box::new(upload::S3Upload::resume(self.inner.clone(), id.clone(), offset).await?))
    }

    async fn upload_status(&self, id: &UploadId) -> Result<UploadStatus> {
        upload::status(&self.inner, id).await
    }

    async fn abort_upload(&self, id: &UploadId) -> Result<()> {
        upload::abort(&self.inner, id).await
    }

    async fn expire_uploads(&self, idle: Duration) -> Result<usize> {
        upload::expire(&self.inner, idle).await
    }

    async fn list(&self, dir: Option<&StorePath>, recursive: bool) -> Result<BoxStream<Result<Vec<Metadata>>>> {
        let inner = self.inner.clone();
        if let Some(dir) = dir
            && let Ok(object) = inner.s3.head(&inner.key(dir)).await
        {
            // A path naming a file lists just that file.
            let meta = inner.file_metadata(dir, &object).await;
            return Ok(Box::pin(tokio_stream::once(Ok(vec![meta]))));
        }
        if let Some(dir) = dir
            && !inner.is_directory(dir).await?
        {
            return Err(Error::NotFound { path: dir.as_str().to_owned() });
        }
        let prefix = match dir {
            Some(dir) => Some(inner.key(dir)),
            None if inner.prefix.is_empty() => None,
            None => Some(Key::from(inner.prefix.as_str())),
        };
        let entries = match recursive {
            false => one_level(&inner, prefix.as_ref(), dir).await?,
            true => whole_tree(&inner, prefix.as_ref(), dir).await?,
        };
        let batches: Vec<Result<Vec<Metadata>>> = entries.chunks(1000).map(|batch| Ok(batch.to_vec())).collect();
        Ok(Box::pin(tokio_stream::iter(batches)))
    }

    async fn delete(&self, path: &StorePath) -> Result<()> {
        let inner = &self.inner;
        let key = inner.key(path);
        match inner.s3.head(&key).await {
            Ok(_) => {
                inner.s3.delete(&key).await.map_err(|e| map_error(e, path.as_str(), "deleting an object"))?;
                let _ = inner.s3.delete(&inner.meta_key(path)).await;
                Ok(())
            }
            Err(object_store::Error::NotFound { .. }) if inner.is_directory(path).await? => {
                inner.delete_dir(path).await
            }
            Err(e) => Err(map_error(e, path.as_str(), "deleting an object")),
        }
    }

    async fn count_uploads(&self) -> Result<usize> {
        upload::count(&self.inner).await
    }

    async fn create_dir(&self, path: &StorePath) -> Result<Metadata> {
        self.inner.create_dir(path).await
    }

    /// Small files as single uploads, [`PUT_CONCURRENCY`] at a time: each is
    /// its own object, so there is nothing to share but the waiting. A batch
    /// naming a path twice goes one file at a time, to keep its order.
    async fn put_files(&self, files: Vec<NewFile>) -> Vec<Result<Metadata>> {
        let distinct: std::collections::HashSet<&StorePath> = files.iter().map(|f| &f.path).collect();
        let at_once = if distinct.len() == files.len() { PUT_CONCURRENCY } else { 1 };
        let mut results = Vec::with_capacity(files.len());
        let mut files = files.into_iter().peekable();
        while files.peek().is_some() {
            let puts: Vec<_> = files.by_ref().take(at_once).map(|file| crate::put_whole(self, file)).collect();
            results.extend(futures_util::future::join_all(puts).await);
        }
        results
    }
}

/// One level: files (with their records) and directories (common prefixes
/// and empty ones), sorted by name like the local store's.
async fn one_level(inner: &Inner, prefix: Option<&Key>, dir: Option<&StorePath>) -> Result<Vec<Metadata>> {
    let listing = inner.s3.list_with_delimiter(prefix).await.map_err(|e| backend("listing a directory", &e))?;
    let mut entries = Vec::new();
    let mut dirs: std::collections::BTreeSet<StorePath> =
        listing.common_prefixes.iter().filter_map(|dir| inner.store_path(dir)).collect();
    dirs.extend(inner.child_markers(dir).await?);
    entries.extend(dirs.into_iter().map(Inner::directory));
    let files = listing
        .objects
        .iter()
        .filter_map(|object| Some((inner.store_path(&object.location)?, object.clone())))
        .collect();
    entries.extend(inner.files_metadata(files).await);
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// The whole subtree, depth first: each directory, then what is in it.
async fn whole_tree(inner: &Inner, prefix: Option<&Key>, dir: Option<&StorePath>) -> Result<Vec<Metadata>> {
    let mut objects = inner.s3.list(prefix);
    let mut files = Vec::new();
    while let Some(object) = objects.next().await {
        let object = object.map_err(|e| backend("listing a tree", &e))?;
        if let Some(path) = inner.store_path(&object.location) {
            files.push((path, object));
        }
    }
    let mut entries = Vec::new();
    let mut dirs: std::collections::BTreeSet<StorePath> = inner.all_markers(dir).await?.into_iter().collect();
    for (path, _) in &files {
        let (parents, _) = path.split_last();
        let mut at = String::new();
        for segment in parents {
            at = if at.is_empty() { segment.to_owned() } else { format!("{at}/{segment}") };
            let inside = dir.is_none_or(|d| at.len() > d.as_str().len() && at.starts_with(d.as_str()));
            if inside && let Ok(p) = StorePath::parse(&at) {
                dirs.insert(p);
            }
        }
    }
    for dir in dirs {
        entries.push(Inner::directory(dir));
    }
    entries.extend(inner.files_metadata(files).await);
    // Depth first in name order: "a", "a/x", "a/y", "b" (segment-wise).
    entries.sort_by(|a, b| a.path.segments().cmp(b.path.segments()));
    Ok(entries)
}

/// Re-cuts an object's body (small network reads) into `chunk`-sized
/// pieces, reading ahead at most two of them.
fn rechunk(
    mut stream: futures_core::stream::BoxStream<'static, object_store::Result<Bytes>>,
    chunk: usize,
) -> tokio_stream::wrappers::ReceiverStream<Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let mut buffer = BytesMut::new();
        while let Some(read) = stream.next().await {
            match read {
                Ok(bytes) => {
                    buffer.extend_from_slice(&bytes);
                    while buffer.len() >= chunk {
                        if tx.send(Ok(buffer.split_to(chunk).freeze())).await.is_err() {
                            return; // the client went away
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(backend("reading an object", &e))).await;
                    return;
                }
            }
        }
        if !buffer.is_empty() {
            let _ = tx.send(Ok(buffer.split().freeze())).await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtimes_before_the_epoch_survive() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(from_unix_ns(to_unix_ns(before)), before);
        let after = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(from_unix_ns(to_unix_ns(after)), after);
    }
}
