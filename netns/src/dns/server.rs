//! The UDP and TCP front of the DNS responder.

use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::answer::{decide, reply, Decision};
use super::forward::{is_truncated, Forwarder};
use super::registry::DnsRegistry;
use super::resolv_conf::read_nameservers;
use super::{DnsConfig, DnsError};
use crate::in_namespace::{NetnsError, NetnsThread};
use crate::log_limit::LogLimiter;
use crate::task::AbortOnDrop;

/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest query accepted over UDP; longer datagrams are cut here and then
/// fail to parse.
const MAX_UDP_QUERY: usize = 4096;

/// A running DNS responder. Dropping it closes its sockets and stops every
/// query in progress.
#[derive(Debug)]
pub struct DnsServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    _udp: AbortOnDrop,
    _tcp: AbortOnDrop,
}

/// Counters since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    pub queries: u64,
    /// Queries answered from the registry (including NXDOMAIN and errors).
    pub answered: u64,
    pub forwarded: u64,
    /// Forwarded queries that no upstream answered (the client got
    /// SERVFAIL).
    pub forward_failures: u64,
    /// Query log lines dropped by the rate limit.
    pub suppressed_log_lines: u64,
}

#[derive(Debug)]
struct Shared {
    registry: Arc<DnsRegistry>,
    forwarder: Forwarder,
    local_networks: Vec<IpNet>,
    log: Arc<LogLimiter>,
    forward_permits: Arc<Semaphore>,
    max_tcp_connections: usize,
    queries: AtomicU64,
    answered: AtomicU64,
    forwarded: AtomicU64,
    forward_failures: AtomicU64,
}

/// Action for one received message.
enum Handling {
    Reply(Vec<u8>),
    Forward(Message),
    Ignore,
}

impl DnsServer {
    /// Binds UDP and TCP on `listen_addr` inside the namespace of `listen`
    /// (normally the sandbox gateway, port 53) and starts answering.
    /// Forwarded queries leave from the namespace of `upstream` (the host).
    /// With port 0, UDP picks a free port and TCP binds the same one.
    ///
    /// Must be called from inside a Tokio runtime. Blocks briefly while the
    /// sockets are bound and, when `config.upstreams` is `None`, while
    /// `/etc/resolv.conf` is read.
    pub fn start(
        listen: &NetnsThread,
        listen_addr: SocketAddr,
        upstream: &NetnsThread,
        config: DnsConfig,
    ) -> Result<DnsServer, DnsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime)?;
        let registry = Arc::new(DnsRegistry::new(&config.domain)?);
        let upstreams = match config.upstreams {
            Some(upstreams) => upstreams,
            None => read_nameservers(Path::new("/etc/resolv.conf"))?,
        };

        let (udp, tcp) = bind_sockets(listen, listen_addr)?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::Socket {
            addr: listen_addr,
            source,
        })?;
        let (udp, tcp) = {
            let _entered = runtime.enter();
            to_tokio(udp, tcp).map_err(|source| DnsError::Socket {
                addr: local_addr,
                source,
            })?
        };

        let log = Arc::new(LogLimiter::new(config.log_lines_per_second));
        let forwarder = Forwarder::new(
            upstreams.clone(),
            config.upstream_timeout,
            upstream.clone(),
            Arc::clone(&log),
        );
        let shared = Arc::new(Shared {
            registry,
            forwarder,
            local_networks: config.local_networks,
            log,
            forward_permits: Arc::new(Semaphore::new(config.max_forwarded)),
            max_tcp_connections: config.max_tcp_connections,
            queries: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
        });

        let udp_task = runtime.spawn(serve_udp(Arc::new(udp), Arc::clone(&shared)));
        let tcp_task = runtime.spawn(serve_tcp(tcp, Arc::clone(&shared)));
        tracing::info!(listen = %local_addr, domain = %config.domain, ?upstreams, "started DNS server");
        Ok(DnsServer {
            local_addr,
            shared,
            _udp: AbortOnDrop(udp_task),
            _tcp: AbortOnDrop(tcp_task),
        })
    }

    /// The address the server answers on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The records the server answers from; changes apply to the next query.
    pub fn registry(&self) -> &Arc<DnsRegistry> {
        &self.shared.registry
    }

    pub fn stats(&self) -> DnsStats {
        let shared = &self.shared;
        DnsStats {
            queries: shared.queries.load(Ordering::Relaxed),
            answered: shared.answered.load(Ordering::Relaxed),
            forwarded: shared.forwarded.load(Ordering::Relaxed),
            forward_failures: shared.forward_failures.load(Ordering::Relaxed),
            suppressed_log_lines: shared.log.suppressed(),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        tracing::info!(listen = %self.local_addr, "stopped DNS server");
    }
}

