//! Uploads into S3: one multipart upload per file, its state in the bucket.
//!
//! Bytes are spooled into a part buffer; a full part (8 MiB) is sent, up to
//! three at once. As each finishes, in order, the session record
//! (`.ferry/uploads/ID`) is rewritten with the part's ETag, the new
//! committed offset and the SHA-256 state at that offset. The committed
//! offset is therefore always a part boundary, and a resume anywhere
//! re-reads nothing. Memory per upload: the part filling and up to three in
//! flight (32 MiB). `commit` uploads the last part, checks size and
//! digest, completes the multipart upload (the object appears, whole, at
//! that moment), then writes the file's record. Anything that fails aborts
//! the multipart upload: S3 keeps no orphaned parts.
//!
//! Limits: create-only is a conditional PUT (If-None-Match) for files under
//! one part, but only a HEAD before completion for bigger ones (object_store
//! does not expose conditional completion), so two racing create-only
//! uploads of big files can both succeed; a resume takes over a stream on the same server, but two
//! servers streaming one session at once are not arbitrated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use object_store::multipart::{MultipartStore, PartId};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::{FileRecord, Inner, backend, map_error};
use crate::{
    EntryKind, Error, Metadata, Result, Sha256, StorePath, Upload, UploadId, UploadStatus, WriteMode, WriteOptions,
};

/// Which streams own which sessions, in this process.
#[derive(Debug, Default)]
pub(super) struct Live {
    slots: Mutex<HashMap<UploadId, watch::Sender<u64>>>,
}

impl Live {
    /// Takes a session over: a stream holding it sees `preempted` fire.
    fn claim(&self, id: &UploadId) -> (u64, watch::Receiver<u64>) {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = slots.entry(id.clone()).or_insert_with(|| watch::Sender::new(0));
        slot.send_modify(|generation| *generation += 1);
        (*slot.borrow(), slot.subscribe())
    }

    fn is_live(&self, id: &UploadId) -> bool {
        let slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.get(id).is_some_and(|slot| slot.receiver_count() > 0)
    }

    fn forget(&self, id: &UploadId, generation: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slots.get(id).is_some_and(|slot| *slot.borrow() == generation) {
            slots.remove(id);
        }
    }
}

/// `.ferry/uploads/ID`: everything a resume needs, on any server.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    path: String,
    multipart_id: String,
    /// ETags of the parts uploaded, in order.
    parts: Vec<String>,
    committed: u64,
    /// SHA-256 state after `committed` bytes (hex of sha2's serialized state).
    hash_state: String,
    size: Option<u64>,
    sha256: Option<String>,
    mtime_ns: Option<i128>,
    permissions: Option<u32>,
    create_only: bool,
    resumable: bool,
    /// Seconds since the epoch of the last change, for expiry.
    touched: u64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn corrupt() -> Error {
    Error::io("reading an upload session", std::io::Error::other("inconsistent session record"))
}

async fn load(inner: &Inner, id: &UploadId) -> Result<SessionRecord> {
    let key = inner.session_key(id);
    let bytes = match inner.s3.get(&key).await {
        Ok(got) => got.bytes().await.map_err(|e| backend("reading an upload session", &e))?,
        Err(object_store::Error::NotFound { .. }) => return Err(Error::UploadNotFound { id: id.to_string() }),
        Err(e) => return Err(backend("reading an upload session", &e)),
    };
    serde_json::from_slice(&bytes).map_err(|_| corrupt())
}

async fn save(inner: &Inner, id: &UploadId, record: &SessionRecord) -> Result<()> {
    let json = serde_json::to_vec(record).map_err(|_| corrupt())?;
    inner
        .s3
        .put(&inner.session_key(id), PutPayload::from(json))
        .await
        .map_err(|e| backend("writing an upload session", &e))?;
    Ok(())
}

async fn remove(inner: &Inner, id: &UploadId) {
    if let Err(e) = inner.s3.delete(&inner.session_key(id)).await {
        tracing::warn!(upload = %id, error = %e, "could not delete an upload session record");
    }
}

pub(super) async fn status(inner: &Inner, id: &UploadId) -> Result<UploadStatus> {
    let record = load(inner, id).await?;
    Ok(UploadStatus {
        id: id.clone(),
        path: StorePath::parse(&record.path).map_err(|_| corrupt())?,
        committed: record.committed,
        size: record.size,
        ranges: None,
    })
}

