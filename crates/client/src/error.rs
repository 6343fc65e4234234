//! The client's error type.

use std::path::PathBuf;

/// Anything a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// `reason` is the innermost cause ("Connection refused (os error 111)"):
    /// tonic's own error repeats each layer's name around it.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The TLS handshake failed: a certificate was refused on either side.
    /// Not retried: trying again cannot change a certificate.
    #[error("TLS handshake failed: {reason}")]
    Tls { reason: String },
    /// The server (or the transport) answered with an error status.
    #[error("{}", describe_status(.0))]
    Status(tonic::Status),
    /// A local I/O error. (`cause` rather than `source`: the message already
    /// includes it, and a source would make callers print it twice.)
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
    #[error("{0} already exists (use --force to replace it)")]
    LocalExists(PathBuf),
    /// The bytes received do not hash to the digest the server declared.
    #[error("integrity check failed for {path}: expected sha256 {expected}, got {actual}")]
    DigestMismatch { path: String, expected: String, actual: String },
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// Whether trying again may succeed: the connection dropped, the server
    /// was unavailable or busy (how the resumable calls decide to retry).
    pub fn is_transient(&self) -> bool {
        crate::resume::is_transient(self)
    }

    /// How long the server asked the client to wait before retrying (a
    /// `google.rpc.RetryInfo` detail on a busy refusal), if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::Status(status) => crate::resume::retry_after(status),
            _ => None,
        }
    }
}

// Not `#[from]`: that would also make the status the error's `source()`, and
// the CLI would print its message twice.
impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        // A handshake refused by the server (a missing or untrusted client
        // certificate) only surfaces on the first call, as UNKNOWN "transport
        // error"; its reason is deep in the source chain.
        match tls_failure(&status) {
            Some(reason) => Self::Tls { reason },
            None => Self::Status(status),
        }
    }
}

/// rustls errors reach us wrapped in `io::Error`s of kind `InvalidData`.
fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return Some(io.to_string());
        }
        cause = current.source();
    }
    None
}

impl Error {
    pub(crate) fn connect(url: &str, error: &tonic::transport::Error) -> Self {
        if let Some(reason) = tls_failure(error) {
            return Self::Tls { reason };
        }
        let mut innermost: &dyn std::error::Error = error;
        while let Some(source) = innermost.source() {
            innermost = source;
        }
        Self::Connect { url: url.to_owned(), reason: innermost.to_string() }
    }

    pub(crate) fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        Self::Io { context: context.into(), cause }
    }

    /// The gRPC code, when the error is a status from the server.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

fn describe_status(status: &tonic::Status) -> String {
    let message = status.message();
    match status.code() {
        tonic::Code::Unavailable => format!("server unavailable: {message}"),
        code => format!("{message} ({})", ferry_proto::code_name(code)),
    }
}
