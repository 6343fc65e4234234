//! ferry's gRPC server.
//!
//! [`serve`] is the testable entry point (the mini-redis shape): give it a
//! bound listener, a store and a shutdown future. `ferry serve` binds the
//! port and passes Ctrl-C/SIGTERM; the tests bind `127.0.0.1:0`.
//!
//! | concept | file |
//! |---|---|
//! | `serve`, transport settings, health and reflection | `lib.rs` (here) |
//! | the service and per-RPC dispatch | `service/mod.rs` |
//! | upload / download / stat, list, delete | `service/{upload,download,objects}.rs` |
//! | resumable uploads: create, query, abort, bidirectional session | `service/sessions.rs` |
//! | errors → gRPC status codes (the only place) | `status.rs` |
//! | wire ↔ storage conversions | `convert.rs` |

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v1::ferry_server::FerryServer;
use ferry_store::Store;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

mod convert;
pub mod service;
pub mod status;

pub use service::FerryService;
pub use status::ServiceError;

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
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_message_size: ferry_proto::MAX_MESSAGE_SIZE,
            http2_max_frame_size: ferry_proto::HTTP2_MAX_FRAME_SIZE,
            http2_stream_window: ferry_proto::HTTP2_STREAM_WINDOW,
            http2_connection_window: ferry_proto::HTTP2_CONNECTION_WINDOW,
            max_concurrent_streams: 128,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            tcp_keepalive: Duration::from_secs(60),
            max_local_error_reset_streams: 1024,
            max_header_list_size: 16 * 1024,
            stream_idle_timeout: Duration::from_secs(60),
            upload_ttl: Duration::from_secs(24 * 60 * 60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves ferry on `listener` until `shutdown` completes; in-flight calls are
/// then allowed to finish.
///
/// Beside `ferry.v1.Ferry` it serves `grpc.health.v1.Health` (SERVING for ""
/// and "ferry.v1.Ferry", NOT_SERVING from the moment shutdown begins, so load
/// balancers drain) and server reflection, v1 and v1alpha, so that grpcurl,
/// `buf curl` and grpcio clients can discover the API.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(options.tcp_keepalive));
    // Abandoned sessions are collected at start and then every tenth of the TTL.
    let collector = tokio::spawn(collect_abandoned_uploads(store.clone(), options.upload_ttl));
    let _stop_collector = AbortOnDrop(collector);
    let service = FerryServer::new(FerryService::new(store, options.stream_idle_timeout))
        .max_decoding_message_size(options.max_message_size)
        .max_encoding_message_size(options.max_message_size);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FerryServer<FerryService>>().await;
    let (began, shutdown_began) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        tracing::info!(grace = ?options.shutdown_grace, "shutting down: calls in flight may finish");
        let _ = began.send(());
        health.set_not_serving::<FerryServer<FerryService>>().await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let serving = Server::builder()
        .max_frame_size(options.http2_max_frame_size)
        .initial_stream_window_size(options.http2_stream_window)
        .initial_connection_window_size(options.http2_connection_window)
        .max_concurrent_streams(options.max_concurrent_streams)
        .http2_keepalive_interval(Some(options.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(options.http2_keepalive_timeout))
        .http2_max_local_error_reset_streams(Some(options.max_local_error_reset_streams))
        .http2_max_header_list_size(options.max_header_list_size)
        .add_service(service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown);
    // A graceful stop waits for every call in flight: bound that wait, so a
    // stalled client cannot hold the server up forever.
    let grace_over = async move {
        match shutdown_began.await {
            Ok(()) => tokio::time::sleep(options.shutdown_grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = serving => served?,
        () = grace_over => tracing::warn!("grace period over: cutting the calls still in flight"),
    }
    Ok(())
}

async fn collect_abandoned_uploads(store: Arc<dyn Store>, ttl: Duration) {
    let period = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60 * 60));
    loop {
        match store.expire_uploads(ttl).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "expired abandoned uploads"),
            Err(e) => tracing::warn!(error = %e, "could not expire abandoned uploads"),
        }
        tokio::time::sleep(period).await;
    }
}

/// Stops a background task when `serve` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
