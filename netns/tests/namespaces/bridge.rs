//! The sandbox bridge, attachments and namespace threads.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::OwnedFd;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::Trial;
use mayfly_netns::{NetNs, NetnsError, Sandbox, SandboxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

use crate::support::{
    fd_counting_trial, open_fds, runtime, trial, wait_for_fd_baseline, Container,
};

pub fn trials() -> Vec<Trial> {
    vec![
        trial("bridge_containers_tcp_echo", containers_tcp_echo),
        trial("bridge_detach_removes_route", detach_removes_route),
        fd_counting_trial("bridge_attach_detach_no_fd_leak", attach_detach_no_fd_leak),
        trial("bridge_ipv6_containers_echo", ipv6_containers_echo),
        trial("netns_from_fd_rejects_file", from_fd_rejects_file),
        trial("netns_thread_binds_in_sandbox", thread_binds_in_sandbox),
        trial(
            "netns_thread_dials_from_its_namespace",
            thread_dials_from_its_namespace,
        ),
    ]
}

const WAIT: Duration = Duration::from_secs(5);

/// Accepts one connection on `listener`, echoes until EOF and returns the
/// peer address.
async fn echo_once(listener: TcpListener) -> Result<SocketAddr> {
    let (mut stream, peer) = listener.accept().await?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data).await?;
    stream.write_all(&data).await?;
    stream.shutdown().await?;
    Ok(peer)
}

fn containers_tcp_echo() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let a = Container::attach(&sandbox, "a")?;
    let b = Container::attach(&sandbox, "b")?;
    ensure!(
        a.address() != b.address(),
        "both containers got {}",
        a.address()
    );
    ensure!(
        sandbox.contains(a.address().into()),
        "address {} is outside the sandbox subnet",
        a.address()
    );

    let server_addr = SocketAddr::from((a.address(), 7000));
    let listener = a.sockets.tcp_listen(server_addr)?;
    runtime().block_on(async {
        listener.set_nonblocking(true)?;
        let server = tokio::spawn(echo_once(TcpListener::from_std(listener)?));

        let mut stream = timeout(WAIT, b.sockets.tcp_connect(server_addr)).await??;
        stream.write_all(b"hello over the bridge").await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        timeout(WAIT, stream.read_to_end(&mut reply)).await??;
        assert_eq!(reply, b"hello over the bridge");

        let peer = timeout(WAIT, server).await???;
        assert_eq!(peer.ip(), b.address());
        Ok(())
    })
}

fn detach_removes_route() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let container = Container::attach(&sandbox, "gone")?;
    let gateway = SocketAddr::from((sandbox.gateway(), 7001));
    let _listener = sandbox.sockets().tcp_listen(gateway)?;

    runtime().block_on(async {
        timeout(WAIT, container.sockets.tcp_connect(gateway)).await??;
        Ok::<_, anyhow::Error>(())
    })?;

    container.attachment.detach()?;
    let result = runtime()
        .block_on(async { timeout(WAIT, container.sockets.tcp_connect(gateway)).await })?;
    match result {
        Err(NetnsError::Connect { source, .. }) => {
            assert_eq!(source.kind(), ErrorKind::NetworkUnreachable, "{source}");
        }
        Err(other) => bail!("unexpected error after detach: {other}"),
        Ok(_) => bail!("container still reaches the gateway after detach"),
    }
    Ok(())
}

fn attach_detach_no_fd_leak() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let baseline = open_fds();
    for round in 0..20 {
        let container = Container::attach(&sandbox, &format!("round{round}"))?;
        if round % 2 == 0 {
            container.attachment.detach()?;
        }
        // Odd rounds detach by drop.
    }
    wait_for_fd_baseline(baseline)
}

fn ipv6_containers_echo() -> Result<()> {
    let config = SandboxConfig {
        subnet_v6: Some("fd00:89::/64".parse()?),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::create(config)?;
    let a = Container::attach(&sandbox, "a6")?;
    let b = Container::attach(&sandbox, "b6")?;
    let a_v6 = a
        .attachment
        .address_v6()
        .context("container a has no IPv6 address")?;
    assert_eq!(a_v6, "fd00:89::2".parse::<std::net::Ipv6Addr>()?);

    let server_addr = SocketAddr::from((a_v6, 7000));
    let listener = a.sockets.tcp_listen(server_addr)?;
    runtime().block_on(async {
        listener.set_nonblocking(true)?;
        let server = tokio::spawn(echo_once(TcpListener::from_std(listener)?));
        let mut stream = timeout(WAIT, b.sockets.tcp_connect(server_addr)).await??;
        stream.write_all(b"v6").await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        timeout(WAIT, stream.read_to_end(&mut reply)).await??;
        assert_eq!(reply, b"v6");
        let peer = timeout(WAIT, server).await???;
        assert_eq!(Some(peer.ip()), b.attachment.address_v6().map(Into::into));
        Ok(())
    })
}

fn from_fd_rejects_file() -> Result<()> {
    let file = File::open("/dev/null")?;
    match NetNs::from_fd(OwnedFd::from(file)) {
        Err(NetnsError::NotNetworkNamespace { target, .. }) => {
            assert_eq!(target, "/dev/null");
            Ok(())
        }
        other => bail!("expected NotNetworkNamespace, got {other:?}"),
    }
}

fn thread_binds_in_sandbox() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let addr = SocketAddr::from((sandbox.gateway(), 0));

    // The gateway address exists only inside the sandbox namespace.
    let host_bind = StdTcpListener::bind(addr);
    let error = host_bind
        .err()
        .context("the gateway address is bindable in the host namespace")?;
    assert_eq!(error.kind(), ErrorKind::AddrNotAvailable);

    let listener = sandbox.sockets().tcp_listen(addr)?;
    assert_eq!(listener.local_addr()?.ip(), sandbox.gateway());
    assert_ne!(sandbox.netns().id(), NetNs::of_process()?.id());
    Ok(())
}

/// Dials 127.0.0.1 in a container namespace more times than the socket pool
/// holds, so pooled, refilled and directly created sockets are all used. A
/// socket created in the host namespace would reach the host's loopback,
/// where a second listener on the same port counts it.
fn thread_dials_from_its_namespace() -> Result<()> {
    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let container = Container::attach(&sandbox, "dialer")?;
    let listener = container
        .sockets
        .tcp_listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let addr = listener.local_addr()?;
    let host_listener = StdTcpListener::bind(addr)
        .with_context(|| format!("failed to bind {addr} in the host namespace"))?;
    host_listener.set_nonblocking(true)?;

    runtime().block_on(async {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener)?;
        for i in 0..50 {
            let server = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await?;
                stream.write_all(b"container").await?;
                Ok::<_, anyhow::Error>(listener)
            });
            let mut stream = timeout(WAIT, container.sockets.tcp_connect(addr))
                .await
                .with_context(|| format!("dial {i} timed out"))??;
            let mut reply = Vec::new();
            timeout(WAIT, stream.read_to_end(&mut reply)).await??;
            ensure!(reply == b"container", "dial {i} got {reply:?}");
            listener = timeout(WAIT, server).await???;
        }
        Ok::<_, anyhow::Error>(())
    })?;

    match host_listener.accept() {
        Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(()),
        Err(error) => bail!("accept on the host listener failed: {error}"),
        Ok((_, peer)) => {
            bail!("a dial from the container namespace reached the host namespace from {peer}")
        }
    }
}
