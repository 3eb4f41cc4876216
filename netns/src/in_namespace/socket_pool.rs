//! Unconnected TCP sockets created ahead of time by a [`NetnsThread`], so
//! that most dials skip the round trip to that thread.
//!
//! [`NetnsThread`]: super::NetnsThread

use std::io;
use std::sync::Mutex;

use tokio::net::TcpSocket;

/// Sockets kept ready per address family.
pub(super) const POOL_SIZE: usize = 8;

/// IP version of a pooled socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn of(addr: &std::net::SocketAddr) -> Self {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// Creates an unconnected, non-blocking, close-on-exec TCP socket in
    /// the calling thread's network namespace.
    pub(super) fn new_socket(self) -> io::Result<TcpSocket> {
        match self {
            Family::V4 => TcpSocket::new_v4(),
            Family::V6 => TcpSocket::new_v6(),
        }
    }
}

/// Ready sockets of one namespace. Only jobs on the namespace thread put
/// sockets in, after the thread checked that it is in its namespace, so
/// every socket here belongs to that namespace.
#[derive(Debug, Default)]
pub(super) struct SocketPool {
    v4: Mutex<Shelf>,
    v6: Mutex<Shelf>,
}

#[derive(Debug, Default)]
struct Shelf {
    ready: Vec<TcpSocket>,
    /// A refill job is queued or running.
    refilling: bool,
}

/// Result of [`SocketPool::take`].
pub(super) struct TakeOutcome {
    pub socket: Option<TcpSocket>,
    /// The caller must queue a refill job, which ends with
    /// [`SocketPool::refilled`].
    pub refill: bool,
}

impl SocketPool {
    fn shelf(&self, family: Family) -> std::sync::MutexGuard<'_, Shelf> {
        let shelf = match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        };
        shelf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a ready socket, if any, and reports whether the caller should
    /// queue a refill, which it should when the shelf is below
    /// [`POOL_SIZE`] and no refill is pending.
    /// An empty IPv6 shelf starts filling on its first take.
    pub(super) fn take(&self, family: Family) -> TakeOutcome {
        let mut shelf = self.shelf(family);
        let socket = shelf.ready.pop();
        let refill = !shelf.refilling && shelf.ready.len() < POOL_SIZE;
        if refill {
            shelf.refilling = true;
        }
        TakeOutcome { socket, refill }
    }

    /// Number of sockets a refill job should create.
    pub(super) fn missing(&self, family: Family) -> usize {
        POOL_SIZE.saturating_sub(self.shelf(family).ready.len())
    }

    /// Ends a refill: adds `sockets` (created in the pool's namespace) up
    /// to [`POOL_SIZE`] and lets the next take queue another refill.
    pub(super) fn refilled(&self, family: Family, sockets: Vec<TcpSocket>) {
        let mut shelf = self.shelf(family);
        for socket in sockets {
            if shelf.ready.len() >= POOL_SIZE {
                break;
            }
            shelf.ready.push(socket);
        }
        shelf.refilling = false;
    }

    #[cfg(test)]
    pub(super) fn ready(&self, family: Family) -> usize {
        self.shelf(family).ready.len()
    }
}

/// Creates up to `count` sockets of `family` in the calling thread's
/// namespace, stopping at the first failure (usually EMFILE), which a later
/// refill retries.
pub(super) fn create_sockets(family: Family, count: usize) -> Vec<TcpSocket> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        match family.new_socket() {
            Ok(socket) => sockets.push(socket),
            Err(error) => {
                tracing::debug!(?family, %error, "failed to create a socket for the pool");
                break;
            }
        }
    }
    sockets
}
