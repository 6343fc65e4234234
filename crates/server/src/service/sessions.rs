//! Resumable uploads: `CreateUpload`, `QueryUpload`, `AbortUpload` (unary)
//! and `UploadSession` (bidirectional: chunks in, durable offsets out).

use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{
    AbortUploadRequest, AbortUploadResponse, ByteRange, CreateUploadRequest, CreateUploadResponse, QueryUploadRequest,
    QueryUploadResponse, UploadSessionRequest, UploadSessionResponse,
};
use ferry_store::{UploadId, UploadStatus};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::Instrument;

use super::upload::{Incoming, next_message, receive, resume, write_options};
use super::{Call, ResponseStream, parse_path};
use crate::auth::Permission;
use crate::convert;
use crate::status::ServiceError;

pub(super) async fn create(call: Call, request: CreateUploadRequest) -> Result<CreateUploadResponse, ServiceError> {
    let header = request.header.ok_or_else(|| ServiceError::protocol("CreateUpload needs a header"))?;
    if !header.upload_id.is_empty() || header.offset != 0 {
        return Err(ServiceError::protocol("CreateUpload's header must not carry upload_id or offset"));
    }
    let path = parse_path(&header.path)?;
    call.who.check(Permission::Write, &path)?;
    call.ctx.admission.check_declared_size(header.size).await?;
    if request.ranged {
        if header.size.is_none() {
            return Err(ServiceError::protocol("a ranged upload needs header.size"));
        }
        let upload_id = call.ctx.store.create_ranged_upload(&path, write_options(&header, true)?).await?.to_string();
        tracing::info!(upload = %upload_id, path = %header.path, "ranged upload session created");
        return Ok(CreateUploadResponse { upload_id, ranged: true });
    }
    let upload = call.ctx.store.create_upload(&path, write_options(&header, true)?).await?;
    let upload_id = upload.id().to_string();
    // Dropping a resumable upload keeps its session, at offset 0.
    drop(upload);
    tracing::info!(upload = %upload_id, path = %header.path, "upload session created");
    Ok(CreateUploadResponse { upload_id, ranged: false })
}

/// The session's status, for a caller allowed to write its path.
pub(super) async fn writable_status(call: &Call, raw_id: &str) -> Result<UploadStatus, ServiceError> {
    let status = call.ctx.store.upload_status(&UploadId::parse(raw_id)?).await?;
    call.who.check(Permission::Write, &status.path)?;
    Ok(status)
}

pub(super) async fn query(call: Call, request: QueryUploadRequest) -> Result<QueryUploadResponse, ServiceError> {
    let status = writable_status(&call, &request.upload_id).await?;
    Ok(QueryUploadResponse {
        upload_id: status.id.to_string(),
        path: status.path.to_string(),
        committed_offset: status.committed,
        size: status.size,
        ranged: status.ranges.is_some(),
        committed_ranges: status
            .ranges
            .unwrap_or_default()
            .into_iter()
            .map(|r| ByteRange { offset: r.start, length: r.end - r.start })
            .collect(),
    })
}

pub(super) async fn abort(call: Call, request: AbortUploadRequest) -> Result<AbortUploadResponse, ServiceError> {
    let status = writable_status(&call, &request.upload_id).await?;
    call.ctx.store.abort_upload(&status.id).await?;
    tracing::info!(upload = %status.id, "upload aborted");
    Ok(AbortUploadResponse {})
}

/// Acknowledgements queued for the client; a slow reader only misses
/// intermediate ones (each supersedes the last).
const ACK_QUEUE: usize = 16;

pub(super) async fn session(
    call: Call,
    stream: Streaming<UploadSessionRequest>,
) -> Result<ResponseStream<UploadSessionResponse>, ServiceError> {
    let (request_id, idle) = (call.id, call.ctx.idle_timeout);
    let mut messages = stream.map(|message| message.map(|m| m.kind));
    let start = match next_message(&mut messages, idle).await? {
        Some(Some(Kind::Start(start))) => start,
        _ => return Err(ServiceError::protocol("the first message of an upload session must be its start")),
    };
    if let Some(length) = start.length {
        return super::ranged::range_stream(call, start, length, messages).await;
    }
    let (mut upload, path, mut budget) = resume(&call, &UploadId::parse(&start.upload_id)?, start.offset).await?;

    let (tx, rx) = mpsc::channel(ACK_QUEUE);
    // The stream outlives this call: it runs in its own task, in the call's span.
    let span = tracing::Span::current();
    let task = async move {
        let incoming = messages.map(|message| {
            message.map(|kind| match kind {
                Some(Kind::Chunk(chunk)) => Incoming::Chunk(chunk.data, chunk.crc32c),
                Some(Kind::Finish(finish)) => Incoming::Finish(finish.sha256),
                Some(Kind::Start(_)) => Incoming::Unexpected("a second start message arrived"),
                None => Incoming::Unexpected("an upload message carried no start, chunk or finish"),
            })
        });
        let mut acked = upload.committed();
        let ack = |upload: &dyn ferry_store::Upload| {
            let committed = upload.committed();
            if committed > acked {
                acked = committed;
                let _ = tx.try_send(Ok(UploadSessionResponse { kind: Some(Reply::CommittedOffset(committed)) }));
            }
        };
        let outcome = match receive(&mut *upload, incoming, idle, true, &mut budget, ack).await {
            Ok(final_sha256) => budget.commit(upload, &path, final_sha256).await,
            Err(e) => Err(e),
        };
        let last = match outcome {
            Ok(meta) => {
                tracing::info!(path = %meta.path, bytes = meta.size, "upload committed");
                Ok(UploadSessionResponse { kind: Some(Reply::File(convert::file_info(&meta))) })
            }
            Err(e) => Err(e.into_status(request_id)),
        };
        let _ = tx.send(last).await;
    };
    tokio::spawn(task.instrument(span));
    Ok(Box::pin(ReceiverStream::new(rx)))
}
