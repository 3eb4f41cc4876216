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

    #[error(
        "failed to bind {addr} in network namespace {ns}: {source}; choose another address or port"
    )]
    Bind {
        addr: SocketAddr,
        ns: NsId,
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
