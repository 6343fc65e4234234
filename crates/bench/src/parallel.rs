//! `--parallel-download N`: one file downloaded over one connection and over
//! N connections at once (`ferry_client::download_parallel`), next to the
//! raw TCP copy, interleaved in one run. `--parallel-upload N`: the same for
//! uploads, as `ferry put` sends them: one resumable session over one
//! connection, against a ranged session over N (`ferry_client::upload_parallel`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ferry_client::{Client, Range, RetryPolicy, UploadOptions};

use crate::server::Server;
use crate::stats::Summary;
use crate::units;
use crate::workdir::{self, WorkDir};

pub async fn download(ferry: &Path, base: &Path, size: u64, connections: usize, runs: u64) -> Result<()> {
    let setup = Setup::start(ferry, base, size, connections).await?;
    let clients = &setup.clients;
    clients[0].upload_file(&setup.source, "bench/parallel.bin", UploadOptions::default(), |_| {}).await?;
    let copy = setup.work.join("download.bin");
    let policy = RetryPolicy::default();
    let mut series = Series::default();
    for run in 1..=runs {
        setup.raw_copy(&mut series)?;

        setup.warm_up()?;
        let start = Instant::now();
        clients[0].download_file("bench/parallel.bin", Range::ALL, &copy, false, |_| {}).await?;
        series.one.push(start.elapsed().as_secs_f64());
        ensure!(std::fs::metadata(&copy)?.len() == size, "short download");
        std::fs::remove_file(&copy)?;

        setup.warm_up()?;
        let start = Instant::now();
        ferry_client::download_parallel(clients, "bench/parallel.bin", &copy, false, &policy, |_| {}).await?;
        series.many.push(start.elapsed().as_secs_f64());
        ensure!(std::fs::metadata(&copy)?.len() == size, "short download");
        std::fs::remove_file(&copy)?;
        series.print_run(run, runs, size, connections);
    }
    series.report("download", size, runs, connections);
    Ok(())
}

pub async fn upload(ferry: &Path, base: &Path, size: u64, connections: usize, runs: u64) -> Result<()> {
    let setup = Setup::start(ferry, base, size, connections).await?;
    let clients = &setup.clients;
    let options = UploadOptions { size: Some(size), ..UploadOptions::default() };
    let policy = RetryPolicy::default();
    let mut series = Series::default();
    for run in 1..=runs {
        setup.raw_copy(&mut series)?;

        setup.warm_up()?;
        let start = Instant::now();
        let id = clients[0].create_upload("bench/one.bin", &options).await?;
        let file = clients[0].upload_file_resumable(&setup.source, &id, &policy, |_| {}).await?;
        series.one.push(start.elapsed().as_secs_f64());
        ensure!(file.size == size, "short upload");

        setup.warm_up()?;
        let start = Instant::now();
        let id = clients[0]
            .create_ranged_upload("bench/many.bin", &options)
            .await?
            .context("the server cannot stage ranged uploads")?;
        let file = ferry_client::upload_parallel(clients, &setup.source, &id, &policy, |_| {}).await?;
        series.many.push(start.elapsed().as_secs_f64());
        ensure!(file.size == size, "short upload");
        series.print_run(run, runs, size, connections);
    }
    series.report("upload", size, runs, connections);
    Ok(())
}

/// A work directory with the test file, a server, and the connections.
struct Setup {
    work: WorkDir,
    source: PathBuf,
    size: u64,
    clients: Vec<Client>,
    _server: Server,
}

impl Setup {
    async fn start(ferry: &Path, base: &Path, size: u64, connections: usize) -> Result<Self> {
        let (work, _) = WorkDir::create(base, size * 4, false)?;
        let source = work.join("test-file.bin");
        workdir::generate_test_file(&source, size)?;
        let server =
            Server::start(ferry, &work.join("root"), ferry_client::DEFAULT_CHUNK_SIZE, &work.join("server.log"))?;
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            clients.push(Client::connect(&server.url()).await.context("cannot connect to ferry serve")?);
        }
        Ok(Self { work, source, size, clients, _server: server })
    }

    fn warm_up(&self) -> Result<()> {
        workdir::warm_up(&self.work.join("warm-up.tmp"), self.size)
    }

    /// One raw TCP copy of the file, after a warm-up.
    fn raw_copy(&self, series: &mut Series) -> Result<()> {
        self.warm_up()?;
        let copy = self.work.join("raw.bin");
        series.raw.push(crate::raw::copy(&self.source, &copy, self.size, false)?.as_secs_f64());
        std::fs::remove_file(&copy)?;
        Ok(())
    }
}

/// Seconds per run: the raw copy, one connection, N connections.
#[derive(Default)]
struct Series {
    raw: Vec<f64>,
    one: Vec<f64>,
    many: Vec<f64>,
}

impl Series {
    fn print_run(&self, run: u64, runs: u64, size: u64, connections: usize) {
        let last = |v: &[f64]| units::megabytes_per_second(size, v.last().copied().unwrap_or(f64::NAN));
        eprintln!(
            "run {run}/{runs}: raw {:.0} MB/s, 1 connection {:.0} MB/s, {connections} connections {:.0} MB/s",
            last(&self.raw),
            last(&self.one),
            last(&self.many),
        );
    }

    fn report(&self, direction: &str, size: u64, runs: u64, connections: usize) {
        let rate = |v: &[f64]| units::megabytes_per_second(size, Summary::of(v).median);
        let (raw, one, many) = (rate(&self.raw), rate(&self.one), rate(&self.many));
        println!("{} file, median of {runs} runs, over loopback:", units::describe_size(size));
        println!("{:<25}{raw:>8.0} MB/s", "raw TCP copy");
        println!("{:<25}{one:>8.0} MB/s  {:.2} x raw", format!("{direction}, 1 connection"), one / raw);
        println!(
            "{:<25}{many:>8.0} MB/s  {:.2} x raw  {:.2} x one connection",
            format!("{direction}, {connections} connections"),
            many / raw,
            many / one
        );
    }
}
