//! Normalising and checking the names that callers register.

use super::DnsError;

/// Lowercases `name`, drops one trailing dot and checks it is a valid host
/// name: labels of 1 to 63 bytes of letters, digits, `-` and `_`, at most
/// 253 bytes in all.
pub(crate) fn normalize(name: &str) -> Result<String, DnsError> {
    let invalid = |reason| DnsError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if trimmed.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if trimmed.len() > 253 {
        return Err(invalid("the name is longer than 253 bytes"));
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(invalid("the name has an empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid("only letters, digits, '-' and '_' are allowed"));
        }
    }
    Ok(trimmed)
}

/// The part of `name` before `.domain`, or `None` when `name` is not below
/// `domain`. Both are normalised.
pub(crate) fn relative_to<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    name.strip_suffix(domain)?
        .strip_suffix('.')
        .filter(|rel| !rel.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_lowercases_and_trims_dot() {
        assert_eq!(
            normalize("DB.Mayfly.Internal.").unwrap(),
            "db.mayfly.internal"
        );
    }

    #[test]
    fn normalize_rejects_bad_names() {
        for bad in ["", ".", "a..b", "with space", "a/b", &"x".repeat(64)] {
            assert!(normalize(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn relative_to_domain() {
        assert_eq!(
            relative_to("db.mayfly.internal", "mayfly.internal"),
            Some("db")
        );
        assert_eq!(
            relative_to("a.b.mayfly.internal", "mayfly.internal"),
            Some("a.b")
        );
        assert_eq!(relative_to("mayfly.internal", "mayfly.internal"), None);
        assert_eq!(relative_to("xmayfly.internal", "mayfly.internal"), None);
        assert_eq!(relative_to("example.com", "mayfly.internal"), None);
    }
}
