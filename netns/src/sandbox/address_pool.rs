//! Allocation of container and bridge addresses inside the sandbox subnet.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Host offsets in use within the sandbox subnet. Offset 1 is the gateway;
/// offset 0 (network) and the last offset (broadcast) are never handed out.
///
/// Allocation is next-fit: it continues after the last address handed out,
/// so a released address is reused only after the rest of the subnet, which
/// keeps stale ARP and DNS entries from pointing at a new container.
#[derive(Debug)]
pub(crate) struct AddressPool {
    subnet: Ipv4Net,
    subnet_v6: Option<Ipv6Net>,
    used: BTreeSet<u32>,
    next: u32,
}

/// One allocated host offset, with its IPv4 and optional IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    pub offset: u32,
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

pub(crate) const GATEWAY_OFFSET: u32 = 1;

impl AddressPool {
    pub fn new(subnet: Ipv4Net, subnet_v6: Option<Ipv6Net>) -> Self {
        Self {
            subnet,
            subnet_v6,
            used: BTreeSet::from([GATEWAY_OFFSET]),
            next: GATEWAY_OFFSET + 1,
        }
    }

    /// Number of offsets in the subnet, network and broadcast included.
    fn size(&self) -> u32 {
        // Validation keeps the prefix length at 30 or less, so this fits.
        1u32 << (32 - u32::from(self.subnet.prefix_len()))
    }

    /// The lease at `offset`, which the caller has checked is in range.
    pub fn lease_at(&self, offset: u32) -> Lease {
        let v4 = Ipv4Addr::from(u32::from(self.subnet.network()) + offset);
        let v6 = self
            .subnet_v6
            .map(|net| Ipv6Addr::from(u128::from(net.network()) + u128::from(offset)));
        Lease { offset, v4, v6 }
    }

    /// Hands out the next free lease, or `None` when the subnet is full.
    pub fn allocate(&mut self) -> Option<Lease> {
        let first = GATEWAY_OFFSET + 1;
        let last = self.size() - 2;
        if first > last {
            return None;
        }
        let span = last - first + 1;
        for step in 0..span {
            let offset = first + (self.next - first + step) % span;
            if self.used.insert(offset) {
                self.next = if offset == last { first } else { offset + 1 };
                return Some(self.lease_at(offset));
            }
        }
        None
    }

    /// Returns `offset` to the pool. Releasing the gateway does nothing.
    pub fn release(&mut self, offset: u32) {
        if offset != GATEWAY_OFFSET {
            self.used.remove(&offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(subnet: &str) -> AddressPool {
        AddressPool::new(subnet.parse().unwrap(), None)
    }

    #[test]
    fn first_lease_follows_gateway() {
        let mut pool = pool("10.89.0.0/24");
        let lease = pool.allocate().unwrap();
        assert_eq!(lease.v4, Ipv4Addr::new(10, 89, 0, 2));
        assert_eq!(lease.v6, None);
    }

    #[test]
    fn small_subnet_exhausts() {
        // A /29 has offsets 0..=7: network 0, gateway 1, broadcast 7.
        let mut pool = pool("192.168.7.0/29");
        let leases: Vec<_> = std::iter::from_fn(|| pool.allocate()).collect();
        let addrs: Vec<_> = leases.iter().map(|l| l.v4.octets()[3]).collect();
        assert_eq!(addrs, vec![2, 3, 4, 5, 6]);
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn released_address_reused_last() {
        let mut pool = pool("192.168.7.0/29");
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.release(a.offset);
        let c = pool.allocate().unwrap();
        assert_eq!(b.offset + 1, c.offset);
        assert_eq!(pool.allocate().unwrap().offset, 5);
        assert_eq!(pool.allocate().unwrap().offset, 6);
        // Everything else is used now, so the released offset comes back.
        assert_eq!(pool.allocate().unwrap().offset, a.offset);
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn gateway_never_released() {
        let mut pool = pool("192.168.7.0/30");
        pool.release(GATEWAY_OFFSET);
        let lease = pool.allocate().unwrap();
        assert_eq!(lease.offset, 2);
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn v6_lease_shares_offset() {
        let mut pool = AddressPool::new(
            "10.89.0.0/24".parse().unwrap(),
            Some("fd00:89::/64".parse().unwrap()),
        );
        let lease = pool.allocate().unwrap();
        assert_eq!(lease.v6, Some("fd00:89::2".parse().unwrap()));
    }
}
