//! One module per subcommand; each is a thin adapter over `ferry_client` or
//! `ferry_server`. Helpers shared by the client commands live here.

use std::future::Future;

use anyhow::{Context, bail};
use ferry_client::{Client, ClientOptions, Compression, TlsSettings};

use crate::cli::{CompressArg, ConnectionArgs};
use crate::exit::Interrupted;

pub mod get;
pub mod ls;
pub mod put;
pub mod rm;
pub mod serve;
pub mod stat;
pub mod token;
pub mod tree;

/// Connects to the server named by `--server` / `FERRY_SERVER`, with the
/// TLS files, token and compression the connection flags name.
pub async fn connect(connection: &ConnectionArgs, chunk_size: usize) -> anyhow::Result<Client> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
    };
    let token = match (&connection.token, &connection.token_file) {
        (Some(token), _) => Some(token.trim().to_owned()),
        (None, Some(file)) => Some(String::from_utf8_lossy(&read(file, "token file")?).trim().to_owned()),
        (None, None) => None,
    };
    let identity = match (&connection.cert, &connection.key) {
        (Some(cert), Some(key)) => Some((read(cert, "client certificate")?, read(key, "client key")?)),
        _ => None,
    };
    let tls = TlsSettings {
        ca_pem: connection.ca_cert.as_deref().map(|ca| read(ca, "CA certificate")).transpose()?,
        identity,
        domain: connection.tls_server_name.clone(),
    };
    let compression = connection.compress.map(|c| match c {
        CompressArg::Gzip => Compression::Gzip,
        CompressArg::Zstd => Compression::Zstd,
    });
    let options = ClientOptions { chunk_size, tls, token, compression, ..ClientOptions::default() };
    Ok(Client::connect_with(&connection.server, options).await?)
}

/// Runs a transfer until it ends or the user presses Ctrl-C. On Ctrl-C the
/// transfer's future is dropped: the call is cancelled (the server discards
/// the upload) and a partial local file is removed.
pub async fn interruptible<T>(transfer: impl Future<Output = Result<T, ferry_client::Error>>) -> anyhow::Result<T> {
    tokio::select! {
        result = transfer => Ok(result?),
        _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
    }
}

/// [`interruptible`] for work that already speaks anyhow.
pub async fn interruptible_anyhow<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
    }
}

/// The last segment of a remote path.
pub fn remote_file_name(remote: &str) -> anyhow::Result<&str> {
    match remote.rsplit('/').next() {
        Some(name) if !name.is_empty() => Ok(name),
        _ => bail!("{remote:?} does not name a file"),
    }
}

/// The file name of a local path, as a remote path segment.
pub fn local_file_name(local: &std::path::Path) -> anyhow::Result<String> {
    let name = local.file_name().with_context(|| format!("{} does not name a file", local.display()))?;
    name.to_str().map(str::to_owned).with_context(|| format!("{} is not valid UTF-8", local.display()))
}
