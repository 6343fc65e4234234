//! What the machine and the processes report about themselves: /proc and statfs.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::FsWord;

/// A process to ask /proc about: this one, or the server child.
#[derive(Debug, Clone, Copy)]
pub enum Process {
    Bench,
    Pid(u32),
}

impl Process {
    fn proc_file(self, name: &str) -> String {
        match self {
            Process::Bench => format!("/proc/self/{name}"),
            Process::Pid(pid) => format!("/proc/{pid}/{name}"),
        }
    }
}

/// Peak resident set size (`VmHWM`) in kB, as the kernel counts it.
pub fn peak_rss_kib(process: Process) -> Result<u64> {
    let path = process.proc_file("status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:")).context("no VmHWM line")?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse().with_context(|| format!("bad VmHWM value {kib:?} in {path}"))
}

/// What a process has used so far, all threads (exited ones included).
/// Sampled around each run to see who is CPU-bound, and who churns memory:
/// a minor fault is a page the process touched for the first time (4 KiB of
/// fresh memory the kernel had to zero and map).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    pub minor_faults: u64,
}

impl Usage {
    pub fn of(process: Process) -> Result<Self> {
        let path = process.proc_file("stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        // The command name (field 2) may hold spaces; fields after its ')' are plain.
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed stat line")?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Field 3 (state) is fields[0]: minflt is field 10, utime and stime 14 and 15.
        let number = |field: usize| -> Result<u64> {
            let value = fields.get(field - 3).with_context(|| format!("short stat line in {path}"))?;
            value.parse().with_context(|| format!("bad field {field} ({value:?}) in {path}"))
        };
        let ticks = number(14)? + number(15)?;
        Ok(Self {
            cpu_seconds: ticks as f64 / rustix::param::clock_ticks_per_second() as f64,
            minor_faults: number(10)?,
        })
    }

    /// What was used between `before` and `self`.
    pub fn since(self, before: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds - before.cpu_seconds,
            minor_faults: self.minor_faults.saturating_sub(before.minor_faults),
        }
    }
}

/// `uname -r`.
pub fn kernel_release() -> Result<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").context("cannot read the kernel release")?;
    Ok(release.trim().to_owned())
}

/// What `nproc` prints: the CPUs this process may run on.
pub fn cpu_count() -> Result<usize> {
    Ok(std::thread::available_parallelism().context("cannot count the CPUs")?.get())
}

/// The filesystem holding a path, as far as the benchmark cares.
#[derive(Debug, Clone)]
pub struct Filesystem {
    pub name: &'static str,
    pub available_bytes: u64,
}

// Magic numbers from linux/magic.h.
const EXT_SUPER_MAGIC: FsWord = 0xEF53;
const XFS_SUPER_MAGIC: FsWord = 0x5846_5342;
const BTRFS_SUPER_MAGIC: FsWord = 0x9123_683E;
const OVERLAYFS_SUPER_MAGIC: FsWord = 0x794C_7630;
const TMPFS_MAGIC: FsWord = 0x0102_1994;
const RAMFS_MAGIC: FsWord = 0x8584_58F6;

impl Filesystem {
    /// Describes the filesystem holding `path`; refuses memory-backed ones,
    /// whose "writes" never reach a disk and would flatter every receiver.
    pub fn of_disk(path: &Path) -> Result<Self> {
        let st = rustix::fs::statfs(path).with_context(|| format!("cannot statfs {}", path.display()))?;
        let name = match st.f_type {
            EXT_SUPER_MAGIC => "ext2/3/4",
            XFS_SUPER_MAGIC => "xfs",
            BTRFS_SUPER_MAGIC => "btrfs",
            OVERLAYFS_SUPER_MAGIC => "overlayfs",
            TMPFS_MAGIC | RAMFS_MAGIC => {
                bail!("{} is on tmpfs/ramfs (memory): pick a disk-backed --dir", path.display())
            }
            _ => "other",
        };
        let block = u64::try_from(st.f_bsize).context("negative filesystem block size")?;
        Ok(Self { name, available_bytes: st.f_bavail.saturating_mul(block) })
    }
}
