//! `--concurrent N`: N ferry uploads at once, then N downloads at once, each
//! of `--size` (the case: 64 × 64 MiB), against N raw TCP copies at
//! once of the same bytes, plain and with SHA-256 on both ends, all in one
//! run. Reports the aggregate rate, each transfer's time, and the server's
//! peak RSS per batch against the 256 MiB target.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Value, json};

use crate::batch::{self, Batch, BatchSeries, Connections, Measurement, RSS_TARGET_MIB};
use crate::system::{self, Process};
use crate::units::{describe_size, kib_to_mib};
use crate::workdir::{self, WorkDir};
use crate::{blocking, json_out};

/// What `--concurrent` was asked to do.
#[derive(Debug)]
pub struct Options {
    pub size: u64,
    pub count: usize,
    pub runs: u64,
    pub modes: Vec<Connections>,
    pub chunk_size: usize,
    pub server_chunk_size: usize,
    pub keep: bool,
    /// `--json`: None = no JSON, Some(None) = stdout, Some(Some(path)) = that file.
    pub json: Option<Option<PathBuf>>,
}

/// The machine and the places a run used, for the report's header and JSON.
#[derive(Debug)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub filesystem: &'static str,
    pub work_dir: PathBuf,
    pub ferry: PathBuf,
}

impl Machine {
    pub fn of(work: &WorkDir, filesystem: &'static str, ferry: &Path) -> Result<Self> {
        Ok(Self {
            cpus: system::cpu_count()?,
            kernel: system::kernel_release()?,
            filesystem,
            work_dir: work.path().to_owned(),
            ferry: ferry.to_owned(),
        })
    }

    pub fn print(&self) {
        println!("  machine    nproc {}, kernel {}", self.cpus, self.kernel);
        println!("  work dir   {} ({})", self.work_dir.display(), self.filesystem);
        println!("  ferry      {}", self.ferry.display());
    }

    pub fn to_json(&self) -> Value {
        json!({ "nproc": self.cpus, "kernel": self.kernel, "filesystem": self.filesystem })
    }
}

pub async fn run(ferry: &Path, base: &Path, options: Options) -> Result<()> {
    let total = options.size.saturating_mul(options.count as u64);
    // WorkDir checks for 3 × this: at worst the server's N copies, the N
    // downloads (or the warm-up file) and the source are on disk at once.
    let (work, filesystem) = WorkDir::create(base, total, options.keep)?;
    let source = work.join("source.bin");
    eprintln!("generating a {} source file in {}", describe_size(options.size), work.path().display());
    let (path, size) = (source.clone(), options.size);
    blocking(move || workdir::generate_test_file(&path, size)).await?;

    let batch = Batch {
        ferry: ferry.to_owned(),
        source,
        size: options.size,
        count: options.count,
        chunk_size: options.chunk_size,
        server_chunk_size: options.server_chunk_size,
        dir: work.path().to_owned(),
    };
    // With one transfer, one client is one connection either way: measure it once.
    let modes = if options.count == 1 { &[Connections::PerTransfer][..] } else { &options.modes[..] };
    let measurement = batch::measure(&batch, options.runs, modes, true, "").await?;
    let bench_peak_kib = system::peak_rss_kib(Process::Bench)?;
    let machine = Machine::of(&work, filesystem.name, ferry)?;
    let report = Report { machine, batch, runs: options.runs, measurement, bench_peak_kib };
    report.print();
    if let Some(path) = &options.json {
        json_out::emit(path.as_deref(), &report.to_json())?;
    }
    Ok(())
}

/// Everything one `--concurrent` run measured.
#[derive(Debug)]
struct Report {
    machine: Machine,
    batch: Batch,
    runs: u64,
    measurement: Measurement,
    bench_peak_kib: u64,
}

impl Report {
    fn total(&self) -> u64 {
        self.batch.total()
    }

    /// Every series, in table order.
    fn series(&self) -> Vec<&BatchSeries> {
        let m = &self.measurement;
        let mut all = vec![&m.raw];
        all.extend(&m.raw_sha256);
        for ferry in &m.ferry {
            all.extend([&ferry.upload, &ferry.download]);
        }
        all
    }

    fn ratio(&self, series: &BatchSeries, anchor: Option<&BatchSeries>) -> f64 {
        match anchor {
            Some(anchor) => series.rate(self.total()).median / anchor.rate(self.total()).median,
            None => f64::NAN,
        }
    }

