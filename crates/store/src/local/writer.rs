//! The writer task of a local upload: it takes chunks and checkpoints from
//! the upload, in order, writes the chunks on the blocking pool, and makes
//! checkpoints durable (fdatasync, then the journal) on another thread so
//! that writing goes on meanwhile. A checkpoint that comes while another is
//! still syncing waits for it (the newest replacing an older one), rather
//! than being dropped, so the committed offset keeps advancing on a slow disk.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::blocking;
use super::claims::SessionGuard;
use super::session::{Journal, SessionDir};
use crate::{Error, Result, crash};

/// What travels from the upload to its writer task, in order.
pub(super) enum Item {
    /// With its share of [`WRITE_BUDGET`](super::upload::WRITE_BUDGET), given back once written.
    Data(Bytes, OwnedSemaphorePermit),
    /// Make `offset` bytes durable (and journal `hash_state` with them). With
    /// a reply, the caller waits; without, it happens in the background.
    Checkpoint { offset: u64, hash_state: String, reply: Option<oneshot::Sender<Result<()>>> },
}

/// What the writer task hands back: the file, and the session's claim, so
/// that a commit keeps the session until it is done with it.
pub(super) struct Finished {
    pub file: File,
    pub claim: Option<SessionGuard>,
}

/// What the writer task waits for next.
enum Next {
    Item(Option<Item>),
    Synced(std::result::Result<Result<()>, tokio::task::JoinError>),
}

/// The writer task's state (the file itself moves in and out of blocking calls).
pub(super) struct Writer {
    pub session: SessionDir,
    /// Resumable uploads: the journal to update at each checkpoint.
    pub journal: Option<Journal>,
    pub committed: Arc<watch::Sender<u64>>,
    /// The session is ours while this is held: until the task ends, or until
    /// the commit that takes it over from the task is done.
    pub claim: Option<SessionGuard>,
}

impl Writer {
    /// Writes each item in order until the queue closes; returns the file.
    pub(super) async fn run(mut self, mut items: mpsc::Receiver<Item>, mut file: File) -> Result<Finished> {
        let mut in_flight: Option<JoinHandle<Result<()>>> = None;
        // A background checkpoint that came while another was syncing: it
        // starts as soon as that one is done (the newest replaces an older
        // one), so the committed offset keeps advancing on a slow disk.
        let mut deferred: Option<(u64, String)> = None;
        loop {
            let next = match (&mut in_flight, deferred.is_some()) {
                (Some(sync), true) => tokio::select! {
                    biased;
                    item = items.recv() => Next::Item(item),
                    synced = sync => Next::Synced(synced),
                },
                _ => Next::Item(items.recv().await),
            };
            let item = match next {
                Next::Synced(synced) => {
                    in_flight = None;
                    synced.map_err(|e| Error::io("syncing an upload", std::io::Error::other(e)))??;
                    if let Some((offset, hash_state)) = deferred.take() {
                        in_flight = Some(self.checkpoint(&file, offset, hash_state)?);
                    }
                    continue;
                }
                Next::Item(None) => break,
                Next::Item(Some(item)) => item,
            };
            match item {
                Item::Data(data, budget) => {
                    file = blocking(move || {
                        file.write_all(&data).map_err(|e| Error::io("writing an upload", e))?;
                        drop(budget);
                        Ok(file)
                    })
                    .await?;
                }
                Item::Checkpoint { offset, hash_state, reply: None }
                    if in_flight.as_ref().is_some_and(|t| !t.is_finished()) =>
                {
                    deferred = Some((offset, hash_state));
                }
                Item::Checkpoint { offset, hash_state, reply } => {
                    if let Some(previous) = in_flight.take() {
                        join(previous).await?;
                    }
                    // This one is newer than any deferred one.
                    deferred = None;
                    let sync = self.checkpoint(&file, offset, hash_state)?;
                    match reply {
                        None => in_flight = Some(sync),
                        Some(reply) => {
                            let result = join(sync).await;
                            let failed = result.is_err();
                            let _ = reply.send(result);
                            if failed {
                                return Err(Error::io("syncing an upload", std::io::Error::other("sync failed")));
                            }
                        }
                    }
                }
            }
        }
        if let Some(previous) = in_flight {
            join(previous).await?;
        }
        if let Some((offset, hash_state)) = deferred {
            join(self.checkpoint(&file, offset, hash_state)?).await?;
        }
        Ok(Finished { file, claim: self.claim.take() })
    }

    /// Starts making `offset` bytes durable: fdatasync, then the journal.
    fn checkpoint(&mut self, file: &File, offset: u64, hash_state: String) -> Result<JoinHandle<Result<()>>> {
        let handle = file.try_clone().map_err(|e| Error::io("syncing an upload", e))?;
        let session = self.session.clone();
        let journal = self.journal.as_mut().map(|journal| {
            journal.seq += 1;
            journal.committed = offset;
            journal.hash_state = hash_state;
            journal.clone()
        });
        let committed = self.committed.clone();
        Ok(tokio::task::spawn_blocking(move || {
            crash::point("checkpoint.before-data-sync");
            handle.sync_data().map_err(|e| Error::io("syncing an upload", e))?;
            crash::point("checkpoint.after-data-sync");
            if let Some(journal) = journal {
                session.write_journal(&journal)?;
                crash::point("checkpoint.after-journal");
            }
            committed.send_if_modified(|current| {
                let advanced = offset > *current;
                if advanced {
                    *current = offset;
                }
                advanced
            });
            Ok(())
        }))
    }
}

/// A failed sync fails the upload: after a failed fsync, Linux may have
/// dropped the dirty pages, so the data can no longer be trusted.
pub(super) async fn join(sync: JoinHandle<Result<()>>) -> Result<()> {
    sync.await.map_err(|e| Error::io("syncing an upload", std::io::Error::other(e)))?
}
