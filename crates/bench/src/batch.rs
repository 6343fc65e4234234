//! A batch: N transfers of one file size started at once, the unit that
//! `--concurrent` and `--scaling` time.
//!
//! Its headline figure is the aggregate rate: all the batch's bytes over the
//! wall time from the first start to the last finish, which is what a server
//! shared by N clients delivers. Each transfer's own time is kept too, to show
//! whether the server shares fairly.
//!
//! Every ferry batch gets a fresh `ferry serve` on the same root. `VmHWM`
//! never goes down, so a server that already carried another batch (or the
//! other direction) would report that batch's peak, plus whatever memory its
//! allocator kept from it; a fresh process per batch makes the peak belong
//! to this batch alone, and per direction.
//!
//! Only what the server does matters here, so the uploads all read one local
//! source file (to N distinct remote paths): N distinct local copies would
//! cost N × size more disk and their generation time, and change nothing on
//! the server, which receives N distinct streams either way. The file stays in
//! the page cache, so the client side reads memory, as the raw copies do.

use std::ffi::OsStr;
use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ferry_client::{Client, ClientOptions, Range, UploadOptions};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::server::Server;
use crate::stats::Summary;
use crate::system::{self, Process, Usage};
use crate::units::{kib_to_mib, megabytes_per_second};
use crate::{blocking, raw, workdir};

/// The target for the server's peak RSS with 64 transfers of 64 MiB.
pub const RSS_TARGET_MIB: f64 = 256.0;

/// Where the batch's files go on the server: `concurrent/file-007.bin`.
fn remote_path(index: usize) -> String {
    format!("concurrent/file-{index:03}.bin")
}

/// `--connections`: how the N ferry transfers reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConnectionsArg {
    /// One client (one TCP + HTTP/2 connection) per transfer, as N separate clients would.
    PerTransfer,
    /// One client for all: N HTTP/2 streams over one connection, sharing its window.
    Shared,
    /// Both, one after the other in each run.
    Both,
}

impl ConnectionsArg {
    pub fn modes(self) -> Vec<Connections> {
        match self {
            ConnectionsArg::PerTransfer => vec![Connections::PerTransfer],
            ConnectionsArg::Shared => vec![Connections::Shared],
            ConnectionsArg::Both => vec![Connections::PerTransfer, Connections::Shared],
        }
    }
}

/// How one batch's ferry transfers reach the server. The server's memory
/// depends on it: each connection brings its own HTTP/2 connection window
/// (bytes the client may send before the server reads), while streams on one
/// connection share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    PerTransfer,
    Shared,
}

impl Connections {
    /// The label in tables and JSON; with one transfer the two modes are the
    /// same thing, so it is called `single`.
    pub fn label(self, count: usize) -> &'static str {
        match (self, count) {
            (_, 1) => "single",
            (Connections::PerTransfer, _) => "per-transfer",
            (Connections::Shared, _) => "shared",
        }
    }
}

/// One timed batch.
#[derive(Debug, Clone)]
pub struct BatchSample {
    /// Wall time from the first start to the last finish.
    pub seconds: f64,
    /// Each transfer's own time, from its start to its end.
    pub transfer_seconds: Vec<f64>,
    /// CPU of the bench process (the clients, or both ends of the raw copies).
    pub bench: Usage,
    /// CPU of the server (zero for the raw copies, which do not use it).
    pub server: Usage,
    /// `VmHWM` of the batch's fresh server, read right after the batch (none for raw copies).
    pub server_peak_kib: Option<u64>,
}

/// The runs of one kind of batch.
#[derive(Debug, Clone)]
pub struct BatchSeries {
    pub name: String,
    pub samples: Vec<BatchSample>,
}

