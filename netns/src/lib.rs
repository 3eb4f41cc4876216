//! Network sandbox plumbing: namespaces, links, addresses, DNS and tunnels.
