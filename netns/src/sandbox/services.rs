//! Tunnels and the DNS responder set up the right way round for the
//! sandbox: which side listens and which side dials is fixed here, and
//! addresses on the wrong side are rejected before any socket exists.

use std::net::SocketAddr;

use super::Sandbox;
use crate::dns::{DnsConfig, DnsError, DnsServer};
use crate::tunnel::{TcpForward, TunnelConfig, TunnelError, UdpForward};

/// Port of the DNS responder on the gateway.
const DNS_PORT: u16 = 53;

impl Sandbox {
    /// Publishes `target`, an address inside the sandbox, on `host_addr` in
    /// the host namespace (loopback by default; port 0 picks a free port).
    pub fn publish_tcp(
        &self,
        host_addr: SocketAddr,
        target: SocketAddr,
        config: &TunnelConfig,
    ) -> Result<TcpForward, TunnelError> {
        self.check_sandbox_target(target)?;
        TcpForward::bind(
            self.host_sockets(),
            host_addr,
            self.sockets(),
            target,
            config,
        )
    }

    /// The UDP form of [`Sandbox::publish_tcp`].
    pub fn publish_udp(
        &self,
        host_addr: SocketAddr,
        target: SocketAddr,
        config: &TunnelConfig,
    ) -> Result<UdpForward, TunnelError> {
        self.check_sandbox_target(target)?;
        UdpForward::bind(
            self.host_sockets(),
            host_addr,
            self.sockets(),
            target,
            config,
        )
    }

    /// Makes `host_target`, an address in the host namespace, reachable from
    /// containers at `listen`, normally a [`BridgeAddress`](super::BridgeAddress)
    /// and a port.
    pub fn expose_host_tcp(
        &self,
        listen: SocketAddr,
        host_target: SocketAddr,
        config: &TunnelConfig,
    ) -> Result<TcpForward, TunnelError> {
        self.check_host_service(listen, host_target)?;
        TcpForward::bind(
            self.sockets(),
            listen,
            self.host_sockets(),
            host_target,
            config,
        )
    }

    /// The UDP form of [`Sandbox::expose_host_tcp`].
    pub fn expose_host_udp(
        &self,
        listen: SocketAddr,
        host_target: SocketAddr,
        config: &TunnelConfig,
    ) -> Result<UdpForward, TunnelError> {
        self.check_host_service(listen, host_target)?;
        UdpForward::bind(
            self.sockets(),
            listen,
            self.host_sockets(),
            host_target,
            config,
        )
    }

    /// Starts the DNS responder on the gateway, port 53, forwarding from
    /// the host namespace. When `config.local_networks` is empty, the
    /// sandbox subnets are used, so reverse lookups inside the sandbox are
    /// never forwarded. Must be called from inside a Tokio runtime.
    pub fn start_dns(&self, mut config: DnsConfig) -> Result<DnsServer, DnsError> {
        if config.local_networks.is_empty() {
            config.local_networks.push(self.config().subnet.into());
            if let Some(v6) = self.config().subnet_v6 {
                config.local_networks.push(v6.into());
            }
        }
        let listen = SocketAddr::from((self.gateway(), DNS_PORT));
        DnsServer::start(self.sockets(), listen, self.host_sockets(), config)
    }

    fn check_sandbox_target(&self, target: SocketAddr) -> Result<(), TunnelError> {
        if !self.contains(target.ip()) {
            return Err(TunnelError::TargetOutsideSandbox { target });
        }
        Ok(())
    }

    fn check_host_service(
        &self,
        listen: SocketAddr,
        host_target: SocketAddr,
    ) -> Result<(), TunnelError> {
        if !self.contains(listen.ip()) {
            return Err(TunnelError::ListenOutsideSandbox { listen });
        }
        if self.contains(host_target.ip()) {
            return Err(TunnelError::HostTargetInSandbox {
                target: host_target,
            });
        }
        Ok(())
    }
}
