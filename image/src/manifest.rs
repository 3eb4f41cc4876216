//! Image manifests, image indexes (manifest lists) and image configs, in both the OCI image
//! format and Docker's schema 2, which share one JSON shape.
//!
//! These are mayfly's own serde structs rather than oci-spec's: oci-spec 0.7 requires fields
//! (such as the config's `history`) that real images omit, and the descriptors here carry this
//! crate's [`Digest`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

/// Media types mayfly reads.
pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_FOREIGN_LAYER: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    pub const DOCKER_MANIFEST_V1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
}

/// Largest manifest or index accepted, the limit containerd uses too.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Largest image config accepted; configs with a long history reach a few hundred KiB.
pub const MAX_CONFIG_SIZE: u64 = 8 << 20;

/// Errors from parsing manifests and configs.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid {kind} JSON")]
    Json {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("unsupported manifest media type {media_type:?}: mayfly reads OCI image manifests and indexes and Docker schema 2 manifests and manifest lists")]
    UnsupportedMediaType { media_type: String },

    #[error("unsupported manifest schema version {version}: only schema version 2 is supported (Docker schema 1 images must be pushed again with a current client)")]
    UnsupportedSchemaVersion { version: u64 },

    #[error("the manifest is neither an image manifest nor an index: it has no \"layers\" or \"manifests\" list")]
    UnknownShape,

    #[error("the index entry {digest} is itself an index; mayfly follows only one level of index")]
    NestedIndex { digest: Digest },

    #[error("the manifest's config has media type {media_type:?}, so it describes an artifact, not a container image")]
    NotAnImage { media_type: String },
}

/// A reference to content by digest, with its media type and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// A manifest for one platform: a config and the layers, bottom first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An index (Docker: manifest list) of per-platform manifests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest-endpoint response: an image manifest or an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestProbe {
    schema_version: Option<u64>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
}

impl Manifest {
    /// Parses manifest bytes. The `mediaType` field decides the kind, then the HTTP
    /// `content_type`, then the shape of the JSON.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        let json_error = |source| ManifestError::Json {
            kind: "manifest",
            source,
        };
        let probe: ManifestProbe = serde_json::from_slice(bytes).map_err(json_error)?;

        let content_type = content_type
            .map(|value| value.split(';').next().unwrap_or(value).trim())
            .filter(|value| !value.is_empty() && *value != "application/json");
        let media_type = probe.media_type.as_deref().or(content_type);
        if let Some(version) = probe.schema_version.filter(|v| *v != 2) {
            return Err(ManifestError::UnsupportedSchemaVersion { version });
        }

        let is_index = match media_type {
            Some(media_types::OCI_INDEX | media_types::DOCKER_MANIFEST_LIST) => true,
            Some(media_types::OCI_MANIFEST | media_types::DOCKER_MANIFEST) => false,
            Some(media_types::DOCKER_MANIFEST_V1 | media_types::DOCKER_MANIFEST_V1_SIGNED) => {
                return Err(ManifestError::UnsupportedSchemaVersion { version: 1 })
            }
            Some(other) => {
                return Err(ManifestError::UnsupportedMediaType {
                    media_type: other.to_owned(),
                })
            }
            None if probe.manifests.is_some() => true,
            None if probe.layers.is_some() => false,
            None => return Err(ManifestError::UnknownShape),
        };

        if is_index {
            let index: ImageIndex = serde_json::from_slice(bytes).map_err(json_error)?;
            return Ok(Self::Index(index));
        }
        let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(json_error)?;
        match manifest.config.media_type.as_str() {
            media_types::OCI_CONFIG | media_types::DOCKER_CONFIG => Ok(Self::Image(manifest)),
            other => Err(ManifestError::NotAnImage {
                media_type: other.to_owned(),
            }),
        }
    }
}

/// An image config: the platform it was built for, how to run it, and the layer diff IDs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<History>>,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            kind: "image config",
            source,
        })
    }

    /// Returns the platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// The `config` object of an image config: defaults for running a container.
/// JSON `null`, which Docker writes for empty lists, reads as `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
}

