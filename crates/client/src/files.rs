//! Many files per stream: [`Client::upload_files`] (`UploadFiles`) and
//! [`Client::download_files`] (`DownloadFiles`), for trees of small files,
//! where a call per file would cost a round trip per file.
//!
//! Both verify every file with SHA-256 as the single-file calls do. On the
//! download side the files are written to temporary names beside their
//! targets and, in batches, fsynced by several threads at once, renamed
//! into place, and each directory fsynced once: the same group commit the
//! server does, so durability does not cost a disk flush per file.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_proto::v1::download_files_response::Kind as Part;
use ferry_proto::v1::upload_files_response::Result as Outcome;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{Chunk, DownloadFilesRequest, FileError, UploadFinish, UploadHeader, UploadRequest, WriteMode};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Client, Error, RemoteFile, Result};

/// Messages queued ahead of the network.
const SEND_QUEUE: usize = 8;
/// Paths per `DownloadFiles` call (the server's limit).
pub const MAX_DOWNLOAD_PATHS: usize = 4096;
/// Downloaded files are made durable and renamed in batches of this many...
const LOCAL_BATCH_FILES: usize = 128;
/// ... or of this many bytes.
const LOCAL_BATCH_BYTES: u64 = 16 * 1024 * 1024;
/// Threads fsyncing one local batch.
const SYNC_THREADS: usize = 8;

/// A local file to upload with [`Client::upload_files`].
#[derive(Debug, Clone)]
pub struct LocalFile {
    pub local: PathBuf,
    pub remote: String,
    /// Fail that file with ALREADY_EXISTS rather than replace a remote file.
    pub create_only: bool,
}

/// Where [`Client::download_files`] puts one remote file. The local file's
/// directory must exist.
#[derive(Debug, Clone)]
pub struct DownloadTarget {
    pub remote: String,
    pub local: PathBuf,
}

/// What the sender knows of each file: sent (with the digest of what was
/// read), or failed locally before its header went out.
#[derive(Debug)]
enum SendState {
    Pending,
    Sent(String),
    Failed(Error),
}

impl Client {
    /// Uploads `files` in one `UploadFiles` stream, each with its size, mtime
    /// and permission bits, and returns one result per file, in order. A
    /// file that fails (locally, or refused by the server) does not stop the
    /// others. If the stream itself breaks, the files not yet answered fail
    /// with its error; those answered are stored.
    pub async fn upload_files(&self, files: Vec<LocalFile>) -> Result<Vec<Result<RemoteFile>>> {
        let count = files.len();
        let sent: Arc<Mutex<Vec<SendState>>> = Arc::new(Mutex::new((0..count).map(|_| SendState::Pending).collect()));
        // The server numbers the headers it got; this maps them to our files.
        let order: Arc<Mutex<Vec<usize>>> = Arc::default();
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let chunk_size = self.chunk_size;
        let (producer_sent, producer_order) = (sent.clone(), order.clone());
        let producer =
            tokio::task::spawn_blocking(move || send_files(files, chunk_size, &tx, &producer_sent, &producer_order));

        let mut results: Vec<Option<Result<RemoteFile>>> = (0..count).map(|_| None).collect();
        let outcome: Result<()> = async {
            let mut replies = self.rpc.clone().upload_files(ReceiverStream::new(rx)).await?.into_inner();
            while let Some(reply) = replies.message().await? {
                let index = usize::try_from(reply.index).unwrap_or(usize::MAX);
                let file = lock(&order).get(index).copied().ok_or_else(|| {
                    Error::Protocol(format!("the server answered file #{index}, which was never sent"))
                })?;
                let result = match reply.result {
                    Some(Outcome::File(info)) => {
                        let info = RemoteFile::from(info);
                        match &lock(&sent)[file] {
                            SendState::Sent(digest) if info.sha256.as_deref() == Some(digest.as_str()) => Ok(info),
                            SendState::Sent(digest) => Err(Error::DigestMismatch {
                                path: info.path.clone(),
                                expected: digest.clone(),
                                actual: info.sha256.clone().unwrap_or_default(),
                            }),
                            _ => Err(Error::Protocol(format!("{}: answered before it was sent", info.path))),
                        }
                    }
                    Some(Outcome::Error(error)) => Err(file_error(error)),
                    None => Err(Error::Protocol("an UploadFiles answer without a result".into())),
                };
                results[file] = Some(result);
            }
            Ok(())
        }
        .await;
        // The producer ends once the request stream is dropped or done.
        let _ = producer.await;
        let mut sent = std::mem::take(&mut *lock(&sent));
        Ok(results
            .into_iter()
            .zip(sent.iter_mut())
            .map(|(result, sent)| match (result, std::mem::replace(sent, SendState::Pending)) {
                (_, SendState::Failed(local)) => Err(local),
                (Some(result), _) => result,
                (None, _) => Err(match &outcome {
                    Err(Error::Status(status)) => Error::Status(status.clone()),
                    Err(other) => Error::Protocol(format!("the stream failed: {other}")),
                    Ok(()) => Error::Protocol("the server did not answer for this file".into()),
                }),
            })
            .collect())
    }

