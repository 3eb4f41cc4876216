//! `mayfly run`: pull the image when missing, start the container with the caller's standard
//! streams, forward signals, and exit with the container's status.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use mayfly_engine::container::{self, ProcessRequest};
use mayfly_engine::definition::Definition;
use mayfly_engine::health_check::{wait_until_healthy, HealthTest};
use mayfly_engine::network::{self, PortMapping};
use mayfly_engine::runtime::{self, ContainerProcess, ProcessHandle, Stdio};
use mayfly_engine::service::{BoundServices, HealthSettings, ServiceBinding};
use mayfly_image::reference::Reference;
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use super::container_flags;
use super::pull::parse_platform;
use crate::args::{NetworkMode, RunArgs};
use crate::progress::PullProgress;
use mayfly_engine::Engine;

mod terminal;

pub async fn run(engine: &Arc<Engine>, args: RunArgs) -> anyhow::Result<ExitCode> {
    let flags = &args.container;
    let plan = RunPlan {
        reference: Reference::parse(args.image())?,
        platform: parse_platform(flags.platform.as_deref())?,
        definition: container_flags::definition(flags, args.image())?,
        command: args.command().to_vec(),
        publish: container_flags::port_mappings(flags)?,
        bindings: container_flags::bindings(engine, flags).await?,
        network: args.network,
        hostname: args.hostname.clone(),
        interactive: args.interactive,
        tty: args.tty,
        no_init: flags.no_init,
        health: container_flags::health_settings(&flags.health)?,
    };
    run_plan(engine, plan).await
}

/// Everything one container run needs, from `run`'s flags or from a compose service.
pub(super) struct RunPlan {
    pub reference: Reference,
    pub platform: Option<mayfly_image::platform::Platform>,
    pub definition: Definition,
    /// Arguments after the entrypoint; empty runs the default command.
    pub command: Vec<String>,
    pub publish: Vec<PortMapping>,
    pub bindings: Vec<ServiceBinding>,
    pub network: NetworkMode,
    pub hostname: Option<String>,
    pub interactive: bool,
    pub tty: bool,
    pub no_init: bool,
    /// A command check to report on while the container runs.
    pub health: HealthSettings,
}

/// Runs the container of `plan` with the caller's standard streams, after its bound services
/// are healthy, and stops every service of the session afterwards.
pub(super) async fn run_plan(engine: &Arc<Engine>, plan: RunPlan) -> anyhow::Result<ExitCode> {
    if plan.tty && !std::io::stdin().is_terminal() {
        bail!("-t needs a terminal, but standard input is not one: drop -t (keep -i to pass standard input)");
    }
    // Listen for signals before the container exists: a SIGTERM that arrives between its
    // start and the forwarder would otherwise end mayfly, and the container with it.
    let signals = Signals::listen()?;
    let RunPlan {
        reference,
        platform,
        definition,
        command,
        publish,
        bindings,
        ..
    } = plan;

    let images = engine.images();
    let image = images
        .ensure(&reference, platform, &PullProgress::new(false))
        .await?;
    if !image.warnings.is_empty() {
        eprintln!(
            "mayfly: warning: while unpacking {reference}: {}",
            image.warnings
        );
    }

    let joins_sandbox = match plan.network {
        NetworkMode::Sandbox => true,
        NetworkMode::Auto => !publish.is_empty() || !bindings.is_empty(),
        NetworkMode::None if !publish.is_empty() => {
            bail!("--publish needs the network sandbox, but --network none was given")
        }
        NetworkMode::None if !bindings.is_empty() => {
            bail!("--host-service and --service need the network sandbox, but --network none was given")
        }
        NetworkMode::None => false,
    };
    // Bound services start (or are joined) and turn healthy before the container runs.
    let bound = BoundServices::acquire(&bindings).await?;
    let request = ProcessRequest {
        args: (!command.is_empty()).then_some(command),
        resolv_conf: match joins_sandbox {
            true => Some(network::resolv_conf(engine.config())?),
            false => None,
        },
        tty: plan.tty,
        no_init: plan.no_init,
        hostname: plan.hostname.clone(),
        stdin: if plan.interactive {
            Stdio::Inherit
        } else {
            Stdio::Null
        },
        stdout: Stdio::Inherit,
        stderr: Stdio::Inherit,
    };
    // Held until the container ends, so that a prune elsewhere keeps its layers.
    let _layers_in_use = images.hold(&image)?;
    let spec = container::prepare(
        engine.bootstrap(),
        &engine.files_dir(),
        &definition,
        &image,
        &[],
        request,
    )?;

    // The container's init and the network sandbox start at the same time; the container
    // waits, before its command runs, until its veth pair is attached.
    let hostname = spec.oci.hostname().clone().unwrap_or_default();
    let spawning = tokio::task::spawn_blocking(move || runtime::spawn(&spec));
    let network = match joins_sandbox {
        true => Some(engine.network().await),
        false => None,
    };
    let mut process = spawning
        .await
        .context("the container spawn task panicked")??;
    let link = match network {
        Some(network) => {
            let network = network?;
            let link = network.attach(process.pid(), &hostname)?;
            bound.register_aliases(network.dns().registry(), link.address())?;
            Some(link)
        }
        None => None,
    };
    let mut published = Vec::new();
    if let Some(link) = &link {
        let network = engine.network().await?;
        for mapping in &publish {
            let port = network.publish(link, mapping)?;
            eprintln!(
                "mayfly: publishing {} -> container port {}/{}",
                port.local_addr(),
                mapping.container_port,
                mapping.protocol
            );
            published.push(port);
        }
    }
    let process = tokio::task::spawn_blocking(move || -> anyhow::Result<ContainerProcess> {
        process.start()?;
        Ok(process)
    })
    .await
    .context("the container start task panicked")??;

    let reporter = report_health(engine, &process, &plan.health);
    let outcome = supervise(
        process,
        signals,
        plan.tty,
        engine.config().stop_timeout,
        &bound,
    )
    .await;
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    drop(published);
    if let Some(link) = link {
        link.leave_to_session_end();
    }
    drop(bound);
    engine.stop_services().await;
    let status = outcome?;
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(255)))
}

