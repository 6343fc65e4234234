//! The printed table and the optional JSON line.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::stats::{Series, Summary};
use crate::units::{describe_size, kib_to_mib};

/// How the run was set up, and on what.
#[derive(Debug)]
pub struct Setup {
    pub size: u64,
    pub runs: usize,
    pub cpus: usize,
    pub kernel: String,
    pub filesystem: &'static str,
    pub work_dir: PathBuf,
    pub ferry: PathBuf,
    pub chunk_size: usize,
    pub server_chunk_size: usize,
}

/// Peak resident set sizes (`VmHWM`), in kB.
#[derive(Debug)]
pub struct Memory {
    pub server_peak_kib: u64,
    pub bench_peak_kib: u64,
}

/// Everything measured.
#[derive(Debug)]
pub struct Report {
    pub setup: Setup,
    pub raw: Series,
    /// The raw copy with SHA-256 on both ends: the ceiling for a verified transfer.
    pub raw_sha256: Series,
    pub upload: Series,
    /// The same upload through a resumable session.
    pub resumable: Series,
    pub download: Series,
    pub memory: Memory,
}

impl Report {
    fn ratio_to_raw(&self, series: &Series) -> f64 {
        series.rate(self.setup.size).median / self.raw.rate(self.setup.size).median
    }

    fn ratio_to_raw_sha256(&self, series: &Series) -> f64 {
        series.rate(self.setup.size).median / self.raw_sha256.rate(self.setup.size).median
    }

    pub fn print_table(&self) {
        let setup = &self.setup;
        println!();
        println!("ferry-bench: ferry vs a raw TCP file copy over loopback, measured in the same run");
        println!("  machine    nproc {}, kernel {}", setup.cpus, setup.kernel);
        println!("  work dir   {} ({})", setup.work_dir.display(), setup.filesystem);
        println!("  ferry      {}", setup.ferry.display());
        println!("  file       {}, pseudo-random (incompressible)", describe_size(setup.size));
        println!(
            "  runs       {} of each, interleaved: raw, raw + SHA-256, resumable upload, upload, download, raw, ...",
            setup.runs
        );
        println!("  warm-up    before every run, a scratch file of the same size is written, fsynced and deleted");
        println!(
            "  chunks     client (upload) {} bytes, server (download) {} bytes",
            setup.chunk_size, setup.server_chunk_size
        );
        println!("  MB/s       MB = 10^6 bytes; each run ends when the receiver's fsync is done");
        println!();
        println!(
            "{:<16} {:>11} {:>8} {:>8} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "", "MB/s", "", "", "vs raw", "vs raw", "time", "CPU s", "CPU s", "faults", "faults"
        );
        println!(
            "{:<16} {:>11} {:>8} {:>8} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "transfer", "median", "min", "max", "", "+SHA", "s", "bench", "server", "bench", "server"
        );
        for series in [&self.raw, &self.raw_sha256, &self.upload, &self.resumable, &self.download] {
            self.print_row(series);
        }
        println!();
        println!("per run, MB/s in run order:");
        for series in [&self.raw, &self.raw_sha256, &self.upload, &self.resumable, &self.download] {
            let rates: Vec<String> = series.rates(setup.size).iter().map(|r| format!("{r:>8.1}")).collect();
            println!("  {:<16}{}", series.name, rates.join(" "));
        }
        println!();
        println!("server peak RSS (VmHWM of ferry serve)   {:>8.1} MiB", kib_to_mib(self.memory.server_peak_kib));
        println!(
            "bench peak RSS (VmHWM, client side)      {:>8.1} MiB  (includes the raw copy's and warm-up's 1 MiB buffers)",
            kib_to_mib(self.memory.bench_peak_kib)
        );
        println!("time, CPU s and faults: medians per run; faults are minor page faults (4 KiB of fresh memory each)");
        println!("the raw copies run both ends in the bench process (the server idles)");
        println!("vs raw: median / raw copy median; vs raw +SHA: median / (raw copy with SHA-256 on both ends) median");
    }

    fn print_row(&self, series: &Series) {
        let rate = series.rate(self.setup.size);
        println!(
            "{:<16} {:>11.1} {:>8.1} {:>8.1} {:>6.2} {:>7.2} {:>7.3} {:>9.2} {:>9.2} {:>9.0} {:>9.0}",
            series.name,
            rate.median,
            rate.min,
            rate.max,
            self.ratio_to_raw(series),
            self.ratio_to_raw_sha256(series),
            series.seconds().median,
            series.bench_cpu().median,
            series.server_cpu().median,
            series.bench_faults().median,
            series.server_faults().median,
        );
    }

    /// One JSON object with the same figures, for scripts.
    pub fn to_json(&self) -> Value {
        let setup = &self.setup;
        let series = |s: &Series| {
            json!({
                "mb_per_s": summary_json(&s.rate(setup.size)),
                "runs_mb_per_s": s.rates(setup.size).into_iter().map(|r| round(r, 1)).collect::<Vec<_>>(),
                "seconds_median": round(s.seconds().median, 3),
                "vs_raw": round(self.ratio_to_raw(s), 3),
                "vs_raw_sha256": round(self.ratio_to_raw_sha256(s), 3),
                "cpu_s_bench_median": round(s.bench_cpu().median, 2),
                "cpu_s_server_median": round(s.server_cpu().median, 2),
                "minor_faults_bench_median": s.bench_faults().median.round() as u64,
                "minor_faults_server_median": s.server_faults().median.round() as u64,
            })
        };
        json!({
            "mb": "10^6 bytes",
            "size_bytes": setup.size,
            "runs": setup.runs,
            "nproc": setup.cpus,
            "kernel": setup.kernel,
            "filesystem": setup.filesystem,
            "chunk_size": setup.chunk_size,
            "server_chunk_size": setup.server_chunk_size,
            "raw": series(&self.raw),
            "raw_sha256": series(&self.raw_sha256),
            "upload": series(&self.upload),
            "upload_resumable": series(&self.resumable),
            "download": series(&self.download),
            "server_peak_rss_mib": round(kib_to_mib(self.memory.server_peak_kib), 1),
            "bench_peak_rss_mib": round(kib_to_mib(self.memory.bench_peak_kib), 1),
        })
    }
}

fn summary_json(summary: &Summary) -> Value {
    json!({ "median": round(summary.median, 1), "min": round(summary.min, 1), "max": round(summary.max, 1) })
}

/// Rounds for the JSON line: more digits than this are noise (CPU times come
/// in 10 ms ticks) and only make the line harder to read.
fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}
