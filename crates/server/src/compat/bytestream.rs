//! `google.bytestream.ByteStream`, with its specified semantics, over ferry's
//! durable upload sessions — so a write resumes across dropped connections
//! *and server restarts*.
//!
//! - **Write.** The session is named after the resource name (without any
//!   trailing metadata): the same name finds the same session after a
//!   restart. The first message's `write_offset` must not be past the
//!   committed size (OUT_OF_RANGE); bytes before the committed size that a
//!   client sends again are skipped. Every later message must continue at
//!   the offset reached. `finish_write` commits, checking a blob's digest
//!   and size (mismatch: INVALID_ARGUMENT); the reply is the committed size.
//!   Writing a blob that is already stored returns at once with its size.
//!   A stream that ends without `finish_write` keeps its session.
//! - **QueryWriteStatus.** The durable committed size of a write in
//!   progress; `complete` once the file is committed; NOT_FOUND otherwise.
//! - **Read.** `read_offset`/`read_limit` (0: to the end); negative values,
//!   or an offset past the end, are OUT_OF_RANGE. A blob is found only with
//!   its stated size; the empty blob always exists.

use std::sync::Arc;

use bytes::Bytes;
use ferry_proto::compat::bytestream::byte_stream_server::ByteStream;
use ferry_proto::compat::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest, WriteResponse,
};
use ferry_store::{ByteRange, EntryKind, Error as StoreError, Sha256, UploadId, WriteOptions};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::resource::{self, Target};
use crate::auth::Permission;
use crate::service::upload::{Budget, Incoming, next_message, receive, resume};
use crate::service::{Call, Context, ResponseStream, download};
use crate::status::ServiceError;

#[derive(Debug, Clone)]
pub struct ByteStreamService {
    ctx: Arc<Context>,
}

impl ByteStreamService {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ResponseStream<ReadResponse>;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        self.ctx.call("ByteStream.Read", request, read).await
    }

    async fn write(&self, request: Request<Streaming<WriteRequest>>) -> Result<Response<WriteResponse>, Status> {
        self.ctx.call("ByteStream.Write", request, write).await
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        self.ctx.call("ByteStream.QueryWriteStatus", request, query_write_status).await
    }
}

fn non_negative(value: i64, field: &str) -> Result<u64, ServiceError> {
    u64::try_from(value).map_err(|_| ServiceError::OutOfRange(format!("{field} must not be negative (got {value})")))
}

