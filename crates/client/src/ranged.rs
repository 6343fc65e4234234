//! One large file over several connections at once: [`upload_parallel`].
//!
//! The server stages a *ranged* session: a preallocated file and the set of
//! ranges already durable. The file is cut into pieces of [`PIECE`] bytes;
//! each connection takes the next piece not yet taken, sends it as one range
//! stream (an `UploadSession` whose start gives offset and length) and waits
//! for `range_committed`. Meanwhile the local file is hashed in a separate
//! pass. Once every piece is committed, `CommitUpload` hands the server the
//! digest; the server reads its copy back, checks it, and publishes it
//! atomically. A run that is interrupted leaves the session with its
//! committed ranges: the next run sends only the missing ones.

use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ferry_proto::v1::upload_session_request::Kind;
use ferry_proto::v1::upload_session_response::Kind as Reply;
use ferry_proto::v1::{Chunk, CommitUploadRequest, CreateUploadRequest, UploadSessionRequest, UploadSessionStart};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::parallel::PIECE;
use crate::pieces::{self, lock};
use crate::resume::{AbortOnDrop, backoff, hash_prefix, is_transient, upload_header};
use crate::{Client, Error, RemoteFile, Result, RetryPolicy, UploadOptions};

impl Client {
    /// Opens a ranged upload session for `remote` (whose size `options`
    /// must give), for [`upload_parallel`]. `None` when the server cannot
    /// stage ranges (its store is an object store, or it predates ranged
    /// sessions): send the file as one stream instead.
    pub async fn create_ranged_upload(&self, remote: &str, options: &UploadOptions) -> Result<Option<String>> {
        if options.size.is_none() {
            return Err(Error::Protocol("a ranged upload needs the file's size".into()));
        }
        let request = CreateUploadRequest { header: Some(upload_header(remote, options)), ranged: true };
        let reply = match self.rpc.clone().create_upload(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == Code::Unimplemented => return Ok(None),
            Err(status) => return Err(status.into()),
        };
        if !reply.ranged {
            // An older server made an ordinary session of it.
            let _ = self.abort_upload(&reply.upload_id).await;
            return Ok(None);
        }
        Ok(Some(reply.upload_id))
    }

    /// Completes a ranged session whose ranges cover the file: the server
    /// checks its copy against `sha256` (hex; may be empty) and publishes it.
    pub async fn commit_upload(&self, upload_id: &str, sha256: &str) -> Result<RemoteFile> {
        let request = CommitUploadRequest { upload_id: upload_id.to_owned(), sha256: sha256.to_owned() };
        let reply = self.rpc.clone().commit_upload(request).await?.into_inner();
        reply.file.map(RemoteFile::from).ok_or_else(|| Error::Protocol("CommitUpload answered without the file".into()))
    }

    /// Sends `offset..offset + length` of `local` as one range stream, and
    /// waits until the server has it durably.
    async fn send_range(&self, upload_id: &str, local: &Path, offset: u64, length: u64) -> Result<()> {
        let file = std::fs::File::open(local).map_err(|e| Error::io(format!("cannot open {}", local.display()), e))?;
        let (tx, rx) = mpsc::channel(2);
        let start = UploadSessionStart { upload_id: upload_id.to_owned(), offset, length: Some(length) };
        tx.send(UploadSessionRequest { kind: Some(Kind::Start(start)) })
            .await
            .map_err(|_| Error::Protocol("request stream closed".into()))?;
        let mut replies = self.rpc.clone().upload_session(ReceiverStream::new(rx)).await?.into_inner();
        let producer = tokio::spawn(send_range_data(file, offset, length, self.chunk_size, tx, local.to_owned()));
        let mut producer = AbortOnDrop(producer);
        match replies.message().await {
            Ok(Some(reply)) => match reply.kind {
                Some(Reply::RangeCommitted(range)) if range.offset == offset && range.length == length => Ok(()),
                _ => Err(Error::Protocol(format!("an unexpected reply to the range at {offset}"))),
            },
            Ok(None) => Err(Error::Protocol("the range stream ended without an answer".into())),
            Err(status) => {
                // A local read error ends the stream unfinished; report it, not the server's answer.
                if producer.0.is_finished()
                    && let Ok(Err(local_error)) = (&mut producer.0).await
                {
                    return Err(local_error);
                }
                Err(status.into())
            }
        }
    }
}

