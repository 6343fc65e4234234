//! The `demo.GRPCDemo` server: gRPC's four call modes, wire-compatible with the tutorial's Python
//! grpcio demo (contract: `proto/tutorial/demo.proto`; code: `crates/examples/src/demo_server.rs`).
//!
//! ```sh
//! cargo run --example grpc_demo                              # 127.0.0.1:23333, as in the tutorial
//! cargo run --example grpc_demo -- --listen 127.0.0.1:0      # a free port
//! ```
//!
//! The first line on stdout is `listening on ADDR`; calls are logged on stderr (`RUST_LOG`
//! filters). Ctrl-C or SIGTERM stops it gracefully. Try it with `grpc_demo_client` or the
//! tutorial's Python client. Every response has `server_id` 1 and says what the server received:
//!
//! - `SimpleMethod`, **unary**: one request, one response; a plain function call, for anything
//!   that fits in one message each way (ferry: `Stat`, `Delete`, `CreateUpload`).
//! - `ClientStreamingMethod`, **client streaming**: many requests, then one response summarising
//!   them all; for sending more than one message holds (ferry: `Upload`).
//! - `ServerStreamingMethod`, **server streaming**: one request, then five responses, each
//!   delivered as it is sent; for big or gradual results (ferry: `Download`, `List`).
//! - `BidirectionalStreamingMethod`, **bidirectional streaming**: each request is echoed as it
//!   arrives, both directions open at once; for conversations with acknowledgements (ferry:
//!   `UploadSession`, whose replies are committed offsets).

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

/// Serve demo.GRPCDemo (the tutorial's four-call-modes demo).
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the first stdout line shows it).
    #[arg(long, default_value = ferry_examples::DEMO_DEFAULT_LISTEN)]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    // Watch for Ctrl-C/SIGTERM before announcing: from then on a signal means a graceful stop.
    let shutdown = ferry_examples::shutdown_signal().context("cannot watch for Ctrl-C and SIGTERM")?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    ferry_examples::announce(&listener).context("cannot write to stdout")?;
    ferry_examples::serve_demo(listener, shutdown).await.context("the server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Logs go to stderr, at `info` unless `RUST_LOG` says otherwise.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
