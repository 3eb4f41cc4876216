//! Services: a container (or a port on the host) that clients bind under an alias. A service
//! has a content-addressed hostname; it starts when the first client needs it, runs once per
//! engine session however many clients bind it, is healthy before any client runs, and stops
//! a grace period after the last client is done.
//!
//! ```no_run
//! # async fn example(engine: std::sync::Arc<mayfly_engine::Engine>) -> Result<(), Box<dyn std::error::Error>> {
//! use mayfly_engine::definition::Protocol;
//! use mayfly_engine::service::ServiceCommand;
//!
//! let web = engine
//!     .container()
//!     .from("python:3.11")
//!     .with_new_file("/srv/index.html", "Hello, world!")
//!     .with_workdir("/srv")
//!     .with_exposed_port(8080, Protocol::Tcp, Some("http"), false)
//!     .as_service(ServiceCommand {
//!         args: vec!["python".into(), "-m".into(), "http.server".into(), "8080".into()],
//!         ..ServiceCommand::default()
//!     });
//!
//! let page = engine
//!     .container()
//!     .from("busybox:latest")
//!     .with_service_binding("web", &web)?
//!     .with_exec(["nc", "web", "8080"])
//!     .stdout()
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod binding;
mod compose;
mod container_start;
mod error;
mod health;
mod host;
mod instance;
mod output;
mod ports;
mod registry;
mod up;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mayfly_image::digest::Digest;

pub use crate::definition::ServiceCommand;
pub use binding::{BoundServices, ServiceBinding};
pub use compose::{definition_of, ComposeServices};
pub use error::{OutputTail, ServiceError};
pub use host::{Host, HostServiceSpec, PortForward};
pub use instance::Instance;
pub use output::{OutputLine, OutputLog, Stream};
pub use registry::ServiceRef;
pub use up::{PublishedService, UpPort};

pub(crate) use instance::StopMode;
pub(crate) use registry::Registry;

use crate::container::Container;
use crate::definition::{ExposedPort, SERVICE_DOMAIN};
use crate::health_check::HealthCheck;
use crate::session::Engine;

/// A service: what it runs and how its health is judged. Cloning is cheap, and clones are
/// the same service.
#[derive(Clone)]
pub struct Service {
    engine: Arc<Engine>,
    kind: Arc<Kind>,
    health: HealthSettings,
    /// The name messages use instead of the image's, such as a Compose service's name.
    label: Option<String>,
}

#[derive(Debug)]
enum Kind {
    Container {
        container: Container,
        command: ServiceCommand,
    },
    Host(host::HostTarget),
}

/// How a service's health is judged; not part of its hostname.
#[derive(Debug, Clone, Default)]
pub struct HealthSettings {
    /// A command check that replaces the port check; `None` uses the image's HEALTHCHECK
    /// when it has one.
    pub check: Option<HealthCheck>,
    /// The overall time to become healthy; `None` uses the configured health deadline.
    pub deadline: Option<Duration>,
    /// The client that insists on a check, as Compose's `service_healthy` does, named for
    /// the error: the start fails when the service has neither a command check nor a port to
    /// check. `None` accepts a service with nothing to check as ready once it runs.
    pub required_by: Option<String>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("kind", &self.kind).finish()
    }
}

impl Service {
    pub(crate) fn from_container(container: Container, command: ServiceCommand) -> Self {
        Self {
            engine: container.engine().clone(),
            kind: Arc::new(Kind::Container { container, command }),
            health: HealthSettings::default(),
            label: None,
        }
    }

    /// Names the service in messages, for example after its Compose service; the hostname
    /// does not change.
    pub fn with_label(&self, label: &str) -> Self {
        Self {
            label: Some(label.to_owned()),
            ..self.clone()
        }
    }

    /// Replaces the health settings.
    pub fn with_health(&self, health: HealthSettings) -> Self {
        Self {
            health,
            ..self.clone()
        }
    }

