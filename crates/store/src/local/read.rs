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
    let chunk = inner.read_chunk;
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
    tokio::spawn(send_chunks(file, length, chunk, tx));
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
async fn send_chunks(file: File, length: u64, chunk: usize, tx: mpsc::Sender<Result<Bytes>>) {
    let mut file = Some(file);
    let mut remaining = length;
    while remaining > 0 {
        let Ok(slot) = tx.reserve().await else { return };
        let Some(owned) = file.take() else { return };
        let want = remaining.min(chunk as u64);
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
