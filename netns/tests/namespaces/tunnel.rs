//! TCP and UDP tunnels in both directions, through real namespaces.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::Trial;
use mayfly_netns::{
    NetnsThread, Sandbox, SandboxConfig, TcpForward, TunnelConfig, TunnelError, UdpForward,
};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::support::{
    fd_counting_trial, open_fds, runtime, trial, wait_for_fd_baseline, Container, Skip,
};

pub fn trials() -> Vec<Trial> {
    vec![
        fd_counting_trial(
            "tunnel_tcp_host_to_container_many",
            tcp_host_to_container_many,
        ),
        fd_counting_trial(
            "tunnel_tcp_container_to_host_many",
            tcp_container_to_host_many,
        ),
        fd_counting_trial(
            "tunnel_udp_both_directions_two_clients",
            udp_both_directions_two_clients,
        ),
        trial(
            "tunnel_tcp_half_close_large_reply",
            tcp_half_close_large_reply,
        ),
        fd_counting_trial("tunnel_tcp_past_pipe_page_limit", tcp_past_pipe_page_limit),
        trial("tunnel_tcp_backpressure_bounded", tcp_backpressure_bounded),
        trial(
            "tunnel_tcp_client_abort_closes_server",
            tcp_client_abort_closes_server,
        ),
        trial("tunnel_port_in_use_names_holder", port_in_use_names_holder),
        trial("tunnel_needs_runtime", needs_runtime),
        trial("tunnel_rejects_wrong_side", rejects_wrong_side),
    ]
}

const WAIT: Duration = Duration::from_secs(5);
const SEQUENTIAL: usize = 1000;
const CONCURRENT: usize = 100;

/// Aborts the server task when the test is done with it.
struct Server(JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves each connection by reading until EOF, then writing everything
/// back and closing: a client that does not pass on its half-close gets no
/// reply.
fn tcp_echo_server(listener: std::net::TcpListener) -> Result<Server> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    Ok(Server(tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut stream, _)) = accepted else { continue };
                    connections.spawn(async move {
                        let mut data = Vec::new();
                        if stream.read_to_end(&mut data).await.is_ok() {
                            let _ = stream.write_all(&data).await;
                            let _ = stream.shutdown().await;
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })))
}

fn udp_echo_server(socket: StdUdpSocket) -> Result<Server> {
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket)?;
    Ok(Server(tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], peer).await;
        }
    })))
}

/// One exchange through a tunnel: send a payload, half-close, read the echo.
async fn exchange(mut stream: TcpStream, payload: &[u8]) -> Result<()> {
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut reply = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut reply))
        .await
        .context("echo timed out")??;
    ensure!(
        reply == payload,
        "echo returned {} bytes, sent {}",
        reply.len(),
        payload.len()
    );
    Ok(())
}

