//! Host services: ports of a host address made reachable from containers. Each instance gets
//! its own address on the bridge, a hostname, and a tunnel per port that dials the host.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mayfly_image::digest::Digest;
use mayfly_netns::TunnelConfig;
use serde::Serialize;

use super::error::ServiceError;
use super::instance::{Instance, InstanceControl};
use super::output::OutputLog;
use super::{HealthSettings, Kind, Service};
use crate::definition::{hostname_of, ExposedPort, Protocol};
use crate::runtime::ExitStatus;
use crate::session::Engine;

/// One port of a host service: containers dial `frontend` (default: `backend`) at the
/// service's hostname, and the tunnel dials `backend` on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortForward {
    pub frontend: Option<u16>,
    pub backend: u16,
    pub protocol: Protocol,
}

impl PortForward {
    fn frontend(&self) -> u16 {
        self.frontend.unwrap_or(self.backend)
    }
}

/// A host service as the command line names it: `ALIAS=tcp://HOST:PORT[,udp://HOST:PORT]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostServiceSpec {
    pub alias: String,
    pub host: String,
    pub ports: Vec<PortForward>,
}

impl std::str::FromStr for HostServiceSpec {
    type Err = ServiceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ServiceError::InvalidHostService {
            value: text.to_owned(),
            reason,
        };
        let (alias, targets) = text
            .split_once('=')
            .ok_or_else(|| invalid("expected ALIAS= before the addresses".to_owned()))?;
        super::binding::check_alias(alias)?;

        let mut host: Option<String> = None;
        let mut ports = Vec::new();
        for target in targets.split(',') {
            let (protocol, address) = match target.split_once("://") {
                Some(("tcp", address)) => (Protocol::Tcp, address),
                Some(("udp", address)) => (Protocol::Udp, address),
                _ => {
                    return Err(invalid(format!(
                        "{target:?} must start with tcp:// or udp://"
                    )))
                }
            };
            let (name, port) = address
                .rsplit_once(':')
                .ok_or_else(|| invalid(format!("{target:?} has no :PORT")))?;
            let port: u16 = port.parse().ok().filter(|port| *port != 0).ok_or_else(|| {
                invalid(format!(
                    "the port of {target:?} must be a number from 1 to 65535"
                ))
            })?;
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() {
                return Err(invalid(format!("{target:?} has no host")));
            }
            match &host {
                Some(known) if known != name => {
                    return Err(invalid(format!(
                        "all addresses of one alias must name the same host, but {known:?} and {name:?} differ; use one --host-service per host"
                    )))
                }
                _ => host = Some(name.to_owned()),
            }
            let same_port =
                |forward: &PortForward| (forward.backend, forward.protocol) == (port, protocol);
            if ports.iter().any(same_port) {
                return Err(invalid(format!(
                    "port {port}/{protocol} is given twice; list each port once"
                )));
            }
            ports.push(PortForward {
                frontend: None,
                backend: port,
                protocol,
            });
        }
        Ok(Self {
            alias: alias.to_owned(),
            host: host.expect("split yields at least one target"),
            ports,
        })
    }
}

/// The host the engine runs on.
pub struct Host {
    engine: Arc<Engine>,
}

impl Host {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    /// A service for `ports` of `host` (a name such as `localhost`, or an address), seen from
    /// the host's network namespace. Bind it to a container under an alias to use it.
    ///
    /// ```no_run
    /// # async fn example(engine: std::sync::Arc<mayfly_engine::Engine>) -> Result<(), Box<dyn std::error::Error>> {
    /// use mayfly_engine::definition::Protocol;
    /// use mayfly_engine::service::PortForward;
    ///
    /// let database = engine.host().service(
    ///     vec![PortForward { frontend: None, backend: 3306, protocol: Protocol::Tcp }],
    ///     "localhost",
    /// );
    /// let rows = engine
    ///     .container()
    ///     .from("mariadb:10.11")
    ///     .with_service_binding("db", &database)?
    ///     .with_exec(["mysql", "--host=db", "--user=root", "--password=secret", "-e", "SELECT 1"])
    ///     .stdout()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn service(&self, ports: Vec<PortForward>, host: &str) -> Service {
        Service {
            engine: self.engine.clone(),
            kind: Arc::new(Kind::Host(HostTarget {
                host: host.to_owned(),
                ports,
            })),
            health: HealthSettings::default(),
            label: None,
        }
    }
}

/// The host and ports a host service forwards to.
#[derive(Debug, Serialize)]
pub(super) struct HostTarget {
    host: String,
    ports: Vec<PortForward>,
}

impl HostTarget {
    pub(super) fn name(&self) -> String {
        format!("host {}", self.host)
    }

    pub(super) fn exposed_ports(&self) -> Vec<ExposedPort> {
        self.ports
            .iter()
            .map(|port| ExposedPort {
                port: port.frontend(),
                protocol: port.protocol,
                description: None,
                skip_health_check: true,
            })
            .collect()
    }

    /// The digest of the canonical JSON of the host and ports, and the hostname from it.
    pub(super) fn identity(&self) -> (Digest, String) {
        let canonical = serde_jcs::to_string(&serde_json::json!({ "host-service": self }))
            .expect("a host target always serialises");
        let digest = Digest::of_bytes(canonical.as_bytes());
        let hostname = hostname_of(&digest);
        (digest, hostname)
    }