/// Reads the range from the file chunk by chunk and sends it; then ends the
/// stream (half-close), which asks the server to commit the range.
async fn send_range_data(
    file: std::fs::File,
    offset: u64,
    length: u64,
    chunk_size: usize,
    tx: mpsc::Sender<UploadSessionRequest>,
    local: std::path::PathBuf,
) -> Result<()> {
    let file = Arc::new(file);
    let mut sent = 0;
    while sent < length {
        let want = (chunk_size as u64).min(length - sent) as usize;
        let (reader, at) = (file.clone(), offset + sent);
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            reader.read_exact_at(&mut buf, at).map(|()| buf)
        })
        .await
        .map_err(|e| Error::Protocol(format!("read task failed: {e}")))?;
        let buf = read.map_err(|e| Error::io(format!("cannot read {}", local.display()), e))?;
        sent += buf.len() as u64;
        let crc32c = Some(crc32c::crc32c(&buf));
        let chunk = UploadSessionRequest { kind: Some(Kind::Chunk(Chunk { data: buf.into(), crc32c })) };
        if tx.send(chunk).await.is_err() {
            return Ok(()); // the server answered; the reply says why
        }
    }
    Ok(())
}

/// Connections a parallel upload uses at most. A server grants a range only
/// if the session's committed ranges merged with it, plus the ranges being
/// written, number at most 32; with pieces handed out in order, each piece
/// in flight can also split the committed ones, so 16 streams fit.
pub const MAX_UPLOAD_CONNECTIONS: usize = 16;

