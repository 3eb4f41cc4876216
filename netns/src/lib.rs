//! Network sandbox plumbing for mayfly: network namespaces, the bridge and
//! veth links (rtnetlink), the embedded DNS responder and TCP/UDP tunnels
//! between the host and the sandbox.
//!
//! The crate knows nothing of images or services. Its caller runs as root in
//! its own user namespace and stays in the host network namespace; every
//! socket inside the sandbox or a container is created by a
//! [`NetnsThread`] that entered that namespace and checked that it did.
#![forbid(unsafe_code)]

pub mod dns;
pub mod in_namespace;
pub mod sandbox;
pub mod tunnel;

mod log_limit;
mod task;

pub use dns::{DnsConfig, DnsError, DnsRegistry, DnsServer, DnsStats};
pub use in_namespace::{NetNs, NetnsError, NetnsThread, NsId};
pub use sandbox::{Attachment, BridgeAddress, Sandbox, SandboxConfig, SandboxError};
pub use tunnel::{PortHolder, TcpForward, TunnelConfig, TunnelError, UdpForward};
