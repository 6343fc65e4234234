//! ByteStream resource names ↔ ferry paths.
//!
//! | resource name | ferry path |
//! |---|---|
//! | read `{instance}/blobs/{sha256}/{size}` | `cas/{instance}/blobs/{sha256}` |
//! | write `{instance}/uploads/{uuid}/blobs/{sha256}/{size}[/anything]` | `cas/{instance}/blobs/{sha256}` |
//! | read `files/{path}` | `{path}` |
//! | write `uploads/{uuid}/files/{path}` | `{path}` |
//!
//! `{instance}` may be empty (then the name starts with `blobs/` or
//! `uploads/`) or several segments, none of them a REAPI keyword. A
//! `blobs/sha256/{hash}/{size}` form (REAPI's digest-function segment) is
//! accepted for SHA-256; other digest functions and `compressed-blobs` are
//! refused as INVALID_ARGUMENT.

use ferry_store::{Sha256, StorePath};

use crate::service::parse_path;
use crate::status::ServiceError;

/// Where content-addressed blobs live in the store.
pub const CAS_DIR: &str = "cas";

/// What a resource name designates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A content-addressed blob: its digest and size are part of its name.
    Blob { path: StorePath, sha256: Sha256, size: u64 },
    /// A ferry file at a path.
    File(StorePath),
}

impl Target {
    pub fn path(&self) -> &StorePath {
        match self {
            Target::Blob { path, .. } | Target::File(path) => path,
        }
    }
}

const KEYWORDS: [&str; 4] = ["blobs", "uploads", "compressed-blobs", "files"];

fn usage(name: &str, forms: &str) -> ServiceError {
    ServiceError::protocol(format!("unrecognised resource name {name:?}: expected {forms}"))
}

const READ_FORMS: &str = "{instance}/blobs/{sha256}/{size} or files/{path}";
const WRITE_FORMS: &str = "{instance}/uploads/{uuid}/blobs/{sha256}/{size} or uploads/{uuid}/files/{path}";

/// A `Read`'s resource name.
pub fn parse_read(name: &str) -> Result<Target, ServiceError> {
    if let Some(path) = name.strip_prefix("files/") {
        return Ok(Target::File(parse_path(path)?));
    }
    let segments: Vec<&str> = name.split('/').collect();
    let at = segments.iter().position(|s| KEYWORDS.contains(s)).ok_or_else(|| usage(name, READ_FORMS))?;
    match segments[at] {
        "blobs" => blob(name, &segments[..at], &segments[at + 1..], READ_FORMS),
        "compressed-blobs" => Err(ServiceError::protocol("compressed blobs are not supported; read blobs/...")),
        _ => Err(usage(name, READ_FORMS)),
    }
}

/// A `Write`'s (or `QueryWriteStatus`'s) resource name, and the part of it
/// that identifies the upload session (the name without trailing metadata).
pub fn parse_write(name: &str) -> Result<(Target, String), ServiceError> {
    let segments: Vec<&str> = name.split('/').collect();
    let at = segments.iter().position(|s| KEYWORDS.contains(s)).ok_or_else(|| usage(name, WRITE_FORMS))?;
    if segments[at] != "uploads" || segments.len() < at + 3 || segments[at + 1].is_empty() {
        return Err(usage(name, WRITE_FORMS));
    }
    let (instance, rest) = (&segments[..at], &segments[at + 2..]);
    match rest[0] {
        "files" if instance.is_empty() => {
            let path = parse_path(&rest[1..].join("/"))?;
            Ok((Target::File(path), name.to_owned()))
        }
        "blobs" => {
            // REAPI allows metadata after the size; the session is the name up to the size.
            let digest_parts = if rest.get(1) == Some(&"sha256") { 4 } else { 3 };
            if rest.len() < digest_parts {
                return Err(usage(name, WRITE_FORMS));
            }
            let target = blob(name, instance, &rest[1..digest_parts], WRITE_FORMS)?;
            let key = segments[..at + 2 + digest_parts].join("/");
            Ok((target, key))
        }
        "compressed-blobs" => Err(ServiceError::protocol("compressed blobs are not supported; write blobs/...")),
        _ => Err(usage(name, WRITE_FORMS)),
    }
}

/// `{sha256}/{size}` or `sha256/{sha256}/{size}` after a `blobs` segment.
fn blob(name: &str, instance: &[&str], digest: &[&str], forms: &str) -> Result<Target, ServiceError> {
    let (hash, size) = match digest {
        [hash, size] => (*hash, *size),
        ["sha256", hash, size] => (*hash, *size),
        [function, _, _] => {
            return Err(ServiceError::protocol(format!("digest function {function:?} is not supported (only sha256)")));
        }
        _ => return Err(usage(name, forms)),
    };
    let sha256 = Sha256::from_hex(hash)
        .map_err(|_| ServiceError::protocol(format!("{hash:?} is not a SHA-256 digest (64 lowercase hex digits)")))?;
    let size = size.parse::<u64>().map_err(|_| ServiceError::protocol(format!("{size:?} is not a blob size")))?;
    let mut path = vec![CAS_DIR];
    path.extend(instance.iter().copied());
    path.extend(["blobs", hash]);
    Ok(Target::Blob { path: parse_path(&path.join("/"))?, sha256, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn blob_path(target: &Target) -> &str {
        target.path().as_str()
    }

    #[test]
    fn bazel_names_map_into_the_cas() {
        let read = parse_read(&format!("main/blobs/{HASH}/0")).unwrap();
        assert_eq!(blob_path(&read), format!("cas/main/blobs/{HASH}"));
        assert!(matches!(read, Target::Blob { size: 0, .. }));
        let read = parse_read(&format!("blobs/{HASH}/12")).unwrap();
        assert_eq!(blob_path(&read), format!("cas/blobs/{HASH}"));
        let read = parse_read(&format!("a/b/blobs/sha256/{HASH}/12")).unwrap();
        assert_eq!(blob_path(&read), format!("cas/a/b/blobs/{HASH}"));

        let uuid = "3f0c8f3e-7e2c-4c4b-9f1e-0d6c1b2a3c4d";
        let (write, key) = parse_write(&format!("main/uploads/{uuid}/blobs/{HASH}/12/extra/meta")).unwrap();
        assert_eq!(blob_path(&write), format!("cas/main/blobs/{HASH}"));
        assert_eq!(key, format!("main/uploads/{uuid}/blobs/{HASH}/12"));
    }

    #[test]
    fn files_map_to_their_paths() {
        assert_eq!(parse_read("files/models/a.bin").unwrap(), Target::File(StorePath::parse("models/a.bin").unwrap()));
        let (write, key) = parse_write("uploads/u1/files/models/a.bin").unwrap();
        assert_eq!(write, Target::File(StorePath::parse("models/a.bin").unwrap()));
        assert_eq!(key, "uploads/u1/files/models/a.bin");
    }

    #[test]
    fn malformed_names_are_refused() {
        for name in [
            "",
            "models/a.bin",
            "blobs/xyz/12",
            &format!("blobs/{HASH}/-1"),
            &format!("blobs/md5/{HASH}/1"),
            &format!("compressed-blobs/zstd/{HASH}/1"),
            "files/../etc/passwd",
            "files/.ferry/uploads",
            "uploads//files/a",
            "uploads/u1/files/../../x",
            "i/uploads/u1/files/a",
        ] {
            let refused = parse_read(name).is_err() && parse_write(name).is_err();
            assert!(refused, "{name:?} should be refused");
        }
    }
}
