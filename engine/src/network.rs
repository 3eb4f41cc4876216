//! The session's network: one sandbox namespace with the bridge and the DNS responder, made
//! when the first container starts, and one veth attachment per container.

use std::net::{IpAddr, SocketAddr};

use std::sync::Arc;

use mayfly_netns::{
    Attachment, DnsConfig, DnsError, DnsRegistry, DnsServer, NetNs, NetnsError, Sandbox,
    SandboxConfig, SandboxError,
};

use crate::config::Config;
use crate::definition::{Protocol, SERVICE_DOMAIN};

/// Errors from setting up the session's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "invalid subnet {subnet:?} in the configuration: expected IPv4 CIDR such as 10.89.0.0/24"
    )]
    InvalidSubnet { subnet: String },
    #[error("invalid upstream DNS server {server:?}: expected IP or IP:PORT")]
    InvalidUpstream { server: String },
    #[error("invalid --publish {value:?}: {reason}; write [ADDR:]HOSTPORT:CONTAINERPORT[/udp]")]
    InvalidPublish { value: String, reason: String },
    #[error(transparent)]
    Tunnel(#[from] mayfly_netns::TunnelError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("failed to open the network namespace of container process {pid}")]
    ContainerNamespace {
        pid: i32,
        #[source]
        source: NetnsError,
    },
}

/// The sandbox and its DNS responder; dropping it removes both.
pub struct Network {
    // Field order matters: the DNS server's sockets live in the sandbox namespace.
    dns: DnsServer,
    sandbox: Sandbox,
}

impl Network {
    /// Creates the sandbox namespace, the bridge and the DNS responder on the gateway. Must
    /// run inside a tokio runtime.
    pub fn create(config: &Config) -> Result<Self, NetworkError> {
        let subnet = config
            .subnet
            .parse()
            .map_err(|_| NetworkError::InvalidSubnet {
                subnet: config.subnet.clone(),
            })?;
        let sandbox = Sandbox::create(SandboxConfig {
            subnet,
            ..SandboxConfig::default()
        })?;

        let upstreams = if config.upstream_dns.is_empty() {
            None
        } else {
            Some(
                config
                    .upstream_dns
                    .iter()
                    .map(|server| parse_upstream(server))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let dns = sandbox.start_dns(DnsConfig {
            domain: SERVICE_DOMAIN.to_owned(),
            upstreams,
            ..DnsConfig::default()
        })?;
        tracing::info!(gateway = %sandbox.gateway(), subnet = %config.subnet, "network sandbox ready");
        Ok(Self { dns, sandbox })
    }

    /// Returns the resolv.conf every container gets: the responder as its only nameserver.
    pub fn resolv_conf(&self) -> String {
        resolv_conf_for(self.sandbox.gateway())
    }

    /// Joins the network namespace of container process `pid` to the bridge and registers
    /// `hostname` in the DNS responder.
    pub fn attach(&self, pid: i32, hostname: &str) -> Result<ContainerLink, NetworkError> {
        let namespace = NetNs::of_pid(pid as u32)
            .map_err(|source| NetworkError::ContainerNamespace { pid, source })?;
        let attachment = self.sandbox.attach(&namespace, hostname)?;
        let address = IpAddr::V4(attachment.address());
        self.dns.registry().register(hostname, address)?;
        tracing::debug!(%hostname, %address, "container attached to the bridge");
        Ok(ContainerLink {
            registry: self.dns.registry().clone(),
            attachment: Some(attachment),
            hostname: hostname.to_owned(),
        })
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn dns(&self) -> &DnsServer {
        &self.dns
    }
}

/// One container's place on the bridge; dropping it removes the veth pair and its DNS names.
pub struct ContainerLink {
    registry: Arc<DnsRegistry>,
    attachment: Option<Attachment>,
    hostname: String,
}

/// Returns the resolv.conf of containers on the sandbox that `config` describes. It is known
/// before the sandbox exists, because the gateway is the subnet's first address.
pub fn resolv_conf(config: &Config) -> Result<String, NetworkError> {
    let subnet: ipnet::Ipv4Net =
        config
            .subnet
            .parse()
            .map_err(|_| NetworkError::InvalidSubnet {
                subnet: config.subnet.clone(),
            })?;
    let gateway = subnet
        .hosts()
        .next()
        .ok_or_else(|| NetworkError::InvalidSubnet {
            subnet: config.subnet.clone(),
        })?;
    Ok(resolv_conf_for(gateway))
}

fn resolv_conf_for(gateway: std::net::Ipv4Addr) -> String {
    format!("nameserver {gateway}\nsearch {SERVICE_DOMAIN}\noptions ndots:1\n")
}

impl ContainerLink {
    /// Unregisters the container's names but leaves its veth pair to the namespace teardown,
    /// for a session that ends right after its container (see [`Attachment::abandon`]).
    pub fn leave_to_session_end(mut self) {
        self.unregister();
        if let Some(attachment) = self.attachment.take() {
            attachment.abandon();
        }
    }

    fn unregister(&self) {
        let Some(attachment) = &self.attachment else {
            return;
        };
        let address = IpAddr::V4(attachment.address());
        let registry = &self.registry;
        if let Err(error) = registry.unregister(&self.hostname) {
            tracing::debug!(hostname = %self.hostname, %error, "failed to unregister a container name");
        }
        registry.remove_client(address);
    }

    pub fn address(&self) -> IpAddr {
        IpAddr::V4(
            self.attachment
                .as_ref()
                .expect("attachment present until drop")
                .address(),
        )
    }
}

impl Drop for ContainerLink {
    fn drop(&mut self) {
        self.unregister();
        if let Some(attachment) = self.attachment.take() {
            if let Err(error) = attachment.detach() {
                tracing::warn!(hostname = %self.hostname, %error, "failed to remove a container's veth pair");
            }
        }
    }
}

fn parse_upstream(server: &str) -> Result<SocketAddr, NetworkError> {
    if let Ok(address) = server.parse::<SocketAddr>() {
        return Ok(address);
    }
    server
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| NetworkError::InvalidUpstream {
            server: server.to_owned(),
        })
}

/// A published port: `[ADDR:]HOSTPORT:CONTAINERPORT[/udp]`, as `docker run -p` writes it.
/// Without an address the port is published on 127.0.0.1, a safer default than Docker's
/// 0.0.0.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host: SocketAddr,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl std::str::FromStr for PortMapping {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| NetworkError::InvalidPublish {
            value: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (ports, protocol) = match text.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(invalid("the protocol must be tcp or udp")),
            None => (text, Protocol::Tcp),
        };
        let (host_part, container_port) = ports
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected HOSTPORT:CONTAINERPORT"))?;
        let container_port: u16 = container_port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| invalid("the container port must be a number from 1 to 65535"))?;

        let (address, host_port) = match host_part.rsplit_once(':') {
            Some((address, port)) => {
                let address = address.trim_start_matches('[').trim_end_matches(']');
                let address: IpAddr = address
                    .parse()
                    .map_err(|_| invalid("the address must be an IP address"))?;
                (address, port)
            }
            None => (IpAddr::from([127, 0, 0, 1]), host_part),
        };
        let host_port: u16 = host_port
            .parse()
            .map_err(|_| invalid("the host port must be a number from 0 to 65535"))?;
        Ok(Self {
            host: SocketAddr::new(address, host_port),
            container_port,
            protocol,
        })
    }
}

