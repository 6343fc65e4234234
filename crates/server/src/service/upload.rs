//! `Upload` (client streaming): a header that starts an upload (or continues
//! a resumable one), chunks, an optional finish → commit. The receive loop
//! here is shared with the bidirectional `UploadSession`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{UploadHeader, UploadRequest, UploadResponse};
use ferry_store::{Error as StoreError, Metadata, Sha256, StorePath, Upload, UploadId, WriteOptions};
use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

use super::{Call, Context, parse_path};
use crate::auth::{Permission, Principal};
use crate::convert;
use crate::limits::{SPACE_CHECK_STEP, UploadTicket};
use crate::metrics::Direction;
use crate::status::ServiceError;

pub(super) async fn upload(call: Call, stream: Streaming<UploadRequest>) -> Result<UploadResponse, ServiceError> {
    let started = Instant::now();
    let idle = call.ctx.idle_timeout;
    let mut messages = stream.map(|message| message.map(|m| m.kind));
    let header = match next_message(&mut messages, idle).await? {
        Some(Some(Kind::Header(header))) => header,
        Some(Some(Kind::Chunk(_))) => return Err(ServiceError::protocol("a chunk arrived before the upload header")),
        Some(Some(Kind::Finish(_))) => return Err(ServiceError::protocol("finish arrived before the upload header")),
        _ => return Err(ServiceError::protocol("the first message of an upload must be its header")),
    };
    let (mut upload, path, mut budget, resumable) = match header.upload_id.as_str() {
        "" => {
            let path = parse_path(&header.path)?;
            call.who.check(Permission::Write, &path)?;
            let budget = Budget::admit(&call, header.size, header.size).await?;
            let upload = call.ctx.store.create_upload(&path, write_options(&header, false)?).await?;
            (upload, path, budget, false)
        }
        id => {
            let (upload, path, budget) = continue_upload(&call, &header, id).await?;
            (upload, path, budget, true)
        }
    };

    let incoming = messages.map(|message| {
        message.map(|kind| match kind {
            Some(Kind::Chunk(chunk)) => Incoming::Chunk(chunk.data, chunk.crc32c),
            Some(Kind::Finish(finish)) => Incoming::Finish(finish.sha256),
            Some(Kind::Header(_)) => Incoming::Unexpected("a second upload header arrived"),
            None => Incoming::Unexpected("an upload message carried no header, chunk or finish"),
        })
    });
    let final_sha256 = receive(&mut *upload, incoming, idle, resumable, &mut budget, |_| {}).await?;
    let meta = budget.commit(upload, &path, final_sha256).await?;
    tracing::info!(path = %meta.path, bytes = meta.size, elapsed_ms = started.elapsed().as_millis() as u64, "upload committed");
    Ok(UploadResponse { file: Some(convert::file_info(&meta)) })
}

/// Resumes the session named in a header that must carry nothing else.
async fn continue_upload(
    call: &Call,
    header: &UploadHeader,
    id: &str,
) -> Result<(Box<dyn Upload>, StorePath, Budget), ServiceError> {
    let only_id = header.path.is_empty()
        && header.size.is_none()
        && header.sha256.is_empty()
        && header.mode == 0
        && header.mtime.is_none()
        && header.permissions.is_none();
    if !only_id {
        return Err(ServiceError::protocol(
            "a header that continues an upload carries only upload_id and offset (the session has the rest)",
        ));
    }
    resume(call, &UploadId::parse(id)?, header.offset).await
}

/// Opens a resumable session at `offset` for a caller allowed to write its
/// path, once the stream is admitted.
pub(crate) async fn resume(
    call: &Call,
    id: &UploadId,
    offset: u64,
) -> Result<(Box<dyn Upload>, StorePath, Budget), ServiceError> {
    let status = call.ctx.store.upload_status(id).await?;
    call.who.check(Permission::Write, &status.path)?;
    let remaining = status.size.map(|size| size.saturating_sub(offset));
    let budget = Budget::admit(call, status.size, remaining).await?;
    let upload = call.ctx.store.resume_upload(id, offset).await?;
    Ok((upload, status.path, budget))
}

