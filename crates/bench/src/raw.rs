//! The anchors: a plain TCP file-to-file copy over loopback, the way `socat`
//! with 1 MiB buffers does it. Any file transfer over TCP on this machine has
//! to read a file, cross loopback and write + fsync a file; this is that and
//! nothing more, measured in the same run and state as ferry.
//!
//! The second anchor is the same copy with SHA-256 computed on both ends
//! (sender while reading, receiver while writing), as ferry's end-to-end
//! check requires: the ceiling for any verified transfer on this machine.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use sha2::Digest as _;

/// Read/write buffer on both ends.
const BUFFER: usize = 1 << 20;

/// Copies `source` to `dest` through a loopback TCP connection; returns the
/// time from connect to the receiver's fsync done.
pub fn copy(source: &Path, dest: &Path, expected: u64, hashed: bool) -> Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the raw receiver")?;
    let addr = listener.local_addr().context("cannot read the raw receiver's address")?;
    let dest = dest.to_owned();
    let receiver = thread::Builder::new()
        .name("raw-receiver".into())
        .spawn(move || receive(&listener, &dest, hashed))
        .context("cannot start the raw receiver")?;

    let source = File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    let start = Instant::now();
    // If sending fails the receiver may be stuck in accept(); it is left
    // detached rather than joined, and the error ends the benchmark.
    send(source, addr, hashed).context("raw sender failed")?;
    let (received, done) = receiver.join().map_err(|_| anyhow!("the raw receiver panicked"))??;
    ensure!(received == expected, "raw copy moved {received} of {expected} bytes");
    Ok(done.duration_since(start))
}

/// Connects, streams the file, and half-closes so the receiver sees the end.
fn send(mut source: File, addr: SocketAddr, hashed: bool) -> Result<()> {
    let mut socket = TcpStream::connect(addr).context("cannot connect")?;
    let mut buf = vec![0u8; BUFFER];
    let mut hasher = sha2::Sha256::new();
    loop {
        let n = source.read(&mut buf).context("cannot read the test file")?;
        if n == 0 {
            break;
        }
        if hashed {
            hasher.update(&buf[..n]);
        }
        socket.write_all(&buf[..n]).context("cannot write to the socket")?;
    }
    std::hint::black_box(hasher.finalize());
    socket.shutdown(Shutdown::Write).context("cannot shut down the socket")
}

/// Accepts one connection and writes everything it carries to a new file,
/// fsynced; returns the bytes written and when the fsync finished.
fn receive(listener: &TcpListener, dest: &Path, hashed: bool) -> Result<(u64, Instant)> {
    let (mut socket, _) = listener.accept().context("raw receiver cannot accept")?;
    let mut file = File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut buf = vec![0u8; BUFFER];
    let mut received = 0u64;
    let mut hasher = sha2::Sha256::new();
    loop {
        let n = socket.read(&mut buf).context("raw receiver cannot read the socket")?;
        if n == 0 {
            break;
        }
        if hashed {
            hasher.update(&buf[..n]);
        }
        file.write_all(&buf[..n]).with_context(|| format!("cannot write {}", dest.display()))?;
        received += n as u64;
    }
    file.sync_all().with_context(|| format!("cannot fsync {}", dest.display()))?;
    std::hint::black_box(hasher.finalize());
    Ok((received, Instant::now()))
}
