//! Downloads from a [`LocalStore`](super::LocalStore).
//!
//! The file is opened once, before the first byte is sent; every later read
//! goes through that descriptor. A rename or delete of the path meanwhile does
//! not touch the open inode, so a download always streams one whole version.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::{self, Mode, OFlags, Stat};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::resolve::{self, Purpose};
use super::{Inner, blocking, digest_cache};
use crate::{ByteRange, Download, EntryKind, Error, Result, StorePath};

/// Chunks read ahead of the network. With the chunk tonic is encoding and
/// the one h2 holds for the socket, an unread download pins at most
/// READ_AHEAD + 2 chunks: 4 MiB with the defaults, which is what bounds memory when many
/// clients stop reading (docs/operations.md, "Memory bound").
const READ_AHEAD: usize = 1;
/// Bytes of chunks that all downloads together aim to hold: with more than
/// `READ_BUDGET / read_chunk` downloads at once, each reads smaller chunks
/// (down to [`MIN_READ_CHUNK`]), so that memory stops growing with their
/// number (measured: docs/performance.md, "Many transfers at once").
const READ_BUDGET: usize = 32 * 1024 * 1024;
const MIN_READ_CHUNK: usize = 64 * 1024;

/// Counts a download as running while it is alive.
struct Running(Arc<Inner>);

impl Running {
    fn start(inner: Arc<Inner>) -> Self {
        inner.running_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(inner)
    }

    /// The size of the next chunk to read, given how many downloads run now.
    fn chunk(&self) -> usize {
        let running = self.0.running_reads.load(std::sync::atomic::Ordering::Relaxed).max(1);
        (READ_BUDGET / running).max(MIN_READ_CHUNK).min(self.0.read_chunk)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running_reads.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Opens `dir/name` for reading if, and only if, it is a regular file.
pub(super) fn open_file(dir: BorrowedFd<'_>, name: &str, path: &StorePath) -> Result<(File, Stat)> {
    // Check the type first: opening a device or FIFO could block or have side effects.
    let st = resolve::stat_entry(dir, name, path)?;
    match resolve::entry_kind(&st, path)? {
        EntryKind::Directory => return Err(Error::IsDirectory { path: path.as_str().to_owned() }),
        EntryKind::File => {}
    }
    let fd =
        fs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
            .map_err(|errno| resolve::classify(dir, name, errno, path, Purpose::Read, "opening a file"))?;
    // The entry may have been swapped between the two calls: trust only the descriptor.
    let st = fs::fstat(&fd).map_err(|e| Error::io("reading metadata", e.into()))?;
    if resolve::entry_kind(&st, path)? != EntryKind::File {
        return Err(Error::NotAFile { path: path.as_str().to_owned() });
    }
    Ok((File::from(fd), st))
}

pub(super) async fn read(inner: Arc<Inner>, path: StorePath, range: ByteRange) -> Result<Download> {
    let running = Running::start(inner.clone());
    let (file, meta, offset, length) = blocking(move || {
        let (parents, name) = path.split_last();
        let parent = resolve::open_dir(inner.root.as_fd(), &parents, &path, Purpose::Read)?;
        let (mut file, st) = open_file(parent.as_fd(), name, &path)?;
        let (offset, length) = range.resolve(st.st_size.max(0) as u64)?;
        let sha256 = match digest_cache::load(&file, &st) {
            Some(sha256) => sha256,
            None => {
                let sha256 = digest_cache::compute(&file)?;
                digest_cache::store(&file, &st, &sha256);
                sha256
            }
        };
        file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io("seeking", e))?;
        Ok((file, resolve::metadata(path, EntryKind::File, &st, Some(sha256)), offset, length))
    })
    .await?;

    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(send_chunks(file, length, running, tx));
    Ok(Download { meta, offset, length, body: Box::pin(ReceiverStream::new(rx)) })
}

/// Reads `length` bytes from the file's current position into the channel,
/// stopping early if the receiver goes away (the client cancelled).
///
/// A chunk is read only once the channel has room for it, so an unread
/// download holds READ_AHEAD chunks here, not one more. The buffer is
/// allocated here, on the runtime's threads, where it is also freed once
/// sent: a buffer allocated on a blocking-pool thread and freed elsewhere
/// stays cached by the allocator for the thread that made it, and with
/// many downloads at once (many pool threads) that cost about 2 MiB per
/// download in measurements (docs/performance.md, "Many transfers at once").
async fn send_chunks(file: File, length: u64, running: Running, tx: mpsc::Sender<Result<Bytes>>) {
    let mut file = Some(file);
    let mut remaining = length;
    while remaining > 0 {
        let Ok(slot) = tx.reserve().await else { return };
        let Some(owned) = file.take() else { return };
        let want = remaining.min(running.chunk() as u64);
        let buf = Vec::with_capacity(want as usize);
        let read = blocking(move || {
            let mut buf = buf;
            (&owned).take(want).read_to_end(&mut buf).map_err(|e| Error::io("reading a file", e))?;
            if (buf.len() as u64) < want {
                // Only something outside ferry truncates files in place.
                return Err(Error::io("reading a file", std::io::Error::other("file shrank while being read")));
            }
            Ok((owned, buf))
        })
        .await;
        let data = match read {
            Ok((owned, buf)) => {
                file = Some(owned);
                Bytes::from(buf)
            }
            Err(e) => {
                slot.send(Err(e));
                return;
            }
        };
        remaining -= data.len() as u64;
        slot.send(Ok(data));
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;
    use crate::{LocalStore, Store};

    /// One download reads whole chunks; with many at once, each reads
    /// smaller ones, so that together they hold about `READ_BUDGET`.
    #[tokio::test]
    async fn chunks_shrink_as_downloads_multiply() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("test", e))?;
        let chunk = 1024 * 1024;
        std::fs::write(dir.path().join("f"), vec![7u8; 4 * chunk]).map_err(|e| Error::io("test", e))?;
        let store = LocalStore::open(dir.path())?;
        let path = StorePath::parse("f")?;

        let mut alone = store.read(&path, ByteRange::ALL).await?;
        let first =
            alone.body.next().await.ok_or_else(|| Error::io("test", std::io::ErrorKind::UnexpectedEof.into()))??;
        assert_eq!(first.len(), chunk, "one download reads whole chunks");
        drop(alone);

        let mut many = Vec::new();
        for _ in 0..64 {
            many.push(store.read(&path, ByteRange::ALL).await?);
        }
        let mut last = many.pop().ok_or_else(|| Error::io("test", std::io::ErrorKind::NotFound.into()))?;
        // The first chunk of each may have been read before the others
        // opened; later ones are sized for 64 downloads at once.
        let _ = last.body.next().await;
        let second =
            last.body.next().await.ok_or_else(|| Error::io("test", std::io::ErrorKind::UnexpectedEof.into()))??;
        assert_eq!(second.len(), READ_BUDGET / 64, "with 64 downloads, each reads 1/64 of the budget");
        Ok(())
    }
}
