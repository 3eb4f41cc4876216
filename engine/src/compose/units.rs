//! Compose's byte-size and file-mode formats.

/// Parses a Compose byte value: a number of bytes with an optional unit `b`, `k`/`kb`,
/// `m`/`mb` or `g`/`gb` (powers of 1024, case-insensitive), such as `64m` or `1gb`.
pub(super) fn parse_bytes(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let digits = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// Parses a file mode, which the Compose Specification always writes in octal: `0440`,
/// `0o440` and `440` are the same mode.
pub(super) fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_values() {
        assert_eq!(parse_bytes("2b"), Some(2));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("64m"), Some(64 << 20));
        assert_eq!(parse_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_bytes("2048kb"), Some(2048 << 10));
        assert_eq!(parse_bytes("1t"), None);
        assert_eq!(parse_bytes("m"), None);
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0440"), Some(0o440));
        assert_eq!(parse_mode("0o755"), Some(0o755));
        assert_eq!(parse_mode("1777"), Some(0o1777));
        assert_eq!(parse_mode("288"), None);
        assert_eq!(parse_mode("77777"), None);
        assert_eq!(parse_mode("0"), Some(0));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode("rw"), None);
    }
}
