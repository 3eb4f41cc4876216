//! A service's `expose` and `ports`: single ports and ranges, the short syntax
//! `[[ADDR:]HOST:]CONTAINER[/PROTOCOL]` and the long syntax with `target`, `published`,
//! `host_ip` and `protocol`.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::context::Context;
use super::error::ComposeError;
use super::known_keys;
use super::model::ComposePort;
use super::yaml::{join_key, Node, Value};
use crate::definition::Protocol;

/// Reads `expose`: entries such as `"8080"`, `8080`, `"53/udp"` or `"8000-8005/tcp"`.
pub(super) fn expose(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<Vec<(u16, Protocol)>, ComposeError> {
    let mut exposed = Vec::new();
    for (index, item) in context.sequence(node, key)?.iter().enumerate() {
        let item_key = format!("{key}[{index}]");
        let text = context.text(item, &item_key)?;
        let invalid = |reason| ComposeError::InvalidPort {
            at: context.at(item, &item_key),
            value: text.clone(),
            reason,
        };

        let (ports, protocol) = split_protocol(&text).map_err(invalid)?;
        for port in port_range(ports).map_err(invalid)? {
            exposed.push((port, protocol));
        }
    }
    Ok(exposed)
}

/// Reads `ports`, expanding ranges into one entry per port.
pub(super) fn ports(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<Vec<ComposePort>, ComposeError> {
    let mut ports = Vec::new();
    for (index, item) in context.sequence(node, key)?.iter().enumerate() {
        let item_key = format!("{key}[{index}]");
        match &item.value {
            Value::Mapping(entries) => ports.push(long_syntax(context, item, entries, &item_key)?),
            Value::Scalar { .. } => {
                let text = context.text(item, &item_key)?;
                let parsed = short_syntax(&text).map_err(|reason| ComposeError::InvalidPort {
                    at: context.at(item, &item_key),
                    value: text.clone(),
                    reason,
                })?;
                ports.extend(parsed);
            }
            _ => {
                return Err(context.wrong_type(
                    item,
                    &item_key,
                    "a port string such as \"127.0.0.1:8080:80\" or a mapping with target",
                ))
            }
        }
    }
    Ok(ports)
}

/// Parses `[[ADDR:]HOST:]CONTAINER[/PROTOCOL]`, where HOST and CONTAINER may be ranges of
/// equal length and ADDR may be an IPv6 address, bracketed or not.
fn short_syntax(text: &str) -> Result<Vec<ComposePort>, &'static str> {
    let (spec, protocol) = split_protocol(text)?;

    // The container port follows the last colon and the host port the one before. Whatever
    // precedes them is the address, which contains colons itself when it is IPv6.
    let parts: Vec<&str> = spec.split(':').collect();
    let count = parts.len();
    let container = parts[count - 1];
    let host = if count >= 2 { parts[count - 2] } else { "" };
    let address = if count >= 3 {
        parts[..count - 2].join(":")
    } else {
        String::new()
    };

    let host_ip = parse_address(&address)?;
    let targets = port_range(container)?;
    let published: Vec<Option<u16>> = if host.is_empty() {
        vec![None; targets.clone().count()]
    } else {
        let hosts = port_range(host)?;
        if hosts.clone().count() != targets.clone().count() {
            return Err(
                "the host and container ranges differ in length; give ranges of equal \
                 length, because mayfly does not pick a host port from a range",
            );
        }
        hosts.map(Some).collect()
    };

    Ok(targets
        .zip(published)
        .map(|(target, published)| ComposePort {
            host_ip,
            published,
            target,
            protocol,
        })
        .collect())
}

fn long_syntax(
    context: &mut Context,
    node: &Node,
    entries: &[(String, Node)],
    key: &str,
) -> Result<ComposePort, ComposeError> {
    let mut target = None;
    let mut published = None;
    let mut host_ip = None;
    let mut protocol = Protocol::Tcp;

    for (name, value) in entries {
        let value_key = join_key(key, name);
        let text = match name.as_str() {
            "target" | "published" | "host_ip" | "protocol" => {
                context.optional_text(value, &value_key)?
            }
            _ => {
                context.ignore_key(key, name, known_keys::PORT);
                continue;
            }
        };
        let Some(text) = text else { continue };
        let invalid = |reason| ComposeError::InvalidPort {
            at: context.at(value, &value_key),
            value: text.clone(),
            reason,
        };

        match name.as_str() {
            "target" => target = Some(single_port(&text).map_err(invalid)?),
            "published" if !text.is_empty() => {
                published = Some(single_port(&text).map_err(invalid)?)
            }
            "host_ip" => host_ip = parse_address(&text).map_err(invalid)?,
            "protocol" => protocol = parse_protocol(&text).map_err(invalid)?,
            _ => {}
        }
    }

    let Some(target) = target else {
        return Err(ComposeError::MissingKey {
            at: context.at(node, key),
            key: "target",
        });
    };
    Ok(ComposePort {
        host_ip,
        published,
        target,
        protocol,
    })
}

fn split_protocol(text: &str) -> Result<(&str, Protocol), &'static str> {
    match text.rsplit_once('/') {
        Some((ports, protocol)) => Ok((ports, parse_protocol(protocol)?)),
        None => Ok((text, Protocol::Tcp)),
    }
}

