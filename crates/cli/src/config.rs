//! `ferry serve`'s settings: the TOML config file, merged with flags and
//! environment variables (which win), validated into [`ServeSettings`].
//!
//! The file's schema is `ferry.example.toml` at the repository root; a test
//! parses that file, so the example cannot drift from the code. Unknown keys
//! are errors: a misspelt limit must not silently do nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_server::{AuthOptions, Grant, Limits, Permission, Scope, ServerOptions, TlsOptions};
use serde::Deserialize;

use crate::cli::{LogFormat, ServeArgs};

/// The config file. Every field is optional; see `ferry.example.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    listen: Option<SocketAddr>,
    root: Option<PathBuf>,
    /// `s3://BUCKET[/PREFIX]` instead of `root`.
    storage: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_retry_timeout: Option<Interval>,
    chunk_size: Option<Size>,
    log_format: Option<LogFormat>,
    idle_timeout: Option<Interval>,
    upload_ttl: Option<Interval>,
    shutdown_grace: Option<Interval>,
    metrics_listen: Option<SocketAddr>,
    insecure: Option<bool>,
    tls: Option<TlsSection>,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    http2: Http2Section,
    #[serde(default)]
    tokens: Vec<TokenSection>,
    #[serde(default)]
    clients: Vec<ClientSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    handshake_timeout: Option<Interval>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_file_size: Option<Size>,
    quota: Option<Size>,
    min_free_space: Option<Size>,
    max_concurrent_uploads: Option<usize>,
    max_concurrent_downloads: Option<usize>,
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http2Section {
    max_frame_size: Option<Size>,
    stream_window: Option<Size>,
    connection_window: Option<Size>,
    adaptive_window: Option<bool>,
    max_message_size: Option<Size>,
    max_concurrent_streams: Option<u32>,
    max_local_reset_streams: Option<usize>,
    max_header_list_size: Option<Size>,
    keepalive_interval: Option<Interval>,
    keepalive_timeout: Option<Interval>,
    tcp_keepalive: Option<Interval>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSection {
    name: String,
    /// Hex SHA-256 of the token (`ferry token new` prints it).
    sha256: String,
    scopes: Vec<ScopeSection>,
    requests_per_second: Option<f64>,
    bytes_per_second: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientSection {
    /// A DNS or URI subject alternative name of the client certificate.
    name: String,
    scopes: Vec<ScopeSection>,
    requests_per_second: Option<f64>,
    bytes_per_second: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeSection {
    /// A path prefix; "" or "/" is everything.
    prefix: String,
    allow: Vec<String>,
}

/// A byte size: a number, or a string such as "10GiB".
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self, key: &str) -> anyhow::Result<u64> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(raw) => ferry_client::units::parse_size(raw).map_err(|e| anyhow::anyhow!("{key}: {e}")),
        }
    }
}

/// A duration written as "30s", "5m", "24h".
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
struct Interval(String);

impl Interval {
    fn duration(&self, key: &str) -> anyhow::Result<Duration> {
        humantime::parse_duration(&self.0).with_context(|| format!("{key}: {:?} is not a duration", self.0))
    }
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

/// Where the files live.
#[derive(Debug)]
pub enum Storage {
    Local(PathBuf),
    S3(ferry_store::s3::S3Config),
}

/// Everything `ferry serve` runs with.
#[derive(Debug)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub storage: Storage,
    pub chunk_size: usize,
    pub log_format: LogFormat,
    pub metrics_listen: Option<SocketAddr>,
    pub server: ServerOptions,
}

