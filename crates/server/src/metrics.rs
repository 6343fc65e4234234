//! Prometheus metrics, served on a separate admin listener
//! (`ferry serve --metrics-listen ADDR`, `GET /metrics`).
//!
//! Every label has a small, fixed set of values: methods come from the
//! served descriptor sets (anything else is `unknown`), codes are the 17 gRPC
//! codes, directions are `upload` and `download`. Paths, tokens and peers
//! never become labels.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `ferry_requests_total` | counter | `method`, `code` |
//! | `ferry_request_duration_seconds` | histogram | `method` |
//! | `ferry_transfer_bytes_total` | counter | `direction` |
//! | `ferry_active_transfers` | gauge | `direction` |
//! | `ferry_transfer_duration_seconds` | histogram | `direction` |
//! | `ferry_connections` | gauge | |
//! | `ferry_connections_refused_total` | counter | |
//! | `ferry_upload_sessions` | gauge (read at scrape) | |
//! | `ferry_storage_free_bytes` | gauge (read at scrape) | |
//! | `ferry_quota_used_bytes` | gauge (with a quota) | |

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use ferry_store::Store;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::net::TcpListener;
use tonic::Status;

/// A transfer's direction, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

impl Direction {
    fn label(self) -> DirectionLabels {
        DirectionLabels {
            direction: match self {
                Direction::Upload => "upload",
                Direction::Download => "download",
            },
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: Arc<str>,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~4.4 min.
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

fn transfer_histogram() -> Histogram {
    // 10 ms … ~43 min.
    Histogram::new(exponential_buckets(0.01, 4.0, 10))
}

/// The server's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    methods: HashSet<Arc<str>>,
    unknown: Arc<str>,
    requests: Family<RpcLabels, Counter>,
    request_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    bytes: Family<DirectionLabels, Counter>,
    active: Family<DirectionLabels, Gauge>,
    transfer_seconds: Family<DirectionLabels, Histogram, fn() -> Histogram>,
    connections: Gauge,
    connections_refused: Counter,
    sessions: Gauge,
    free_bytes: Gauge,
    quota_used: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("methods", &self.0.methods.len()).finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&[ferry_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET])
    }
}

