//! The DNS responder inside a real sandbox, queried from stand-in
//! containers, forwarding to a resolver that the test runs on the host's
//! loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use libtest_mimic::Trial;
use mayfly_netns::{DnsConfig, DnsServer, NetnsThread, Sandbox, SandboxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::support::{runtime, trial, Container};

pub fn trials() -> Vec<Trial> {
    vec![
        trial("dns_answers_registered_names", answers_registered_names),
        trial("dns_alias_only_to_holder", alias_only_to_holder),
        trial(
            "dns_ptr_for_registered_addresses",
            ptr_for_registered_addresses,
        ),
        trial("dns_forwards_to_host_resolver", forwards_to_host_resolver),
        trial(
            "dns_truncated_upstream_retries_tcp",
            truncated_upstream_retries_tcp,
        ),
        trial("dns_silent_upstream_servfail", silent_upstream_servfail),
        trial("dns_query_log_rate_limited", query_log_rate_limited),
    ]
}

const WAIT: Duration = Duration::from_secs(5);

/// The name the test resolver answers, and its address (TEST-NET-1, only
/// ever carried as DNS data).
const UPSTREAM_NAME: &str = "upstream.test.";
const UPSTREAM_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// A name whose UDP answer from the test resolver is truncated and whose
/// TCP answer has BIG_COUNT records.
const BIG_NAME: &str = "big.test.";
const BIG_COUNT: u8 = 60;

/// A resolver on 127.0.0.1 in the host namespace, UDP and TCP on one port.
struct TestResolver {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestResolver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds UDP on a free loopback port and TCP on the same one. The TCP port
/// may be held by a connection of a trial running beside this one, so a few
/// ports are tried.
async fn bind_udp_and_tcp() -> Result<(UdpSocket, TcpListener)> {
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        if let Ok(tcp) = TcpListener::bind(udp.local_addr()?).await {
            return Ok((udp, tcp));
        }
    }
    bail!("found no loopback port free for both UDP and TCP in 20 tries")
}

fn resolver_answer(query: &Message, over_tcp: bool) -> Message {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_available(true);
    response.add_queries(query.queries().to_vec());
    let Some(question) = query.queries().first() else {
        response.set_response_code(ResponseCode::FormErr);
        return response;
    };
    let name = question.name().to_lowercase().to_ascii();
    if name == UPSTREAM_NAME {
        response.add_answer(Record::from_rdata(
            question.name().clone(),
            60,
            RData::A(A(UPSTREAM_ADDR)),
        ));
    } else if name == BIG_NAME && !over_tcp {
        response.set_truncated(true);
    } else if name == BIG_NAME {
        for i in 1..=BIG_COUNT {
            let addr = Ipv4Addr::new(192, 0, 2, i);
            response.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(A(addr)),
            ));
        }
    } else {
        response.set_response_code(ResponseCode::NXDomain);
    }
    response
}

impl TestResolver {
    /// Starts the resolver. With `silent`, it receives UDP queries and
    /// never answers.
    async fn start(silent: bool) -> Result<TestResolver> {
        let (udp, tcp) = bind_udp_and_tcp().await?;
        let addr = udp.local_addr()?;
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));

        let counter = Arc::clone(&udp_queries);
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
                counter.fetch_add(1, Ordering::Relaxed);
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                if silent {
                    continue;
                }
                let answer = resolver_answer(&query, false).to_vec().unwrap();
                let _ = udp.send_to(&answer, peer).await;
            }
        });

        let counter = Arc::clone(&tcp_queries);
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while stream.read_exact(&mut len).await.is_ok() {
                        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        counter.fetch_add(1, Ordering::Relaxed);
                        let Ok(query) = Message::from_vec(&query) else {
                            return;
                        };
                        let answer = resolver_answer(&query, true).to_vec().unwrap();
                        let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&answer);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });

        Ok(TestResolver {
            addr,
            udp_queries,
            tcp_queries,
            tasks: vec![udp_task, tcp_task],
        })
    }
}

