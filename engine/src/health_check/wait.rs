//! Waiting until a running container passes its command health check.

use std::time::{Duration, Instant};

use super::{
    HealthCheck, RoundedDuration, DEFAULT_INTERVAL, DEFAULT_RETRIES, DEFAULT_START_INTERVAL,
    DEFAULT_TIMEOUT,
};
use crate::runtime::{ExecOutcome, ProcessHandle, RuntimeError};

/// A container that did not pass its command health check.
#[derive(Debug, thiserror::Error)]
pub enum CommandHealthError {
    /// `retries` counted checks in a row failed.
    #[error(
        "health check `{command}` failed {} in a row; fix the service or the check. \
         Last check output: {}",
        count(*failing_streak, "time", "times"),
        show_output(last_output)
    )]
    Unhealthy {
        command: String,
        failing_streak: u32,
        last_output: String,
    },
    /// The caller's deadline passed before a check succeeded.
    #[error(
        "health check `{command}` did not pass within {} ({} run); raise the health deadline if \
         the service starts slowly. Last check output: {}",
        RoundedDuration(*waited),
        count(*checks, "check", "checks"),
        last_output.as_deref().map_or("(no check finished)", show_output)
    )]
    DeadlineExceeded {
        command: String,
        waited: Duration,
        checks: u32,
        last_output: Option<String>,
    },
    /// The check could not run, for example because the container exited or has no init.
    #[error("health check `{command}` could not run: {source}")]
    Runtime {
        command: String,
        #[source]
        source: RuntimeError,
    },
}

/// Formats `number` with the singular or plural noun: "1 time", "3 times".
fn count(number: u32, singular: &str, plural: &str) -> String {
    match number {
        1 => format!("1 {singular}"),
        _ => format!("{number} {plural}"),
    }
}

fn show_output(output: &str) -> &str {
    let trimmed = output.trim_end();
    if trimmed.is_empty() {
        "(none)"
    } else {
        trimmed
    }
}

/// Runs `check` in the container behind `handle` until it passes, and returns when it does.
///
/// The module documentation describes the schedule. The start of the container is taken to
/// be the moment of this call. A check still running at `deadline` is killed. With
/// [`super::HealthTest::None`] there is nothing to run and this returns at once.
pub async fn wait_until_healthy(
    handle: &ProcessHandle,
    check: &HealthCheck,
    deadline: Instant,
) -> Result<(), CommandHealthError> {
    let Some(argv) = check.test.argv() else {
        return Ok(());
    };
    let command = check.test.to_string();
    let timing = Timing::of(check);
    let started = Instant::now();
    let grace_end = started + check.start_period.max(timing.interval);

    let mut checks = 0u32;
    let mut failing_streak = 0u32;
    let mut last_output = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(CommandHealthError::DeadlineExceeded {
                command,
                waited: now - started,
                checks,
                last_output,
            });
        }

        // The deadline cuts a check short, and such a check ends the wait as past the deadline.
        let timeout = timing.timeout.min(deadline - now);
        let outcome = match handle.exec(argv.clone(), timeout).await {
            Ok(outcome) => outcome,
            // Docker counts a check that failed to start as a failed check.
            Err(RuntimeError::ExecFailed { message, .. }) => ExecOutcome {
                code: Some(-1),
                output: message,
                truncated: false,
            },
            Err(source) => return Err(CommandHealthError::Runtime { command, source }),
        };
        checks += 1;

        if outcome.success() {
            tracing::info!(health_check = %command, checks, "health check passed");
            return Ok(());
        }
        let output = match outcome.code {
            Some(_) => outcome.output,
            None => format!(
                "timed out after {}; {}",
                RoundedDuration(timeout),
                outcome.output
            ),
        };
        tracing::debug!(health_check = %command, code = ?outcome.code, "health check failed");
        if outcome.code.is_none() && timeout < timing.timeout {
            return Err(CommandHealthError::DeadlineExceeded {
                command,
                waited: Instant::now() - started,
                checks,
                last_output: Some(output),
            });
        }

        if now >= grace_end {
            failing_streak += 1;
            if failing_streak >= timing.retries {
                return Err(CommandHealthError::Unhealthy {
                    command,
                    failing_streak,
                    last_output: output,
                });
            }
        }
        last_output = Some(output);

        let after = Instant::now();
        let next = if after < grace_end {
            (after + timing.start_interval).min(grace_end)
        } else {
            after + timing.interval
        };
        tokio::time::sleep_until(next.min(deadline).into()).await;
    }
}

/// The check's timing with zero values replaced by the defaults.
struct Timing {
    interval: Duration,
    timeout: Duration,
    start_interval: Duration,
    retries: u32,
}

impl Timing {
    fn of(check: &HealthCheck) -> Self {
        let or_default = |value: Duration, default| {
            if value.is_zero() {
                default
            } else {
                value
            }
        };
        Self {
            interval: or_default(check.interval, DEFAULT_INTERVAL),
            timeout: or_default(check.timeout, DEFAULT_TIMEOUT),
            start_interval: or_default(check.start_interval, DEFAULT_START_INTERVAL),
            retries: if check.retries == 0 {
                DEFAULT_RETRIES
            } else {
                check.retries
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health_check::HealthTest;

    /// Compiles only if the wait can run in a spawned task.
    #[allow(dead_code)]
    fn wait_future_is_send(handle: &'static ProcessHandle, check: &'static HealthCheck) {
        fn spawnable<T: Send + 'static>(_: T) {}
        spawnable(wait_until_healthy(handle, check, Instant::now()));
        spawnable(handle.exec(Vec::new(), Duration::ZERO));
    }

    #[test]
    fn unhealthy_message_counts_failures() {
        let error = CommandHealthError::Unhealthy {
            command: "false".into(),
            failing_streak: 1,
            last_output: String::new(),
        };
        assert_eq!(
            error.to_string(),
            "health check `false` failed 1 time in a row; fix the service or the check. \
             Last check output: (none)"
        );
        let error = CommandHealthError::Unhealthy {
            command: "false".into(),
            failing_streak: 3,
            last_output: "not ready\n".into(),
        };
        assert!(
            error.to_string().contains("failed 3 times in a row"),
            "{error}"
        );
        assert!(
            error.to_string().ends_with("Last check output: not ready"),
            "{error}"
        );
    }

    #[test]
    fn deadline_message_rounds_duration() {
        let error = CommandHealthError::DeadlineExceeded {
            command: "false".into(),
            waited: Duration::from_nanos(4_001_039_370),
            checks: 4,
            last_output: None,
        };
        let message = error.to_string();
        assert!(message.contains("within 4s (4 checks run)"), "{message}");
        let error = CommandHealthError::DeadlineExceeded {
            command: "false".into(),
            waited: Duration::from_millis(1_250),
            checks: 1,
            last_output: None,
        };
        let message = error.to_string();
        assert!(message.contains("within 1.3s (1 check run)"), "{message}");
    }

    #[test]
    fn zero_timing_means_default() {
        let mut check = HealthCheck::new(HealthTest::Exec(vec!["true".into()]));
        check.interval = Duration::ZERO;
        check.timeout = Duration::ZERO;
        check.start_interval = Duration::ZERO;
        check.retries = 0;
        let timing = Timing::of(&check);
        assert_eq!(timing.interval, DEFAULT_INTERVAL);
        assert_eq!(timing.timeout, DEFAULT_TIMEOUT);
        assert_eq!(timing.start_interval, DEFAULT_START_INTERVAL);
        assert_eq!(timing.retries, DEFAULT_RETRIES);
    }
}