/// Runs the command check of `health`, if any, while the container runs and says on
/// standard error when the container turns healthy or unhealthy, as `docker ps` would show.
fn report_health(
    engine: &Engine,
    process: &ContainerProcess,
    health: &HealthSettings,
) -> Option<tokio::task::JoinHandle<()>> {
    let check = health.check.clone()?;
    if check.test == HealthTest::None {
        return None;
    }
    let handle = process.handle();
    let deadline =
        std::time::Instant::now() + health.deadline.unwrap_or(engine.config().health_deadline);
    Some(tokio::spawn(async move {
        match wait_until_healthy(&handle, &check, deadline).await {
            Ok(()) => eprintln!("mayfly: the container is healthy"),
            Err(error) => eprintln!("mayfly: the container is unhealthy: {error}"),
        }
    }))
}

/// Waits for the container while forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT to it; a
/// container still running `stop_timeout` after SIGINT or SIGTERM is killed.
async fn supervise(
    mut process: ContainerProcess,
    signals: Signals,
    tty: bool,
    stop_timeout: Duration,
    bound: &BoundServices,
) -> anyhow::Result<i32> {
    let handle = process.handle();
    let terminal = match (tty, process.take_tty()) {
        (true, Some(master)) => Some(terminal::attach(master)?),
        _ => None,
    };

    let forwarder = tokio::spawn(forward_signals(signals, handle.clone(), stop_timeout));
    // A bound service that stops takes its client down with it.
    let status = tokio::select! {
        status = process.wait() => status,
        error = bound.first_exit() => {
            forwarder.abort();
            drop(terminal);
            let _ = handle.signal(Signal::SIGKILL);
            let _ = process.wait().await;
            if let Err(error) = process.remove() {
                tracing::warn!(%error, "failed to remove the container's state");
            }
            return Err(error.into());
        }
    };
    forwarder.abort();
    drop(terminal);
    let status = status?;
    tracing::info!(id = process.id(), %status, "container exited");
    if let Err(error) = process.remove() {
        tracing::warn!(%error, "failed to remove the container's state");
    }
    Ok(status.code())
}

/// The signals mayfly passes on to the container.
pub(super) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    /// Resolves at the next SIGINT, SIGTERM or SIGHUP.
    pub(super) async fn stop_requested(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.hangup.recv() => Signal::SIGHUP,
        }
    }

    pub(super) fn listen() -> anyhow::Result<Self> {
        let listen = |kind| signal(kind).context("failed to install a signal handler");
        Ok(Self {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
            quit: listen(SignalKind::quit())?,
        })
    }
}

async fn forward_signals(
    mut signals: Signals,
    handle: ProcessHandle,
    stop_timeout: Duration,
) -> anyhow::Result<()> {
    loop {
        let received = tokio::select! {
            _ = signals.interrupt.recv() => Signal::SIGINT,
            _ = signals.terminate.recv() => Signal::SIGTERM,
            _ = signals.hangup.recv() => Signal::SIGHUP,
            _ = signals.quit.recv() => Signal::SIGQUIT,
        };
        tracing::info!(signal = %received, "forwarding a signal to the container");
        if let Err(error) = handle.signal(received) {
            tracing::warn!(%error, signal = %received, "failed to forward a signal");
        }
        if matches!(received, Signal::SIGINT | Signal::SIGTERM) {
            let handle = handle.clone();
            tokio::spawn(async move {
                tokio::time::sleep(stop_timeout).await;
                tracing::warn!(timeout = ?stop_timeout, "the container outlived its stop timeout; killing it");
                let _ = handle.signal(Signal::SIGKILL);
            });
        }
    }
}
