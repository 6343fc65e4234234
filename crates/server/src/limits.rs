//! Admission control: what the server refuses before it writes a byte.
//!
//! An upload is admitted when a concurrency slot is free and the bytes it
//! still has to write fit under the file-size limit, the quota and the free
//! space the store reports (less a reserve). Uploads of unknown size are
//! checked as they grow: size and quota at every chunk, the free-space
//! reserve every [`SPACE_CHECK_STEP`] (so they may dip into the reserve by
//! at most one step). Every refusal is RESOURCE_EXHAUSTED
//! with a message saying which limit, and nothing is left behind; a busy
//! slot's refusal also says when to retry (`ServiceError::Busy`), the
//! others are final.
//!
//! The quota counts the bytes of committed files plus the bytes that
//! transfers in flight have reserved. It is measured by walking the store at
//! start-up and kept up to date by ferry's own uploads and deletes; staged
//! bytes of interrupted sessions are not counted (they expire with the
//! session TTL).

use std::sync::{Arc, Mutex};

use ferry_store::{EntryKind, Store, StorePath};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;

use crate::metrics::{Direction, Metrics, TransferGauge};
use crate::status::ServiceError;

/// How often (in bytes) an upload of unknown size re-checks free space.
/// When a client refused for a full transfer slot is told to try again: a
/// small file's transfer takes about this long here, a big one longer (and
/// clients back off further on their own).
const BUSY_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

pub const SPACE_CHECK_STEP: u64 = 64 * 1024 * 1024;

/// Configurable limits. The defaults suit a single server on a few cores:
/// concurrency is bounded, sizes are not.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest file accepted, in bytes.
    pub max_file_size: Option<u64>,
    /// Total bytes of files the root may hold.
    pub quota_bytes: Option<u64>,
    /// Free space that uploads must leave on the store's filesystem.
    pub min_free_bytes: u64,
    /// Upload streams (Upload and UploadSession) in progress at once.
    pub max_concurrent_uploads: usize,
    /// Download streams in progress at once.
    pub max_concurrent_downloads: usize,
    /// Open client connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_size: None,
            quota_bytes: None,
            min_free_bytes: 0,
            max_concurrent_uploads: 64,
            max_concurrent_downloads: 64,
            max_connections: 1024,
        }
    }
}

/// The runtime side of [`Limits`].
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    uploads: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
    quota: Option<Arc<Quota>>,
    store: Arc<dyn Store>,
    metrics: Metrics,
}

impl Admission {
    /// Measures the store's usage first if a quota is set.
    pub async fn new(limits: Limits, store: Arc<dyn Store>, metrics: Metrics) -> Result<Self, ferry_store::Error> {
        let quota = match limits.quota_bytes {
            Some(limit) => {
                let used = usage(&*store).await?;
                tracing::info!(used, limit, "quota: measured the root");
                metrics.set_quota_used(used);
                Some(Arc::new(Quota { limit, state: Mutex::new(QuotaState { used, reserved: 0 }) }))
            }
            None => None,
        };
        Ok(Self {
            uploads: Arc::new(Semaphore::new(limits.max_concurrent_uploads)),
            downloads: Arc::new(Semaphore::new(limits.max_concurrent_downloads)),
            limits,
            quota,
            store,
            metrics,
        })
    }

    /// A slot for an upload stream that will write `remaining` more bytes
    /// (if known) to a file that will be `total` bytes long (if known).
    pub async fn admit_upload(&self, total: Option<u64>, remaining: Option<u64>) -> Result<UploadTicket, ServiceError> {
        let permit = self.uploads.clone().try_acquire_owned().map_err(|_| ServiceError::Busy {
            message: format!(
                "the server is running its limit of {} uploads at once; retry later",
                self.limits.max_concurrent_uploads
            ),
            retry_after: BUSY_RETRY_AFTER,
        })?;
        if let Some(total) = total {
            self.check_file_size(total)?;
        }
        self.check_free_space(remaining.unwrap_or(0)).await?;
        let mut ticket = UploadTicket {
            _permit: permit,
            _active: self.metrics.transfer_started(Direction::Upload),
            quota: self.quota.clone(),
            reserved: 0,
            max_file_size: self.limits.max_file_size,
        };
        // The quota counts the whole file from the start: its committed size
        // is what the commit adds.
        if let Some(total) = total {
            ticket.grow_to(total)?;
        }
        Ok(ticket)
    }

