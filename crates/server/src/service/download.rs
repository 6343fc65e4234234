//! `Download` (server streaming): the file's info, then the range's chunks.
//! The store reads ahead a few chunks into a bounded channel; when the client
//! reads slowly, HTTP/2 flow control stops the sender and the reader waits, so
//! memory per download stays a few chunks whatever the file size.

use ferry_proto::v1::download_response::Kind;
use ferry_proto::v1::{Chunk, DownloadRequest, DownloadResponse};
use ferry_store::ByteRange;
use tokio_stream::StreamExt;

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
    call.who.check(Permission::Read, &path)?;
    // The slot is held by the response stream, so until the client has it all.
    let ticket = call.ctx.admission.admit_download()?;
    let range = ByteRange { offset: request.offset, length: request.length };
    let download = call.ctx.store.read(&path, range).await?;
    tracing::info!(path = %path, offset = download.offset, length = download.length, "download started");

    let info = DownloadResponse { kind: Some(Kind::Info(convert::file_info(&download.meta))) };
    let (who, metrics, request_id) = (call.who.clone(), call.ctx.metrics.clone(), call.id);
    let chunks = download.body.then(move |read| {
        let _slot = &ticket;
        let (who, metrics) = (who.clone(), metrics.clone());
        async move {
            match read {
                Ok(data) => {
                    who.pace(data.len()).await;
                    metrics.count_bytes(Direction::Download, data.len());
                    Ok(DownloadResponse { kind: Some(Kind::Chunk(Chunk { data, crc32c: None })) })
                }
                Err(e) => Err(ServiceError::from(e).into_status(request_id)),
            }
        }
    });
    Ok(Box::pin(tokio_stream::once(Ok(info)).chain(chunks)))
}
