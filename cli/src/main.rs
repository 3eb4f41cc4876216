//! The `mayfly` command.

mod args;
mod commands;
mod progress;
mod stdout;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// Exit status for mayfly's own failures, as Docker uses it, so it is not mistaken for a
/// container's status.
const ENGINE_FAILURE: u8 = 125;

fn main() -> ExitCode {
    // A re-executed copy of this binary that is about to become a container's init never
    // returns from here.
    mayfly_engine::runtime::init_if_requested();

    let cli = Cli::parse();
    init_logging(&cli.log);

    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("mayfly: {}", describe(&error));
            ExitCode::from(ENGINE_FAILURE)
        }
    }
}

/// Formats the error and its causes on one line. A cause whose text the message already
/// contains is left out, because several errors quote their source in their own message.
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn init_logging(filter: &str) {
    // netlink-packet-route warns on every link dump when the kernel is newer than its tables
    // (extra bytes in IFLA_INET6_CONF). The warning means nothing to a mayfly user.
    let filter = if filter.contains("netlink_packet_route") {
        filter.to_owned()
    } else {
        format!("{filter},netlink_packet_route=error")
    };
    let filter = filter.as_str();
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("mayfly: invalid log filter {filter:?} ({error}); using \"warn\"");
        tracing_subscriber::EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

impl Command {
    /// Returns whether the command needs the engine's user namespace. Credentials are the
    /// host user's files, so login and logout run outside it.
    fn needs_engine(&self) -> bool {
        !matches!(self, Command::Login(_) | Command::Logout(_))
    }
}