/// Uploads running at once above which received chunks are copied into
/// buffers of their own size ([`Budget::keep`]).
const COPY_ABOVE_UPLOADS: usize = 4;

/// What an admitted upload stream may spend: its slot and quota
/// reservation, its caller's bandwidth; it counts the bytes it receives.
pub(crate) struct Budget {
    ticket: UploadTicket,
    who: Arc<Principal>,
    ctx: Arc<Context>,
    /// For uploads of unknown size: where free space is checked next.
    next_space_check: Option<u64>,
}

impl Budget {
    pub(crate) async fn admit(call: &Call, total: Option<u64>, remaining: Option<u64>) -> Result<Self, ServiceError> {
        let ticket = call.ctx.admission.admit_upload(total, remaining).await?;
        let next_space_check = total.is_none().then_some(0);
        Ok(Self { ticket, who: call.who.clone(), ctx: call.ctx.clone(), next_space_check })
    }

    /// A received chunk as it should be kept while it waits for the disk.
    /// tonic decodes each message as a slice of its receive buffer, which
    /// grows by doubling: a chunk queued for the disk can pin up to twice
    /// its size. With many uploads at once a copy of its own size is worth
    /// the memcpy (measured: docs/performance.md, "Many transfers at once");
    /// with a few, it is not.
    pub(crate) fn keep(&self, data: Bytes) -> Bytes {
        match self.ctx.admission.uploads_running() > COPY_ABOVE_UPLOADS {
            true => Bytes::copy_from_slice(&data),
            false => data,
        }
    }

    /// Before `len` more bytes are written to an upload that has `received`.
    pub(crate) async fn spend(&mut self, received: u64, len: usize) -> Result<(), ServiceError> {
        let size = received.saturating_add(len as u64);
        self.ticket.grow_to(size)?;
        if let Some(next) = self.next_space_check
            && size > next
        {
            // The reserve must still hold after this chunk; between checks an
            // upload can eat into it by at most one step.
            self.ctx.admission.check_free_space(len as u64).await?;
            self.next_space_check = Some(size + SPACE_CHECK_STEP);
        }
        self.who.pace(len).await;
        self.ctx.metrics.count_bytes(Direction::Upload, len);
        Ok(())
    }

    /// Commits, and accounts the file (and any file it replaced) to the quota.
    pub(crate) async fn commit(
        self,
        upload: Box<dyn Upload>,
        path: &StorePath,
        final_sha256: Option<Sha256>,
    ) -> Result<Metadata, ServiceError> {
        let replaced = self.ctx.admission.size_before_change(path).await;
        let meta = upload.commit(final_sha256).await?;
        self.ctx.admission.committed(meta.size, replaced);
        Ok(meta)
    }
}

pub(super) fn write_options(header: &UploadHeader, resumable: bool) -> Result<WriteOptions, ServiceError> {
    Ok(WriteOptions {
        mode: convert::write_mode(header.mode)?,
        size: header.size,
        sha256: convert::optional_digest("header.sha256", &header.sha256)?,
        mtime: convert::mtime(header.mtime)?,
        permissions: convert::permissions(header.permissions)?,
        resumable,
        upload_id: None,
    })
}

/// An upload stream's messages after the first, whatever the RPC.
pub(crate) enum Incoming {
    /// Data, and the CRC32C the client declared for it, if any.
    Chunk(Bytes, Option<u32>),
    /// The end, with the whole file's SHA-256 if the client sent one.
    Finish(String),
    /// The last data, which also ends the upload (ByteStream's
    /// `finish_write`, or the clean end of a protocol without a finish).
    Last(Bytes),
    Unexpected(&'static str),
}

/// The next message, or `DEADLINE_EXCEEDED` after `idle` without one.
pub(crate) async fn next_message<S, T>(stream: &mut S, idle: Duration) -> Result<Option<T>, ServiceError>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    match tokio::time::timeout(idle, stream.next()).await {
        Err(_) => Err(ServiceError::Idle(idle)),
        Ok(None) => Ok(None),
        Ok(Some(Err(status))) => Err(ServiceError::Stream(status)),
        Ok(Some(Ok(message))) => Ok(Some(message)),
    }
}

