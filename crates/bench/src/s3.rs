//! `--s3-endpoint URL --s3-bucket B`: ferry over an S3-compatible server
//! against `aws s3 cp` (awscli) to the same endpoint, in one run: upload and
//! download of the same file, medians, ratios, and ferry's server RSS.
//! Credentials come from the AWS_* environment, for both.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ferry_client::{Client, Range, UploadOptions};

use crate::server::Server;
use crate::stats::Summary;
use crate::system::{self, Process};
use crate::workdir::{self, WorkDir};
use crate::{blocking, units};

pub async fn run(ferry: &Path, base: &Path, endpoint: &str, bucket: &str, size: u64, runs: u64) -> Result<()> {
    let (work, _) = WorkDir::create(base, size * 3, false)?;
    let file = work.join("s3-test-file.bin");
    let (f, n) = (file.clone(), size);
    blocking(move || workdir::generate_test_file(&f, n)).await?;
    let storage = format!("s3://{bucket}/ferry-bench");
    let args: Vec<&std::ffi::OsStr> =
        vec!["--storage".as_ref(), storage.as_ref(), "--s3-endpoint".as_ref(), endpoint.as_ref()];
    // Start-up reads one line from the child: brief enough to do in place.
    let server = Server::start_with(ferry, &args, ferry_client::DEFAULT_CHUNK_SIZE, &work.join("server.log"))?;
    let client = Client::connect(&server.url()).await.context("cannot connect to ferry serve")?;
    let scratch = work.join("warm-up.tmp");
    let copy = work.join("copy.bin");
    let (mut aws_up, mut aws_down, mut ferry_up, mut ferry_down) = (vec![], vec![], vec![], vec![]);
    for run in 1..=runs {
        let warm = |scratch: std::path::PathBuf| blocking(move || workdir::warm_up(&scratch, size));
        warm(scratch.clone()).await?;
        aws_up
            .push(timed(size, || aws(endpoint, &[file.as_os_str(), format!("s3://{bucket}/aws-copy.bin").as_ref()]))?);
        warm(scratch.clone()).await?;
        aws_down
            .push(timed(size, || aws(endpoint, &[format!("s3://{bucket}/aws-copy.bin").as_ref(), copy.as_os_str()]))?);
        std::fs::remove_file(&copy).context("cannot remove the copy")?;
        warm(scratch.clone()).await?;
        let start = Instant::now();
        let stored = client.upload_file(&file, "bench.bin", UploadOptions::default(), |_| {}).await?;
        ensure!(stored.size == size, "ferry stored {} of {size} bytes", stored.size);
        ferry_up.push(units::megabytes_per_second(size, start.elapsed().as_secs_f64()));
        warm(scratch.clone()).await?;
        let start = Instant::now();
        client.download_file("bench.bin", Range::ALL, &copy, true, |_| {}).await?;
        ferry_down.push(units::megabytes_per_second(size, start.elapsed().as_secs_f64()));
        std::fs::remove_file(&copy).context("cannot remove the copy")?;
        eprintln!(
            "run {run}/{runs}: aws up {:.1} down {:.1}, ferry up {:.1} down {:.1} MB/s",
            aws_up[aws_up.len() - 1],
            aws_down[aws_down.len() - 1],
            ferry_up[ferry_up.len() - 1],
            ferry_down[ferry_down.len() - 1]
        );
    }
    let peak = system::peak_rss_kib(Process::Pid(server.pid()))?;
    let m = |v: &[f64]| Summary::of(v).median;
    println!("S3 at {endpoint}, {}, median of {runs} runs (MB/s):", units::describe_size(size));
    println!("{:<10} {:>10} {:>10} {:>8}", "", "aws s3 cp", "ferry", "ratio");
    println!("{:<10} {:>10.1} {:>10.1} {:>8.2}", "upload", m(&aws_up), m(&ferry_up), m(&ferry_up) / m(&aws_up));
    println!(
        "{:<10} {:>10.1} {:>10.1} {:>8.2}",
        "download",
        m(&aws_down),
        m(&ferry_down),
        m(&ferry_down) / m(&aws_down)
    );
    println!("ferry server peak RSS: {:.1} MiB", units::kib_to_mib(peak));
    Ok(())
}

/// MB/s of one command.
fn timed(size: u64, run: impl FnOnce() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    run()?;
    Ok(units::megabytes_per_second(size, start.elapsed().as_secs_f64()))
}

fn aws(endpoint: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let status = Command::new("aws")
        .args(["--endpoint-url", endpoint, "s3", "cp", "--only-show-errors"])
        .args(args)
        .status()
        .context("cannot run `aws` (awscli)")?;
    ensure!(status.success(), "aws s3 cp failed: {status}");
    Ok(())
}
