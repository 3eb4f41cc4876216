//! `mayfly run`: pull the image when missing, start the container with the caller's standard
//! streams, forward signals, and exit with the container's status.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use mayfly_engine::container::{self, ProcessRequest};
use mayfly_engine::definition::{Change, Definition};
use mayfly_engine::network::{self, PortMapping};
use mayfly_engine::runtime::{self, ContainerProcess, ProcessHandle, Stdio};
use mayfly_image::reference::Reference;
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use super::pull::parse_platform;
use crate::args::{NetworkMode, RunArgs};
use crate::progress::PullProgress;
use mayfly_engine::Engine;

mod terminal;

pub async fn run(engine: &Engine, args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.tty && !std::io::stdin().is_terminal() {
        bail!("-t needs a terminal, but standard input is not one: drop -t (keep -i to pass standard input)");
    }
    // Listen for signals before the container exists: a SIGTERM that arrives between its
    // start and the forwarder would otherwise end mayfly, and the container with it.
    let signals = Signals::listen()?;
    let reference = Reference::parse(args.image())?;
    let platform = parse_platform(args.platform.as_deref())?;
    let definition = definition_from_args(&args)?;

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

    let publish: Vec<PortMapping> = args
        .publish
        .iter()
        .map(|spec| spec.parse())
        .collect::<Result<_, _>>()?;
    // TODO: make `auto` join the bridge for service bindings too, once they exist.
    let joins_sandbox = match args.network {
        NetworkMode::Sandbox => true,
        NetworkMode::Auto => !publish.is_empty(),
        NetworkMode::None if !publish.is_empty() => {
            bail!("--publish needs the network sandbox, but --network none was given")
        }
        NetworkMode::None => false,
    };
    let request = ProcessRequest {
        args: (!args.command().is_empty()).then(|| args.command().to_vec()),
        resolv_conf: match joins_sandbox {
            true => Some(network::resolv_conf(engine.config())?),
            false => None,
        },
        tty: args.tty,
        no_init: args.no_init,
        hostname: args.hostname.clone(),
        stdin: if args.interactive {
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
        Some(network) => Some(network?.attach(process.pid(), &hostname)?),
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

    let status = supervise(process, signals, args.tty, engine.config().stop_timeout).await?;
    drop(published);
    if let Some(link) = link {
        link.leave_to_session_end();
    }
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(255)))
}

/// Waits for the container while forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT to it; a
/// container still running `stop_timeout` after SIGINT or SIGTERM is killed.
async fn supervise(
    mut process: ContainerProcess,
    signals: Signals,
    tty: bool,
    stop_timeout: Duration,
) -> anyhow::Result<i32> {
    let handle = process.handle();
    let terminal = match (tty, process.take_tty()) {
        (true, Some(master)) => Some(terminal::attach(master)?),
        _ => None,
    };

    let forwarder = tokio::spawn(forward_signals(signals, handle, stop_timeout));
    let status = process.wait().await;
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
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
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

/// Turns the run flags into definition changes, in the order Docker applies them.
fn definition_from_args(args: &RunArgs) -> anyhow::Result<Definition> {
    let mut definition = Definition::from_reference(args.image());
    definition.base.platform = args.platform.clone();

    if let Some(workdir) = &args.workdir {
        if !workdir.starts_with('/') {
            bail!("invalid --workdir {workdir:?}: the working directory must be an absolute path");
        }
        definition = definition.with(Change::Workdir {
            path: workdir.clone(),
        });
    }
    for pair in &args.env {
        let (name, value) = match pair.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            // `-e NAME` copies the variable from mayfly's environment, if it is set.
            None => match std::env::var(pair) {
                Ok(value) => (pair.clone(), value),
                Err(_) => continue,
            },
        };
        if name.is_empty() {
            bail!("invalid --env {pair:?}: the variable name is empty; write NAME=VALUE");
        }
        definition = definition.with(Change::Env { name, value });
    }
    if let Some(user) = &args.user {
        definition = definition.with(Change::User { user: user.clone() });
    }
    if let Some(entrypoint) = &args.entrypoint {
        let args = if entrypoint.is_empty() {
            Vec::new()
        } else {
            vec![entrypoint.clone()]
        };
        definition = definition.with(Change::Entrypoint { args });
    }
    for volume in &args.volumes {
        definition = definition.with(parse_volume(volume)?);
    }
    for tmpfs in &args.tmpfs {
        let (path, options) = tmpfs.split_once(':').unwrap_or((tmpfs, ""));
        if !path.starts_with('/') {
            bail!("invalid --tmpfs {tmpfs:?}: the mount point must be an absolute path");
        }
        let options = options
            .split(',')
            .filter(|option| !option.is_empty())
            .map(str::to_owned)
            .collect();
        definition = definition.with(Change::Tmpfs {
            path: path.to_owned(),
            options,
        });
    }
    for file in &args.new_files {
        let Some((path, contents)) = file.split_once('=') else {
            bail!("invalid --new-file {file:?}: write PATH=CONTENT");
        };
        definition = definition.with(Change::NewFile {
            path: path.to_owned(),
            contents: contents.to_owned(),
            permissions: 0o644,
        });
    }
    Ok(definition)
}

/// Parses `HOSTPATH:PATH[:ro|:rw]` and checks that the host path can be used.
fn parse_volume(volume: &str) -> anyhow::Result<Change> {
    let parts: Vec<&str> = volume.split(':').collect();
    let (host, container, read_only) = match parts.as_slice() {
        [host, container] => (*host, *container, false),
        [host, container, "ro"] => (*host, *container, true),
        [host, container, "rw"] => (*host, *container, false),
        _ => bail!("invalid --volume {volume:?}: write HOSTPATH:PATH, HOSTPATH:PATH:ro or HOSTPATH:PATH:rw"),
    };
    if !container.starts_with('/') {
        bail!("invalid --volume {volume:?}: the container path {container:?} must be absolute");
    }
    let host_path = PathBuf::from(host);
    if !host_path.is_absolute() {
        bail!("invalid --volume {volume:?}: the host path {host:?} must be absolute");
    }
    std::fs::metadata(&host_path).with_context(|| {
        format!("invalid --volume {volume:?}: the host path {host} cannot be read; create it or fix the path")
    })?;
    Ok(Change::MountedDirectory {
        path: container.to_owned(),
        source: host.to_owned(),
        read_only,
    })
}
