//! `Download` (server streaming): the file's info, then the range's chunks.
//! The store reads ahead a few chunks into a bounded channel; when the client
//! reads slowly, HTTP/2 flow control stops the sender and the reader waits, so
//! memory per download stays a few chunks whatever the file size.

use bytes::Bytes;
use ferry_proto::v1::download_response::Kind;
use ferry_proto::v1::{Chunk, DownloadRequest, DownloadResponse};
use ferry_store::{ByteRange, Metadata, StorePath};
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tonic::Status;

use super::{Call, ResponseStream, parse_path};
use crate::auth::Permission;
use crate::convert;
use crate::metrics::Direction;
use crate::status::ServiceError;

pub(super) async fn download(
    call: Call,
    request: DownloadRequest,
) -> Result<ResponseStream<DownloadResponse>, ServiceError> {
    let path = parse_path(&request.path)?;
    let range = ByteRange { offset: request.offset, length: request.length };
    let (meta, chunks) = open(&call, &path, range).await?;
    let info = DownloadResponse { kind: Some(Kind::Info(convert::file_info(&meta))) };
    let chunks = chunks
        .map(|chunk| chunk.map(|data| DownloadResponse { kind: Some(Kind::Chunk(Chunk { data, crc32c: None })) }));
    Ok(Box::pin(tokio_stream::once(Ok(info)).chain(chunks)))
}

/// Opens a download for any protocol: the caller's read permission, a
/// download slot (held by the returned stream, so until the client has it
/// all), then the store's chunks, paced to the caller's bandwidth and counted.
pub(crate) async fn open(
    call: &Call,
    path: &StorePath,
    range: ByteRange,
) -> Result<(Metadata, impl Stream<Item = Result<Bytes, Status>> + Send + 'static), ServiceError> {
    call.who.check(Permission::Read, path)?;
    let ticket = call.ctx.admission.admit_download()?;
    let download = call.ctx.store.read(path, range).await?;
    tracing::info!(path = %path, offset = download.offset, length = download.length, "download started");
    let (who, metrics, request_id) = (call.who.clone(), call.ctx.metrics.clone(), call.id);
    let chunks = download.body.then(move |read| {
        let _slot = &ticket;
        let (who, metrics) = (who.clone(), metrics.clone());
        async move {
            match read {
                Ok(data) => {
                    who.pace(data.len()).await;
                    metrics.count_bytes(Direction::Download, data.len());
                    Ok(data)
                }
                Err(e) => Err(ServiceError::from(e).into_status(request_id)),
            }
        }
    });
    Ok((download.meta, chunks))
}
