//! TCP tunnels: a listener in one namespace, a dial in another per
//! connection, and a splice relay between them.

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::pipe::PipePool;
use super::port_holder::{self, Protocol};
use super::splice::relay;
use super::{TunnelConfig, TunnelError, TunnelLog};
use crate::in_namespace::{NetnsError, NetnsThread};
use crate::task::AbortOnDrop;

/// A TCP tunnel. Dropping it closes the listener and every relayed
/// connection.
#[derive(Debug)]
pub struct TcpForward {
    local_addr: SocketAddr,
    target: SocketAddr,
    _task: AbortOnDrop,
}

impl TcpForward {
    /// Listens on `listen_addr` inside the namespace of `listen` and relays
    /// each connection to `target`, dialled from inside the namespace of
    /// `dial`. Port 0 picks a free port; [`TcpForward::local_addr`] returns
    /// it.
    ///
    /// Must be called from inside a Tokio runtime, where the tunnel's tasks
    /// run. Blocks briefly while `listen` binds the socket.
    pub fn bind(
        listen: &NetnsThread,
        listen_addr: SocketAddr,
        dial: &NetnsThread,
        target: SocketAddr,
        config: &TunnelConfig,
    ) -> Result<TcpForward, TunnelError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TunnelError::NoRuntime)?;
        let listener = bind_listener(listen, listen_addr)?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TunnelError::Socket {
                addr: listen_addr,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| TunnelError::Socket {
                addr: local_addr,
                source,
            })?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener).map_err(|source| TunnelError::Socket {
                addr: local_addr,
                source,
            })?
        };

        let log = TunnelLog::new(local_addr, target, config);
        let task = runtime.spawn(accept_loop(listener, dial.clone(), config.clone(), log));
        tracing::info!(listen = %local_addr, %target, "started TCP tunnel");
        Ok(TcpForward {
            local_addr,
            target,
            _task: AbortOnDrop(task),
        })
    }

    /// The address the tunnel listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }
}

impl Drop for TcpForward {
    fn drop(&mut self) {
        tracing::info!(listen = %self.local_addr, target = %self.target, "stopped TCP tunnel");
    }
}

/// Binds inside `listen`'s namespace; on "address in use" looks up the
/// holder in that same namespace.
fn bind_listener(listen: &NetnsThread, addr: SocketAddr) -> Result<StdTcpListener, TunnelError> {
    let ns = listen.netns_id();
    listen.run(move || match StdTcpListener::bind(addr) {
        Ok(listener) => Ok(listener),
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => Err(TunnelError::PortInUse {
            protocol: Protocol::Tcp.name(),
            addr,
            holder: port_holder::find(Protocol::Tcp, addr.port()),
        }),
        Err(source) => Err(NetnsError::bind(addr, ns, source).into()),
    })?
}

async fn accept_loop(
    listener: TcpListener,
    dial: NetnsThread,
    config: TunnelConfig,
    log: Arc<TunnelLog>,
) {
    // Owning the connection tasks here means aborting this task aborts
    // them too, which closes their sockets and pipes.
    let mut connections = JoinSet::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let pipes = PipePool::shared();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        if let Some(suppressed) = log.limiter.allow() {
                            tracing::warn!(listen = %log.listen, %peer, max = config.max_connections, suppressed, "tunnel connection limit reached; closing new connection");
                        }
                        continue;
                    };
                    let connection = Connection {
                        client,
                        peer,
                        dial: dial.clone(),
                        pipes: Arc::clone(&pipes),
                        log: Arc::clone(&log),
                        connect_timeout: config.connect_timeout,
                        max_enlarged_pipe_bytes: config.max_enlarged_pipe_bytes,
                        _permit: permit,
                    };
                    connections.spawn(connection.serve());
                }
                Err(error) => {
                    // Usually EMFILE or ENFILE: wait instead of spinning.
                    if let Some(suppressed) = log.limiter.allow() {
                        tracing::warn!(listen = %log.listen, %error, suppressed, "failed to accept a tunnel connection");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One accepted client and what relaying it needs.
struct Connection {
    client: TcpStream,
    peer: SocketAddr,
    dial: NetnsThread,
    pipes: Arc<PipePool>,
    log: Arc<TunnelLog>,
    connect_timeout: Duration,
    max_enlarged_pipe_bytes: usize,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Dials the target and relays until both sides have closed.
    async fn serve(self) {
        let Connection {
            client,
            peer,
            dial,
            pipes,
            log,
            connect_timeout,
            ..
        } = &self;
        let upstream = match timeout(*connect_timeout, dial.tcp_connect(log.target)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                if let Some(suppressed) = log.limiter.allow() {
                    tracing::warn!(listen = %log.listen, target = %log.target, %peer, %error, suppressed, "tunnel failed to dial its target");
                }
                return;
            }
            Err(_) => {
                if let Some(suppressed) = log.limiter.allow() {
                    tracing::warn!(listen = %log.listen, target = %log.target, %peer, timeout = ?connect_timeout, suppressed, "tunnel dial timed out");
                }
                return;
            }
        };

        // The relay forwards whatever the ends write at once; Nagle's delay
        // on top of the clients' own would only add latency.
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);

        match relay(client, &upstream, pipes, self.max_enlarged_pipe_bytes).await {
            Ok((sent, received)) => {
                if let Some(suppressed) = log.limiter.allow() {
                    tracing::debug!(listen = %log.listen, target = %log.target, %peer, sent, received, suppressed, "tunnel connection closed");
                }
            }
            Err(error) => {
                if let Some(suppressed) = log.limiter.allow() {
                    tracing::debug!(listen = %log.listen, target = %log.target, %peer, %error, suppressed, "tunnel connection ended with an error");
                }
            }
        }
    }
}
