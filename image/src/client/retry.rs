//! When and how long to wait before retrying a registry request.

use std::time::Duration;

use reqwest::StatusCode;

/// Bounded exponential backoff for transient failures: HTTP 408, 429 and 5xx gateway errors,
/// failed connections and connections dropped mid-response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first one.
    pub max_attempts: u32,
    /// Delay before the second attempt; each later delay doubles, up to `max_delay`.
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Cap on a server's `Retry-After`, so that a registry cannot stall a pull for hours.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Returns the delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        self.initial_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }

    /// Returns the delay a `Retry-After` value requests, capped at `max_retry_after`.
    pub fn retry_after(&self, value: &str) -> Option<Duration> {
        parse_retry_after(value).map(|delay| delay.min(self.max_retry_after))
    }
}

/// Parses a `Retry-After` value in seconds.
// TODO: the HTTP-date form of Retry-After is ignored, so backoff applies instead.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Returns whether a response with `status` is worth retrying.
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(700),
            max_retry_after: Duration::from_secs(5),
        };
        let delays: Vec<u128> = (1..=5).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_millis(700));
    }

    #[test]
    fn retry_after_is_parsed_and_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(policy.retry_after(" 7200 "), Some(Duration::from_secs(60)));
        assert_eq!(policy.retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(policy.retry_after("-1"), None);
    }

    #[test]
    fn retryable_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                is_retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [200, 206, 400, 401, 403, 404, 416, 501] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }
}
