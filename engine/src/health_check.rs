//! A command health check with Docker's HEALTHCHECK semantics: the plain settings that the
//! CLI flags, compose files and image configs all turn into, and the loop that waits until
//! a running container passes it.
//!
//! # Docker's schedule
//!
//! The Dockerfile reference (HEALTHCHECK) and moby's `daemon/health.go` define it: the
//! check first runs `interval` after the container starts, and again `interval` after each
//! check completes. A check that runs longer than `timeout` fails. Failures during
//! `start_period` do not count, and during the start period checks run every
//! `start_interval` (default 5 s). After `retries` consecutive counted failures the
//! container is unhealthy, and one success makes it healthy. Docker keeps the first 4096
//! bytes of a check's output.
//!
//! # What mayfly does, and why
//!
//! mayfly gates its clients on health, so the time to the first success is time a client
//! waits. With Docker's defaults (30 s interval, no start period) a service that is ready
//! in one second is reported healthy after 30 s. [`wait_until_healthy`] therefore:
//!
//! - runs the first check at once;
//! - until the *grace end*, the later of `start_period` and `interval` after the call, runs
//!   checks every `start_interval`, and does not count their failures. These are extra
//!   checks Docker would not run: they can only find the service healthy sooner;
//! - from the grace end on, runs checks every `interval` after the previous one ended and
//!   counts failures as Docker does. When the grace end falls inside a start interval, the
//!   next check runs at the grace end, as Docker's does at the end of the start period;
//! - defaults `start_interval` to 1 s instead of Docker's 5 s, for the same reason;
//! - kills a check at `timeout`, and at the caller's deadline;
//! - reports the last 4096 bytes of output instead of the first, because an error message
//!   usually ends the output.
//!
//! So a counted failure never comes earlier than Docker's would, and `retries` failures
//! after the grace end make the service unhealthy as with Docker.

mod duration;
mod wait;

use std::fmt;
use std::time::Duration;

use mayfly_image::manifest::HealthConfig;

pub use duration::{parse_duration, RoundedDuration};
pub use wait::{wait_until_healthy, CommandHealthError};

/// Docker's default time between checks.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Docker's default time a check may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// mayfly's default time between checks before the grace end; Docker's is 5 s.
pub const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(1);
/// Docker's default number of consecutive counted failures that make a container unhealthy.
pub const DEFAULT_RETRIES: u32 = 3;

/// An invalid health check setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckError {
    /// A duration flag is not in Go's duration syntax, which Docker uses.
    #[error(
        "invalid duration {text:?}: {reason}; write numbers with units (ns, us, ms, s, m, h), \
         such as 500ms, 2s or 1m30s"
    )]
    InvalidDuration { text: String, reason: &'static str },
    /// The first element of `Test` is not `NONE`, `CMD` or `CMD-SHELL`.
    #[error("unknown health check type {kind:?} in Test {test:?}; use NONE, CMD or CMD-SHELL")]
    UnknownTestType { kind: String, test: Vec<String> },
    /// `CMD` or `CMD-SHELL` without a command.
    #[error("health check {kind} in Test {test:?} has no command; add one after {kind}")]
    MissingCommand {
        kind: &'static str,
        test: Vec<String>,
    },
    /// `CMD-SHELL` with more than one command line.
    #[error("health check CMD-SHELL in Test {test:?} has {count} command lines; write one")]
    ShellArguments { test: Vec<String>, count: usize },
    /// A negative number in an image's `Healthcheck`.
    #[error(
        "health check {field} is negative ({value}); use 0 for the default or a positive value"
    )]
    NegativeValue { field: &'static str, value: i64 },
}

/// The command that a health check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `NONE`: no command check (the port check still applies unless it is skipped too).
    None,
    /// `CMD`: an argument vector, run without a shell.
    Exec(Vec<String>),
    /// `CMD-SHELL`: a command line run with `/bin/sh -c`.
    Shell(String),
}