    fn print(&self) {
        let (n, size) = (self.batch.count, self.batch.size);
        println!();
        println!(
            "ferry-bench --concurrent: {n} transfers at once of {} each, {} bytes per batch",
            describe_size(size),
            self.total()
        );
        self.machine.print();
        println!(
            "  server     a fresh `ferry serve` per ferry batch (so its VmHWM is that batch's alone), with {}",
            self.batch.server_limits().join(" ")
        );
        println!("  uploads    one local source file (in the page cache) to {n} distinct remote paths");
        println!("  downloads  those {n} remote files to {n} distinct local files; then both sides are deleted");
        println!(
            "  raw        {n} raw TCP copies at once of the same source to {n} distinct files (own connection, 1 MiB buffers, fsync)"
        );
        println!(
            "  runs       {} round(s), each: raw, raw + SHA-256, then upload and download per connection mode",
            self.runs
        );
        println!(
            "  warm-up    before every batch, a scratch file of the batch's total size is written, fsynced and deleted"
        );
        println!(
            "  MB/s       aggregate: the batch's bytes / wall time from the first start to the last finish; MB = 10^6 bytes"
        );
        println!();
        println!(
            "{:<26} {:^27} {:^13} {:^26} {:^15} {:>9}",
            "", "aggregate MB/s", "÷ median of", "per-transfer s", "CPU s median", "server"
        );
        println!(
            "{:<26} {:>9} {:>8} {:>8} {:>6} {:>6} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9}",
            "batch", "median", "min", "max", "raw", "+SHA", "min", "median", "max", "bench", "server", "peak MiB"
        );
        let m = &self.measurement;
        for series in self.series() {
            let rate = series.rate(self.total());
            let times = series.transfer_seconds();
            let peak = series.server_peak_mib().map_or_else(|| "-".to_owned(), |p| format!("{p:.1}"));
            println!(
                "{:<26} {:>9.1} {:>8.1} {:>8.1} {:>6.2} {:>6.2} {:>8.3} {:>8.3} {:>8.3} {:>7.2} {:>7.2} {:>9}",
                series.name,
                rate.median,
                rate.min,
                rate.max,
                self.ratio(series, Some(&m.raw)),
                self.ratio(series, m.raw_sha256.as_ref()),
                times.min,
                times.median,
                times.max,
                series.bench_cpu().median,
                series.server_cpu().median,
                peak
            );
        }
        println!();
        println!("per run, aggregate MB/s (server peak RSS MiB), in run order:");
        for series in self.series() {
            let peaks = series.server_peaks_mib();
            let runs: Vec<String> = series
                .rates(self.total())
                .iter()
                .enumerate()
                .map(|(i, rate)| match peaks.get(i) {
                    Some(peak) => format!("{rate:>8.1} ({peak:.1})"),
                    None => format!("{rate:>8.1}"),
                })
                .collect();
            println!("  {:<26}{}", series.name, runs.join(" "));
        }
        println!();
        println!("server peak RSS (VmHWM, highest over the runs) against the target of {RSS_TARGET_MIB} MiB:");
        for ferry in &m.ferry {
            for series in [&ferry.upload, &ferry.download] {
                if let Some(peak) = series.server_peak_mib() {
                    let verdict = if peak <= RSS_TARGET_MIB { "met" } else { "NOT MET" };
                    println!("  {:<26} {peak:>8.1} MiB  {verdict}", series.name);
                }
            }
        }
        println!("bench peak RSS (VmHWM, client side, whole run): {:.1} MiB", kib_to_mib(self.bench_peak_kib));
        println!("transfer s: each transfer's own time, all runs pooled; CPU s: medians per batch");
        println!(
            "÷ median of raw / +SHA: this median over the raw copies' median / over the raw copies' with SHA-256 on both ends"
        );
    }

    fn to_json(&self) -> Value {
        let (total, m) = (self.total(), &self.measurement);
        json!({
            "mode": "concurrent",
            "mb": "10^6 bytes",
            "size_bytes": self.batch.size,
            "concurrency": self.batch.count,
            "total_bytes": total,
            "runs": self.runs,
            "machine": self.machine.to_json(),
            "chunk_size": self.batch.chunk_size,
            "server_chunk_size": self.batch.server_chunk_size,
            "server_args": self.batch.server_limits(),
            "rss_target_mib": RSS_TARGET_MIB,
            "raw": m.raw.to_json(total),
            "raw_sha256": m.raw_sha256.as_ref().map(|s| s.to_json(total)),
            "ferry": m.ferry.iter().map(|f| json!({
                "connections": f.connections.label(self.batch.count),
                "upload": f.upload.to_json(total),
                "download": f.download.to_json(total),
                "upload_vs_raw": batch::round(self.ratio(&f.upload, Some(&m.raw)), 3),
                "download_vs_raw": batch::round(self.ratio(&f.download, Some(&m.raw)), 3),
            })).collect::<Vec<_>>(),
            "bench_peak_rss_mib": batch::round(kib_to_mib(self.bench_peak_kib), 1),
        })
    }
}
