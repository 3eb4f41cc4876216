//! Running code and creating sockets inside a chosen network namespace.
//!
//! A socket keeps the network namespace it was created in, whichever thread
//! later reads or writes it. So the only thing that has to happen inside a
//! namespace is `socket(2)` (and `bind(2)`/`listen(2)` for listeners). A
//! [`NetnsThread`] is a dedicated OS thread that entered one namespace with
//! `setns(2)`; it checks before every job that it still is in that namespace
//! (by comparing the inode of `/proc/thread-self/ns/net`), so a sandbox
//! address is never dialled from the host namespace by mistake.

mod namespace;
mod socket_pool;
mod thread;

pub use namespace::{NetNs, NsId};
pub use thread::NetnsThread;

use std::io;
use std::net::SocketAddr;

/// Errors from opening, creating and entering network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("failed to open network namespace {path}: {source}; check that the process exists and that this user may read it")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },

    #[error("failed to duplicate a network namespace file descriptor: {0}")]
    Duplicate(#[source] io::Error),

    #[error("failed to inspect network namespace file descriptor: {0}")]
    Stat(#[source] nix::Error),

    #[error("file descriptor {fd} refers to {target:?}, not a network namespace; pass an fd of /proc/<pid>/ns/net")]
    NotNetworkNamespace { fd: i32, target: String },

    #[error("failed to create a network namespace with unshare(CLONE_NEWNET): {0}; the caller needs CAP_SYS_ADMIN in its user namespace")]
    Unshare(#[source] nix::Error),

    #[error("failed to enter network namespace {target} with setns: {source}; the caller needs CAP_SYS_ADMIN over that namespace")]
    Setns {
        target: NsId,
        #[source]
        source: nix::Error,
    },

    #[error("failed to run a thread to create a network namespace: {0}")]
    CreateThread(#[source] io::Error),

    #[error("thread is in network namespace {actual}, expected {expected}; refusing to run in the wrong namespace")]
    WrongNamespace { expected: NsId, actual: NsId },

    #[error("failed to start a thread for network namespace {target}: {source}")]
    SpawnThread {
        target: NsId,
        #[source]
        source: io::Error,
    },

    #[error("the thread for network namespace {0} has stopped or the job panicked")]
    ThreadGone(NsId),

    #[error("failed to create a socket for {addr} in network namespace {ns}: {source}")]
    Socket {
        addr: SocketAddr,
        ns: NsId,
        #[source]
        source: io::Error,
    },

    /// `ns` is `None` for the process's own network namespace, which messages do not name.
    #[error(
        "failed to bind {addr}{}: {source}; choose another address or port",
        namespace_suffix(ns)
    )]
    Bind {
        addr: SocketAddr,
        ns: Option<NsId>,
        #[source]
        source: io::Error,
    },

    #[error(
        "failed to bind {addr}{}: {source}; ports below {unprivileged_start} need privileges \
         (net.ipv4.ip_unprivileged_port_start), so choose a port of {unprivileged_start} or \
         more, or as root allow this one with `sysctl net.ipv4.ip_unprivileged_port_start={}`",
        namespace_suffix(ns),
        addr.port()
    )]
    PrivilegedPort {
        addr: SocketAddr,
        ns: Option<NsId>,
        unprivileged_start: u16,
        #[source]
        source: io::Error,
    },

    #[error("failed to connect to {addr} from network namespace {ns}: {source}")]
    Connect {
        addr: SocketAddr,
        ns: NsId,
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    /// Builds the error for a failed bind(2) of `addr` in the namespace `ns`. Call it on a
    /// thread inside `ns`, because the sysctl it reads for EACCES is per namespace.
    pub(crate) fn bind(addr: SocketAddr, ns: NsId, source: io::Error) -> Self {
        // The process's own namespace is the user's host namespace, so its inode is left out.
        let own = NsId::of_process().ok();
        let ns = (own != Some(ns)).then_some(ns);
        if source.kind() == io::ErrorKind::PermissionDenied {
            if let Some(unprivileged_start) = unprivileged_port_start() {
                if addr.port() < unprivileged_start {
                    return Self::PrivilegedPort {
                        addr,
                        ns,
                        unprivileged_start,
                        source,
                    };
                }
            }
        }
        Self::Bind { addr, ns, source }
    }
}

/// Returns the lowest port that a process without CAP_NET_BIND_SERVICE may bind in the
/// calling thread's network namespace, `None` when the sysctl cannot be read.
fn unprivileged_port_start() -> Option<u16> {
    let path = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Returns " in network namespace net:[N]" for a namespace that messages name, else "".
fn namespace_suffix(ns: &Option<NsId>) -> String {
    match ns {
        Some(ns) => format!(" in network namespace {ns}"),
        None => String::new(),
    }
}
