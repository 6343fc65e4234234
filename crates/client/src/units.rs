//! Byte sizes as people write them, for command lines and config files.

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Parses `1073741824`, `256MiB`, `1GiB`, `64k` (binary: K/M/G/T = KiB/MiB/GiB/TiB)
/// or `500MB` (decimal).
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
        "t" | "tib" => TIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)")),
    };
    number.checked_mul(unit).ok_or_else(|| format!("{raw} does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("256MiB"), Ok(256 * MIB));
        assert_eq!(parse_size("64k"), Ok(64 * KIB));
        assert_eq!(parse_size("2TiB"), Ok(2 * TIB));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size(" 2 gib "), Ok(2 * GIB));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(parse_size("").is_err());
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("12parsecs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
