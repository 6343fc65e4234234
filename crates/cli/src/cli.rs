//! Command-line definitions (clap derive). Doc comments here are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How the client commands reach the server (before or after the command name).
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Server URL: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(long, global = true, env = "FERRY_SERVER", default_value = ferry_client::DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token (prefer FERRY_TOKEN or --token-file: a flag shows in `ps`).
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, global = true, env = "FERRY_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the server, besides the system's.
    #[arg(long, global = true, env = "FERRY_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    #[arg(long, global = true, env = "FERRY_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), for mutual TLS.
    #[arg(long, global = true, env = "FERRY_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the URL's host).
    #[arg(long, global = true, env = "FERRY_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// Compress messages both ways (helps only with compressible files).
    #[arg(long, global = true, env = "FERRY_COMPRESS", value_enum)]
    pub compress: Option<CompressArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressArg {
    Gzip,
    Zstd,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server, storing files under a local directory.
    Serve(Box<ServeArgs>),
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
    /// Make or hash bearer tokens for the server's config file.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new random token, and the `sha256` line for the server's config.
    New {
        /// The identity's name in the config (shown in logs).
        #[arg(long, default_value = "client")]
        name: String,
    },
    /// Read a token on stdin and print its SHA-256 for the server's config.
    Hash,
}

/// `ferry serve`. Every setting can come from a flag, its environment
/// variable, or the config file, in that order of precedence; the defaults
/// are shown in `ferry.example.toml`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (every option below, plus tokens and client identities).
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    /// [default: 127.0.0.1:50051]
    #[arg(long, env = "FERRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory that holds the served files (created if missing). [default: ./ferry-data]
    #[arg(long, env = "FERRY_ROOT", conflicts_with = "storage")]
    pub root: Option<PathBuf>,
    /// Store files in an S3-compatible bucket instead of --root:
    /// s3://BUCKET[/PREFIX]. Credentials: the standard AWS_* variables.
    #[arg(long, env = "FERRY_STORAGE")]
    pub storage: Option<String>,
    /// S3 endpoint URL, for servers other than AWS (Ceph RGW, MinIO, moto...).
    #[arg(long, env = "FERRY_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region. [default: AWS_REGION, else us-east-1]
    #[arg(long, env = "FERRY_S3_REGION")]
    pub s3_region: Option<String>,
    /// How long failing S3 requests are retried before a call gets
    /// UNAVAILABLE. [default: 30s]
    #[arg(long, env = "FERRY_S3_RETRY_TIMEOUT", value_parser = humantime::parse_duration)]
    pub s3_retry_timeout: Option<Duration>,
    /// Bytes per download chunk. [default: 1MiB]
    #[arg(long, env = "FERRY_CHUNK_SIZE", value_parser = parse_chunk_size)]
    pub chunk_size: Option<usize>,
    /// Log format. [default: human]
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// An upload stream silent this long is ended (a resumable upload keeps
    /// its bytes). Bulk transfers have no whole-call deadline. [default: 60s]
    #[arg(long, env = "FERRY_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Resumable uploads untouched this long are discarded. [default: 24h]
    #[arg(long, env = "FERRY_UPLOAD_TTL", value_parser = humantime::parse_duration)]
    pub upload_ttl: Option<Duration>,
    /// On SIGTERM/Ctrl-C, how long calls in flight may take to finish before
    /// they are cut (resumable uploads keep what they committed). [default: 30s]
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "FERRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Allow plain text (no TLS) on an address other than loopback.
    #[arg(long, env = "FERRY_INSECURE")]
    pub insecure: bool,
    /// Server certificate chain (PEM); with --tls-key, serves TLS.
    #[arg(long, env = "FERRY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "FERRY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: mutual TLS.
    #[arg(long, env = "FERRY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Time a client has to finish its TLS handshake. [default: 10s]
    #[arg(long, env = "FERRY_TLS_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Option<Duration>,
    /// Largest file accepted (e.g. 100GiB). [default: no limit]
    #[arg(long, env = "FERRY_MAX_FILE_SIZE", value_parser = parse_size)]
    pub max_file_size: Option<u64>,
    /// Total bytes of files the root may hold. [default: no limit]
    #[arg(long, env = "FERRY_QUOTA", value_parser = parse_size)]
    pub quota: Option<u64>,
    /// Free space uploads must leave on the root's filesystem. [default: 0]
    #[arg(long, env = "FERRY_MIN_FREE_SPACE", value_parser = parse_size)]
    pub min_free_space: Option<u64>,
    /// Upload streams at once. [default: 64]
    #[arg(long, env = "FERRY_MAX_CONCURRENT_UPLOADS")]
    pub max_concurrent_uploads: Option<usize>,
    /// Download streams at once. [default: 64]
    #[arg(long, env = "FERRY_MAX_CONCURRENT_DOWNLOADS")]
    pub max_concurrent_downloads: Option<usize>,
    /// Open client connections. [default: 1024]
    #[arg(long, env = "FERRY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// HTTP/2 streams per connection. [default: 128]
    #[arg(long, env = "FERRY_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// LOCAL is a directory: upload the whole tree under REMOTE, skipping
    /// files the server already has (same size and SHA-256).
    #[arg(short, long)]
    pub recursive: bool,
    /// With -r: files transferred at once.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Send the file over N connections at once, in 16 MiB pieces that the
    /// server stages and verifies as a whole (for links where one stream
    /// cannot fill the pipe). Resumable like any upload; a server whose
    /// storage cannot stage ranges (S3) gets one stream. At most 16.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16), conflicts_with_all = ["recursive", "no_resume"])]
    pub parallel: u16,
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
    /// Fetch the file over N connections at once, in 16 MiB pieces (for
    /// links where one stream cannot fill the pipe). Pieces that fail are
    /// fetched again; a partial file is not kept for a later run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64), conflicts_with_all = ["offset", "length", "recursive"])]
    pub parallel: u16,
    /// REMOTE is a directory: download the whole tree into LOCAL, skipping
    /// files that are already identical (same size and SHA-256).
    #[arg(short, long)]
    pub recursive: bool,
    /// With -r: files transferred at once.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
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
    if !(ferry_client::MIN_CHUNK_SIZE..=ferry_client::MAX_CHUNK_SIZE).contains(&size) {
        return Err(format!("must be {}..={} bytes", ferry_client::MIN_CHUNK_SIZE, ferry_client::MAX_CHUNK_SIZE));
    }
    Ok(size)
}

fn parse_size(raw: &str) -> Result<u64, String> {
    ferry_client::units::parse_size(raw)
}
