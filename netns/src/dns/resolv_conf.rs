//! Reading the host's resolvers from resolv.conf(5).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use super::DnsError;

/// glibc uses at most this many `nameserver` lines (MAXNS in resolv.h).
const MAX_NAMESERVERS: usize = 3;

/// Reads the `nameserver` lines of `path` as port-53 socket addresses.
/// Like glibc, uses the first three and falls back to 127.0.0.1 when there
/// is none.
pub fn read_nameservers(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_nameservers(&text))
}

fn parse_nameservers(text: &str) -> Vec<SocketAddr> {
    let mut servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            // NOTE: a link-local IPv6 server with a zone ("fe80::1%eth0")
            // is skipped, since the zone names a host interface.
            match addr.parse::<IpAddr>() {
                Ok(ip) => Some(SocketAddr::new(ip, 53)),
                Err(_) => {
                    tracing::warn!(
                        nameserver = addr,
                        "skipping a nameserver line that is not an IP address"
                    );
                    None
                }
            }
        })
        .take(MAX_NAMESERVERS)
        .collect();
    if servers.is_empty() {
        servers.push(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)));
    }
    servers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameserver_lines() {
        let text =
            "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver ::1\noptions edns0\n";
        assert_eq!(
            parse_nameservers(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn keeps_first_three() {
        let text = "nameserver 127.0.0.1\nnameserver 127.0.0.2\nnameserver 127.0.0.3\nnameserver 127.0.0.4\n";
        assert_eq!(parse_nameservers(text).len(), 3);
    }

    #[test]
    fn defaults_to_loopback() {
        assert_eq!(
            parse_nameservers("search x\n"),
            vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn skips_zoned_ipv6() {
        let text = "nameserver fe80::1%eth0\nnameserver 127.0.0.53\n";
        assert_eq!(
            parse_nameservers(text),
            vec!["127.0.0.53:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
