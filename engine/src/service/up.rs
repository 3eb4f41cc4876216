//! Publishing a service on the host: a listener per port that dials the service inside the
//! sandbox, held with a reference that keeps the service running.

use std::net::SocketAddr;

use super::error::ServiceError;
use super::registry::ServiceRef;
use super::Service;
use crate::definition::Protocol;
use crate::network::{PortMapping, PublishedPort};
use crate::runtime::ExitStatus;

/// A service port to publish on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpPort {
    /// The host address; port 0 picks a free port.
    pub host: SocketAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl From<PortMapping> for UpPort {
    fn from(mapping: PortMapping) -> Self {
        Self {
            host: mapping.host,
            port: mapping.container_port,
            protocol: mapping.protocol,
        }
    }
}

/// A running service published on the host; dropping it closes the listeners and lets the
/// service stop.
pub struct PublishedService {
    // Field order matters: the listeners close before the reference goes.
    ports: Vec<(UpPort, PublishedPort)>,
    reference: ServiceRef,
}

impl PublishedService {
    pub fn reference(&self) -> &ServiceRef {
        &self.reference
    }

    /// Each published port: the address it listens on and the service port it reaches.
    pub fn ports(&self) -> impl Iterator<Item = (SocketAddr, &UpPort)> {
        self.ports
            .iter()
            .map(|(port, published)| (published.local_addr(), port))
    }

    /// Waits until the service stops.
    pub async fn exited(&self) -> ExitStatus {
        self.reference.instance().exited().await
    }
}

impl Service {
    /// Starts the service, waits until it is healthy and publishes `ports` on the host. With
    /// no ports, every exposed port is published on 127.0.0.1 under the same number.
    pub async fn up(&self, ports: Vec<UpPort>) -> Result<PublishedService, ServiceError> {
        // Without ports to publish, fail before the container starts.
        if ports.is_empty() && self.ports().await?.is_empty() {
            return Err(ServiceError::NoPorts {
                service: self.name(),
            });
        }
        let reference = self.acquire().await?;
        let instance = reference.instance();
        let ports = match ports.is_empty() {
            false => ports,
            true => instance
                .ports
                .iter()
                .map(|exposed| UpPort {
                    host: SocketAddr::from(([127, 0, 0, 1], exposed.port)),
                    port: exposed.port,
                    protocol: exposed.protocol,
                })
                .collect(),
        };
        if ports.is_empty() {
            return Err(ServiceError::NoPorts {
                service: instance.name.clone(),
            });
        }

        let network = self.engine.network().await?;
        let mut published = Vec::new();
        for port in ports {
            let mapping = PortMapping {
                host: port.host,
                container_port: port.port,
                protocol: port.protocol,
            };
            let forward = network.publish_to(instance.address, &mapping)?;
            published.push((port, forward));
        }
        Ok(PublishedService {
            ports: published,
            reference,
        })
    }
}
