//! A dedicated OS thread that stays inside one network namespace.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};

use nix::sched::{setns, CloneFlags};
use tokio::net::{TcpSocket, TcpStream};

use super::socket_pool::{create_sockets, Family, SocketPool, POOL_SIZE};
use super::{NetNs, NetnsError, NsId};

/// A job receives the result of the namespace check made just before it runs.
type Job = Box<dyn FnOnce(Result<(), NetnsError>) + Send>;

/// Handle to a dedicated OS thread that entered one network namespace and
/// runs jobs there, one at a time.
///
/// Clones share the thread. The thread ends when the last clone is dropped.
/// Before every job the thread compares the inode of
/// `/proc/thread-self/ns/net` with the namespace it entered; on a mismatch the
/// job gets [`NetnsError::WrongNamespace`] instead of running, and the thread
/// stops.
///
/// The clones also share a pool of unconnected TCP sockets that the thread
/// created in its namespace: 8 IPv4 sockets from the start, and 8 IPv6
/// sockets once the first IPv6 dial asked for one. The pool's file
/// descriptors are closed when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct NetnsThread {
    jobs: mpsc::Sender<Job>,
    id: NsId,
    sockets: Arc<SocketPool>,
}

impl NetnsThread {
    /// Starts a thread, enters `ns` with `setns(2)` unless the calling thread
    /// is in it already, checks by inode that the new thread is in `ns`, and
    /// fills the IPv4 socket pool there.
    pub fn spawn(ns: &NetNs) -> Result<Self, NetnsError> {
        let target = ns.id();
        let ns = ns.try_clone()?;
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Vec<TcpSocket>, NetnsError>>(1);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();

        let spawned = std::thread::Builder::new()
            .name(format!("netns-{}", target.ino))
            .spawn(move || {
                let entered = enter(&ns);
                drop(ns);
                let failed = entered.is_err();
                let ready = entered.map(|()| create_sockets(Family::V4, POOL_SIZE));
                // The spawner waits for this message, so the send succeeds.
                let _ = ready_tx.send(ready);
                if !failed {
                    serve(target, jobs_rx);
                }
            });
        spawned.map_err(|source| NetnsError::SpawnThread { target, source })?;

        let ipv4_sockets = ready_rx
            .recv()
            .unwrap_or(Err(NetnsError::ThreadGone(target)))?;
        let sockets = Arc::new(SocketPool::default());
        // A short first fill (no file descriptors left) is topped up by the
        // first take, so no refill stays pending here.
        if sockets.refilled(Family::V4, ipv4_sockets) {
            let _ = sockets.refilled(Family::V4, Vec::new());
        }
        tracing::debug!(netns = %target, "started namespace thread");
        Ok(Self {
            jobs: jobs_tx,
            id: target,
            sockets,
        })
    }

    /// Identity of the namespace this thread is in.
    pub fn netns_id(&self) -> NsId {
        self.id
    }

    /// Runs `f` on the thread and waits for its result. This blocks the
    /// caller, so async code should use [`NetnsThread::run_async`].
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Box::new(move |check| {
            let _ = tx.send(check.map(|()| f()));
        }))?;
        rx.recv().unwrap_or(Err(NetnsError::ThreadGone(self.id)))
    }

    /// Runs `f` on the thread; the returned future completes with its result.
    pub async fn run_async<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |check| {
            let _ = tx.send(check.map(|()| f()));
        }))?;
        rx.await.unwrap_or(Err(NetnsError::ThreadGone(self.id)))
    }

    /// Binds a TCP listener on `addr` inside the namespace. The listener is
    /// in blocking mode, like one from [`TcpListener::bind`].
    pub fn tcp_listen(&self, addr: SocketAddr) -> Result<TcpListener, NetnsError> {
        let ns = self.id;
        self.run(move || {
            TcpListener::bind(addr).map_err(|source| NetnsError::bind(addr, ns, source))
        })?
    }

    /// Binds a UDP socket on `addr` inside the namespace, in blocking mode.
    pub fn udp_bind(&self, addr: SocketAddr) -> Result<UdpSocket, NetnsError> {
        let ns = self.id;
        self.run(move || {
            UdpSocket::bind(addr).map_err(|source| NetnsError::bind(addr, ns, source))
        })?
    }

    /// Like [`NetnsThread::udp_bind`], without blocking the caller's thread.
    pub async fn udp_bind_async(&self, addr: SocketAddr) -> Result<UdpSocket, NetnsError> {
        let ns = self.id;
        self.run_async(move || {
            UdpSocket::bind(addr).map_err(|source| NetnsError::bind(addr, ns, source))
        })
        .await?
    }

    /// Connects to `addr` from inside the namespace. The socket comes from
    /// the pool when it has one, and the namespace thread refills the pool in
    /// the background. Otherwise `socket(2)` runs on the namespace thread
    /// while the caller waits. The connect runs on the caller's runtime. The
    /// caller applies its own timeout.
    pub async fn tcp_connect(&self, addr: SocketAddr) -> Result<TcpStream, NetnsError> {
        let ns = self.id;
        let family = Family::of(&addr);
        let socket = match self.take_socket(family) {
            Some(socket) => socket,
            None => self
                .run_async(move || family.new_socket())
                .await?
                .map_err(|source| NetnsError::Socket { addr, ns, source })?,
        };
        socket
            .connect(addr)
            .await
            .map_err(|source| NetnsError::Connect { addr, ns, source })
    }

    /// Takes a socket from the pool and queues a refill job when the pool
    /// runs short and none is queued yet.
    fn take_socket(&self, family: Family) -> Option<TcpSocket> {
        let outcome = self.sockets.take(family);
        if outcome.refill {
            self.queue_refill(family);
        }
        outcome.socket
    }

    /// Queues a job that tops the pool up to its size. The job keeps only a
    /// weak reference to the pool, so a pool whose handles are all gone is not refilled.
    fn queue_refill(&self, family: Family) {
        let pool = Arc::downgrade(&self.sockets);
        let job: Job = Box::new(move |check| {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            // The thread reports a failed namespace check and stops, so the
            // pool gets nothing from it.
            if check.is_err() {
                let _ = pool.refilled(family, Vec::new());
                return;
            }
            while pool.refilled(family, create_sockets(family, pool.missing(family))) {}
        });
        if self.submit(job).is_err() {
            let _ = self.sockets.refilled(family, Vec::new());
        }
    }

    fn submit(&self, job: Job) -> Result<(), NetnsError> {
        self.jobs
            .send(job)
            .map_err(|_| NetnsError::ThreadGone(self.id))
    }
}

