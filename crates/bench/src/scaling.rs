//! `--scaling`: how throughput and the server's memory grow, first with the
//! file size (one transfer at a time), then with the number of transfers at
//! once (each of `--concurrency-size`). Every point is a set of batches (see
//! `batch`): N raw TCP copies at once as the anchor, then N ferry uploads and
//! N ferry downloads at once per connection mode, each ferry batch on a fresh
//! server so that its peak RSS is its own.
//!
//! Prints two markdown tables on stdout; `--json [PATH]` gives the same rows
//! for `scripts/plot-scaling.py`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::batch::{self, Batch, BatchSeries, Connections, FerrySeries, Measurement, RSS_TARGET_MIB};
use crate::concurrent::Machine;
use crate::units::describe_size;
use crate::workdir::{self, WorkDir};
use crate::{blocking, json_out};

/// What `--scaling` was asked to do.
#[derive(Debug)]
pub struct Options {
    /// File sizes for the first table (one transfer at a time).
    pub sizes: Vec<u64>,
    /// Transfers at once for the second table.
    pub levels: Vec<usize>,
    /// File size of each transfer in the second table.
    pub concurrency_size: u64,
    pub runs: u64,
    pub modes: Vec<Connections>,
    pub chunk_size: usize,
    pub server_chunk_size: usize,
    pub keep: bool,
    /// `--json`: None = no JSON, Some(None) = stdout, Some(Some(path)) = that file.
    pub json: Option<Option<PathBuf>>,
}

/// One measured point: N transfers at once of `size` each.
#[derive(Debug)]
struct Point {
    size: u64,
    count: usize,
    measurement: Measurement,
}

pub async fn run(ferry: &Path, base: &Path, options: Options) -> Result<()> {
    // Both tables' points, without measuring the one they share twice
    // (64 MiB at concurrency 1, with the defaults).
    let mut wanted: Vec<(u64, usize)> = options.sizes.iter().map(|&size| (size, 1)).collect();
    for &count in &options.levels {
        if !wanted.contains(&(options.concurrency_size, count)) {
            wanted.push((options.concurrency_size, count));
        }
    }
    let largest = wanted.iter().map(|&(size, count)| size.saturating_mul(count as u64)).max().unwrap_or(0);
    // WorkDir checks for 3 × the largest batch: the source, the server's
    // copies and the downloads (or the warm-up file) at once.
    let (work, filesystem) = WorkDir::create(base, largest, options.keep)?;
    let source = work.join("source.bin");
    let mut source_size = None;

    let mut points = Vec::with_capacity(wanted.len());
    for (index, &(size, count)) in wanted.iter().enumerate() {
        // One source at a time, regenerated only when the size changes.
        if source_size != Some(size) {
            if source_size.is_some() {
                tokio::fs::remove_file(&source).await.context("cannot remove the previous source file")?;
            }
            eprintln!("generating a {} source file in {}", describe_size(size), work.path().display());
            let path = source.clone();
            blocking(move || workdir::generate_test_file(&path, size)).await?;
            source_size = Some(size);
        }
        let batch = Batch {
            ferry: ferry.to_owned(),
            source: source.clone(),
            size,
            count,
            chunk_size: options.chunk_size,
            server_chunk_size: options.server_chunk_size,
            dir: work.path().to_owned(),
        };
        // With one transfer, one client is one connection either way.
        let modes = if count == 1 { &[Connections::PerTransfer][..] } else { &options.modes[..] };
        let progress = format!("[{}/{}] {count} x {}: ", index + 1, wanted.len(), short_size(size));
        let measurement = batch::measure(&batch, options.runs, modes, false, &progress).await?;
        points.push(Point { size, count, measurement });
    }

    let machine = Machine::of(&work, filesystem.name, ferry)?;
    let by_size: Vec<&Point> =
        options.sizes.iter().filter_map(|&size| points.iter().find(|p| p.size == size && p.count == 1)).collect();
    let by_concurrency: Vec<&Point> = options
        .levels
        .iter()
        .filter_map(|&count| points.iter().find(|p| p.size == options.concurrency_size && p.count == count))
        .collect();
    print_tables(&machine, &options, &by_size, &by_concurrency);
    if let Some(path) = &options.json {
        let value = json!({
            "mode": "scaling",
            "mb": "10^6 bytes",
            "runs": options.runs,
            "machine": machine.to_json(),
            "chunk_size": options.chunk_size,
            "server_chunk_size": options.server_chunk_size,
            "rss_target_mib": RSS_TARGET_MIB,
            "concurrency_size_bytes": options.concurrency_size,
            "by_size": by_size.iter().flat_map(|p| rows_json(p)).collect::<Vec<_>>(),
            "by_concurrency": by_concurrency.iter().flat_map(|p| rows_json(p)).collect::<Vec<_>>(),
        });
        json_out::emit(path.as_deref(), &value)?;
    }
    Ok(())
}

