//! Many whole, small files at once ([`Store::put_files`](crate::Store::put_files)).
//!
//! Each file is verified, made durable and published atomically, exactly as
//! an upload is; the batch shares what costs most with small files:
//! - the files are written and fsynced by several threads at once, so that
//!   the filesystem folds their journal commits into a few (ext4 commits
//!   concurrent fsyncs together) instead of paying one commit per file;
//! - then all are renamed into place, and each parent directory is fsynced
//!   once for the whole batch rather than once per file.
//!
//! Staged files live in one directory under `.ferry/uploads/` (without a
//! journal, so start-up recovery removes whatever a crash leaves there).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs;
use sha2::Digest as _;

use super::Inner;
use super::resolve;
use super::session::SessionDir;
use super::upload::{finish_file, place};
use crate::{EntryKind, Error, Metadata, NewFile, Result, Sha256, UploadId};

/// Threads writing and fsyncing one batch at once. Beyond about 8, more
/// concurrent fsyncs no longer shorten a batch on this machine's ext4.
const SYNC_THREADS: usize = 8;

/// A file written and synced under its staging name, ready to be placed.
struct Staged {
    index: usize,
    file: NewFile,
    staged: PathBuf,
    st: fs::Stat,
    sha256: Sha256,
}

pub(super) async fn put_files(inner: Arc<Inner>, files: Vec<NewFile>) -> Vec<Result<Metadata>> {
    let count = files.len();
    if count == 0 {
        return Vec::new();
    }
    let staging = match UploadId::random() {
        Ok(id) => SessionDir::new(&inner.uploads_dir, &id),
        Err(e) => return fail_all(count, &e),
    };
    if let Err(e) = std::fs::create_dir(&staging.dir) {
        return fail_all(count, &Error::io("creating a staging directory", e));
    }

    let mut results: Vec<Option<Result<Metadata>>> = (0..count).map(|_| None).collect();
    let mut groups: Vec<Vec<(usize, NewFile)>> = (0..SYNC_THREADS.min(count)).map(|_| Vec::new()).collect();
    let group_count = groups.len();
    for (index, file) in files.into_iter().enumerate() {
        groups[index % group_count].push((index, file));
    }
    let writers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let dir = staging.dir.clone();
            tokio::task::spawn_blocking(move || {
                group
                    .into_iter()
                    .map(|(index, file)| {
                        let staged = dir.join(index.to_string());
                        (index, stage(file, staged))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut staged = Vec::with_capacity(count);
    for writer in writers {
        match writer.await {
            Ok(group) => {
                for (index, outcome) in group {
                    match outcome {
                        Ok(file) => staged.push(Staged { index, ..file }),
                        Err(e) => results[index] = Some(Err(e)),
                    }
                }
            }
            // A panicked writer: its files get no answer here, and are failed below.
            Err(e) => tracing::error!(error = %e, "a batch writer failed"),
        }
    }
    staged.sort_by_key(|file| file.index);

    let placing = tokio::task::spawn_blocking(move || {
        let placed = place_all(&inner, staged);
        if let Err(e) = staging.remove() {
            tracing::warn!(error = %e, "could not remove a batch's staging directory");
        }
        placed
    });
    match placing.await {
        Ok(placed) => {
            for (index, outcome) in placed {
                results[index] = Some(outcome);
            }
        }
        Err(e) => tracing::error!(error = %e, "placing a batch failed"),
    }
    results
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or_else(|| Err(Error::io("storing a batch", std::io::Error::other("batch task failed"))))
        })
        .collect()
}

/// Verifies one file, writes it under `staged` with its metadata, and syncs it.
fn stage(file: NewFile, staged: PathBuf) -> Result<Staged> {
    let received = file.data.len() as u64;
    if let Some(declared) = file.options.size
        && declared != received
    {
        return Err(Error::SizeMismatch { declared, received });
    }
    let sha256 = Sha256::from(sha2::Sha256::new().chain_update(&file.data));
    if let Some(expected) = file.options.sha256
        && expected != sha256
    {
        return Err(Error::DigestMismatch { expected, actual: sha256 });
    }
    let io = |e| Error::io("writing a batched file", e);
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staged).map_err(io)?;
    out.write_all(&file.data).map_err(io)?;
    let st = finish_file(&out, &file.options, &sha256)?;
    out.sync_all().map_err(|e| Error::io("syncing a batched file", e))?;
    Ok(Staged { index: 0, file, staged, st, sha256 })
}

/// Renames every staged file into place, then fsyncs each parent directory
/// once. A file whose directory cannot be synced is reported failed.
fn place_all(inner: &Inner, staged: Vec<Staged>) -> Vec<(usize, Result<Metadata>)> {
    let mut parents: BTreeMap<Vec<String>, Result<OwnedFd>> = BTreeMap::new();
    let mut placed: Vec<(usize, Vec<String>, Result<Metadata>)> = Vec::with_capacity(staged.len());
    for Staged { index, file, staged, st, sha256 } in staged {
        let path = file.path;
        let (segments, name) = path.split_last();
        let key: Vec<String> = segments.iter().map(|s| (*s).to_owned()).collect();
        let parent = parents
            .entry(key.clone())
            .or_insert_with(|| resolve::open_dir_creating(inner.root.as_fd(), &segments, &path));
        let outcome = match parent {
            // As an upload would: never replace a link, a directory or a device.
            Ok(parent) => refuse_non_file(parent, name, &path)
                .and_then(|()| place(parent, &staged, name, &path, file.options.mode)),
            Err(e) => Err(e.clone_for(&path)),
        };
        let outcome = outcome.map(|()| resolve::metadata(path.clone(), EntryKind::File, &st, Some(sha256)));
        placed.push((index, key, outcome));
    }
    let synced: BTreeMap<Vec<String>, Result<()>> = parents
        .into_iter()
        .filter_map(|(key, parent)| {
            let parent = parent.ok()?;
            let synced = fs::fsync(&parent).map_err(|e| Error::io("syncing a directory after a batch", e.into()));
            Some((key, synced))
        })
        .collect();
    placed
        .into_iter()
        .map(|(index, key, outcome)| {
            let outcome = match (outcome, synced.get(&key)) {
                (Ok(meta), Some(Err(e))) => Err(e.clone_for(&meta.path)),
                (outcome, _) => outcome,
            };
            (index, outcome)
        })
        .collect()
}

/// Whatever is at `parent/name` must be a regular file, or nothing.
fn refuse_non_file(parent: &OwnedFd, name: &str, path: &crate::StorePath) -> Result<()> {
    match resolve::stat_entry(parent.as_fd(), name, path) {
        Err(Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
        Ok(st) => match resolve::entry_kind(&st, path)? {
            EntryKind::Directory => Err(Error::IsDirectory { path: path.as_str().to_owned() }),
            EntryKind::File => Ok(()),
        },
    }
}

fn fail_all(count: usize, error: &Error) -> Vec<Result<Metadata>> {
    tracing::error!(%error, "could not stage a batch of files");
    (0..count).map(|_| Err(Error::io("staging a batch", std::io::Error::other(error.to_string())))).collect()
}
