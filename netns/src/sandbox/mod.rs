//! The network sandbox: one network namespace with the bridge that joins
//! every container, the gateway address, and the addresses of host services.
//!
//! The sandbox namespace is created by the caller's user namespace, so the
//! caller (root there) may change its links and bind any port in it. Nothing
//! in the sandbox routes off it: containers reach each other over the bridge
//! and reach the host only through tunnels.

mod address_pool;
mod attachment;
mod bridge_address;
mod links;
mod services;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::{Ipv4Net, Ipv6Net};

pub use attachment::Attachment;
pub use bridge_address::BridgeAddress;

use crate::in_namespace::{NetNs, NetnsError, NetnsThread, NsId};
use address_pool::{AddressPool, Lease, GATEWAY_OFFSET};
use links::with_links;

/// Settings of a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Name of the bridge inside the sandbox (at most 15 bytes).
    pub bridge_name: String,
    /// IPv4 subnet; the gateway is its first host address. Prefix length at
    /// most 30.
    pub subnet: Ipv4Net,
    /// Optional IPv6 subnet (a ULA such as `fd00:89::/64`). Each container
    /// gets the address at the same host offset as its IPv4 address.
    pub subnet_v6: Option<Ipv6Net>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            bridge_name: "mayfly0".to_owned(),
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 89, 0, 0), 24)
                .expect("prefix length 24 is valid"),
            subnet_v6: None,
        }
    }
}

/// Errors from creating the sandbox and attaching containers to it.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox configuration: {reason}")]
    InvalidConfig { reason: String },

    #[error(transparent)]
    Namespace(#[from] NetnsError),

    #[error("failed to build the runtime for netlink requests: {0}")]
    Runtime(#[source] io::Error),

    #[error("failed to open a netlink socket: {0}")]
    NetlinkSocket(#[source] io::Error),

    #[error("failed to {action} in network namespace {ns}: {source}")]
    Netlink {
        action: String,
        ns: NsId,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    #[error("link {name} not found in network namespace {ns}")]
    LinkNotFound { name: String, ns: NsId },

    #[error("no free address left in sandbox subnet {subnet}; detach containers or configure a larger subnet")]
    SubnetExhausted { subnet: Ipv4Net },
}

/// The network sandbox. Dropping the last clone stops its namespace threads
/// and closes its namespace handle. The namespace itself goes away once
/// nothing else (an attachment, a socket, a tunnel) still uses it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    inner: Arc<SandboxInner>,
}

#[derive(Debug)]
struct SandboxInner {
    config: SandboxConfig,
    netns: NetNs,
    sockets: NetnsThread,
    host: NetnsThread,
    bridge_index: u32,
    pool: Mutex<AddressPool>,
    next_link: AtomicU32,
}

impl Sandbox {
    /// Creates the sandbox namespace with loopback up and the bridge holding
    /// the gateway address(es). Blocks while netlink requests run, so async
    /// callers should call it from `spawn_blocking`.
    ///
    /// The host namespace (for host-side sockets of tunnels and DNS
    /// forwarding) is the namespace of this process's main thread.
    pub fn create(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let config = validate(config)?;

        let host_ns = NetNs::of_process()?;
        let host = NetnsThread::spawn(&host_ns)?;
        let netns = NetNs::create()?;
        let sockets = NetnsThread::spawn(&netns)?;

        let pool = AddressPool::new(config.subnet, config.subnet_v6);
        let gateway = pool.lease_at(GATEWAY_OFFSET);
        let bridge = config.bridge_name.clone();
        let prefix = config.subnet.prefix_len();
        let prefix_v6 = config.subnet_v6.map(|net| net.prefix_len());
        let bridge_index = with_links(&sockets, move |links| async move {
            let lo = links.index("lo").await?;
            links.set_up(lo, "lo").await?;

            let index = links.add_bridge(&bridge).await?;
            links
                .add_address(index, &bridge, gateway.v4.into(), prefix)
                .await?;
            if let (Some(v6), Some(prefix_v6)) = (gateway.v6, prefix_v6) {
                links
                    .add_address(index, &bridge, v6.into(), prefix_v6)
                    .await?;
            }
            links.set_up(index, &bridge).await?;
            Ok(index)
        })?;

        tracing::info!(
            netns = %netns.id(),
            bridge = %config.bridge_name,
            subnet = %config.subnet,
            gateway = %gateway.v4,
            "created network sandbox"
        );
        Ok(Sandbox {
            inner: Arc::new(SandboxInner {
                config,
                netns,
                sockets,
                host,
                bridge_index,
                pool: Mutex::new(pool),
                next_link: AtomicU32::new(0),
            }),
        })
    }

    /// The sandbox network namespace.
    pub fn netns(&self) -> &NetNs {
        &self.inner.netns
    }

    /// Creates sockets inside the sandbox namespace.
    pub fn sockets(&self) -> &NetnsThread {
        &self.inner.sockets
    }

    /// Creates sockets in the host namespace.
    pub fn host_sockets(&self) -> &NetnsThread {
        &self.inner.host
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The IPv4 gateway address, held by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.gateway().v4
    }

    /// The IPv6 gateway address, when an IPv6 subnet is configured.
    pub fn gateway_v6(&self) -> Option<Ipv6Addr> {
        self.inner.gateway().v6
    }

    /// Whether `addr` lies in the sandbox's IPv4 or IPv6 subnet.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(v4) => self.inner.config.subnet.contains(&v4),
            IpAddr::V6(v6) => self
                .inner
                .config
                .subnet_v6
                .is_some_and(|net| net.contains(&v6)),
        }
    }
}

