//! Downloads: the stream's chunks go through a bounded channel to a writer
//! task that hashes and writes them on the blocking pool. A download to a path
//! is written to a temporary file beside the target and renamed into place
//! only after its SHA-256 matched, so the target name never holds a partial
//! or corrupt file.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use ferry_proto::v1::DownloadRequest;
use ferry_proto::v1::download_response::Kind;
use sha2::Digest as _;
use tokio::sync::mpsc;

use crate::{Client, Error, Range, RemoteFile, Result};

/// Chunks queued between the network and the local disk.
const WRITE_QUEUE: usize = 4;

impl Client {
    /// Downloads `range` of `remote` into `sink`; returns the file's metadata
    /// and the sink. A whole-file download is verified against the server's
    /// SHA-256 (a mismatch is [`Error::DigestMismatch`]; the bytes have been
    /// written to `sink` by then). `progress` gets the bytes written so far.
    pub async fn download<W: Write + Send + 'static>(
        &self,
        remote: &str,
        range: Range,
        sink: W,
        progress: impl Fn(u64) + Send,
    ) -> Result<(RemoteFile, W)> {
        let request = DownloadRequest { path: remote.to_owned(), offset: range.offset, length: range.length };
        let mut stream = self.rpc.clone().download(request).await?.into_inner();
        let file = match stream.message().await?.and_then(|m| m.kind) {
            Some(Kind::Info(info)) => RemoteFile::from(info),
            _ => return Err(Error::Protocol("a download must start with the file's info".into())),
        };
        let available = file.size.saturating_sub(range.offset);
        let expected = range.length.map_or(available, |l| l.min(available));
        let whole_file = range.offset == 0 && expected == file.size;

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_chunks(sink, rx));
        let mut received = 0u64;
        // Hashed here, as chunks arrive, while the writer task writes earlier
        // ones: measured faster than hashing on the blocking pool, whose
        // per-chunk thread hand-offs cost more than they save on 2 cores.
        let mut hasher = sha2::Sha256::new();
        while let Some(message) = stream.message().await? {
            let Some(Kind::Chunk(chunk)) = message.kind else {
                return Err(Error::Protocol("unexpected message in a download".into()));
            };
            received += chunk.data.len() as u64;
            if received > expected {
                return Err(Error::Protocol(format!("server sent more than the {expected} bytes expected")));
            }
            hasher.update(&chunk.data);
            if tx.send(chunk.data).await.is_err() {
                break; // the writer failed: its error is reported below
            }
            progress(received);
        }
        drop(tx);
        let (sink, written) = writer.await.map_err(|e| Error::Protocol(format!("write task failed: {e}")))??;
        let digest = hex::encode(hasher.finalize());
        if written != expected {
            return Err(Error::Protocol(format!("download ended after {written} of {expected} bytes")));
        }
        if whole_file {
            let expected_digest = file.sha256.clone().unwrap_or_default();
            if digest != expected_digest {
                return Err(Error::DigestMismatch {
                    path: remote.to_owned(),
                    expected: expected_digest,
                    actual: digest,
                });
            }
        }
        Ok((file, sink))
    }

    /// Downloads `range` of `remote` to the local path `local`, with the
    /// server's mtime and permission bits; a whole file is verified before it
    /// appears under its name. Refuses to replace an existing file unless
    /// `overwrite`.
    pub async fn download_file(
        &self,
        remote: &str,
        range: Range,
        local: &Path,
        overwrite: bool,
        progress: impl Fn(u64) + Send,
    ) -> Result<RemoteFile> {
        if !overwrite && local.symlink_metadata().is_ok() {
            return Err(Error::LocalExists(local.to_owned()));
        }
        let dir = match local.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".ferry-part")
            .tempfile_in(dir)
            .map_err(|e| Error::io(format!("cannot create a file in {}", dir.display()), e))?;
        // On any error below, `temp_path` is dropped and the partial file removed.
        let (file, temp_path) = temp.into_parts();
        let (info, file) = self.download(remote, range, file, progress).await?;

        let (local, dir, info_for_task) = (local.to_owned(), dir.to_owned(), info.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            let context = || format!("cannot finish writing {}", local.display());
            if let Some(mtime) = info_for_task.mtime {
                file.set_modified(mtime).map_err(|e| Error::io(context(), e))?;
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::Permissions::from_mode(info_for_task.permissions & 0o777 | 0o600);
                file.set_permissions(mode).map_err(|e| Error::io(context(), e))?;
            }
            file.sync_all().map_err(|e| Error::io(context(), e))?;
            let persisted = if overwrite { temp_path.persist(&local) } else { temp_path.persist_noclobber(&local) };
            persisted.map_err(|e| match e.error.kind() {
                std::io::ErrorKind::AlreadyExists => Error::LocalExists(local.clone()),
                _ => Error::io(context(), e.error),
            })?;
            // Make the new name durable too.
            if let Ok(dir) = std::fs::File::open(&dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Protocol(format!("write task failed: {e}")))??;
        Ok(info)
    }
}

/// Writes chunks, in order, until the channel closes: (sink, bytes written).
async fn write_chunks<W: Write + Send + 'static>(sink: W, mut chunks: mpsc::Receiver<Bytes>) -> Result<(W, u64)> {
    let (mut sink, mut written) = (sink, 0u64);
    while let Some(data) = chunks.recv().await {
        written += data.len() as u64;
        let result;
        (sink, result) = tokio::task::spawn_blocking(move || {
            let result = sink.write_all(&data);
            (sink, result)
        })
        .await
        .map_err(|e| Error::Protocol(format!("write task failed: {e}")))?;
        result.map_err(|e| Error::io("cannot write the downloaded data", e))?;
    }
    sink.flush().map_err(|e| Error::io("cannot write the downloaded data", e))?;
    Ok((sink, written))
}
