//! Resumable uploads: a session on the server, a bidirectional stream that
//! reports durable offsets, and a retry loop that continues at the committed
//! offset after a dropped connection or a server restart.
//!
//! The client's own SHA-256 must cover the whole file, including the part a
//! failed attempt already delivered. It keeps its hasher state after every
//! chunk the server has not yet acknowledged (104 bytes each), so resuming at
//! any committed offset restores the state without re-reading the file. Only
//! a new process (re-running `ferry put` after the CLI itself was killed)
//! re-hashes the already-committed prefix of the local file.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{
    AbortUploadRequest, Chunk, CreateUploadRequest, QueryUploadRequest, UploadFinish, UploadHeader,
    UploadSessionRequest, UploadSessionStart, WriteMode,
};
use sha2::Digest as _;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::{Client, Error, RemoteFile, Result, UploadOptions};

/// The trailer that carries the committed offset with ABORTED.
const COMMITTED_OFFSET_TRAILER: &str = "ferry-committed-offset";

/// A resumable upload's state on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    pub upload_id: String,
    pub path: String,
    /// Durable bytes: where the next attempt starts.
    pub committed: u64,
    pub size: Option<u64>,
    /// Ranged sessions only: the committed ranges, sorted and disjoint.
    pub ranges: Option<Vec<std::ops::Range<u64>>>,
}

