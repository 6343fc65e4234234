//! `Download` (server streaming): the file's info, then the range's chunks.
//! The store reads ahead a few chunks into a bounded channel; when the client
//! reads slowly, HTTP/2 flow control stops the sender and the reader waits, so
//! memory per download stays a few chunks whatever the file size.

use std::sync::Arc;

use ferry_proto::v1::download_response::Kind;
use ferry_proto::v1::{Chunk, DownloadRequest, DownloadResponse};
use ferry_store::{ByteRange, Store};
use tokio_stream::StreamExt;

use super::{ResponseStream, parse_path};
use crate::convert;
use crate::status::ServiceError;

pub(super) async fn download(
    store: Arc<dyn Store>,
    request: DownloadRequest,
    request_id: u64,
) -> Result<ResponseStream<DownloadResponse>, ServiceError> {
    let path = parse_path(&request.path)?;
    let range = ByteRange { offset: request.offset, length: request.length };
    let download = store.read(&path, range).await?;
    tracing::info!(path = %path, offset = download.offset, length = download.length, "download started");

    let info = DownloadResponse { kind: Some(Kind::Info(convert::file_info(&download.meta))) };
    let chunks = download.body.map(move |read| match read {
        Ok(data) => Ok(DownloadResponse { kind: Some(Kind::Chunk(Chunk { data, crc32c: None })) }),
        Err(e) => Err(ServiceError::from(e).into_status(request_id)),
    });
    Ok(Box::pin(tokio_stream::once(Ok(info)).chain(chunks)))
}
