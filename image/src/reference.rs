//! Image references, parsed and normalised with the rules of Docker's reference grammar
//! (`github.com/distribution/reference`): `python` means `docker.io/library/python:latest`.
//!
//! Grammar, as in Docker:
//!
//! ```text
//! reference   := name [ ":" tag ] [ "@" digest ]
//! name        := [ domain "/" ] path-component ( "/" path-component )*
//! domain      := host [ ":" port ]          host is a DNS name or "[" IPv6 "]"
//! path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! ```
//!
//! The first component is a domain when it contains `.` or `:`, is `localhost`, or contains an
//! uppercase letter (which a path component may not). Otherwise the registry is `docker.io` and a
//! single-component name gets the `library/` prefix. Short names always mean `docker.io`, as in
//! Docker; registries.conf's `unqualified-search-registries` is not consulted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{Digest, DigestError};

/// Registry that short names such as `python` refer to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Tag a reference gets when it names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";

const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
const OFFICIAL_REPOSITORY_PREFIX: &str = "library/";
const NAME_MAX_LENGTH: usize = 255;
const TAG_MAX_LENGTH: usize = 128;

/// Errors from parsing an image reference. Each names the part that is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference: the reference is empty; give a name such as \"python:3.11\"")]
    Empty,

    #[error("invalid tag {tag:?} in reference {reference:?}: a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    InvalidTag { tag: String, reference: String },

    #[error("invalid digest {digest:?} in reference {reference:?}")]
    InvalidDigest {
        digest: String,
        reference: String,
        #[source]
        source: DigestError,
    },

    #[error("invalid registry {domain:?} in reference {reference:?}: expected a host name, IPv4 or [IPv6] address, optionally followed by :port")]
    InvalidDomain { domain: String, reference: String },

    #[error("invalid repository name {repository:?} in reference {reference:?}: repository names must be lowercase")]
    UppercaseRepository {
        repository: String,
        reference: String,
    },

    #[error("invalid path component {component:?} in reference {reference:?}: a component is lowercase letters and digits, separated by '.', '_', '__' or dashes")]
    InvalidPathComponent {
        component: String,
        reference: String,
    },

    #[error("invalid reference {reference:?}: the name {name:?} is longer than 255 characters")]
    NameTooLong { name: String, reference: String },

    #[error("invalid reference {reference:?}: a 64-digit hexadecimal string is an image ID, not a repository name")]
    ImageIdentifier { reference: String },
}

/// A normalised image reference: `registry/repository[:tag][@digest]`.
///
/// After parsing, `tag` is `Some("latest")` when the input named neither a tag nor a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host, with `:port` when one was given (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/python`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference the way `docker pull` does.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if is_image_identifier(input) {
            return Err(ReferenceError::ImageIdentifier {
                reference: input.to_owned(),
            });
        }

        // A digest comes last, after the only '@' a reference may contain.
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((before, digest)) => (before, Some(parse_digest(digest, input)?)),
            None => (input, None),
        };

        // A tag follows the last ':' unless that ':' belongs to a registry port (then a '/'
        // follows it).
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if !name_and_tag[colon..].contains('/') => {
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            _ => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            check_tag(tag, input)?;
        }

        let (registry, repository) = split_registry(name);
        check_domain(registry, input)?;
        check_repository(&repository, input)?;

        let full_length = registry.len() + 1 + repository.len();
        if full_length > NAME_MAX_LENGTH {
            return Err(ReferenceError::NameTooLong {
                name: format!("{registry}/{repository}"),
                reference: input.to_owned(),
            });
        }

        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// Returns the name without tag or digest: `docker.io/library/python`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Returns the tag or digest to request from the registry's manifest endpoint. A digest wins
    /// over a tag because it pins the content.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// Returns the short form Docker prints: `python:3.11` for `docker.io/library/python:3.11`.
    pub fn familiar(&self) -> String {
        let name = if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix(OFFICIAL_REPOSITORY_PREFIX)
                .unwrap_or(&self.repository)
                .to_owned()
        } else {
            self.name()
        };
        let mut text = name;
        if let Some(tag) = &self.tag {
            text.push(':');
            text.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            text.push('@');
            text.push_str(&digest.to_string());
        }
        text
    }

    /// Returns the same reference pinned to `digest`, without a tag.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::parse(input)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn is_image_identifier(input: &str) -> bool {
    input.len() == 64
        && input
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_digest(digest: &str, reference: &str) -> Result<Digest, ReferenceError> {
    digest
        .parse()
        .map_err(|source| ReferenceError::InvalidDigest {
            digest: digest.to_owned(),
            reference: reference.to_owned(),
            source,
        })
}

