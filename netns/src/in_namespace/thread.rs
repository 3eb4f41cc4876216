//! A dedicated OS thread that stays inside one network namespace.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use nix::sched::{setns, CloneFlags};
use tokio::net::{TcpSocket, TcpStream};

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
#[derive(Clone, Debug)]
pub struct NetnsThread {
    jobs: mpsc::Sender<Job>,
    id: NsId,
}

impl NetnsThread {
    /// Starts a thread, enters `ns` with `setns(2)` unless the calling thread
    /// is in it already, and checks by inode that the new thread is in `ns`.
    pub fn spawn(ns: &NetNs) -> Result<Self, NetnsError> {
        let target = ns.id();
        let ns = ns.try_clone()?;
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), NetnsError>>(1);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();

        let spawned = std::thread::Builder::new()
            .name(format!("netns-{}", target.ino))
            .spawn(move || {
                let entered = enter(&ns);
                drop(ns);
                let failed = entered.is_err();
                // The spawner waits for this message, so the send succeeds.
                let _ = ready_tx.send(entered);
                if !failed {
                    serve(target, jobs_rx);
                }
            });
        spawned.map_err(|source| NetnsError::SpawnThread { target, source })?;

        ready_rx
            .recv()
            .unwrap_or(Err(NetnsError::ThreadGone(target)))?;
        tracing::debug!(netns = %target, "started namespace thread");
        Ok(Self {
            jobs: jobs_tx,
            id: target,
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
        self.run(move || TcpListener::bind(addr))?
            .map_err(|source| NetnsError::Bind { addr, ns, source })
    }

    /// Binds a UDP socket on `addr` inside the namespace, in blocking mode.
    pub fn udp_bind(&self, addr: SocketAddr) -> Result<UdpSocket, NetnsError> {
        let ns = self.id;
        self.run(move || UdpSocket::bind(addr))?
            .map_err(|source| NetnsError::Bind { addr, ns, source })
    }

    /// Like [`NetnsThread::udp_bind`], without blocking the caller's thread.
    pub async fn udp_bind_async(&self, addr: SocketAddr) -> Result<UdpSocket, NetnsError> {
        let ns = self.id;
        self.run_async(move || UdpSocket::bind(addr))
            .await?
            .map_err(|source| NetnsError::Bind { addr, ns, source })
    }

    /// Connects to `addr` from inside the namespace. Only `socket(2)` runs on
    /// the namespace thread; the connect runs on the caller's runtime. The
    /// caller applies its own timeout.
    pub async fn tcp_connect(&self, addr: SocketAddr) -> Result<TcpStream, NetnsError> {
        let ns = self.id;
        let socket = self
            .run_async(move || {
                if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
            })
            .await?
            .map_err(|source| NetnsError::Socket { addr, ns, source })?;
        socket
            .connect(addr)
            .await
            .map_err(|source| NetnsError::Connect { addr, ns, source })
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
