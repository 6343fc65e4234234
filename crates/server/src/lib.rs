//! ferry's gRPC server.
//!
//! [`serve`] is the testable entry point (the mini-redis shape): give it a
//! bound listener, a store and a shutdown future. `ferry serve` binds the
//! port and passes Ctrl-C/SIGTERM; the tests bind `127.0.0.1:0`.
//!
//! | concept | file |
//! |---|---|
//! | `serve`, health and reflection | `lib.rs` (here) |
//! | every option, TLS settings | `options.rs` |
//! | tokens, client certificates, scopes | `auth.rs` |
//! | admission: concurrency, file size, quota, free space | `limits.rs` |
//! | per-identity request rate and bandwidth | `rate.rs` |
//! | the connection cap | `connections.rs` |
//! | Prometheus metrics and their admin listener | `metrics.rs` |
//! | the service and per-RPC dispatch (shared by every service) | `service/mod.rs` |
//! | the tutorial services and ByteStream, on the same port | `compat/` |
//! | upload / download / stat, list, delete | `service/{upload,download,objects}.rs` |
//! | resumable uploads: create, query, abort, bidirectional session | `service/sessions.rs` |
//! | errors → gRPC status codes (the only place) | `status.rs` |
//! | wire ↔ storage conversions | `convert.rs` |

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::compat::bytestream::byte_stream_server::ByteStreamServer;
use ferry_proto::compat::file_server::file_transfer_server::FileTransferServer;
use ferry_proto::compat::file_srv::file_srv_server::FileSrvServer;
use ferry_proto::v1::ferry_server::FerryServer;
use ferry_store::Store;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::auth::Authenticator;
use crate::limits::Admission;
use crate::metrics::MetricsLayer;

pub mod auth;
pub mod compat;
mod connections;
mod convert;
pub mod limits;
pub mod metrics;
mod options;
mod rate;
pub mod service;
pub mod status;

pub use auth::{AuthOptions, Grant, Permission, Scope};
pub use limits::Limits;
pub use metrics::{Metrics, serve_metrics};
pub use options::{ServerOptions, TlsOptions};
pub use service::FerryService;
pub use status::ServiceError;

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot measure the store for the quota: {0}")]
    Store(#[from] ferry_store::Error),
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
    let (incoming, refused) = connections::limited(incoming, options.limits.max_connections, options.metrics.clone());
    let refusals =
        tokio::spawn(connections::serve_refusals(refused, options.tls.as_ref().map(|tls| tls.server_config())));
    let _stop_refusals = AbortOnDrop(refusals);
    let admission = Admission::new(options.limits.clone(), store.clone(), options.metrics.clone()).await?;
    let mtls = options.tls.as_ref().is_some_and(|tls| tls.client_ca_pem.is_some());
    let context = Arc::new(service::Context::new(
        store.clone(),
        Authenticator::new(&options.auth, mtls),
        admission,
        options.metrics.clone(),
        options.stream_idle_timeout,
    ));
    // Abandoned sessions are collected at start and then every tenth of the TTL.
    let collector = tokio::spawn(collect_abandoned_uploads(store, options.upload_ttl));
    let _stop_collector = AbortOnDrop(collector);
    // Compressed requests are always accepted. Responses are compressed
    // only with zstd, for clients that list it: every grpcio client lists
    // gzip by default, and gzipping bulk data runs at 15-20 MB/s (measured,
    // docs/performance.md), so offering gzip would slow every tutorial client
    // down tenfold.
    // Every service gets the same message limit and codecs.
    macro_rules! configured {
        ($server:expr) => {
            $server
                .max_decoding_message_size(options.max_message_size)
                .max_encoding_message_size(options.max_message_size)
                .accept_compressed(CompressionEncoding::Zstd)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Zstd)
        };
    }
    let service = configured!(FerryServer::new(FerryService::new(context.clone())));
    let file_transfer = configured!(FileTransferServer::new(compat::FileTransferService::new(context.clone())));
    let file_srv = configured!(FileSrvServer::new(compat::FileSrvService::new(context.clone())));
    let bytestream = configured!(ByteStreamServer::new(compat::ByteStreamService::new(context)));
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
    let mut builder = Server::builder();
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let serving = builder
        .layer(MetricsLayer(options.metrics.clone()))
        .max_frame_size(options.http2_max_frame_size)
        .initial_stream_window_size(options.http2_stream_window)
        .initial_connection_window_size(options.http2_connection_window)
        .http2_adaptive_window(Some(options.http2_adaptive_window))
        .max_concurrent_streams(options.max_concurrent_streams)
        .http2_keepalive_interval(Some(options.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(options.http2_keepalive_timeout))
        .http2_max_local_error_reset_streams(Some(options.max_local_error_reset_streams))
        .http2_max_header_list_size(options.max_header_list_size)
        .add_service(service)
        .add_service(file_transfer)
        .add_service(file_srv)
        .add_service(bytestream)
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
