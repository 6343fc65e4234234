//! [`StorePath`]: a validated, root-relative file path. Every path a client
//! sends becomes one of these before the storage layer sees it, so a path that
//! could climb out of the root (`..`, an absolute path, a `\`) cannot even be
//! represented.

use std::fmt;

/// Longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest single segment accepted, in bytes (the common filesystem limit).
pub const MAX_SEGMENT_LEN: usize = 255;
/// Top-level name reserved for the server's own state (staging, sessions).
pub const RESERVED_NAME: &str = ".ferry";

/// Why a path was refused. The message is safe to show a client: it names only
/// what the client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is {len} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong { len: usize },
    #[error("a path segment is {len} bytes long; the limit is {MAX_SEGMENT_LEN}")]
    SegmentTooLong { len: usize },
    #[error("path must be relative (no leading '/')")]
    Absolute,
    #[error("path has an empty segment (a trailing '/' or '//')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a NUL or control character")]
    ControlCharacter,
    #[error("'{RESERVED_NAME}' is reserved for the server")]
    Reserved,
}

/// A relative, `/`-separated path that is safe to resolve under a root.
///
/// Invariants (checked by [`StorePath::parse`], the only constructor): not
/// empty; at most [`MAX_PATH_LEN`] bytes and [`MAX_SEGMENT_LEN`] per segment;
/// no leading `/`, no empty, `.` or `..` segments; no `\`, NUL or control
/// characters; the first segment is not [`RESERVED_NAME`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath(String);

impl StorePath {
    /// Validates `raw` as a store path.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong { len: raw.len() });
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if raw.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
        if raw.contains('\\') {
            return Err(PathError::Backslash);
        }
        for segment in raw.split('/') {
            validate_segment(segment)?;
        }
        if raw.split('/').next() == Some(RESERVED_NAME) {
            return Err(PathError::Reserved);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The path as sent by the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, root first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The parent's segments and the final name.
    pub fn split_last(&self) -> (Vec<&str>, &str) {
        let mut segments: Vec<&str> = self.segments().collect();
        // parse() guarantees at least one segment.
        let name = segments.pop().unwrap_or_default();
        (segments, name)
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.split_last().1
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        Self::parse(&format!("{}/{name}", self.0))
    }

    /// A child of `parent` (the root when `None`), validated.
    pub fn child_of(parent: Option<&StorePath>, name: &str) -> Result<Self, PathError> {
        match parent {
            Some(parent) => parent.join(name),
            None => Self::parse(name),
        }
    }
}

fn validate_segment(segment: &str) -> Result<(), PathError> {
    match segment {
        "" => Err(PathError::EmptySegment),
        "." | ".." => Err(PathError::DotSegment),
        s if s.len() > MAX_SEGMENT_LEN => Err(PathError::SegmentTooLong { len: s.len() }),
        _ => Ok(()),
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({:?})", self.0)
    }
}

impl AsRef<str> for StorePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["a", "a/b/c.txt", "dir/.hidden", "…/ünïcode", "a..b", ".ferryx", "x/.ferry", "a b/c d"] {
            assert_eq!(StorePath::parse(ok).map(|p| p.0), Ok(ok.to_owned()), "{ok}");
        }
        let long_segment = "s".repeat(MAX_SEGMENT_LEN);
        assert!(StorePath::parse(&long_segment).is_ok());
    }

    #[test]
    fn refuses_every_spelling_of_escape_and_garbage() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("//x", PathError::Absolute),
            ("..", PathError::DotSegment),
            ("../x", PathError::DotSegment),
            ("a/../../x", PathError::DotSegment),
            ("a/./b", PathError::DotSegment),
            (".", PathError::DotSegment),
            ("a/..", PathError::DotSegment),
            ("a//b", PathError::EmptySegment),
            ("a/", PathError::EmptySegment),
            ("..\\x", PathError::Backslash),
            ("a\\b", PathError::Backslash),
            ("a\0b", PathError::ControlCharacter),
            ("a\nb", PathError::ControlCharacter),
            ("a\u{7f}", PathError::ControlCharacter),
            ("a\u{85}", PathError::ControlCharacter),
            (".ferry", PathError::Reserved),
            (".ferry/staging/x", PathError::Reserved),
        ];
        for (raw, want) in cases {
            assert_eq!(StorePath::parse(raw).as_ref(), Err(want), "{raw:?}");
        }
        let too_long = "a/".repeat(MAX_PATH_LEN / 2) + "a";
        assert!(matches!(StorePath::parse(&too_long), Err(PathError::TooLong { .. })));
        let long_segment = "s".repeat(MAX_SEGMENT_LEN + 1);
        assert!(matches!(StorePath::parse(&long_segment), Err(PathError::SegmentTooLong { .. })));
    }

    #[test]
    fn splits_and_joins() -> Result<(), PathError> {
        let p = StorePath::parse("a/b/c")?;
        assert_eq!(p.split_last(), (vec!["a", "b"], "c"));
        assert_eq!(p.file_name(), "c");
        assert_eq!(StorePath::child_of(Some(&p), "d")?.as_str(), "a/b/c/d");
        assert_eq!(StorePath::child_of(None, "d")?.as_str(), "d");
        assert_eq!(StorePath::child_of(None, ".ferry"), Err(PathError::Reserved));
        Ok(())
    }
}
