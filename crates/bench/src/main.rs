//! ferry-bench: ferry's upload and download throughput next to a raw TCP
//! file-to-file copy over loopback, all measured in one run on this machine.
//!
//! Absolute figures on a VM drift from day to day; the ratio of ferry to the
//! raw copy measured minutes apart, in the same warm state, is what can be
//! compared. Hence: one process does everything, the runs are interleaved
//! (raw, upload, download, raw, ...), and every timed run is preceded by the
//! same warm-up write (see `workdir::warm_up`).
//!
//! Run through `scripts/bench.sh`, which builds `ferry` and this in release mode.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use ferry_client::{Client, ClientOptions, Range, UploadOptions};

mod batch;
mod compression;
mod concurrent;
mod json_out;
mod parallel;
mod raw;
mod recovery;
mod report;
mod s3;
mod scaling;
mod server;
mod stats;
mod system;
mod tree;
mod units;
mod workdir;

use report::{Memory, Report, Setup};
use server::Server;
use stats::{Sample, Series};
use system::{Process, Usage};
use workdir::WorkDir;

/// The same allocator as the `ferry` binary, so the client side measured here
/// behaves like `ferry put` / `ferry get`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmark ferry upload and download against a raw TCP file copy over loopback.
#[derive(Debug, Parser)]
#[command(name = "ferry-bench")]
struct Args {
    /// Test file size: bytes, or with a unit (KiB, MiB, GiB; K/M/G mean the
    /// same; kB, MB, GB are decimal).
    #[arg(long, default_value = "1GiB", value_parser = units::parse_size)]
    size: u64,
    /// Timed runs of each transfer (raw, upload, download), interleaved.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Where to create the work directory (a fresh `run-<pid>` inside it).
    /// Must be disk-backed, not tmpfs. Default: <repo>/target/bench-work.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The ferry binary. Default: `ferry` next to this executable.
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Client chunk size (upload payload bytes per message).
    #[arg(long, default_value_t = ferry_client::DEFAULT_CHUNK_SIZE, value_parser = units::parse_chunk_size)]
    chunk_size: usize,
    /// Server chunk size (`ferry serve --chunk-size`: download payload bytes per message).
    #[arg(long, default_value_t = ferry_client::DEFAULT_CHUNK_SIZE, value_parser = units::parse_chunk_size)]
    server_chunk_size: usize,
    /// Both sides let HTTP/2 size its windows from the measured
    /// bandwidth-delay product (adaptive window) instead of the fixed ones.
    #[arg(long)]
    adaptive_window: bool,
    /// Also give the results as JSON: one line on stdout, or with PATH a
    /// file (for --scaling, the input of scripts/plot-scaling.py).
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    json: Option<Option<PathBuf>>,
    /// Keep the work directory (test file, server root and log) afterwards.
    #[arg(long)]
    keep: bool,
    /// Instead of transfers: time the store's start-up recovery with this
    /// many abandoned resumable sessions (each with journaled and unjournaled
    /// bytes to truncate).
    #[arg(long)]
    recovery_sessions: Option<usize>,
    /// Instead of the main series: upload and download with no gRPC
    /// compression, gzip and zstd, on random and on text data.
    #[arg(long)]
    compression: bool,
    /// Instead of the main series: ferry over this S3-compatible endpoint
    /// against `aws s3 cp` to it (needs --s3-bucket and AWS_* credentials).
    #[arg(long, requires = "s3_bucket")]
    s3_endpoint: Option<String>,
    /// The bucket for --s3-endpoint (it must exist).
    #[arg(long)]
    s3_bucket: Option<String>,
    /// Instead of the main series: this many small files (each --tree-file-size),
    /// `ferry put -r`/`get -r` against rsync (daemon on loopback).
    #[arg(long)]
    tree: Option<usize>,
    #[arg(long, default_value = "4KiB", value_parser = units::parse_size)]
    tree_file_size: u64,
    /// With --tree: also this many large files (a mixed tree).
    #[arg(long, default_value_t = 0)]
    tree_large: usize,
    /// The size of each --tree-large file.
    #[arg(long, default_value = "64MiB", value_parser = units::parse_size)]
    tree_large_size: u64,
    /// Instead of the main series: one file (--size) downloaded over one
    /// connection and over this many at once.
    #[arg(long)]
    parallel_download: Option<usize>,
    /// Instead of the main series: one file (--size) uploaded over one
    /// connection (a resumable session, as `ferry put`) and over this many
    /// at once (a ranged session, as `ferry put --parallel`).
    #[arg(long, conflicts_with = "parallel_download")]
    parallel_upload: Option<usize>,
    /// Files at once for ferry's tree transfers.
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Instead of the main series: this many ferry uploads at once of a
    /// --size file each (to distinct remote paths), then as many downloads
    /// at once, against as many raw TCP copies at once; aggregate MB/s and
    /// the server's peak RSS per batch.
    #[arg(long, conflicts_with = "scaling", value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrent: Option<u64>,
    /// For --concurrent and --scaling: one client connection per transfer,
    /// one connection shared by all (HTTP/2 streams), or both in turn.
    #[arg(long, value_enum, default_value_t = batch::ConnectionsArg::Both)]
    connections: batch::ConnectionsArg,
    /// Instead of the main series: throughput and server peak RSS against
    /// file size (--sizes, one transfer) and concurrency (--concurrency-levels,
    /// each of --concurrency-size); markdown tables, and JSON with --json.
    #[arg(long)]
    scaling: bool,
    /// File sizes for --scaling, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = units::parse_size, default_values = ["64MiB", "256MiB", "1GiB", "4GiB"])]
    sizes: Vec<u64>,
    /// Transfers at once for --scaling, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..=4096), default_values = ["1", "2", "4", "8", "16", "32", "64"])]
    concurrency_levels: Vec<u64>,
    /// File size of each transfer in --scaling's concurrency table.
    #[arg(long, default_value = "64MiB", value_parser = units::parse_size)]
    concurrency_size: u64,
}

