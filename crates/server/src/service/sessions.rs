//! Resumable uploads: `CreateUpload`, `QueryUpload`, `AbortUpload` (unary)
//! and `UploadSession` (bidirectional: chunks in, durable offsets out).

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{
    AbortUploadRequest, AbortUploadResponse, CreateUploadRequest, CreateUploadResponse, QueryUploadRequest,
    QueryUploadResponse, UploadSessionRequest, UploadSessionResponse,
};
use ferry_store::{Store, UploadId};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::Instrument;

use super::upload::{Incoming, next_message, receive, write_options};
use super::{ResponseStream, parse_path};
use crate::convert;
use crate::status::ServiceError;

pub(super) async fn create(
    store: Arc<dyn Store>,
    request: CreateUploadRequest,
) -> Result<CreateUploadResponse, ServiceError> {
    let header = request.header.ok_or_else(|| ServiceError::protocol("CreateUpload needs a header"))?;
    if !header.upload_id.is_empty() || header.offset != 0 {
        return Err(ServiceError::protocol("CreateUpload's header must not carry upload_id or offset"));
    }
    let upload = store.create_upload(&parse_path(&header.path)?, write_options(&header, true)?).await?;
    let upload_id = upload.id().to_string();
    // Dropping a resumable upload keeps its session, at offset 0.
    drop(upload);
    tracing::info!(upload = %upload_id, path = %header.path, "upload session created");
    Ok(CreateUploadResponse { upload_id })
}

pub(super) async fn query(
    store: Arc<dyn Store>,
    request: QueryUploadRequest,
) -> Result<QueryUploadResponse, ServiceError> {
    let status = store.upload_status(&UploadId::parse(&request.upload_id)?).await?;
    Ok(QueryUploadResponse {
        upload_id: status.id.to_string(),
        path: status.path.to_string(),
        committed_offset: status.committed,
        size: status.size,
    })
}

pub(super) async fn abort(
    store: Arc<dyn Store>,
    request: AbortUploadRequest,
) -> Result<AbortUploadResponse, ServiceError> {
    let id = UploadId::parse(&request.upload_id)?;
    store.abort_upload(&id).await?;
    tracing::info!(upload = %id, "upload aborted");
    Ok(AbortUploadResponse {})
}

/// Acknowledgements queued for the client; a slow reader only misses
/// intermediate ones (each supersedes the last).
const ACK_QUEUE: usize = 16;

pub(super) async fn session(
    store: Arc<dyn Store>,
    stream: Streaming<UploadSessionRequest>,
    request_id: u64,
    idle: Duration,
) -> Result<ResponseStream<UploadSessionResponse>, ServiceError> {
    let mut messages = stream.map(|message| message.map(|m| m.kind));
    let start = match next_message(&mut messages, idle).await? {
        Some(Some(Kind::Start(start))) => start,
        _ => return Err(ServiceError::protocol("the first message of an upload session must be its start")),
    };
    let mut upload = store.resume_upload(&UploadId::parse(&start.upload_id)?, start.offset).await?;

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
        let outcome = match receive(&mut *upload, incoming, idle, true, ack).await {
            Ok(final_sha256) => upload.commit(final_sha256).await.map_err(ServiceError::from),
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
