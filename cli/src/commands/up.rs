//! `mayfly up`: run a container as a service, wait until it is healthy, publish its ports on
//! the host, stream its output, and stop everything at Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use mayfly_engine::definition::{Change, ExposedPort, Protocol};
use mayfly_engine::service::{fully_qualified, ServiceCommand, UpPort};
use mayfly_engine::{Container, Engine};
use mayfly_image::reference::Reference;

use super::container_flags;
use super::pull::parse_platform;
use super::run::Signals;
use super::service_output::OutputPrinter;
use crate::args::UpArgs;
use crate::progress::PullProgress;

pub async fn up(engine: &Arc<Engine>, args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::listen()?;
    let flags = &args.container;
    let reference = Reference::parse(args.image())?;
    let platform = parse_platform(flags.platform.as_deref())?;
    let health = container_flags::health_settings(&flags.health)?;
    let mut definition = container_flags::definition(flags, args.image())?;
    for expose in &args.expose {
        definition = definition.with(Change::ExposedPort(parse_expose(expose)?));
    }
    let ports: Vec<UpPort> = container_flags::port_mappings(flags)?
        .into_iter()
        .map(UpPort::from)
        .collect();
    let mut container = Container::from_definition(engine.clone(), definition);
    for binding in container_flags::bindings(engine, flags).await? {
        container = container.with_service_binding(&binding.alias, &binding.service)?;
    }

    // Pull first, with progress, so that the wait below is only the service's start.
    engine
        .images()
        .ensure(&reference, platform, &PullProgress::new(false))
        .await?;
    let deadline = health.deadline.unwrap_or(engine.config().health_deadline);
    let service = container
        .as_service(ServiceCommand {
            args: args.command().to_vec(),
            use_entrypoint: true,
            no_init: flags.no_init,
        })
        .with_health(health);
    if ports.is_empty() && service.ports().await?.is_empty() {
        bail!(
            "image {} exposes no port, so there is nothing to publish; give one with \
             --expose PORT",
            args.image()
        );
    }
    let hostname = service.hostname().await?;
    let name = short_name(&reference);
    eprintln!(
        "mayfly: starting {} as {}",
        args.image(),
        fully_qualified(&hostname)
    );

    let starting = service.up(ports);
    tokio::pin!(starting);
    let notice = tokio::time::sleep(WAITING_NOTICE_AFTER);
    tokio::pin!(notice);
    let mut noticed = false;
    let published = loop {
        tokio::select! {
            result = &mut starting => break result,
            () = &mut notice, if !noticed => {
                noticed = true;
                eprintln!(
                    "mayfly: waiting for {} to become healthy (up to {}s in all)",
                    args.image(),
                    deadline.as_secs()
                );
            }
            signal = signals.stop_requested() => {
                eprintln!("mayfly: {signal} received; stopping");
                engine.stop_services().await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    };
    let published = match published {
        Ok(published) => published,
        Err(error) => {
            engine.stop_services().await;
            return Err(error.into());
        }
    };

    let instance = published.reference().instance().clone();
    for exposed in &instance.ports {
        if exposed.protocol == Protocol::Udp {
            eprintln!(
                "mayfly: port {}/udp has no health check (UDP has no connection to test)",
                exposed.port
            );
        }
    }
    for (address, port) in published.ports() {
        eprintln!(
            "mayfly: {name} is up: {address}/{} -> {hostname}:{}",
            port.protocol, port.port
        );
    }
    eprintln!("mayfly: press Ctrl-C to stop");

    let mut output = OutputPrinter::start(&name, &instance.output);
    let outcome = loop {
        tokio::select! {
            () = output.print_next() => {}
            status = published.exited() => break Err(status),
            signal = signals.stop_requested() => {
                eprintln!("mayfly: {signal} received; stopping {name}");
                break Ok(());
            }
        }
    };
    drop(published);
    engine.stop_services().await;

    // Lines written just before Ctrl-C, such as the log of a last request.
    output.print_rest();
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(status) => bail!("service {name} ({hostname}) exited with {status}"),
    }
}

/// How long `up` waits for a service before it prints that it is still waiting.
const WAITING_NOTICE_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// Parses `PORT[/tcp|/udp]`.
fn parse_expose(text: &str) -> anyhow::Result<ExposedPort> {
    let (port, protocol) = match text.rsplit_once('/') {
        Some((port, "tcp")) => (port, Protocol::Tcp),
        Some((port, "udp")) => (port, Protocol::Udp),
        Some(_) => bail!("invalid --expose {text:?}: the protocol must be tcp or udp"),
        None => (text, Protocol::Tcp),
    };
    let Some(port) = port.parse::<u16>().ok().filter(|port| *port != 0) else {
        bail!("invalid --expose {text:?}: write a port number from 1 to 65535, then /udp for UDP");
    };
    Ok(ExposedPort {
        port,
        protocol,
        description: None,
        skip_health_check: false,
    })
}

/// The last part of the repository, the way people call the image: `python` for
/// `docker.io/library/python:3.11`.
fn short_name(reference: &Reference) -> String {
    let repository = &reference.repository;
    repository
        .rsplit('/')
        .next()
        .unwrap_or(repository)
        .to_owned()
}
