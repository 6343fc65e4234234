//! The `helloworld.Greeter` server, wire-compatible with the tutorial's hello-world (contract:
//! `proto/tutorial/helloworld.proto`; code: `crates/examples/src/greeter_server.rs`).
//!
//! ```sh
//! cargo run --example greeter                            # 127.0.0.1:50051, as in the tutorial
//! cargo run --example greeter -- --listen 127.0.0.1:0    # a free port
//! ```
//!
//! 50051 is `ferry serve`'s default port too: the two cannot both listen there, so when ferry is
//! running, give one of them another port (`--listen 127.0.0.1:50052`).
//!
//! The first line on stdout is `listening on ADDR`; calls are logged on stderr (`RUST_LOG`
//! filters). Ctrl-C or SIGTERM stops it gracefully.
//!
//! - `SayHello`, **unary**: one name, one `Hello, NAME!`; a plain function call (ferry: `Stat`,
//!   `Delete`, `CreateUpload`).
//! - `SayHelloStreamReply`, **server streaming**: one name, three greetings, each delivered as it
//!   is sent; for big or gradual results (ferry: `Download`, `List`).
//! - `SayHelloBidiStream`, **bidirectional streaming**: a stream of names, each greeted as it
//!   arrives; for conversations (ferry: `UploadSession`).
//!
//! (The fourth mode, client streaming, is in `grpc_demo`'s `ClientStreamingMethod`; in ferry it is
//! `Upload`.)

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

/// Serve helloworld.Greeter (the tutorial's greeter).
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the first stdout line shows it). The
    /// default is also ferry's: both cannot run on it at once.
    #[arg(long, default_value = ferry_examples::GREETER_DEFAULT_LISTEN)]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    // Watch for Ctrl-C/SIGTERM before announcing: from then on a signal means a graceful stop.
    let shutdown = ferry_examples::shutdown_signal().context("cannot watch for Ctrl-C and SIGTERM")?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!("cannot listen on {} (is `ferry serve` or another greeter using it? try --listen)", args.listen)
    })?;
    ferry_examples::announce(&listener).context("cannot write to stdout")?;
    ferry_examples::serve_greeter(listener, shutdown).await.context("the server failed")?;
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