/// Where the test file goes on the server.
const REMOTE_PATH: &str = "bench/test-file.bin";
/// Where the resumable upload goes.
const RESUMABLE_PATH: &str = "bench/resumable.bin";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // On Ctrl-C, dropping `run` drops the server (killed) and the work dir
    // (removed); letting the signal end the process would skip both.
    let result = tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line, without a backtrace even if RUST_BACKTRACE is set.
            eprintln!("ferry-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let base = args.dir.clone().unwrap_or_else(default_work_base);
    if let Some(sessions) = args.recovery_sessions {
        return recovery::run(&base, sessions, args.runs).await;
    }
    let ferry = ferry_binary(args.ferry.as_deref())?;
    if let (Some(endpoint), Some(bucket)) = (&args.s3_endpoint, &args.s3_bucket) {
        return s3::run(&ferry, &base, endpoint, bucket, args.size, args.runs).await;
    }
    if let Some(files) = args.tree {
        return tree::run(
            &ferry,
            &base,
            files,
            args.tree_file_size,
            args.tree_large,
            args.tree_large_size,
            args.jobs,
            args.runs,
        );
    }
    if let Some(connections) = args.parallel_download {
        return parallel::download(&ferry, &base, args.size, connections.max(1), args.runs).await;
    }
    if let Some(connections) = args.parallel_upload {
        return parallel::upload(&ferry, &base, args.size, connections.max(1), args.runs).await;
    }
    if args.compression {
        return compression::run(&ferry, &base, args.size, args.runs).await;
    }
    if args.scaling {
        let options = scaling::Options {
            sizes: args.sizes,
            levels: args.concurrency_levels.iter().map(|&n| count(n)).collect::<Result<_>>()?,
            concurrency_size: args.concurrency_size,
            runs: args.runs,
            modes: args.connections.modes(),
            chunk_size: args.chunk_size,
            server_chunk_size: args.server_chunk_size,
            keep: args.keep,
            json: args.json,
        };
        return scaling::run(&ferry, &base, options).await;
    }
    if let Some(n) = args.concurrent {
        let options = concurrent::Options {
            size: args.size,
            count: count(n)?,
            runs: args.runs,
            modes: args.connections.modes(),
            chunk_size: args.chunk_size,
            server_chunk_size: args.server_chunk_size,
            keep: args.keep,
            json: args.json,
        };
        return concurrent::run(&ferry, &base, options).await;
    }
    // Declared before the server, so dropped after it: the server is killed
    // before its root is removed, on success and error alike.
    let (work, filesystem) = WorkDir::create(&base, args.size, args.keep)?;

    let test_file = work.join("test-file.bin");
    eprintln!("generating a {} test file in {}", units::describe_size(args.size), work.path().display());
    let (path, size) = (test_file.clone(), args.size);
    blocking(move || workdir::generate_test_file(&path, size)).await?;

    let (ferry_path, root, log, chunk) =
        (ferry.clone(), work.join("root"), work.join("server.log"), args.server_chunk_size);
    let config = work.join("server.toml");
    std::fs::write(&config, format!("[http2]\nadaptive_window = {}\n", args.adaptive_window))
        .context("cannot write the server's config")?;
    let server = blocking(move || {
        let storage = ["--root".as_ref(), root.as_os_str(), "--config".as_ref(), config.as_os_str()];
        Server::start_with(&ferry_path, &storage, chunk, &log)
    })
    .await?;
    let options = ClientOptions {
        chunk_size: args.chunk_size,
        http2_adaptive_window: args.adaptive_window,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&server.url(), options).await.context("cannot connect to ferry serve")?;

    let bench = Bench {
        client,
        server: Process::Pid(server.pid()),
        size: args.size,
        test_file,
        scratch: work.join("warm-up.tmp"),
        raw_copy: work.join("raw-copy.bin"),
        download_copy: work.join("download.bin"),
    };
    let [raw, raw_sha256, upload, resumable, download] = bench.run_all(args.runs).await?;
    // Peaks over the whole run, read while the server is still alive.
    let memory = Memory {
        server_peak_kib: system::peak_rss_kib(bench.server)?,
        bench_peak_kib: system::peak_rss_kib(Process::Bench)?,
    };
    drop(server);

    let setup = Setup {
        size: args.size,
        runs: usize::try_from(args.runs).context("too many runs")?,
        cpus: system::cpu_count()?,
        kernel: system::kernel_release()?,
        filesystem: filesystem.name,
        work_dir: work.path().to_owned(),
        ferry,
        chunk_size: args.chunk_size,
        server_chunk_size: args.server_chunk_size,
    };
    let report = Report { setup, raw, raw_sha256, upload, resumable, download, memory };
    report.print_table();
    if let Some(path) = &args.json {
        json_out::emit(path.as_deref(), &report.to_json())?;
    }
    Ok(())
}