/// The `Healthcheck` object of an image config, as the Dockerfile's HEALTHCHECK writes it.
/// Durations are nanoseconds, and 0 or absent means Docker's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `[]` (inherit), `["NONE"]`, `["CMD", arg...]` or `["CMD-SHELL", command line]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    /// Digests of the uncompressed layer tars, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HEX_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn docker_manifest() -> String {
        format!(
            r#"{{
            "schemaVersion": 2,
            "mediaType": "{}",
            "config": {{"mediaType": "{}", "size": 1469, "digest": "sha256:{HEX_A}"}},
            "layers": [{{"mediaType": "{}", "size": 2152262, "digest": "sha256:{HEX_B}"}}]
            }}"#,
            media_types::DOCKER_MANIFEST,
            media_types::DOCKER_CONFIG,
            media_types::DOCKER_LAYER_GZIP
        )
    }

    #[test]
    fn docker_manifest_parses() {
        let Manifest::Image(manifest) =
            Manifest::parse(docker_manifest().as_bytes(), None).unwrap()
        else {
            panic!("expected an image manifest");
        };
        assert_eq!(manifest.config.size, 1469);
        assert_eq!(manifest.config.digest.hex(), HEX_A);
        assert_eq!(manifest.layers.len(), 1);
        assert_eq!(
            manifest.layers[0].media_type,
            media_types::DOCKER_LAYER_GZIP
        );
    }

    #[test]
    fn index_is_recognised_by_content_type_and_shape() {
        let index = format!(
            r#"{{"schemaVersion": 2, "manifests": [
                {{"mediaType": "{}", "size": 10, "digest": "sha256:{HEX_A}",
                  "platform": {{"architecture": "arm64", "os": "linux", "variant": "v8"}}}},
                {{"mediaType": "{}", "size": 10, "digest": "sha256:{HEX_B}",
                  "platform": {{"architecture": "amd64", "os": "linux", "os.features": ["x"]}}}}
            ]}}"#,
            media_types::OCI_MANIFEST,
            media_types::OCI_MANIFEST
        );
        for content_type in [Some(media_types::OCI_INDEX), None] {
            let Manifest::Index(parsed) = Manifest::parse(index.as_bytes(), content_type).unwrap()
            else {
                panic!("expected an index");
            };
            assert_eq!(parsed.manifests.len(), 2);
            assert_eq!(
                parsed.manifests[0].platform,
                Some(Platform::new("linux", "arm64", Some("v8")))
            );
        }
    }

    #[test]
    fn content_type_parameters_are_ignored() {
        let text = docker_manifest().replace(
            &format!("\"mediaType\": \"{}\",", media_types::DOCKER_MANIFEST),
            "",
        );
        let content_type = format!("{}; charset=utf-8", media_types::DOCKER_MANIFEST);
        assert!(matches!(
            Manifest::parse(text.as_bytes(), Some(&content_type)),
            Ok(Manifest::Image(_))
        ));
    }

    #[test]
    fn unsupported_manifests_are_rejected() {
        let schema1 = r#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#;
        assert!(matches!(
            Manifest::parse(schema1.as_bytes(), None),
            Err(ManifestError::UnsupportedSchemaVersion { version: 1 })
        ));
        let artifact = docker_manifest().replace(
            media_types::DOCKER_CONFIG,
            "application/vnd.cncf.helm.config.v1+json",
        );
        assert!(matches!(
            Manifest::parse(artifact.as_bytes(), None),
            Err(ManifestError::NotAnImage { .. })
        ));
        assert!(matches!(
            Manifest::parse(b"{}", None),
            Err(ManifestError::UnknownShape)
        ));
        assert!(matches!(
            Manifest::parse(br#"{"mediaType": "text/plain"}"#, None),
            Err(ManifestError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            Manifest::parse(b"not json", None),
            Err(ManifestError::Json { .. })
        ));
        let bad_digest = docker_manifest().replace(HEX_B, "xyz");
        assert!(matches!(
            Manifest::parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Json { .. })
        ));
    }

    #[test]
    fn docker_config_with_nulls_parses() {
        let text = format!(
            r#"{{"architecture": "amd64", "os": "linux",
                "config": {{"Env": ["PATH=/bin"], "Cmd": ["sh"], "Entrypoint": null,
                           "Volumes": null, "WorkingDir": "", "Labels": null,
                           "ExposedPorts": {{"80/tcp": {{}}}}, "User": "1000"}},
                "rootfs": {{"type": "layers", "diff_ids": ["sha256:{HEX_A}"]}}}}"#
        );
        let config = ImageConfig::parse(text.as_bytes()).unwrap();
        let run = config.config.as_ref().unwrap();
        assert_eq!(run.env.as_deref(), Some(&["PATH=/bin".to_owned()][..]));
        assert_eq!(run.cmd.as_deref(), Some(&["sh".to_owned()][..]));
        assert_eq!(run.entrypoint, None);
        assert_eq!(run.user.as_deref(), Some("1000"));
        assert!(run.exposed_ports.as_ref().unwrap().contains_key("80/tcp"));
        assert_eq!(config.rootfs.diff_ids.len(), 1);
        assert_eq!(config.history, None);
        assert_eq!(config.platform(), Platform::new("linux", "amd64", None));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = Manifest::parse(&bytes, None);
                let _ = ImageConfig::parse(&bytes);
            }

            #[test]
            fn parse_never_panics_on_json_like_text(
                text in r#"[{}\[\]":, 0-9a-zA-Z.+/]{0,200}"#,
                content_type in proptest::option::of(prop_oneof![
                    Just(media_types::OCI_INDEX),
                    Just(media_types::DOCKER_MANIFEST),
                    Just("text/plain"),
                ]),
            ) {
                let _ = Manifest::parse(text.as_bytes(), content_type);
            }

            #[test]
            fn manifest_round_trips(
                sizes in proptest::collection::vec(0u64..u64::MAX, 1..5),
                annotation in "[a-z]{0,8}",
            ) {
                let layers = sizes
                    .iter()
                    .map(|size| Descriptor {
                        media_type: media_types::OCI_LAYER_GZIP.to_owned(),
                        digest: Digest::of_bytes(&size.to_le_bytes()),
                        size: *size,
                        urls: Vec::new(),
                        annotations: BTreeMap::new(),
                        platform: None,
                    })
                    .collect();
                let mut annotations = BTreeMap::new();
                annotations.insert("a".to_owned(), annotation);
                let manifest = ImageManifest {
                    schema_version: 2,
                    media_type: Some(media_types::OCI_MANIFEST.to_owned()),
                    config: Descriptor {
                        media_type: media_types::OCI_CONFIG.to_owned(),
                        digest: Digest::of_bytes(b"config"),
                        size: 6,
                        urls: Vec::new(),
                        annotations: BTreeMap::new(),
                        platform: None,
                    },
                    layers,
                    annotations,
                };
                let bytes = serde_json::to_vec(&manifest).unwrap();
                let parsed = Manifest::parse(&bytes, None).unwrap();
                prop_assert_eq!(parsed, Manifest::Image(manifest));
            }
        }
    }
}
