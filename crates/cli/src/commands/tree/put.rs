//! `ferry put -r LOCAL_DIR REMOTE_PREFIX`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use ferry_client::{Client, Code, Error, LocalFile, RemoteFile, RetryPolicy, UploadOptions};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::sessions::Remembered;

use super::{
    GROUP_ATTEMPTS, GROUP_BYTES, GROUP_FILES, LocalTree, RESUMABLE_FROM, Tally, dirs, groups, identical, join_remote,
    retry_wait, walk,
};

/// One local file to send.
#[derive(Debug)]
struct Item {
    local: PathBuf,
    remote: String,
    size: u64,
    /// What the server has at `remote` now, if anything.
    existing: Option<RemoteFile>,
}

/// `ferry put -r LOCAL_DIR REMOTE_PREFIX`. `server` (as the user gave it)
/// keys the remembered sessions of large files.
pub async fn put(
    client: Client,
    server: &str,
    local: &Path,
    prefix: &str,
    jobs: usize,
    no_clobber: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    if !std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?.is_dir() {
        bail!("{} is not a directory (put -r uploads a directory tree)", local.display());
    }
    let mut tree = LocalTree::default();
    walk(local, "", &mut tree)?;
    let tally = Arc::new(Tally::default());
    tally.failed.fetch_add(tree.unsendable, Ordering::Relaxed);
    // One listing tells which files (and directories) are there already,
    // instead of a stat each.
    let (mut existing, remote_dirs) = remote_entries(&client, prefix).await?;

    let (mut small, mut large) = (Vec::new(), Vec::new());
    for (rel, path) in tree.files {
        let size = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) => {
                tally.add(&Err(e.into()), &path.display().to_string());
                continue;
            }
        };
        let remote = join_remote(prefix, &rel);
        let item = Item { existing: existing.remove(&remote), local: path, remote, size };
        if size >= RESUMABLE_FROM { large.push(item) } else { small.push(item) }
    }

    let slots = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = JoinSet::new();
    for group in groups(small, |item| item.size, jobs, GROUP_FILES, GROUP_BYTES) {
        let (client, tally, slots) = (client.clone(), tally.clone(), slots.clone());
        tasks.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            put_group(&client, group, no_clobber, &tally).await;
        });
    }
    for item in large {
        let (client, tally, slots, server) = (client.clone(), tally.clone(), slots.clone(), server.to_owned());
        tasks.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            tally.add(&put_large(&client, &server, &item, no_clobber, quiet).await, &item.local.display().to_string());
        });
    }
    while tasks.join_next().await.is_some() {}

    // Last, once their entries are in place: the directories.
    dirs::send(&client, prefix, tree.dirs, &remote_dirs, jobs, quiet, &tally).await;
    tally.finish("uploaded", quiet)
}

/// The files and the directories under `prefix` on the server, by path
/// (none if it does not exist).
async fn remote_entries(client: &Client, prefix: &str) -> anyhow::Result<(Entries, Entries)> {
    let (mut files, mut dirs) = (HashMap::new(), HashMap::new());
    let mut listing = match client.list(prefix.trim_end_matches('/'), true).await {
        Ok(listing) => listing,
        Err(Error::Status(status)) if status.code() == Code::NotFound => return Ok((files, dirs)),
        Err(e) => return Err(e).context("cannot list the destination"),
    };
    loop {
        match listing.next_batch().await {
            Ok(Some(batch)) => {
                for entry in batch {
                    let by_kind = if entry.is_dir { &mut dirs } else { &mut files };
                    by_kind.insert(entry.path.clone(), entry);
                }
            }
            Ok(None) => return Ok((files, dirs)),
            Err(Error::Status(status)) if status.code() == Code::NotFound => {
                return Ok((HashMap::new(), HashMap::new()));
            }
            Err(e) => return Err(e).context("cannot list the destination"),
        }
    }
}

