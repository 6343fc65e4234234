//! ferry's client library. The `ferry` CLI is a thin layer over [`Client`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferry_client::Error> {
//! let client = ferry_client::Client::connect("http://127.0.0.1:50051").await?;
//! client.upload_file("model.bin".as_ref(), "models/model.bin", Default::default(), |_| {}).await?;
//! client.download_file("models/model.bin", ferry_client::Range::ALL, "copy.bin".as_ref(), false, |_| {}).await?;
//! # Ok(()) }
//! ```
//!
//! Every transfer is verified end to end with SHA-256: uploads send the digest
//! of what was read and the server refuses to commit on a mismatch; downloads
//! of a whole file are checked against the server's digest, and a download to
//! a path appears under its name only after it verified.

use std::time::Duration;

use ferry_proto::v1::ferry_client::FerryClient;
use ferry_proto::v1::{DeleteRequest, ListRequest, ListResponse, MakeDirectoryRequest, StatRequest};
use tonic::Streaming;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

mod download;
mod error;
mod files;
mod parallel;
mod pieces;
mod ranged;
mod resume;
mod types;
pub mod units;
mod upload;

pub use error::Error;
pub use ferry_proto::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use files::{DownloadTarget, LocalFile, MAX_DOWNLOAD_PATHS};
pub use parallel::{PIECE, download_parallel};
pub use ranged::{MAX_UPLOAD_CONNECTIONS, upload_parallel};
pub use resume::{RetryPolicy, UploadState, committed_offset};
pub use tonic::Code;
pub use types::{Range, RemoteFile, UploadOptions};

/// Result alias for client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The server address used when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Payload bytes per upload chunk (at most `ferry_proto::MAX_CHUNK_SIZE`).
    pub chunk_size: usize,
    pub connect_timeout: Duration,
    /// TLS settings for `https://` URLs (the system's roots are trusted too).
    pub tls: TlsSettings,
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// Compress what we send, and ask the server to compress what it sends
    /// (servers answer compressed only with zstd). Off by default: file
    /// data is often incompressible (docs/performance.md).
    pub compression: Option<Compression>,
    /// Let HTTP/2 size the windows from the measured bandwidth-delay product
    /// instead of the fixed ones (see the server's option of the same name).
    pub http2_adaptive_window: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            chunk_size: ferry_proto::DEFAULT_CHUNK_SIZE,
            connect_timeout: Duration::from_secs(10),
            tls: TlsSettings::default(),
            token: None,
            compression: None,
            http2_adaptive_window: false,
        }
    }
}

/// Certificates for TLS, all PEM.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// A CA to trust besides the system's (for a private CA or a self-signed server).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify the server's certificate against (default: the URL's host).
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsSettings {
    // Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// gRPC message compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    fn encoding(self) -> CompressionEncoding {
        match self {
            Compression::Gzip => CompressionEncoding::Gzip,
            Compression::Zstd => CompressionEncoding::Zstd,
        }
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
struct Credentials(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Credentials(token)" } else { "Credentials(none)" })
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Rpc = FerryClient<InterceptedService<Channel, Credentials>>;

/// A connection to a ferry server. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    rpc: Rpc,
    chunk_size: usize,
}

impl Client {
    /// Connects with default options.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects to `url`: `http://HOST:PORT`, or `https://HOST:PORT` for TLS.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl { url: url.to_owned(), reason };
        let tls = match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid("expected http://HOST:PORT, or https://HOST:PORT for TLS".into())),
        };
        if !(ferry_proto::MIN_CHUNK_SIZE..=ferry_proto::MAX_CHUNK_SIZE).contains(&options.chunk_size) {
            return Err(invalid(format!(
                "chunk size must be {}..={} bytes",
                ferry_proto::MIN_CHUNK_SIZE,
                ferry_proto::MAX_CHUNK_SIZE
            )));
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .initial_stream_window_size(ferry_proto::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(ferry_proto::HTTP2_CONNECTION_WINDOW)
            .max_frame_size(ferry_proto::HTTP2_MAX_FRAME_SIZE)
            .http2_adaptive_window(options.http2_adaptive_window);
        let endpoint = match tls {
            true => endpoint.tls_config(tls_config(&options.tls)).map_err(|e| Error::connect(url, &e))?,
            false if options.tls.ca_pem.is_some() || options.tls.identity.is_some() => {
                return Err(invalid("TLS certificates were given for a plain http:// URL; use https://".into()));
            }
            false => endpoint,
        };
        let token = match &options.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| Error::Protocol("the token must be printable ASCII".into()))?,
            ),
            None => None,
        };
        let channel = endpoint.connect().await.map_err(|e| Error::connect(url, &e))?;
        let mut rpc = FerryClient::with_interceptor(channel, Credentials(token))
            .max_decoding_message_size(ferry_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(ferry_proto::MAX_MESSAGE_SIZE);
        if let Some(compression) = options.compression {
            rpc = rpc.send_compressed(compression.encoding()).accept_compressed(compression.encoding());
        }
        Ok(Self { rpc, chunk_size: options.chunk_size })
    }

    /// Metadata of a remote file or directory.
    pub async fn stat(&self, path: &str) -> Result<RemoteFile> {
        let reply = self.rpc.clone().stat(StatRequest { path: path.to_owned() }).await?.into_inner();
        reply.info.map(RemoteFile::from).ok_or_else(|| Error::Protocol("stat reply without info".into()))
    }

    /// Deletes a remote file or empty directory.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.rpc.clone().delete(DeleteRequest { path: path.to_owned() }).await?;
        Ok(())
    }

    /// Creates a remote directory and any missing parents (success if it
    /// exists already).
    pub async fn make_directory(&self, path: &str) -> Result<RemoteFile> {
        self.make_directory_with(path, None, None).await
    }

    /// [`Client::make_directory`], also setting the directory's modification
    /// time and permission bits (those given), on a directory made before
    /// too. Servers whose store keeps no directory metadata (S3) answer
    /// [`Code::Unimplemented`] after making the directory.
    pub async fn make_directory_with(
        &self,
        path: &str,
        mtime: Option<std::time::SystemTime>,
        permissions: Option<u32>,
    ) -> Result<RemoteFile> {
        let request = MakeDirectoryRequest {
            path: path.to_owned(),
            mtime: mtime.map(prost_types::Timestamp::from),
            permissions: permissions.map(|bits| bits & 0o777),
        };
        let reply = self.rpc.clone().make_directory(request).await?.into_inner();
        reply.info.map(RemoteFile::from).ok_or_else(|| Error::Protocol("make_directory reply without info".into()))
    }

    /// Lists a remote directory ("" for the root), one level or recursively.
    pub async fn list(&self, path: &str, recursive: bool) -> Result<Listing> {
        let stream = self.rpc.clone().list(ListRequest { path: path.to_owned(), recursive }).await?.into_inner();
        Ok(Listing { stream })
    }
}

fn tls_config(settings: &TlsSettings) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new().with_enabled_roots();
    if let Some(ca) = &settings.ca_pem {
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &settings.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(domain) = &settings.domain {
        config = config.domain_name(domain.clone());
    }
    config
}

/// A listing in progress: batches of entries, pulled one at a time.
#[derive(Debug)]
pub struct Listing {
    stream: Streaming<ListResponse>,
}

impl Listing {
    /// The next batch, or `None` at the end.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<RemoteFile>>> {
        Ok(self.stream.message().await?.map(|batch| batch.entries.into_iter().map(RemoteFile::from).collect()))
    }
}