    /// The service's hostname, 13 base32 characters derived from its definition; the name
    /// also answers under `mayfly.internal`.
    ///
    /// The future is boxed because the hostname covers those of the services it binds.
    pub fn hostname(&self) -> BoxFuture<'_, Result<String, ServiceError>> {
        Box::pin(async move {
            let (_, hostname) = self.identity().await?;
            Ok(hostname)
        })
    }

    /// `HOST:PORT`, or `SCHEME://HOST:PORT` when a scheme is given, for a port the service
    /// exposes; without a port, its first exposed port.
    pub async fn endpoint(
        &self,
        port: Option<u16>,
        scheme: Option<&str>,
    ) -> Result<String, ServiceError> {
        let hostname = self.hostname().await?;
        let ports = self.ports().await?;
        let name = self.name();
        let port = match port {
            Some(port) if ports.iter().any(|known| known.port == port) => port,
            Some(port) => {
                return Err(ServiceError::UnknownPort {
                    service: name,
                    port,
                    ports: describe_ports(&ports),
                })
            }
            None => {
                ports
                    .first()
                    .ok_or(ServiceError::NoPorts { service: name })?
                    .port
            }
        };
        Ok(match scheme {
            Some(scheme) => format!("{scheme}://{hostname}:{port}"),
            None => format!("{hostname}:{port}"),
        })
    }

    /// The ports the service exposes: the image's, then the definition's changes.
    pub async fn ports(&self) -> Result<Vec<ExposedPort>, ServiceError> {
        match &*self.kind {
            Kind::Container { container, .. } => {
                let (definition, image) = container.resolved_definition().await?;
                Ok(ports::exposed_ports(&image.config, &definition))
            }
            Kind::Host(target) => Ok(target.exposed_ports()),
        }
    }

    /// Starts the service and keeps it running until [`Service::stop`] or the end of the
    /// session, whether or not a client binds it.
    pub async fn start(&self) -> Result<Arc<Instance>, ServiceError> {
        let reference = self.acquire().await?;
        let instance = reference.instance().clone();
        let (digest, _) = self.identity().await?;
        self.engine
            .started_services
            .lock()
            .expect("started services poisoned")
            .insert(digest, reference);
        Ok(instance)
    }

    /// Lets go of what [`Service::start`] held. With no client left, the service stops at
    /// once (with SIGKILL when `kill`, otherwise SIGTERM first); clients still bound keep it
    /// running until they are done.
    pub async fn stop(&self, kill: bool) -> Result<(), ServiceError> {
        let (digest, _) = self.identity().await?;
        let held = self
            .engine
            .started_services
            .lock()
            .expect("started services poisoned")
            .remove(&digest);
        let Some(reference) = held else {
            return Ok(());
        };
        let instance = reference.instance().clone();
        drop(reference);
        let mode = if kill {
            StopMode::Kill
        } else {
            StopMode::Graceful
        };
        if self.engine.services.stop_unused_now(&digest, mode) {
            instance.exited().await;
        }
        Ok(())
    }

    /// Starts (or joins) the service and waits until it is healthy; the returned reference
    /// keeps it running.
    ///
    /// The future is boxed because a service's start acquires the services it binds in turn.
    pub fn acquire(&self) -> BoxFuture<'_, Result<ServiceRef, ServiceError>> {
        Box::pin(self.acquire_unboxed())
    }

    async fn acquire_unboxed(&self) -> Result<ServiceRef, ServiceError> {
        let (digest, hostname) = self.identity().await?;
        let service = self.clone();
        self.engine
            .services
            .acquire(&digest, move || async move {
                match &*service.kind {
                    Kind::Container { container, command } => {
                        container_start::start(
                            &service.engine,
                            container,
                            command,
                            &hostname,
                            &service.health,
                            &service.name(),
                        )
                        .await
                    }
                    Kind::Host(target) => {
                        target
                            .start(&service.engine, &hostname, &service.name())
                            .await
                    }
                }
            })
            .await
    }

    /// The name shown in messages.
    pub fn name(&self) -> String {
        let base = match &*self.kind {
            Kind::Container { container, .. } => container.definition().base.reference.clone(),
            Kind::Host(target) => target.name(),
        };
        match &self.label {
            Some(label) => format!("{label} ({base})"),
            None => base,
        }
    }

    /// The digest that identifies the service, and the hostname taken from it.
    async fn identity(&self) -> Result<(Digest, String), ServiceError> {
        match &*self.kind {
            Kind::Container { container, command } => {
                let (definition, _) = container.resolved_definition().await?;
                let definition =
                    definition.with(crate::definition::Change::Service(command.clone()));
                Ok((definition.digest()?, definition.hostname()?))
            }
            Kind::Host(target) => Ok(target.identity()),
        }
    }
}

/// Returns `hostname` under the service domain.
pub fn fully_qualified(hostname: &str) -> String {
    format!("{hostname}.{SERVICE_DOMAIN}")
}

fn describe_ports(ports: &[ExposedPort]) -> String {
    if ports.is_empty() {
        return "none".to_owned();
    }
    ports
        .iter()
        .map(|port| format!("{}/{}", port.port, port.protocol))
        .collect::<Vec<_>>()
        .join(", ")
}
