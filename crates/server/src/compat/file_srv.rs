//! `FileSrv` (no package): the tutorial service that uploads a header
//! (`filename` + `extension`, e.g. `test` + `.dcm`) and then chunks, stored
//! as `filename + extension` (a ferry path, so `scans/test` + `.dcm` is
//! `scans/test.dcm`). The reply is `code: 0` with a message naming the
//! stored file; failures are gRPC statuses. A download of a missing file
//! answers INVALID_ARGUMENT "Invalid filepath: NAME", as the tutorial server
//! did, because its clients branch on that code.

use std::sync::Arc;

use ferry_proto::compat::file_srv::file_srv_server::FileSrv;
use ferry_proto::compat::file_srv::upload_request::Request as Part;
use ferry_proto::compat::file_srv::{FileHeader, FileResponse, StringResponse, UploadRequest};
use ferry_store::{ByteRange, Error as StoreError};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::store_until_end;
use crate::service::upload::{Incoming, next_message};
use crate::service::{Call, Context, ResponseStream, download, parse_path};
use crate::status::ServiceError;

#[derive(Debug, Clone)]
pub struct FileSrvService {
    ctx: Arc<Context>,
}

impl FileSrvService {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl FileSrv for FileSrvService {
    async fn upload_file(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<StringResponse>, Status> {
        self.ctx.call("FileSrv.UploadFile", request, upload_file).await
    }

    type DownloadFileStream = ResponseStream<FileResponse>;

    async fn download_file(&self, request: Request<FileHeader>) -> Result<Response<Self::DownloadFileStream>, Status> {
        self.ctx.call("FileSrv.DownloadFile", request, download_file).await
    }
}

fn file_name(header: &FileHeader) -> String {
    format!("{}{}", header.filename, header.extension)
}

async fn upload_file(call: Call, stream: Streaming<UploadRequest>) -> Result<StringResponse, ServiceError> {
    let mut messages = stream.map(|message| message.map(|m| m.request));
    let header = match next_message(&mut messages, call.ctx.idle_timeout).await? {
        Some(Some(Part::Header(header))) => header,
        Some(Some(Part::ChunkData(_))) => {
            return Err(ServiceError::protocol("a chunk arrived before the header (filename + extension)"));
        }
        _ => return Err(ServiceError::protocol("the first message of an upload must be its header")),
    };
    let path = parse_path(&file_name(&header))?;
    let chunks = messages.map(|message| {
        message.map(|part| match part {
            Some(Part::ChunkData(data)) => Incoming::Chunk(data, None),
            Some(Part::Header(_)) => Incoming::Unexpected("a second header arrived"),
            None => Incoming::Unexpected("an upload message carried neither a header nor chunk_data"),
        })
    });
    let meta = store_until_end(&call, &path, chunks).await?;
    let digest = meta.sha256.map(|d| d.to_string()).unwrap_or_default();
    tracing::info!(path = %meta.path, bytes = meta.size, "FileSrv upload committed");
    Ok(StringResponse { code: 0, message: format!("stored {}: {} bytes, sha256 {digest}", meta.path, meta.size) })
}

async fn download_file(call: Call, header: FileHeader) -> Result<ResponseStream<FileResponse>, ServiceError> {
    let name = file_name(&header);
    let path = parse_path(&name)?;
    match download::open(&call, &path, ByteRange::ALL).await {
        Ok((_, chunks)) => Ok(Box::pin(chunks.map(|chunk| chunk.map(|chunk_data| FileResponse { chunk_data })))),
        Err(ServiceError::Store(StoreError::NotFound { .. })) => {
            Err(ServiceError::protocol(format!("Invalid filepath: {name}")))
        }
        Err(e) => Err(e),
    }
}
