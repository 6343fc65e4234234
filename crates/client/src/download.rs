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

use crate::resume::{backoff, hash_prefix, is_transient};
use crate::{Client, Error, Range, RemoteFile, Result, RetryPolicy};

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
        let relative = move |absolute: u64| progress(absolute - range.offset);
        let received = self.receive(remote, range, sink, sha2::Sha256::new(), relative).await?;
        let file = received.file;
        if range.offset == 0 && received.written == file.size {
            verify(remote, &file, received.hasher)?;
        }
        Ok((file, received.sink))
    }

    /// Streams `range` of `remote` into `sink`, continuing `hasher`. When it
    /// returns, the writer has finished: everything received is in `sink`
    /// (so a resume can trust the sink's length), on success and error alike.
    pub(crate) async fn receive<W: Write + Send + 'static>(
        &self,
        remote: &str,
        range: Range,
        sink: W,
        mut hasher: sha2::Sha256,
        progress: impl Fn(u64) + Send,
    ) -> Result<Received<W>> {
        let request = DownloadRequest { path: remote.to_owned(), offset: range.offset, length: range.length };
        let mut stream = self.rpc.clone().download(request).await?.into_inner();
        let file = match stream.message().await?.and_then(|m| m.kind) {
            Some(Kind::Info(info)) => RemoteFile::from(info),
            _ => return Err(Error::Protocol("a download must start with the file's info".into())),
        };
        let available = file.size.saturating_sub(range.offset);
        let expected = range.length.map_or(available, |l| l.min(available));

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_chunks(sink, rx));
        // Hashed here, as chunks arrive, while the writer task writes earlier
        // ones: measured faster than hashing on the blocking pool, whose
        // per-chunk thread hand-offs cost more than they save on 2 cores.
        let streamed: Result<()> = async {
            let mut received = 0u64;
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
                progress(range.offset + received);
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer.await.map_err(|e| Error::Protocol(format!("write task failed: {e}")))?;
        streamed?;
        let (sink, written) = written?;
        if written != expected {
            return Err(Error::Protocol(format!("download ended after {written} of {expected} bytes")));
        }
        Ok(Received { file, sink, hasher, written })
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
        let (dir, name) = target_parts(local);
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".ferry-part")
            .tempfile_in(dir)
            .map_err(|e| Error::io(format!("cannot create a file in {}", dir.display()), e))?;
        // On any error below, `temp_path` is dropped and the partial file removed.
        let (file, temp_path) = temp.into_parts();
        let (info, file) = self.download(remote, range, file, progress).await?;

        publish_temp(file, temp_path, local, &info, overwrite).await?;
        Ok(info)
    }
}

/// [`finish_local`] for a verified temporary file, on the blocking pool; the
/// guard is released once the file has its name.
pub(crate) async fn publish_temp(
    file: std::fs::File,
    temp_path: tempfile::TempPath,
    local: &Path,
    meta: &RemoteFile,
    overwrite: bool,
) -> Result<()> {
    let (local, meta) = (local.to_owned(), meta.clone());
    tokio::task::spawn_blocking(move || {
        finish_local(file, &temp_path, &local, &meta, overwrite)?;
        // Moved to its name: nothing left for the guard to remove.
        let _ = temp_path.keep();
        Ok::<_, Error>(())
    })
    .await
    .map_err(|e| Error::Protocol(format!("write task failed: {e}")))?
}