/// Enters `ns` and checks by inode that the thread really is in it.
///
/// A thread starts in the namespace of the thread that spawned it. When that
/// already is `ns`, no `setns` runs: inside a user namespace, `setns` into the
/// host namespace fails with EPERM (it needs CAP_SYS_ADMIN in the initial
/// user namespace) even for a thread that is in it already.
fn enter(ns: &NetNs) -> Result<(), NetnsError> {
    if NsId::of_current_thread()? != ns.id() {
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
            target: ns.id(),
            source,
        })?;
    }
    check_namespace(ns.id())
}

fn check_namespace(expected: NsId) -> Result<(), NetnsError> {
    let actual = NsId::of_current_thread()?;
    if actual != expected {
        return Err(NetnsError::WrongNamespace { expected, actual });
    }
    Ok(())
}

/// Runs jobs until every sender is gone or the namespace check fails.
fn serve(target: NsId, jobs: mpsc::Receiver<Job>) {
    for job in jobs {
        let check = check_namespace(target);
        let failed = check.is_err();
        if let Err(error) = &check {
            tracing::error!(netns = %target, %error, "namespace thread left its namespace; stopping it");
        }

        // A panicking job drops its reply sender, so its caller gets
        // ThreadGone; the thread itself keeps serving the other callers.
        if catch_unwind(AssertUnwindSafe(|| job(check))).is_err() {
            tracing::error!(netns = %target, "job on namespace thread panicked");
        }
        if failed {
            return;
        }
    }
    tracing::debug!(netns = %target, "namespace thread stopped");
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    use super::*;

    /// Spawns a thread in the test's own namespace, which needs no privilege.
    fn thread_here() -> NetnsThread {
        NetnsThread::spawn(&NetNs::of_current_thread().unwrap()).unwrap()
    }

    fn wait_for_ready(thread: &NetnsThread, family: Family, expected: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while thread.sockets.ready(family) != expected {
            assert!(
                Instant::now() < deadline,
                "{family:?} pool holds {} sockets, expected {expected}",
                thread.sockets.ready(family)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn spawn_fills_ipv4_pool_only() {
        let thread = thread_here();
        assert_eq!(thread.sockets.ready(Family::V4), POOL_SIZE);
        assert_eq!(thread.sockets.ready(Family::V6), 0);
    }

    #[test]
    fn first_ipv6_take_fills_ipv6_pool() {
        let thread = thread_here();
        assert!(thread.take_socket(Family::V6).is_none());
        wait_for_ready(&thread, Family::V6, POOL_SIZE);
    }

    #[tokio::test]
    async fn connects_refill_ipv4_pool() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let thread = thread_here();

        let mut streams = Vec::new();
        for _ in 0..3 * POOL_SIZE {
            streams.push(thread.tcp_connect(addr).await.unwrap());
        }
        assert_eq!(streams.len(), 3 * POOL_SIZE);
        wait_for_ready(&thread, Family::V4, POOL_SIZE);
    }

    #[test]
    fn refill_after_thread_gone_keeps_pool_usable() {
        let thread = thread_here();
        let pool = Arc::clone(&thread.sockets);
        let (dead_tx, _) = mpsc::channel::<Job>();
        let orphan = NetnsThread {
            jobs: dead_tx,
            id: thread.id,
            sockets: pool,
        };
        for _ in 0..POOL_SIZE {
            assert!(orphan.take_socket(Family::V4).is_some());
        }
        assert!(orphan.take_socket(Family::V4).is_none());

        // The failed submit cleared the pending flag, so the next take
        // requests a refill again.
        assert!(orphan.sockets.take(Family::V4).refill);
    }
}
