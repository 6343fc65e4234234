//! `--parallel-download N`: one file downloaded over one connection and over
//! N connections at once (`ferry_client::download_parallel`), next to the
//! raw TCP copy, interleaved in one run. `--parallel-upload N`: the same for
//! uploads, as `ferry put` sends them: one resumable session over one
//! connection, against a ranged session over N (`ferry_client::upload_parallel`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ferry_client::{Client, Range, RetryPolicy, UploadOptions};

use crate::server::Server;
use crate::stats::Summary;
use crate::units;
use crate::workdir::{self, WorkDir};

pub async fn download(ferry: &Path, base: &Path, size: u64, connections: usize, runs: u64) -> Result<()> {
    let (work, _) = WorkDir::create(base, size * 4, false)?;
    let source = work.join("test-file.bin");
    workdir::generate_test_file(&source, size)?;
    let server = Server::start(ferry, &work.join("root"), ferry_client::DEFAULT_CHUNK_SIZE, &work.join("server.log"))?;
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client::connect(&server.url()).await.context("cannot connect to ferry serve")?);
    }
    clients[0].upload_file(&source, "bench/parallel.bin", UploadOptions::default(), |_| {}).await?;
    let (scratch, copy, raw_copy) = (work.join("warm-up.tmp"), work.join("download.bin"), work.join("raw.bin"));
    let (mut raw, mut one, mut many) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        workdir::warm_up(&scratch, size)?;
        raw.push(crate::raw::copy(&source, &raw_copy, size, false)?.as_secs_f64());
        std::fs::remove_file(&raw_copy)?;

        workdir::warm_up(&scratch, size)?;
        let start = Instant::now();
        clients[0].download_file("bench/parallel.bin", Range::ALL, &copy, false, |_| {}).await?;
        one.push(start.elapsed().as_secs_f64());
        ensure!(std::fs::metadata(&copy)?.len() == size, "short download");
        std::fs::remove_file(&copy)?;

        workdir::warm_up(&scratch, size)?;
        let start = Instant::now();
        let policy = RetryPolicy::default();
        ferry_client::download_parallel(&clients, "bench/parallel.bin", &copy, false, &policy, |_| {}).await?;
        many.push(start.elapsed().as_secs_f64());
        ensure!(std::fs::metadata(&copy)?.len() == size, "short download");
        std::fs::remove_file(&copy)?;
        eprintln!(
            "run {run}/{runs}: raw {:.0} MB/s, 1 connection {:.0} MB/s, {connections} connections {:.0} MB/s",
            units::megabytes_per_second(size, raw[raw.len() - 1]),
            units::megabytes_per_second(size, one[one.len() - 1]),
            units::megabytes_per_second(size, many[many.len() - 1]),
        );
    }
    let rate = |v: &[f64]| units::megabytes_per_second(size, Summary::of(v).median);
    println!("{} file, median of {runs} runs, over loopback:", units::describe_size(size));
    println!("raw TCP copy             {:>8.0} MB/s", rate(&raw));
    println!("download, 1 connection   {:>8.0} MB/s  {:.2} x raw", rate(&one), rate(&one) / rate(&raw));
    println!(
        "download, {connections} connections {:>7.0} MB/s  {:.2} x raw  {:.2} x one connection",
        rate(&many),
        rate(&many) / rate(&raw),
        rate(&many) / rate(&one)
    );
    Ok(())
}

pub async fn upload(ferry: &Path, base: &Path, size: u64, connections: usize, runs: u64) -> Result<()> {
    let (work, _) = WorkDir::create(base, size * 4, false)?;
    let source = work.join("test-file.bin");
    workdir::generate_test_file(&source, size)?;
    let server = Server::start(ferry, &work.join("root"), ferry_client::DEFAULT_CHUNK_SIZE, &work.join("server.log"))?;
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client::connect(&server.url()).await.context("cannot connect to ferry serve")?);
    }
    let options = UploadOptions { size: Some(size), ..UploadOptions::default() };
    let policy = RetryPolicy::default();
    let (scratch, raw_copy) = (work.join("warm-up.tmp"), work.join("raw.bin"));
    let (mut raw, mut one, mut many) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        workdir::warm_up(&scratch, size)?;
        raw.push(crate::raw::copy(&source, &raw_copy, size, false)?.as_secs_f64());
        std::fs::remove_file(&raw_copy)?;

        workdir::warm_up(&scratch, size)?;
        let start = Instant::now();
        let id = clients[0].create_upload("bench/one.bin", &options).await?;
        let file = clients[0].upload_file_resumable(&source, &id, &policy, |_| {}).await?;
        one.push(start.elapsed().as_secs_f64());
        ensure!(file.size == size, "short upload");

        workdir::warm_up(&scratch, size)?;
        let start = Instant::now();
        let id = clients[0]
            .create_ranged_upload("bench/many.bin", &options)
            .await?
            .context("the server cannot stage ranged uploads")?;
        let file = ferry_client::upload_parallel(&clients, &source, &id, &policy, |_| {}).await?;
        many.push(start.elapsed().as_secs_f64());
        ensure!(file.size == size, "short upload");
        eprintln!(
            "run {run}/{runs}: raw {:.0} MB/s, 1 connection {:.0} MB/s, {connections} connections {:.0} MB/s",
            units::megabytes_per_second(size, raw[raw.len() - 1]),
            units::megabytes_per_second(size, one[one.len() - 1]),
            units::megabytes_per_second(size, many[many.len() - 1]),
        );
    }
    let rate = |v: &[f64]| units::megabytes_per_second(size, Summary::of(v).median);
    println!("{} file, median of {runs} runs, over loopback:", units::describe_size(size));
    println!("raw TCP copy             {:>8.0} MB/s", rate(&raw));
    println!("upload, 1 connection     {:>8.0} MB/s  {:.2} x raw", rate(&one), rate(&one) / rate(&raw));
    println!(
        "upload, {connections} connections    {:>8.0} MB/s  {:.2} x raw  {:.2} x one connection",
        rate(&many),
        rate(&many) / rate(&raw),
        rate(&many) / rate(&one)
    );
    Ok(())
}