    /// Upload streams admitted now.
    pub fn uploads_running(&self) -> usize {
        self.limits.max_concurrent_uploads.saturating_sub(self.uploads.available_permits())
    }

    /// Checks a declared size without taking a slot (CreateUpload).
    pub async fn check_declared_size(&self, total: Option<u64>) -> Result<(), ServiceError> {
        if let Some(total) = total {
            self.check_file_size(total)?;
            self.check_free_space(total).await?;
            if let Some(quota) = &self.quota {
                quota.check(total)?;
            }
        }
        Ok(())
    }

    pub fn admit_download(&self) -> Result<DownloadTicket, ServiceError> {
        let permit = self.downloads.clone().try_acquire_owned().map_err(|_| ServiceError::Busy {
            message: format!(
                "the server is running its limit of {} downloads at once; retry later",
                self.limits.max_concurrent_downloads
            ),
            retry_after: BUSY_RETRY_AFTER,
        })?;
        Ok(DownloadTicket { _permit: permit, _active: self.metrics.transfer_started(Direction::Download) })
    }

    /// Before a file is replaced or deleted: its size, to give back to the
    /// quota once the change is done. Free (no lookup) without a quota.
    pub async fn size_before_change(&self, path: &StorePath) -> u64 {
        if self.quota.is_none() {
            return 0;
        }
        match self.store.stat(path).await {
            Ok(meta) if meta.kind == EntryKind::File => meta.size,
            _ => 0,
        }
    }

    /// A file of `size` bytes replaced one of `replaced` bytes.
    pub fn committed(&self, size: u64, replaced: u64) {
        if let Some(quota) = &self.quota {
            self.metrics.set_quota_used(quota.committed(size, replaced));
        }
    }

    /// Books `bytes` against the quota until the reservation is dropped:
    /// for a commit that publishes bytes no stream holds a reservation for
    /// (a ranged upload, whose range streams book only while they write).
    pub fn reserve_quota(&self, bytes: u64) -> Result<QuotaReservation, ServiceError> {
        if let Some(quota) = &self.quota {
            quota.reserve(bytes)?;
        }
        Ok(QuotaReservation { quota: self.quota.clone(), bytes })
    }

    /// A file of `size` bytes was deleted.
    pub fn deleted(&self, size: u64) {
        self.committed(0, size);
    }

    fn check_file_size(&self, total: u64) -> Result<(), ServiceError> {
        match self.limits.max_file_size {
            Some(max) if total > max => Err(too_big(max)),
            _ => Ok(()),
        }
    }

    /// Refuses if `bytes` more would eat into the free-space reserve.
    pub(crate) async fn check_free_space(&self, bytes: u64) -> Result<(), ServiceError> {
        let free = match self.store.free_space().await {
            Ok(Some(free)) => free,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's free space; admitting the upload");
                return Ok(());
            }
        };
        if free < bytes.saturating_add(self.limits.min_free_bytes) {
            return Err(ServiceError::Exhausted(format!(
                "not enough free space on the server for {bytes} more bytes; try a smaller file or later"
            )));
        }
        Ok(())
    }
}

fn too_big(max: u64) -> ServiceError {
    ServiceError::Exhausted(format!("the file is larger than this server's limit of {max} bytes"))
}

/// Sum of the sizes of every file in the store.
async fn usage(store: &dyn Store) -> Result<u64, ferry_store::Error> {
    let mut batches = store.list(None, true).await?;
    let mut used = 0u64;
    while let Some(batch) = batches.next().await {
        used += batch?.iter().filter(|m| m.kind == EntryKind::File).map(|m| m.size).sum::<u64>();
    }
    Ok(used)
}

/// Committed and reserved bytes, under one lock: a reservation must see
/// both at once, or a commit landing between two reads would let it overbook.
#[derive(Debug)]
struct Quota {
    limit: u64,
    state: Mutex<QuotaState>,
}

