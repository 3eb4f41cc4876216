//! Extra addresses on the bridge, for listeners of host services.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::address_pool::Lease;
use super::links::with_links;
use super::{Sandbox, SandboxError, SandboxInner};

/// An address from the sandbox subnet added to the bridge, so that a
/// listener inside the sandbox can serve containers on an address of its
/// own (which the caller can give a DNS name). Dropping it removes the
/// address from the bridge.
#[derive(Debug)]
pub struct BridgeAddress {
    sandbox: Arc<SandboxInner>,
    lease: Lease,
    removed: bool,
}

impl Sandbox {
    /// Takes the next free address of the subnet and adds it to the bridge.
    /// Blocks while netlink requests run.
    pub fn add_bridge_address(&self) -> Result<BridgeAddress, SandboxError> {
        let inner = &self.inner;
        let lease = inner.allocate()?;
        let address = BridgeAddress {
            sandbox: Arc::clone(inner),
            lease,
            removed: false,
        };

        let index = inner.bridge_index;
        let bridge = inner.config.bridge_name.clone();
        let prefix = inner.config.subnet.prefix_len();
        with_links(&inner.sockets, move |links| async move {
            links
                .add_address(index, &bridge, IpAddr::V4(lease.v4), prefix)
                .await
        })?;

        tracing::info!(address = %lease.v4, "added bridge address");
        Ok(address)
    }
}

impl BridgeAddress {
    pub fn address(&self) -> Ipv4Addr {
        self.lease.v4
    }

    /// Removes the address from the bridge and returns it to the pool.
    pub fn remove(mut self) -> Result<(), SandboxError> {
        self.removed = true;
        self.delete()
    }

    fn delete(&self) -> Result<(), SandboxError> {
        let index = self.sandbox.bridge_index;
        let bridge = self.sandbox.config.bridge_name.clone();
        let addr = IpAddr::V4(self.lease.v4);
        with_links(&self.sandbox.sockets, move |links| async move {
            links.del_address(index, &bridge, addr).await
        })?;
        self.sandbox.release(self.lease);
        tracing::info!(address = %addr, "removed bridge address");
        Ok(())
    }
}

impl Drop for BridgeAddress {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Err(error) = self.delete() {
            tracing::warn!(address = %self.lease.v4, %error, "failed to remove bridge address");
        }
    }
}
