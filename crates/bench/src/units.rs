//! Byte sizes on the command line and in the report.

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A size for the bench: [`ferry_client::units::parse_size`], but not zero
/// (nothing to transfer).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    match ferry_client::units::parse_size(raw)? {
        0 => Err("must be more than 0 bytes".into()),
        bytes => Ok(bytes),
    }
}

/// A chunk size for `ferry`: a size in 1..=`MAX_CHUNK_SIZE`, checked here so a
/// bad value fails before anything is generated or started.
pub fn parse_chunk_size(raw: &str) -> Result<usize, String> {
    let bytes = parse_size(raw)?;
    match usize::try_from(bytes) {
        Ok(bytes) if bytes <= ferry_client::MAX_CHUNK_SIZE => Ok(bytes),
        _ => Err(format!("must be at most {} bytes", ferry_client::MAX_CHUNK_SIZE)),
    }
}

/// `1 GiB (1073741824 bytes)`, or just the bytes when no binary unit divides it.
pub fn describe_size(bytes: u64) -> String {
    let exact = [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")].into_iter().find(|(unit, _)| bytes.is_multiple_of(*unit));
    match exact {
        Some((unit, name)) => format!("{} {name} ({bytes} bytes)", bytes / unit),
        None => format!("{bytes} bytes"),
    }
}

/// Throughput in MB/s, MB = 10^6 bytes.
pub fn megabytes_per_second(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds / 1e6
}

/// kB as /proc reports them → MiB.
pub fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nonsense() {
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert!(parse_size("0").is_err());
        assert!(parse_chunk_size("8MiB").is_err());
        assert_eq!(parse_chunk_size("4MiB"), Ok(4 << 20));
    }

    #[test]
    fn describes_sizes() {
        assert_eq!(describe_size(GIB), "1 GiB (1073741824 bytes)");
        assert_eq!(describe_size(256 * MIB), "256 MiB (268435456 bytes)");
        assert_eq!(describe_size(1000), "1000 bytes");
    }
}