fn parse_protocol(text: &str) -> Result<Protocol, &'static str> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err("the protocol must be tcp or udp"),
    }
}

/// Parses an address, with or without IPv6 brackets. An empty text means no address.
fn parse_address(text: &str) -> Result<Option<IpAddr>, &'static str> {
    if text.is_empty() {
        return Ok(None);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse()
        .map(Some)
        .map_err(|_| "the host address is not an IP address")
}

/// `8080` or `8000-8005`.
fn port_range(text: &str) -> Result<RangeInclusive<u16>, &'static str> {
    match text.split_once('-') {
        Some((start, end)) => {
            let (start, end) = (single_port(start)?, single_port(end)?);
            if start > end {
                return Err("the range ends before it starts");
            }
            Ok(start..=end)
        }
        None => {
            let port = single_port(text)?;
            Ok(port..=port)
        }
    }
}

fn single_port(text: &str) -> Result<u16, &'static str> {
    if text.contains('-') {
        return Err("a range is not allowed here; give one port");
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err("a port is a number from 1 to 65535"),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn port(host_ip: Option<IpAddr>, published: Option<u16>, target: u16) -> ComposePort {
        ComposePort {
            host_ip,
            published,
            target,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn short_syntax_forms() {
        let localhost = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let ipv6_localhost = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let cases = [
            ("3000", vec![port(None, None, 3000)]),
            ("8000:80", vec![port(None, Some(8000), 80)]),
            (
                "127.0.0.1:8001:8001",
                vec![port(localhost, Some(8001), 8001)],
            ),
            ("127.0.0.1::80", vec![port(localhost, None, 80)]),
            (
                "[::1]:6001:6001",
                vec![port(ipv6_localhost, Some(6001), 6001)],
            ),
            (
                "::1:6000:6000",
                vec![port(ipv6_localhost, Some(6000), 6000)],
            ),
            (
                "9090-9091:8080-8081",
                vec![port(None, Some(9090), 8080), port(None, Some(9091), 8081)],
            ),
            (
                "3000-3001",
                vec![port(None, None, 3000), port(None, None, 3001)],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(short_syntax(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn short_syntax_protocol() {
        let parsed = short_syntax("6060:6060/udp").unwrap();
        assert_eq!(parsed[0].protocol, Protocol::Udp);
        assert_eq!(parsed[0].published, Some(6060));
    }

    #[test]
    fn short_syntax_errors() {
        for text in [
            "",
            "http",
            "0:80",
            "70000",
            "8000-9000:80",
            "80:80/sctp",
            "localhost:80:80",
            "3005-3000",
        ] {
            assert!(short_syntax(text).is_err(), "{text:?} should be rejected");
        }
    }
}