/// Flags and environment first, then the file, then the defaults.
pub fn resolve(args: ServeArgs, file: ConfigFile) -> anyhow::Result<ServeSettings> {
    let defaults = ServerOptions::default();
    let limits_default = Limits::default();
    let duration = |flag: Option<Duration>, value: &Option<Interval>, key: &str, default: Duration| match flag {
        Some(d) => Ok(d),
        None => value.as_ref().map_or(Ok(default), |v| v.duration(key)),
    };
    let size = |flag: Option<u64>, value: &Option<Size>, key: &str| match flag {
        Some(n) => Ok(Some(n)),
        None => value.as_ref().map(|v| v.bytes(key)).transpose(),
    };
    let limits = &file.limits;
    let http2 = &file.http2;

    let chunk_size = match (args.chunk_size, &file.chunk_size) {
        (Some(n), _) => n,
        (None, Some(s)) => {
            let n = usize::try_from(s.bytes("chunk_size")?).unwrap_or(usize::MAX);
            if n == 0 || n > ferry_client::MAX_CHUNK_SIZE {
                bail!("chunk_size must be 1..={} bytes", ferry_client::MAX_CHUNK_SIZE);
            }
            n
        }
        (None, None) => ferry_client::DEFAULT_CHUNK_SIZE,
    };
    let positive = |n: usize, key: &str| if n == 0 { bail!("{key} must be at least 1") } else { Ok(n) };
    let limits = Limits {
        max_file_size: size(args.max_file_size, &limits.max_file_size, "limits.max_file_size")?,
        quota_bytes: size(args.quota, &limits.quota, "limits.quota")?,
        min_free_bytes: size(args.min_free_space, &limits.min_free_space, "limits.min_free_space")?.unwrap_or(0),
        max_concurrent_uploads: positive(
            args.max_concurrent_uploads
                .or(limits.max_concurrent_uploads)
                .unwrap_or(limits_default.max_concurrent_uploads),
            "limits.max_concurrent_uploads",
        )?,
        max_concurrent_downloads: positive(
            args.max_concurrent_downloads
                .or(limits.max_concurrent_downloads)
                .unwrap_or(limits_default.max_concurrent_downloads),
            "limits.max_concurrent_downloads",
        )?,
        max_connections: positive(
            args.max_connections.or(limits.max_connections).unwrap_or(limits_default.max_connections),
            "limits.max_connections",
        )?,
    };

    let tls = tls_options(&args, file.tls.as_ref())?;
    let auth = AuthOptions {
        tokens: file.tokens.iter().map(token_rule).collect::<anyhow::Result<_>>()?,
        clients: file
            .clients
            .iter()
            .map(|c| {
                Ok((c.name.clone(), grant(&c.name, &c.scopes, c.requests_per_second, c.bytes_per_second.as_ref())?))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if !auth.clients.is_empty() && tls.as_ref().is_none_or(|t| t.client_ca_pem.is_none()) {
        bail!("[[clients]] identities need mutual TLS: set tls.client_ca (--tls-client-ca)");
    }

    let listen = args.listen.or(file.listen).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051)));
    let insecure = args.insecure || file.insecure.unwrap_or(false);
    if !listen.ip().is_loopback() && tls.is_none() && !insecure {
        bail!(
            "refusing to serve plain text on {listen}, beyond loopback: configure TLS (--tls-cert, --tls-key) \
             or accept the risk with --insecure"
        );
    }

    let header_list = size(None, &http2.max_header_list_size, "http2.max_header_list_size")?;
    let as_u32 = |value: Option<u64>, key: &str, default: u32| match value {
        Some(n) => u32::try_from(n).with_context(|| format!("{key} is too large")),
        None => Ok(default),
    };
    // HTTP/2 bounds a frame at 16 KiB..16 MiB - 1, and a window at 2^31 - 1.
    let frame = as_u32(
        size(None, &http2.max_frame_size, "http2.max_frame_size")?,
        "http2.max_frame_size",
        defaults.http2_max_frame_size,
    )?;
    if !(16 * 1024..=(16 << 20) - 1).contains(&frame) {
        bail!("http2.max_frame_size must be 16KiB..16MiB-1");
    }
    let window = |key: &str, value: &Option<Size>, default: u32| -> anyhow::Result<u32> {
        let n = as_u32(size(None, value, key)?, key, default)?;
        if !(65_535..=i32::MAX as u32).contains(&n) {
            bail!("{key} must be 65535..2147483647 bytes");
        }
        Ok(n)
    };
    let stream_window = window("http2.stream_window", &http2.stream_window, defaults.http2_stream_window)?;
    let connection_window =
        window("http2.connection_window", &http2.connection_window, defaults.http2_connection_window)?;
    let max_message_size = match size(None, &http2.max_message_size, "http2.max_message_size")? {
        Some(n) if n < ferry_client::MAX_CHUNK_SIZE as u64 + 64 * 1024 => {
            bail!("http2.max_message_size must hold a 4 MiB chunk: at least 4MiB + 64KiB")
        }
        Some(n) => usize::try_from(n).context("http2.max_message_size is too large")?,
        None => defaults.max_message_size,
    };
    let server = ServerOptions {
        stream_idle_timeout: duration(
            args.idle_timeout,
            &file.idle_timeout,
            "idle_timeout",
            defaults.stream_idle_timeout,
        )?,
        upload_ttl: duration(args.upload_ttl, &file.upload_ttl, "upload_ttl", defaults.upload_ttl)?,
        shutdown_grace: duration(args.shutdown_grace, &file.shutdown_grace, "shutdown_grace", defaults.shutdown_grace)?,
        max_concurrent_streams: args
            .max_concurrent_streams
            .or(http2.max_concurrent_streams)
            .unwrap_or(defaults.max_concurrent_streams),
        max_local_error_reset_streams: http2.max_local_reset_streams.unwrap_or(defaults.max_local_error_reset_streams),
        max_header_list_size: match header_list {
            Some(n) => u32::try_from(n).context("http2.max_header_list_size is too large")?,
            None => defaults.max_header_list_size,
        },
        http2_keepalive_interval: duration(
            None,
            &http2.keepalive_interval,
            "http2.keepalive_interval",
            defaults.http2_keepalive_interval,
        )?,
        http2_keepalive_timeout: duration(
            None,
            &http2.keepalive_timeout,
            "http2.keepalive_timeout",
            defaults.http2_keepalive_timeout,
        )?,
        tcp_keepalive: duration(None, &http2.tcp_keepalive, "http2.tcp_keepalive", defaults.tcp_keepalive)?,
        http2_max_frame_size: frame,
        http2_stream_window: stream_window,
        http2_connection_window: connection_window,
        http2_adaptive_window: http2.adaptive_window.unwrap_or(defaults.http2_adaptive_window),
        max_message_size,
        tls,
        auth,
        limits,
        ..defaults
    };
    Ok(ServeSettings {
        listen,
        storage: storage(&args, &file, chunk_size)?,
        chunk_size,
        log_format: args.log_format.or(file.log_format).unwrap_or(LogFormat::Human),
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        server,
    })
}

