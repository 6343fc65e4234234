//! Accepted connections, capped: past the limit a new connection is closed
//! as soon as it is accepted, so a flood of connections cannot starve the
//! clients already served. The refused client's first call fails with a
//! transport error (tonic reports CANCELLED or UNKNOWN, depending on whether
//! it was writing or reading when the close arrived); ferry's client
//! retries those.
//! Each connection holds its slot until it closes, TLS handshake included
//! (which has its own deadline).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use crate::metrics::{ConnectionGauge, Metrics};

/// The listener's connections, at most `limit` open at once.
pub(crate) fn limited(
    incoming: TcpIncoming,
    limit: usize,
    metrics: Metrics,
) -> impl Stream<Item = Result<Connection, io::Error>> {
    let slots = Arc::new(Semaphore::new(limit));
    incoming.filter_map(move |accepted| match accepted {
        Err(e) => Some(Err(e)),
        Ok(stream) => match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(Ok(Connection { stream, _slot: permit, _gauge: metrics.connection_opened() })),
            Err(_) => {
                metrics.connection_refused();
                tracing::warn!(peer = ?stream.peer_addr().ok(), limit, "connection limit reached: closing a new connection");
                None
            }
        },
    })
}

/// An accepted TCP connection that holds a slot until dropped.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _gauge: ConnectionGauge,
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