impl BatchSeries {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), samples: Vec::new() }
    }

    /// Aggregate MB/s of each run, in run order.
    pub fn rates(&self, total: u64) -> Vec<f64> {
        self.samples.iter().map(|s| megabytes_per_second(total, s.seconds)).collect()
    }

    pub fn rate(&self, total: u64) -> Summary {
        Summary::of(&self.rates(total))
    }

    /// Every transfer's own time, all runs pooled.
    pub fn transfer_seconds(&self) -> Summary {
        let all: Vec<f64> = self.samples.iter().flat_map(|s| s.transfer_seconds.iter().copied()).collect();
        Summary::of(&all)
    }

    pub fn bench_cpu(&self) -> Summary {
        Summary::of(&self.samples.iter().map(|s| s.bench.cpu_seconds).collect::<Vec<_>>())
    }

    pub fn server_cpu(&self) -> Summary {
        Summary::of(&self.samples.iter().map(|s| s.server.cpu_seconds).collect::<Vec<_>>())
    }

    /// The server's peak RSS in MiB of each run, in run order (empty for raw copies).
    pub fn server_peaks_mib(&self) -> Vec<f64> {
        self.samples.iter().filter_map(|s| s.server_peak_kib).map(kib_to_mib).collect()
    }

    /// The highest server peak over the runs: the figure to hold against a
    /// memory target, since one run over it is a run over it.
    pub fn server_peak_mib(&self) -> Option<f64> {
        self.server_peaks_mib().into_iter().reduce(f64::max)
    }

    pub fn to_json(&self, total: u64) -> Value {
        let peaks = self.server_peaks_mib();
        let mut value = json!({
            "mb_per_s": summary_json(&self.rate(total), 1),
            "runs_mb_per_s": self.rates(total).into_iter().map(|r| round(r, 1)).collect::<Vec<_>>(),
            "transfer_seconds": summary_json(&self.transfer_seconds(), 3),
            "batch_seconds_median": round(Summary::of(&self.samples.iter().map(|s| s.seconds).collect::<Vec<_>>()).median, 3),
            "cpu_s_bench_median": round(self.bench_cpu().median, 2),
            "cpu_s_server_median": round(self.server_cpu().median, 2),
        });
        if let Some(peak) = self.server_peak_mib() {
            value["server_peak_rss_mib"] = json!({
                "max": round(peak, 1),
                "median": round(Summary::of(&peaks).median, 1),
                "runs": peaks.iter().map(|p| round(*p, 1)).collect::<Vec<_>>(),
            });
            value["within_rss_target"] = json!(peak <= RSS_TARGET_MIB);
        }
        value
    }
}

pub fn summary_json(summary: &Summary, digits: i32) -> Value {
    json!({ "median": round(summary.median, digits), "min": round(summary.min, digits), "max": round(summary.max, digits) })
}

/// Rounds for JSON: more digits are noise (CPU times come in 10 ms ticks).
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Everything a batch needs: N transfers of `size` bytes from `source`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub ferry: PathBuf,
    /// The local test file, `size` bytes.
    pub source: PathBuf,
    pub size: u64,
    pub count: usize,
    /// Client chunk size (upload payload per message).
    pub chunk_size: usize,
    /// `ferry serve --chunk-size` (download payload per message).
    pub server_chunk_size: usize,
    /// The work directory: server root and log, warm-up file, copies.
    pub dir: PathBuf,
}

impl Batch {
    /// All the bytes one batch moves.
    pub fn total(&self) -> u64 {
        self.size.saturating_mul(self.count as u64)
    }