/// What a session declares: everything but the data.
pub(crate) fn upload_header(remote: &str, options: &UploadOptions) -> UploadHeader {
    UploadHeader {
        path: remote.to_owned(),
        size: options.size,
        mode: if options.create_only { WriteMode::CreateOnly } else { WriteMode::Overwrite } as i32,
        mtime: options.mtime.map(prost_types::Timestamp::from),
        permissions: options.permissions,
        ..UploadHeader::default()
    }
}

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in a row that may fail without the committed offset moving.
    pub max_attempts_without_progress: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts_without_progress: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl Client {
    /// Opens a resumable upload session for `remote`; returns its id.
    pub async fn create_upload(&self, remote: &str, options: &UploadOptions) -> Result<String> {
        let request = CreateUploadRequest { header: Some(upload_header(remote, options)), ranged: false };
        let reply = self.rpc.clone().create_upload(request).await?;
        Ok(reply.into_inner().upload_id)
    }

    /// The durable state of a resumable upload.
    pub async fn query_upload(&self, upload_id: &str) -> Result<UploadState> {
        let reply = self.rpc.clone().query_upload(QueryUploadRequest { upload_id: upload_id.to_owned() }).await?;
        let reply = reply.into_inner();
        Ok(UploadState {
            upload_id: reply.upload_id,
            path: reply.path,
            committed: reply.committed_offset,
            size: reply.size,
            ranges: reply
                .ranged
                .then(|| reply.committed_ranges.iter().map(|r| r.offset..r.offset.saturating_add(r.length)).collect()),
        })
    }

    /// Discards a resumable upload.
    pub async fn abort_upload(&self, upload_id: &str) -> Result<()> {
        self.rpc.clone().abort_upload(AbortUploadRequest { upload_id: upload_id.to_owned() }).await?;
        Ok(())
    }

    /// Uploads a local file through the resumable session `upload_id` (see
    /// [`Client::create_upload`]), continuing at its committed offset and
    /// retrying transient failures (dropped connections, server restarts,
    /// preemption) with exponential backoff and jitter. `progress` gets the
    /// bytes the server has confirmed durable.
    pub async fn upload_file_resumable(
        &self,
        local: &Path,
        upload_id: &str,
        policy: &RetryPolicy,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<RemoteFile> {
        let progress = Arc::new(progress);
        let snapshots = Snapshots::default();
        let mut failures = 0u32;
        let mut last_committed = None;
        let mut remote_path = None;
        loop {
            let outcome = match self.query_upload(upload_id).await {
                Ok(state) => {
                    if last_committed.is_some_and(|last| state.committed > last) {
                        failures = 0;
                    }
                    last_committed = Some(state.committed);
                    remote_path = Some(state.path.clone());
                    progress(state.committed);
                    self.attempt(local, upload_id, state.committed, &snapshots, progress.clone()).await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(file) => return Ok(file),
                // The session we were writing ended: another stream of the same
                // upload may have committed it. If the file there is ours, done.
                Err(e) if e.code() == Some(Code::NotFound) => match &remote_path {
                    Some(path) => return self.committed_elsewhere(local, path, e).await,
                    None => return Err(e),
                },
                Err(e) if is_transient(&e) && failures < policy.max_attempts_without_progress => {
                    failures += 1;
                    tokio::time::sleep(backoff(policy, failures, &e)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The file at `remote`, if it holds exactly `local` (by SHA-256);
    /// otherwise the error that ended the session.
    async fn committed_elsewhere(&self, local: &Path, remote: &str, ended: Error) -> Result<RemoteFile> {
        let Ok(file) = self.stat(remote).await else { return Err(ended) };
        let size =
            std::fs::metadata(local).map_err(|e| Error::io(format!("cannot read {}", local.display()), e))?.len();
        let local_path = local.to_owned();
        let digest = tokio::task::spawn_blocking(move || hash_prefix(&local_path, size))
            .await
            .map_err(|e| Error::Protocol(format!("hash task failed: {e}")))??;
        match file.sha256 == Some(hex::encode(digest.finalize())) {
            true => Ok(file),
            false => Err(ended),
        }
    }

    /// One stream: from `offset` to the end of the file, then finish.
    async fn attempt(
        &self,
        local: &Path,
        upload_id: &str,
        offset: u64,
        snapshots: &Snapshots,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<RemoteFile> {
        let hasher = snapshots.take(offset).map_or_else(|| hash_prefix(local, offset), Ok)?;
        let mut file =
            std::fs::File::open(local).map_err(|e| Error::io(format!("cannot open {}", local.display()), e))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(format!("cannot read {}", local.display()), e))?;

        let (tx, rx) = mpsc::channel(4);
        let start = UploadSessionStart { upload_id: upload_id.to_owned(), offset, length: None };
        tx.send(UploadSessionRequest { kind: Some(Kind::Start(start)) })
            .await
            .map_err(|_| Error::Protocol("request stream closed".into()))?;
        let mut replies = self.rpc.clone().upload_session(ReceiverStream::new(rx)).await?.into_inner();
        let producer =
            tokio::spawn(send_from(file, offset, hasher, self.chunk_size, tx, snapshots.clone(), local.to_owned()));
        let mut producer = AbortOnDrop(producer);

        loop {
            let reply = match replies.message().await {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(status) => {
                    // A local read error ends the stream unfinished; report it, not the server's answer.
                    if producer.0.is_finished()
                        && let Ok(Err(local_error)) = (&mut producer.0).await
                    {
                        return Err(local_error);
                    }
                    return Err(status.into());
                }
            };
            match reply.kind {
                Some(Reply::CommittedOffset(committed)) => {
                    snapshots.acknowledged(committed);
                    progress(committed);
                }
                Some(Reply::File(info)) => {
                    let file = RemoteFile::from(info);
                    let expected = snapshots.final_digest();
                    if expected.is_some() && file.sha256 != expected {
                        return Err(Error::DigestMismatch {
                            path: file.path.clone(),
                            expected: expected.unwrap_or_default(),
                            actual: file.sha256.unwrap_or_default(),
                        });
                    }
                    progress(file.size);
                    return Ok(file);
                }
                Some(Reply::RangeCommitted(_)) => {
                    return Err(Error::Protocol("a range was acknowledged on a sequential upload".into()));
                }
                None => return Err(Error::Protocol("an empty upload reply".into())),
            }
        }
        Err(Error::Protocol("the upload session ended without the stored file".into()))
    }
}

/// Reads, hashes and sends the rest of the file, then finish. Records the
/// hasher state after every chunk. A read error ends the stream without
/// finish (the server keeps what it has) and is returned.
async fn send_from(
    file: std::fs::File,
    offset: u64,
    hasher: sha2::Sha256,
    chunk_size: usize,
    tx: mpsc::Sender<UploadSessionRequest>,
    snapshots: Snapshots,
    local: std::path::PathBuf,
) -> Result<()> {
    let (mut file, mut hasher, mut sent) = (file, hasher, offset);
    loop {
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(chunk_size);
            let result = (&mut file).take(chunk_size as u64).read_to_end(&mut buf).map(|_| buf);
            (file, result)
        })
        .await;
        let buf = match read {
            Ok((returned, Ok(buf))) => {
                file = returned;
                buf
            }
            Ok((_, Err(e))) => return Err(Error::io(format!("cannot read {}", local.display()), e)),
            Err(e) => return Err(Error::Protocol(format!("read task failed: {e}"))),
        };
        if buf.is_empty() {
            let digest = hex::encode(hasher.finalize());
            snapshots.set_final(digest.clone());
            let finish = UploadSessionRequest { kind: Some(Kind::Finish(UploadFinish { sha256: digest })) };
            let _ = tx.send(finish).await;
            return Ok(());
        }
        hasher.update(&buf);
        sent += buf.len() as u64;
        snapshots.record(sent, &hasher);
        let crc32c = Some(crc32c::crc32c(&buf));
        let chunk = UploadSessionRequest { kind: Some(Kind::Chunk(Chunk { data: buf.into(), crc32c })) };
        if tx.send(chunk).await.is_err() {
            return Ok(()); // the server answered; the reply says why
        }
    }
}

/// Hasher states after each chunk the server has not yet acknowledged.
#[derive(Debug, Clone, Default)]
struct Snapshots(Arc<Mutex<SnapshotState>>);

#[derive(Debug, Default)]
struct SnapshotState {
    states: BTreeMap<u64, Vec<u8>>,
    final_digest: Option<String>,
}

impl Snapshots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SnapshotState> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, offset: u64, hasher: &sha2::Sha256) {
        self.lock().states.insert(offset, hasher.serialize().to_vec());
    }

    /// The server has `committed` bytes: older states are no longer needed.
    fn acknowledged(&self, committed: u64) {
        let mut state = self.lock();
        state.states = state.states.split_off(&committed);
    }

    /// The hasher after `offset` bytes, if recorded (a fresh one at 0).
    fn take(&self, offset: u64) -> Option<sha2::Sha256> {
        if offset == 0 {
            return Some(sha2::Sha256::new());
        }
        let state = self.lock();
        let bytes = state.states.get(&offset)?;
        let serialized = SerializedState::<sha2::Sha256>::try_from(bytes.as_slice()).ok()?;
        sha2::Sha256::deserialize(&serialized).ok()
    }

    fn set_final(&self, digest: String) {
        self.lock().final_digest = Some(digest);
    }

    fn final_digest(&self) -> Option<String> {
        self.lock().final_digest.clone()
    }
}

/// The hasher after the first `offset` bytes of the local file.
pub(crate) fn hash_prefix(local: &Path, offset: u64) -> Result<sha2::Sha256> {
    if offset == 0 {
        return Ok(sha2::Sha256::new());
    }
    let context = || format!("cannot read {}", local.display());
    let file = std::fs::File::open(local).map_err(|e| Error::io(context(), e))?;
    let mut hasher = sha2::Sha256::new();
    let copied =
        std::io::copy(&mut file.take(offset), &mut HashWriter(&mut hasher)).map_err(|e| Error::io(context(), e))?;
    if copied != offset {
        return Err(Error::io(context(), std::io::Error::other("the file is shorter than what was already uploaded")));
    }
    Ok(hasher)
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Failures a retry can cure: the connection, the server's availability, a
/// stream preempted or cut short, a limit the server says lifts soon. Not:
/// bad input, missing sessions, refusals, limits that waiting does not lift.
pub(crate) fn is_transient(error: &Error) -> bool {
    match error {
        Error::Connect { .. } => true,
        Error::Status(status) => match status.code() {
            Code::Unavailable | Code::Unknown | Code::Aborted | Code::DeadlineExceeded | Code::Cancelled => true,
            // Busy (slots, request rate) when the server says when to come
            // back; otherwise a file size, quota or full disk: final.
            Code::ResourceExhausted => retry_after(status).is_some(),
            Code::Internal => std::error::Error::source(status).is_some(),
            _ => false,
        },
        Error::Protocol(_) => true,
        _ => false,
    }
}

/// When the server said to retry (a `google.rpc.RetryInfo` detail).
pub(crate) fn retry_after(status: &tonic::Status) -> Option<Duration> {
    tonic_types::StatusExt::get_details_retry_info(status).map(|info| info.retry_delay.unwrap_or_default())
}

/// Exponential backoff with jitter (half the step, plus up to another
/// half), and never sooner than the server asked.
pub(crate) fn backoff(policy: &RetryPolicy, failures: u32, error: &Error) -> Duration {
    let step = policy.initial_backoff.saturating_mul(1 << failures.min(16)).min(policy.max_backoff);
    let jitter = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) % 1000;
    let wait = step / 2 + step / 2 * jitter / 1000;
    match error {
        Error::Status(status) => wait.max(retry_after(status).unwrap_or_default().min(policy.max_backoff)),
        _ => wait,
    }
}

/// The committed offset an ABORTED status carries, if any.
pub fn committed_offset(status: &tonic::Status) -> Option<u64> {
    status.metadata().get(COMMITTED_OFFSET_TRAILER)?.to_str().ok()?.parse().ok()
}

/// Stops a task when its owner is done with it, whatever the outcome.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<Result<T>>);

impl<T> AbortOnDrop<T> {
    /// The task's result.
    pub(crate) async fn wait(mut self) -> Result<T> {
        (&mut self.0).await.map_err(|e| Error::Protocol(format!("task failed: {e}")))?
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
