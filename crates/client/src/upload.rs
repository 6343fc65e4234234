//! Uploads: a producer task reads and hashes chunks on the blocking pool and
//! feeds a bounded channel that becomes the request stream, so memory stays a
//! few chunks whatever the file size, and a slow server slows the reader.

use std::io::Read;
use std::path::Path;

use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{Chunk, UploadFinish, UploadHeader, UploadRequest, WriteMode};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Client, Error, RemoteFile, Result, UploadOptions};

/// Chunks queued ahead of the network.
const SEND_QUEUE: usize = 4;

type Sender = mpsc::Sender<UploadRequest>;

impl Client {
    /// Uploads a local file to `remote`, keeping its size, mtime and permissions.
    pub async fn upload_file(
        &self,
        local: &Path,
        remote: &str,
        mut options: UploadOptions,
        progress: impl Fn(u64) + Send + 'static,
    ) -> Result<RemoteFile> {
        let file = std::fs::File::open(local).map_err(|e| Error::io(format!("cannot open {}", local.display()), e))?;
        let meta = file.metadata().map_err(|e| Error::io(format!("cannot stat {}", local.display()), e))?;
        if !meta.is_file() {
            return Err(Error::io(
                format!("cannot upload {}", local.display()),
                std::io::Error::other("not a regular file"),
            ));
        }
        options.size = Some(meta.len());
        options.mtime = options.mtime.or_else(|| meta.modified().ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            options.permissions = options.permissions.or(Some(meta.permissions().mode() & 0o777));
        }
        self.upload(remote, file, options, progress).await
    }

    /// Uploads everything `source` yields to `remote` (stdin, a pipe, a file).
    /// `progress` is called with the bytes handed to the transport so far.
    pub async fn upload<R: Read + Send + 'static>(
        &self,
        remote: &str,
        source: R,
        options: UploadOptions,
        progress: impl Fn(u64) + Send + 'static,
    ) -> Result<RemoteFile> {
        let header = UploadHeader {
            path: remote.to_owned(),
            size: options.size,
            sha256: String::new(),
            mode: if options.create_only { WriteMode::CreateOnly } else { WriteMode::Overwrite } as i32,
            mtime: options.mtime.map(prost_types::Timestamp::from),
            permissions: options.permissions,
            ..UploadHeader::default()
        };
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        tx.send(UploadRequest { kind: Some(Kind::Header(header)) })
            .await
            .map_err(|_| Error::Protocol("request stream closed".into()))?;
        let mut producer = tokio::spawn(send_chunks(source, self.chunk_size, tx, progress));
        let mut rpc = self.rpc.clone();
        let mut call = Box::pin(rpc.upload(ReceiverStream::new(rx)));

        let task_failed = |e: tokio::task::JoinError| Error::Protocol(format!("upload task failed: {e}"));
        let (sent, reply) = tokio::select! {
            produced = &mut producer => (produced.map_err(task_failed)?, None),
            answered = &mut call => match answered {
                // The server refused the upload before we finished sending.
                Err(status) => {
                    producer.abort();
                    return Err(status.into());
                }
                // The server committed, so it had everything: the producer is
                // done (or about to be), and its digest is checked below.
                Ok(reply) => ((&mut producer).await.map_err(task_failed)?, Some(reply)),
            },
        };
        // On a local read error, cancel the call (dropping it resets the
        // stream) before the request stream can end cleanly.
        let digest = match sent {
            Ok(digest) => digest,
            Err((error, tx)) => {
                drop(call);
                drop(tx);
                return Err(error);
            }
        };
        let reply = match reply {
            Some(reply) => reply,
            None => call.await?,
        }
        .into_inner();
        let file =
            reply.file.map(RemoteFile::from).ok_or_else(|| Error::Protocol("upload reply without file".into()))?;
        if file.sha256.as_deref() != Some(digest.as_str()) {
            return Err(Error::DigestMismatch {
                path: remote.to_owned(),
                expected: digest,
                actual: file.sha256.unwrap_or_default(),
            });
        }
        Ok(file)
    }
}

/// Reads, hashes and sends chunks, then the finish message with the digest.
/// Chunk N+1 is read on the blocking pool while chunk N is hashed here and
/// queued for the network (hashing in place measured faster than handing
/// each chunk to another thread). On a read error, returns the sender too, so the
/// stream stays open until the caller has cancelled the call.
async fn send_chunks<R: Read + Send + 'static>(
    source: R,
    chunk_size: usize,
    tx: Sender,
    progress: impl Fn(u64),
) -> std::result::Result<String, (Error, Sender)> {
    let task_failed = |e: tokio::task::JoinError| Error::Protocol(format!("read task failed: {e}"));
    let mut hasher = sha2::Sha256::new();
    let mut sent = 0u64;
    let mut reading = tokio::task::spawn_blocking(move || read_chunk(source, chunk_size));
    loop {
        let (source, read) = match reading.await {
            Ok(done) => done,
            Err(e) => return Err((task_failed(e), tx)),
        };
        let buf = match read {
            Ok(buf) => buf,
            Err(e) => return Err((Error::io("cannot read the upload source", e), tx)),
        };
        if buf.is_empty() {
            let digest = hex::encode(hasher.finalize());
            let finish = UploadRequest { kind: Some(Kind::Finish(UploadFinish { sha256: digest.clone() })) };
            // A closed stream means the server already answered; the call says why.
            let _ = tx.send(finish).await;
            return Ok(digest);
        }
        reading = tokio::task::spawn_blocking(move || read_chunk(source, chunk_size));

        let data = bytes::Bytes::from(buf);
        sent += data.len() as u64;
        hasher.update(&data);
        let crc32c = Some(crc32c::crc32c(&data));
        if tx.send(UploadRequest { kind: Some(Kind::Chunk(Chunk { data, crc32c })) }).await.is_err() {
            // The server already answered (refused the upload); the call says why.
            return Ok(String::new());
        }
        progress(sent);
    }
}

/// Reads up to `chunk_size` bytes (fewer only at the end).
fn read_chunk<R: Read>(mut source: R, chunk_size: usize) -> (R, std::io::Result<Vec<u8>>) {
    let mut buf = Vec::with_capacity(chunk_size);
    let result = source.by_ref().take(chunk_size as u64).read_to_end(&mut buf).map(|_| buf);
    (source, result)
}
