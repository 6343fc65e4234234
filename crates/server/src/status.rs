//! The one place where errors become gRPC statuses.
//!
//! Clients get a stable code and a message built only from what they sent;
//! OS errors and server paths go to the log, tagged with the request id that
//! the client's message also carries.

use ferry_store::Error as StoreError;
use tonic::{Code, Status};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client broke the protocol (message order, malformed fields).
    #[error("{0}")]
    Protocol(String),
    /// The incoming stream failed (the client cancelled or the connection
    /// dropped); its status is passed on unchanged.
    #[error("stream error: {0}")]
    Stream(#[from] Status),
    /// A resumable upload's stream ended without finishing: its bytes are
    /// kept, and the client resumes at `committed`.
    #[error("stream ended after {received} bytes without finishing; {committed} bytes are committed: resume there")]
    Incomplete { received: u64, committed: u64 },
    /// No credentials, or ones the server does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller, outside its scopes.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit that will not lift by waiting a moment: file size, quota,
    /// free space, a full disk. RESOURCE_EXHAUSTED without retry advice.
    #[error("{0}")]
    Exhausted(String),
    /// A limit that lifts soon: uploads or downloads at once, the caller's
    /// request rate. RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail
    /// saying when to try again, which is how clients tell the two apart.
    #[error("{message}")]
    Busy { message: String, retry_after: std::time::Duration },
    /// An offset outside what exists (ByteStream's negative or too-far offsets).
    #[error("{0}")]
    OutOfRange(String),
    /// The client sent nothing for longer than the idle timeout.
    #[error("no message for {0:?}: stream closed (what was received is kept if the upload is resumable)")]
    Idle(std::time::Duration),
}

/// Trailer that carries the committed offset with ABORTED, so a client can
/// resume without another round trip.
pub const COMMITTED_OFFSET_TRAILER: &str = "ferry-committed-offset";

impl ServiceError {
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::Protocol(message.into())
    }

    /// The status code for this error (the table in the README).
    pub fn code(&self) -> Code {
        match self {
            ServiceError::Store(e) => store_code(e),
            ServiceError::Protocol(_) => Code::InvalidArgument,
            ServiceError::Stream(status) => status.code(),
            ServiceError::Idle(_) => Code::DeadlineExceeded,
            ServiceError::Incomplete { .. } => Code::Aborted,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::Exhausted(_) | ServiceError::Busy { .. } => Code::ResourceExhausted,
            ServiceError::OutOfRange(_) => Code::OutOfRange,
        }
    }

    /// Converts to the status sent to the client, logging what it leaves out.
    pub fn into_status(self, request_id: u64) -> Status {
        let code = self.code();
        match self {
            ServiceError::Stream(status) => {
                tracing::debug!(request_id, %status, "request stream ended with an error");
                status
            }
            ServiceError::Store(StoreError::Io { op, source }) => {
                tracing::error!(request_id, op, error = %source, "storage failure");
                Status::new(code, format!("internal storage error (request id {request_id})"))
            }
            ServiceError::Store(StoreError::Unavailable { op, detail }) => {
                tracing::error!(request_id, op, error = %detail, "storage backend unavailable");
                Status::new(code, format!("storage backend unavailable; retry later (request id {request_id})"))
            }
            ServiceError::Store(StoreError::OffsetMismatch { committed, .. })
            | ServiceError::Incomplete { committed, .. } => {
                let message = self.to_string();
                tracing::debug!(request_id, ?code, error = %message, "resume needed");
                let mut status = Status::new(code, message);
                if let Ok(value) = committed.to_string().parse() {
                    status.metadata_mut().insert(COMMITTED_OFFSET_TRAILER, value);
                }
                status
            }
            ServiceError::Busy { message, retry_after } => {
                tracing::info!(request_id, ?retry_after, error = %message, "request refused for now");
                let advice = tonic_types::ErrorDetails::with_retry_info(Some(retry_after));
                <Status as tonic_types::StatusExt>::with_error_details(code, message, advice)
            }
            other => {
                // Info, not debug: refusals (authentication above all) are
                // what an operator looks for.
                tracing::info!(request_id, code = ferry_proto::code_name(code), error = %other, "request refused");
                Status::new(code, other.to_string())
            }
        }
    }
}

