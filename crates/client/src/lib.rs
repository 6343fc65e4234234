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
use ferry_proto::v1::{DeleteRequest, ListRequest, ListResponse, StatRequest};
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

mod download;
mod error;
mod resume;
mod types;
mod upload;

pub use error::Error;
pub use ferry_proto::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE};
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { chunk_size: ferry_proto::DEFAULT_CHUNK_SIZE, connect_timeout: Duration::from_secs(10) }
    }
}

/// A connection to a ferry server. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    rpc: FerryClient<Channel>,
    chunk_size: usize,
}

impl Client {
    /// Connects with default options.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ClientOptions::default()).await
    }

    /// Connects to `url` (`http://host:port`).
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl { url: url.to_owned(), reason };
        if !url.starts_with("http://") {
            return Err(invalid("expected http://HOST:PORT (TLS arrives with https:// later)".into()));
        }
        if options.chunk_size == 0 || options.chunk_size > ferry_proto::MAX_CHUNK_SIZE {
            return Err(invalid(format!("chunk size must be 1..={} bytes", ferry_proto::MAX_CHUNK_SIZE)));
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
            .max_frame_size(ferry_proto::HTTP2_MAX_FRAME_SIZE);
        let channel = endpoint.connect().await.map_err(|e| Error::connect(url, &e))?;
        let rpc = FerryClient::new(channel)
            .max_decoding_message_size(ferry_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(ferry_proto::MAX_MESSAGE_SIZE);
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

    /// Lists a remote directory ("" for the root), one level or recursively.
    pub async fn list(&self, path: &str, recursive: bool) -> Result<Listing> {
        let stream = self.rpc.clone().list(ListRequest { path: path.to_owned(), recursive }).await?.into_inner();
        Ok(Listing { stream })
    }
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