#[derive(Debug, Default)]
struct QuotaState {
    used: u64,
    reserved: u64,
}

impl Quota {
    fn lock(&self) -> std::sync::MutexGuard<'_, QuotaState> {
        // The state stays consistent under every update, so a panic
        // elsewhere while holding the lock does not invalidate it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check(&self, bytes: u64) -> Result<(), ServiceError> {
        let state = self.lock();
        match state.used.saturating_add(state.reserved).checked_add(bytes) {
            Some(total) if total <= self.limit => Ok(()),
            _ => Err(self.exceeded()),
        }
    }

    fn reserve(&self, bytes: u64) -> Result<(), ServiceError> {
        let mut state = self.lock();
        match state.used.saturating_add(state.reserved).checked_add(bytes) {
            Some(total) if total <= self.limit => {
                state.reserved += bytes;
                Ok(())
            }
            _ => Err(self.exceeded()),
        }
    }

    fn release(&self, bytes: u64) {
        let mut state = self.lock();
        state.reserved = state.reserved.saturating_sub(bytes);
    }

    /// A file of `size` bytes replaced one of `replaced` bytes; returns the new usage.
    fn committed(&self, size: u64, replaced: u64) -> u64 {
        let mut state = self.lock();
        state.used = state.used.saturating_add(size).saturating_sub(replaced);
        state.used
    }

    fn exceeded(&self) -> ServiceError {
        ServiceError::Exhausted(format!("the server's storage quota of {} bytes is used up", self.limit))
    }
}

/// An admitted upload stream: holds its slot and its quota reservation
/// until dropped.
#[derive(Debug)]
pub struct UploadTicket {
    _permit: OwnedSemaphorePermit,
    _active: TransferGauge,
    quota: Option<Arc<Quota>>,
    reserved: u64,
    max_file_size: Option<u64>,
}

impl UploadTicket {
    /// Called before the upload grows to `size` bytes (uploads of unknown
    /// size are admitted as they grow).
    pub fn grow_to(&mut self, size: u64) -> Result<(), ServiceError> {
        if let Some(max) = self.max_file_size
            && size > max
        {
            return Err(too_big(max));
        }
        if let Some(quota) = &self.quota
            && size > self.reserved
        {
            quota.reserve(size - self.reserved)?;
            self.reserved = size;
        }
        Ok(())
    }
}

/// A stream of several files ([`UploadFiles`](ferry_proto::v1::ferry_server::Ferry::upload_files))
/// holds one ticket, and books each file on it: the size limit applies per
/// file, the quota reservation to the files not yet committed.
impl UploadTicket {
    /// One of the stream's files grows by `more` bytes to `file_size`.
    pub fn file_grows(&mut self, file_size: u64, more: u64) -> Result<(), ServiceError> {
        if let Some(max) = self.max_file_size
            && file_size > max
        {
            return Err(too_big(max));
        }
        if let Some(quota) = &self.quota
            && more > 0
        {
            quota.reserve(more)?;
        }
        self.reserved = self.reserved.saturating_add(more);
        Ok(())
    }

    /// One of the stream's files is done (committed, and so counted as used,
    /// or failed): its `size` bytes are no longer reserved.
    pub fn file_done(&mut self, size: u64) {
        let size = size.min(self.reserved);
        if let Some(quota) = &self.quota {
            quota.release(size);
        }
        self.reserved -= size;
    }
}

impl Drop for UploadTicket {
    fn drop(&mut self) {
        if let Some(quota) = &self.quota {
            quota.release(self.reserved);
        }
    }
}

/// Quota booked by [`Admission::reserve_quota`], given back when dropped.
#[derive(Debug)]
pub struct QuotaReservation {
    quota: Option<Arc<Quota>>,
    bytes: u64,
}

impl Drop for QuotaReservation {
    fn drop(&mut self) {
        if let Some(quota) = &self.quota {
            quota.release(self.bytes);
        }
    }
}

/// An admitted download stream: holds its slot until the stream is dropped.
#[derive(Debug)]
pub struct DownloadTicket {
    _permit: OwnedSemaphorePermit,
    _active: TransferGauge,
}
