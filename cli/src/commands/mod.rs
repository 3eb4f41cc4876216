//! One module per subcommand; `dispatch` enters the engine's namespaces first when needed.

mod compose;
mod container_flags;
mod images;
mod login;
mod pull;
mod run;
mod service_output;
mod system;
mod up;

use std::process::ExitCode;

use std::time::Duration;

use anyhow::{bail, Context};
use mayfly_engine::bootstrap::{self, BootstrapOptions};
use mayfly_engine::config::{self, Config};
use mayfly_engine::health_check::parse_duration;
use mayfly_engine::Engine;

use crate::args::{Cli, Command, ComposeCommand, SystemCommand};

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    if !cli.command.needs_engine() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start the async runtime")?;
        return runtime.block_on(async {
            match cli.command {
                Command::Login(args) => login::login(args).await,
                Command::Logout(args) => login::logout(args),
                _ => unreachable!("needs_engine covers every other command"),
            }
        });
    }

    // The configuration is read before the bootstrap, while the real uid is still visible.
    let mut config = Config::load()?;
    if let Some(deadline) = health_deadline(&cli.command)? {
        config.health_deadline = deadline;
    }
    // The bootstrap logs each of its warnings once, so they are not printed again here.
    let bootstrap = bootstrap::enter(&bootstrap_options(&config))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let engine = Engine::new(config, bootstrap)?;
    runtime.block_on(async move {
        match cli.command {
            Command::Pull(args) => pull::pull(&engine, args).await,
            Command::Images(args) => images::images(&engine, args),
            Command::Rmi(args) => images::rmi(&engine, args),
            Command::Prune => images::prune(&engine),
            Command::Run(args) => run::run(&engine, *args).await,
            Command::Up(args) => up::up(&engine, *args).await,
            Command::Compose(args) => compose::compose(&engine, args).await,
            Command::System(SystemCommand::Reset(args)) => system::reset(&engine, args),
            Command::Login(_) | Command::Logout(_) => unreachable!("handled above"),
        }
    })
}

/// Returns the command's --health-deadline. It replaces the session's setting, so that it
/// covers every service the command starts: bound services and Compose dependencies too.
fn health_deadline(command: &Command) -> anyhow::Result<Option<Duration>> {
    let flag = match command {
        Command::Run(args) => &args.container.health.deadline,
        Command::Up(args) => &args.container.health.deadline,
        Command::Compose(args) => match &args.command {
            ComposeCommand::Run(run) => &run.deadline.deadline,
            ComposeCommand::Up(up) => &up.deadline.deadline,
        },
        _ => return Ok(None),
    };
    let Some(text) = flag.as_deref() else {
        return Ok(None);
    };
    let deadline =
        parse_duration(text).with_context(|| format!("invalid --health-deadline {text:?}"))?;
    if deadline.is_zero() {
        bail!("invalid --health-deadline {text:?}: it must be more than zero; omit the flag to use the default");
    }
    Ok(Some(deadline))
}

fn bootstrap_options(config: &Config) -> BootstrapOptions {
    BootstrapOptions {
        id_map: match config.id_map {
            config::IdMapMode::Auto => bootstrap::IdMapMode::Auto,
            config::IdMapMode::Single => bootstrap::IdMapMode::SingleId,
        },
        storage: match config.storage {
            config::StorageMode::Auto => bootstrap::StorageMode::Auto,
            config::StorageMode::Copy => bootstrap::StorageMode::Copy,
        },
        runtime_dir: Some(config.runtime_dir.clone()),
        data_dir: Some(config.data_dir.clone()),
    }
}
