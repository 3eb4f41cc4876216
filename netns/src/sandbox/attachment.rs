//! Joining a container's network namespace to the sandbox bridge.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::address_pool::Lease;
use super::links::with_links;
use super::{Sandbox, SandboxError, SandboxInner};
use crate::in_namespace::{NetNs, NetnsThread};

/// Name of the container side of the veth pair, inside the container.
const CONTAINER_LINK: &str = "eth0";

/// A container joined to the sandbox by a veth pair. [`Attachment::detach`]
/// or dropping it deletes the pair and returns the address to the pool.
#[derive(Debug)]
pub struct Attachment {
    sandbox: Arc<SandboxInner>,
    name: String,
    host_link: String,
    lease: Lease,
    detached: bool,
}

/// How long `attach` waits for a new link to become operational.
const LINK_READY_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Sandbox {
    /// Joins the network namespace `container` to the bridge: creates a
    /// veth pair with one end in the sandbox's bridge and the other in
    /// `container` as `eth0`, assigns the next free address, brings the links (and the container's
    /// loopback) up and adds a default route through the gateway.
    ///
    /// `name` labels the attachment in logs and errors. Blocks while netlink
    /// requests run.
    pub fn attach(&self, container: &NetNs, name: &str) -> Result<Attachment, SandboxError> {
        let inner = &self.inner;
        let lease = inner.allocate()?;
        let host_link = inner.link_name("mfh");

        let attachment = Attachment {
            sandbox: Arc::clone(inner),
            name: name.to_owned(),
            host_link: host_link.clone(),
            lease,
            detached: false,
        };

        // From here on, dropping `attachment` on an error deletes the veth
        // pair (if it was created) and releases the address.
        let target = container.try_clone()?;
        let bridge_index = inner.bridge_index;
        with_links(&inner.sockets, move |links| async move {
            links
                .add_veth_into(&host_link, bridge_index, CONTAINER_LINK, &target)
                .await
        })?;

        configure_container(inner, container, lease)?;
        let host = attachment.host_link.clone();
        let ready = with_links(&inner.sockets, move |links| async move {
            let index = links.index(&host).await?;
            links.wait_operational(index, &host, LINK_READY_LIMIT).await
        })?;
        if !ready {
            tracing::warn!(link = %attachment.host_link, limit = ?LINK_READY_LIMIT, "the container's link is not operational yet; its first packets may be lost");
        }

        tracing::info!(
            container = %name,
            netns = %container.id(),
            address = %lease.v4,
            link = %attachment.host_link,
            "attached container to sandbox"
        );
        Ok(attachment)
    }
}

/// Inside the container namespace: adds the addresses to the veth end `eth0`,
/// brings it and loopback up, adds default routes.
fn configure_container(
    inner: &SandboxInner,
    container: &NetNs,
    lease: Lease,
) -> Result<(), SandboxError> {
    let thread = NetnsThread::spawn(container)?;
    let gateway = inner.gateway();
    let prefix = inner.config.subnet.prefix_len();
    let prefix_v6 = inner.config.subnet_v6.map(|net| net.prefix_len());

    with_links(&thread, move |links| async move {
        let index = links.index(CONTAINER_LINK).await?;
        links
            .add_address(index, CONTAINER_LINK, lease.v4.into(), prefix)
            .await?;
        if let (Some(v6), Some(prefix_v6)) = (lease.v6, prefix_v6) {
            links
                .add_address(index, CONTAINER_LINK, v6.into(), prefix_v6)
                .await?;
        }
        links.set_up(index, CONTAINER_LINK).await?;

        let lo = links.index("lo").await?;
        links.set_up(lo, "lo").await?;

        links.add_default_route(IpAddr::V4(gateway.v4)).await?;
        if let Some(v6) = gateway.v6 {
            links.add_default_route(IpAddr::V6(v6)).await?;
        }
        if !links
            .wait_operational(index, CONTAINER_LINK, LINK_READY_LIMIT)
            .await?
        {
            tracing::warn!(link = CONTAINER_LINK, limit = ?LINK_READY_LIMIT, "the container's eth0 is not operational yet; its first packets may be lost");
        }
        Ok(())
    })
}

impl Attachment {
    /// The label given to [`Sandbox::attach`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's IPv4 address on the bridge.
    pub fn address(&self) -> Ipv4Addr {
        self.lease.v4
    }

    /// The container's IPv6 address, when an IPv6 subnet is configured.
    pub fn address_v6(&self) -> Option<Ipv6Addr> {
        self.lease.v6
    }

    /// Name of the sandbox side of the veth pair.
    pub fn host_link(&self) -> &str {
        &self.host_link
    }

    /// Deletes the veth pair and returns the address to the pool. A pair
    /// already gone with the container's namespace is not an error.
    pub fn detach(mut self) -> Result<(), SandboxError> {
        self.detached = true;
        self.remove()
    }

    /// Leaves the veth pair to go away with its namespaces, without a netlink request. It is
    /// meant for a container whose namespace is gone while the whole sandbox is about to go
    /// too, because an explicit delete then only waits for the kernel's namespace cleanup.
    /// The address stays leased.
    pub fn abandon(mut self) {
        self.detached = true;
        tracing::debug!(container = %self.name, link = %self.host_link, "left veth pair to the namespace teardown");
    }

    fn remove(&self) -> Result<(), SandboxError> {
        let link = self.host_link.clone();
        let result = with_links(&self.sandbox.sockets, move |links| async move {
            links.delete(&link).await
        });

        // A pair that could not be deleted keeps its address in the
        // container, so the address stays out of the pool.
        let existed = result?;
        self.sandbox.release(self.lease);
        tracing::info!(container = %self.name, link = %self.host_link, existed, "detached container from sandbox");
        Ok(())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Err(error) = self.remove() {
            tracing::warn!(container = %self.name, link = %self.host_link, %error, "failed to detach container");
        }
    }
}
