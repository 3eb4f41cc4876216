//! TCP and UDP tunnels between two network namespaces.
//!
//! A tunnel listens in one namespace and, for each TCP connection or UDP
//! flow, dials a target from another. Host to container: listen on the host
//! (loopback by default) and dial inside the sandbox. Container to host:
//! listen on a bridge address inside the sandbox and dial the host. Both
//! directions are the same code with the two [`NetnsThread`]s swapped.
//!
//! TCP bytes move with `splice(2)` through a pipe per direction, so they are
//! never copied to user space. A half-close is passed on, and a full pipe
//! stops reading (backpressure). Pipes are reused across connections, and a
//! connection that fills its pipe gets a larger one within a budget. UDP goes through a per-flow table keyed by
//! the client address, with idle expiry.

mod pipe;
mod port_holder;
mod splice;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use port_holder::PortHolder;
pub use tcp::TcpForward;
pub use udp::UdpForward;

use crate::in_namespace::NetnsError;
use crate::log_limit::LogLimiter;

/// Settings shared by TCP and UDP tunnels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// How long a TCP dial to the target may take before the client is
    /// disconnected.
    pub connect_timeout: Duration,
    /// Maximum number of TCP connections relayed at once; further clients
    /// are disconnected at once.
    pub max_connections: usize,
    /// A UDP flow with no datagram in either direction for this long is
    /// closed.
    pub udp_idle_timeout: Duration,
    /// Maximum number of UDP flows at once; datagrams from further clients
    /// are dropped.
    pub max_udp_flows: usize,
    /// Maximum log lines per second about individual connections and flows.
    pub log_lines_per_second: u32,
    /// Maximum bytes in enlarged (1 MiB) relay pipes across all TCP tunnels
    /// of the process. Each tunnel compares the process's total with its
    /// own value. Pipe buffers count against the user's
    /// `fs.pipe-user-pages-soft` limit, which container processes of the
    /// same uid share, so the limit leaves room for them. With 0, every pipe
    /// keeps the default size of 64 KiB.
    pub max_enlarged_pipe_bytes: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            max_connections: 1024,
            udp_idle_timeout: Duration::from_secs(45),
            max_udp_flows: 1024,
            log_lines_per_second: 10,
            // Half of the default limit of 16384 pages of 4 KiB.
            max_enlarged_pipe_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Errors from setting up a tunnel. Failures of single connections and
/// flows are logged (rate-limited), not returned.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnels run on a Tokio runtime; call this from inside one")]
    NoRuntime,

    #[error("{protocol} address {addr} is already in use{}; choose another port or stop that process", holder_suffix(.holder))]
    PortInUse {
        protocol: &'static str,
        addr: SocketAddr,
        holder: Option<PortHolder>,
    },

    #[error(
        "target {target} is outside the sandbox subnet; a published port dials a container address"
    )]
    TargetOutsideSandbox { target: SocketAddr },

    #[error("listen address {listen} is outside the sandbox subnet; use a bridge address")]
    ListenOutsideSandbox { listen: SocketAddr },

    #[error("host target {target} lies in the sandbox subnet, where it cannot be reached from the host namespace; configure a sandbox subnet that does not overlap host addresses")]
    HostTargetInSandbox { target: SocketAddr },

    #[error(transparent)]
    Namespace(#[from] NetnsError),

    #[error("failed to set up the tunnel socket on {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn holder_suffix(holder: &Option<PortHolder>) -> String {
    match holder {
        Some(holder) => format!(" by {holder}"),
        None => String::new(),
    }
}

/// Log context shared by every connection or flow of one tunnel.
#[derive(Debug)]
struct TunnelLog {
    listen: SocketAddr,
    target: SocketAddr,
    limiter: LogLimiter,
}

impl TunnelLog {
    fn new(listen: SocketAddr, target: SocketAddr, config: &TunnelConfig) -> Arc<Self> {
        Arc::new(Self {
            listen,
            target,
            limiter: LogLimiter::new(config.log_lines_per_second),
        })
    }
}