/// Uploads `local` through the ranged session `upload_id` (see
/// [`Client::create_ranged_upload`]) over `clients` at once (the first
/// [`MAX_UPLOAD_CONNECTIONS`] of them), one
/// piece per connection at a time, sending only what the session lacks (so
/// a session left by an interrupted run is continued). A piece that fails
/// transiently is sent again (with backoff, per `policy`), by another
/// connection if its own keeps failing. `progress` gets the bytes the server
/// has committed, piece by piece.
pub async fn upload_parallel(
    clients: &[Client],
    local: &Path,
    upload_id: &str,
    policy: &RetryPolicy,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<RemoteFile> {
    let Some(first) = clients.first() else {
        return Err(Error::Protocol("a parallel upload needs at least one connection".into()));
    };
    let clients = &clients[..clients.len().min(MAX_UPLOAD_CONNECTIONS)];
    let state = first.query_upload(upload_id).await?;
    let Some(committed) = state.ranges.clone() else {
        return Err(Error::Protocol(format!("upload {upload_id} is not a ranged session")));
    };
    let size = state.size.unwrap_or(0);
    let local_size =
        std::fs::metadata(local).map_err(|e| Error::io(format!("cannot read {}", local.display()), e))?.len();
    if local_size != size {
        return Err(Error::Protocol(format!(
            "{} is {local_size} bytes, but upload {upload_id} is of a {size}-byte file",
            local.display()
        )));
    }
    let pieces = missing_pieces(&committed, size, PIECE);
    let sent = Arc::new(Mutex::new(size - pieces.iter().map(|p| p.end - p.start).sum::<u64>()));
    progress(*lock(&sent));

    // The digest, computed while the pieces travel.
    let hash_path = local.to_owned();
    let hashing = AbortOnDrop(tokio::spawn(async move {
        let hasher = tokio::task::spawn_blocking(move || hash_prefix(&hash_path, size))
            .await
            .map_err(|e| Error::Protocol(format!("hash task failed: {e}")))??;
        Ok(hex::encode(sha2::Digest::finalize(hasher)))
    }));

    let outcome = match send_pieces(clients, local, upload_id, policy, pieces, sent, Arc::new(progress)).await {
        Ok(()) => match hashing.wait().await {
            Ok(digest) => commit(first, upload_id, &digest, policy).await.map_err(|e| (e, Some(digest))),
            Err(e) => Err((e, None)),
        },
        Err(e) => Err((e, None)),
    };
    match outcome {
        Ok(file) => Ok(file),
        // The session ended under us: another run of the same upload (or a
        // commit whose reply was lost) may have stored it. If the file there
        // is ours, this upload is done.
        Err((e, digest)) if e.code() == Some(Code::NotFound) => {
            let digest = match digest {
                Some(digest) => digest,
                None => {
                    let hash_path = local.to_owned();
                    let hasher = tokio::task::spawn_blocking(move || hash_prefix(&hash_path, size))
                        .await
                        .map_err(|e| Error::Protocol(format!("hash task failed: {e}")))??;
                    hex::encode(sha2::Digest::finalize(hasher))
                }
            };
            match first.stat(&state.path).await {
                Ok(file) if file.sha256.as_deref() == Some(digest.as_str()) => Ok(file),
                _ => Err(e),
            }
        }
        Err((e, _)) => Err(e),
    }
}

/// Sends every piece over the connections; the first failure that retries
/// cannot cure ends it.
async fn send_pieces(
    clients: &[Client],
    local: &Path,
    upload_id: &str,
    policy: &RetryPolicy,
    pieces: Vec<Range<u64>>,
    sent: Arc<Mutex<u64>>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<()> {
    let pieces = Arc::new(pieces);
    let count = pieces.len();
    let workers: Vec<_> = clients
        .iter()
        .map(|client| {
            let sender = Arc::new(PieceSender {
                client: client.clone(),
                local: local.to_owned(),
                upload_id: upload_id.to_owned(),
                policy: policy.clone(),
            });
            let pieces = pieces.clone();
            move |piece: usize| {
                let (sender, range) = (sender.clone(), pieces[piece].clone());
                async move { sender.send(range.clone()).await.map(|()| range.end - range.start) }
            }
        })
        .collect();
    pieces::share(workers, count, move |_, bytes| {
        let mut total = lock(&sent);
        *total += bytes;
        progress(*total);
    })
    .await
}

/// Sends pieces of one file over one connection.
struct PieceSender {
    client: Client,
    local: std::path::PathBuf,
    upload_id: String,
    policy: RetryPolicy,
}

impl PieceSender {
    /// Sends one piece (again after a transient failure, unless the server
    /// turns out to have it after all: a reply lost on the way).
    async fn send(&self, piece: Range<u64>) -> Result<()> {
        let mut failures = 0;
        loop {
            let length = piece.end - piece.start;
            match self.client.send_range(&self.upload_id, &self.local, piece.start, length).await {
                Ok(()) => return Ok(()),
                Err(e) if is_transient(&e) && failures < self.policy.max_attempts_without_progress => {
                    failures += 1;
                    tokio::time::sleep(backoff(&self.policy, failures, &e)).await;
                    if let Ok(state) = self.client.query_upload(&self.upload_id).await
                        && state.ranges.iter().flatten().any(|r| r.start <= piece.start && piece.end <= r.end)
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Commits the session, retrying transient failures.
async fn commit(client: &Client, upload_id: &str, digest: &str, policy: &RetryPolicy) -> Result<RemoteFile> {
    let mut failures = 0;
    loop {
        match client.commit_upload(upload_id, digest).await {
            Ok(file) => {
                if file.sha256.as_deref() != Some(digest) {
                    return Err(Error::DigestMismatch {
                        path: file.path.clone(),
                        expected: digest.to_owned(),
                        actual: file.sha256.unwrap_or_default(),
                    });
                }
                return Ok(file);
            }
            Err(e) if is_transient(&e) && failures < policy.max_attempts_without_progress => {
                failures += 1;
                tokio::time::sleep(backoff(policy, failures, &e)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The parts of `0..size` outside `committed`, cut into pieces of at most
/// `piece` bytes (aligned to `piece` where a gap allows, so that a re-run
/// cuts them the same way).
pub(crate) fn missing_pieces(committed: &[Range<u64>], size: u64, piece: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = committed.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut gaps = Vec::new();
    let mut at = 0;
    for range in sorted {
        if range.start > at {
            gaps.push(at..range.start.min(size));
        }
        at = at.max(range.end);
    }
    if at < size {
        gaps.push(at..size);
    }
    let mut pieces = Vec::new();
    for gap in gaps {
        let mut start = gap.start;
        while start < gap.end {
            let end = ((start / piece + 1) * piece).min(gap.end);
            pieces.push(start..end);
            start = end;
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pieces_fill_the_gaps_on_piece_boundaries() {
        assert_eq!(missing_pieces(&[], 25, 10), vec![0..10, 10..20, 20..25]);
        assert_eq!(missing_pieces(&[0..10, 20..25], 25, 10), vec![10..20]);
        let one = |range: Range<u64>| vec![range];
        assert_eq!(missing_pieces(&one(5..12), 25, 10), vec![0..5, 12..20, 20..25]);
        assert_eq!(missing_pieces(&one(0..25), 25, 10), Vec::<Range<u64>>::new());
        assert_eq!(missing_pieces(&[], 0, 10), Vec::<Range<u64>>::new());
    }
}
