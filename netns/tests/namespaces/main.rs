//! Tests against real network namespaces, run as an unprivileged user.
//!
//! `main` enters a new user namespace before the test threads start, so the
//! process is root there and may create network namespaces, bridges and
//! veth pairs, as the engine does. Where user namespaces are unavailable
//! every trial reports "skipped" with the reason.

mod bridge;
mod dns;
mod support;
mod tunnel;

use std::process::ExitCode;
use std::sync::OnceLock;

use libtest_mimic::Arguments;

/// Why the trials cannot run, when the user namespace could not be entered.
static SKIP_REASON: OnceLock<String> = OnceLock::new();

fn main() -> ExitCode {
    let args = Arguments::from_args();
    if let Err(error) = support::enter_user_namespace() {
        eprintln!("skipped: {error:#}");
        let _ = SKIP_REASON.set(format!("{error:#}"));
    }

    let mut trials = Vec::new();
    trials.extend(bridge::trials());
    trials.extend(dns::trials());
    trials.extend(tunnel::trials());
    libtest_mimic::run(&args, trials).exit_code()
}