pub(super) async fn abort(inner: &Inner, id: &UploadId) -> Result<()> {
    let record = load(inner, id).await?;
    let (generation, _) = inner.live.claim(id);
    discard(inner, id, &record).await;
    inner.live.forget(id, generation);
    Ok(())
}

/// Aborts the multipart upload and deletes the record.
async fn discard(inner: &Inner, id: &UploadId, record: &SessionRecord) {
    let key = inner.key_raw(&record.path);
    if let Err(e) = inner.s3.abort_multipart(&key, &record.multipart_id).await {
        tracing::warn!(upload = %id, error = %e, "could not abort a multipart upload");
    }
    remove(inner, id).await;
}

pub(super) async fn expire(inner: &Inner, idle: Duration) -> Result<usize> {
    let mut removed = 0;
    for id in session_ids(inner).await? {
        if inner.live.is_live(&id) {
            continue;
        }
        let Ok(record) = load(inner, &id).await else { continue };
        if now_secs().saturating_sub(record.touched) >= idle.as_secs() {
            discard(inner, &id, &record).await;
            removed += 1;
        }
    }
    Ok(removed)
}

pub(super) async fn count(inner: &Inner) -> Result<usize> {
    Ok(session_ids(inner).await?.len())
}

async fn session_ids(inner: &Inner) -> Result<Vec<UploadId>> {
    let prefix = inner.key_raw(".ferry/uploads");
    let mut listing = inner.s3.list(Some(&prefix));
    let mut ids = Vec::new();
    while let Some(object) = listing.next().await {
        let object = object.map_err(|e| backend("listing upload sessions", &e))?;
        if let Some(id) = object.location.filename().and_then(|name| UploadId::parse(name).ok()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Parts uploading at once per upload: S3 takes parts in parallel, and one
/// at a time left the network idle while each part's request completed.
/// Memory per upload: this many parts plus the one filling.
const PARTS_IN_FLIGHT: usize = 3;

/// A part on its way: its length, the hash state after it, the request.
#[derive(Debug)]
struct InFlight {
    len: u64,
    hash_state: String,
    request: tokio::task::JoinHandle<object_store::Result<PartId>>,
}

/// An upload in progress.
#[derive(Debug)]
pub(super) struct S3Upload {
    inner: Arc<Inner>,
    id: UploadId,
    path: StorePath,
    record: SessionRecord,
    hasher: sha2::Sha256,
    buffer: BytesMut,
    in_flight: std::collections::VecDeque<InFlight>,
    received: u64,
    generation: u64,
    takeover: watch::Receiver<u64>,
    finished: bool,
}

impl S3Upload {
    pub(super) async fn create(inner: Arc<Inner>, path: StorePath, options: WriteOptions) -> Result<Self> {
        let id = match &options.upload_id {
            Some(id) => {
                if load(&inner, id).await.is_ok() {
                    return Err(Error::UploadExists { id: id.to_string() });
                }
                id.clone()
            }
            None => UploadId::random()?,
        };
        let key = inner.key(&path);
        let multipart_id =
            inner.s3.create_multipart(&key).await.map_err(|e| map_error(e, path.as_str(), "starting an upload"))?;
        let hasher = sha2::Sha256::new();
        let record = SessionRecord {
            path: path.as_str().to_owned(),
            multipart_id,
            parts: Vec::new(),
            committed: 0,
            hash_state: hex::encode(hasher.serialize()),
            size: options.size,
            sha256: options.sha256.map(|d| d.to_hex()),
            mtime_ns: options.mtime.map(super::to_unix_ns),
            permissions: options.permissions,
            create_only: options.mode == WriteMode::CreateOnly,
            resumable: options.resumable,
            touched: now_secs(),
        };
        if options.resumable {
            save(&inner, &id, &record).await?;
        }
        let (generation, takeover) = inner.live.claim(&id);
        Ok(Self {
            inner,
            id,
            path,
            record,
            hasher,
            buffer: BytesMut::new(),
            in_flight: Default::default(),
            received: 0,
            generation,
            takeover,
            finished: false,
        })
    }

    pub(super) async fn resume(inner: Arc<Inner>, id: UploadId, offset: u64) -> Result<Self> {
        let record = load(&inner, &id).await?;
        if offset != record.committed {
            return Err(Error::OffsetMismatch { id: id.to_string(), offset, committed: record.committed });
        }
        let state = hex::decode(&record.hash_state).map_err(|_| corrupt())?;
        let state = SerializedState::<sha2::Sha256>::try_from(state.as_slice()).map_err(|_| corrupt())?;
        let hasher = sha2::Sha256::deserialize(&state).map_err(|_| corrupt())?;
        let path = StorePath::parse(&record.path).map_err(|_| corrupt())?;
        let (generation, takeover) = inner.live.claim(&id);
        Ok(Self {
            inner,
            id,
            path,
            hasher,
            buffer: BytesMut::new(),
            in_flight: Default::default(),
            received: record.committed,
            record,
            generation,
            takeover,
            finished: false,
        })
    }

    fn check_claim(&self) -> Result<()> {
        match *self.takeover.borrow() == self.generation {
            true => Ok(()),
            false => Err(Error::Preempted { id: self.id.to_string() }),
        }
    }

    /// Sends the buffer as the next part; waits for the oldest part in
    /// flight first if there are already [`PARTS_IN_FLIGHT`].
    async fn flush_part(&mut self) -> Result<()> {
        self.check_claim()?;
        if self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.complete_oldest().await?;
        }
        let data = self.buffer.split().freeze();
        let len = data.len() as u64;
        let (inner, key) = (self.inner.clone(), self.inner.key(&self.path));
        let (multipart_id, index) = (self.record.multipart_id.clone(), self.record.parts.len() + self.in_flight.len());
        let request =
            tokio::spawn(async move { inner.s3.put_part(&key, &multipart_id, index, PutPayload::from(data)).await });
        self.in_flight.push_back(InFlight { len, hash_state: hex::encode(self.hasher.serialize()), request });
        Ok(())
    }

    /// Waits for the oldest part in flight and records it: the committed
    /// offset only ever covers a contiguous run of finished parts.
    async fn complete_oldest(&mut self) -> Result<()> {
        let Some(part) = self.in_flight.pop_front() else { return Ok(()) };
        let id = part
            .request
            .await
            .map_err(|e| backend("uploading a part", &e))?
            .map_err(|e| backend("uploading a part", &e))?;
        self.record.parts.push(id.content_id);
        self.record.committed += part.len;
        self.record.hash_state = part.hash_state;
        self.record.touched = now_secs();
        if self.record.resumable {
            self.check_claim()?;
            save(&self.inner, &self.id, &self.record).await?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.complete_oldest().await?;
        }
        Ok(())
    }

    async fn finish(&mut self, final_sha256: Option<Sha256>) -> Result<Metadata> {
        self.check_claim()?;
        if let Some(declared) = self.record.size
            && self.received != declared
        {
            return Err(Error::SizeMismatch { declared, received: self.received });
        }
        let sha256 = Sha256(self.hasher.clone().finalize().into());
        let declared = self.record.sha256.as_deref().map(Sha256::from_hex).transpose().map_err(|_| corrupt())?;
        for expected in [declared, final_sha256].into_iter().flatten() {
            if expected != sha256 {
                return Err(Error::DigestMismatch { expected, actual: sha256 });
            }
        }
        let key = self.inner.key(&self.path);
        if self.record.create_only && self.inner.s3.head(&key).await.is_ok() {
            return Err(Error::AlreadyExists { path: self.path.as_str().to_owned() });
        }
        let whole_file_in_memory = self.record.parts.is_empty() && self.in_flight.is_empty();
        if self.record.create_only && whole_file_in_memory {
            // Under one part: a single conditional PUT (If-None-Match: *), so
            // create-only holds even against a racing upload.
            let _ = self.inner.s3.abort_multipart(&key, &self.record.multipart_id).await;
            let options = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
            let data = PutPayload::from(self.buffer.split().freeze());
            self.inner
                .s3
                .put_opts(&key, data, options)
                .await
                .map_err(|e| map_error(e, self.path.as_str(), "storing a file"))?;
        } else {
            // S3 needs at least one part; an empty file is one empty part.
            if !self.buffer.is_empty() || whole_file_in_memory {
                self.flush_part().await?;
            }
            self.drain().await?;
            if self.record.create_only {
                // Conditional (If-None-Match): atomic where the server honours it.
                let completed =
                    self.inner.complete_if_absent(&key, &self.record.multipart_id, &self.record.parts).await;
                match completed {
                    Ok(()) => {}
                    Err(Error::AlreadyExists { .. }) => {
                        // Never to be completed: drop the parts now.
                        let _ = self.inner.s3.abort_multipart(&key, &self.record.multipart_id).await;
                        return Err(Error::AlreadyExists { path: self.path.as_str().to_owned() });
                    }
                    Err(e) => return Err(e),
                }
            } else {
                let parts = self.record.parts.iter().map(|etag| PartId { content_id: etag.clone() }).collect();
                self.inner
                    .s3
                    .complete_multipart(&key, &self.record.multipart_id, parts)
                    .await
                    .map_err(|e| map_error(e, self.path.as_str(), "completing an upload"))?;
            }
        }
        // The ETag from a HEAD, not from the completion's answer: Ceph RGW 16
        // answers CompleteMultipartUpload with an empty ETag.
        let object =
            self.inner.s3.head(&key).await.map_err(|e| map_error(e, self.path.as_str(), "reading metadata"))?;
        let file = FileRecord {
            etag: object.e_tag.clone(),
            size: self.received,
            sha256: sha256.to_hex(),
            mtime_ns: self.record.mtime_ns,
            permissions: self.record.permissions.unwrap_or(0o644) & 0o777 | 0o400,
        };
        let json = serde_json::to_vec(&file).map_err(|_| corrupt())?;
        self.inner
            .s3
            .put(&self.inner.meta_key(&self.path), PutPayload::from(json))
            .await
            .map_err(|e| backend("writing a file record", &e))?;
        let mut meta = self.inner.file_metadata(&self.path, &object).await;
        meta.kind = EntryKind::File;
        meta.sha256 = Some(sha256);
        Ok(meta)
    }
}

#[async_trait]
impl Upload for S3Upload {
    fn id(&self) -> &UploadId {
        &self.id
    }

    /// Parts are exactly `part_size` bytes (some S3 servers require equal
    /// parts), and the hash state recorded with each is the state at its end.
    async fn write(&mut self, mut data: Bytes) -> Result<()> {
        self.check_claim()?;
        self.received += data.len() as u64;
        while !data.is_empty() {
            let take = (self.inner.part_size - self.buffer.len()).min(data.len());
            let piece = data.split_to(take);
            self.hasher.update(&piece);
            self.buffer.extend_from_slice(&piece);
            if self.buffer.len() == self.inner.part_size {
                self.flush_part().await?;
            }
        }
        Ok(())
    }

    fn received(&self) -> u64 {
        self.received
    }

    fn declared_size(&self) -> Option<u64> {
        self.record.size
    }

    fn committed(&self) -> u64 {
        self.record.committed
    }

    /// Only whole parts are durable in S3: the parts in flight are waited
    /// for, but what is still in the buffer (under one part) is not durable,
    /// and a resume starts at the last part boundary.
    async fn sync(&mut self) -> Result<u64> {
        self.check_claim()?;
        self.drain().await?;
        Ok(self.record.committed)
    }

    /// Parts are committed as the stream writes them: the stream sees the
    /// offset move at its next chunk.
    async fn committed_past(&self, _seen: u64) {
        std::future::pending::<()>().await;
    }

    async fn preempted(&self) {
        let mut takeover = self.takeover.clone();
        while *takeover.borrow_and_update() == self.generation {
            if takeover.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    async fn commit(mut self: Box<Self>, final_sha256: Option<Sha256>) -> Result<Metadata> {
        let outcome = self.finish(final_sha256).await;
        if let Err(Error::Preempted { .. }) = outcome {
            // The session belongs to the stream that took it over.
            self.finished = true;
            return outcome;
        }
        // Committed or not, the session is over (a failed check can never pass).
        if outcome.is_err() {
            let key = self.inner.key(&self.path);
            if let Err(e) = self.inner.s3.abort_multipart(&key, &self.record.multipart_id).await {
                tracing::warn!(upload = %self.id, error = %e, "could not abort a multipart upload");
            }
        }
        if self.record.resumable {
            remove(&self.inner, &self.id).await;
        }
        self.finished = true;
        self.inner.live.forget(&self.id, self.generation);
        outcome
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.inner.live.forget(&self.id, self.generation);
        if self.record.resumable {
            return; // kept for a resume, at its last part
        }
        // A plain upload that is dropped leaves nothing behind.
        let (inner, path, multipart_id) = (self.inner.clone(), self.path.clone(), self.record.multipart_id.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = inner.s3.abort_multipart(&inner.key(&path), &multipart_id).await;
            });
        }
    }
}