    /// Downloads whole files in `DownloadFiles` streams (up to
    /// [`MAX_DOWNLOAD_PATHS`] per call), each verified, given the server's
    /// mtime and permission bits, made durable and then renamed to its
    /// target; existing targets are replaced only if `overwrite`. Returns
    /// one result per target, in order.
    pub async fn download_files(
        &self,
        targets: Vec<DownloadTarget>,
        overwrite: bool,
    ) -> Result<Vec<Result<RemoteFile>>> {
        let mut results = Vec::with_capacity(targets.len());
        for part in targets.chunks(MAX_DOWNLOAD_PATHS) {
            results.extend(self.download_some(part.to_vec(), overwrite).await?);
        }
        Ok(results)
    }

    async fn download_some(&self, targets: Vec<DownloadTarget>, overwrite: bool) -> Result<Vec<Result<RemoteFile>>> {
        let paths = targets.iter().map(|t| t.remote.clone()).collect();
        let mut stream = self.rpc.clone().download_files(DownloadFilesRequest { paths }).await?.into_inner();
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let count = targets.len();
        let writer = tokio::task::spawn_blocking(move || write_files(targets, rx, overwrite));
        let streamed: Result<()> = async {
            while let Some(message) = stream.message().await? {
                let part = message.kind.ok_or_else(|| Error::Protocol("an empty DownloadFiles message".into()))?;
                if tx.send(part).await.is_err() {
                    break; // the writer stopped: its error is below
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let mut results = writer.await.map_err(|e| Error::Protocol(format!("write task failed: {e}")))?;
        if let Err(e) = streamed {
            for result in results.iter_mut().filter(|r| r.is_none()) {
                *result = Some(Err(match &e {
                    Error::Status(status) => Error::Status(status.clone()),
                    other => Error::Protocol(format!("the stream failed: {other}")),
                }));
            }
        }
        debug_assert_eq!(results.len(), count);
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Protocol("the server did not send this file".into()))))
            .collect())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn file_error(error: FileError) -> Error {
    Error::Status(tonic::Status::new(tonic::Code::from_i32(error.code), error.message))
}

/// Reads the files one after another and sends each as header, chunks and
/// finish (on the blocking pool: it is all file reading).
fn send_files(
    files: Vec<LocalFile>,
    chunk_size: usize,
    tx: &mpsc::Sender<UploadRequest>,
    sent: &Mutex<Vec<SendState>>,
    order: &Mutex<Vec<usize>>,
) {
    for (index, file) in files.into_iter().enumerate() {
        let on_header = || lock(order).push(index);
        // Recorded before the finish goes out: the answer may come at once.
        let on_digest = |digest: String| lock(sent)[index] = SendState::Sent(digest);
        match send_file(&file, chunk_size, tx, on_header, on_digest) {
            Ok(true) => {}
            Ok(false) => return, // the stream is closed: the call says why
            Err(e) => lock(sent)[index] = SendState::Failed(e),
        }
    }
}

/// Sends one file; `Ok(false)` when the stream has closed. `on_header` runs
/// as the header goes out, `on_digest` just before the finish.
fn send_file(
    file: &LocalFile,
    chunk_size: usize,
    tx: &mpsc::Sender<UploadRequest>,
    on_header: impl FnOnce(),
    on_digest: impl FnOnce(String),
) -> Result<bool> {
    let local = &file.local;
    let mut source =
        std::fs::File::open(local).map_err(|e| Error::io(format!("cannot open {}", local.display()), e))?;
    let meta = source.metadata().map_err(|e| Error::io(format!("cannot stat {}", local.display()), e))?;
    if !meta.is_file() {
        return Err(Error::io(
            format!("cannot upload {}", local.display()),
            std::io::Error::other("not a regular file"),
        ));
    }
    let size = meta.len();
    let permissions = {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o777
    };
    let header = UploadHeader {
        path: file.remote.clone(),
        size: Some(size),
        mode: if file.create_only { WriteMode::CreateOnly } else { WriteMode::Overwrite } as i32,
        mtime: meta.modified().ok().map(prost_types::Timestamp::from),
        permissions: Some(permissions),
        ..UploadHeader::default()
    };
    on_header();
    if tx.blocking_send(UploadRequest { kind: Some(Kind::Header(header)) }).is_err() {
        return Ok(false);
    }
    let mut hasher = sha2::Sha256::new();
    let mut left = size;
    while left > 0 {
        let mut buf = vec![0u8; chunk_size.min(usize::try_from(left).unwrap_or(usize::MAX))];
        if let Err(e) = source.read_exact(&mut buf) {
            // Shrunk while being read: the server refuses the short file, and
            // this error says why.
            let _ = tx.blocking_send(UploadRequest { kind: Some(Kind::Finish(UploadFinish::default())) });
            return Err(Error::io(format!("cannot read {} (did it change?)", local.display()), e));
        }
        left -= buf.len() as u64;
        hasher.update(&buf);
        let crc32c = Some(crc32c::crc32c(&buf));
        let chunk = Chunk { data: Bytes::from(buf), crc32c };
        if tx.blocking_send(UploadRequest { kind: Some(Kind::Chunk(chunk)) }).is_err() {
            return Ok(false);
        }
    }
    let digest = hex::encode(hasher.finalize());
    on_digest(digest.clone());
    let finish = UploadFinish { sha256: digest };
    Ok(tx.blocking_send(UploadRequest { kind: Some(Kind::Finish(finish)) }).is_ok())
}

/// A downloaded file, verified, waiting for its batch to be made durable.
struct Written {
    index: usize,
    file: std::fs::File,
    temp: tempfile::TempPath,
    target: PathBuf,
    info: RemoteFile,
}

/// The file being received.
struct Receiving {
    index: usize,
    info: RemoteFile,
    temp: tempfile::NamedTempFile,
    hasher: sha2::Sha256,
    written: u64,
}

/// Writes the stream's files to their targets (a blocking task): one result
/// slot per target, `None` for files the stream never got to.
fn write_files(
    targets: Vec<DownloadTarget>,
    mut parts: mpsc::Receiver<Part>,
    overwrite: bool,
) -> Vec<Option<Result<RemoteFile>>> {
    let mut results: Vec<Option<Result<RemoteFile>>> = (0..targets.len()).map(|_| None).collect();
    let mut next = 0usize;
    let mut current: Option<Receiving> = None;
    let mut batch: Vec<Written> = Vec::new();
    let mut batch_bytes = 0u64;
    // Ends the current file: verified, into the batch; or its error.
    let end_file = |current: Option<Receiving>,
                    results: &mut Vec<Option<Result<RemoteFile>>>,
                    batch: &mut Vec<Written>,
                    batch_bytes: &mut u64| {
        let Some(receiving) = current else { return };
        let index = receiving.index;
        match finish_receiving(receiving, &targets[index].local) {
            Ok(written) => {
                *batch_bytes += written.info.size;
                batch.push(written);
            }
            Err(e) => results[index] = Some(Err(e)),
        }
        if batch.len() >= LOCAL_BATCH_FILES || *batch_bytes >= LOCAL_BATCH_BYTES {
            commit_local(std::mem::take(batch), overwrite, results);
            *batch_bytes = 0;
        }
    };
    while let Some(part) = parts.blocking_recv() {
        match part {
            Part::Info(info) => {
                end_file(current.take(), &mut results, &mut batch, &mut batch_bytes);
                let Some(target) = targets.get(next) else {
                    break; // more files than asked for: the stream is wrong, stop here
                };
                let index = next;
                next += 1;
                let info = RemoteFile::from(info);
                if info.path != target.remote {
                    results[index] = Some(Err(Error::Protocol(format!(
                        "asked for {} but the server sent {}",
                        target.remote, info.path
                    ))));
                    continue;
                }
                match temp_beside(&target.local) {
                    Ok(temp) => {
                        current = Some(Receiving { index, info, temp, hasher: sha2::Sha256::new(), written: 0 })
                    }
                    Err(e) => results[index] = Some(Err(e)),
                }
            }
            Part::Chunk(chunk) => {
                let Some(receiving) = &mut current else { continue };
                receiving.written += chunk.data.len() as u64;
                receiving.hasher.update(&chunk.data);
                if let Err(e) = receiving.temp.write_all(&chunk.data) {
                    let index = receiving.index;
                    let context = format!("cannot write {}", targets[index].local.display());
                    results[index] = Some(Err(Error::io(context, e)));
                    current = None;
                }
            }
            Part::Error(error) => {
                // An error for the file being sent (it is dropped) or for the next one.
                match current.take() {
                    Some(receiving) if receiving.info.path == error.path => {
                        results[receiving.index] = Some(Err(file_error(error)));
                    }
                    other => {
                        end_file(other, &mut results, &mut batch, &mut batch_bytes);
                        if let Some(slot) = results.get_mut(next) {
                            *slot = Some(Err(file_error(error)));
                        }
                        next += 1;
                    }
                }
            }
        }
    }
    // A stream cut mid-file leaves that file unanswered (`None`): the caller
    // reports the stream's error for it. A file that ended is complete.
    if let Some(receiving) = current.take()
        && receiving.written == receiving.info.size
    {
        end_file(Some(receiving), &mut results, &mut batch, &mut batch_bytes);
    }
    commit_local(batch, overwrite, &mut results);
    results
}

pub(crate) fn temp_beside(local: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match local.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = local.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".ferry-part")
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("cannot create a file in {}", dir.display()), e))
}

