//! Rate limiting for log lines on paths that a container can trigger at will
//! (DNS queries, tunnel connections).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows at most `per_second` log lines in each one-second window and
/// counts the lines it suppresses.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    per_second: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    emitted: u32,
    /// Lines suppressed since the last line that was allowed.
    pending: u64,
    total_suppressed: u64,
}

impl LogLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: Mutex::new(State {
                window_start: Instant::now(),
                emitted: 0,
                pending: 0,
                total_suppressed: 0,
            }),
        }
    }

    /// Returns `Some(n)` when a line may be logged now, where `n` is the
    /// number of lines suppressed since the previous allowed one, to log as
    /// a field. Returns `None` when this line must be dropped.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(state.window_start) >= Duration::from_secs(1) {
            state.window_start = now;
            state.emitted = 0;
        }
        if state.emitted < self.per_second {
            state.emitted += 1;
            Some(std::mem::take(&mut state.pending))
        } else {
            state.pending += 1;
            state.total_suppressed += 1;
            None
        }
    }

    /// Number of lines suppressed since this limiter was created.
    pub fn suppressed(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .total_suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_lines_per_window() {
        let limiter = LogLimiter::new(2);
        let start = Instant::now();
        assert_eq!(limiter.allow_at(start), Some(0));
        assert_eq!(limiter.allow_at(start), Some(0));
        assert_eq!(limiter.allow_at(start), None);
        assert_eq!(limiter.allow_at(start + Duration::from_millis(999)), None);
        assert_eq!(limiter.suppressed(), 2);
    }

    #[test]
    fn next_window_reports_suppressed() {
        let limiter = LogLimiter::new(1);
        let start = Instant::now();
        assert_eq!(limiter.allow_at(start), Some(0));
        assert_eq!(limiter.allow_at(start), None);
        assert_eq!(limiter.allow_at(start), None);
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.allow_at(later), Some(2));
        assert_eq!(limiter.allow_at(later), None);
        assert_eq!(limiter.suppressed(), 3);
    }

    #[test]
    fn zero_rate_suppresses_all() {
        let limiter = LogLimiter::new(0);
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.suppressed(), 1);
    }
}