impl SandboxInner {
    fn gateway(&self) -> Lease {
        self.pool().lease_at(GATEWAY_OFFSET)
    }

    fn pool(&self) -> MutexGuard<'_, AddressPool> {
        // No pool operation can panic halfway through a change, so a
        // poisoned lock still guards a consistent pool.
        self.pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn allocate(&self) -> Result<Lease, SandboxError> {
        self.pool().allocate().ok_or(SandboxError::SubnetExhausted {
            subnet: self.config.subnet,
        })
    }

    fn release(&self, lease: Lease) {
        self.pool().release(lease.offset);
    }

    /// A link name unique within this sandbox, `prefix` plus a counter.
    fn link_name(&self, prefix: &str) -> String {
        let n = self.next_link.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}{n}")
    }
}

fn validate(mut config: SandboxConfig) -> Result<SandboxConfig, SandboxError> {
    let name = &config.bridge_name;
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', ' ', '\0'])
        || name == "."
        || name == ".."
    {
        return Err(SandboxError::InvalidConfig {
            reason: format!(
                "bridge name {name:?} is not a valid link name (1 to 15 bytes, no '/' or space)"
            ),
        });
    }
    if config.subnet.prefix_len() > 30 {
        return Err(SandboxError::InvalidConfig {
            reason: format!(
                "subnet {} leaves no container address; use a prefix length of 30 or less",
                config.subnet
            ),
        });
    }
    config.subnet = config.subnet.trunc();

    if let Some(v6) = config.subnet_v6 {
        let v4_host_bits = 32 - config.subnet.prefix_len();
        if 128 - v6.prefix_len() < v4_host_bits {
            return Err(SandboxError::InvalidConfig {
                reason: format!(
                    "IPv6 subnet {v6} is smaller than IPv4 subnet {}; use a prefix length of {} or less",
                    config.subnet,
                    128 - v4_host_bits
                ),
            });
        }
        config.subnet_v6 = Some(v6.trunc());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_truncates_subnet() {
        let config = SandboxConfig {
            subnet: "10.89.0.7/24".parse().unwrap(),
            ..SandboxConfig::default()
        };
        let config = validate(config).unwrap();
        assert_eq!(config.subnet, "10.89.0.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn validate_rejects_tiny_subnet() {
        let config = SandboxConfig {
            subnet: "10.89.0.0/31".parse().unwrap(),
            ..SandboxConfig::default()
        };
        assert!(matches!(
            validate(config),
            Err(SandboxError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn validate_rejects_long_bridge_name() {
        let config = SandboxConfig {
            bridge_name: "a-very-long-bridge".to_owned(),
            ..SandboxConfig::default()
        };
        assert!(matches!(
            validate(config),
            Err(SandboxError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn validate_rejects_small_v6_subnet() {
        let config = SandboxConfig {
            subnet_v6: Some("fd00:89::/124".parse().unwrap()),
            ..SandboxConfig::default()
        };
        assert!(matches!(
            validate(config),
            Err(SandboxError::InvalidConfig { .. })
        ));
    }
}
