//! Errors of services and their clients.

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::ExitStatus;

/// The last lines of a service's output, for error messages.
#[derive(Debug, Clone)]
pub struct OutputTail(pub String);

impl std::fmt::Display for OutputTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.trim().is_empty() {
            return f.write_str("it printed nothing");
        }
        write!(f, "its output ends with:\n{}", self.0)
    }
}

impl OutputTail {
    /// Returns the tail as a sentence that names the service, such as "The service printed
    /// nothing.", for messages whose previous sentence is about something else.
    pub fn of_service(&self) -> String {
        if self.0.trim().is_empty() {
            return "The service printed nothing.".to_owned();
        }
        format!("The service's output ends with:\n{}", self.0)
    }
}

/// Errors from starting, checking, binding or stopping a service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Exec(#[from] crate::container::ExecError),
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Images(#[from] crate::images::ImagesError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Definition(#[from] crate::definition::DefinitionError),
    #[error("service {service}: {source}")]
    Sandbox {
        service: String,
        #[source]
        source: mayfly_netns::SandboxError,
    },
    #[error("service {service}: {source}")]
    Tunnel {
        service: String,
        #[source]
        source: mayfly_netns::TunnelError,
    },
    #[error("service {service}: {source}")]
    Dns {
        service: String,
        #[source]
        source: mayfly_netns::DnsError,
    },
    #[error("service {service} exited with {status} before it was ready; {output}")]
    ExitedDuringStart {
        service: String,
        status: ExitStatus,
        output: OutputTail,
    },
    #[error(
        "service {service} did not accept connections on port {port} within {}; \
         check that it listens on that port, or raise the deadline (--health-deadline); \
         {output}",
        crate::health_check::RoundedDuration(*deadline)
    )]
    NotListening {
        service: String,
        port: u16,
        deadline: Duration,
        output: OutputTail,
    },
    #[error(
        "service {service} has no health check, but {required_by} waits for it to be healthy; \
         give it a healthcheck or expose a port, or make {required_by} wait with condition \
         service_started"
    )]
    NothingToCheck {
        service: String,
        required_by: String,
    },
    #[error(
        "service {service} listens on port {port} only on its loopback address, so no other \
         container can reach it; make it listen on 0.0.0.0 (all addresses); \
         {output}"
    )]
    LoopbackOnly {
        service: String,
        port: u16,
        output: OutputTail,
    },
    #[error("service {service} is unhealthy: {source}. {}", output.of_service())]
    Unhealthy {
        service: String,
        output: OutputTail,
        #[source]
        source: Box<crate::health_check::CommandHealthError>,
    },
    #[error(
        "service {service}, bound as {alias:?}, exited with {status} while its client ran; \
         {output}"
    )]
    BoundServiceExited {
        service: String,
        alias: String,
        status: ExitStatus,
        output: OutputTail,
        /// Why the service stopped, when a service it binds in turn stopped first.
        #[source]
        cause: Option<Arc<ServiceError>>,
    },
    #[error(
        "invalid --host-service {value:?}: {reason}; write ALIAS=tcp://HOST:PORT[,udp://HOST:PORT]"
    )]
    InvalidHostService { value: String, reason: String },
    #[error(transparent)]
    Compose(#[from] crate::compose::ComposeError),
    #[error("failed to create {path}, the bind mount source of compose service {service}; create it by hand or fix the volume")]
    BindSource {
        service: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "compose job {service} exited with {status}, and a service depends on it completing \
         successfully; {output}"
    )]
    JobFailed {
        service: String,
        status: ExitStatus,
        output: OutputTail,
    },
    #[error("invalid service alias {alias:?}: {reason}")]
    InvalidAlias { alias: String, reason: &'static str },
    #[error("host service {host:?} cannot be resolved on this host; use an address or a name in /etc/hosts")]
    UnknownHost {
        host: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("port {port} is not exposed by service {service}; its ports are: {ports}")]
    UnknownPort {
        service: String,
        port: u16,
        ports: String,
    },
    #[error(
        "service {service} exposes no port; give one with Container::with_exposed_port, or \
         pass the ports to publish"
    )]
    NoPorts { service: String },
    /// The same failure, reported to each client that waited on one start.
    #[error(transparent)]
    Shared(Arc<ServiceError>),
}