impl Client {
    /// Downloads the whole of `remote` to `local`, resumably: the bytes go to
    /// `.NAME.<first 16 hex of the SHA-256>.ferry-part` beside the target,
    /// which survives a failure, so a retry (transient failures are retried
    /// here, with backoff) or a later run continues from its length. Naming
    /// the part by the digest means a changed remote file never continues a
    /// stale part. The whole file is verified before it is renamed into place.
    /// `on_resume` is told the offset when a part is continued; `progress`
    /// gets the bytes on disk.
    pub async fn download_file_resumable(
        &self,
        remote: &str,
        local: &Path,
        overwrite: bool,
        policy: &RetryPolicy,
        on_resume: impl Fn(u64) + Send + Sync,
        progress: impl Fn(u64) + Send + Sync,
    ) -> Result<RemoteFile> {
        if !overwrite && local.symlink_metadata().is_ok() {
            return Err(Error::LocalExists(local.to_owned()));
        }
        let mut failures = 0u32;
        loop {
            match self.download_attempt(remote, local, overwrite, &on_resume, &progress).await {
                Ok(file) => return Ok(file),
                Err(e) if is_transient(&e) && failures < policy.max_attempts_without_progress => {
                    failures += 1;
                    tokio::time::sleep(backoff(policy, failures, &e)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn download_attempt(
        &self,
        remote: &str,
        local: &Path,
        overwrite: bool,
        on_resume: &(impl Fn(u64) + Send + Sync),
        progress: &(impl Fn(u64) + Send + Sync),
    ) -> Result<RemoteFile> {
        let info = self.stat(remote).await?;
        let Some(sha256) = info.sha256.clone() else {
            // No digest known without reading the file: a plain download (the
            // server computes it before sending), restarted if interrupted.
            return self.download_file(remote, Range::ALL, local, overwrite, progress).await;
        };
        let (dir, name) = target_parts(local);
        let part = dir.join(format!(".{name}.{}.ferry-part", sha256.get(..16).unwrap_or(&sha256)));
        let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if have > info.size {
            have = 0;
        }
        if have > 0 {
            on_resume(have);
        }
        let hasher = hash_prefix(&part, have)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .map_err(|e| Error::io(format!("cannot write {}", part.display()), e))?;
        file.set_len(have).map_err(|e| Error::io(format!("cannot write {}", part.display()), e))?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(format!("cannot write {}", part.display()), e))?;

        let received = self.receive(remote, Range { offset: have, length: None }, file, hasher, progress).await?;
        if received.file.sha256.as_deref() != Some(sha256.as_str()) {
            // Replaced between stat and download: start over on the new version.
            let _ = std::fs::remove_file(&part);
            return Err(Error::Protocol(format!("{remote} changed during the download")));
        }
        if let Err(e) = verify(remote, &received.file, received.hasher) {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        let (file, part_path, local_path, meta) = (received.sink, part, local.to_owned(), received.file.clone());
        tokio::task::spawn_blocking(move || finish_local(file, &part_path, &local_path, &meta, overwrite))
            .await
            .map_err(|e| Error::Protocol(format!("write task failed: {e}")))??;
        Ok(received.file)
    }
}

/// The directory and file name of a local target.
fn target_parts(local: &Path) -> (&Path, String) {
    let dir = match local.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    (dir, local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
}

/// Syncs a verified download, gives it the server's mtime and permission
/// bits, and moves it to its name (refusing to replace a file unless
/// `overwrite`); then syncs the directory so the new name is durable too.
pub(crate) fn finish_local(
    file: std::fs::File,
    part: &Path,
    local: &Path,
    meta: &RemoteFile,
    overwrite: bool,
) -> Result<()> {
    let context = || format!("cannot finish writing {}", local.display());
    apply_metadata(&file, meta, local)?;
    file.sync_all().map_err(|e| Error::io(context(), e))?;
    crate::files::place(part, local, overwrite)?;
    if let Ok(dir) = std::fs::File::open(target_parts(local).0) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Gives a downloaded file the server's mtime and permission bits (the
/// owner may always read and write it).
pub(crate) fn apply_metadata(file: &std::fs::File, meta: &RemoteFile, local: &Path) -> Result<()> {
    let context = || format!("cannot finish writing {}", local.display());
    if let Some(mtime) = meta.mtime {
        file.set_modified(mtime).map_err(|e| Error::io(context(), e))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(meta.permissions & 0o777 | 0o600);
        file.set_permissions(mode).map_err(|e| Error::io(context(), e))?;
    }
    Ok(())
}

/// What [`Client::receive`] delivered.
pub(crate) struct Received<W> {
    pub file: RemoteFile,
    pub sink: W,
    pub hasher: sha2::Sha256,
    pub written: u64,
}

/// Checks a whole file's digest against the server's.
pub(crate) fn verify(remote: &str, file: &RemoteFile, hasher: sha2::Sha256) -> Result<()> {
    let actual = hex::encode(hasher.finalize());
    let expected = file.sha256.clone().unwrap_or_default();
    if actual != expected {
        return Err(Error::DigestMismatch { path: remote.to_owned(), expected, actual });
    }
    Ok(())
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
