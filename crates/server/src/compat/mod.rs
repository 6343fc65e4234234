//! The classic services ferry speaks beside its own API, on the same port
//! and through the same machinery: path validation, authentication and
//! scopes, limits, metrics, streamed and atomic commits.
//!
//! | service | file |
//! |---|---|
//! | `file_server.FileTransfer` (the nameless-upload tutorial) | `file_transfer.rs` |
//! | `FileSrv` (the header-then-chunks tutorial) | `file_srv.rs` |
//! | `google.bytestream.ByteStream`, Bazel remote-cache names | `bytestream.rs`, `resource.rs` |

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::BytesMut;
use ferry_store::{Metadata, StorePath, WriteOptions};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::auth::Permission;
use crate::service::Call;
use crate::service::upload::{Budget, Incoming, receive};
use crate::status::ServiceError;

pub mod bytestream;
pub mod file_srv;
pub mod file_transfer;
mod resource;

pub use bytestream::ByteStreamService;
pub use file_srv::FileSrvService;
pub use file_transfer::FileTransferService;

/// Stores an upload of unknown size that these protocols end by simply
/// closing the stream: its clean end completes the file (a client that dies
/// mid-stream resets it instead, which discards the upload).
pub(crate) async fn store_until_end<S>(call: &Call, path: &StorePath, chunks: S) -> Result<Metadata, ServiceError>
where
    S: Stream<Item = Result<Incoming, Status>> + Unpin,
{
    call.who.check(Permission::Write, path)?;
    let mut budget = Budget::admit(call, None, None).await?;
    let mut upload = call.ctx.store.create_upload(path, WriteOptions::default()).await?;
    let chunks = Coalesce::new(chunks).chain(tokio_stream::once(Ok(Incoming::Last(bytes::Bytes::new()))));
    let digest = receive(&mut *upload, chunks, call.ctx.idle_timeout, false, &mut budget, |_| {}).await?;
    budget.commit(upload, path, digest).await
}

/// Chunks at least this big pass through as they are; smaller ones that are
/// already waiting are merged up to it. Tutorial clients send 1 KiB chunks:
/// one write per 1 KiB would cost a syscall and a channel hop each.
const COALESCE_TARGET: usize = 256 * 1024;

/// Merges consecutive small data chunks that are ready at once; never waits
/// for more data to merge (a slow sender's bytes go through as they come).
pub(crate) struct Coalesce<S> {
    inner: S,
    /// An item that arrived behind merged data, to hand out next.
    held: Option<Result<Incoming, Status>>,
    done: bool,
}

impl<S> Coalesce<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner, held: None, done: false }
    }
}

impl<S> Stream for Coalesce<S>
where
    S: Stream<Item = Result<Incoming, Status>> + Unpin,
{
    type Item = Result<Incoming, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(item) = this.held.take() {
            return Poll::Ready(Some(item));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let mut merged: Option<BytesMut> = None;
        loop {
            let flush = |merged: BytesMut| Poll::Ready(Some(Ok(Incoming::Chunk(merged.freeze(), None))));
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(Incoming::Chunk(data, None)))) => match merged.as_mut() {
                    None if data.len() >= COALESCE_TARGET => return Poll::Ready(Some(Ok(Incoming::Chunk(data, None)))),
                    None => merged = Some(BytesMut::from(&data[..])),
                    Some(buffer) => {
                        buffer.extend_from_slice(&data);
                        if buffer.len() >= COALESCE_TARGET {
                            return flush(buffer.split());
                        }
                    }
                },
                Poll::Ready(other) => {
                    this.done = other.is_none();
                    return match merged {
                        Some(buffer) => {
                            this.held = other;
                            flush(buffer)
                        }
                        None => Poll::Ready(other),
                    };
                }
                Poll::Pending => {
                    return match merged {
                        Some(buffer) => flush(buffer),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn chunk(n: usize) -> Result<Incoming, Status> {
        Ok(Incoming::Chunk(Bytes::from(vec![7u8; n]), None))
    }

    #[tokio::test]
    async fn small_ready_chunks_are_merged_and_the_rest_passes_in_order() {
        let items = vec![chunk(1024), chunk(1024), chunk(1024), Ok(Incoming::Finish(String::new())), chunk(10)];
        let merged: Vec<_> = Coalesce::new(tokio_stream::iter(items)).collect().await;
        let shape: Vec<String> = merged
            .iter()
            .map(|item| match item {
                Ok(Incoming::Chunk(data, _)) => format!("chunk {}", data.len()),
                Ok(Incoming::Finish(_)) => "finish".into(),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(shape, ["chunk 3072", "finish", "chunk 10"]);
    }

    /// (tokio-stream's `iter` yields to the scheduler every 32 items, which
    /// ends a merge early: the same happens with a real socket.)
    #[tokio::test]
    async fn merging_stops_at_the_target_and_keeps_every_byte() {
        let items: Vec<_> = (0..600).map(|_| chunk(1024)).collect();
        let merged: Vec<_> = Coalesce::new(tokio_stream::iter(items)).collect().await;
        let sizes: Vec<usize> = merged
            .iter()
            .map(|item| match item {
                Ok(Incoming::Chunk(data, _)) => data.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 600 * 1024);
        assert!(sizes.iter().all(|&n| n <= COALESCE_TARGET), "{sizes:?}");
        assert!(sizes.len() <= 600 / 32 + 1, "1 KiB chunks are merged: {sizes:?}");
    }
}