    /// The limits given to `ferry serve`: never below the shipped defaults
    /// (64 uploads, 64 downloads, 128 streams per connection, 1024
    /// connections), raised to N where N is more, so that no transfer of the
    /// batch is refused (the limits refuse, they do not queue).
    pub fn server_limits(&self) -> Vec<String> {
        let n = self.count;
        [
            ("--max-concurrent-uploads", n.max(64)),
            ("--max-concurrent-downloads", n.max(64)),
            ("--max-concurrent-streams", n.max(128)),
            ("--max-connections", (n + 16).max(1024)),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value.to_string()])
        .collect()
    }

    /// A fresh `ferry serve` on the batch's root, with `server_limits`.
    async fn start_server(&self) -> Result<Server> {
        let root = self.dir.join("root");
        let mut args = vec!["--root".to_owned(), root.to_string_lossy().into_owned()];
        args.extend(self.server_limits());
        let (ferry, log, chunk) = (self.ferry.clone(), self.dir.join("server.log"), self.server_chunk_size);
        blocking(move || {
            let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
            Server::start_with(&ferry, &args, chunk, &log)
        })
        .await
    }

    /// N clients: N connections, or N handles on one.
    async fn clients(&self, server: &Server, connections: Connections) -> Result<Vec<Client>> {
        let options = ClientOptions { chunk_size: self.chunk_size, ..ClientOptions::default() };
        let connect = || async { Client::connect_with(&server.url(), options.clone()).await.context("cannot connect") };
        match connections {
            Connections::Shared => Ok(vec![connect().await?; self.count]),
            Connections::PerTransfer => {
                let mut clients = Vec::with_capacity(self.count);
                for _ in 0..self.count {
                    clients.push(connect().await?);
                }
                Ok(clients)
            }
        }
    }

    /// The warm-up write before every timed batch (see `workdir::warm_up`),
    /// as large as the whole batch: that much new file data is about to be written.
    async fn warm_up(&self) -> Result<()> {
        let (scratch, total) = (self.dir.join("warm-up.tmp"), self.total());
        blocking(move || workdir::warm_up(&scratch, total)).await.context("warm-up failed")
    }

    /// N raw TCP copies at once (SHA-256 on both ends when `hashed`), each
    /// from the source to its own new file, fsynced. The honest anchor for N
    /// ferry transfers: the same bytes, the same concurrency, the same N files
    /// written and fsynced; each copy has its own connection and two threads.
    pub async fn raw(&self, hashed: bool) -> Result<BatchSample> {
        self.warm_up().await?;
        let copies: Vec<PathBuf> = (0..self.count).map(|i| self.dir.join(format!("raw-{i:03}.bin"))).collect();
        let bench_before = Usage::of(Process::Bench)?;
        let start = Instant::now();
        let mut set = JoinSet::new();
        for copy in &copies {
            let (source, copy, size) = (self.source.clone(), copy.clone(), self.size);
            set.spawn_blocking(move || raw::copy(&source, &copy, size, hashed));
        }
        let mut transfer_seconds = Vec::with_capacity(self.count);
        while let Some(joined) = set.join_next().await {
            transfer_seconds.push(joined.context("a raw copy panicked")??.as_secs_f64());
        }
        let seconds = start.elapsed().as_secs_f64();
        let bench = Usage::of(Process::Bench)?.since(bench_before);
        for copy in &copies {
            tokio::fs::remove_file(copy).await.with_context(|| format!("cannot remove {}", copy.display()))?;
        }
        Ok(BatchSample { seconds, transfer_seconds, bench, server: Usage::default(), server_peak_kib: None })
    }

    /// N uploads at once of the source to N remote paths, each up to the
    /// server's reply (after its commit). The files stay for `download`.
    pub async fn upload(&self, connections: Connections) -> Result<BatchSample> {
        let server = self.start_server().await?;
        let clients = self.clients(&server, connections).await?;
        self.warm_up().await?;
        let size = self.size;
        let sample = timed(&server, clients, |index, client| {
            let source = self.source.clone();
            async move {
                let stored = client.upload_file(&source, &remote_path(index), UploadOptions::default(), |_| {}).await?;
                ensure!(stored.size == size, "the server stored {} of {size} bytes", stored.size);
                Ok(())
            }
        })
        .await
        .context("upload batch failed")?;
        Ok(sample)
    }

    /// N downloads at once of the files `upload` stored, to N new local
    /// files, each up to its SHA-256 check, fsync and rename. Then deletes
    /// both sides' copies.
    pub async fn download(&self, connections: Connections) -> Result<BatchSample> {
        let server = self.start_server().await?;
        let clients = self.clients(&server, connections).await?;
        let first = clients.first().cloned().context("a batch of no transfers")?;
        let locals: Vec<PathBuf> = (0..self.count).map(|i| self.dir.join(format!("download-{i:03}.bin"))).collect();
        self.warm_up().await?;
        let size = self.size;
        let sample = timed(&server, clients, |index, client| {
            let local = locals[index].clone();
            async move {
                let file = client.download_file(&remote_path(index), Range::ALL, &local, false, |_| {}).await?;
                ensure!(file.size == size, "the server offered {} of {size} bytes", file.size);
                Ok(())
            }
        })
        .await
        .context("download batch failed")?;
        for (index, local) in locals.iter().enumerate() {
            let meta = tokio::fs::metadata(local).await.with_context(|| format!("{} is missing", local.display()))?;
            ensure!(meta.len() == size, "{} has {} of {size} bytes", local.display(), meta.len());
            tokio::fs::remove_file(local).await.with_context(|| format!("cannot remove {}", local.display()))?;
            first.delete(&remote_path(index)).await.context("cannot delete an uploaded file on the server")?;
        }
        Ok(sample)
    }
}