/// A sandbox with two stand-in containers, a DNS server on the gateway's
/// port 53 and a test resolver on the host.
struct Fixture {
    sandbox: Sandbox,
    a: Container,
    b: Container,
    server: DnsServer,
    resolver: TestResolver,
}

impl Fixture {
    async fn start(
        configure: impl FnOnce(&mut DnsConfig),
        silent_upstream: bool,
    ) -> Result<Fixture> {
        let sandbox = Sandbox::create(SandboxConfig::default())?;
        let a = Container::attach(&sandbox, "a")?;
        let b = Container::attach(&sandbox, "b")?;
        let resolver = TestResolver::start(silent_upstream).await?;
        let mut config = DnsConfig {
            upstreams: Some(vec![resolver.addr]),
            ..DnsConfig::default()
        };
        configure(&mut config);
        let server = sandbox.start_dns(config)?;
        let listen = SocketAddr::from((sandbox.gateway(), 53));
        ensure!(
            server.local_addr() == listen,
            "server bound {}",
            server.local_addr()
        );
        Ok(Fixture {
            sandbox,
            a,
            b,
            server,
            resolver,
        })
    }

    fn dns(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

fn query(name: &str, qtype: RecordType, id: u16) -> Result<Message> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    message.add_query(Query::query(Name::from_str(name)?, qtype));
    Ok(message)
}

/// Sends `message` over UDP from a socket bound to `from` inside the
/// namespace of `sockets` and returns the answer.
async fn ask_message(
    sockets: &NetnsThread,
    from: Ipv4Addr,
    server: SocketAddr,
    message: &Message,
) -> Result<Message> {
    let socket = sockets.udp_bind_async(SocketAddr::from((from, 0))).await?;
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket)?;
    socket.send_to(&message.to_vec()?, server).await?;
    let mut buf = vec![0u8; 65535];
    let (len, _) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .with_context(|| format!("no DNS answer to {:?}", message.queries()))??;
    let answer = Message::from_vec(&buf[..len])?;
    ensure!(
        answer.id() == message.id(),
        "answer ID {} for query ID {}",
        answer.id(),
        message.id()
    );
    Ok(answer)
}

async fn ask(
    container: &Container,
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
) -> Result<Message> {
    let message = query(name, qtype, 0x5a5a)?;
    ask_message(&container.sockets, container.address(), server, &message).await
}

async fn ask_tcp(
    container: &Container,
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
) -> Result<Message> {
    let message = query(name, qtype, 0x1234)?.to_vec()?;
    let mut stream = timeout(WAIT, container.sockets.tcp_connect(server)).await??;
    let mut framed = (message.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&message);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    timeout(WAIT, stream.read_exact(&mut len)).await??;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    timeout(WAIT, stream.read_exact(&mut answer)).await??;
    Ok(Message::from_vec(&answer)?)
}