/// A transfer count from the command line, as an index type.
fn count(n: u64) -> Result<usize> {
    usize::try_from(n).context("too many transfers at once")
}

/// `--ferry`, or the `ferry` built next to this executable.
fn ferry_binary(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe().context("cannot find this executable")?.with_file_name("ferry"),
    };
    ensure!(path.is_file(), "no ferry binary at {} (scripts/bench.sh builds it; or pass --ferry PATH)", path.display());
    Ok(path)
}

/// `<repo>/target/bench-work`: on the repo's disk, and ignored by git.
fn default_work_base() -> PathBuf {
    // This crate lives at <repo>/crates/bench.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    repo.canonicalize().unwrap_or(repo).join("target").join("bench-work")
}

/// Runs blocking file or socket work off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.context("a blocking task failed")?
}

/// The transfers under test and the files they use.
#[derive(Debug)]
struct Bench {
    client: Client,
    server: Process,
    size: u64,
    test_file: PathBuf,
    scratch: PathBuf,
    raw_copy: PathBuf,
    download_copy: PathBuf,
}

impl Bench {
    /// `runs` rounds of raw, raw + SHA-256, upload, download; every transfer
    /// writes a new file, so each round cleans up after itself.
    async fn run_all(&self, runs: u64) -> Result<[Series; 5]> {
        let mut raw = Series::new("raw TCP copy");
        let mut raw_sha256 = Series::new("raw + SHA-256 x2");
        let mut upload = Series::new("ferry upload");
        let mut resumable = Series::new("ferry up, resumable");
        let mut download = Series::new("ferry download");
        for round in 1..=runs {
            let label = |series: &Series| format!("run {round}/{runs} {}", series.name);
            raw.samples.push(self.timed(&label(&raw), self.raw_copy(false)).await?);
            tokio::fs::remove_file(&self.raw_copy).await.context("cannot remove the raw copy")?;
            raw_sha256.samples.push(self.timed(&label(&raw_sha256), self.raw_copy(true)).await?);
            tokio::fs::remove_file(&self.raw_copy).await.context("cannot remove the raw copy")?;

            resumable.samples.push(self.timed(&label(&resumable), self.upload_resumable()).await?);
            self.client.delete(RESUMABLE_PATH).await.context("cannot delete the resumable upload")?;
            upload.samples.push(self.timed(&label(&upload), self.upload()).await?);
            // The download reads back the file just uploaded (its digest is cached by the upload).
            download.samples.push(self.timed(&label(&download), self.download()).await?);
            self.remove_transferred_copies().await?;
        }
        Ok([raw, raw_sha256, upload, resumable, download])
    }