/// Binds UDP on `addr` and TCP on the same address and port. With port 0
/// the port UDP picked may be taken for TCP, so up to 10 ports are tried.
fn bind_sockets(
    listen: &NetnsThread,
    addr: SocketAddr,
) -> Result<(StdUdpSocket, StdTcpListener), DnsError> {
    let attempts = if addr.port() == 0 { 10 } else { 1 };
    let mut attempt = 1;
    loop {
        let udp = listen.udp_bind(addr)?;
        let bound = udp
            .local_addr()
            .map_err(|source| DnsError::Socket { addr, source })?;
        match listen.tcp_listen(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(NetnsError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && attempt < attempts =>
            {
                attempt += 1;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

fn to_tokio(udp: StdUdpSocket, tcp: StdTcpListener) -> std::io::Result<(UdpSocket, TcpListener)> {
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    Ok((UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?))
}

impl Shared {
    /// Parses one message from `client` and decides what to do with it.
    fn handle(&self, bytes: &[u8], client: IpAddr) -> Handling {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let query = match Message::from_vec(bytes) {
            Ok(query) => query,
            Err(error) => {
                self.log_line(|suppressed| {
                    tracing::debug!(%client, %error, suppressed, "unparsable DNS query");
                });
                self.answered.fetch_add(1, Ordering::Relaxed);
                return match form_error(bytes) {
                    Some(reply) => Handling::Reply(reply),
                    None => Handling::Ignore,
                };
            }
        };

        let decision = decide(&query, client, &self.registry, &self.local_networks);
        self.log_line(|suppressed| {
            let question = query.queries().first();
            tracing::debug!(
                %client,
                name = %question.map(|q| q.name().to_string()).unwrap_or_default(),
                qtype = %question.map(|q| q.query_type().to_string()).unwrap_or_default(),
                outcome = decision.outcome(),
                suppressed,
                "DNS query"
            );
        });
        match decision {
            Decision::Forward => {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                Handling::Forward(query)
            }
            Decision::Respond(response) => {
                self.answered.fetch_add(1, Ordering::Relaxed);
                encode(&response).map_or(Handling::Ignore, Handling::Reply)
            }
        }
    }

    /// Forwards `query`; SERVFAIL when no upstream answers.
    async fn forward(&self, query: &Message) -> Option<Vec<u8>> {
        match self.forwarder.forward(query).await {
            Ok(answer) => Some(answer),
            Err(error) => {
                self.forward_failures.fetch_add(1, Ordering::Relaxed);
                self.log_line(|suppressed| {
                    tracing::warn!(%error, suppressed, "forwarding a DNS query failed; answering SERVFAIL");
                });
                encode(&reply(query, ResponseCode::ServFail))
            }
        }
    }

    fn log_line(&self, emit: impl FnOnce(u64)) {
        if let Some(suppressed) = self.log.allow() {
            emit(suppressed);
        }
    }
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            tracing::warn!(%error, "failed to encode a DNS response");
            None
        }
    }
}

/// A FORMERR response echoing the ID of an unparsable query, or `None`
/// when not even the 12-byte header is there.
fn form_error(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 12 {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(u16::from_be_bytes([bytes[0], bytes[1]]))
        .set_message_type(hickory_proto::op::MessageType::Response)
        .set_response_code(ResponseCode::FormErr);
    encode(&response)
}

/// Cuts an answer that is larger than the client's UDP payload size down
/// to its header and question with the TC bit set, so the client retries
/// over TCP.
fn fit_udp(answer: Vec<u8>, query: &Message) -> Option<Vec<u8>> {
    if answer.len() <= usize::from(query.max_payload()) {
        return Some(answer);
    }
    let code = Message::from_vec(&answer)
        .map(|m| m.response_code())
        .unwrap_or(ResponseCode::NoError);
    let mut truncated = reply(query, code);
    truncated.set_truncated(true).set_authoritative(false);
    let bytes = encode(&truncated)?;
    debug_assert!(is_truncated(&bytes));
    Some(bytes)
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    // Owning the forwarding tasks here means aborting this task aborts them.
    let mut forwards = JoinSet::new();
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, client) = match received {
                    Ok(received) => received,
                    Err(error) => {
                        shared.log_line(|suppressed| {
                            tracing::warn!(%error, suppressed, "DNS server failed to receive");
                        });
                        continue;
                    }
                };
                match shared.handle(&buf[..len], client.ip()) {
                    Handling::Reply(answer) => send_udp(&socket, &shared, answer, client).await,
                    Handling::Ignore => {}
                    Handling::Forward(query) => {
                        let Ok(permit) = Arc::clone(&shared.forward_permits).try_acquire_owned() else {
                            if let Some(answer) = encode(&reply(&query, ResponseCode::ServFail)) {
                                send_udp(&socket, &shared, answer, client).await;
                            }
                            continue;
                        };
                        let socket = Arc::clone(&socket);
                        let shared = Arc::clone(&shared);
                        forwards.spawn(async move {
                            let _permit = permit;
                            let answer = shared.forward(&query).await.and_then(|a| fit_udp(a, &query));
                            if let Some(answer) = answer {
                                send_udp(&socket, &shared, answer, client).await;
                            }
                        });
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
}

async fn send_udp(socket: &UdpSocket, shared: &Shared, answer: Vec<u8>, client: SocketAddr) {
    if let Err(error) = socket.send_to(&answer, client).await {
        shared.log_line(|suppressed| {
            tracing::debug!(%client, %error, suppressed, "failed to send a DNS answer");
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if clients.len() >= shared.max_tcp_connections {
                        shared.log_line(|suppressed| {
                            tracing::warn!(%peer, max = shared.max_tcp_connections, suppressed, "DNS TCP connection limit reached; closing new connection");
                        });
                        continue;
                    }
                    clients.spawn(serve_tcp_client(stream, peer, Arc::clone(&shared)));
                }
                Err(error) => {
                    shared.log_line(|suppressed| {
                        tracing::warn!(%error, suppressed, "DNS server failed to accept a TCP connection");
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
        }
    }
}

/// Answers length-prefixed queries on one connection, in order, until the
/// client closes it or stays idle too long.
async fn serve_tcp_client(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    loop {
        let mut len = [0u8; 2];
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }

        let answer = match shared.handle(&query, peer.ip()) {
            Handling::Reply(answer) => answer,
            Handling::Forward(query) => match shared.forward(&query).await {
                Some(answer) => answer,
                None => return,
            },
            Handling::Ignore => return,
        };
        let Ok(answer_len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&answer_len.to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
