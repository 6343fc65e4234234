//! Everything `serve` can be told: transport settings, TLS, identities,
//! limits. The defaults are safe for a server on loopback and the measured
//! ones for speed (README, "Performance").

use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::AuthOptions;
use crate::limits::Limits;
use crate::metrics::Metrics;

/// Transport settings. The defaults are the measured ones (README,
/// "Performance"); every value is explicit rather than left to tonic.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// gRPC message-size limit, for decoding and encoding alike.
    pub max_message_size: usize,
    /// HTTP/2 max frame size advertised to clients.
    pub http2_max_frame_size: u32,
    /// HTTP/2 initial stream / connection flow-control windows.
    pub http2_stream_window: u32,
    pub http2_connection_window: u32,
    /// Let HTTP/2 size the windows from the measured bandwidth-delay product
    /// (hyper's BDP estimate) instead of the fixed ones. Off: measured no
    /// faster on loopback (docs/performance.md).
    pub http2_adaptive_window: bool,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval and the time to wait for its answer: a dead peer
    /// is noticed and its transfers released.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive on accepted connections.
    pub tcp_keepalive: Duration,
    /// Bound on streams a misbehaving client can make us reset.
    pub max_local_error_reset_streams: usize,
    /// Bound on request header bytes.
    pub max_header_list_size: u32,
    /// An upload stream silent for this long is ended with DEADLINE_EXCEEDED
    /// (a resumable upload keeps what it received). Bulk transfers get no
    /// whole-call deadline: only silence ends them.
    pub stream_idle_timeout: Duration,
    /// Resumable uploads untouched for this long are discarded.
    pub upload_ttl: Duration,
    /// After shutdown begins, calls in flight get this long to finish; then
    /// `serve` returns and the rest are cut (resumable uploads keep what they
    /// committed).
    pub shutdown_grace: Duration,
    /// TLS, and with a client CA, mutual TLS. `None` serves plain text.
    pub tls: Option<TlsOptions>,
    /// Tokens and client certificates, with their scopes. Empty: open.
    pub auth: AuthOptions,
    pub limits: Limits,
    /// Where the server records its metrics (serve them with
    /// [`crate::metrics::serve_metrics`]).
    pub metrics: Metrics,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_message_size: ferry_proto::MAX_MESSAGE_SIZE,
            http2_max_frame_size: ferry_proto::HTTP2_SERVER_MAX_FRAME_SIZE,
            http2_stream_window: ferry_proto::HTTP2_STREAM_WINDOW,
            http2_connection_window: ferry_proto::HTTP2_CONNECTION_WINDOW,
            http2_adaptive_window: false,
            max_concurrent_streams: 128,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            tcp_keepalive: Duration::from_secs(60),
            max_local_error_reset_streams: 1024,
            max_header_list_size: 16 * 1024,
            stream_idle_timeout: Duration::from_secs(60),
            upload_ttl: Duration::from_secs(24 * 60 * 60),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            auth: AuthOptions::default(),
            limits: Limits::default(),
            metrics: Metrics::default(),
        }
    }
}

/// The server's certificate and key, and the CA that client certificates
/// must chain to for mutual TLS. All PEM.
#[derive(Clone)]
pub struct TlsOptions {
    pub cert_chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
}

impl TlsOptions {
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_chain_pem, &self.key_pem))
            .timeout(self.handshake_timeout);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

impl std::fmt::Debug for TlsOptions {
    // Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("mutual", &self.client_ca_pem.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}
