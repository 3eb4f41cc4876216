//! UDP tunnels: a socket in one namespace and, per client address, a
//! connected socket in another, closed after an idle timeout.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::port_holder::{self, Protocol};
use super::{TunnelConfig, TunnelError, TunnelLog};
use crate::in_namespace::{NetnsError, NetnsThread};
use crate::task::AbortOnDrop;

/// Largest UDP payload over IPv4 or IPv6 without jumbograms.
const MAX_DATAGRAM: usize = 65_535;

/// A UDP tunnel. Dropping it closes the listening socket and every flow.
#[derive(Debug)]
pub struct UdpForward {
    local_addr: SocketAddr,
    target: SocketAddr,
    flows: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl UdpForward {
    /// Receives datagrams on `listen_addr` inside the namespace of `listen`
    /// and sends each to `target` from a socket created inside the namespace
    /// of `dial`, one socket per client address. Replies go back to the
    /// client they belong to. Port 0 picks a free port.
    ///
    /// Must be called from inside a Tokio runtime. Blocks briefly while
    /// `listen` binds the socket.
    pub fn bind(
        listen: &NetnsThread,
        listen_addr: SocketAddr,
        dial: &NetnsThread,
        target: SocketAddr,
        config: &TunnelConfig,
    ) -> Result<UdpForward, TunnelError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TunnelError::NoRuntime)?;
        let socket = bind_socket(listen, listen_addr)?;
        let local_addr = socket.local_addr().map_err(|source| TunnelError::Socket {
            addr: listen_addr,
            source,
        })?;
        let socket = to_tokio(socket, &runtime).map_err(|source| TunnelError::Socket {
            addr: local_addr,
            source,
        })?;

        let flows = Arc::new(AtomicUsize::new(0));
        let relay = Relay {
            socket: Arc::new(socket),
            dial: dial.clone(),
            config: config.clone(),
            log: TunnelLog::new(local_addr, target, config),
            epoch: Instant::now(),
            flow_count: Arc::clone(&flows),
        };
        let task = runtime.spawn(relay.run());
        tracing::info!(listen = %local_addr, %target, "started UDP tunnel");
        Ok(UdpForward {
            local_addr,
            target,
            flows,
            _task: AbortOnDrop(task),
        })
    }

    /// The address the tunnel receives on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Number of open flows, as of the last datagram or expiry sweep.
    pub fn flow_count(&self) -> usize {
        self.flows.load(Ordering::Relaxed)
    }
}

impl Drop for UdpForward {
    fn drop(&mut self) {
        tracing::info!(listen = %self.local_addr, target = %self.target, "stopped UDP tunnel");
    }
}

fn bind_socket(listen: &NetnsThread, addr: SocketAddr) -> Result<StdUdpSocket, TunnelError> {
    let ns = listen.netns_id();
    listen.run(move || match StdUdpSocket::bind(addr) {
        Ok(socket) => Ok(socket),
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => Err(TunnelError::PortInUse {
            protocol: Protocol::Udp.name(),
            addr,
            holder: port_holder::find(Protocol::Udp, addr.port()),
        }),
        Err(source) => Err(NetnsError::bind(addr, ns, source).into()),
    })?
}

fn to_tokio(socket: StdUdpSocket, runtime: &tokio::runtime::Handle) -> io::Result<UdpSocket> {
    socket.set_nonblocking(true)?;
    let _entered = runtime.enter();
    UdpSocket::from_std(socket)
}

/// The receive loop of one tunnel and the flows it owns.
struct Relay {
    socket: Arc<UdpSocket>,
    dial: NetnsThread,
    config: TunnelConfig,
    log: Arc<TunnelLog>,
    /// Start of the clock that flow activity times count from.
    epoch: Instant,
    flow_count: Arc<AtomicUsize>,
}

/// One client's flow: its socket towards the target and the task that
/// carries replies back. Dropping it aborts the task and closes the socket.
struct Flow {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the relay's epoch at the last datagram either way.
    last_active: Arc<AtomicU64>,
    _replies: AbortOnDrop,
}

