//! `UploadFiles` (bidirectional) and `DownloadFiles` (server streaming):
//! many files per stream, so that a tree of small files does not cost a
//! round trip (and a commit of its own) per file.
//!
//! Upload: files of a known size up to [`BATCH_FILE_MAX`] are gathered in
//! memory into a batch, which is committed through
//! [`Store::put_files`](ferry_store::Store::put_files) (shared fsyncs) when
//! it is full, when a large file comes, at the end of the stream, or as soon
//! as the client has nothing more in flight: a group commit, so a lone file
//! is not kept waiting. One batch commits while the next one fills. Larger
//! files stream into an upload of their own, in constant memory. Answers go
//! out in the order the files came, each once its file is durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_proto::v1::download_files_response::Kind as Part;
use ferry_proto::v1::upload_files_response::Result as Outcome;
use ferry_proto::v1::upload_request::Kind;
use ferry_proto::v1::{
    Chunk, DownloadFilesRequest, DownloadFilesResponse, FileError, UploadFilesResponse, UploadHeader, UploadRequest,
};
use ferry_store::{ByteRange, Metadata, NewFile, Sha256, StorePath, Upload, WriteOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::upload::{next_message, write_options};
use super::{Call, ResponseStream, parse_path};
use crate::auth::Permission;
use crate::convert;
use crate::limits::{SPACE_CHECK_STEP, UploadTicket};
use crate::metrics::Direction;
use crate::status::ServiceError;

/// Files up to this size (declared in their header) are batched.
pub const BATCH_FILE_MAX: u64 = 1024 * 1024;
/// A batch is committed once it holds this many bytes...
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// ... or this many files.
const BATCH_FILES: usize = 256;
/// Paths per `DownloadFiles` call.
pub const MAX_DOWNLOAD_PATHS: usize = 4096;
/// Answers queued for a client that reads them slowly.
const REPLY_QUEUE: usize = 64;

type Replies = mpsc::Sender<Result<UploadFilesResponse, Status>>;

pub(super) async fn upload_files(
    call: Call,
    stream: Streaming<UploadRequest>,
) -> Result<ResponseStream<UploadFilesResponse>, ServiceError> {
    // The whole stream is one upload slot; its files are booked on the ticket.
    let ticket = call.ctx.admission.admit_upload(None, None).await?;
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let span = tracing::Span::current();
    let request_id = call.id;
    let task = async move {
        let mut receiver = Receiver {
            call,
            ticket: Arc::new(Mutex::new(ticket)),
            replies: tx.clone(),
            next_index: 0,
            current: None,
            batch: Vec::new(),
            batch_bytes: 0,
            committing: None,
            unchecked_bytes: SPACE_CHECK_STEP,
        };
        let outcome = receiver.run(stream).await;
        // Answers of files already received go out before a stream error.
        receiver.settle().await;
        match outcome {
            Ok(()) => tracing::info!(files = receiver.next_index, "files uploaded"),
            Err(e) => {
                let _ = tx.send(Err(e.into_status(request_id))).await;
            }
        }
    };
    tokio::spawn(task.instrument(span));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// The file being received.
enum Current {
    /// Gathered in memory, for a batch.
    Small { index: u64, path: StorePath, options: WriteOptions, data: BytesMut, finished: Option<Option<Sha256>> },
    /// Streamed into an upload of its own.
    Large { index: u64, path: StorePath, upload: Box<dyn Upload>, finished: Option<Option<Sha256>> },
    /// Refused: its chunks are read and dropped, then it is answered with the error.
    Failed { index: u64, path: String, error: ServiceError },
}

/// A batched file waiting for its batch's commit.
struct Batched {
    index: u64,
    file: NewFile,
}

struct Receiver {
    call: Call,
    /// Shared with the batch commits, which settle their files' reservations.
    ticket: Arc<Mutex<UploadTicket>>,
    replies: Replies,
    next_index: u64,
    current: Option<Current>,
    batch: Vec<Batched>,
    batch_bytes: usize,
    /// The batch being committed; it answers its files when done.
    committing: Option<JoinHandle<()>>,
    /// Bytes admitted since free space was last checked: it is checked
    /// again every [`SPACE_CHECK_STEP`] (and at the first file).
    unchecked_bytes: u64,
}

impl Receiver {
    async fn run(&mut self, stream: Streaming<UploadRequest>) -> Result<(), ServiceError> {
        let idle = self.call.ctx.idle_timeout;
        let mut messages = stream.map(|message| message.map(|m| m.kind));
        loop {
            let message = match self.batch.is_empty() {
                true => next_message(&mut messages, idle).await?,
                // Group commit: once nothing more has arrived and the previous
                // batch is done, commit what is gathered.
                false => match tokio::time::timeout(Duration::ZERO, messages.next()).await {
                    Ok(None) => None,
                    Ok(Some(Err(status))) => return Err(ServiceError::Stream(status)),
                    Ok(Some(Ok(message))) => Some(message),
                    Err(_) => match &mut self.committing {
                        Some(committing) if !committing.is_finished() => tokio::select! {
                            message = next_message(&mut messages, idle) => message?,
                            _ = committing => {
                                self.committing = None;
                                continue;
                            }
                        },
                        _ => {
                            self.flush().await;
                            continue;
                        }
                    },
                },
            };
            match message {
                None => {
                    self.end_file().await?;
                    self.flush().await;
                    return Ok(());
                }
                Some(Some(Kind::Header(header))) => {
                    self.end_file().await?;
                    self.start_file(header).await?;
                }
                Some(Some(Kind::Chunk(chunk))) => self.chunk(chunk.data, chunk.crc32c).await?,
                Some(Some(Kind::Finish(finish))) => {
                    // Ended now, not at the next header: a client that sends
                    // one file and waits for its answer gets it.
                    self.finish(&finish.sha256)?;
                    self.end_file().await?;
                }
                Some(None) => {
                    return Err(ServiceError::protocol("an upload message carried no header, chunk or finish"));
                }
            }
        }
    }

    async fn start_file(&mut self, header: UploadHeader) -> Result<(), ServiceError> {
        if !header.upload_id.is_empty() || header.offset != 0 {
            return Err(ServiceError::protocol("UploadFiles headers cannot continue a resumable upload"));
        }
        let index = self.next_index;
        self.next_index += 1;
        self.current = Some(match self.admit(&header).await {
            Ok(current) => current,
            Err(error) => Current::Failed { index, path: header.path, error },
        });
        Ok(())
    }

    /// Everything that can refuse a file before its data.
    async fn admit(&mut self, header: &UploadHeader) -> Result<Current, ServiceError> {
        let index = self.next_index - 1;
        let path = parse_path(&header.path)?;
        self.call.who.check(Permission::Write, &path)?;
        let options = write_options(header, false)?;
        let declared = header.size.unwrap_or(0);
        self.lock_ticket().file_grows(declared, declared)?;
        if self.unchecked_bytes.saturating_add(declared) >= SPACE_CHECK_STEP {
            if let Err(e) = self.call.ctx.admission.check_free_space(declared).await {
                self.lock_ticket().file_done(declared);
                return Err(e);
            }
            self.unchecked_bytes = 0;
        }
        self.unchecked_bytes = self.unchecked_bytes.saturating_add(declared);
        match header.size {
            Some(size) if size <= BATCH_FILE_MAX => {
                let data = BytesMut::with_capacity(size as usize);
                Ok(Current::Small { index, path, options, data, finished: None })
            }
            _ => {
                // In order: the batch before this file is answered first.
                self.flush().await;
                self.settle().await;
                match self.call.ctx.store.create_upload(&path, options).await {
                    Ok(upload) => Ok(Current::Large { index, path, upload, finished: None }),
                    Err(e) => {
                        self.lock_ticket().file_done(declared);
                        Err(e.into())
                    }
                }
            }
        }
    }

    async fn chunk(&mut self, data: Bytes, crc: Option<u32>) -> Result<(), ServiceError> {
        let Some(current) = &mut self.current else {
            return Err(ServiceError::protocol("a chunk arrived before its file's header"));
        };
        self.call.who.pace(data.len()).await;
        self.call.ctx.metrics.count_bytes(Direction::Upload, data.len());
        let failure = match current {
            Current::Failed { .. } => return Ok(()),
            Current::Small { finished: Some(_), .. } | Current::Large { finished: Some(_), .. } => {
                return Err(ServiceError::protocol("data arrived after a file's finish message"));
            }
            _ if crc.is_some_and(|declared| crc32c::crc32c(&data) != declared) => {
                ServiceError::protocol("a chunk failed its CRC32C check")
            }
            Current::Small { options, data: gathered, .. } => {
                let received = (gathered.len() + data.len()) as u64;
                match options.size {
                    Some(declared) if received > declared => {
                        ferry_store::Error::SizeMismatch { declared, received }.into()
                    }
                    _ => {
                        gathered.extend_from_slice(&data);
                        return Ok(());
                    }
                }
            }
            Current::Large { upload, .. } => {
                let received = upload.received() + data.len() as u64;
                let declared = upload.declared_size().unwrap_or(0);
                let grown = self
                    .ticket
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .file_grows(received, received.saturating_sub(declared.max(upload.received())));
                match grown {
                    Ok(()) => match upload.write(data).await {
                        Ok(()) => return Ok(()),
                        Err(e) => e.into(),
                    },
                    Err(e) => e,
                }
            }
        };
        self.fail_current(failure);
        Ok(())
    }

    fn finish(&mut self, hex: &str) -> Result<(), ServiceError> {
        let digest = convert::optional_digest("finish.sha256", hex)?;
        match &mut self.current {
            None => Err(ServiceError::protocol("finish arrived before its file's header")),
            Some(Current::Small { finished: Some(_), .. } | Current::Large { finished: Some(_), .. }) => {
                Err(ServiceError::protocol("a second finish arrived for one file"))
            }
            Some(Current::Small { finished, .. } | Current::Large { finished, .. }) => {
                *finished = Some(digest);
                Ok(())
            }
            Some(Current::Failed { .. }) => Ok(()),
        }
    }

    /// Ends the current file (at its finish, the next header or the end of
    /// the stream): into the batch, committed, or answered with its error.
    async fn end_file(&mut self) -> Result<(), ServiceError> {
        let Some(current) = self.current.take() else { return Ok(()) };
        match current {
            Current::Small { index, path, mut options, data, finished } => {
                if let Err(e) = agree(&mut options, finished, data.len() as u64) {
                    return self.answer_error(index, path.as_str(), e, options.size.unwrap_or(0)).await;
                }
                self.batch_bytes += data.len();
                self.batch.push(Batched { index, file: NewFile { path, options, data: data.freeze() } });
                if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_FILES {
                    self.flush().await;
                }
                Ok(())
            }
            Current::Large { index, path, upload, finished } => {
                let booked = upload.declared_size().unwrap_or(0).max(upload.received());
                // With a declared size, the commit checks the length.
                let complete = finished.is_some() || upload.declared_size().is_some();
                if !complete {
                    let e = ServiceError::protocol("a file without a declared size must end with a finish message");
                    return self.answer_error(index, path.as_str(), e, booked).await;
                }
                let replaced = self.call.ctx.admission.size_before_change(&path).await;
                match upload.commit(finished.flatten()).await {
                    Ok(meta) => {
                        self.call.ctx.admission.committed(meta.size, replaced);
                        self.lock_ticket().file_done(booked);
                        tracing::info!(path = %meta.path, bytes = meta.size, "upload committed");
                        self.reply(index, Ok(&meta)).await;
                        Ok(())
                    }
                    Err(e) => self.answer_error(index, path.as_str(), e.into(), booked).await,
                }
            }
            Current::Failed { index, path, error } => self.answer_error(index, &path, error, 0).await,
        }
    }

    fn fail_current(&mut self, error: ServiceError) {
        let failed = match self.current.take() {
            Some(Current::Small { index, path, options, .. }) => {
                self.lock_ticket().file_done(options.size.unwrap_or(0));
                Current::Failed { index, path: path.to_string(), error }
            }
            Some(Current::Large { index, path, upload, .. }) => {
                let booked = upload.declared_size().unwrap_or(0).max(upload.received());
                self.lock_ticket().file_done(booked);
                // Dropped unfinished: the store discards it.
                drop(upload);
                Current::Failed { index, path: path.to_string(), error }
            }
            other => return self.current = other,
        };
        self.current = Some(failed);
    }

    /// Starts committing the gathered batch, once the previous one is done:
    /// one batch commits while the next fills, never more.
    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.settle().await;
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let (ctx, ticket, replies, request_id) =
            (self.call.ctx.clone(), self.ticket.clone(), self.replies.clone(), self.call.id);
        let commit = async move {
            // What each path held before this batch, for the quota; a path
            // sent twice replaces what the batch itself stored first.
            let mut sizes: HashMap<StorePath, u64> = HashMap::new();
            for file in &batch {
                if !sizes.contains_key(&file.file.path) {
                    let before = ctx.admission.size_before_change(&file.file.path).await;
                    sizes.insert(file.file.path.clone(), before);
                }
            }
            let (indexes, files): (Vec<u64>, Vec<NewFile>) = batch.into_iter().map(|b| (b.index, b.file)).unzip();
            let booked: Vec<(StorePath, u64)> =
                files.iter().map(|f| (f.path.clone(), f.options.size.unwrap_or(0))).collect();
            let count = files.len();
            let results = ctx.store.put_files(files).await;
            tracing::debug!(files = count, "committed a batch");
            for ((index, result), (path, size)) in indexes.into_iter().zip(results).zip(booked) {
                ticket.lock().unwrap_or_else(std::sync::PoisonError::into_inner).file_done(size);
                let reply = match result {
                    Ok(meta) => {
                        let replaced = sizes.insert(path, meta.size).unwrap_or(0);
                        ctx.admission.committed(meta.size, replaced);
                        file_reply(index, Ok(&meta), request_id)
                    }
                    Err(e) => file_reply(index, Err((path.as_str(), e.into())), request_id),
                };
                // A client gone away misses its answers; the files are stored all the same.
                let _ = replies.send(Ok(reply)).await;
            }
        };
        self.committing = Some(tokio::spawn(commit.in_current_span()));
    }

    /// Waits until every batch handed over has been committed and answered.
    async fn settle(&mut self) {
        if let Some(committing) = self.committing.take() {
            let _ = committing.await;
        }
    }

    async fn answer_error(
        &mut self,
        index: u64,
        path: &str,
        error: ServiceError,
        booked: u64,
    ) -> Result<(), ServiceError> {
        self.lock_ticket().file_done(booked);
        // Answers stay in file order: the batches before this file go first.
        self.flush().await;
        self.settle().await;
        tracing::info!(path, %error, "a file of a multi-file upload was refused");
        let reply = file_reply(index, Err((path, error)), self.call.id);
        let _ = self.replies.send(Ok(reply)).await;
        Ok(())
    }

    async fn reply(&mut self, index: u64, meta: Result<&Metadata, (&str, ServiceError)>) {
        let reply = file_reply(index, meta, self.call.id);
        let _ = self.replies.send(Ok(reply)).await;
    }

    fn lock_ticket(&self) -> std::sync::MutexGuard<'_, UploadTicket> {
        self.ticket.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reconciles the digest of a finish message with the header's, and checks
/// the size now that the file is whole.
fn agree(options: &mut WriteOptions, finished: Option<Option<Sha256>>, received: u64) -> Result<(), ServiceError> {
    if let Some(Some(digest)) = finished {
        match options.sha256 {
            Some(declared) if declared != digest => {
                return Err(ServiceError::protocol("finish.sha256 disagrees with the header's sha256"));
            }
            _ => options.sha256 = Some(digest),
        }
    }
    match options.size {
        Some(declared) if declared != received => Err(ferry_store::Error::SizeMismatch { declared, received }.into()),
        _ => Ok(()),
    }
}

fn file_reply(index: u64, outcome: Result<&Metadata, (&str, ServiceError)>, request_id: u64) -> UploadFilesResponse {
    let result = match outcome {
        Ok(meta) => Outcome::File(convert::file_info(meta)),
        Err((path, error)) => Outcome::Error(file_error(path, error, request_id)),
    };
    UploadFilesResponse { index, result: Some(result) }
}

/// A per-file error: the status the file would have failed with alone.
fn file_error(path: &str, error: ServiceError, request_id: u64) -> FileError {
    let status = error.into_status(request_id);
    FileError { path: path.to_owned(), code: status.code() as i32, message: status.message().to_owned() }
}

pub(super) async fn download_files(
    call: Call,
    request: DownloadFilesRequest,
) -> Result<ResponseStream<DownloadFilesResponse>, ServiceError> {
    if request.paths.len() > MAX_DOWNLOAD_PATHS {
        return Err(ServiceError::protocol(format!(
            "at most {MAX_DOWNLOAD_PATHS} paths per DownloadFiles call ({} sent)",
            request.paths.len()
        )));
    }
    let ticket = call.ctx.admission.admit_download()?;
    // Two messages ahead: memory is bounded by the chunks in flight, as for Download.
    let (tx, rx) = mpsc::channel(2);
    let task = async move {
        let _slot = ticket;
        let mut sent = 0u64;
        for raw in request.paths {
            match send_file(&call, &raw, &tx).await {
                Ok(true) => sent += 1,
                Ok(false) => return,
                Err(error) => {
                    let part = Part::Error(file_error(&raw, error, call.id));
                    if tx.send(Ok(DownloadFilesResponse { kind: Some(part) })).await.is_err() {
                        return;
                    }
                }
            }
        }
        tracing::info!(files = sent, "files downloaded");
    };
    tokio::spawn(task.in_current_span());
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Sends one file's info and chunks; `Ok(false)` when the client is gone.
/// An error before the info is that file's error; an error while its chunks
/// flow is too, and tells the client to drop what it got of the file.
async fn send_file(
    call: &Call,
    raw: &str,
    tx: &mpsc::Sender<Result<DownloadFilesResponse, Status>>,
) -> Result<bool, ServiceError> {
    let path = parse_path(raw)?;
    call.who.check(Permission::Read, &path)?;
    let download = call.ctx.store.read(&path, ByteRange::ALL).await?;
    let info = Part::Info(convert::file_info(&download.meta));
    if tx.send(Ok(DownloadFilesResponse { kind: Some(info) })).await.is_err() {
        return Ok(false);
    }
    let mut body = download.body;
    while let Some(data) = body.next().await {
        let data = data?;
        call.who.pace(data.len()).await;
        call.ctx.metrics.count_bytes(Direction::Download, data.len());
        let chunk = Part::Chunk(Chunk { data, crc32c: None });
        if tx.send(Ok(DownloadFilesResponse { kind: Some(chunk) })).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}