impl HealthTest {
    /// Parses Docker's `Test` array: `["NONE"]`, `["CMD", arg...]` or
    /// `["CMD-SHELL", line]`. Returns `None` for an empty array, which Docker reads as
    /// "inherit the image's check".
    pub fn from_docker(test: &[String]) -> Result<Option<Self>, HealthCheckError> {
        let Some((kind, rest)) = test.split_first() else {
            return Ok(None);
        };
        let missing = |kind| HealthCheckError::MissingCommand {
            kind,
            test: test.to_vec(),
        };
        match kind.as_str() {
            "NONE" => Ok(Some(Self::None)),
            "CMD" if rest.is_empty() => Err(missing("CMD")),
            "CMD" => Ok(Some(Self::Exec(rest.to_vec()))),
            "CMD-SHELL" => match rest {
                [] => Err(missing("CMD-SHELL")),
                [line] => Ok(Some(Self::Shell(line.clone()))),
                _ => Err(HealthCheckError::ShellArguments {
                    test: test.to_vec(),
                    count: rest.len(),
                }),
            },
            other => Err(HealthCheckError::UnknownTestType {
                kind: other.to_owned(),
                test: test.to_vec(),
            }),
        }
    }

    /// Returns the argument vector to run in the container, `None` for [`HealthTest::None`].
    /// NOTE: Docker runs `CMD-SHELL` with the image's `Shell` when it sets one; mayfly reads no
    /// `Shell` from the image config and always uses `/bin/sh -c`.
    pub fn argv(&self) -> Option<Vec<String>> {
        match self {
            Self::None => None,
            Self::Exec(args) => Some(args.clone()),
            Self::Shell(line) => Some(vec!["/bin/sh".into(), "-c".into(), line.clone()]),
        }
    }
}

impl fmt::Display for HealthTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("NONE"),
            Self::Exec(args) => f.write_str(&args.join(" ")),
            Self::Shell(line) => f.write_str(line),
        }
    }
}

/// A command health check and its timing. The module documentation describes how
/// [`wait_until_healthy`] schedules checks. A zero duration or zero `retries` means the
/// default, as in Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub test: HealthTest,
    /// Time between the end of one counted check and the start of the next.
    pub interval: Duration,
    /// Time after which a running check is killed and counts as failed.
    pub timeout: Duration,
    /// Time after the start during which failures do not count.
    pub start_period: Duration,
    /// Time between checks before the grace end.
    pub start_interval: Duration,
    /// Consecutive counted failures that make the container unhealthy.
    pub retries: u32,
}

impl HealthCheck {
    /// Creates a check with the defaults: 30 s interval, 30 s timeout, no start period,
    /// 1 s start interval, 3 retries.
    pub fn new(test: HealthTest) -> Self {
        Self {
            test,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            start_period: Duration::ZERO,
            start_interval: DEFAULT_START_INTERVAL,
            retries: DEFAULT_RETRIES,
        }
    }