fn check_tag(tag: &str, reference: &str) -> Result<(), ReferenceError> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= TAG_MAX_LENGTH
        && is_word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| is_word(b) || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag {
            tag: tag.to_owned(),
            reference: reference.to_owned(),
        })
    }
}

fn is_domain_like(component: &str) -> bool {
    component.contains(['.', ':'])
        || component == "localhost"
        || component.bytes().any(|b| b.is_ascii_uppercase())
}

/// Splits a name into registry and repository with Docker's `splitDockerDomain` rule.
fn split_registry(name: &str) -> (&str, String) {
    let (registry, remainder) = match name.split_once('/') {
        Some((first, rest)) if is_domain_like(first) => (first, rest),
        _ => (DEFAULT_REGISTRY, name),
    };
    let registry = if registry == LEGACY_DEFAULT_REGISTRY {
        DEFAULT_REGISTRY
    } else {
        registry
    };
    let repository = if registry == DEFAULT_REGISTRY && !remainder.contains('/') {
        format!("{OFFICIAL_REPOSITORY_PREFIX}{remainder}")
    } else {
        remainder.to_owned()
    };
    (registry, repository)
}

fn check_domain(domain: &str, reference: &str) -> Result<(), ReferenceError> {
    let invalid = || ReferenceError::InvalidDomain {
        domain: domain.to_owned(),
        reference: reference.to_owned(),
    };

    // The port is what follows the last ':' after the host (an IPv6 host keeps its colons
    // inside brackets).
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (address, after) = rest.split_once(']').ok_or_else(invalid)?;
        let valid_address =
            !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        if !valid_address {
            return Err(invalid());
        }
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };

    if let Some(host) = host {
        let valid_host = host.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !valid_host {
            return Err(invalid());
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
    }
    Ok(())
}

fn check_repository(repository: &str, reference: &str) -> Result<(), ReferenceError> {
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::UppercaseRepository {
            repository: repository.to_owned(),
            reference: reference.to_owned(),
        });
    }
    for component in repository.split('/') {
        if !is_path_component(component) {
            return Err(ReferenceError::InvalidPathComponent {
                component: component.to_owned(),
                reference: reference.to_owned(),
            });
        }
    }
    Ok(())
}

