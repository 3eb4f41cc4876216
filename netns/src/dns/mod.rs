//! The embedded DNS responder of the sandbox.
//!
//! It listens on the gateway address inside the sandbox, UDP and TCP port
//! 53, and answers from a [`DnsRegistry`]:
//!
//! - names registered with [`DnsRegistry::register`] are answered to every
//!   client, under the engine's domain (`mayfly.internal` by default);
//! - aliases registered with [`DnsRegistry::register_alias`] are answered
//!   only to the client address that holds them, chosen by the query's
//!   source address. An alias `db` answers both `db` and
//!   `db.mayfly.internal`, so it works whether or not the client's resolver
//!   applied the `search mayfly.internal` line of its resolv.conf first, and
//!   it takes precedence over a registered name `db.mayfly.internal` for
//!   that client;
//! - PTR queries for registered addresses return the registered name (an
//!   alias of the asking client first); unknown addresses inside the
//!   configured local networks get NXDOMAIN;
//! - unknown names under the domain get NXDOMAIN (with an SOA whose
//!   negative TTL is 0, so nothing is cached);
//! - every other query is forwarded to the upstream resolvers from the host
//!   network namespace, over UDP and again over TCP when the answer is
//!   truncated.
//!
//! Answers carry TTL 0, because a name can move to a new container at any
//! time.

mod answer;
mod forward;
mod names;
mod registry;
mod resolv_conf;
mod server;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

pub use registry::DnsRegistry;
pub use resolv_conf::read_nameservers;
pub use server::{DnsServer, DnsStats};

use crate::in_namespace::NetnsError;

/// Settings of the DNS responder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// The engine's domain, answered authoritatively.
    pub domain: String,
    /// Resolvers that other names are forwarded to, dialled from the host
    /// namespace. `None` reads the `nameserver` lines of the host's
    /// `/etc/resolv.conf` when the server starts.
    pub upstreams: Option<Vec<SocketAddr>>,
    /// How long to wait for one upstream before trying the next.
    pub upstream_timeout: Duration,
    /// Networks whose reverse (PTR) names are answered here and never
    /// forwarded, normally the sandbox subnets.
    pub local_networks: Vec<IpNet>,
    /// Maximum query log lines per second; the rest are counted.
    pub log_lines_per_second: u32,
    /// Maximum forwarded queries in flight; further ones get SERVFAIL.
    pub max_forwarded: usize,
    /// Maximum TCP client connections at once; further ones are closed.
    pub max_tcp_connections: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            domain: "mayfly.internal".to_owned(),
            upstreams: None,
            upstream_timeout: Duration::from_secs(2),
            local_networks: Vec::new(),
            log_lines_per_second: 20,
            max_forwarded: 256,
            max_tcp_connections: 64,
        }
    }
}

/// Errors from the DNS responder and its registry.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("the DNS server runs on a Tokio runtime; start it from inside one")]
    NoRuntime,

    #[error(transparent)]
    Namespace(#[from] NetnsError),

    #[error("failed to set up the DNS socket on {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error(
        "failed to read upstream resolvers from {path}: {source}; set the upstream list explicitly"
    )]
    ResolvConf {
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("failed to encode a DNS message: {0}")]
    Encode(#[source] hickory_proto::error::ProtoError),

    #[error("invalid reply from upstream resolver {upstream}: {reason}")]
    BadUpstreamReply {
        upstream: SocketAddr,
        reason: String,
    },

    #[error("exchange with upstream resolver {upstream} over {transport} failed: {source}")]
    Upstream {
        upstream: SocketAddr,
        transport: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("upstream resolver {upstream} did not answer within {timeout:?}")]
    UpstreamTimeout {
        upstream: SocketAddr,
        timeout: Duration,
    },

    #[error(
        "no upstream resolver is configured; set one or add a nameserver line to /etc/resolv.conf"
    )]
    NoUpstream,
}
