//! Parallel upload of one file: the range streams of a ranged session
//! (`UploadSession` whose start carries a length) and `CommitUpload`. The
//! session itself is created by `CreateUpload` with `ranged` set
//! (`sessions.rs`). See docs/protocol.md, "Parallel upload of one file".

use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{
    ByteRange, CommitUploadRequest, CommitUploadResponse, UploadSessionResponse, UploadSessionStart,
};
use ferry_store::{Error as StoreError, RangeWrite, UploadId};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use super::sessions::writable_status;
use super::upload::{Budget, next_message};
use super::{Call, ResponseStream};
use crate::convert;
use crate::status::ServiceError;

/// A range stream: `length` bytes at `start.offset`, then half-close (or a
/// finish without a digest); answered with `range_committed` once durable.
pub(super) async fn range_stream<S>(
    call: Call,
    start: UploadSessionStart,
    length: u64,
    mut messages: S,
) -> Result<ResponseStream<UploadSessionResponse>, ServiceError>
where
    S: Stream<Item = Result<Option<Kind>, Status>> + Unpin + Send + 'static,
{
    let (request_id, idle) = (call.id, call.ctx.idle_timeout);
    if length == 0 {
        return Err(ServiceError::protocol("a range stream's length must be at least 1 byte"));
    }
    let status = writable_status(&call, &start.upload_id).await?;
    // The file's size and free space were checked when the session was
    // created, and its blocks allocated then: a range stream books only its
    // own bytes against the quota, and asks for no more space than the
    // reserve (its bytes are already on disk, as far as free space goes).
    let mut budget = Budget::admit(&call, Some(length), Some(0)).await?;
    let mut range = call.ctx.store.write_range(&status.id, start.offset, length).await?;
    let (tx, rx) = mpsc::channel(1);
    let span = tracing::Span::current();
    let (offset, id) = (start.offset, status.id.to_string());
    let task = async move {
        let received = receive_range(&mut *range, &id, &mut messages, idle, &mut budget).await;
        let outcome = match received {
            Ok(()) => range.finish().await.map_err(ServiceError::from),
            Err(e) => {
                // The range and the slot are free before the client hears of
                // the failure, so that a retry at once is not refused.
                drop(range);
                Err(e)
            }
        };
        drop(budget);
        let last = match outcome {
            Ok(status) => {
                tracing::debug!(upload = %status.id, offset, length, "range committed");
                Ok(UploadSessionResponse { kind: Some(Reply::RangeCommitted(ByteRange { offset, length })) })
            }
            Err(e) => Err(e.into_status(request_id)),
        };
        let _ = tx.send(last).await;
    };
    tokio::spawn(task.instrument(span));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Writes the stream's chunks into the range until the stream ends.
async fn receive_range<S>(
    range: &mut dyn RangeWrite,
    id: &str,
    messages: &mut S,
    idle: std::time::Duration,
    budget: &mut Budget,
) -> Result<(), ServiceError>
where
    S: Stream<Item = Result<Option<Kind>, Status>> + Unpin,
{
    loop {
        let next = tokio::select! {
            biased;
            () = range.preempted() => return Err(StoreError::Preempted { id: id.to_owned() }.into()),
            next = next_message(messages, idle) => next?,
        };
        match next {
            None => return Ok(()),
            Some(Some(Kind::Chunk(chunk))) => {
                if let Some(declared) = chunk.crc32c
                    && crc32c::crc32c(&chunk.data) != declared
                {
                    let at = range.received();
                    return Err(ServiceError::protocol(format!(
                        "the chunk at byte {at} of the range failed its CRC32C check"
                    )));
                }
                budget.spend(range.received(), chunk.data.len()).await?;
                range.write(chunk.data).await?;
            }
            Some(Some(Kind::Finish(finish))) if finish.sha256.is_empty() => {
                // Nothing may follow; the end of the stream completes the range.
                return match next_message(messages, idle).await? {
                    None => Ok(()),
                    Some(_) => Err(ServiceError::protocol("data arrived after the finish message")),
                };
            }
            Some(Some(Kind::Finish(_))) => {
                return Err(ServiceError::protocol(
                    "a range stream's finish carries no digest: send it with CommitUpload",
                ));
            }
            Some(Some(Kind::Start(_))) => return Err(ServiceError::protocol("a second start message arrived")),
            Some(None) => return Err(ServiceError::protocol("an upload message carried no start, chunk or finish")),
        }
    }
}

/// `CommitUpload`: verifies and publishes a ranged session's file.
pub(super) async fn commit(call: Call, request: CommitUploadRequest) -> Result<CommitUploadResponse, ServiceError> {
    let status = writable_status(&call, &request.upload_id).await?;
    let final_sha256 = convert::optional_digest("sha256", &request.sha256)?;
    // The range streams booked their bytes only while they wrote: the file
    // is booked whole now, as an ordinary upload's last stream does.
    let _booked = call.ctx.admission.reserve_quota(status.size.unwrap_or(0))?;
    let replaced = call.ctx.admission.size_before_change(&status.path).await;
    let meta = call.ctx.store.commit_ranged(&UploadId::parse(&request.upload_id)?, final_sha256).await?;
    call.ctx.admission.committed(meta.size, replaced);
    tracing::info!(upload = %status.id, path = %meta.path, bytes = meta.size, "ranged upload committed");
    Ok(CommitUploadResponse { file: Some(convert::file_info(&meta)) })
}
