//! A command health check with Docker's HEALTHCHECK semantics: the plain settings that the
//! CLI flags, compose files and image configs all turn into.

use std::time::Duration;

/// What a command health check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `NONE`: no command check (the port check still applies unless it is skipped too).
    None,
    /// `CMD`: an argument vector, run without a shell.
    Exec(Vec<String>),
    /// `CMD-SHELL`: a command line run with `/bin/sh -c`.
    Shell(String),
}

/// A command health check and its timing, as Docker defines them: the first check runs
/// `interval` after the start; a check that runs longer than `timeout` fails; during
/// `start_period` failures do not count, and a success ends the start period; after
/// `retries` consecutive failures the service is unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub test: HealthTest,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

impl HealthCheck {
    /// Docker's defaults: 30 s interval, 30 s timeout, no start period, 3 retries.
    pub fn new(test: HealthTest) -> Self {
        Self {
            test,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            start_period: Duration::ZERO,
            retries: 3,
        }
    }
}
