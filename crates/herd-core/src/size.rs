//! Sizes as people read them.

/// `999 B`, `1.5 MB`, `300.0 MB`: decimal units, one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Parses `500`, `10KB`, `2.5GB`, `5GiB`, `1T` (decimal units, or binary
/// ones with `i`) into bytes. The error says what was expected.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let expected = || {
        format!("`{text}` is not a size: expected a number with an optional unit, e.g. 500MB, 5GiB or 2.5GB")
    };
    let n: f64 = number.parse().map_err(|_| expected())?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(expected()),
    };
    let bytes = n * factor;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("500"), Ok(500));
        assert_eq!(parse_bytes("10KB"), Ok(10_000));
        assert_eq!(parse_bytes("2.5GB"), Ok(2_500_000_000));
        assert_eq!(parse_bytes(" 5GiB "), Ok(5 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("1t"), Ok(1_000_000_000_000));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("GB").is_err());
        assert!(parse_bytes("5 parsecs").unwrap_err().contains("e.g. 500MB"));
        assert!(parse_bytes("1e30").is_err());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(300_000_000), "300.0 MB");
        assert_eq!(human_bytes(2_000_000_000_000_000), "2000.0 TB");
    }
}