fn addresses(answer: &Message) -> Vec<IpAddr> {
    answer
        .answers()
        .iter()
        .filter_map(|record| match record.data()? {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

fn answers_registered_names() -> Result<()> {
    runtime().block_on(async {
        let f = Fixture::start(|_| {}, false).await?;
        let web: IpAddr = f.b.address().into();
        f.server.registry().register("web", web)?;

        for client in [&f.a, &f.b] {
            let answer = ask(client, f.dns(), "web.mayfly.internal.", RecordType::A).await?;
            assert_eq!(answer.response_code(), ResponseCode::NoError);
            assert!(answer.authoritative());
            assert_eq!(addresses(&answer), vec![web]);
            assert_eq!(answer.answers()[0].ttl(), 0);
        }

        let answer = ask(&f.a, f.dns(), "web.mayfly.internal.", RecordType::AAAA).await?;
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(
            answer.answers().is_empty(),
            "AAAA for an IPv4-only name: {:?}",
            answer.answers()
        );

        let answer = ask(&f.a, f.dns(), "missing.mayfly.internal.", RecordType::A).await?;
        assert_eq!(answer.response_code(), ResponseCode::NXDomain);
        assert_eq!(
            answer.name_servers().first().map(|r| r.record_type()),
            Some(RecordType::SOA)
        );

        let answer = ask_tcp(&f.a, f.dns(), "web.mayfly.internal.", RecordType::A).await?;
        assert_eq!(addresses(&answer), vec![web]);

        // Unregistering takes effect at once: nothing is cached.
        f.server.registry().unregister("web")?;
        let answer = ask(&f.a, f.dns(), "web.mayfly.internal.", RecordType::A).await?;
        assert_eq!(answer.response_code(), ResponseCode::NXDomain);
        assert_eq!(
            f.resolver.udp_queries.load(Ordering::Relaxed),
            0,
            "a name in the domain went upstream"
        );
        Ok(())
    })
}

fn alias_only_to_holder() -> Result<()> {
    runtime().block_on(async {
        let f = Fixture::start(|_| {}, false).await?;
        let target: IpAddr = Ipv4Addr::new(10, 89, 0, 200).into();
        f.server
            .registry()
            .register_alias(f.a.address().into(), "db", target)?;

        // Both spellings a resolver with "search mayfly.internal" may send.
        for name in ["db.", "db.mayfly.internal.", "DB.Mayfly.Internal."] {
            let answer = ask(&f.a, f.dns(), name, RecordType::A).await?;
            assert_eq!(addresses(&answer), vec![target], "holder asking {name}");
        }

        let answer = ask(&f.b, f.dns(), "db.mayfly.internal.", RecordType::A).await?;
        assert_eq!(answer.response_code(), ResponseCode::NXDomain);
        assert!(answer.answers().is_empty());

        // For anyone else the bare name is an ordinary name: forwarded, and
        // the test resolver does not know it.
        let answer = ask(&f.b, f.dns(), "db.", RecordType::A).await?;
        assert_eq!(answer.response_code(), ResponseCode::NXDomain);
        assert!(!answer.authoritative());
        assert_eq!(f.resolver.udp_queries.load(Ordering::Relaxed), 1);
        Ok(())
    })
}

fn ptr_for_registered_addresses() -> Result<()> {
    runtime().block_on(async {
        let f = Fixture::start(|_| {}, false).await?;
        let web = f.b.address();
        f.server.registry().register("web", web.into())?;
        f.server
            .registry()
            .register_alias(f.a.address().into(), "frontend", web.into())?;

        let reverse = Name::from(IpAddr::V4(web)).to_ascii();
        let answer = ask(&f.b, f.dns(), &reverse, RecordType::PTR).await?;
        let targets: Vec<String> = answer
            .answers()
            .iter()
            .map(|r| r.data().unwrap().to_string())
            .collect();
        assert_eq!(targets, vec!["web.mayfly.internal."]);

        let answer = ask(&f.a, f.dns(), &reverse, RecordType::PTR).await?;
        let targets: Vec<String> = answer
            .answers()
            .iter()
            .map(|r| r.data().unwrap().to_string())
            .collect();
        assert_eq!(targets, vec!["frontend.mayfly.internal."]);

        let unknown = Name::from(IpAddr::V4(Ipv4Addr::new(10, 89, 0, 250))).to_ascii();
        let answer = ask(&f.a, f.dns(), &unknown, RecordType::PTR).await?;
        assert_eq!(answer.response_code(), ResponseCode::NXDomain);
        assert_eq!(
            f.resolver.udp_queries.load(Ordering::Relaxed),
            0,
            "a sandbox PTR went upstream"
        );
        Ok(())
    })
}

fn forwards_to_host_resolver() -> Result<()> {
    runtime().block_on(async {
        let f = Fixture::start(|_| {}, false).await?;
        let answer = ask(&f.a, f.dns(), UPSTREAM_NAME, RecordType::A).await?;
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert_eq!(addresses(&answer), vec![IpAddr::V4(UPSTREAM_ADDR)]);
        assert_eq!(f.resolver.udp_queries.load(Ordering::Relaxed), 1);

        let answer = ask_tcp(&f.b, f.dns(), UPSTREAM_NAME, RecordType::A).await?;
        assert_eq!(addresses(&answer), vec![IpAddr::V4(UPSTREAM_ADDR)]);
        assert_eq!(f.server.stats().forwarded, 2);
        let _ = &f.sandbox;
        Ok(())
    })
}

fn truncated_upstream_retries_tcp() -> Result<()> {
    runtime().block_on(async {
        let f = Fixture::start(|_| {}, false).await?;

        // Without EDNS the client takes 512 bytes: the full answer does not
        // fit, so the client gets TC and retries over TCP.
        let answer = ask(&f.a, f.dns(), BIG_NAME, RecordType::A).await?;
        assert!(
            answer.truncated(),
            "an answer of {BIG_COUNT} records fit in 512 bytes"
        );
        assert_eq!(
            f.resolver.tcp_queries.load(Ordering::Relaxed),
            1,
            "the server did not retry upstream over TCP"
        );
        let answer = ask_tcp(&f.a, f.dns(), BIG_NAME, RecordType::A).await?;
        assert_eq!(answer.answers().len(), usize::from(BIG_COUNT));

        // With EDNS and a 4096-byte buffer the same answer fits in UDP.
        let mut message = query(BIG_NAME, RecordType::A, 77)?;
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        message.set_edns(edns);
        let answer = ask_message(&f.b.sockets, f.b.address(), f.dns(), &message).await?;
        assert!(!answer.truncated());
        assert_eq!(answer.answers().len(), usize::from(BIG_COUNT));
        Ok(())
    })
}

fn silent_upstream_servfail() -> Result<()> {
    runtime().block_on(async {
        let timeout_setting = Duration::from_millis(300);
        let f = Fixture::start(|config| config.upstream_timeout = timeout_setting, true).await?;
        let started = Instant::now();
        let answer = ask(&f.a, f.dns(), UPSTREAM_NAME, RecordType::A).await?;
        let took = started.elapsed();
        assert_eq!(answer.response_code(), ResponseCode::ServFail);
        ensure!(
            took >= timeout_setting,
            "SERVFAIL after {took:?}, before the upstream timeout"
        );
        ensure!(took < Duration::from_secs(3), "SERVFAIL took {took:?}");
        assert_eq!(f.server.stats().forward_failures, 1);
        Ok(())
    })
}

fn query_log_rate_limited() -> Result<()> {
    runtime().block_on(async {
        let f = Fixture::start(|config| config.log_lines_per_second = 5, false).await?;
        f.server.registry().register("web", f.b.address().into())?;
        let started = Instant::now();
        for i in 0..50 {
            let answer = ask(&f.a, f.dns(), "web.mayfly.internal.", RecordType::A).await?;
            if answer.answers().is_empty() {
                bail!("query {i} got no answer");
            }
        }
        let windows = started.elapsed().as_secs() + 1;

        let stats = f.server.stats();
        assert_eq!(stats.queries, 50);
        assert_eq!(stats.answered, 50);
        // At most 5 lines in each one-second window the queries spanned
        // were logged; the limiter's window may straddle one more.
        let max_logged = 5 * (windows + 1);
        ensure!(
            stats.suppressed_log_lines >= 50u64.saturating_sub(max_logged),
            "only {} of 50 log lines suppressed in {windows} windows",
            stats.suppressed_log_lines
        );
        ensure!(stats.suppressed_log_lines > 0, "no log line was suppressed");
        Ok(())
    })
}
