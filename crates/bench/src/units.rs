//! Byte sizes on the command line and in the report.

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Parses `1073741824`, `256MiB`, `1GiB`, `64k` (binary: K/M/G = KiB/MiB/GiB)
/// or `500MB` (decimal). Zero is refused: nothing to transfer.
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let digits_end = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, suffix) = raw.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("expected a whole number with an optional unit (e.g. 256MiB), got {raw:?}"))?;
    let unit = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?} (use B, KiB, MiB, GiB, kB, MB or GB)")),
    };
    match number.checked_mul(unit) {
        Some(0) => Err("must be more than 0 bytes".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{raw} does not fit in 64 bits")),
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
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("256MiB"), Ok(256 * MIB));
        assert_eq!(parse_size("64k"), Ok(64 * KIB));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 2 gib "), Ok(2 * GIB));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(parse_size("").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("12parsecs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
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