type Entries = HashMap<String, RemoteFile>;

/// Whether the server already has exactly this file.
async fn unchanged(client: &Client, item: &Item) -> bool {
    match &item.existing {
        Some(existing) if existing.size == item.size => identical(client, &item.local, existing).await,
        _ => false,
    }
}

/// Sends a group of small files in one stream. If the stream breaks, the
/// files it had not finished are sent again (after a check that the server
/// did not store them anyway), a few times, before they count as failed.
async fn put_group(client: &Client, group: Vec<Item>, no_clobber: bool, tally: &Tally) {
    let mut todo = Vec::with_capacity(group.len());
    for item in group {
        if unchanged(client, &item).await {
            tally.skipped.fetch_add(1, Ordering::Relaxed);
        } else {
            todo.push(item);
        }
    }
    let mut attempt = 0;
    while !todo.is_empty() {
        attempt += 1;
        let files = todo
            .iter()
            .map(|item| LocalFile { local: item.local.clone(), remote: item.remote.clone(), create_only: no_clobber })
            .collect();
        let results = match client.upload_files(files).await {
            Ok(results) => results,
            Err(e) => todo.iter().map(|_| Err(Error::Protocol(format!("the stream failed: {e}")))).collect(),
        };
        let (mut retry, mut asked) = (Vec::new(), None);
        for (item, result) in todo.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    tally.transferred.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.is_transient() && attempt < GROUP_ATTEMPTS => {
                    asked = asked.max(e.retry_after());
                    retry.push(item);
                }
                Err(e) => tally.add(&Err(e.into()), &item.local.display().to_string()),
            }
        }
        if retry.is_empty() {
            return;
        }
        tokio::time::sleep(retry_wait(attempt, [asked])).await;
        todo = Vec::with_capacity(retry.len());
        for mut item in retry {
            // An answer lost with the stream may still have been stored.
            item.existing = client.stat(&item.remote).await.ok();
            if unchanged(client, &item).await {
                tally.transferred.fetch_add(1, Ordering::Relaxed);
            } else {
                todo.push(item);
            }
        }
    }
}

/// Sends one large file through a resumable session, unless the server has
/// it already; whether it sent it. The session is remembered as `ferry put`
/// remembers its own, so a re-run of an interrupted `put -r` continues it.
async fn put_large(client: &Client, server: &str, item: &Item, no_clobber: bool, quiet: bool) -> anyhow::Result<bool> {
    if unchanged(client, item).await {
        return Ok(false);
    }
    let remembered = Remembered::for_upload(server, &item.remote, &item.local)?;
    let resumed = match remembered.load() {
        Some(id) => match client.query_upload(&id).await {
            Ok(state) if state.path == item.remote && state.ranges.is_none() => {
                if !quiet {
                    eprintln!("resuming {} at byte {}", item.local.display(), state.committed);
                }
                Some(id)
            }
            _ => None,
        },
        None => None,
    };
    let id = match resumed {
        Some(id) => id,
        None => {
            let meta =
                std::fs::metadata(&item.local).with_context(|| format!("cannot read {}", item.local.display()))?;
            let mut options = UploadOptions {
                size: Some(meta.len()),
                mtime: meta.modified().ok(),
                create_only: no_clobber,
                ..UploadOptions::default()
            };
            {
                use std::os::unix::fs::PermissionsExt;
                options.permissions = Some(meta.permissions().mode() & 0o777);
            }
            let id = client.create_upload(&item.remote, &options).await?;
            remembered.save(&id);
            id
        }
    };
    let result = client.upload_file_resumable(&item.local, &id, &RetryPolicy::default(), |_| {}).await;
    match &result {
        Ok(_) => remembered.forget(),
        // The session is gone (finished, expired or refused): nothing to resume.
        Err(e) if e.code() == Some(Code::NotFound) => remembered.forget(),
        Err(_) => {}
    }
    result?;
    Ok(true)
}
