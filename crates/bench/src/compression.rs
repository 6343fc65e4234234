//! `--compression`: is gRPC compression worth turning on? Uploads and
//! downloads of the same file with no compression, gzip and zstd, for
//! incompressible data (random bytes: media, archives, model weights) and
//! compressible data (text logs and CSV), in one run against one server.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ferry_client::{Client, ClientOptions, Compression, Range, UploadOptions};

use crate::server::Server;
use crate::stats::Summary;
use crate::system::{Process, Usage};
use crate::workdir::{self, WorkDir};
use crate::{blocking, units};

const CODECS: [(&str, Option<Compression>); 3] =
    [("none", None), ("gzip", Some(Compression::Gzip)), ("zstd", Some(Compression::Zstd))];

pub async fn run(ferry: &Path, base: &Path, size: u64, runs: u64) -> Result<()> {
    let (work, _) = WorkDir::create(base, size * 3, false)?;
    let random = work.join("random.bin");
    let text = work.join("text.csv");
    let (r, t) = (random.clone(), text.clone());
    blocking(move || workdir::generate_test_file(&r, size)).await?;
    blocking(move || write_text(&t, size)).await?;
    let (ferry, root, log) = (ferry.to_owned(), work.join("root"), work.join("server.log"));
    let server = blocking(move || Server::start(&ferry, &root, ferry_client::DEFAULT_CHUNK_SIZE, &log)).await?;
    let scratch = work.join("warm-up.tmp");
    let copy = work.join("copy.bin");

    println!(
        "gRPC compression, {} per transfer, median of {runs} runs (MB/s of file bytes; CPU s = client + server)",
        units::describe_size(size)
    );
    println!("{:<8} {:<6} {:>10} {:>8} {:>12} {:>8}", "data", "codec", "upload", "CPU s", "download", "CPU s");
    for (data, file) in [("random", &random), ("text", &text)] {
        for (name, codec) in CODECS {
            let options = ClientOptions { compression: codec, ..ClientOptions::default() };
            let client = Client::connect_with(&server.url(), options).await.context("cannot connect")?;
            let (mut up, mut up_cpu, mut down, mut down_cpu) = (vec![], vec![], vec![], vec![]);
            for _ in 0..runs {
                let (s, n) = (scratch.clone(), size);
                blocking(move || workdir::warm_up(&s, n)).await?;
                let (rate, cpu) = timed(size, server.pid(), async {
                    let stored = client.upload_file(file, "compression.bin", UploadOptions::default(), |_| {}).await?;
                    ensure!(stored.size == size, "stored {} of {size} bytes", stored.size);
                    Ok(())
                })
                .await?;
                up.push(rate);
                up_cpu.push(cpu);
                let (s, n) = (scratch.clone(), size);
                blocking(move || workdir::warm_up(&s, n)).await?;
                let (rate, cpu) = timed(size, server.pid(), async {
                    client.download_file("compression.bin", Range::ALL, &copy, true, |_| {}).await?;
                    Ok(())
                })
                .await?;
                down.push(rate);
                down_cpu.push(cpu);
                tokio::fs::remove_file(&copy).await.context("cannot remove the copy")?;
            }
            let m = |v: &[f64]| Summary::of(v).median;
            println!(
                "{data:<8} {name:<6} {:>10.1} {:>8.2} {:>12.1} {:>8.2}",
                m(&up),
                m(&up_cpu),
                m(&down),
                m(&down_cpu)
            );
        }
    }
    drop(server);
    Ok(())
}

/// MB/s and CPU seconds (this process + the server) of one transfer.
async fn timed(size: u64, server: u32, transfer: impl Future<Output = Result<()>>) -> Result<(f64, f64)> {
    let (bench0, server0) = (Usage::of(Process::Bench)?, Usage::of(Process::Pid(server))?);
    let start = Instant::now();
    transfer.await?;
    let seconds = start.elapsed().as_secs_f64();
    let (bench1, server1) = (Usage::of(Process::Bench)?, Usage::of(Process::Pid(server))?);
    let cpu = bench1.since(bench0).cpu_seconds + server1.since(server0).cpu_seconds;
    Ok((units::megabytes_per_second(size, seconds), cpu))
}

/// CSV-like log lines: timestamps, levels, hosts, counters — about 5:1 under zstd.
fn write_text(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).context("cannot create the text file")?);
    let levels = ["INFO", "WARN", "DEBUG", "ERROR"];
    let (mut written, mut i) = (0u64, 0u64);
    while written < size {
        let line = format!(
            "2026-11-22T06:{:02}:{:02}.{:03}Z,{},host-{:03},request {} took {} ms,bytes={}\n",
            (i / 60_000) % 60,
            (i / 1000) % 60,
            i % 1000,
            levels[(i % 7 % 4) as usize],
            i % 97,
            i.wrapping_mul(2_654_435_761) % 1_000_000,
            i % 1733,
            i.wrapping_mul(40_503) % 65_536
        );
        let take = (size - written).min(line.len() as u64) as usize;
        out.write_all(&line.as_bytes()[..take]).context("cannot write the text file")?;
        written += take as u64;
        i += 1;
    }
    out.into_inner().map_err(|e| e.into_error()).context("cannot flush")?.sync_all().context("cannot fsync")
}