fn print_tables(machine: &Machine, options: &Options, by_size: &[&Point], by_concurrency: &[&Point]) {
    println!();
    println!("ferry-bench --scaling: ferry throughput and server peak RSS against file size and concurrency");
    machine.print();
    println!(
        "  runs       {} per point, interleaved: N raw TCP copies at once, then N uploads and N downloads at once per connection mode",
        options.runs
    );
    println!("  server     a fresh `ferry serve` per ferry batch, so each peak RSS (VmHWM) is that batch's alone");
    println!(
        "  warm-up    before every batch, a scratch file of the batch's total size is written, fsynced and deleted"
    );
    println!();
    println!("### Against file size (one transfer at a time)");
    println!();
    println!(
        "| file size | upload MB/s | download MB/s | raw copy MB/s | upload ÷ raw | download ÷ raw | server peak RSS, upload (MiB) | server peak RSS, download (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for point in by_size {
        for ferry in &point.measurement.ferry {
            let cells = Cells::of(point, ferry);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                short_size(point.size),
                cells.upload,
                cells.download,
                cells.raw,
                cells.upload_vs_raw,
                cells.download_vs_raw,
                cells.upload_rss,
                cells.download_rss
            );
        }
    }
    println!();
    println!("### Against concurrency ({} per transfer)", short_size(options.concurrency_size));
    println!();
    println!(
        "| transfers at once | connections | upload MB/s | download MB/s | raw copies MB/s | upload ÷ raw | download ÷ raw | upload s per transfer | download s per transfer | server peak RSS, upload (MiB) | server peak RSS, download (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for point in by_concurrency {
        for ferry in &point.measurement.ferry {
            let cells = Cells::of(point, ferry);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                point.count,
                ferry.connections.label(point.count),
                cells.upload,
                cells.download,
                cells.raw,
                cells.upload_vs_raw,
                cells.download_vs_raw,
                transfer_seconds(&ferry.upload),
                transfer_seconds(&ferry.download),
                cells.upload_rss,
                cells.download_rss
            );
        }
    }
    println!();
    println!(
        "MB/s: aggregate (all the batch's bytes / wall time from the first start to the last finish), MB = 10^6 bytes;"
    );
    println!(
        "  median (min–max) over the runs. ÷ raw: ratio of medians to N raw TCP copies at once of the same bytes."
    );
    println!("s per transfer: each transfer's own time, median (min–max), all runs pooled.");
    println!(
        "server peak RSS: the highest VmHWM over the runs; \"over\" marks the issue's target of {RSS_TARGET_MIB} MiB exceeded."
    );
}

/// The figures of one table row, formatted.
struct Cells {
    upload: String,
    download: String,
    raw: String,
    upload_vs_raw: String,
    download_vs_raw: String,
    upload_rss: String,
    download_rss: String,
}

impl Cells {
    fn of(point: &Point, ferry: &FerrySeries) -> Self {
        let total = point.size.saturating_mul(point.count as u64);
        let raw = &point.measurement.raw;
        let ratio = |series: &BatchSeries| series.rate(total).median / raw.rate(total).median;
        Self {
            upload: rate(&ferry.upload, total),
            download: rate(&ferry.download, total),
            raw: rate(raw, total),
            upload_vs_raw: format!("{:.2}", ratio(&ferry.upload)),
            download_vs_raw: format!("{:.2}", ratio(&ferry.download)),
            upload_rss: rss(&ferry.upload),
            download_rss: rss(&ferry.download),
        }
    }
}

/// `612 (580–650)`, or just the median for one run.
fn rate(series: &BatchSeries, total: u64) -> String {
    let rate = series.rate(total);
    match series.samples.len() {
        1 => format!("{:.0}", rate.median),
        _ => format!("{:.0} ({:.0}–{:.0})", rate.median, rate.min, rate.max),
    }
}

fn transfer_seconds(series: &BatchSeries) -> String {
    let times = series.transfer_seconds();
    format!("{:.3} ({:.3}–{:.3})", times.median, times.min, times.max)
}

fn rss(series: &BatchSeries) -> String {
    match series.server_peak_mib() {
        Some(peak) if peak > RSS_TARGET_MIB => format!("{peak:.1} (over)"),
        Some(peak) => format!("{peak:.1}"),
        None => "-".to_owned(),
    }
}

/// One JSON row per connection mode of a point.
fn rows_json(point: &Point) -> Vec<Value> {
    let total = point.size.saturating_mul(point.count as u64);
    let raw = &point.measurement.raw;
    point
        .measurement
        .ferry
        .iter()
        .map(|ferry| {
            let ratio = |series: &BatchSeries| batch::round(series.rate(total).median / raw.rate(total).median, 3);
            json!({
                "size_bytes": point.size,
                "concurrency": point.count,
                "total_bytes": total,
                "connections": ferry.connections.label(point.count),
                "raw": raw.to_json(total),
                "upload": ferry.upload.to_json(total),
                "download": ferry.download.to_json(total),
                "upload_vs_raw": ratio(&ferry.upload),
                "download_vs_raw": ratio(&ferry.download),
            })
        })
        .collect()
}

/// `64 MiB`, `4 GiB`: the size alone, for table cells.
fn short_size(bytes: u64) -> String {
    let full = describe_size(bytes);
    match full.split_once(" (") {
        Some((short, _)) => short.to_owned(),
        None => full,
    }
}
