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

    /// Adds `sockets` (created in the pool's namespace) up to [`POOL_SIZE`]
    /// and returns whether the refill must go on: takes while it ran left the
    /// shelf short again, and this round created sockets, so another round can
    /// too. Otherwise the refill ends and the next take may queue another.
    #[must_use]
    pub(super) fn refilled(&self, family: Family, sockets: Vec<TcpSocket>) -> bool {
        let mut shelf = self.shelf(family);
        let created = !sockets.is_empty();
        for socket in sockets {
            if shelf.ready.len() >= POOL_SIZE {
                break;
            }
            shelf.ready.push(socket);
        }
        let again = created && shelf.ready.len() < POOL_SIZE;
        shelf.refilling = again;
        again
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_continues_after_takes_during_it() {
        let pool = SocketPool::default();
        assert!(!pool.refilled(Family::V4, create_sockets(Family::V4, POOL_SIZE)));

        let first = pool.take(Family::V4);
        assert!(
            first.refill,
            "the first take below the size queues a refill"
        );
        let missing = pool.missing(Family::V4);
        let second = pool.take(Family::V4);
        assert!(!second.refill, "a refill is already pending");

        // The refill made the one socket missing when it started, but two were taken.
        let again = pool.refilled(Family::V4, create_sockets(Family::V4, missing));
        assert!(again, "the refill goes on while the pool is short");
        let missing = pool.missing(Family::V4);
        let again = pool.refilled(Family::V4, create_sockets(Family::V4, missing));
        assert!(!again);
        assert_eq!(pool.ready(Family::V4), POOL_SIZE);

        let third = pool.take(Family::V4);
        assert!(
            third.refill,
            "a finished refill lets the next take queue one"
        );
    }

    #[test]
    fn refill_that_creates_nothing_ends() {
        let pool = SocketPool::default();
        let _ = pool.take(Family::V4);
        assert!(!pool.refilled(Family::V4, Vec::new()));
        assert!(pool.take(Family::V4).refill, "the next take may try again");
    }
}
