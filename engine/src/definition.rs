//! The container definition: plain data that names the image a container starts from and
//! the ordered changes that apply to it. Its canonical serialisation is hashed into the digest that
//! names a service, so the same definition gives the same name on any machine.

use std::collections::BTreeMap;

use data_encoding::BASE32_NOPAD;
use mayfly_image::digest::Digest;
use serde::{Deserialize, Serialize};

/// Domain under which service hostnames are answered.
pub const SERVICE_DOMAIN: &str = "mayfly.internal";

/// Errors from hashing a definition.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error(
        "the definition starting from {reference:?} has no resolved image digest yet; \
         resolve (pull) the image before asking for its digest or hostname"
    )]
    Unresolved { reference: String },
    #[error("failed to serialise the definition canonically")]
    Serialise(#[source] serde_json::Error),
}

/// Transport protocol of an exposed or published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A port the container offers to its clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposedPort {
    pub port: u16,
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub skip_health_check: bool,
}

/// Options of one exec step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOptions {
    /// Prepend the image's entrypoint to the arguments.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub use_entrypoint: bool,
    /// Run the command as PID 1 instead of under the small init.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub no_init: bool,
    /// Bytes written to the command's standard input.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stdin: Option<String>,
}

/// One change applied on top of the image, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    Workdir {
        path: String,
    },
    Env {
        name: String,
        value: String,
    },
    WithoutEnv {
        name: String,
    },
    NewFile {
        path: String,
        contents: String,
        permissions: u32,
    },
    MountedDirectory {
        path: String,
        source: String,
        read_only: bool,
    },
    Tmpfs {
        path: String,
        /// Mount options such as `size=64m`; empty means the defaults.
        #[serde(skip_serializing_if = "Vec::is_empty", default)]
        options: Vec<String>,
    },
    User {
        user: String,
    },
    Entrypoint {
        args: Vec<String>,
    },
    DefaultArgs {
        args: Vec<String>,
    },
    Exec {
        args: Vec<String>,
        #[serde(flatten)]
        options: ExecOptions,
    },
    ExposedPort(ExposedPort),
    WithoutExposedPort {
        port: u16,
        protocol: Protocol,
    },
    Label {
        name: String,
        value: String,
    },
    /// Binds a service under `alias` for the exec steps and the service that follow. `service`
    /// is the bound service's hostname, filled in when the definition is resolved.
    ServiceBinding {
        alias: String,
        service: String,
    },
    /// Runs the container as a service with these arguments; the last change of a service's
    /// definition, so that the same container run two ways gives two hostnames.
    Service(ServiceCommand),
}

/// How a service runs its container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCommand {
    /// Arguments; empty runs the container's default command.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub args: Vec<String>,
    /// Prepend the entrypoint to `args`, as `docker run IMAGE ARGS` does.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub use_entrypoint: bool,
    /// Run the command as PID 1 instead of under the small init.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub no_init: bool,
}

/// The image a definition starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// The reference as the user wrote it, for messages; not part of the digest.
    pub reference: String,
    /// Digest of the platform manifest that runs, once resolved.
    pub manifest: Option<Digest>,
    /// Platform requested as OS/ARCH[/VARIANT], or the host's when unset.
    pub platform: Option<String>,
}

/// Returns the hostname for `digest`: its first 64 bits in lowercase RFC 4648 base32, 13
/// characters without padding.
pub fn hostname_of(digest: &Digest) -> String {
    let bytes = hex::decode(digest.hex()).expect("a parsed digest is valid hex");
    BASE32_NOPAD.encode(&bytes[..8]).to_ascii_lowercase()
}

/// A container definition: a base image and an ordered list of changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub base: Base,
    pub changes: Vec<Change>,
}

/// The hashed form: the resolved manifest digest and the changes, nothing per-run.
#[derive(Serialize)]
struct HashedForm<'a> {
    from: &'a Digest,
    changes: &'a [Change],
}

impl Definition {
    pub fn from_reference(reference: impl Into<String>) -> Self {
        Self {
            base: Base {
                reference: reference.into(),
                manifest: None,
                platform: None,
            },
            changes: Vec::new(),
        }
    }

    /// Returns a copy with one more change, as every builder step does.
    pub fn with(&self, change: Change) -> Self {
        let mut next = self.clone();
        next.changes.push(change);
        next
    }

    /// Serialises the definition as the RFC 8785 canonical JSON that the digest hashes.
    pub fn canonical_json(&self) -> Result<String, DefinitionError> {
        let from = self
            .base
            .manifest
            .as_ref()
            .ok_or_else(|| DefinitionError::Unresolved {
                reference: self.base.reference.clone(),
            })?;
        let form = HashedForm {
            from,
            changes: &self.changes,
        };
        serde_jcs::to_string(&form).map_err(DefinitionError::Serialise)
    }