/// A running port forward; dropping it closes the listener and its connections.
pub enum PublishedPort {
    Tcp(mayfly_netns::TcpForward),
    Udp(mayfly_netns::UdpForward),
}

impl PublishedPort {
    /// The address the forward listens on; with host port 0, the port the kernel picked.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Tcp(forward) => forward.local_addr(),
            Self::Udp(forward) => forward.local_addr(),
        }
    }
}

impl Network {
    /// Forwards `mapping.host` on the host to the container behind `link`.
    pub fn publish(
        &self,
        link: &ContainerLink,
        mapping: &PortMapping,
    ) -> Result<PublishedPort, NetworkError> {
        self.publish_to(link.address(), mapping)
    }

    /// Forwards `mapping.host` on the host to `address`, a container's address on the bridge.
    pub fn publish_to(
        &self,
        address: IpAddr,
        mapping: &PortMapping,
    ) -> Result<PublishedPort, NetworkError> {
        let target = SocketAddr::new(address, mapping.container_port);
        let config = mayfly_netns::TunnelConfig::default();
        let published = match mapping.protocol {
            Protocol::Tcp => {
                PublishedPort::Tcp(self.sandbox.publish_tcp(mapping.host, target, &config)?)
            }
            Protocol::Udp => {
                PublishedPort::Udp(self.sandbox.publish_udp(mapping.host, target, &config)?)
            }
        };
        tracing::info!(host = %published.local_addr(), %target, protocol = %mapping.protocol, "published port");
        Ok(published)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_spec_forms() {
        let plain: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(plain.host, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(plain.container_port, 80);
        assert_eq!(plain.protocol, Protocol::Tcp);

        let any: PortMapping = "0.0.0.0:53:5353/udp".parse().unwrap();
        assert_eq!(any.host, "0.0.0.0:53".parse().unwrap());
        assert_eq!(any.protocol, Protocol::Udp);

        let v6: PortMapping = "[::1]:0:80".parse().unwrap();
        assert_eq!(v6.host, "[::1]:0".parse().unwrap());
    }

    #[test]
    fn publish_spec_errors_name_the_value() {
        for bad in ["80", "8080:0", "x:80", "8080:80/sctp", "host:8080:80"] {
            let error = bad.parse::<PortMapping>().unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
