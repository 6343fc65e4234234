//! `ferry serve`: open the local store, bind, serve until Ctrl-C or SIGTERM.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use ferry_server::ServerOptions;
use ferry_store::local::{LocalOptions, LocalStore};
use tokio::net::TcpListener;

use crate::cli::{LogFormat, ServeArgs};

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let options = LocalOptions { read_chunk: args.chunk_size };
    let store = LocalStore::open_with(&args.root, options)
        .with_context(|| format!("cannot use {} as the root", args.root.display()))?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("cannot read the listening address")?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback without TLS or authentication: anyone who can reach this address can read and write the root");
    }
    let shutdown = shutdown_signal()?;
    // The one line on stdout: scripts and tests read the bound address here.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}").and_then(|()| stdout.flush()).context("cannot write to stdout")?;
    tracing::info!(%addr, root = %args.root.display(), "ferry serving");
    let options = ServerOptions {
        stream_idle_timeout: args.idle_timeout,
        upload_ttl: args.upload_ttl,
        shutdown_grace: args.shutdown_grace,
        ..ServerOptions::default()
    };
    ferry_server::serve(listener, Arc::new(store), options, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Registers the Ctrl-C and SIGTERM handlers now, and returns a future that
/// completes on either. Registration must happen before readiness is
/// announced: until a handler exists, the signal's default action kills the
/// process instead of shutting it down gracefully.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
