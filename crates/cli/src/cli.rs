//! Command-line definitions (clap derive). Doc comments here are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other error (refused request, local I/O error, ...)
  2  usage error (bad flags or arguments)
  3  not found (NOT_FOUND)
  4  already exists (ALREADY_EXISTS, or the local target exists without --force)
  5  permission denied (PERMISSION_DENIED, UNAUTHENTICATED)
  6  server unavailable (cannot connect, UNAVAILABLE)
  7  integrity check failed (SHA-256 mismatch, DATA_LOSS)
  130 interrupted (Ctrl-C)";

/// ferry: fast, verified, atomic file transfer over gRPC.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Server URL, for the client commands (before or after the command name).
    #[arg(long, global = true, env = "FERRY_SERVER", default_value = ferry_client::DEFAULT_SERVER)]
    pub server: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server, storing files under a local directory.
    Serve(ServeArgs),
    /// Upload a local file (or stdin, as `-`) to the server.
    Put(PutArgs),
    /// Download a file from the server (to stdout, as `-`).
    Get(GetArgs),
    /// List a directory on the server.
    Ls(LsArgs),
    /// Show a remote file's or directory's metadata.
    Stat(StatArgs),
    /// Delete a remote file or empty directory.
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory that holds the served files (created if missing).
    #[arg(long, env = "FERRY_ROOT", default_value = "./ferry-data")]
    pub root: PathBuf,
    /// Bytes per download chunk.
    #[arg(long, default_value_t = ferry_client::DEFAULT_CHUNK_SIZE, value_parser = parse_chunk_size)]
    pub chunk_size: usize,
    /// Log format.
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// An upload stream silent this long is ended (a resumable upload keeps
    /// its bytes). Bulk transfers have no whole-call deadline.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Resumable uploads untouched this long are discarded.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub upload_ttl: std::time::Duration,
    /// On SIGTERM/Ctrl-C, how long calls in flight may take to finish before
    /// they are cut (resumable uploads keep what they committed).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: std::time::Duration,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Payload bytes per message.
    #[arg(long, default_value_t = ferry_client::DEFAULT_CHUNK_SIZE, value_parser = parse_chunk_size)]
    pub chunk_size: usize,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Local file, or `-` for stdin.
    pub local: PathBuf,
    /// Remote path; defaults to the local file's name. A trailing `/` puts the
    /// file inside that remote directory.
    pub remote: Option<String>,
    /// Fail if the remote file exists instead of replacing it.
    #[arg(long)]
    pub no_clobber: bool,
    /// Upload in one stream: no session, no automatic retry, and nothing kept
    /// on the server if it fails. (Stdin is always uploaded this way.)
    #[arg(long)]
    pub no_resume: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Remote path.
    pub remote: String,
    /// Local path, an existing directory to put it in, or `-` for stdout;
    /// defaults to the remote file's name in the current directory.
    pub local: Option<PathBuf>,
    /// Replace an existing local file.
    #[arg(short, long)]
    pub force: bool,
    /// First byte to download.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Bytes to download (to the end if not given).
    #[arg(long)]
    pub length: Option<u64>,
    /// Do not keep a partial download for a later run (`.NAME.*.ferry-part`
    /// beside the target) and do not retry: a failure removes what arrived.
    #[arg(long)]
    pub no_resume: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Remote directory (the root if not given).
    #[arg(default_value = "")]
    pub path: String,
    /// List the whole tree.
    #[arg(short, long)]
    pub recursive: bool,
    /// Long format: permissions, size, mtime.
    #[arg(short, long)]
    pub long: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    /// Remote path.
    pub path: String,
    /// Print a JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remote path.
    pub path: String,
}

fn parse_chunk_size(raw: &str) -> Result<usize, String> {
    let size: usize = raw.parse().map_err(|e| format!("{e}"))?;
    if size == 0 || size > ferry_client::MAX_CHUNK_SIZE {
        return Err(format!("must be 1..={} bytes", ferry_client::MAX_CHUNK_SIZE));
    }
    Ok(size)
}
