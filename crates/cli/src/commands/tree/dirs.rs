//! Directories' times and permission bits, the last step of a tree copy
//! (adding an entry changes a directory's mtime, so they are set once every
//! entry is in place).
//!
//! - `put -r`: first the empty directories the server lacks are made; then
//!   every directory gets one `MakeDirectory` with its time and bits, `-j`
//!   at a time; on a run that stored nothing, only those whose listed time
//!   or bits differ. Nothing is created
//!   in that second phase, so no directory's time is disturbed after it was
//!   set. A server that keeps no directory metadata (S3) says so once.
//! - `get -r`: the listed time and bits are set on the directories this run
//!   made, and on ones that were there already only with `-f`: a server
//!   must not be able to loosen `~/.ssh` by listing it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use ferry_client::{Client, Code, Error, RemoteFile};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{GROUP_ATTEMPTS, Tally, join_remote, retry_wait};

/// What `put -r` knows of one local directory.
#[derive(Debug)]
pub(super) struct LocalDir {
    pub rel: String,
    pub path: PathBuf,
    /// Nothing inside is sent: the directory is made on its own.
    pub empty: bool,
}

/// `put -r`'s last step: the empty directories, then every directory's time
/// and permission bits where the server's differ. `remote` is what the
/// destination's listing showed, by remote path.
pub(super) async fn send(
    client: &Client,
    prefix: &str,
    dirs: Vec<LocalDir>,
    remote: &HashMap<String, RemoteFile>,
    jobs: usize,
    quiet: bool,
    tally: &Tally,
) {
    let mut made = false;
    for dir in dirs.iter().filter(|dir| dir.empty) {
        let path = join_remote(prefix, &dir.rel);
        if remote.contains_key(&path) {
            continue;
        }
        made = true;
        if let Err(e) = with_retries(|| client.make_directory(&path)).await {
            tally.add(&Err(e.into()), &dir.path.display().to_string());
        }
    }
    // The listing predates this run: any file stored or directory made since
    // changed some directory's time on the server, so then every directory is
    // sent. Only a run that changed nothing trusts the listing.
    let listing_holds = !made && tally.transferred.load(Ordering::Relaxed) == 0;

    let slots = Arc::new(Semaphore::new(jobs.max(1)));
    let unsupported = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for dir in dirs {
        let (mtime, permissions) = match std::fs::symlink_metadata(&dir.path) {
            Ok(meta) => (meta.modified().ok(), std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777),
            Err(e) => {
                tally.add(&Err(e.into()), &dir.path.display().to_string());
                continue;
            }
        };
        let path = join_remote(prefix, &dir.rel);
        // What the server would report after setting them (it keeps owner rwx).
        let same = |there: &RemoteFile| there.mtime == mtime && there.permissions == permissions | 0o700;
        if listing_holds && remote.get(&path).is_some_and(same) {
            continue;
        }
        let (client, slots, unsupported) = (client.clone(), slots.clone(), unsupported.clone());
        tasks.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else { return Ok(()) };
            if unsupported.load(Ordering::Relaxed) {
                return Ok(());
            }
            match with_retries(|| client.make_directory_with(&path, mtime, Some(permissions))).await {
                Ok(_) => Ok(()),
                // The directory was made; the store has nowhere to keep its metadata.
                Err(Error::Status(status)) if status.code() == Code::Unimplemented => {
                    if !unsupported.swap(true, Ordering::Relaxed) && !quiet {
                        eprintln!("ferry: note: the server's store keeps no directory times or permissions");
                    }
                    Ok(())
                }
                Err(e) => Err((dir.path, e)),
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err((path, e))) = joined {
            tally.add(&Err(e.into()), &path.display().to_string());
        }
    }
}

/// A directory `get -r` gives its listed time and bits once the files are in.
pub(super) struct ListedDir {
    pub path: PathBuf,
    pub entry: RemoteFile,
}

/// `get -r`'s last step. Directories listed without a time (a server that
/// keeps none, or an older one over S3 that sent the epoch) are left as made.
pub(super) fn apply(dirs: Vec<ListedDir>, tally: &Tally) {
    for ListedDir { path, entry } in dirs {
        let Some(mtime) = entry.mtime.filter(|t| *t != SystemTime::UNIX_EPOCH) else { continue };
        if let Err(e) = set_local(&path, mtime, entry.permissions) {
            tally.add(
                &Err(anyhow::Error::from(e).context("cannot set the time and permissions")),
                &path.display().to_string(),
            );
        }
    }
}

/// Gives the local directory `path` a time and permission bits, never
/// through a symbolic link. The owner keeps `rwx`, as on the server, so that
/// the same copy can run again.
fn set_local(path: &Path, mtime: SystemTime, permissions: u32) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::PermissionsExt as _;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = std::fs::File::from(rustix::fs::open(path, flags, Mode::empty())?);
    dir.set_permissions(std::fs::Permissions::from_mode(permissions & 0o777 | 0o700))?;
    dir.set_modified(mtime)
}

/// Runs `call` up to [`GROUP_ATTEMPTS`] times while it fails transiently,
/// waiting as [`retry_wait`] says between attempts.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Err(e) if e.is_transient() && attempt < GROUP_ATTEMPTS => {
                tokio::time::sleep(retry_wait(attempt, [e.retry_after()])).await;
            }
            outcome => return outcome,
        }
    }
}