impl Relay {
    async fn run(self) {
        let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let sweep_period = (self.config.udp_idle_timeout / 4).max(Duration::from_millis(10));
        let mut sweep = tokio::time::interval(sweep_period);

        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, client)) => self.forward(&mut flows, client, &buf[..len]).await,
                    Err(error) => {
                        if let Some(suppressed) = self.log.limiter.allow() {
                            tracing::warn!(listen = %self.log.listen, %error, suppressed, "UDP tunnel failed to receive");
                        }
                    }
                },
                _ = sweep.tick() => {
                    let now = self.now_ms();
                    let idle_ms = u64::try_from(self.config.udp_idle_timeout.as_millis()).unwrap_or(u64::MAX);
                    flows.retain(|_, flow| now.saturating_sub(flow.last_active.load(Ordering::Relaxed)) < idle_ms);
                }
            }
            self.flow_count.store(flows.len(), Ordering::Relaxed);
        }
    }

    async fn forward(
        &self,
        flows: &mut HashMap<SocketAddr, Flow>,
        client: SocketAddr,
        datagram: &[u8],
    ) {
        if !flows.contains_key(&client) {
            if flows.len() >= self.config.max_udp_flows {
                if let Some(suppressed) = self.log.limiter.allow() {
                    tracing::warn!(listen = %self.log.listen, %client, max = self.config.max_udp_flows, suppressed, "UDP tunnel flow limit reached; dropping datagram");
                }
                return;
            }
            match self.open_flow(client).await {
                Ok(flow) => {
                    flows.insert(client, flow);
                }
                Err(error) => {
                    if let Some(suppressed) = self.log.limiter.allow() {
                        tracing::warn!(listen = %self.log.listen, target = %self.log.target, %client, %error, suppressed, "UDP tunnel failed to open a flow");
                    }
                    return;
                }
            }
        }

        let Some(flow) = flows.get(&client) else {
            return;
        };
        flow.last_active.store(self.now_ms(), Ordering::Relaxed);
        if let Err(error) = flow.upstream.send(datagram).await {
            if let Some(suppressed) = self.log.limiter.allow() {
                tracing::debug!(listen = %self.log.listen, target = %self.log.target, %client, %error, suppressed, "UDP tunnel failed to send to target");
            }
        }
    }

    async fn open_flow(&self, client: SocketAddr) -> Result<Flow, TunnelError> {
        let target = self.log.target;
        let any: IpAddr = match target {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let local = SocketAddr::new(any, 0);
        let upstream = self.dial.udp_bind_async(local).await?;
        let upstream =
            to_tokio(upstream, &tokio::runtime::Handle::current()).map_err(|source| {
                TunnelError::Socket {
                    addr: local,
                    source,
                }
            })?;
        upstream
            .connect(target)
            .await
            .map_err(|source| TunnelError::Socket {
                addr: target,
                source,
            })?;

        let upstream = Arc::new(upstream);
        let last_active = Arc::new(AtomicU64::new(self.now_ms()));
        let replies = tokio::spawn(carry_replies(
            Arc::clone(&upstream),
            Arc::clone(&self.socket),
            client,
            Arc::clone(&last_active),
            self.epoch,
            Arc::clone(&self.log),
        ));
        if let Some(suppressed) = self.log.limiter.allow() {
            tracing::debug!(listen = %self.log.listen, %target, %client, suppressed, "UDP tunnel opened a flow");
        }
        Ok(Flow {
            upstream,
            last_active,
            _replies: AbortOnDrop(replies),
        })
    }

    fn now_ms(&self) -> u64 {
        millis_since(self.epoch)
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Sends every datagram the target returns on a flow back to its client.
async fn carry_replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    last_active: Arc<AtomicU64>,
    epoch: Instant,
    log: Arc<TunnelLog>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(len) => {
                last_active.store(millis_since(epoch), Ordering::Relaxed);
                if let Err(error) = socket.send_to(&buf[..len], client).await {
                    if let Some(suppressed) = log.limiter.allow() {
                        tracing::debug!(listen = %log.listen, %client, %error, suppressed, "UDP tunnel failed to send a reply");
                    }
                }
            }
            // An ICMP port unreachable from the target arrives as
            // ECONNREFUSED on the connected socket; the flow stays open in
            // case the target starts listening.
            Err(error) => {
                if let Some(suppressed) = log.limiter.allow() {
                    tracing::debug!(listen = %log.listen, target = %log.target, %client, %error, suppressed, "UDP tunnel target returned an error");
                }
                if error.kind() != io::ErrorKind::ConnectionRefused {
                    return;
                }
            }
        }
    }
}
