//! Starting a container as a service: run it on the bridge under its hostname, follow its
//! output, hand its resources to a driver task, and wait until it is healthy.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::binding::BoundServices;
use super::error::{OutputTail, ServiceError};
use super::health::{self, PortProblem};
use super::instance::{Instance, InstanceControl, StopMode};
use super::output::{OutputLog, Stream};
use super::ports;
use super::{HealthSettings, ServiceCommand};
use crate::container::{exec, prepare, Container, ProcessRequest};
use crate::definition::Change;
use crate::health_check::{wait_until_healthy, CommandHealthError, HealthCheck, HealthTest};
use crate::network::ContainerLink;
use crate::runtime::{self, ContainerProcess, ExitStatus, ProcessHandle, Stdio};
use crate::session::Engine;
use mayfly_image::layers::LayerHold;

/// How long a stopped service's output may take to reach its end.
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// How long a service whose health command could not run may take to exit and be removed,
/// beyond the output drain, before the failure counts as the check's own.
const EXIT_SETTLE: Duration = Duration::from_secs(2);

/// Starts `container` as the service `hostname` and returns once it is healthy.
pub(super) async fn start(
    engine: &Arc<Engine>,
    container: &Container,
    command: &ServiceCommand,
    hostname: &str,
    health: &HealthSettings,
    name: &str,
) -> Result<Arc<Instance>, ServiceError> {
    let (resolved, image, last) = container.evaluate().await?;
    let definition = resolved.definition().with(Change::Service(command.clone()));
    let name = format!("{name} ({hostname})");
    let exposed = ports::exposed_ports(&image.config, &definition);
    let bound = BoundServices::acquire(container.bindings()).await?;

    // Arguments without the entrypoint replace the whole command line, as exec steps do.
    let mut run_definition = definition.clone();
    let args = match command.args.is_empty() {
        true => None,
        false => {
            if !command.use_entrypoint {
                run_definition = run_definition.with(Change::Entrypoint { args: Vec::new() });
            }
            Some(command.args.clone())
        }
    };
    let request = ProcessRequest {
        args,
        no_init: command.no_init,
        hostname: Some(hostname.to_owned()),
        resolv_conf: Some(crate::network::resolv_conf(engine.config())?),
        stdout: Stdio::Piped,
        stderr: Stdio::Piped,
        ..ProcessRequest::default()
    };
    let (effective_image, extra) = exec::layers_after(&image, last.as_deref());
    let holds = engine.images().hold(&image)?;
    let spec = prepare(
        engine.bootstrap(),
        &engine.files_dir(),
        &run_definition,
        &effective_image,
        &extra,
        request,
    )?;

    // The first service of a session creates the network while its container spawns.
    tracing::info!(service = %name, %hostname, "starting service container");
    let spawn = tokio::task::spawn_blocking(move || runtime::spawn(&spec));
    let (network, process) = tokio::join!(engine.network(), spawn);
    let mut process = process.expect("the container spawn task panicked")?;
    let network = network?;
    let link = network.attach(process.pid(), hostname)?;
    bound.register_aliases(network.dns().registry(), link.address())?;
    let output = Arc::new(OutputLog::default());
    if let Some(pipe) = process.take_stdout() {
        output.follow(pipe, Stream::Stdout);
    }
    if let Some(pipe) = process.take_stderr() {
        output.follow(pipe, Stream::Stderr);
    }
    let process = tokio::task::spawn_blocking(move || process.start().map(|()| process))
        .await
        .expect("the container start task panicked")?;

    let pid = process.pid();
    let handle = process.handle();
    let (instance, control) =
        Instance::new(name, hostname.to_owned(), link.address(), exposed, output);
    let held = Held {
        process,
        link,
        _holds: holds,
        bound,
    };
    tokio::spawn(drive(
        held,
        control,
        instance.clone(),
        engine.config().stop_timeout,
    ));

    let check = command_check(health, &image.config, &instance.name);
    match wait_healthy(engine, &instance, pid, &handle, check.as_ref(), health).await {
        Ok(()) => {
            tracing::info!(service = %instance.name, hostname = %instance.hostname, "service is healthy");
            Ok(instance)
        }
        Err(error) => {
            instance.request_stop(StopMode::Kill);
            instance.exited().await;
            Err(error)
        }
    }
}

/// What a running service holds until it stops.
struct Held {
    process: ContainerProcess,
    link: ContainerLink,
    _holds: Vec<LayerHold>,
    bound: BoundServices,
}

enum Ending {
    Exited(Result<ExitStatus, runtime::RuntimeError>),
    Stop(StopMode),
    BoundExited(ServiceError),
}

