//! One large file over several connections at once: [`download_parallel`].
//!
//! The file is cut into pieces of [`PIECE`] bytes, and each connection takes
//! the next piece not yet taken (so a slow connection takes fewer), fetches
//! it with a ranged `Download` and writes it in place into a preallocated
//! temporary file beside the target. SHA-256 cannot be computed out of
//! order, so a hasher follows behind: as soon as the pieces up to some
//! point are all written, it reads them back (from the page cache) and
//! hashes them, while later pieces still arrive. The whole file is verified
//! against the server's digest before it is renamed into place, as any
//! ferry download is.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::Digest as _;
use tokio::sync::mpsc;

use crate::download::publish_temp;
use crate::pieces::{self, lock};
use crate::resume::{backoff, is_transient};
use crate::{Client, Error, Range, RemoteFile, Result, RetryPolicy};

/// Bytes per piece: large enough that a piece's request costs nothing next
/// to its transfer, small enough to spread a file over the connections.
pub const PIECE: u64 = 16 * 1024 * 1024;

/// Downloads the whole of `remote` to `local` over all of `clients` at once
/// (one piece per connection at a time), verified, with the server's mtime
/// and permission bits; refuses to replace `local` unless `overwrite`. A
/// piece that fails transiently is fetched again (with backoff, per
/// `policy`), by another connection if its own keeps failing; a file
/// replaced on the server meanwhile is an error. `progress` gets the bytes
/// received so far (piece by piece). With one client, or a file of less
/// than two pieces, this is [`Client::download_file_resumable`].
pub async fn download_parallel(
    clients: &[Client],
    remote: &str,
    local: &Path,
    overwrite: bool,
    policy: &RetryPolicy,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<RemoteFile> {
    let Some(first) = clients.first() else {
        return Err(Error::Protocol("a parallel download needs at least one connection".into()));
    };
    if !overwrite && local.symlink_metadata().is_ok() {
        return Err(Error::LocalExists(local.to_owned()));
    }
    // An empty range gives the file's info, with the digest (computed by the
    // server if it had none cached).
    let (info, _) = first.download(remote, Range { offset: 0, length: Some(0) }, std::io::sink(), |_| {}).await?;
    let Some(expected) = info.sha256.clone() else {
        return Err(Error::Protocol(format!("the server sent no digest for {remote}")));
    };
    if clients.len() == 1 || info.size < 2 * PIECE {
        return first.download_file_resumable(remote, local, overwrite, policy, |_| {}, progress).await;
    }

    let temp = crate::files::temp_beside(local)?;
    let context = || format!("cannot write {}", temp.path().display());
    // Reserve the space up front: a full disk fails now, not halfway.
    match rustix::fs::fallocate(temp.as_file(), rustix::fs::FallocateFlags::empty(), 0, info.size) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOSPC) => return Err(Error::io(context(), rustix::io::Errno::NOSPC.into())),
        // A filesystem that cannot preallocate: a sparse file of the right length.
        Err(_) => temp.as_file().set_len(info.size).map_err(|e| Error::io(context(), e))?,
    }
    let file = Arc::new(temp.as_file().try_clone().map_err(|e| Error::io(context(), e))?);

    let pieces = info.size.div_ceil(PIECE) as usize;
    let received = Mutex::new(0u64);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let workers: Vec<_> = clients
        .iter()
        .map(|client| {
            let worker = Arc::new(PieceWorker {
                client: client.clone(),
                remote: remote.to_owned(),
                expected: expected.clone(),
                size: info.size,
                file: file.clone(),
                policy: policy.clone(),
            });
            move |piece| {
                let worker = worker.clone();
                async move { worker.fetch(piece).await }
            }
        })
        .collect();
    let hashing = tokio::spawn(hash_in_order(file.clone(), info.size, pieces, done_rx));
    let fetched = pieces::share(workers, pieces, move |piece, bytes| {
        let mut total = lock(&received);
        *total += bytes;
        progress(*total);
        let _ = done_tx.send(piece);
    })
    .await;
    if let Err(e) = fetched {
        hashing.abort();
        return Err(e);
    }
    let actual = hashing.await.map_err(|e| Error::Protocol(format!("hash task failed: {e}")))??;
    if actual != expected {
        return Err(Error::DigestMismatch { path: remote.to_owned(), expected, actual });
    }
    let (file, temp_path) = temp.into_parts();
    publish_temp(file, temp_path, local, &info, overwrite).await?;
    Ok(info)
}

/// Fetches pieces of one file over one connection.
struct PieceWorker {
    client: Client,
    remote: String,
    expected: String,
    size: u64,
    file: Arc<File>,
    policy: RetryPolicy,
}

impl PieceWorker {
    /// Fetches one piece into place (again after a transient failure);
    /// returns its length.
    async fn fetch(&self, piece: usize) -> Result<u64> {
        let offset = piece as u64 * PIECE;
        let length = PIECE.min(self.size - offset);
        let mut failures = 0;
        loop {
            let sink = AtOffset { file: self.file.clone(), position: offset };
            let range = Range { offset, length: Some(length) };
            match self.client.receive(&self.remote, range, sink, sha2::Sha256::new(), |_| {}).await {
                Ok(got) if got.file.sha256.as_deref() != Some(self.expected.as_str()) => {
                    return Err(Error::Protocol(format!("{} changed during the download", self.remote)));
                }
                Ok(_) => return Ok(length),
                // The file shrank below this piece: replaced meanwhile.
                Err(Error::Status(status)) if status.code() == tonic::Code::OutOfRange => {
                    return Err(Error::Protocol(format!("{} changed during the download", self.remote)));
                }
                Err(e) if is_transient(&e) && failures < self.policy.max_attempts_without_progress => {
                    failures += 1;
                    tokio::time::sleep(backoff(&self.policy, failures, &e)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Hashes the file from the start as the pieces arrive, in order; returns
/// the digest once all `pieces` are hashed.
async fn hash_in_order(
    file: Arc<File>,
    size: u64,
    pieces: usize,
    mut done: mpsc::UnboundedReceiver<usize>,
) -> Result<String> {
    let mut hasher = sha2::Sha256::new();
    let mut arrived = BTreeSet::new();
    let mut next = 0;
    while next < pieces {
        match done.recv().await {
            Some(piece) => arrived.insert(piece),
            None => return Err(Error::Protocol("the download ended before every piece arrived".into())),
        };
        while arrived.remove(&next) {
            let (offset, file) = (next as u64 * PIECE, file.clone());
            let length = PIECE.min(size - offset);
            hasher = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; length as usize];
                file.read_exact_at(&mut buf, offset).map_err(|e| Error::io("cannot read back a download", e))?;
                hasher.update(&buf);
                Ok::<_, Error>(hasher)
            })
            .await
            .map_err(|e| Error::Protocol(format!("hash task failed: {e}")))??;
            next += 1;
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes at a position of a shared file (`pwrite`), moving forward.
struct AtOffset {
    file: Arc<File>,
    position: u64,
}

impl std::io::Write for AtOffset {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write_at(buf, self.position)?;
        self.position += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