/// Matches `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_path_component(component: &str) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut index = 0;
    loop {
        // One run of alphanumerics is required here.
        let start = index;
        while index < bytes.len() && alphanumeric(bytes[index]) {
            index += 1;
        }
        if index == start {
            return false;
        }
        if index == bytes.len() {
            return true;
        }

        // Then a separator: '.', '_', '__' or one or more '-'.
        match bytes[index] {
            b'.' => index += 1,
            b'_' => {
                index += 1;
                if bytes.get(index) == Some(&b'_') {
                    index += 1;
                }
            }
            b'-' => {
                while bytes.get(index) == Some(&b'-') {
                    index += 1;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7";

    fn canonical(input: &str) -> String {
        Reference::parse(input)
            .unwrap_or_else(|error| panic!("{input:?} should parse: {error}"))
            .to_string()
    }

    #[test]
    fn short_names_normalise_like_docker() {
        let cases = [
            ("python", "docker.io/library/python:latest"),
            ("python:3.11", "docker.io/library/python:3.11"),
            ("library/python", "docker.io/library/python:latest"),
            ("docker.io/python", "docker.io/library/python:latest"),
            ("index.docker.io/python", "docker.io/library/python:latest"),
            ("index.docker.io/user/app:1", "docker.io/user/app:1"),
            ("user/app", "docker.io/user/app:latest"),
            ("user/app/sub:v1.0-rc_2", "docker.io/user/app/sub:v1.0-rc_2"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("localhost:5000", "docker.io/library/localhost:5000"),
            (
                "127.0.0.1:5000/library/x:tag",
                "127.0.0.1:5000/library/x:tag",
            ),
            ("quay.io/podman/stable", "quay.io/podman/stable:latest"),
            ("[::1]:5000/ns/app:1", "[::1]:5000/ns/app:1"),
            ("Registry/app", "Registry/app:latest"),
            ("a.b-c.d/e__f/g---h.i_j:T", "a.b-c.d/e__f/g---h.i_j:T"),
        ];
        for (input, expected) in cases {
            assert_eq!(canonical(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn digest_references_keep_their_digest() {
        let input = format!("host:5000/ns/repo@sha256:{HEX}");
        let reference = Reference::parse(&input).unwrap();
        assert_eq!(reference.registry, "host:5000");
        assert_eq!(reference.repository, "ns/repo");
        assert_eq!(reference.tag, None);
        assert_eq!(reference.digest.as_ref().unwrap().hex(), HEX);
        assert_eq!(reference.to_string(), input);
        assert_eq!(reference.manifest_reference(), format!("sha256:{HEX}"));

        let both = Reference::parse(&format!("python:3.11@sha256:{HEX}")).unwrap();
        assert_eq!(both.tag.as_deref(), Some("3.11"));
        assert!(both.digest.is_some());
        assert_eq!(
            both.to_string(),
            format!("docker.io/library/python:3.11@sha256:{HEX}")
        );
        assert_eq!(both.manifest_reference(), format!("sha256:{HEX}"));
    }

    #[test]
    fn familiar_form_drops_default_parts() {
        let cases = [
            ("python", "python:latest"),
            ("user/app:1", "user/app:1"),
            (
                "127.0.0.1:5000/library/x:tag",
                "127.0.0.1:5000/library/x:tag",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(Reference::parse(input).unwrap().familiar(), expected);
        }
    }

    #[test]
    fn invalid_tag_is_named() {
        let error = Reference::parse("python:A#").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid tag \"A#\" in reference \"python:A#\": a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
        );
    }

    #[test]
    fn invalid_references_are_rejected() {
        let long_tag = format!("python:{}", "a".repeat(129));
        let long_name = format!("{}/x", "a".repeat(255));
        type Check = fn(&ReferenceError) -> bool;
        let cases: Vec<(&str, Check)> = vec![
            ("", |e| matches!(e, ReferenceError::Empty)),
            ("Python", |e| {
                matches!(e, ReferenceError::UppercaseRepository { .. })
            }),
            ("library/Python:3", |e| {
                matches!(e, ReferenceError::UppercaseRepository { .. })
            }),
            ("python:", |e| {
                matches!(e, ReferenceError::InvalidTag { .. })
            }),
            ("python:-x", |e| {
                matches!(e, ReferenceError::InvalidTag { .. })
            }),
            (&long_tag, |e| {
                matches!(e, ReferenceError::InvalidTag { .. })
            }),
            ("python@sha256:abc", |e| {
                matches!(e, ReferenceError::InvalidDigest { .. })
            }),
            ("python@", |e| {
                matches!(e, ReferenceError::InvalidDigest { .. })
            }),
            ("a:b:c", |e| {
                matches!(e, ReferenceError::InvalidPathComponent { .. })
            }),
            ("py..thon", |e| {
                matches!(e, ReferenceError::InvalidPathComponent { .. })
            }),
            ("py___thon", |e| {
                matches!(e, ReferenceError::InvalidPathComponent { .. })
            }),
            ("-python", |e| {
                matches!(e, ReferenceError::InvalidPathComponent { .. })
            }),
            ("python-", |e| {
                matches!(e, ReferenceError::InvalidPathComponent { .. })
            }),
            ("user//app", |e| {
                matches!(e, ReferenceError::InvalidPathComponent { .. })
            }),
            ("user/app/", |e| {
                matches!(e, ReferenceError::InvalidPathComponent { .. })
            }),
            ("host.io/", |e| {
                matches!(e, ReferenceError::InvalidPathComponent { .. })
            }),
            ("-host.io/app", |e| {
                matches!(e, ReferenceError::InvalidDomain { .. })
            }),
            ("host.io:port/app", |e| {
                matches!(e, ReferenceError::InvalidDomain { .. })
            }),
            ("host..io/app", |e| {
                matches!(e, ReferenceError::InvalidDomain { .. })
            }),
            ("[::1/app", |e| {
                matches!(e, ReferenceError::InvalidDomain { .. })
            }),
            ("[zz]:5000/app", |e| {
                matches!(e, ReferenceError::InvalidDomain { .. })
            }),
            (&long_name, |e| {
                matches!(e, ReferenceError::NameTooLong { .. })
            }),
            (HEX, |e| matches!(e, ReferenceError::ImageIdentifier { .. })),
        ];
        for (input, is_expected) in cases {
            let error = Reference::parse(input).expect_err(input);
            assert!(is_expected(&error), "input {input:?} gave {error:?}");
        }
    }

    #[test]
    fn unsupported_digest_algorithm_keeps_cause() {
        let error = Reference::parse("python@sha512:abcd").unwrap_err();
        let ReferenceError::InvalidDigest { source, .. } = error else {
            panic!("expected an invalid digest error, got {error:?}");
        };
        assert!(matches!(source, DigestError::UnsupportedAlgorithm { .. }));
    }

    #[test]
    fn serde_uses_canonical_text() {
        let reference = Reference::parse("python:3.11").unwrap();
        let json = serde_json::to_string(&reference).unwrap();
        assert_eq!(json, "\"docker.io/library/python:3.11\"");
        let back: Reference = serde_json::from_str(&json).unwrap();
        assert_eq!(back, reference);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn component() -> impl Strategy<Value = String> {
            "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
        }

        fn domain() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){1,2}(:[0-9]{1,5})?",
                "localhost(:[0-9]{1,5})?",
                Just("127.0.0.1:5000".to_owned()),
            ]
        }

        fn tag() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"
        }

        proptest! {
            #[test]
            fn parse_never_panics(input in ".{0,300}") {
                let _ = Reference::parse(&input);
            }

            #[test]
            fn parse_never_panics_on_reference_alphabet(input in "[a-zA-Z0-9.:/@_\\[\\]-]{0,80}") {
                let _ = Reference::parse(&input);
            }

            #[test]
            fn canonical_form_round_trips(
                domain in domain(),
                path in proptest::collection::vec(component(), 1..4),
                tag in proptest::option::of(tag()),
                hex in proptest::option::of("[a-f0-9]{64}"),
            ) {
                prop_assume!(domain != DEFAULT_REGISTRY && domain != LEGACY_DEFAULT_REGISTRY);
                let mut input = format!("{domain}/{}", path.join("/"));
                if let Some(tag) = &tag {
                    input.push(':');
                    input.push_str(tag);
                }
                if let Some(hex) = &hex {
                    input.push_str("@sha256:");
                    input.push_str(hex);
                }
                let parsed = Reference::parse(&input).unwrap();
                prop_assert_eq!(&parsed.registry, &domain);
                prop_assert_eq!(&parsed.repository, &path.join("/"));
                let text = parsed.to_string();
                let reparsed = Reference::parse(&text).unwrap();
                prop_assert_eq!(reparsed.to_string(), text);
            }
        }
    }
}
