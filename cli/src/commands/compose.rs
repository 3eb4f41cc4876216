//! `mayfly compose run` and `mayfly compose up`: services of a Compose file, started just in
//! time and shared, with the file's aliases, health checks and ports.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use futures::StreamExt;
use mayfly_engine::compose::{find_default_file, ComposePort, ComposeProject};
use mayfly_engine::definition::Change;
use mayfly_engine::network::PortMapping;
use mayfly_engine::service::{
    ComposeServices, HealthSettings, Instance, OutputLine, OutputTail, PublishedService,
    ServiceBinding, ServiceError, ServiceRef, UpPort,
};
use mayfly_engine::Engine;
use mayfly_image::reference::Reference;
use tokio::sync::broadcast::error::RecvError;

use super::pull::parse_platform;
use super::run::{run_plan, RunPlan, Signals};
use super::service_output::OutputPrinter;
use crate::args::{ComposeArgs, ComposeCommand, ComposeRunArgs, ComposeUpArgs, NetworkMode};

/// How long `compose up` waits for more of the services' last lines after they stopped.
const LAST_LINES_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

pub async fn compose(engine: &Arc<Engine>, args: ComposeArgs) -> anyhow::Result<ExitCode> {
    let services = load(engine, args.file.as_deref())?;
    match args.command {
        ComposeCommand::Run(run) => compose_run(engine, services, run).await,
        ComposeCommand::Up(up) => compose_up(engine, services, up).await,
    }
}

/// Loads the Compose file (or the default one here) and prints its warnings once.
pub(super) fn load(engine: &Arc<Engine>, file: Option<&Path>) -> anyhow::Result<ComposeServices> {
    let file = match file {
        Some(file) => file.to_owned(),
        None => find_default_file(&std::env::current_dir()?)?,
    };
    let project = ComposeProject::load(&file)?;
    for warning in &project.warnings {
        eprintln!("mayfly: warning: {}: {warning}", file.display());
    }
    Ok(ComposeServices::new(engine.clone(), project))
}

/// Turns `--service ALIAS=SERVICE` flags into bindings to services of the Compose file, after
/// the jobs those services need have completed.
pub(super) async fn bindings(
    engine: &Arc<Engine>,
    file: Option<&Path>,
    specs: &[String],
) -> anyhow::Result<Vec<ServiceBinding>> {
    let services = load(engine, file)?;
    let mut bindings = Vec::new();
    let mut names = Vec::new();
    for spec in specs {
        let Some((alias, name)) = spec.split_once('=') else {
            bail!("invalid --service {spec:?}: write ALIAS=SERVICE, with SERVICE from the Compose file");
        };
        bindings.push(ServiceBinding::new(alias, services.service(name)?)?);
        names.push(name);
    }
    announce_jobs(&services, &names)?;
    services.run_jobs(&names).await?;
    Ok(bindings)
}

/// Prints which jobs run first, so that a long one does not look like a hang.
fn announce_jobs(services: &ComposeServices, roots: &[&str]) -> anyhow::Result<()> {
    let jobs = services.jobs(roots)?;
    if !jobs.is_empty() {
        eprintln!(
            "mayfly: running {} to completion first (service_completed_successfully)",
            jobs.join(", ")
        );
    }
    Ok(())
}

async fn compose_run(
    engine: &Arc<Engine>,
    services: ComposeServices,
    args: ComposeRunArgs,
) -> anyhow::Result<ExitCode> {
    let name = args.service.as_str();
    let compose = services.project().service(name)?.clone();
    announce_jobs(&services, &[name])?;
    services.run_jobs(&[name]).await?;
    let container = services.container(name)?;
    let mut definition = container.definition().clone();
    for pair in &args.env {
        if let Some(change) = env_change(pair)? {
            definition = definition.with(change);
        }
    }
    let publish = match args.service_ports {
        true => compose.ports.iter().map(port_mapping).collect(),
        false => Vec::new(),
    };
    let plan = RunPlan {
        reference: Reference::parse(&compose.image)?,
        platform: parse_platform(compose.platform.as_deref())?,
        definition,
        command: args.command,
        publish,
        bindings: container.bindings().to_vec(),
        network: NetworkMode::Sandbox,
        hostname: None,
        interactive: args.interactive,
        tty: args.tty,
        no_init: false,
        health: HealthSettings::default(),
    };
    run_plan(engine, plan).await
}

/// Turns `-e NAME=VALUE` into an environment change. As with `docker compose run`, `-e NAME`
/// copies the variable from mayfly's environment, and does nothing when it is not set.
fn env_change(pair: &str) -> anyhow::Result<Option<Change>> {
    let (name, value) = match pair.split_once('=') {
        Some((name, value)) => (name.to_owned(), value.to_owned()),
        None => match std::env::var(pair) {
            Ok(value) => (pair.to_owned(), value),
            Err(_) => return Ok(None),
        },
    };
    if name.is_empty() {
        bail!("invalid --env {pair:?}: the variable name is empty; write NAME=VALUE");
    }
    Ok(Some(Change::Env { name, value }))
}

/// A service of `compose up`: what keeps it running, or the job that already completed.
enum Running {
    Published(PublishedService),
    Held(ServiceRef),
    Completed(Arc<Instance>),
}

impl Running {
    fn instance(&self) -> &Arc<Instance> {
        match self {
            Running::Published(published) => published.reference().instance(),
            Running::Held(reference) => reference.instance(),
            Running::Completed(instance) => instance,
        }
    }
}

