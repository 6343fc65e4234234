//! Start-up recovery time: a store root with N abandoned resumable sessions,
//! each holding journaled bytes plus bytes written after the last checkpoint
//! (which recovery must cut off), then the time `LocalStore::open` takes.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use ferry_store::{LocalStore, Store, StorePath, WriteOptions};

use crate::stats;

/// Journaled bytes per session; then as many again, unjournaled.
const SESSION_BYTES: usize = 64 * 1024;

pub async fn run(base: &Path, sessions: usize, runs: u64) -> Result<()> {
    std::fs::create_dir_all(base).with_context(|| format!("cannot create {}", base.display()))?;
    let mut times = Vec::new();
    for run in 1..=runs {
        let dir = tempfile::Builder::new().prefix("recovery-").tempdir_in(base).context("cannot create a work dir")?;
        prepare(dir.path(), sessions).await?;
        let start = Instant::now();
        let store = LocalStore::open(dir.path()).context("the store did not open")?;
        let elapsed = start.elapsed();
        drop(store);
        check_truncated(dir.path(), sessions)?;
        eprintln!("run {run}/{runs}: recovered {sessions} sessions in {:.1} ms", elapsed.as_secs_f64() * 1e3);
        times.push(elapsed);
    }
    let millis: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    let summary = stats::Summary::of(&millis);
    println!(
        "start-up recovery of {sessions} abandoned sessions ({} KiB journaled + {} KiB to truncate each): \
         median {:.1} ms (min {:.1}, max {:.1}) over {runs} runs",
        SESSION_BYTES / 1024,
        SESSION_BYTES / 1024,
        summary.median,
        summary.min,
        summary.max
    );
    Ok(())
}

/// `sessions` abandoned uploads, each with journaled and unjournaled bytes.
async fn prepare(root: &Path, sessions: usize) -> Result<()> {
    let store = LocalStore::open(root).context("cannot open the store")?;
    let payload = Bytes::from(vec![7u8; SESSION_BYTES]);
    for i in 0..sessions {
        let path = StorePath::parse(&format!("abandoned/{i}.bin")).context("path")?;
        let options = WriteOptions { resumable: true, ..WriteOptions::default() };
        let mut upload = store.create_upload(&path, options).await.context("create a session")?;
        upload.write(payload.clone()).await.context("write")?;
        upload.sync().await.context("sync")?;
        let data = root.join(".ferry/uploads").join(upload.id().as_str()).join("data");
        drop(upload);
        // Bytes that reached the file after the last checkpoint, as a crash leaves them.
        let mut file = std::fs::OpenOptions::new().append(true).open(&data).context("open session data")?;
        file.write_all(&payload).context("append unjournaled bytes")?;
    }
    drop(store);
    // Let the dropped sessions' writer tasks finish before the timed open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// Every session's data is back at its journaled length.
fn check_truncated(root: &Path, sessions: usize) -> Result<()> {
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join(".ferry/uploads")).context("list sessions")? {
        let len = std::fs::metadata(entry.context("session")?.path().join("data")).context("session data")?.len();
        anyhow::ensure!(len == SESSION_BYTES as u64, "a session was left at {len} bytes");
        checked += 1;
    }
    anyhow::ensure!(checked == sessions, "{checked} of {sessions} sessions survived recovery");
    Ok(())
}
