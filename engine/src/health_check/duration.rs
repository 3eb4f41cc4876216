//! Durations in the syntax of Go's `time.ParseDuration`, which Docker's duration flags use
//! (`--health-interval 2s`, `500ms`, `1m30s`, `1.5h`).

use std::time::Duration;

use super::HealthCheckError;

/// Parses a Docker duration flag: one or more decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `1m30s`, or a bare
/// `0`. A leading `+` is allowed, but a negative duration is rejected, as Docker rejects it for
/// health check flags.
pub fn parse_duration(text: &str) -> Result<Duration, HealthCheckError> {
    let invalid = |reason| HealthCheckError::InvalidDuration {
        text: text.to_owned(),
        reason,
    };
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(invalid("it is negative"));
    }
    if rest.is_empty() {
        return Err(invalid("it is empty"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }

    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, after) = split_digits(rest);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => split_digits(after),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid("a number is missing"));
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(invalid("a unit is missing")),
            _ => return Err(invalid("the unit is unknown")),
        };

        let too_large = || invalid("it is too large");
        let whole_nanos = decimal(whole)
            .and_then(|value| value.checked_mul(unit_nanos))
            .ok_or_else(too_large)?;
        total = total
            .checked_add(whole_nanos)
            .and_then(|sum| sum.checked_add(fraction_nanos(fraction, unit_nanos)))
            .ok_or_else(too_large)?;
        rest = after;
    }

    // Go's durations are signed 64-bit nanosecond counts, about 292 years.
    if total > i64::MAX as u128 {
        return Err(invalid("it is too large"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// A duration for messages, rounded to tenths of a second from one second up (`4s`,
/// `4.5s`) and to whole milliseconds below (`250ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundedDuration(pub Duration);

impl std::fmt::Display for RoundedDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000_000 {
            return write!(f, "{:?}", self.0);
        }
        if nanos < 999_500_000 {
            return write!(f, "{}ms", (nanos + 500_000) / 1_000_000);
        }
        let tenths = (nanos + 50_000_000) / 100_000_000;
        match tenths % 10 {
            0 => write!(f, "{}s", tenths / 10),
            fraction => write!(f, "{}.{fraction}s", tenths / 10),
        }
    }
}

/// Splits `text` after its leading ASCII digits.
fn split_digits(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Returns the value of a digit string (0 when empty), `None` on overflow.
fn decimal(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |value, digit| {
        value.checked_mul(10)?.checked_add(u128::from(digit - b'0'))
    })
}

/// Returns the nanoseconds of `0.<digits>` units, rounded down. Digits past the 20th are
/// below a nanosecond for every unit up to hours, so they are ignored.
fn fraction_nanos(digits: &str, unit_nanos: u128) -> u128 {
    let digits = &digits[..digits.len().min(20)];
    let value = decimal(digits).unwrap_or(0);
    value * unit_nanos / 10u128.pow(digits.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_durations() {
        let cases = [
            ("0", Duration::ZERO),
            ("2s", Duration::from_secs(2)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("+3s", Duration::from_secs(3)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1h2m3s4ms", Duration::from_millis(3_723_004)),
            ("0s", Duration::ZERO),
            ("0.000000001s", Duration::from_nanos(1)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn invalid_durations() {
        let cases = [
            ("", "it is empty"),
            ("5", "a unit is missing"),
            ("1m30", "a unit is missing"),
            ("-2s", "it is negative"),
            ("2x", "the unit is unknown"),
            ("2 s", "the unit is unknown"),
            ("s", "a number is missing"),
            (".s", "a number is missing"),
            ("3000000h", "it is too large"),
            (
                "99999999999999999999999999999999999999999s",
                "it is too large",
            ),
        ];
        for (text, reason) in cases {
            assert_eq!(
                parse_duration(text),
                Err(HealthCheckError::InvalidDuration {
                    text: text.to_owned(),
                    reason
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn rounded_durations() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(20), "20µs"),
            (Duration::from_micros(1_500), "2ms"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_nanos(999_499_999), "999ms"),
            (Duration::from_nanos(999_500_000), "1s"),
            (Duration::from_nanos(4_001_039_370), "4s"),
            (Duration::from_millis(4_550), "4.6s"),
            (Duration::from_secs(90), "90s"),
        ];
        for (duration, expected) in cases {
            assert_eq!(
                RoundedDuration(duration).to_string(),
                expected,
                "{duration:?}"
            );
        }
    }

    #[test]
    fn error_names_the_value() {
        let message = parse_duration("10 seconds").unwrap_err().to_string();
        assert!(message.contains("\"10 seconds\""), "{message}");
        assert!(message.contains("1m30s"), "{message}");
    }
}