    /// SHA-256 of the canonical serialisation.
    pub fn digest(&self) -> Result<Digest, DefinitionError> {
        Ok(Digest::of_bytes(self.canonical_json()?.as_bytes()))
    }

    /// Returns the service hostname: the first 64 bits of the digest in lowercase RFC 4648
    /// base32, 13 characters without padding.
    pub fn hostname(&self) -> Result<String, DefinitionError> {
        Ok(hostname_of(&self.digest()?))
    }

    /// Returns the hostname under [`SERVICE_DOMAIN`].
    pub fn fully_qualified_hostname(&self) -> Result<String, DefinitionError> {
        Ok(format!("{}.{SERVICE_DOMAIN}", self.hostname()?))
    }

    /// Exposed ports after every expose and unexpose change, in order of first exposure.
    pub fn exposed_ports(&self) -> Vec<ExposedPort> {
        let mut ports: Vec<ExposedPort> = Vec::new();
        for change in &self.changes {
            match change {
                Change::ExposedPort(port) => {
                    ports.retain(|p| (p.port, p.protocol) != (port.port, port.protocol));
                    ports.push(port.clone());
                }
                Change::WithoutExposedPort { port, protocol } => {
                    ports.retain(|p| (p.port, p.protocol) != (*port, *protocol));
                }
                _ => {}
            }
        }
        ports
    }

    /// Labels set by the changes, later values replacing earlier ones.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.changes
            .iter()
            .filter_map(|change| match change {
                Change::Label { name, value } => Some((name.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn resolved() -> Definition {
        let mut definition = Definition::from_reference("python:3.11");
        definition.base.manifest = Some(MANIFEST.parse().unwrap());
        definition
            .with(Change::Workdir {
                path: "/srv".into(),
            })
            .with(Change::NewFile {
                path: "index.html".into(),
                contents: "Hello, world!".into(),
                permissions: 0o644,
            })
            .with(Change::ExposedPort(ExposedPort {
                port: 8080,
                protocol: Protocol::Tcp,
                description: None,
                skip_health_check: false,
            }))
    }

    #[test]
    fn hostname_is_pinned() {
        let definition = resolved();
        assert_eq!(
            definition.canonical_json().unwrap(),
            r#"{"changes":[{"change":"workdir","path":"/srv"},{"change":"new-file","contents":"Hello, world!","path":"index.html","permissions":420},{"change":"exposed-port","port":8080,"protocol":"tcp"}],"from":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}"#
        );
        // Computed independently: python3 -c "base64.b32encode(sha256(json).digest()[:8])".
        let hostname = definition.hostname().unwrap();
        assert_eq!(hostname.len(), 13);
        assert_eq!(hostname, "gbdaotsdp6wg6");
        assert_eq!(
            definition.fully_qualified_hostname().unwrap(),
            "gbdaotsdp6wg6.mayfly.internal"
        );
    }

    #[test]
    fn hostname_ignores_reference_spelling() {
        let mut other = resolved();
        other.base.reference = "docker.io/library/python:3.11".into();
        assert_eq!(other.hostname().unwrap(), resolved().hostname().unwrap());
    }

    #[test]
    fn hostname_changes_with_every_part() {
        let base = resolved().hostname().unwrap();

        let mut other_image = resolved();
        other_image.base.manifest = Some(
            "sha256:1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                .parse()
                .unwrap(),
        );
        assert_ne!(other_image.hostname().unwrap(), base);

        let variants = [
            Change::Env {
                name: "K".into(),
                value: "V".into(),
            },
            Change::User {
                user: "nobody".into(),
            },
            Change::Exec {
                args: vec!["true".into()],
                options: ExecOptions::default(),
            },
            Change::ExposedPort(ExposedPort {
                port: 8081,
                protocol: Protocol::Tcp,
                description: None,
                skip_health_check: false,
            }),
        ];
        for change in variants {
            let changed = resolved().with(change.clone());
            assert_ne!(
                changed.hostname().unwrap(),
                base,
                "{change:?} kept the hostname"
            );
        }
    }

    #[test]
    fn hostname_needs_resolution() {
        let definition = Definition::from_reference("python:3.11");
        assert!(matches!(
            definition.hostname(),
            Err(DefinitionError::Unresolved { .. })
        ));
    }

    #[test]
    fn exposed_ports_follow_changes() {
        let definition = resolved()
            .with(Change::ExposedPort(ExposedPort {
                port: 53,
                protocol: Protocol::Udp,
                description: Some("dns".into()),
                skip_health_check: true,
            }))
            .with(Change::WithoutExposedPort {
                port: 8080,
                protocol: Protocol::Tcp,
            });
        let ports = definition.exposed_ports();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, 53);
        assert_eq!(ports[0].protocol, Protocol::Udp);
    }
}
