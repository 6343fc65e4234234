//! `file_server.FileTransfer`: the tutorial service whose upload carries no
//! name. The name comes from the request metadata key `x-ferry-path`;
//! without it the file is stored under `received/<32 hex digits>`, a fresh
//! unique name, which the reply's `x-ferry-path` metadata reports.
//! `SendFile` answers `ok: true` only once the file is committed, and
//! `ok: false` when storing failed (the reason is logged with the request
//! id); a caller that is not authenticated or not allowed gets the status.

use std::sync::Arc;

use ferry_proto::compat::file_server::file_transfer_server::FileTransfer;
use ferry_proto::compat::file_server::{RequestFile, RequestSend, ResponseStatus, ResponseStream as Chunk};
use ferry_store::{ByteRange, UploadId};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::store_until_end;
use crate::service::upload::Incoming;
use crate::service::{Call, Context, ResponseStream, download, parse_path};
use crate::status::ServiceError;

/// Request metadata naming the stored file; also set on the reply.
pub const PATH_METADATA: &str = "x-ferry-path";

/// Where uploads without a name go.
pub const UNNAMED_DIR: &str = "received";

#[derive(Debug, Clone)]
pub struct FileTransferService {
    ctx: Arc<Context>,
}

impl FileTransferService {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl FileTransfer for FileTransferService {
    async fn send_file(&self, request: Request<Streaming<RequestSend>>) -> Result<Response<ResponseStatus>, Status> {
        let stored = self.ctx.call("FileTransfer.SendFile", request, send_file).await?;
        let (path, ok) = stored.into_inner();
        let mut response = Response::new(ResponseStatus { ok });
        if let Ok(value) = path.parse() {
            response.metadata_mut().insert(PATH_METADATA, value);
        }
        Ok(response)
    }

    type DownloadFileStream = ResponseStream<Chunk>;

    async fn download_file(&self, request: Request<RequestFile>) -> Result<Response<Self::DownloadFileStream>, Status> {
        self.ctx.call("FileTransfer.DownloadFile", request, download_file).await
    }
}

/// The stored path, and whether it was stored.
async fn send_file(call: Call, stream: Streaming<RequestSend>) -> Result<(String, bool), ServiceError> {
    let path = match call.metadata.get(PATH_METADATA) {
        Some(value) => parse_path(
            value.to_str().map_err(|_| ServiceError::protocol(format!("{PATH_METADATA} must be printable ASCII")))?,
        )?,
        None => parse_path(&format!("{UNNAMED_DIR}/{}", UploadId::random()?))?,
    };
    let chunks = stream.map(|message| message.map(|m| Incoming::Chunk(m.data, None)));
    match store_until_end(&call, &path, chunks).await {
        Ok(meta) => {
            tracing::info!(path = %meta.path, bytes = meta.size, "SendFile committed");
            Ok((path.to_string(), true))
        }
        // Refusals of the caller stay statuses: `ok` is about storing.
        Err(e @ (ServiceError::Unauthenticated(_) | ServiceError::PermissionDenied(_) | ServiceError::Stream(_))) => {
            Err(e)
        }
        Err(e) => {
            let status = e.into_status(call.id);
            tracing::warn!(path = %path, code = ?status.code(), reason = status.message(), "SendFile failed: ok=false");
            Ok((path.to_string(), false))
        }
    }
}

async fn download_file(call: Call, request: RequestFile) -> Result<ResponseStream<Chunk>, ServiceError> {
    let path = parse_path(&request.name)?;
    let (_, chunks) = download::open(&call, &path, ByteRange::ALL).await?;
    Ok(Box::pin(chunks.map(|chunk| chunk.map(|data| Chunk { data }))))
}