/// Owns the service's process until it exits or is stopped, then releases everything and
/// reports the exit status.
async fn drive(
    mut held: Held,
    control: InstanceControl,
    instance: Arc<Instance>,
    stop_timeout: Duration,
) {
    let InstanceControl { stop, exited } = control;
    let ending = tokio::select! {
        status = held.process.wait() => Ending::Exited(status),
        // A dropped sender means the instance handle is gone: nobody can use the service.
        mode = stop => Ending::Stop(mode.unwrap_or(StopMode::Kill)),
        error = held.bound.first_exit() => Ending::BoundExited(error),
    };
    let status = match ending {
        Ending::Exited(status) => {
            match &status {
                Ok(status) if status.success() => {
                    tracing::info!(service = %instance.name, hostname = %instance.hostname, "service finished")
                }
                Ok(status) => {
                    tracing::info!(service = %instance.name, hostname = %instance.hostname, %status, "service exited on its own")
                }
                Err(_) => {}
            }
            status
        }
        Ending::Stop(StopMode::Graceful) => held.process.kill_after(stop_timeout).await,
        Ending::Stop(StopMode::Kill) => {
            let _ = held.process.signal(Signal::SIGKILL);
            held.process.wait().await
        }
        Ending::BoundExited(error) => {
            tracing::warn!(service = %instance.name, %error, "stopping a service whose bound service exited");
            instance.set_cause(error);
            held.process.kill_after(stop_timeout).await
        }
    };
    let status = status.unwrap_or_else(|error| {
        tracing::warn!(service = %instance.name, %error, "failed to wait for a service container");
        ExitStatus::Signaled(libc::SIGKILL)
    });

    instance.output.drained(OUTPUT_DRAIN_LIMIT).await;
    let Held { process, link, .. } = held;
    drop(link);
    let removed = tokio::task::spawn_blocking(move || process.remove()).await;
    if let Ok(Err(error)) = removed {
        tracing::warn!(service = %instance.name, %error, "failed to remove a service container");
    }
    let _ = exited.send(Some(status));
}

/// Returns the command check that replaces the port check: the one given, else the
/// image's HEALTHCHECK. `NONE` means no command check.
fn command_check(
    health: &HealthSettings,
    config: &mayfly_image::manifest::ImageConfig,
    service: &str,
) -> Option<HealthCheck> {
    let check = match &health.check {
        Some(check) => Some(check.clone()),
        None => {
            let image_check = config
                .config
                .as_ref()
                .and_then(|config| config.healthcheck.as_ref())
                .map(HealthCheck::from_image)
                .transpose();
            // Docker ignores a HEALTHCHECK it cannot read, and so does mayfly, with a warning.
            image_check
                .unwrap_or_else(|error| {
                    tracing::warn!(%service, %error, "ignoring the image's HEALTHCHECK");
                    None
                })
                .flatten()
        }
    };
    check.filter(|check| check.test != HealthTest::None)
}

/// Waits until the instance is healthy: the command check passes, or without one, every
/// checked port accepts connections. Fails at once when the instance exits first.
async fn wait_healthy(
    engine: &Arc<Engine>,
    instance: &Arc<Instance>,
    pid: i32,
    handle: &ProcessHandle,
    check: Option<&HealthCheck>,
    health: &HealthSettings,
) -> Result<(), ServiceError> {
    let deadline_length = health.deadline.unwrap_or(engine.config().health_deadline);
    let deadline = Instant::now() + deadline_length;
    let sandbox = engine.network().await?.sandbox().clone();
    let checked = match check {
        Some(_) => Vec::new(),
        None => health::checked_ports(&instance.ports),
    };
    if let (None, true, Some(required_by)) = (check, checked.is_empty(), &health.required_by) {
        return Err(ServiceError::NothingToCheck {
            service: instance.name.clone(),
            required_by: required_by.clone(),
        });
    }
    let ports = async {
        health::wait_for_ports(
            &instance.name,
            &sandbox,
            instance.address,
            &checked,
            Some(pid),
            deadline,
        )
        .await?;
        if let Some(check) = check {
            tracing::info!(service = %instance.name, command = %check.test, "running the health command");
            wait_until_healthy(handle, check, deadline.into_std())
                .await
                .map_err(PortProblem::Command)?;
        }
        Ok(())
    };

    let service = || instance.name.clone();
    // Ports first: a service with nothing to check is ready even if it already exited, as a
    // job that runs to completion does.
    tokio::select! {
        biased;
        result = ports => match result {
            Ok(()) => Ok(()),
            Err(PortProblem::Command(source)) => {
                Err(command_failure(instance, handle, source).await)
            }
            Err(PortProblem::NotListening { port }) => Err(ServiceError::NotListening {
                service: service(),
                port,
                deadline: deadline_length,
                output: OutputTail(instance.output.tail()),
            }),
            Err(PortProblem::LoopbackOnly { port }) => Err(ServiceError::LoopbackOnly {
                service: service(),
                port,
                output: OutputTail(instance.output.tail()),
            }),
        },
        status = instance.exited() => Err(ServiceError::ExitedDuringStart {
            service: service(),
            status,
            output: OutputTail(instance.output.tail()),
        }),
    }
}

/// Reports a failed health command. A service that exited, or whose container went away
/// under the command, is reported by its exit status and output, because the exit is the
/// cause and the failed command only its symptom.
async fn command_failure(
    instance: &Arc<Instance>,
    handle: &ProcessHandle,
    source: CommandHealthError,
) -> ServiceError {
    let could_not_run = matches!(source, CommandHealthError::Runtime { .. });
    if handle.has_exited() || could_not_run {
        // The driver reports the status after it drained the output and removed the container.
        let settle = OUTPUT_DRAIN_LIMIT + EXIT_SETTLE;
        if let Ok(status) = tokio::time::timeout(settle, instance.exited()).await {
            tracing::info!(service = %instance.name, %status, %source, "service exited while its health command ran");
            return ServiceError::ExitedDuringStart {
                service: instance.name.clone(),
                status,
                output: OutputTail(instance.output.tail()),
            };
        }
    }
    ServiceError::Unhealthy {
        service: instance.name.clone(),
        output: OutputTail(instance.output.tail()),
        source: Box::new(source),
    }
}
