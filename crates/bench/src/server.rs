//! The `ferry serve` child process under test.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail};

/// A running `ferry serve`.
#[derive(Debug)]
pub struct Server {
    process: KillOnDrop,
    addr: SocketAddr,
    /// Held open so a late write to stdout never meets a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

/// Owns the child process: killed and reaped on drop, so an error or a panic
/// anywhere in the benchmark (even during start-up) never leaves a server behind.
#[derive(Debug)]
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SIGKILL: nothing of the server's state is needed after the run, and
        // a server stuck mid-call must not hang the benchmark's exit.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Starts `ferry serve` on a free loopback port with its log in `log`,
    /// and waits for the one `listening on ADDR` line it prints once bound.
    pub fn start(ferry: &Path, root: &Path, chunk_size: usize, log: &Path) -> Result<Self> {
        Self::start_with(ferry, &["--root".as_ref(), root.as_os_str()], chunk_size, log)
    }

    /// Starts `ferry serve` with `storage` arguments (`--root DIR`, or
    /// `--storage s3://… --s3-endpoint …`).
    pub fn start_with(ferry: &Path, storage: &[&std::ffi::OsStr], chunk_size: usize, log: &Path) -> Result<Self> {
        let log_file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(ferry)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(storage)
            .args(["--chunk-size", &chunk_size.to_string()])
            // The log level changes throughput: measure the default, whatever RUST_LOG says here.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", ferry.display()))?;
        let mut process = KillOnDrop(child);
        let stdout = process.0.stdout.take().context("no pipe to the server's stdout")?;
        let mut stdout = BufReader::new(stdout);
        let addr = read_address(&mut stdout, log)?;
        Ok(Self { process, addr, _stdout: stdout })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }
}

/// Reads the `listening on ADDR` line; EOF means the server exited, and its
/// log says why.
fn read_address(stdout: &mut impl BufRead, log: &Path) -> Result<SocketAddr> {
    let mut line = String::new();
    if stdout.read_line(&mut line).context("cannot read the server's stdout")? == 0 {
        bail!("ferry serve exited before listening; the end of its log:\n{}", log_tail(log));
    }
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("ferry serve printed {:?}, expected `listening on ADDR`", line.trim()))?;
    addr.parse().with_context(|| format!("bad address {addr:?} from ferry serve"))
}

/// The last lines of the server's log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read it: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    match lines.len() {
        0 => "(empty)".to_owned(),
        n => lines[n.saturating_sub(20)..].join("\n"),
    }
}
