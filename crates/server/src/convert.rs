//! Conversions between wire messages and storage types.

use std::time::SystemTime;

use ferry_proto::v1::{EntryKind as WireKind, FileInfo, WriteMode as WireMode};
use ferry_store::{EntryKind, Metadata, Sha256, WriteMode};

use crate::status::ServiceError;

pub(crate) fn file_info(meta: &Metadata) -> FileInfo {
    FileInfo {
        path: meta.path.as_str().to_owned(),
        kind: match meta.kind {
            EntryKind::File => WireKind::File,
            EntryKind::Directory => WireKind::Directory,
        } as i32,
        size: meta.size,
        // A directory without a time (on S3) is sent without one, so that a
        // tree copy does not date it to 1970.
        mtime: meta.mtime.map(Into::into),
        permissions: meta.permissions,
        sha256: meta.sha256.map(|d| d.to_hex()).unwrap_or_default(),
    }
}

/// An optional hex digest field: empty means "not given".
pub(crate) fn optional_digest(field: &str, hex: &str) -> Result<Option<Sha256>, ServiceError> {
    if hex.is_empty() {
        return Ok(None);
    }
    Sha256::from_hex(hex).map(Some).map_err(|_| ServiceError::protocol(format!("{field} must be 64 hex characters")))
}

pub(crate) fn write_mode(raw: i32) -> Result<WriteMode, ServiceError> {
    match WireMode::try_from(raw) {
        Ok(WireMode::Unspecified | WireMode::Overwrite) => Ok(WriteMode::Overwrite),
        Ok(WireMode::CreateOnly) => Ok(WriteMode::CreateOnly),
        Err(_) => Err(ServiceError::protocol(format!("unknown write mode {raw}"))),
    }
}

/// Seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range the
/// protobuf Timestamp spec allows.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

pub(crate) fn mtime(raw: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, ServiceError> {
    let invalid = || ServiceError::protocol("mtime is not a valid timestamp");
    let Some(ts) = raw else { return Ok(None) };
    // prost would silently normalise out-of-range nanos; the spec says they are invalid.
    if !(0..1_000_000_000).contains(&ts.nanos) || !TIMESTAMP_SECONDS.contains(&ts.seconds) {
        return Err(invalid());
    }
    SystemTime::try_from(ts).map(Some).map_err(|_| invalid())
}

pub(crate) fn permissions(raw: Option<u32>) -> Result<Option<u32>, ServiceError> {
    match raw {
        Some(bits) if bits > 0o7777 => Err(ServiceError::protocol("permissions must be at most 0o7777")),
        other => Ok(other),
    }
}