/// Opens connections with `connect`: SEQUENTIAL one after another, then
/// CONCURRENT at once.
async fn sequential_and_concurrent<F, Fut>(connect: F) -> Result<()>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<TcpStream>> + Send,
{
    for i in 0..SEQUENTIAL {
        let stream = timeout(WAIT, connect())
            .await
            .context("connect timed out")??;
        exchange(stream, format!("sequential {i}").as_bytes())
            .await
            .with_context(|| format!("sequential connection {i}"))?;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONCURRENT {
        let connect = connect.clone();
        tasks.spawn(async move {
            let stream = timeout(WAIT, connect())
                .await
                .context("connect timed out")??;
            exchange(stream, format!("concurrent {i}").repeat(100).as_bytes())
                .await
                .with_context(|| format!("concurrent connection {i}"))
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

fn tcp_host_to_container_many() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let container = Container::attach(&sandbox, "service")?;
    let target = SocketAddr::from((container.address(), 8080));
    let runtime = runtime();
    let _guard = runtime.enter();
    let _server = tcp_echo_server(container.sockets.tcp_listen(target)?)?;

    let baseline = open_fds();
    let forward = sandbox.publish_tcp(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        target,
        &TunnelConfig::default(),
    )?;
    let listen = forward.local_addr();
    ensure!(
        listen.ip().is_loopback() && listen.port() != 0,
        "tunnel bound {listen}"
    );

    runtime.block_on(sequential_and_concurrent(move || async move {
        Ok(TcpStream::connect(listen).await?)
    }))?;
    drop(forward);
    wait_for_fd_baseline(baseline)
}

fn tcp_container_to_host_many() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let container = Container::attach(&sandbox, "client")?;
    let bridge_address = sandbox.add_bridge_address()?;
    let runtime = runtime();
    let _guard = runtime.enter();
    let host_server = sandbox
        .host_sockets()
        .tcp_listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let host_target = host_server.local_addr()?;
    let _server = tcp_echo_server(host_server)?;

    let baseline = open_fds();
    let forward = sandbox.expose_host_tcp(
        SocketAddr::from((bridge_address.address(), 5432)),
        host_target,
        &TunnelConfig::default(),
    )?;
    let listen = forward.local_addr();
    assert_eq!(listen, SocketAddr::from((bridge_address.address(), 5432)));

    let client = container.sockets.clone();
    runtime.block_on(sequential_and_concurrent(move || {
        let client = client.clone();
        async move { Ok(client.tcp_connect(listen).await?) }
    }))?;
    drop(forward);
    wait_for_fd_baseline(baseline)
}

/// Sends numbered datagrams from two clients at once and checks that each
/// gets back exactly its own.
async fn two_udp_clients(a: UdpSocket, b: UdpSocket, tunnel: SocketAddr) -> Result<()> {
    let clients = [Arc::new(a), Arc::new(b)];
    let mut tasks = tokio::task::JoinSet::new();
    for (n, client) in clients.iter().enumerate() {
        let client = Arc::clone(client);
        tasks.spawn(async move {
            let mut buf = [0u8; 256];
            for i in 0..50 {
                let message = format!("client {n} datagram {i}");
                client.send_to(message.as_bytes(), tunnel).await?;
                let (len, from) = timeout(WAIT, client.recv_from(&mut buf))
                    .await
                    .with_context(|| format!("no reply to {message:?}"))??;
                ensure!(
                    from == tunnel,
                    "reply came from {from}, not the tunnel {tunnel}"
                );
                ensure!(
                    &buf[..len] == message.as_bytes(),
                    "client {n} got {:?}",
                    String::from_utf8_lossy(&buf[..len])
                );
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

async fn udp_client(sockets: &NetnsThread, ip: Ipv4Addr) -> Result<UdpSocket> {
    let socket = sockets.udp_bind_async(SocketAddr::from((ip, 0))).await?;
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket)?)
}

/// Waits for a tunnel's flows to expire.
async fn wait_for_no_flows(forward: &UdpForward) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while forward.flow_count() > 0 {
        if Instant::now() > deadline {
            bail!(
                "{} UDP flows still open after the idle timeout",
                forward.flow_count()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn udp_both_directions_two_clients() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let service = Container::attach(&sandbox, "udp-service")?;
    let client_a = Container::attach(&sandbox, "udp-a")?;
    let client_b = Container::attach(&sandbox, "udp-b")?;
    let bridge_address = sandbox.add_bridge_address()?;
    let runtime = runtime();
    let _guard = runtime.enter();

    let service_addr = SocketAddr::from((service.address(), 5353));
    let _service = udp_echo_server(service.sockets.udp_bind(service_addr)?)?;
    let host_server = sandbox
        .host_sockets()
        .udp_bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let host_addr = host_server.local_addr()?;
    let _host_service = udp_echo_server(host_server)?;

    let config = TunnelConfig {
        udp_idle_timeout: Duration::from_millis(300),
        ..TunnelConfig::default()
    };
    let baseline = open_fds();
    let inbound = sandbox.publish_udp(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        service_addr,
        &config,
    )?;
    let outbound = sandbox.expose_host_udp(
        SocketAddr::from((bridge_address.address(), 5300)),
        host_addr,
        &config,
    )?;

    runtime.block_on(async {
        let a = udp_client(sandbox.host_sockets(), Ipv4Addr::LOCALHOST).await?;
        let b = udp_client(sandbox.host_sockets(), Ipv4Addr::LOCALHOST).await?;
        two_udp_clients(a, b, inbound.local_addr())
            .await
            .context("host to container")?;
        assert_eq!(inbound.flow_count(), 2);

        let a = udp_client(&client_a.sockets, client_a.address()).await?;
        let b = udp_client(&client_b.sockets, client_b.address()).await?;
        two_udp_clients(a, b, outbound.local_addr())
            .await
            .context("container to host")?;
        assert_eq!(outbound.flow_count(), 2);

        wait_for_no_flows(&inbound).await?;
        wait_for_no_flows(&outbound).await
    })?;

    // Expired flows have closed their sockets; only the two listening
    // sockets are left.
    wait_for_fd_baseline(baseline + 2)?;
    drop(inbound);
    drop(outbound);
    wait_for_fd_baseline(baseline)
}

fn tcp_half_close_large_reply() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let container = Container::attach(&sandbox, "half-close")?;
    let target = SocketAddr::from((container.address(), 8081));
    let runtime = runtime();
    let _guard = runtime.enter();
    let _server = tcp_echo_server(container.sockets.tcp_listen(target)?)?;
    let forward = TcpForward::bind(
        sandbox.host_sockets(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        sandbox.sockets(),
        target,
        &TunnelConfig::default(),
    )?;

    // Several pipe-fulls each way: the server sees EOF only through the
    // passed-on half-close, and replies after it.
    let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    runtime.block_on(async {
        let stream = TcpStream::connect(forward.local_addr()).await?;
        exchange(stream, &payload).await
    })
}

/// Size of a pipe created while its user is past `fs.pipe-user-pages-soft`:
/// two pages.
const MIN_PIPE_SIZE: i32 = 2 * 4096;

/// Pipes that take this user past `fs.pipe-user-pages-soft` while they
/// are open. Every process of the user gets two-page pipes in that time.
struct PipePageHog(#[allow(dead_code)] Vec<(OwnedFd, OwnedFd)>);

/// Enlarges pipes to 1 MiB until `F_SETPIPE_SZ` fails with EPERM, which
/// leaves less than 1 MiB below the limit, then adds default pipes until
/// one comes out with two pages.
fn use_up_pipe_pages() -> Result<PipePageHog> {
    let mut pipes = Vec::new();
    // 16384 pages (the default limit) fill 64 pipes of 1 MiB.
    for _ in 0..256 {
        let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
        let result = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1024 * 1024));
        pipes.push((read, write));
        match result {
            Ok(_) => continue,
            Err(Errno::EPERM) => break,
            Err(errno) => bail!("F_SETPIPE_SZ to 1 MiB failed: {errno}"),
        }
    }

    // Each default pipe takes 16 pages, and 1 MiB is 256 pages.
    for _ in 0..32 {
        let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
        let size = fcntl(write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)?;
        pipes.push((read, write));
        if size == MIN_PIPE_SIZE {
            return Ok(PipePageHog(pipes));
        }
    }
    Err(Skip(format!(
        "{} pipes did not reach the pipe page limit; fs.pipe-user-pages-soft is off or this process has CAP_SYS_RESOURCE",
        pipes.len()
    ))
    .into())
}

/// Relays 4 MiB each way while the user is past its pipe page limit, so the
/// relay gets two-page pipes, and enlarging them fails with EPERM.
fn tcp_past_pipe_page_limit() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let container = Container::attach(&sandbox, "page-limit")?;
    let target = SocketAddr::from((container.address(), 8084));
    let runtime = runtime();
    let _guard = runtime.enter();
    let _server = tcp_echo_server(container.sockets.tcp_listen(target)?)?;

    let baseline = open_fds();
    let forward = sandbox.publish_tcp(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        target,
        &TunnelConfig::default(),
    )?;
    let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i: u32| (i % 253) as u8).collect();

    let hog = use_up_pipe_pages()?;
    let (probe_read, probe_write) = pipe2(OFlag::O_CLOEXEC)?;
    let probe_size = fcntl(probe_write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)?;
    ensure!(
        probe_size == MIN_PIPE_SIZE,
        "a new pipe past the page limit has {probe_size} bytes, expected {MIN_PIPE_SIZE}"
    );
    drop((probe_read, probe_write));
    let exchanged = runtime.block_on(async {
        let stream = TcpStream::connect(forward.local_addr()).await?;
        exchange(stream, &payload).await
    });
    drop(hog);
    exchanged?;

    drop(forward);
    wait_for_fd_baseline(baseline)
}

fn tcp_backpressure_bounded() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let container = Container::attach(&sandbox, "slow")?;
    let target = SocketAddr::from((container.address(), 8082));
    let runtime = runtime();
    let _guard = runtime.enter();
    // A server that accepts and never reads.
    let listener = container.sockets.tcp_listen(target)?;
    let forward = TcpForward::bind(
        sandbox.host_sockets(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        sandbox.sockets(),
        target,
        &TunnelConfig::default(),
    )?;

    let written = runtime.block_on(async {
        let mut stream = TcpStream::connect(forward.local_addr()).await?;
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        // Write until no progress for half a second.
        while let Ok(result) = timeout(Duration::from_millis(500), stream.write(&chunk)).await {
            written += result?;
            ensure!(
                written < 256 * 1024 * 1024,
                "tunnel accepted {written} bytes from a client whose server never reads"
            );
        }
        Ok::<_, anyhow::Error>(written)
    })?;
    drop(listener);
    // Socket buffers on both sides plus one pipe hold what was written; the
    // bound above is generous because loopback buffers autotune to MiBs.
    ensure!(written > 0, "nothing could be written at all");
    Ok(())
}

fn port_in_use_names_holder() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let runtime = runtime();
    let _guard = runtime.enter();
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let taken_addr = taken.local_addr()?;
    let target = SocketAddr::from((sandbox.gateway(), 80));

    let result = TcpForward::bind(
        sandbox.host_sockets(),
        taken_addr,
        sandbox.sockets(),
        target,
        &TunnelConfig::default(),
    );
    let Err(error) = result else {
        bail!("binding a taken port succeeded")
    };
    let message = error.to_string();
    ensure!(
        message.contains(&taken_addr.to_string()),
        "message does not name the address: {message}"
    );
    match error {
        TunnelError::PortInUse {
            holder: Some(holder),
            ..
        } => {
            assert_eq!(holder.pid, std::process::id(), "{message}");
        }
        other => bail!("expected PortInUse naming this process, got {other:?}"),
    }

    let taken_udp = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let taken_udp_addr = taken_udp.local_addr()?;
    let result = UdpForward::bind(
        sandbox.host_sockets(),
        taken_udp_addr,
        sandbox.sockets(),
        target,
        &TunnelConfig::default(),
    );
    match result {
        Err(TunnelError::PortInUse {
            holder: Some(holder),
            protocol,
            ..
        }) => {
            assert_eq!(protocol, "UDP");
            assert_eq!(holder.pid, std::process::id());
        }
        other => bail!("expected UDP PortInUse naming this process, got {other:?}"),
    }
    Ok(())
}

fn needs_runtime() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let result = TcpForward::bind(
        sandbox.host_sockets(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        sandbox.sockets(),
        SocketAddr::from((sandbox.gateway(), 80)),
        &TunnelConfig::default(),
    );
    ensure!(
        matches!(result, Err(TunnelError::NoRuntime)),
        "got {result:?}"
    );
    Ok(())
}

fn rejects_wrong_side() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let runtime = runtime();
    let _guard = runtime.enter();
    let config = TunnelConfig::default();
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let inside = SocketAddr::from((sandbox.gateway(), 9000));

    let result = sandbox.publish_tcp(
        loopback,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 80)),
        &config,
    );
    ensure!(
        matches!(result, Err(TunnelError::TargetOutsideSandbox { .. })),
        "got {result:?}"
    );
    let result = sandbox.expose_host_tcp(
        loopback,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 80)),
        &config,
    );
    ensure!(
        matches!(result, Err(TunnelError::ListenOutsideSandbox { .. })),
        "got {result:?}"
    );
    let result =
        sandbox.expose_host_udp(inside, SocketAddr::from((sandbox.gateway(), 53)), &config);
    ensure!(
        matches!(result, Err(TunnelError::HostTargetInSandbox { .. })),
        "got {result:?}"
    );
    Ok(())
}