    /// Warm-up, then one transfer, with the CPU time and page faults of both
    /// processes sampled around it. The transfer reports its own duration, so that
    /// set-up it does not count (like the raw receiver's thread start) stays out.
    async fn timed(&self, label: &str, transfer: impl Future<Output = Result<Duration>>) -> Result<Sample> {
        let (scratch, size) = (self.scratch.clone(), self.size);
        blocking(move || workdir::warm_up(&scratch, size)).await.context("warm-up failed")?;

        let (bench_before, server_before) = (Usage::of(Process::Bench)?, Usage::of(self.server)?);
        let elapsed = transfer.await.with_context(|| format!("{label} failed"))?;
        let (bench_after, server_after) = (Usage::of(Process::Bench)?, Usage::of(self.server)?);

        let sample = Sample {
            seconds: elapsed.as_secs_f64(),
            bench: bench_after.since(bench_before),
            server: server_after.since(server_before),
        };
        eprintln!(
            "{label:<28} {:>8.1} MB/s  {:.3} s  (CPU s / minor faults: bench {:.2} / {}, server {:.2} / {})",
            units::megabytes_per_second(self.size, sample.seconds),
            sample.seconds,
            sample.bench.cpu_seconds,
            sample.bench.minor_faults,
            sample.server.cpu_seconds,
            sample.server.minor_faults
        );
        Ok(sample)
    }

    /// The raw TCP copy, with SHA-256 on both ends when `hashed`.
    async fn raw_copy(&self, hashed: bool) -> Result<Duration> {
        let (source, dest, size) = (self.test_file.clone(), self.raw_copy.clone(), self.size);
        blocking(move || raw::copy(&source, &dest, size, hashed)).await
    }

    /// Upload, up to the server's reply: it arrives after the commit's fsync.
    async fn upload(&self) -> Result<Duration> {
        let start = Instant::now();
        let file = self.client.upload_file(&self.test_file, REMOTE_PATH, UploadOptions::default(), |_| {}).await?;
        let elapsed = start.elapsed();
        ensure!(file.size == self.size, "the server stored {} of {} bytes", file.size, self.size);
        Ok(elapsed)
    }

    /// Resumable upload: a session, the bidirectional stream, a journaled
    /// checkpoint (fdatasync + journal) every 32 MiB; up to the server's reply.
    async fn upload_resumable(&self) -> Result<Duration> {
        let start = Instant::now();
        let options = UploadOptions { size: Some(self.size), ..UploadOptions::default() };
        let id = self.client.create_upload(RESUMABLE_PATH, &options).await?;
        let policy = ferry_client::RetryPolicy::default();
        let file = self.client.upload_file_resumable(&self.test_file, &id, &policy, |_| {}).await?;
        let elapsed = start.elapsed();
        ensure!(file.size == self.size, "the server stored {} of {} bytes", file.size, self.size);
        Ok(elapsed)
    }

    /// Download to a new local file, up to its SHA-256 check, fsync and rename.
    async fn download(&self) -> Result<Duration> {
        let start = Instant::now();
        let file = self.client.download_file(REMOTE_PATH, Range::ALL, &self.download_copy, false, |_| {}).await?;
        let elapsed = start.elapsed();
        ensure!(file.size == self.size, "the server offered {} of {} bytes", file.size, self.size);
        Ok(elapsed)
    }

    /// Deletes the downloaded copy (after checking its length) and the remote file.
    async fn remove_transferred_copies(&self) -> Result<()> {
        let local = tokio::fs::metadata(&self.download_copy).await.context("the downloaded copy is missing")?;
        ensure!(local.len() == self.size, "the downloaded copy has {} of {} bytes", local.len(), self.size);
        tokio::fs::remove_file(&self.download_copy).await.context("cannot remove the downloaded copy")?;
        self.client.delete(REMOTE_PATH).await.context("cannot delete the uploaded file on the server")
    }
}