/// Runs `transfer(index, client)` for every client at once, each as its own
/// task (so they spread over the runtime's threads), with both processes'
/// CPU sampled around the batch and the server's peak RSS read after it.
async fn timed<F, Fut>(server: &Server, clients: Vec<Client>, transfer: F) -> Result<BatchSample>
where
    F: Fn(usize, Client) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let server_process = Process::Pid(server.pid());
    let (bench_before, server_before) = (Usage::of(Process::Bench)?, Usage::of(server_process)?);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        let work = transfer(index, client);
        set.spawn(async move {
            let start = Instant::now();
            work.await.with_context(|| format!("transfer {index} failed"))?;
            Ok::<_, anyhow::Error>(start.elapsed().as_secs_f64())
        });
    }
    // The first failure returns, and dropping the set aborts the others.
    let mut transfer_seconds = Vec::new();
    while let Some(joined) = set.join_next().await {
        transfer_seconds.push(joined.context("a transfer task panicked")??);
    }
    let seconds = start.elapsed().as_secs_f64();
    let (bench_after, server_after) = (Usage::of(Process::Bench)?, Usage::of(server_process)?);
    Ok(BatchSample {
        seconds,
        transfer_seconds,
        bench: bench_after.since(bench_before),
        server: server_after.since(server_before),
        server_peak_kib: Some(system::peak_rss_kib(server_process)?),
    })
}

/// The series measured for one (size, N): the raw anchor(s), then for each
/// connection mode an upload and a download series.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub raw: BatchSeries,
    /// The raw copies with SHA-256 on both ends, when asked for.
    pub raw_sha256: Option<BatchSeries>,
    pub ferry: Vec<FerrySeries>,
}

/// Upload and download batches over one connection mode.
#[derive(Debug, Clone)]
pub struct FerrySeries {
    pub connections: Connections,
    pub upload: BatchSeries,
    pub download: BatchSeries,
}

/// `runs` rounds, interleaved so that every kind sees the machine in the same
/// drift: raw, [raw + SHA-256], then upload and download for each mode.
/// `progress` prefixes the line each batch prints on stderr.
pub async fn measure(
    batch: &Batch,
    runs: u64,
    modes: &[Connections],
    with_sha256: bool,
    progress: &str,
) -> Result<Measurement> {
    let n = batch.count;
    let mut raw = BatchSeries::new(format!("raw TCP copy x{n}"));
    let mut raw_sha256 = BatchSeries::new(format!("raw + SHA-256 x{n}"));
    let mut ferry: Vec<FerrySeries> = modes
        .iter()
        .map(|&connections| FerrySeries {
            connections,
            upload: BatchSeries::new(format!("upload, {}", connections.label(n))),
            download: BatchSeries::new(format!("download, {}", connections.label(n))),
        })
        .collect();
    let log = |round: u64, series: &BatchSeries, sample: &BatchSample| {
        let times = Summary::of(&sample.transfer_seconds);
        let peak = sample.server_peak_kib.map(|kib| format!(", server peak {:.1} MiB", kib_to_mib(kib)));
        eprintln!(
            "{progress}run {round}/{runs} {:<24} {:>8.1} MB/s  {:.3} s  (per transfer {:.3}-{:.3} s{})",
            series.name,
            megabytes_per_second(batch.total(), sample.seconds),
            sample.seconds,
            times.min,
            times.max,
            peak.unwrap_or_default()
        );
    };
    for round in 1..=runs {
        let sample = batch.raw(false).await.with_context(|| format!("run {round}: {} failed", raw.name))?;
        log(round, &raw, &sample);
        raw.samples.push(sample);
        if with_sha256 {
            let sample = batch.raw(true).await.with_context(|| format!("run {round}: {} failed", raw_sha256.name))?;
            log(round, &raw_sha256, &sample);
            raw_sha256.samples.push(sample);
        }
        for series in &mut ferry {
            let sample = batch.upload(series.connections).await.with_context(|| format!("run {round}"))?;
            log(round, &series.upload, &sample);
            series.upload.samples.push(sample);
            let sample = batch.download(series.connections).await.with_context(|| format!("run {round}"))?;
            log(round, &series.download, &sample);
            series.download.samples.push(sample);
        }
    }
    Ok(Measurement { raw, raw_sha256: with_sha256.then_some(raw_sha256), ferry })
}
