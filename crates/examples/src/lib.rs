//! Runnable gRPC tutorial examples, wire-compatible with the tutorials' Python grpcio code.
//!
//! gRPC has four call modes, and ferry uses all of them. Two small services teach them:
//!
//! | mode | `demo.GRPCDemo` | `helloworld.Greeter` | ferry (`ferry.v1.Ferry`) |
//! |---|---|---|---|
//! | unary | `SimpleMethod` | `SayHello` | `Stat`, `Delete`, `CreateUpload` |
//! | client streaming | `ClientStreamingMethod` | | `Upload` |
//! | server streaming | `ServerStreamingMethod` | `SayHelloStreamReply` | `Download`, `List` |
//! | bidirectional streaming | `BidirectionalStreamingMethod` | `SayHelloBidiStream` | `UploadSession` |
//!
//! The servers and the client calls live in this library ([`demo_server`], [`demo_client`],
//! [`greeter_server`], [`greeter_client`]); the programs under `examples/` are thin `main`s over
//! them, so the tests can run the very same code in-process:
//!
//! ```sh
//! cargo run --example grpc_demo                  # demo.GRPCDemo on 127.0.0.1:23333
//! cargo run --example grpc_demo_client           # calls it in all four modes
//! cargo run --example greeter                    # helloworld.Greeter on 127.0.0.1:50051
//! cargo run --example greeter_client -- --name Ferry
//! ```
//!
//! The greeter's tutorial port, 50051, is also the default port of `ferry serve`: only one of
//! them can listen there, so run the other with `--listen 127.0.0.1:PORT`.
//!
//! The contracts are `proto/tutorial/demo.proto` and `proto/tutorial/helloworld.proto`, compiled
//! by `build.rs` with `protox` (no system `protoc`).

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Router;

pub mod demo_client;
pub mod demo_server;
pub mod greeter_client;
pub mod greeter_server;

pub use demo_server::serve_demo;
pub use greeter_server::serve_greeter;

/// The `demo` package, generated from `proto/tutorial/demo.proto`.
pub mod demo {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    tonic::include_proto!("demo");
}

/// The `helloworld` package, generated from `proto/tutorial/helloworld.proto`.
pub mod helloworld {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    tonic::include_proto!("helloworld");
}

/// Where the demo server listens by default (the tutorial's port).
pub const DEMO_DEFAULT_LISTEN: &str = "127.0.0.1:23333";
/// Where the demo client connects by default.
pub const DEMO_DEFAULT_SERVER: &str = "http://127.0.0.1:23333";
/// Where the greeter listens by default (the tutorial's port; also `ferry serve`'s default).
pub const GREETER_DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Where the greeter client connects by default.
pub const GREETER_DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Prints `listening on ADDR` (the bound address, so port 0 shows the port picked) as the first
/// line on stdout and flushes it: scripts and tests read the address there.
pub fn announce(listener: &TcpListener) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    Ok(addr)
}

/// Registers the Ctrl-C (and, on Unix, SIGTERM) handlers now and returns a future that completes
/// when either arrives: pass it to [`serve_demo`] or [`serve_greeter`] for a graceful stop (calls
/// in flight finish, then the server returns). Call it before [`announce`]: until a handler
/// exists, a signal kills the process instead.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// How long a stopping server waits for the calls in flight (an open bidirectional stream can last
/// forever) before it cuts them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting, lets the calls
/// in flight finish for up to [`SHUTDOWN_GRACE`], and returns.
async fn serve_router(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (began, shutdown_began) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = began.send(());
    };
    let serving = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown);
    let grace_over = async move {
        match shutdown_began.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = serving => served,
        () = grace_over => {
            tracing::warn!("grace period over: cutting the calls still in flight");
            Ok(())
        }
    }
}

/// For a bidirectional call made in lockstep: queues the next item of `items` on `sender` and
/// returns it, or, when `items` is exhausted, drops the sender (which closes the request stream)
/// and returns `None`.
pub(crate) async fn send_next<T: Clone>(
    items: &mut impl Iterator<Item = T>,
    sender: &mut Option<tokio::sync::mpsc::Sender<T>>,
) -> Result<Option<T>, tonic::Status> {
    match (items.next(), sender.as_ref()) {
        (Some(item), Some(open)) => {
            open.send(item.clone())
                .await
                .map_err(|_| tonic::Status::cancelled("the call ended before every request went out"))?;
            Ok(Some(item))
        }
        _ => {
            *sender = None;
            Ok(None)
        }
    }
}