fn storage(args: &ServeArgs, file: &ConfigFile, chunk_size: usize) -> anyhow::Result<Storage> {
    let url = args.storage.clone().or_else(|| if args.root.is_some() { None } else { file.storage.clone() });
    let Some(url) = url else {
        return Ok(Storage::Local(
            args.root.clone().or(file.root.clone()).unwrap_or_else(|| PathBuf::from("./ferry-data")),
        ));
    };
    if file.root.is_some() && file.storage.is_some() {
        bail!("the config file sets both root and storage: choose one");
    }
    let mut config = ferry_store::s3::S3Config::from_url(&url).map_err(|e| anyhow::anyhow!("storage: {e}"))?;
    config.endpoint = args.s3_endpoint.clone().or(file.s3_endpoint.clone());
    config.region = args.s3_region.clone().or(file.s3_region.clone());
    config.read_chunk = chunk_size;
    if let Some(timeout) = args.s3_retry_timeout {
        config.retry_timeout = timeout;
    } else if let Some(timeout) = &file.s3_retry_timeout {
        config.retry_timeout = timeout.duration("s3_retry_timeout")?;
    }
    Ok(Storage::S3(config))
}

fn tls_options(args: &ServeArgs, file: Option<&TlsSection>) -> anyhow::Result<Option<TlsOptions>> {
    let cert = args.tls_cert.as_deref().or(file.map(|t| t.cert.as_path()));
    let key = args.tls_key.as_deref().or(file.map(|t| t.key.as_path()));
    let client_ca = args.tls_client_ca.as_deref().or(file.and_then(|t| t.client_ca.as_deref()));
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if client_ca.is_none() => return Ok(None),
        (None, None) => bail!("a client CA (mutual TLS) needs the server's own certificate: --tls-cert and --tls-key"),
        _ => bail!("TLS needs both a certificate and a key (--tls-cert and --tls-key)"),
    };
    let read = |path: &Path, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
    };
    let handshake_timeout = match (args.tls_handshake_timeout, file.and_then(|t| t.handshake_timeout.as_ref())) {
        (Some(d), _) => d,
        (None, Some(i)) => i.duration("tls.handshake_timeout")?,
        (None, None) => Duration::from_secs(10),
    };
    Ok(Some(TlsOptions {
        cert_chain_pem: read(cert, "TLS certificate")?,
        key_pem: read(key, "TLS key")?,
        client_ca_pem: client_ca.map(|ca| read(ca, "client CA")).transpose()?,
        handshake_timeout,
    }))
}

fn token_rule(token: &TokenSection) -> anyhow::Result<([u8; 32], Grant)> {
    let digest =
        hex::decode(token.sha256.trim()).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()).with_context(
            || format!("token {:?}: sha256 must be 64 hex digits (`ferry token new` prints one)", token.name),
        )?;
    let grant = grant(&token.name, &token.scopes, token.requests_per_second, token.bytes_per_second.as_ref())?;
    Ok((digest, grant))
}

