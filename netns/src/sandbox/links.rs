//! Link, address and route changes through rtnetlink, on a netlink socket
//! opened inside the namespace being changed.

use std::future::Future;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlag};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlag, LinkInfo, LinkMessage,
};
use rtnetlink::Handle;

use super::SandboxError;
use crate::in_namespace::{NetNs, NetnsThread, NsId};

/// Opens a netlink socket on `thread` (so inside its namespace, which a
/// netlink socket keeps) and runs `f` with it on a current-thread runtime.
pub(crate) fn with_links<T, F, Fut>(thread: &NetnsThread, f: F) -> Result<T, SandboxError>
where
    F: FnOnce(Links) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, SandboxError>>,
    T: Send + 'static,
{
    let ns = thread.netns_id();
    thread.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(SandboxError::Runtime)?;
        runtime.block_on(async move {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(SandboxError::NetlinkSocket)?;
            let driver = tokio::spawn(connection);
            let result = f(Links { handle, ns }).await;
            driver.abort();
            result
        })
    })?
}

/// rtnetlink requests in one namespace, with errors that name what failed.
pub(crate) struct Links {
    handle: Handle,
    ns: NsId,
}

impl Links {
    fn failed(&self, action: String) -> impl FnOnce(rtnetlink::Error) -> SandboxError {
        let ns = self.ns;
        move |source| SandboxError::Netlink {
            action,
            ns,
            source: Box::new(source),
        }
    }

    /// Index of link `name`, or `None` when there is no such link.
    pub async fn find(&self, name: &str) -> Result<Option<u32>, SandboxError> {
        let request = self.handle.link().get().match_name(name.to_owned());
        match request.execute().try_next().await {
            Ok(message) => Ok(message.map(|m| m.header.index)),
            Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(None),
            Err(error) => Err(self.failed(format!("look up link {name}"))(error)),
        }
    }

    pub async fn index(&self, name: &str) -> Result<u32, SandboxError> {
        self.find(name)
            .await?
            .ok_or_else(|| SandboxError::LinkNotFound {
                name: name.to_owned(),
                ns: self.ns,
            })
    }

    /// Waits until link `index` reports operational state up, or `limit` passes. The kernel
    /// activates a new link's queue and its bridge port only when it processes the carrier
    /// change, shortly after the link goes up; a packet sent before then is dropped, and a
    /// dropped ARP request is only sent again a second later.
    pub async fn wait_operational(
        &self,
        index: u32,
        name: &str,
        limit: std::time::Duration,
    ) -> Result<bool, SandboxError> {
        use netlink_packet_route::link::{LinkAttribute, State};

        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = self
                .handle
                .link()
                .get()
                .match_index(index)
                .execute()
                .try_next()
                .await
                .map_err(self.failed(format!("read the state of link {name}")))?;
            let up = message.is_some_and(|message| {
                message
                    .attributes
                    .iter()
                    .any(|attribute| matches!(attribute, LinkAttribute::OperState(State::Up)))
            });
            if up {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), SandboxError> {
        self.handle
            .link()
            .set(index)
            .up()
            .execute()
            .await
            .map_err(self.failed(format!("set link {name} up")))
    }

    pub async fn add_bridge(&self, name: &str) -> Result<u32, SandboxError> {
        self.handle
            .link()
            .add()
            .bridge(name.to_owned())
            .execute()
            .await
            .map_err(self.failed(format!("create bridge {name}")))?;
        self.index(name).await
    }

    /// Creates a veth pair in one request: `name` on this side, up and in bridge `bridge`,
    /// and `peer` directly in the namespace `target`. Creating the peer where it belongs
    /// spares moving it there, which costs a wait for the kernel's network synchronisation.
    pub async fn add_veth_into(
        &self,
        name: &str,
        bridge: u32,
        peer: &str,
        target: &NetNs,
    ) -> Result<(), SandboxError> {
        let mut peer_message = LinkMessage::default();
        peer_message
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        peer_message
            .attributes
            .push(LinkAttribute::NetNsFd(target.as_fd().as_raw_fd()));

        let mut request = self.handle.link().add();
        let message = request.message_mut();
        message.header.flags.push(LinkFlag::Up);
        message.header.change_mask.push(LinkFlag::Up);
        message.attributes.extend([
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::Controller(bridge),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
            ]),
        ]);
        request.execute().await.map_err(self.failed(format!(
            "create veth pair {name}/{peer} into the container namespace"
        )))
    }

    /// Adds `addr/prefix_len` to a link. IPv6 addresses skip duplicate
    /// address detection, which would leave them unusable for about a second
    /// on a network where this crate assigns every address.
    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), SandboxError> {
        let mut request = self.handle.address().add(index, addr, prefix_len);
        if addr.is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(vec![AddressFlag::Nodad]));
        }
        request
            .execute()
            .await
            .map_err(self.failed(format!("add address {addr}/{prefix_len} to link {name}")))
    }

    /// Removes `addr` from link `index`; an address already gone is not an
    /// error.
    pub async fn del_address(
        &self,
        index: u32,
        name: &str,
        addr: IpAddr,
    ) -> Result<(), SandboxError> {
        let action = format!("remove address {addr} from link {name}");
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr)
            .execute();
        while let Some(message) = found
            .try_next()
            .await
            .map_err(self.failed(action.clone()))?
        {
            self.handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(self.failed(action.clone()))?;
        }
        Ok(())
    }

    /// Adds the default route through `gateway` (IPv4 or IPv6).
    pub async fn add_default_route(&self, gateway: IpAddr) -> Result<(), SandboxError> {
        let action = format!("add default route via {gateway}");
        let result = match gateway {
            IpAddr::V4(gateway) => {
                self.handle
                    .route()
                    .add()
                    .v4()
                    .gateway(gateway)
                    .execute()
                    .await
            }
            IpAddr::V6(gateway) => {
                self.handle
                    .route()
                    .add()
                    .v6()
                    .gateway(gateway)
                    .execute()
                    .await
            }
        };
        result.map_err(self.failed(action))
    }

    /// Deletes link `name`. Returns false when it did not exist, as happens
    /// to a veth whose peer's namespace was destroyed.
    pub async fn delete(&self, name: &str) -> Result<bool, SandboxError> {
        let Some(index) = self.find(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(false),
            Err(error) => Err(self.failed(format!("delete link {name}"))(error)),
        }
    }
}

/// The errno carried by a netlink error reply, if any.
pub(crate) fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}
