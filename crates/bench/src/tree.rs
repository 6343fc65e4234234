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

pub fn run(ferry: &Path, base: &Path, files: usize, file_size: u64, jobs: usize, runs: u64) -> Result<()> {
    let total = files as u64 * file_size;
    let (work, _) = WorkDir::create(base, total * 6 + (64 << 20), false)?;
    let src = work.join("tree");
    generate(&src, files, file_size)?;
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
    let (mut ferry_up, mut rsync_up, mut ferry_down, mut rsync_down) = (vec![], vec![], vec![], vec![]);
    let scratch = work.join("warm-up.tmp");
    for run in 1..=runs {
        let remote = format!("run{run}");
        workdir::warm_up(&scratch, total.max(64 << 20))?;
        ferry_up.push(timed(|| {
            command(ferry, &["--server", &server.url(), "put", "-r", "-q", "-j", &jobs.to_string()], &[&src], &remote)
        })?);
        workdir::warm_up(&scratch, total.max(64 << 20))?;
        rsync_up.push(timed(|| rsync(&format!("{}/", src.display()), &format!("{rsync_url}/{remote}/")))?);
        let (ferry_dst, rsync_dst) = (work.join(&format!("ferry-dst{run}")), work.join(&format!("rsync-dst{run}")));
        workdir::warm_up(&scratch, total.max(64 << 20))?;
        ferry_down.push(timed(|| {
            command(
                ferry,
                &["--server", &server.url(), "get", "-r", "-q", "-j", &jobs.to_string(), &remote],
                &[&ferry_dst],
                "",
            )
        })?);
        workdir::warm_up(&scratch, total.max(64 << 20))?;
        rsync_down.push(timed(|| rsync(&format!("{rsync_url}/{remote}/"), &format!("{}/", rsync_dst.display())))?);
        eprintln!(
            "run {run}/{runs}: up ferry {:.2} s, rsync {:.2} s; down ferry {:.2} s, rsync {:.2} s",
            ferry_up[ferry_up.len() - 1],
            rsync_up[rsync_up.len() - 1],
            ferry_down[ferry_down.len() - 1],
            rsync_down[rsync_down.len() - 1]
        );
    }
    let m = |v: &[f64]| Summary::of(v).median;
    let line = |what: &str, ferry: f64, rsync: f64| {
        println!(
            "{what:<9} ferry {:>8.0} files/s {:>7.1} MB/s | rsync {:>8.0} files/s {:>7.1} MB/s | ferry/rsync {:.2}",
            files as f64 / ferry,
            units::megabytes_per_second(total, ferry),
            files as f64 / rsync,
            units::megabytes_per_second(total, rsync),
            rsync / ferry
        );
    };
    println!("{files} files of {file_size} bytes, -j {jobs}, median of {runs} runs, over loopback:");
    line("upload", m(&ferry_up), m(&rsync_up));
    line("download", m(&ferry_down), m(&rsync_down));
    Ok(())
}

fn generate(dir: &Path, files: usize, size: u64) -> Result<()> {
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

fn rsync(from: &str, to: &str) -> Result<()> {
    let status = Command::new("rsync").args(["-a", from, to]).status().context("cannot run rsync")?;
    ensure!(status.success(), "rsync failed: {status}");
    Ok(())
}