    /// Adds a bridge address, opens a tunnel per port and registers `hostname`.
    pub(super) async fn start(
        &self,
        engine: &Arc<Engine>,
        hostname: &str,
        name: &str,
    ) -> Result<Arc<Instance>, ServiceError> {
        let name = format!("{name} ({hostname})");
        let host_ip = resolve(&self.host).await?;
        let network = engine.network().await?;
        let sandbox = network.sandbox().clone();
        let address = tokio::task::spawn_blocking(move || sandbox.add_bridge_address())
            .await
            .expect("the bridge address task panicked")
            .map_err(|source| ServiceError::Sandbox {
                service: name.clone(),
                source,
            })?;
        let bridge_ip = IpAddr::V4(address.address());

        let config = TunnelConfig::default();
        let mut forwards = Vec::new();
        for port in &self.ports {
            let listen = SocketAddr::new(bridge_ip, port.frontend());
            let target = SocketAddr::new(host_ip, port.backend);
            let sandbox = network.sandbox();
            let forward = match port.protocol {
                Protocol::Tcp => sandbox
                    .expose_host_tcp(listen, target, &config)
                    .map(|forward| Box::new(forward) as Box<dyn Send>),
                Protocol::Udp => sandbox
                    .expose_host_udp(listen, target, &config)
                    .map(|forward| Box::new(forward) as Box<dyn Send>),
            }
            .map_err(|source| ServiceError::Tunnel {
                service: name.clone(),
                source,
            })?;
            tracing::info!(%listen, %target, protocol = %port.protocol, "host service port open");
            forwards.push(forward);
        }
        let dns = network.dns().registry().clone();
        dns.register(hostname, bridge_ip)
            .map_err(|source| ServiceError::Dns {
                service: name.clone(),
                source,
            })?;

        let (instance, control) = Instance::new(
            name,
            hostname.to_owned(),
            bridge_ip,
            self.exposed_ports(),
            Arc::new(OutputLog::default()),
        );
        let hostname = hostname.to_owned();
        tokio::spawn(async move {
            let InstanceControl { stop, exited } = control;
            let _ = stop.await;
            drop(forwards);
            if let Err(error) = dns.unregister(&hostname) {
                tracing::debug!(%hostname, %error, "failed to unregister a host service");
            }
            let removed = tokio::task::spawn_blocking(move || address.remove()).await;
            if let Ok(Err(error)) = removed {
                tracing::warn!(%error, "failed to remove a host service's bridge address");
            }
            let _ = exited.send(Some(ExitStatus::Exited(0)));
        });
        Ok(instance)
    }
}

/// Resolves `host` in the host namespace, preferring IPv4 (servers on `localhost` often
/// listen on 127.0.0.1 only).
async fn resolve(host: &str) -> Result<IpAddr, ServiceError> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(ip);
    }
    let unknown = |source| ServiceError::UnknownHost {
        host: host.to_owned(),
        source,
    };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|error| unknown(Some(error)))?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or(addresses.first())
        .map(SocketAddr::ip)
        .ok_or_else(|| unknown(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_service_specs() {
        let spec: HostServiceSpec = "db=tcp://localhost:3306,udp://localhost:53"
            .parse()
            .unwrap();
        assert_eq!(spec.alias, "db");
        assert_eq!(spec.host, "localhost");
        let ports: Vec<_> = spec.ports.iter().map(|p| (p.backend, p.protocol)).collect();
        assert_eq!(ports, vec![(3306, Protocol::Tcp), (53, Protocol::Udp)]);

        let v6: HostServiceSpec = "api=tcp://[::1]:8080".parse().unwrap();
        assert_eq!(v6.host, "::1");
    }

    #[test]
    fn host_service_errors_name_the_value() {
        for bad in [
            "tcp://localhost:3306",
            "db=localhost:3306",
            "db=tcp://localhost",
            "db=tcp://localhost:0",
            "db=tcp://:3306",
            "db=tcp://a:1,tcp://b:2",
            "d b=tcp://a:1",
        ] {
            let error = bad.parse::<HostServiceSpec>().unwrap_err().to_string();
            let alias_error = error.contains("invalid service alias");
            assert!(error.contains(bad) || alias_error, "{error}");
        }
    }

    #[test]
    fn host_service_duplicate_port_rejected() {
        let value = "web=tcp://localhost:9090,tcp://localhost:9090";
        let error = value.parse::<HostServiceSpec>().unwrap_err().to_string();
        assert!(error.contains(value), "the error names the value: {error}");
        assert!(
            error.contains("port 9090/tcp is given twice"),
            "the error names the port: {error}"
        );

        // The same number on TCP and UDP is two ports.
        let spec: HostServiceSpec = "dns=tcp://localhost:53,udp://localhost:53".parse().unwrap();
        assert_eq!(spec.ports.len(), 2);
    }

    #[test]
    fn identity_depends_on_host_and_ports() {
        let target = |host: &str, port| HostTarget {
            host: host.to_owned(),
            ports: vec![PortForward {
                frontend: None,
                backend: port,
                protocol: Protocol::Tcp,
            }],
        };
        let (digest, hostname) = target("localhost", 3306).identity();
        assert_eq!(hostname.len(), 13);
        assert_eq!(target("localhost", 3306).identity().0, digest);
        assert_ne!(target("localhost", 3307).identity().0, digest);
        assert_ne!(target("127.0.0.1", 3306).identity().0, digest);
    }
}
