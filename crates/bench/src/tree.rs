//! `--tree`: many small files, ferry (`ferry put -r` / `get -r`, the real
//! binary) against rsync over loopback (an rsync daemon), in one run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::server::Server;
use crate::stats::Summary;
use crate::units;
use crate::workdir::{self, WorkDir};

/// Kills the rsync daemon when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    ferry: &Path,
    base: &Path,
    files: usize,
    file_size: u64,
    large: usize,
    large_size: u64,
    jobs: usize,
    runs: u64,
) -> Result<()> {
    let total = files as u64 * file_size + large as u64 * large_size;
    let (work, _) = WorkDir::create(base, total * 6 + (64 << 20), false)?;
    let src = work.join("tree");
    generate(&src, files, file_size, large, large_size)?;
    let server = Server::start(ferry, &work.join("root"), ferry_client::DEFAULT_CHUNK_SIZE, &work.join("server.log"))?;
    let rsync_root = work.join("rsync-root");
    std::fs::create_dir_all(&rsync_root)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = work.join("rsyncd.conf");
    // The daemon writes as whoever runs the bench (as root it would drop to nobody).
    let (uid, gid) = {
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata("/proc/self")?;
        (me.uid(), me.gid())
    };
    std::fs::write(
        &conf,
        format!(
            "use chroot = false\nuid = {uid}\ngid = {gid}\n[bench]\npath = {}\nread only = false\n",
            rsync_root.display()
        ),
    )?;
    let daemon = Command::new("rsync")
        .args(["--daemon", "--no-detach", "--address=127.0.0.1", &format!("--port={port}")])
        .arg(format!("--config={}", conf.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start an rsync daemon (is rsync installed?)")?;
    let _daemon = Daemon(daemon);
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "the rsync daemon did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rsync_url = format!("rsync://127.0.0.1:{port}/bench");
    let names = ["ferry", "rsync", "rsync --fsync"];
    let (mut up, mut down): ([Vec<f64>; 3], [Vec<f64>; 3]) = Default::default();
    let scratch = work.join("warm-up.tmp");
    let warm = || workdir::warm_up(&scratch, total.max(64 << 20));
    for run in 1..=runs {
        let remote = |tool: usize| format!("run{run}-{tool}");
        let local = |tool: usize| work.join(&format!("dst{run}-{tool}"));
        let jobs = jobs.to_string();
        warm()?;
        up[0].push(timed(|| {
            command(ferry, &["--server", &server.url(), "put", "-r", "-q", "-j", &jobs], &[&src], &remote(0))
        })?);
        for (tool, fsync) in [(1, false), (2, true)] {
            warm()?;
            up[tool].push(timed(|| {
                rsync(&format!("{}/", src.display()), &format!("{rsync_url}/{}/", remote(tool)), fsync)
            })?);
        }
        warm()?;
        down[0].push(timed(|| {
            command(ferry, &["--server", &server.url(), "get", "-r", "-q", "-j", &jobs, &remote(0)], &[&local(0)], "")
        })?);
        for (tool, fsync) in [(1, false), (2, true)] {
            warm()?;
            down[tool].push(timed(|| {
                rsync(&format!("{rsync_url}/{}/", remote(tool)), &format!("{}/", local(tool).display()), fsync)
            })?);
        }
        let last = |series: &[Vec<f64>; 3]| {
            series.iter().map(|v| format!("{:.2}", v[v.len() - 1])).collect::<Vec<_>>().join(" / ")
        };
        eprintln!("run {run}/{runs} ({}): up {} s; down {} s", names.join(" / "), last(&up), last(&down));
    }
    let m = |v: &[f64]| Summary::of(v).median;
    println!(
        "{files} files of {} bytes{}, -j {jobs}, median of {runs} runs, over loopback (ferry commits every file durably, rsync only with --fsync):",
        file_size,
        if large > 0 { format!(" + {large} of {}", units::describe_size(large_size)) } else { String::new() }
    );
    println!("{:<9} {:<14} {:>9} {:>9} {:>13}", "", "tool", "files/s", "MB/s", "ferry ÷ tool");
    for (what, series) in [("upload", &up), ("download", &down)] {
        let ferry_s = m(&series[0]);
        for (tool, name) in names.iter().enumerate() {
            let seconds = m(&series[tool]);
            println!(
                "{what:<9} {name:<14} {:>9.0} {:>9.1} {:>13.2}",
                (files + large) as f64 / seconds,
                units::megabytes_per_second(total, seconds),
                seconds / ferry_s
            );
        }
    }
    Ok(())
}

/// `files` small files of `size` bytes, 100 per directory, then `large`
/// files of `large_size` (a mixed tree: a dataset with a few big shards).
fn generate(dir: &Path, files: usize, size: u64, large: usize, large_size: u64) -> Result<()> {
    for i in 0..large {
        let sub = dir.join("large");
        std::fs::create_dir_all(&sub)?;
        workdir::generate_test_file(&sub.join(format!("large{i}.bin")), large_size)?;
    }
    // 100 files per directory, like a source tree or a dataset shard.
    for i in 0..files {
        let sub = dir.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        let mut data = vec![0u8; size as usize];
        for (j, byte) in data.iter_mut().enumerate() {
            *byte = (i.wrapping_mul(31).wrapping_add(j.wrapping_mul(7)) % 251) as u8;
        }
        std::fs::write(sub.join(format!("f{i:06}.bin")), data)?;
    }
    Ok(())
}

fn timed(run: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    run()?;
    Ok(start.elapsed().as_secs_f64())
}

fn command(ferry: &Path, args: &[&str], paths: &[&Path], last: &str) -> Result<()> {
    let mut command = Command::new(ferry);
    command.args(args).args(paths);
    if !last.is_empty() {
        command.arg(last);
    }
    let status = command.status().context("cannot run ferry")?;
    ensure!(status.success(), "ferry failed: {status}");
    Ok(())
}

/// `rsync -a`, with `--fsync` (every written file fsynced, on the receiving
/// side) when asked: the durable comparison for ferry, which commits every
/// file durably.
fn rsync(from: &str, to: &str, fsync: bool) -> Result<()> {
    let mut command = Command::new("rsync");
    command.arg("-a");
    if fsync {
        command.arg("--fsync");
    }
    let status = command.args([from, to]).status().context("cannot run rsync")?;
    ensure!(status.success(), "rsync failed: {status}");
    Ok(())
}
