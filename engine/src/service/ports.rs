//! The ports a service offers: the image's `ExposedPorts`, then the definition's exposed-port
//! changes in order.

use mayfly_image::manifest::ImageConfig;

use crate::definition::{Change, Definition, ExposedPort, Protocol};

/// Returns the exposed ports of `definition` on an image with `config`, sorted by port.
pub(crate) fn exposed_ports(config: &ImageConfig, definition: &Definition) -> Vec<ExposedPort> {
    let mut ports: Vec<ExposedPort> = config
        .config
        .as_ref()
        .and_then(|config| config.exposed_ports.as_ref())
        .into_iter()
        .flat_map(|ports| ports.keys())
        .filter_map(|key| parse_image_port(key))
        .collect();

    for change in &definition.changes {
        match change {
            Change::ExposedPort(port) => {
                ports.retain(|known| (known.port, known.protocol) != (port.port, port.protocol));
                ports.push(port.clone());
            }
            Change::WithoutExposedPort { port, protocol } => {
                ports.retain(|known| (known.port, known.protocol) != (*port, *protocol));
            }
            _ => {}
        }
    }
    ports.sort_by_key(|port| (port.port, port.protocol));
    ports
}

/// Parses an image config key such as `8080/tcp`; other protocols (sctp) are skipped.
fn parse_image_port(key: &str) -> Option<ExposedPort> {
    let (port, protocol) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = match protocol {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    Some(ExposedPort {
        port: port.parse().ok().filter(|port| *port != 0)?,
        protocol,
        description: None,
        skip_health_check: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &[&str]) -> ImageConfig {
        let ports: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .map(|key| (key.to_string(), serde_json::json!({})))
            .collect();
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "ExposedPorts": ports },
            "rootfs": { "type": "layers", "diff_ids": [] }
        }))
        .unwrap()
    }

    #[test]
    fn image_ports_then_changes() {
        let definition = Definition::from_reference("x")
            .with(Change::ExposedPort(ExposedPort {
                port: 8080,
                protocol: Protocol::Tcp,
                description: Some("web".to_owned()),
                skip_health_check: true,
            }))
            .with(Change::WithoutExposedPort {
                port: 3306,
                protocol: Protocol::Tcp,
            });
        let ports = exposed_ports(
            &config(&["3306/tcp", "53/udp", "8080/tcp", "9/sctp"]),
            &definition,
        );
        let listed: Vec<_> = ports
            .iter()
            .map(|p| (p.port, p.protocol, p.skip_health_check))
            .collect();
        assert_eq!(
            listed,
            vec![(53, Protocol::Udp, false), (8080, Protocol::Tcp, true)]
        );
    }
}
