//! Port health checks: each exposed TCP port is dialled from inside the sandbox at the
//! service's bridge address, so a service that listens only on its own loopback is caught.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mayfly_netns::Sandbox;
use tokio::time::Instant;

use crate::definition::{ExposedPort, Protocol};

/// The first pause between dials; it doubles up to [`MAX_BACKOFF`]. A refused dial inside
/// the sandbox costs a few microseconds, so the pauses stay short: a long one only delays
/// every client by up to its length after the service is ready.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// How long one dial may take before it counts as a failure.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a port never answered.
#[derive(Debug)]
pub(crate) enum PortProblem {
    /// Nothing accepted connections on the port before the deadline.
    NotListening { port: u16 },
    /// The service listens on the port, but only on its loopback address.
    LoopbackOnly { port: u16 },
    /// The command check failed.
    Command(crate::health_check::CommandHealthError),
}

/// Returns the TCP ports that get a port check.
pub(crate) fn checked_ports(ports: &[ExposedPort]) -> Vec<u16> {
    ports
        .iter()
        .filter(|port| port.protocol == Protocol::Tcp && !port.skip_health_check)
        .map(|port| port.port)
        .collect()
}

/// Dials every port in `ports` at `address` from inside `sandbox` until each accepts a
/// connection or `deadline` passes. `pid` is a process in the service's network namespace,
/// used to tell a loopback-only listener apart from none.
pub(crate) async fn wait_for_ports(
    service: &str,
    sandbox: &Sandbox,
    address: IpAddr,
    ports: &[u16],
    pid: Option<i32>,
    deadline: Instant,
) -> Result<(), PortProblem> {
    for &port in ports {
        let target = SocketAddr::new(address, port);
        let dialled = tokio::select! {
            dialled = dial_until(sandbox, target, deadline) => dialled,
            () = warn_if_loopback_only(service, pid, port) => unreachable!("the warning never ends"),
        };
        if !dialled {
            if pid.is_some_and(|pid| listens_on_loopback_only(pid, port)) {
                return Err(PortProblem::LoopbackOnly { port });
            }
            return Err(PortProblem::NotListening { port });
        }
        tracing::debug!(%target, "service port is accepting connections");
    }
    Ok(())
}

/// Warns once when the service listens on `port` only on its loopback address. Some
/// services do so while they initialise (a temporary server on localhost, then the real
/// one), so this only warns; the deadline decides. Never returns.
async fn warn_if_loopback_only(service: &str, pid: Option<i32>, port: u16) {
    const FIRST_LOOK: Duration = Duration::from_secs(2);
    const LOOK_AGAIN: Duration = Duration::from_secs(1);

    if let Some(pid) = pid {
        tokio::time::sleep(FIRST_LOOK).await;
        loop {
            if listens_on_loopback_only(pid, port) {
                tracing::warn!(
                    %service,
                    port,
                    "the service listens on this port only on its loopback address, so no other container can reach it; make it listen on 0.0.0.0 (waiting until the health deadline)"
                );
                break;
            }
            tokio::time::sleep(LOOK_AGAIN).await;
        }
    }
    std::future::pending().await
}

/// Returns whether a connection to `target` succeeded before `deadline`.
async fn dial_until(sandbox: &Sandbox, target: SocketAddr, deadline: Instant) -> bool {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let attempt = tokio::time::timeout(DIAL_TIMEOUT, sandbox.sockets().tcp_connect(target));
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(Ok(_stream))) => return true,
            Ok(Ok(Err(error))) => tracing::trace!(%target, %error, "service port not ready"),
            Ok(Err(_)) => tracing::debug!(%target, "dial of a service port timed out"),
            Err(_) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep_until((Instant::now() + backoff).min(deadline)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads the TCP tables of `pid`'s network namespace for a listener on `port` bound to a
/// loopback address and to nothing wider.
fn listens_on_loopback_only(pid: i32, port: u16) -> bool {
    let mut loopback = false;
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for listener in listeners(&text) {
            if listener.port != port {
                continue;
            }
            if !listener.loopback {
                return false;
            }
            loopback = true;
        }
    }
    loopback
}

struct Listener {
    port: u16,
    loopback: bool,
}

/// Parses the listening sockets of a `/proc/net/tcp` or `tcp6` table.
fn listeners(table: &str) -> impl Iterator<Item = Listener> + '_ {
    const LISTEN: &str = "0A";
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state) = (fields.get(1)?, fields.get(3)?);
        if *state != LISTEN {
            return None;
        }
        let (address, port) = local.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(Listener {
            port,
            loopback: is_loopback_hex(address),
        })
    })
}

/// Returns whether a hex address from a proc table is a loopback address. The kernel prints each
/// 32-bit word of the address as it lies in memory, read as a host-order number.
fn is_loopback_hex(address: &str) -> bool {
    let bytes: Vec<u8> = (0..address.len() / 8)
        .filter_map(|i| u32::from_str_radix(&address[i * 8..i * 8 + 8], 16).ok())
        .flat_map(u32::to_ne_bytes)
        .collect();
    if let Ok(v4) = <[u8; 4]>::try_from(bytes.as_slice()) {
        return std::net::Ipv4Addr::from(v4).is_loopback();
    }
    let Ok(v6) = <[u8; 16]>::try_from(bytes.as_slice()) else {
        return false;
    };
    let v6 = std::net::Ipv6Addr::from(v6);
    v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";

    const TCP6: &str =
        "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000000000000:0BB9 00000000000000000000000000000000:0000 0A
";

    #[test]
    fn parses_v4_listeners() {
        let found: Vec<(u16, bool)> = listeners(TCP).map(|l| (l.port, l.loopback)).collect();
        assert_eq!(found, vec![(8080, true), (80, false)]);
    }

    #[test]
    fn parses_v6_listeners() {
        let found: Vec<(u16, bool)> = listeners(TCP6).map(|l| (l.port, l.loopback)).collect();
        assert_eq!(found, vec![(3000, true), (3001, false)]);
    }

    #[test]
    fn udp_and_skipped_ports_get_no_check() {
        let port = |port, protocol, skip| ExposedPort {
            port,
            protocol,
            description: None,
            skip_health_check: skip,
        };
        let ports = [
            port(53, Protocol::Udp, false),
            port(80, Protocol::Tcp, false),
            port(81, Protocol::Tcp, true),
        ];
        assert_eq!(checked_ports(&ports), vec![80]);
    }
}