    /// Reads an image config's `Healthcheck`, whose durations are nanoseconds and where 0
    /// means the default. Returns `None` when `Test` is empty, so the image has no check.
    /// `["NONE"]` gives a check with [`HealthTest::None`].
    pub fn from_image(config: &HealthConfig) -> Result<Option<Self>, HealthCheckError> {
        let Some(test) = HealthTest::from_docker(config.test.as_deref().unwrap_or_default())?
        else {
            return Ok(None);
        };
        let defaults = Self::new(test);
        let duration = |field, value: Option<i64>, default| match value.unwrap_or(0) {
            0 => Ok(default),
            nanos if nanos < 0 => Err(HealthCheckError::NegativeValue {
                field,
                value: nanos,
            }),
            nanos => Ok(Duration::from_nanos(nanos.unsigned_abs())),
        };
        let retries = match config.retries.unwrap_or(0) {
            0 => defaults.retries,
            value if value < 0 => {
                return Err(HealthCheckError::NegativeValue {
                    field: "Retries",
                    value,
                })
            }
            value => u32::try_from(value).unwrap_or(u32::MAX),
        };
        Ok(Some(Self {
            interval: duration("Interval", config.interval, defaults.interval)?,
            timeout: duration("Timeout", config.timeout, defaults.timeout)?,
            start_period: duration("StartPeriod", config.start_period, defaults.start_period)?,
            start_interval: duration(
                "StartInterval",
                config.start_interval,
                defaults.start_interval,
            )?,
            retries,
            test: defaults.test,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn test_array_forms() {
        assert_eq!(HealthTest::from_docker(&[]), Ok(None));
        assert_eq!(
            HealthTest::from_docker(&strings(&["NONE"])),
            Ok(Some(HealthTest::None))
        );
        assert_eq!(
            HealthTest::from_docker(&strings(&["CMD", "pg_isready", "-U", "app"])),
            Ok(Some(HealthTest::Exec(strings(&[
                "pg_isready",
                "-U",
                "app"
            ]))))
        );
        assert_eq!(
            HealthTest::from_docker(&strings(&["CMD-SHELL", "curl -f localhost || exit 1"])),
            Ok(Some(HealthTest::Shell(
                "curl -f localhost || exit 1".into()
            )))
        );
    }

    #[test]
    fn test_array_errors() {
        assert_eq!(
            HealthTest::from_docker(&strings(&["CMD"])),
            Err(HealthCheckError::MissingCommand {
                kind: "CMD",
                test: strings(&["CMD"])
            })
        );
        assert!(matches!(
            HealthTest::from_docker(&strings(&["CMD-SHELL", "a", "b"])),
            Err(HealthCheckError::ShellArguments { count: 2, .. })
        ));
        let error = HealthTest::from_docker(&strings(&["SHELL", "true"])).unwrap_err();
        assert!(error.to_string().contains("\"SHELL\""), "{error}");
    }

    #[test]
    fn shell_test_runs_bin_sh() {
        let test = HealthTest::Shell("test -f /ready".into());
        assert_eq!(
            test.argv(),
            Some(strings(&["/bin/sh", "-c", "test -f /ready"]))
        );
        assert_eq!(HealthTest::None.argv(), None);
        assert_eq!(test.to_string(), "test -f /ready");
    }

    #[test]
    fn image_healthcheck_parsed() {
        let json = r#"{
            "Test": ["CMD-SHELL", "pg_isready"],
            "Interval": 2000000000,
            "Timeout": 500000000,
            "StartPeriod": 10000000000,
            "StartInterval": 0,
            "Retries": 5
        }"#;
        let config: HealthConfig = serde_json::from_str(json).unwrap();
        let check = HealthCheck::from_image(&config).unwrap().unwrap();
        assert_eq!(check.test, HealthTest::Shell("pg_isready".into()));
        assert_eq!(check.interval, Duration::from_secs(2));
        assert_eq!(check.timeout, Duration::from_millis(500));
        assert_eq!(check.start_period, Duration::from_secs(10));
        assert_eq!(check.start_interval, DEFAULT_START_INTERVAL);
        assert_eq!(check.retries, 5);
    }

    #[test]
    fn image_config_carries_healthcheck() {
        let text = r#"{"architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["postgres"],
                       "Healthcheck": {"Test": ["CMD", "pg_isready"], "Interval": 1000000000}},
            "rootfs": {"type": "layers", "diff_ids": []}}"#;
        let image = mayfly_image::manifest::ImageConfig::parse(text.as_bytes()).unwrap();
        let health = image.config.unwrap().healthcheck.unwrap();
        let check = HealthCheck::from_image(&health).unwrap().unwrap();
        assert_eq!(check.test, HealthTest::Exec(strings(&["pg_isready"])));
        assert_eq!(check.interval, Duration::from_secs(1));
    }

    #[test]
    fn image_healthcheck_defaults() {
        let config: HealthConfig = serde_json::from_str(r#"{"Test": ["CMD", "true"]}"#).unwrap();
        let check = HealthCheck::from_image(&config).unwrap().unwrap();
        assert_eq!(
            check,
            HealthCheck::new(HealthTest::Exec(strings(&["true"])))
        );
    }

    #[test]
    fn image_healthcheck_none_and_empty() {
        let none: HealthConfig = serde_json::from_str(r#"{"Test": ["NONE"]}"#).unwrap();
        let check = HealthCheck::from_image(&none).unwrap().unwrap();
        assert_eq!(check.test, HealthTest::None);
        let empty: HealthConfig = serde_json::from_str(r#"{"Test": []}"#).unwrap();
        assert_eq!(HealthCheck::from_image(&empty), Ok(None));
        let absent: HealthConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(HealthCheck::from_image(&absent), Ok(None));
    }

    #[test]
    fn image_healthcheck_negative_rejected() {
        let config: HealthConfig =
            serde_json::from_str(r#"{"Test": ["CMD", "true"], "Retries": -1}"#).unwrap();
        assert_eq!(
            HealthCheck::from_image(&config),
            Err(HealthCheckError::NegativeValue {
                field: "Retries",
                value: -1
            })
        );
        let config: HealthConfig =
            serde_json::from_str(r#"{"Test": ["CMD", "true"], "Timeout": -5}"#).unwrap();
        assert!(matches!(
            HealthCheck::from_image(&config),
            Err(HealthCheckError::NegativeValue {
                field: "Timeout",
                ..
            })
        ));
    }
}
