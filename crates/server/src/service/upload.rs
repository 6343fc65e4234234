//! `Upload` (client streaming): header, chunks, optional finish → commit.

use std::sync::Arc;
use std::time::Instant;

use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{UploadHeader, UploadRequest, UploadResponse};
use ferry_store::{Store, WriteOptions};
use tonic::Streaming;

use super::parse_path;
use crate::convert;
use crate::status::ServiceError;

pub(super) async fn upload(
    store: Arc<dyn Store>,
    mut stream: Streaming<UploadRequest>,
) -> Result<UploadResponse, ServiceError> {
    let started = Instant::now();
    let header = match stream.message().await?.and_then(|m| m.kind) {
        Some(Kind::Header(header)) => header,
        Some(Kind::Chunk(_)) => return Err(ServiceError::protocol("a chunk arrived before the upload header")),
        Some(Kind::Finish(_)) => return Err(ServiceError::protocol("finish arrived before the upload header")),
        None => return Err(ServiceError::protocol("the first message of an upload must be its header")),
    };
    let path = parse_path(&header.path)?;
    let size_declared = header.size.is_some();
    let mut upload = store.create_upload(&path, write_options(&header)?).await?;

    // Dropping `upload` on any early return discards the staged data.
    let mut final_sha256 = None;
    let mut finished = false;
    while let Some(message) = stream.message().await? {
        match message.kind {
            Some(Kind::Chunk(chunk)) if !finished => upload.write(chunk.data).await?,
            Some(Kind::Finish(finish)) if !finished => {
                final_sha256 = convert::optional_digest("finish.sha256", &finish.sha256)?;
                finished = true;
            }
            Some(Kind::Header(_)) => return Err(ServiceError::protocol("a second upload header arrived")),
            Some(_) => return Err(ServiceError::protocol("data arrived after the finish message")),
            None => return Err(ServiceError::protocol("an upload message carried no header, chunk or finish")),
        }
    }
    // A stream that just stops is only complete if we know how long it should
    // be; otherwise a client that crashed mid-file would look finished.
    if !size_declared && !finished {
        return Err(ServiceError::protocol("an upload without a declared size must end with a finish message"));
    }
    let meta = upload.commit(final_sha256).await?;
    tracing::info!(path = %meta.path, bytes = meta.size, elapsed_ms = started.elapsed().as_millis() as u64, "upload committed");
    Ok(UploadResponse { file: Some(convert::file_info(&meta)) })
}

fn write_options(header: &UploadHeader) -> Result<WriteOptions, ServiceError> {
    Ok(WriteOptions {
        mode: convert::write_mode(header.mode)?,
        size: header.size,
        sha256: convert::optional_digest("header.sha256", &header.sha256)?,
        mtime: convert::mtime(header.mtime)?,
        permissions: convert::permissions(header.permissions)?,
    })
}
