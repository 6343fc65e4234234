//! `ferry serve`: settle the settings, open the store, bind, serve until
//! Ctrl-C or SIGTERM (and the metrics listener beside it, if asked).

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use ferry_store::local::{LocalOptions, LocalStore};
use ferry_store::s3::S3Store;
use tokio::net::TcpListener;

use crate::cli::{LogFormat, ServeArgs};
use crate::config::{self, ConfigFile, Storage};
use crate::exit::BadSettings;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path).context(BadSettings)?,
        None => ConfigFile::default(),
    };
    let settings = config::resolve(args, file).context(BadSettings)?;
    init_logging(settings.log_format);
    raise_open_file_limit(settings.server.limits.max_connections);
    let (store, location): (Arc<dyn ferry_store::Store>, String) = match &settings.storage {
        Storage::Local(root) => {
            let options = LocalOptions { read_chunk: settings.chunk_size };
            let store = LocalStore::open_with(root, options)
                .with_context(|| format!("cannot use {} as the root", root.display()))?;
            (Arc::new(store), root.display().to_string())
        }
        Storage::S3(config) => {
            let location = format!("s3://{}/{}", config.bucket, config.prefix);
            let store = S3Store::open(config.clone()).await.with_context(|| format!("cannot use {location}"))?;
            (Arc::new(store), location)
        }
    };
    let listener =
        TcpListener::bind(settings.listen).await.with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr().context("cannot read the listening address")?;
    let metrics_listener = match settings.metrics_listen {
        Some(at) => Some(TcpListener::bind(at).await.with_context(|| format!("cannot listen for metrics on {at}"))?),
        None => None,
    };
    let options = settings.server;
    let tls = options.tls.is_some();
    if !addr.ip().is_loopback() && !tls {
        tracing::warn!(%addr, "serving plain text beyond loopback (--insecure): traffic and tokens can be read on the network");
    }
    if options.auth.is_open() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "no tokens or client identities configured: anyone who can reach this address can read and write the root");
    }
    let shutdown = shutdown_signal()?;
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(metrics_listener) = metrics_listener {
        let metrics_addr = metrics_listener.local_addr().context("cannot read the metrics address")?;
        tracing::info!(%metrics_addr, "serving metrics at /metrics");
        let stopped = async move {
            let _ = metrics_stopped.await;
        };
        tokio::spawn(ferry_server::serve_metrics(metrics_listener, options.metrics.clone(), store.clone(), stopped));
        let mut stdout = std::io::stdout();
        writeln!(stdout, "metrics on {metrics_addr}")
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")?;
    }
    // The last line on stdout before serving: scripts and tests read the bound address here.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}").and_then(|()| stdout.flush()).context("cannot write to stdout")?;
    tracing::info!(%addr, storage = %location, tls, auth = !options.auth.is_open(), "ferry serving");
    ferry_server::serve(listener, store, options, shutdown).await?;
    let _ = stop_metrics.send(());
    tracing::info!("stopped");
    Ok(())
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime
/// does for its servers. The soft limit is 1024 on many systems, which is
/// also the default connection limit: without this, a busy server would run
/// out of descriptors (every connection, upload and batched file holds one)
/// before reaching its own limits, and fail accepts with EMFILE.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // An unlimited hard limit cannot be the soft one (Linux caps descriptors
    // at fs.nr_open, 2^20 by default): aim for that cap instead.
    const UNLIMITED_TARGET: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let raised = match (limit.current, limit.maximum) {
        (Some(current), maximum) if maximum.unwrap_or(UNLIMITED_TARGET) > current => {
            let target = Some(maximum.unwrap_or(UNLIMITED_TARGET));
            let wanted = rustix::process::Rlimit { current: target, maximum };
            match setrlimit(Resource::Nofile, wanted) {
                Ok(()) => target,
                Err(error) => {
                    tracing::warn!(%error, "could not raise the open-file limit");
                    Some(current)
                }
            }
        }
        (current, _) => current,
    };
    // Room for the connections plus files being written and read.
    let needed = max_connections as u64 + 256;
    match raised {
        Some(open_files) if open_files < needed => tracing::warn!(
            open_files,
            max_connections,
            "the open-file limit is below the connection limit plus working room: raise `ulimit -n` (hard) or lower max_connections"
        ),
        open_files => tracing::debug!(?open_files, "open-file limit"),
    }
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

/// Logs go to stderr. Each line inside a call carries the call's span:
/// `rpc{id=… method=… who=…}` in the human format, `"span"`/`"spans"` objects
/// in JSON, so one request id ties together every line a call causes.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}