/// Feeds chunks into `upload` until the stream ends; returns the digest of
/// the finish message, if any. `on_chunk` sees the upload after each chunk,
/// and whenever its committed offset advances.
///
/// If the stream breaks, idles out or misbehaves, a resumable upload is
/// synced first, so that everything received is kept for the resume.
pub(crate) async fn receive<S>(
    upload: &mut dyn Upload,
    mut stream: S,
    idle: Duration,
    resumable: bool,
    budget: &mut Budget,
    mut on_chunk: impl FnMut(&dyn Upload),
) -> Result<Option<Sha256>, ServiceError>
where
    S: Stream<Item = Result<Incoming, Status>> + Unpin,
{
    let size_declared = upload.declared_size().is_some();
    let mut finished = None;
    let result = loop {
        let seen = upload.committed();
        let next = tokio::select! {
            biased;
            () = upload.preempted() => break Err(ServiceError::Store(StoreError::Preempted { id: upload.id().to_string() })),
            // A background sync finished: tell the client now, not at the next chunk
            // (a client may be waiting for it to free what it holds).
            () = upload.committed_past(seen) => {
                on_chunk(upload);
                continue;
            }
            next = next_message(&mut stream, idle) => next,
        };
        match next {
            Err(e) => break Err(e),
            Ok(None) => break Ok(()),
            Ok(Some(Incoming::Chunk(data, crc))) if finished.is_none() => {
                // Checked before the chunk is hashed or written: a bad chunk
                // never reaches the session, which keeps everything before it.
                if let Some(declared) = crc
                    && crc32c::crc32c(&data) != declared
                {
                    let offset = upload.received();
                    break Err(ServiceError::protocol(format!("the chunk at offset {offset} failed its CRC32C check")));
                }
                if let Err(e) = budget.spend(upload.received(), data.len()).await {
                    break Err(e);
                }
                if let Err(e) = upload.write(budget.keep(data)).await {
                    break Err(e.into());
                }
                on_chunk(upload);
            }
            Ok(Some(Incoming::Last(data))) if finished.is_none() => {
                if !data.is_empty() {
                    if let Err(e) = budget.spend(upload.received(), data.len()).await {
                        break Err(e);
                    }
                    if let Err(e) = upload.write(data).await {
                        break Err(e.into());
                    }
                    on_chunk(upload);
                }
                finished = Some(None);
            }
            Ok(Some(Incoming::Finish(hex))) if finished.is_none() => {
                match convert::optional_digest("finish.sha256", &hex) {
                    Ok(digest) => finished = Some(digest),
                    Err(e) => break Err(e),
                }
            }
            Ok(Some(Incoming::Unexpected(what))) => break Err(ServiceError::protocol(what)),
            Ok(Some(_)) => break Err(ServiceError::protocol("data arrived after the finish message")),
        }
    };
    if let Err(e) = result {
        let preempted = matches!(e, ServiceError::Store(StoreError::Preempted { .. }));
        if resumable && !preempted {
            keep_for_resume(upload).await;
        }
        return Err(e);
    }
    // A stream that just stops is only complete if we know how long it should
    // be; otherwise a client that crashed mid-file would look finished.
    let complete = upload.declared_size() == Some(upload.received());
    match finished {
        Some(digest) => Ok(digest),
        None if complete => Ok(None),
        // A resumable upload keeps what it has: the client resumes later.
        None if resumable => {
            let committed = keep_for_resume(upload).await;
            Err(ServiceError::Incomplete { received: upload.received(), committed })
        }
        None if size_declared => Ok(None), // the commit reports the size mismatch
        None => Err(ServiceError::protocol("an upload without a declared size must end with a finish message")),
    }
}

/// Syncs an interrupted resumable upload so that everything received is kept;
/// returns the committed offset.
async fn keep_for_resume(upload: &mut dyn Upload) -> u64 {
    match upload.sync().await {
        Ok(committed) => {
            tracing::info!(upload = %upload.id(), committed, "upload interrupted; kept for resume");
            committed
        }
        Err(e) => {
            tracing::warn!(upload = %upload.id(), error = %e, "could not sync an interrupted upload");
            upload.committed()
        }
    }
}
