//! The flags that shape a container, shared by `run` and `up`: definition changes, published
//! ports and service bindings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use mayfly_engine::definition::{Change, Definition};
use mayfly_engine::health_check::{parse_duration, HealthCheck, HealthTest};
use mayfly_engine::network::PortMapping;
use mayfly_engine::service::{HealthSettings, HostServiceSpec, ServiceBinding};
use mayfly_engine::Engine;

use crate::args::{ContainerFlags, HealthFlags};

/// Turns the health flags into a service's health settings.
pub fn health_settings(flags: &HealthFlags) -> anyhow::Result<HealthSettings> {
    let duration = |name: &str, value: &Option<String>| -> anyhow::Result<Option<Duration>> {
        value
            .as_deref()
            .map(|text| parse_duration(text).with_context(|| format!("invalid --{name} {text:?}")))
            .transpose()
    };
    let interval = parse_positive("health-interval", &flags.interval, duration)?;
    let timeout = parse_positive("health-timeout", &flags.timeout, duration)?;
    let start_period = duration("health-start-period", &flags.start_period)?;
    let deadline = parse_positive("health-deadline", &flags.deadline, duration)?;

    let timing_given = interval.is_some()
        || timeout.is_some()
        || start_period.is_some()
        || flags.retries.is_some();
    let check = match (&flags.cmd, flags.no_healthcheck) {
        (Some(command), _) => {
            let mut check = HealthCheck::new(HealthTest::Shell(command.clone()));
            check.interval = interval.unwrap_or(check.interval);
            check.timeout = timeout.unwrap_or(check.timeout);
            check.start_period = start_period.unwrap_or(check.start_period);
            check.retries = flags.retries.unwrap_or(check.retries);
            Some(check)
        }
        (None, true) => Some(HealthCheck::new(HealthTest::None)),
        (None, false) if timing_given => {
            bail!("--health-interval, --health-timeout, --health-retries and --health-start-period need --health-cmd")
        }
        (None, false) => None,
    };
    Ok(HealthSettings {
        check,
        deadline,
        required_by: None,
    })
}

/// Parses a duration flag that must be more than zero. Docker reads a zero interval or
/// timeout as "use the default", as an omitted flag does, so a zero on the command line is
/// likely a mistake. A zero deadline would fail every start.
fn parse_positive(
    name: &str,
    value: &Option<String>,
    parse: impl Fn(&str, &Option<String>) -> anyhow::Result<Option<Duration>>,
) -> anyhow::Result<Option<Duration>> {
    let duration = parse(name, value)?;
    if let (Some(text), Some(Duration::ZERO)) = (value, duration) {
        bail!("invalid --{name} {text:?}: it must be more than zero; omit the flag to use the default");
    }
    Ok(duration)
}

/// Parses every --publish flag.
pub fn port_mappings(args: &ContainerFlags) -> anyhow::Result<Vec<PortMapping>> {
    Ok(args
        .publish
        .iter()
        .map(|spec| spec.parse())
        .collect::<Result<_, _>>()?)
}

/// Turns --host-service and --service flags into bindings.
pub async fn bindings(
    engine: &Arc<Engine>,
    args: &ContainerFlags,
) -> anyhow::Result<Vec<ServiceBinding>> {
    let mut bindings = Vec::new();
    for spec in &args.host_services {
        let spec: HostServiceSpec = spec.parse()?;
        let service = engine.host().service(spec.ports, &spec.host);
        bindings.push(ServiceBinding::new(&spec.alias, service)?);
    }
    if !args.services.is_empty() {
        let compose =
            super::compose::bindings(engine, args.compose_file.as_deref(), &args.services);
        bindings.extend(compose.await?);
    }
    Ok(bindings)
}

/// Turns the run flags into definition changes, in the order Docker applies them.
pub fn definition(args: &ContainerFlags, image: &str) -> anyhow::Result<Definition> {
    let mut definition = Definition::from_reference(image);
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
        bail!(
            "invalid --volume {volume:?}: the host path {host:?} must be absolute; named \
             volumes are not supported, so give a host directory such as $PWD/{host}"
        );
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