/// Checks a received file's size and digest, and gives it its metadata.
fn finish_receiving(receiving: Receiving, target: &Path) -> Result<Written> {
    let Receiving { index, info, temp, hasher, written } = receiving;
    if written != info.size {
        return Err(Error::Protocol(format!("{}: received {written} of {} bytes", info.path, info.size)));
    }
    crate::download::verify(&info.path, &info, hasher)?;
    let (file, temp) = temp.into_parts();
    crate::download::apply_metadata(&file, &info, target)?;
    Ok(Written { index, file, temp, target: target.to_owned(), info })
}

/// Makes a batch durable (fsyncs on several threads at once), moves each
/// file to its name, then fsyncs each directory once.
fn commit_local(batch: Vec<Written>, overwrite: bool, results: &mut [Option<Result<RemoteFile>>]) {
    if batch.is_empty() {
        return;
    }
    let synced: Vec<std::io::Result<()>> = std::thread::scope(|scope| {
        let per_thread = batch.len().div_ceil(SYNC_THREADS);
        let workers: Vec<_> = batch
            .chunks(per_thread)
            .map(|files| scope.spawn(move || files.iter().map(|w| w.file.sync_all()).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                worker.join().unwrap_or_else(|_| vec![Err(std::io::Error::other("a sync thread panicked"))])
            })
            .collect()
    });
    let mut dirs = BTreeSet::new();
    for (written, synced) in batch.into_iter().zip(synced) {
        let Written { index, file, temp, target, info } = written;
        drop(file);
        let context = || format!("cannot finish writing {}", target.display());
        let placed = synced.map_err(|e| Error::io(context(), e)).and_then(|()| place(&temp, &target, overwrite));
        if placed.is_ok() {
            // Moved to its name: nothing left for the guard to remove.
            let _ = temp.keep();
            if let Some(dir) = target.parent() {
                dirs.insert(dir.to_owned());
            }
        }
        results[index] = Some(placed.map(|()| info));
    }
    for dir in dirs {
        if let Ok(dir) = std::fs::File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { &dir }) {
            let _ = dir.sync_all();
        }
    }
}

/// Moves a finished file to its name; without `overwrite`, atomically refuses
/// to replace anything (`RENAME_NOREPLACE`: one call, where a hard link and
/// an unlink would be two).
pub(crate) fn place(temp: &Path, target: &Path, overwrite: bool) -> Result<()> {
    let context = || format!("cannot finish writing {}", target.display());
    let flags = match overwrite {
        true => rustix::fs::RenameFlags::empty(),
        false => rustix::fs::RenameFlags::NOREPLACE,
    };
    match rustix::fs::renameat_with(rustix::fs::CWD, temp, rustix::fs::CWD, target, flags) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) if !overwrite => Err(Error::LocalExists(target.to_owned())),
        // A filesystem without RENAME_NOREPLACE: a hard link fails if the name exists.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if !overwrite => {
            std::fs::hard_link(temp, target).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::LocalExists(target.to_owned()),
                _ => Error::io(context(), e),
            })?;
            std::fs::remove_file(temp).map_err(|e| Error::io(context(), e))
        }
        Err(errno) => Err(Error::io(context(), errno.into())),
    }
}