async fn compose_up(
    engine: &Arc<Engine>,
    services: ComposeServices,
    args: ComposeUpArgs,
) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::listen()?;
    let roots: Vec<&str> = args.services.iter().map(String::as_str).collect();
    for root in &roots {
        services.project().service(root)?;
    }
    let started = tokio::select! {
        started = start_all(&services, &roots) => started,
        signal = signals.stop_requested() => {
            eprintln!("mayfly: {signal} received; stopping");
            engine.stop_services().await;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let running = match started {
        Ok(running) => running,
        Err(error) => {
            engine.stop_services().await;
            return Err(error);
        }
    };
    eprintln!("mayfly: press Ctrl-C to stop");

    let (sender, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    for (name, service) in &running {
        let (history, mut receiver) = service.instance().output.history_and_subscribe();
        // A job's output was printed while it ran.
        if !matches!(service, Running::Completed(_)) {
            for line in history {
                println!("{name} | {line}");
            }
        }
        let sender = sender.clone();
        let name = name.clone();
        tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(OutputLine { text, .. }) => {
                        if sender.send(format!("{name} | {text}")).is_err() {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        eprintln!("mayfly: {missed} lines of {name}'s output were skipped")
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }
    // As with `docker compose up`, a service that exits leaves the others running. mayfly
    // stops them at Ctrl-C, or exits once every service has exited on its own.
    let mut exits: futures::stream::FuturesUnordered<_> = running
        .iter()
        .map(|(name, service)| async move { (name, service.instance().exited().await) })
        .collect();
    let mut failed = None;
    while !exits.is_empty() {
        tokio::select! {
            // Lines first, so a service's last lines come before the notice of its exit.
            biased;
            Some(line) = lines.recv() => println!("{line}"),
            Some((name, status)) = exits.next() => {
                eprintln!("mayfly: service {name} exited with {status}");
                tracing::info!(service = %name, %status, "compose service exited");
                if !status.success() && failed.is_none() {
                    failed = Some(status);
                }
            }
            signal = signals.stop_requested() => {
                eprintln!("mayfly: {signal} received; stopping");
                failed = None;
                break;
            }
        }
    }
    drop(exits);
    drop(sender);
    drop(running);
    engine.stop_services().await;

    // The stop waits until each service's output is read to its end. The forwarding tasks
    // then pass on the last lines within moments, and they end when the outputs close.
    while let Ok(Some(line)) = tokio::time::timeout(LAST_LINES_WAIT, lines.recv()).await {
        println!("{line}");
    }
    Ok(match failed {
        // The status of the first service that failed, as a shell reports it.
        Some(status) => ExitCode::from(u8::try_from(status.code()).unwrap_or(1).max(1)),
        None => ExitCode::SUCCESS,
    })
}

/// Runs the Compose job `name` to completion while its output streams, prefixed with its
/// name, and fails unless it exits with status 0.
async fn run_job(services: &ComposeServices, name: &str) -> anyhow::Result<Arc<Instance>> {
    let reference = services.service(name)?.acquire().await?;
    let instance = reference.instance().clone();
    let mut output = OutputPrinter::start(name, &instance.output);
    let status = loop {
        tokio::select! {
            () = output.print_next() => {}
            status = instance.exited() => break status,
        }
    };
    output.print_rest();
    if !status.success() {
        return Err(ServiceError::JobFailed {
            service: name.to_owned(),
            status,
            output: OutputTail(instance.output.tail()),
        }
        .into());
    }
    Ok(instance)
}

/// Runs the jobs, then starts each root (every service that is not a job, by default) in
/// dependency order and publishes its ports.
async fn start_all(
    services: &ComposeServices,
    roots: &[&str],
) -> anyhow::Result<Vec<(String, Running)>> {
    let mut completed = Vec::new();
    for job in services.jobs(roots)? {
        eprintln!("mayfly: running {job} to completion first (service_completed_successfully)");
        let instance = run_job(services, &job).await?;
        completed.push((job, instance));
    }
    let project = services.project();
    let jobs: Vec<&str> = project
        .services
        .values()
        .flat_map(|service| &service.depends_on)
        .filter(|dependency| {
            dependency.condition
                == mayfly_engine::compose::DependencyCondition::CompletedSuccessfully
        })
        .map(|dependency| dependency.service.as_str())
        .collect();
    let order = project.dependency_order(roots)?;
    let selected: Vec<&String> = order
        .iter()
        .filter(|name| match roots.is_empty() {
            true => !jobs.contains(&name.as_str()),
            false => roots.contains(&name.as_str()),
        })
        .collect();

    // Jobs ran to completion above; they are reported with the other services but not
    // started again.
    let mut running: Vec<(String, Running)> = completed
        .into_iter()
        .map(|(name, instance)| (name, Running::Completed(instance)))
        .collect();
    for name in selected {
        if running.iter().any(|(done, _)| done == name) {
            continue;
        }
        let compose = project.service(name)?;
        let service = services.service(name)?;
        let hostname = service.hostname().await?;
        eprintln!("mayfly: starting {name} ({}) as {hostname}", compose.image);
        let entry = if compose.ports.is_empty() {
            Running::Held(service.acquire().await?)
        } else {
            let ports = compose
                .ports
                .iter()
                .map(|port| UpPort::from(port_mapping(port)))
                .collect();
            let published = service.up(ports).await?;
            for (address, port) in published.ports() {
                eprintln!(
                    "mayfly: {name} is up: {address}/{} -> {hostname}:{}",
                    port.protocol, port.port
                );
            }
            Running::Published(published)
        };
        running.push((name.clone(), entry));
    }
    Ok(running)
}

/// A Compose port with mayfly's defaults: 127.0.0.1, and a free host port when none is
/// given.
fn port_mapping(port: &ComposePort) -> PortMapping {
    let address = port.host_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    PortMapping {
        host: SocketAddr::new(address, port.published.unwrap_or(0)),
        container_port: port.target,
        protocol: port.protocol,
    }
}