fn size_field(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The session a write resource name owns.
fn session_id(key: &str) -> UploadId {
    UploadId::derived(&format!("google.bytestream.Write:{key}"))
}

async fn read(call: Call, request: ReadRequest) -> Result<ResponseStream<ReadResponse>, ServiceError> {
    let target = resource::parse_read(&request.resource_name)?;
    let offset = non_negative(request.read_offset, "read_offset")?;
    let limit = non_negative(request.read_limit, "read_limit")?;
    call.who.check(Permission::Read, target.path())?;
    if let Target::Blob { sha256, size, .. } = &target {
        if *size == 0 && *sha256 == Sha256::of(b"") {
            // The empty blob always exists.
            return match offset {
                0 => Ok(Box::pin(tokio_stream::empty())),
                _ => Err(ServiceError::OutOfRange(format!("read_offset {offset} is past the end (0 bytes)"))),
            };
        }
        let stored = call.ctx.store.stat(target.path()).await?;
        if stored.size != *size {
            return Err(StoreError::NotFound { path: request.resource_name.clone() }.into());
        }
    }
    let range = ByteRange { offset, length: (limit > 0).then_some(limit) };
    // A start past the end is OUT_OF_RANGE, as ByteStream specifies.
    let (_, chunks) = download::open(&call, target.path(), range).await?;
    Ok(Box::pin(chunks.map(|chunk| chunk.map(|data| ReadResponse { data }))))
}

async fn write(call: Call, stream: Streaming<WriteRequest>) -> Result<WriteResponse, ServiceError> {
    let idle = call.ctx.idle_timeout;
    let mut messages = stream;
    let first = next_message(&mut messages, idle)
        .await?
        .ok_or_else(|| ServiceError::protocol("a Write must carry at least one message"))?;
    let (target, key) = resource::parse_write(&first.resource_name)?;
    call.who.check(Permission::Write, target.path())?;
    let offset = non_negative(first.write_offset, "write_offset")?;

    // A blob that is already stored needs no bytes.
    if let Target::Blob { path, size, .. } = &target
        && let Ok(stored) = call.ctx.store.stat(path).await
        && stored.kind == EntryKind::File
        && stored.size == *size
    {
        tracing::info!(path = %path, "ByteStream write of a blob already stored");
        return Ok(WriteResponse { committed_size: size_field(*size) });
    }

    let id = session_id(&key);
    let (mut upload, mut budget, committed) = match call.ctx.store.upload_status(&id).await {
        Ok(status) => {
            if offset > status.committed {
                return Err(ServiceError::OutOfRange(format!(
                    "write_offset {offset} is past the committed size {}; query the status and resume there",
                    status.committed
                )));
            }
            let (upload, _, budget) = resume(&call, &id, status.committed).await?;
            (upload, budget, status.committed)
        }
        Err(StoreError::UploadNotFound { .. }) if offset == 0 => {
            let (size, sha256) = match &target {
                Target::Blob { size, sha256, .. } => (Some(*size), Some(*sha256)),
                Target::File(_) => (None, None),
            };
            let budget = Budget::admit(&call, size, size).await?;
            let options =
                WriteOptions { size, sha256, resumable: true, upload_id: Some(id.clone()), ..WriteOptions::default() };
            let upload = call.ctx.store.create_upload(target.path(), options).await?;
            tracing::info!(upload = %id, path = %target.path(), "ByteStream write started");
            (upload, budget, 0)
        }
        Err(StoreError::UploadNotFound { .. }) => {
            return Err(StoreError::UploadNotFound { id: first.resource_name.clone() }.into());
        }
        Err(e) => return Err(e.into()),
    };

    // Bytes the client sends again below the committed size are skipped;
    // every message must continue where the previous one ended.
    let mut position = offset;
    let incoming = tokio_stream::once(Ok(first)).chain(messages).map(move |message| {
        message.map(|m| {
            if m.write_offset != size_field(position) {
                return Incoming::Unexpected("each write_offset must continue where the previous message ended");
            }
            let data = m.data;
            let end = position + data.len() as u64;
            let skip = committed.saturating_sub(position).min(data.len() as u64) as usize;
            position = end;
            let data: Bytes = data.slice(skip..);
            match m.finish_write {
                true => Incoming::Last(data),
                false => Incoming::Chunk(data, None),
            }
        })
    });
    let digest = receive(&mut *upload, incoming, idle, true, &mut budget, |_| {}).await?;
    let path = target.path().clone();
    let meta = budget.commit(upload, &path, digest).await?;
    tracing::info!(path = %meta.path, bytes = meta.size, "ByteStream write committed");
    Ok(WriteResponse { committed_size: size_field(meta.size) })
}

async fn query_write_status(
    call: Call,
    request: QueryWriteStatusRequest,
) -> Result<QueryWriteStatusResponse, ServiceError> {
    let (target, key) = resource::parse_write(&request.resource_name)?;
    call.who.check(Permission::Write, target.path())?;
    match call.ctx.store.upload_status(&session_id(&key)).await {
        Ok(status) => Ok(QueryWriteStatusResponse { committed_size: size_field(status.committed), complete: false }),
        Err(StoreError::UploadNotFound { .. }) => {
            let stored = call.ctx.store.stat(target.path()).await.ok().filter(|m| m.kind == EntryKind::File);
            match (stored, &target) {
                (Some(meta), Target::Blob { size, .. }) if meta.size == *size => {
                    Ok(QueryWriteStatusResponse { committed_size: size_field(meta.size), complete: true })
                }
                (Some(meta), Target::File(_)) => {
                    Ok(QueryWriteStatusResponse { committed_size: size_field(meta.size), complete: true })
                }
                _ => Err(StoreError::UploadNotFound { id: request.resource_name }.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}
