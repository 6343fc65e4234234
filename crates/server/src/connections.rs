//! Accepted connections, capped, so that a flood of connections cannot
//! starve the clients already served.
//!
//! Past the limit, a new connection is not simply closed: the client would
//! see its first call fail with a bare transport error (CANCELLED or
//! UNKNOWN, depending on whether hyper was writing or reading). Instead, a
//! few of them at a time ([`REFUSING`]) are handed to a second, minimal
//! HTTP/2 server (`serve_refusals`) that answers every call with UNAVAILABLE
//! "at its connection limit", which every gRPC client treats as retryable,
//! and cuts the connection within about two seconds (its age plus grace,
//! which also bounds a stalled TLS handshake there). Beyond those few, a connection is
//! closed at once as before: refusing must stay cheaper than serving.
//! Each connection holds its slot until it closes, TLS handshake included
//! (which has its own deadline).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use crate::metrics::{ConnectionGauge, Metrics};

/// Connections past the limit that are answered (UNAVAILABLE) at once; more
/// are closed unanswered.
pub(crate) const REFUSING: usize = 64;
/// How long a refused connection stays open for its answers (then as long
/// again for the calls in flight, before it is cut).
const REFUSED_FOR: Duration = Duration::from_secs(1);

/// The listener's connections, at most `limit` open at once; and the ones
/// past the limit that are to be answered with a refusal.
pub(crate) fn limited(
    incoming: TcpIncoming,
    limit: usize,
    metrics: Metrics,
) -> (impl Stream<Item = Result<Connection, io::Error>>, Refused) {
    let slots = Arc::new(Semaphore::new(limit));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let (refuse, refused) = mpsc::channel(REFUSING);
    let accepted = incoming.filter_map(move |accepted| match accepted {
        Err(e) => Some(Err(e)),
        Ok(stream) => match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(Ok(Connection { stream, _slot: permit, _gauge: Some(metrics.connection_opened()) })),
            Err(_) => {
                metrics.connection_refused();
                let peer = stream.peer_addr().ok();
                match refusing.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tracing::warn!(?peer, limit, "connection limit reached: refusing a new connection");
                        // Full only if the refusal server stopped: then the connection just closes.
                        let _ = refuse.try_send(Connection { stream, _slot: permit, _gauge: None });
                    }
                    Err(_) => tracing::warn!(?peer, limit, "connection limit reached: closing a new connection"),
                }
                None
            }
        },
    });
    (accepted, Refused { connections: refused, limit })
}

/// Connections past the limit, to be answered with a refusal.
pub(crate) struct Refused {
    connections: mpsc::Receiver<Connection>,
    limit: usize,
}

/// Answers every call on the refused connections with UNAVAILABLE, and
/// closes each after [`REFUSED_FOR`]. Runs until dropped.
pub(crate) async fn serve_refusals(refused: Refused, tls: Option<tonic::transport::ServerTlsConfig>) {
    let limit = refused.limit;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(builder) => builder,
            Err(error) => {
                tracing::error!(%error, "cannot answer refused connections over TLS: closing them instead");
                return;
            }
        };
    }
    let incoming = ReceiverStream::new(refused.connections).map(Ok::<_, io::Error>);
    let served = builder
        .max_connection_age(REFUSED_FOR)
        .max_connection_age_grace(REFUSED_FOR)
        .layer(tower_layer::layer_fn(move |_router| Refuse { limit }))
        // Never reached (the layer answers first); a router needs a service.
        .add_service(tonic_health::server::health_reporter().1)
        .serve_with_incoming(incoming)
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "the server answering refused connections stopped");
    }
}

/// Every call: UNAVAILABLE, the server being at its connection limit.
#[derive(Debug, Clone, Copy)]
struct Refuse {
    limit: usize,
}

impl<B> tower_service::Service<http::Request<B>> for Refuse {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        let message = format!("the server is at its connection limit ({}): retry later", self.limit);
        std::future::ready(Ok(tonic::Status::unavailable(message).into_http()))
    }
}

/// An accepted TCP connection that holds a slot until dropped.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Counted among the open connections (not when refused).
    _gauge: Option<ConnectionGauge>,
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
