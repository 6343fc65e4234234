//! The benchmark's work directory, its test file, and the warm-up write.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::system::Filesystem;
use crate::units::describe_size;

/// Buffer size for generating and warm-up writes: large enough that syscall
/// cost is negligible, small enough to stay out of the RSS figures.
const WRITE_BUFFER: usize = 1 << 20;

/// A fresh directory of its own under `--dir` (`run-<pid>`), so concurrent or
/// kept runs never clash; removed on drop unless kept.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// Creates `base/run-<pid>` after checking the disk can hold the run:
    /// the test file, the scratch file and a transferred copy at once, plus a
    /// second copy while upload and download overlap (test, remote, local).
    pub fn create(base: &Path, size: u64, keep: bool) -> Result<(Self, Filesystem)> {
        std::fs::create_dir_all(base).with_context(|| format!("cannot create {}", base.display()))?;
        let filesystem = Filesystem::of_disk(base)?;
        let needed = size.saturating_mul(3).saturating_add(64 << 20);
        ensure!(
            filesystem.available_bytes >= needed,
            "{} has {} free; this run needs about {}",
            base.display(),
            describe_size(filesystem.available_bytes),
            describe_size(needed)
        );
        let path = base.join(format!("run-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok((Self { path, keep }, filesystem))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept the work dir {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove the work dir {}: {e}", self.path.display());
        }
    }
}

/// xorshift64: fast, and its output is incompressible for any layer that
/// might compress or deduplicate (virtual disk, filesystem) — unlike zeros.
#[derive(Debug)]
struct XorShift64(u64);

impl XorShift64 {
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
    }
}

/// Writes `size` pseudo-random bytes to `path`, then fsyncs so that its
/// writeback cannot overlap the first timed run. The file stays in the page
/// cache, so every sender reads it from memory alike.
pub fn generate_test_file(path: &Path, size: u64) -> Result<()> {
    let mut rng = XorShift64(0x9E37_79B9_7F4A_7C15);
    write_file(path, size, |buf| rng.fill(buf))
}

/// Writes, fsyncs and deletes a scratch file of `size` bytes, right before a
/// timed run. This VM hands idle memory back to its host within seconds, and
/// writing new file data into memory the guest must fault back in is 3–7×
/// slower; this puts every run (raw and ferry alike) in the same warm state.
pub fn warm_up(path: &Path, size: u64) -> Result<()> {
    let mut rng = XorShift64(0x2545_F491_4F6C_DD1D);
    // Fill the buffer once and write it over and over: content need only be
    // non-zero, and regenerating it would just burn CPU between runs.
    let mut filled = false;
    write_file(path, size, |buf| {
        if !filled {
            rng.fill(buf);
            filled = true;
        }
    })?;
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))
}

/// Creates `path` and writes `size` bytes in `WRITE_BUFFER` pieces, each
/// prepared by `fill` in place, then fsyncs it.
fn write_file(path: &Path, size: u64, mut fill: impl FnMut(&mut [u8])) -> Result<()> {
    let mut file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut buf = vec![0u8; WRITE_BUFFER];
    let mut remaining = size;
    while remaining > 0 {
        let chunk = &mut buf[..remaining.min(WRITE_BUFFER as u64) as usize];
        fill(chunk);
        file.write_all(chunk).with_context(|| format!("cannot write {}", path.display()))?;
        remaining -= chunk.len() as u64;
    }
    file.sync_all().with_context(|| format!("cannot fsync {}", path.display()))
}