impl Metrics {
    /// Metrics whose `method` label takes the methods of these encoded
    /// descriptor sets.
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let requests = Family::<RpcLabels, Counter>::default();
        registry.register("requests", "RPCs finished, by method and gRPC status code", requests.clone());
        let request_seconds = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response, by method",
            request_seconds.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register("transfer_bytes", "File bytes received (upload) and sent (download)", bytes.clone());
        let active = Family::<DirectionLabels, Gauge>::default();
        registry.register("active_transfers", "Upload and download streams in progress", active.clone());
        let transfer_seconds = Family::<DirectionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            transfer_histogram as fn() -> Histogram,
        );
        registry.register(
            "transfer_duration_seconds",
            "Lifetime of upload and download streams",
            transfer_seconds.clone(),
        );
        let connections = Gauge::default();
        registry.register("connections", "Open client connections", connections.clone());
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because the connection limit was reached",
            connections_refused.clone(),
        );
        let sessions = Gauge::default();
        registry.register("upload_sessions", "Resumable upload sessions held by the store", sessions.clone());
        let free_bytes = Gauge::default();
        registry.register("storage_free_bytes", "Free bytes on the store's filesystem", free_bytes.clone());
        let quota_used = Gauge::default();
        registry.register("quota_used_bytes", "Bytes of files counted against the quota", quota_used.clone());
        Self(Arc::new(Inner {
            registry,
            methods: descriptor_sets.iter().flat_map(|set| methods_of(set)).collect(),
            unknown: Arc::from("unknown"),
            requests,
            request_seconds,
            bytes,
            active,
            transfer_seconds,
            connections,
            connections_refused,
            sessions,
            free_bytes,
            quota_used,
        }))
    }

    fn method_label(&self, path: &str) -> Arc<str> {
        self.0.methods.get(path).cloned().unwrap_or_else(|| self.0.unknown.clone())
    }

    pub(crate) fn count_bytes(&self, direction: Direction, bytes: usize) {
        self.0.bytes.get_or_create(&direction.label()).inc_by(bytes as u64);
    }

    /// Counts a transfer as active until the returned guard is dropped, and
    /// then records its duration.
    pub(crate) fn transfer_started(&self, direction: Direction) -> TransferGauge {
        self.0.active.get_or_create(&direction.label()).inc();
        TransferGauge { metrics: self.clone(), direction, started: Instant::now() }
    }

    pub(crate) fn connection_opened(&self) -> ConnectionGauge {
        self.0.connections.inc();
        ConnectionGauge(self.clone())
    }

    pub(crate) fn connection_refused(&self) {
        self.0.connections_refused.inc();
    }

    pub(crate) fn set_quota_used(&self, bytes: u64) {
        self.0.quota_used.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Reads the gauges that come from the store, then encodes everything
    /// in the Prometheus text format.
    pub async fn render(&self, store: &dyn Store) -> String {
        match store.count_uploads().await {
            Ok(n) => {
                self.0.sessions.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot count upload sessions"),
        }
        match store.free_space().await {
            Ok(Some(free)) => {
                self.0.free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read free space"),
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.0.registry) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// `/package.Service/Method` for every method in an encoded descriptor set.
fn methods_of(encoded: &[u8]) -> Vec<Arc<str>> {
    let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else { return Vec::new() };
    let mut methods = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            let qualified = match package {
                "" => service.name().to_owned(),
                package => format!("{package}.{}", service.name()),
            };
            for method in &service.method {
                methods.push(Arc::from(format!("/{qualified}/{}", method.name())));
            }
        }
    }
    methods
}

/// Active-transfer accounting for one stream.
#[derive(Debug)]
pub struct TransferGauge {
    metrics: Metrics,
    direction: Direction,
    started: Instant,
}

impl Drop for TransferGauge {
    fn drop(&mut self) {
        let labels = self.direction.label();
        self.metrics.0.active.get_or_create(&labels).dec();
        self.metrics.0.transfer_seconds.get_or_create(&labels).observe(self.started.elapsed().as_secs_f64());
    }
}

/// One open connection.
#[derive(Debug)]
pub struct ConnectionGauge(Metrics);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.0.connections.dec();
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()>,
) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    continue;
                }
            },
        };
        let (metrics, store) = (metrics.clone(), store.clone());
        let handler = service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let (metrics, store) = (metrics.clone(), store.clone());
            async move {
                match (request.method(), request.uri().path()) {
                    (&http::Method::GET, "/metrics") => http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
                        .body(metrics.render(&*store).await),
                    _ => http::Response::builder()
                        .status(http::StatusCode::NOT_FOUND)
                        .body("not found: metrics are at /metrics\n".to_owned()),
                }
            }
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), handler);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// A tower layer that counts every RPC by method and final status code.
#[derive(Debug, Clone)]
pub struct MetricsLayer(pub Metrics);

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, metrics: self.0.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower_service::Service<http::Request<B>> for MetricsService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let record = Record {
            method: self.metrics.method_label(request.uri().path()),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            done: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let (parts, body) = response.await?.into_parts();
            // A trailers-only response (most errors) has its status in the headers.
            if let Some(code) = grpc_status(&parts.headers) {
                record.finish(code);
                return Ok(http::Response::from_parts(parts, body));
            }
            Ok(http::Response::from_parts(parts, tonic::body::Body::new(RecordedBody { inner: body, record })))
        })
    }
}

/// Records one RPC once: at its trailers, or as CANCELLED if the response
/// is dropped before them (the client went away).
struct Record {
    metrics: Metrics,
    method: Arc<str>,
    started: Instant,
    done: bool,
}

impl Record {
    fn finish(mut self, code: tonic::Code) {
        self.record(code);
    }

    fn record(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let inner = &self.metrics.0;
        inner
            .requests
            .get_or_create(&RpcLabels { method: self.method.clone(), code: ferry_proto::code_name(code) })
            .inc();
        inner
            .request_seconds
            .get_or_create(&MethodLabels { method: self.method.clone() })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.record(tonic::Code::Cancelled);
    }
}

struct RecordedBody {
    inner: tonic::body::Body,
    record: Record,
}

impl Body for RecordedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.record.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.record.record(status.code()),
            Poll::Ready(None) => self.record.record(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}
