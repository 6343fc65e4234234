//! `ferry get -r REMOTE_PREFIX LOCAL_DIR`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use ferry_client::{Client, DownloadTarget, Error, RemoteFile, RetryPolicy};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{
    GROUP_ATTEMPTS, GROUP_BYTES, GROUP_FILES, RESUMABLE_FROM, Tally, dirs, groups, identical, local_relative,
    retry_wait, safe_create_dirs,
};

/// `ferry get -r REMOTE_PREFIX LOCAL_DIR`.
pub async fn get(
    client: Client,
    prefix: &str,
    local: &Path,
    jobs: usize,
    force: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let prefix = prefix.trim_end_matches('/');
    let mut listing = client.list(prefix, true).await?;
    let mut entries = Vec::new();
    while let Some(batch) = listing.next_batch().await? {
        entries.extend(batch);
    }
    if entries.len() == 1 && entries[0].path == prefix && !entries[0].is_dir {
        bail!("{prefix} is a file: use `ferry get` without -r");
    }
    std::fs::create_dir_all(local).with_context(|| format!("cannot create {}", local.display()))?;
    if std::fs::symlink_metadata(local)?.file_type().is_symlink() {
        bail!("{} is a symbolic link: not writing through it", local.display());
    }
    let tally = Arc::new(Tally::default());
    let (mut small, mut large, mut listed_dirs) = (Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        let rel = match prefix {
            "" => Some(entry.path.as_str()),
            prefix => entry.path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')),
        };
        let rel = match rel.map(local_relative) {
            Some(Ok(rel)) => rel,
            Some(Err(e)) => {
                eprintln!("ferry: {e:#}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            None => {
                eprintln!("ferry: the server listed {:?}, outside {prefix:?}: refused", entry.path);
                tally.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if entry.is_dir {
            // Every directory, so empty ones are kept too. Listed parents
            // come first, so one found here was there before this run: its
            // time and bits are changed only with -f.
            let existed = std::fs::symlink_metadata(local.join(&rel)).is_ok();
            match safe_create_dirs(local, &rel, Some(entry.permissions)) {
                Ok(path) if !existed || force => listed_dirs.push(dirs::ListedDir { path, entry }),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("ferry: {e:#}");
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if entry.size >= RESUMABLE_FROM {
            large.push((entry, rel));
        } else {
            small.push((entry, rel));
        }
    }

    let slots = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = JoinSet::new();
    for group in groups(small, |(entry, _)| entry.size, jobs, GROUP_FILES, GROUP_BYTES) {
        let (client, tally, slots, local) = (client.clone(), tally.clone(), slots.clone(), local.to_owned());
        tasks.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            get_group(&client, group, &local, force, &tally).await;
        });
    }
    for (entry, rel) in large {
        let (client, tally, slots, local) = (client.clone(), tally.clone(), slots.clone(), local.to_owned());
        tasks.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            tally.add(&get_one(&client, &entry, &local, &rel, force, quiet).await, &entry.path);
        });
    }
    while tasks.join_next().await.is_some() {}
    // Last, once their entries are in place: the directories.
    dirs::apply(listed_dirs, &tally);
    tally.finish("downloaded", quiet)
}

/// Where `entry` goes under `dest`, checked; `None` if an identical file is
/// there already.
async fn target_for(
    client: &Client,
    entry: &RemoteFile,
    dest: &Path,
    rel: &Path,
    force: bool,
) -> anyhow::Result<Option<PathBuf>> {
    let parent = match rel.parent() {
        Some(parent) if parent != Path::new("") => safe_create_dirs(dest, parent, None)?,
        _ => dest.to_owned(),
    };
    let target = parent.join(rel.file_name().context("a file name")?);
    match std::fs::symlink_metadata(&target) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("{} is a symbolic link: not writing through it", target.display())
        }
        Ok(_) if identical(client, &target, entry).await => Ok(None),
        Ok(_) if !force => Err(Error::LocalExists(target).into()),
        _ => Ok(Some(target)),
    }
}

/// Fetches a group of small files in one stream, retrying the ones a broken
/// stream did not deliver a few times before they count as failed.
async fn get_group(client: &Client, group: Vec<(RemoteFile, PathBuf)>, dest: &Path, force: bool, tally: &Tally) {
    let mut todo = Vec::with_capacity(group.len());
    for (entry, rel) in group {
        match target_for(client, &entry, dest, &rel, force).await {
            Ok(Some(local)) => todo.push(DownloadTarget { remote: entry.path, local }),
            Ok(None) => {
                tally.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tally.add(&Err(e), &entry.path),
        }
    }
    let mut attempt = 0;
    while !todo.is_empty() {
        attempt += 1;
        let results = match client.download_files(todo.clone(), force).await {
            Ok(results) => results,
            Err(e) => todo.iter().map(|_| Err(Error::Protocol(format!("the stream failed: {e}")))).collect(),
        };
        let (mut retry, mut asked) = (Vec::new(), None);
        for (target, result) in todo.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    tally.transferred.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.is_transient() && attempt < GROUP_ATTEMPTS => {
                    asked = asked.max(e.retry_after());
                    retry.push(target);
                }
                Err(e) => tally.add(&Err(e.into()), &target.remote),
            }
        }
        if !retry.is_empty() {
            tokio::time::sleep(retry_wait(attempt, [asked])).await;
        }
        todo = retry;
    }
}

/// Downloads one large file unless an identical one is there; whether it
/// did. Resumable as `ferry get` is: the bytes go to a `.NAME.*.ferry-part`
/// beside the target, transient failures are retried from its length, and
/// a re-run of an interrupted `get -r` continues it instead of starting over.
async fn get_one(
    client: &Client,
    entry: &RemoteFile,
    dest: &Path,
    rel: &Path,
    force: bool,
    quiet: bool,
) -> anyhow::Result<bool> {
    let Some(target) = target_for(client, entry, dest, rel, force).await? else { return Ok(false) };
    let on_resume = |at: u64| {
        if !quiet {
            eprintln!("resuming {} at byte {at}", entry.path);
        }
    };
    let policy = RetryPolicy::default();
    client.download_file_resumable(&entry.path, &target, force, &policy, on_resume, |_| {}).await?;
    Ok(true)
}