fn grant(
    name: &str,
    scope_sections: &[ScopeSection],
    requests_per_second: Option<f64>,
    bytes_per_second: Option<&Size>,
) -> anyhow::Result<Grant> {
    let mut scopes = Vec::new();
    for scope in scope_sections {
        let allow = scope
            .allow
            .iter()
            .map(|p| {
                Permission::parse(p)
                    .with_context(|| format!("{name:?}: unknown permission {p:?} (read, write, delete, list)"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        scopes.push(Scope::new(&scope.prefix, allow).map_err(|e| anyhow::anyhow!("{name:?}: {e}"))?);
    }
    if let Some(rate) = requests_per_second
        && !(rate > 0.0 && rate.is_finite())
    {
        bail!("{name:?}: requests_per_second must be a positive number");
    }
    let bytes_per_second = bytes_per_second.map(|s| s.bytes("bytes_per_second")).transpose()?;
    if bytes_per_second == Some(0) {
        bail!("{name:?}: bytes_per_second must be more than 0");
    }
    Ok(Grant { name: name.to_owned(), scopes, requests_per_second, bytes_per_second })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let mut argv = vec!["ferry", "serve"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(args) => *args,
            _ => unreachable!(),
        }
    }

    /// The example in the repository parses, and says what it claims to.
    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ferry.example.toml");
        let file = ConfigFile::load(&path).unwrap();
        assert_eq!(file.tokens.len(), 2);
        // The example's TLS files do not exist here; drop that section to resolve the rest.
        let file = ConfigFile { tls: None, clients: vec![], ..file };
        let settings = resolve(serve_args(&[]), file).unwrap();
        assert_eq!(settings.server.limits.max_concurrent_uploads, 64);
        assert_eq!(settings.server.limits.max_file_size, Some(100 << 30));
        assert_eq!(settings.server.auth.tokens.len(), 2);
        assert_eq!(settings.server.stream_idle_timeout, Duration::from_secs(60));
        // The values the example shows as defaults are the defaults.
        let defaults = ServerOptions::default();
        let server = &settings.server;
        assert_eq!(server.max_message_size, defaults.max_message_size);
        assert_eq!(server.http2_max_frame_size, defaults.http2_max_frame_size);
        assert_eq!(server.http2_stream_window, defaults.http2_stream_window);
        assert_eq!(server.http2_connection_window, defaults.http2_connection_window);
        assert_eq!(server.http2_adaptive_window, defaults.http2_adaptive_window);
        assert_eq!(server.max_concurrent_streams, defaults.max_concurrent_streams);
        assert_eq!(server.max_local_error_reset_streams, defaults.max_local_error_reset_streams);
        assert_eq!(server.max_header_list_size, defaults.max_header_list_size);
        assert_eq!(server.http2_keepalive_interval, defaults.http2_keepalive_interval);
        assert_eq!(server.http2_keepalive_timeout, defaults.http2_keepalive_timeout);
        assert_eq!(server.tcp_keepalive, defaults.tcp_keepalive);
        assert_eq!(server.upload_ttl, defaults.upload_ttl);
        assert_eq!(server.shutdown_grace, defaults.shutdown_grace);
        assert_eq!(server.limits.max_connections, Limits::default().max_connections);
        assert_eq!(server.limits.max_concurrent_downloads, Limits::default().max_concurrent_downloads);
        assert_eq!(settings.chunk_size, ferry_client::DEFAULT_CHUNK_SIZE);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let error = ConfigFile::parse("[limits]\nmax_file_sise = 5\n").unwrap_err();
        assert!(format!("{error:#}").contains("max_file_sise"), "{error:#}");
        assert!(ConfigFile::parse("listn = \"127.0.0.1:1\"\n").is_err());
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let file =
            ConfigFile::parse("idle_timeout = \"5s\"\n[limits]\nmax_connections = 7\nquota = \"1GiB\"\n").unwrap();
        let settings = resolve(serve_args(&["--max-connections", "9"]), file).unwrap();
        assert_eq!(settings.server.limits.max_connections, 9);
        assert_eq!(settings.server.limits.quota_bytes, Some(1 << 30));
        assert_eq!(settings.server.stream_idle_timeout, Duration::from_secs(5));
        assert_eq!(settings.server.upload_ttl, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn plain_text_beyond_loopback_must_be_explicit() {
        let error = resolve(serve_args(&["--listen", "0.0.0.0:0"]), ConfigFile::default()).unwrap_err();
        assert!(error.to_string().contains("--insecure"), "{error}");
        assert!(resolve(serve_args(&["--listen", "0.0.0.0:0", "--insecure"]), ConfigFile::default()).is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let file = ConfigFile::parse("[[tokens]]\nname = \"x\"\nsha256 = \"abc\"\nscopes = []\n").unwrap();
        assert!(format!("{:#}", resolve(serve_args(&[]), file).unwrap_err()).contains("64 hex digits"));
        let digest = "ab".repeat(32);
        let text = format!(
            "[[tokens]]\nname = \"x\"\nsha256 = \"{digest}\"\nscopes = [{{ prefix = \"a\", allow = [\"fly\"] }}]\n"
        );
        let file = ConfigFile::parse(&text).unwrap();
        assert!(format!("{:#}", resolve(serve_args(&[]), file).unwrap_err()).contains("unknown permission"));
        let file = ConfigFile::parse("upload_ttl = \"soon\"\n").unwrap();
        assert!(format!("{:#}", resolve(serve_args(&[]), file).unwrap_err()).contains("upload_ttl"));
    }
}