fn store_code(error: &StoreError) -> Code {
    match error {
        StoreError::InvalidPath(_)
        | StoreError::SizeMismatch { .. }
        | StoreError::DigestMismatch { .. }
        | StoreError::InvalidUploadId
        | StoreError::RangedNeedsSize => Code::InvalidArgument,
        StoreError::NotFound { .. } | StoreError::UploadNotFound { .. } => Code::NotFound,
        StoreError::OffsetMismatch { .. }
        | StoreError::Preempted { .. }
        | StoreError::RangeConflict { .. }
        | StoreError::RangesInFlight { .. } => Code::Aborted,
        StoreError::RangedUpload { .. }
        | StoreError::NotRangedUpload { .. }
        | StoreError::TooManyRanges { .. }
        | StoreError::RangesMissing { .. } => Code::FailedPrecondition,
        StoreError::RangeOutsideFile { .. } => Code::OutOfRange,
        StoreError::Unsupported { .. } => Code::Unimplemented,
        StoreError::AlreadyExists { .. } | StoreError::UploadExists { .. } => Code::AlreadyExists,
        StoreError::IsDirectory { .. }
        | StoreError::ParentNotDirectory { .. }
        | StoreError::NotAFile { .. }
        | StoreError::DirectoryNotEmpty { .. } => Code::FailedPrecondition,
        StoreError::Symlink { .. } => Code::PermissionDenied,
        StoreError::RangeStartsPastEnd { .. } | StoreError::RangeOverflow { .. } => Code::OutOfRange,
        StoreError::StorageFull => Code::ResourceExhausted,
        StoreError::Unavailable { .. } => Code::Unavailable,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use ferry_store::{PathError, Sha256};

    use super::*;

    /// The README's error-code table, pinned: changing a code must change this test.
    #[test]
    fn error_code_table() {
        let p = || "a/b".to_owned();
        let table: Vec<(ServiceError, Code)> = vec![
            (StoreError::InvalidPath(PathError::DotSegment).into(), Code::InvalidArgument),
            (ServiceError::protocol("chunk before header"), Code::InvalidArgument),
            (StoreError::SizeMismatch { declared: 1, received: 2 }.into(), Code::InvalidArgument),
            (
                StoreError::DigestMismatch { expected: Sha256::of(b"a"), actual: Sha256::of(b"b") }.into(),
                Code::InvalidArgument,
            ),
            (StoreError::NotFound { path: p() }.into(), Code::NotFound),
            (StoreError::AlreadyExists { path: p() }.into(), Code::AlreadyExists),
            (StoreError::IsDirectory { path: p() }.into(), Code::FailedPrecondition),
            (StoreError::ParentNotDirectory { path: p() }.into(), Code::FailedPrecondition),
            (StoreError::NotAFile { path: p() }.into(), Code::FailedPrecondition),
            (StoreError::DirectoryNotEmpty { path: p() }.into(), Code::FailedPrecondition),
            (StoreError::Symlink { path: p() }.into(), Code::PermissionDenied),
            (StoreError::RangeStartsPastEnd { offset: 2, size: 1 }.into(), Code::OutOfRange),
            (StoreError::RangeOverflow { offset: 2, length: u64::MAX }.into(), Code::OutOfRange),
            (StoreError::StorageFull.into(), Code::ResourceExhausted),
            (StoreError::InvalidUploadId.into(), Code::InvalidArgument),
            (StoreError::UploadNotFound { id: "x".into() }.into(), Code::NotFound),
            (StoreError::UploadExists { id: "x".into() }.into(), Code::AlreadyExists),
            (StoreError::OffsetMismatch { id: "x".into(), offset: 1, committed: 0 }.into(), Code::Aborted),
            (StoreError::Preempted { id: "x".into() }.into(), Code::Aborted),
            (StoreError::Unsupported { what: "ranged uploads" }.into(), Code::Unimplemented),
            (StoreError::RangedNeedsSize.into(), Code::InvalidArgument),
            (StoreError::RangedUpload { id: "x".into() }.into(), Code::FailedPrecondition),
            (StoreError::NotRangedUpload { id: "x".into() }.into(), Code::FailedPrecondition),
            (StoreError::RangeOutsideFile { offset: 8, length: 4, size: 10 }.into(), Code::OutOfRange),
            (StoreError::RangeConflict { id: "x".into(), offset: 0, length: 4 }.into(), Code::Aborted),
            (StoreError::TooManyRanges { id: "x".into(), max: 64 }.into(), Code::FailedPrecondition),
            (StoreError::RangesMissing { id: "x".into(), missing: 4, first_gap: 0 }.into(), Code::FailedPrecondition),
            (StoreError::RangesInFlight { id: "x".into() }.into(), Code::Aborted),
            (ServiceError::Idle(std::time::Duration::from_secs(1)), Code::DeadlineExceeded),
            (ServiceError::Incomplete { received: 5, committed: 4 }, Code::Aborted),
            (StoreError::io("writing", std::io::Error::other("EIO /srv/secret")).into(), Code::Internal),
            (StoreError::Unavailable { op: "reading", detail: "connection refused".into() }.into(), Code::Unavailable),
            (Status::cancelled("gone").into(), Code::Cancelled),
            (ServiceError::Unauthenticated("no token".into()), Code::Unauthenticated),
            (ServiceError::PermissionDenied("out of scope".into()), Code::PermissionDenied),
            (ServiceError::Exhausted("over a limit".into()), Code::ResourceExhausted),
            (ServiceError::OutOfRange("offset -1".into()), Code::OutOfRange),
        ];
        for (error, want) in table {
            let shown = format!("{error:?}");
            assert_eq!(error.into_status(7).code(), want, "{shown}");
        }
    }

    #[test]
    fn offset_mismatch_carries_the_committed_offset() {
        let status =
            ServiceError::from(StoreError::OffsetMismatch { id: "x".into(), offset: 9, committed: 4 }).into_status(1);
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status.metadata().get(COMMITTED_OFFSET_TRAILER).and_then(|v| v.to_str().ok()), Some("4"));
    }

    #[test]
    fn internal_errors_do_not_leak_os_detail() {
        let status = ServiceError::from(StoreError::io("writing", std::io::Error::other("disk /srv/ferry/x failed")))
            .into_status(42);
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal storage error (request id 42)");
    }
}