fn tcp_client_abort_closes_server() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let container = Container::attach(&sandbox, "abort")?;
    let target = SocketAddr::from((container.address(), 8083));
    let runtime = runtime();
    let _guard = runtime.enter();
    let listener = container.sockets.tcp_listen(target)?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let forward = sandbox.publish_tcp(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        target,
        &TunnelConfig::default(),
    )?;

    runtime.block_on(async {
        // A server that writes until its connection breaks.
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await?;
            let chunk = vec![1u8; 64 * 1024];
            loop {
                if let Err(error) = stream.write_all(&chunk).await {
                    return Ok::<_, anyhow::Error>(error.kind());
                }
            }
        });

        let mut client = TcpStream::connect(forward.local_addr()).await?;
        let mut first = [0u8; 1];
        timeout(WAIT, client.read_exact(&mut first)).await??;
        // Closing with unread data sends a reset.
        drop(client);

        let kind = timeout(WAIT, server)
            .await
            .context("server kept writing after the client went away")???;
        ensure!(
            matches!(
                kind,
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "server write failed with {kind:?}"
        );
        Ok::<_, anyhow::Error>(())
    })?;

    // The tunnel still accepts: its dial fails now that nothing listens,
    // so it closes the new client.
    runtime.block_on(async {
        let mut stream = TcpStream::connect(forward.local_addr()).await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        timeout(WAIT, stream.read_to_end(&mut reply)).await??;
        ensure!(
            reply.is_empty(),
            "got {} bytes from a dead target",
            reply.len()
        );
        Ok(())
    })
}
