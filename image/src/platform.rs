//! Platforms (`os/architecture[/variant]`), normalised like containerd's `platforms` package,
//! and selection of the matching manifest from an image index.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::manifest::{Descriptor, ImageIndex};

/// Errors from parsing a platform or finding it in an index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error("invalid platform {value:?}: expected os/architecture[/variant], such as linux/arm64 or linux/arm/v7")]
    Invalid { value: String },

    #[error("no manifest for platform {wanted} in {image}; available platforms: {}; choose one with --platform", available.join(", "))]
    NotFound {
        wanted: String,
        image: String,
        available: Vec<String>,
    },
}

/// An operating system, CPU architecture and optional CPU variant, with Go's names
/// (`linux`, `amd64`, `arm64`, `arm` + `v7`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Returns the platform of this machine: `linux/amd64` on x86_64, `linux/arm64` on aarch64.
    pub fn host() -> Self {
        // NOTE: 32-bit ARM hosts are taken to be v7; the actual variant is not read from
        // /proc/cpuinfo.
        Self::new(std::env::consts::OS, std::env::consts::ARCH, None).normalised()
    }

    /// Returns the platform with the canonical names: `x86_64` becomes `amd64`, `aarch64`
    /// becomes `arm64` (variant `v8` dropped), `armhf` becomes `arm/v7`, a bare `arm` gets `v7`.
    pub fn normalised(&self) -> Self {
        let os = match self.os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_owned(),
            other => other.to_owned(),
        };
        let variant = self
            .variant
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(str::to_ascii_lowercase);
        let with_v = |v: String| {
            if v.starts_with('v') {
                v
            } else {
                format!("v{v}")
            }
        };

        let (architecture, variant) = match self.architecture.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" => ("amd64", variant.map(with_v).filter(|v| v != "v1")),
            "i386" | "i686" | "386" => ("386", None),
            "aarch64" | "arm64" => ("arm64", variant.map(with_v).filter(|v| v != "v8")),
            "armhf" => ("arm", Some("v7".to_owned())),
            "armel" => ("arm", Some("v6".to_owned())),
            "arm" => (
                "arm",
                Some(variant.map(with_v).unwrap_or_else(|| "v7".to_owned())),
            ),
            other => {
                return Self {
                    os,
                    architecture: other.to_owned(),
                    variant,
                }
            }
        };
        Self {
            os,
            architecture: architecture.to_owned(),
            variant,
        }
    }

    /// Returns how well an image built for `candidate` fits this platform: `Some(0)` is an
    /// exact match, a larger number a compatible older variant (an `arm/v6` image on an
    /// `arm/v7` host), `None` no match. Both platforms are normalised first.
    pub fn match_rank(&self, candidate: &Platform) -> Option<u32> {
        let wanted = self.normalised();
        let candidate = candidate.normalised();
        if wanted.os != candidate.os || wanted.architecture != candidate.architecture {
            return None;
        }
        if wanted.variant == candidate.variant {
            return Some(0);
        }
        // ARM CPUs run code for older ARM variants.
        if wanted.architecture == "arm" {
            let version = |p: &Platform| {
                p.variant
                    .as_deref()
                    .and_then(|v| v.strip_prefix('v'))
                    .and_then(|v| v.parse::<u32>().ok())
            };
            if let (Some(host), Some(image)) = (version(&wanted), version(&candidate)) {
                if image < host {
                    return Some(host - image);
                }
            }
        }
        None
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// Parses `os/architecture[/variant]`, for `--platform`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = || PlatformError::Invalid {
            value: value.to_owned(),
        };
        let parts: Vec<&str> = value.split('/').collect();
        let valid_part = |part: &&str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid_part) {
            return Err(invalid());
        }
        Ok(Self::new(parts[0], parts[1], parts.get(2).copied()).normalised())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Returns the index entry whose platform fits `wanted` best; ties go to the earlier entry.
/// `image` names the image in the error, which lists the platforms the index offers.
pub fn select_manifest<'a>(
    index: &'a ImageIndex,
    wanted: &Platform,
    image: &str,
) -> Result<&'a Descriptor, PlatformError> {
    let best = index
        .manifests
        .iter()
        .filter_map(|descriptor| {
            let platform = descriptor.platform.as_ref()?;
            wanted.match_rank(platform).map(|rank| (rank, descriptor))
        })
        .min_by_key(|(rank, _)| *rank);
    if let Some((_, descriptor)) = best {
        return Ok(descriptor);
    }

    // Attestation manifests carry the platform unknown/unknown; they are not images.
    let mut available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|descriptor| descriptor.platform.as_ref())
        .filter(|platform| platform.os != "unknown")
        .map(ToString::to_string)
        .collect();
    available.dedup();
    if available.is_empty() {
        available.push("none".to_owned());
    }
    Err(PlatformError::NotFound {
        wanted: wanted.to_string(),
        image: image.to_owned(),
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::manifest::media_types;

    fn platform(text: &str) -> Platform {
        text.parse().unwrap()
    }

    fn index(platforms: &[Option<&str>]) -> ImageIndex {
        let manifests = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| Descriptor {
                media_type: media_types::OCI_MANIFEST.to_owned(),
                digest: Digest::of_bytes(&[i as u8]),
                size: 100,
                urls: Vec::new(),
                annotations: Default::default(),
                platform: p.map(|text| {
                    let parts: Vec<&str> = text.split('/').collect();
                    Platform::new(parts[0], parts[1], parts.get(2).copied())
                }),
            })
            .collect();
        ImageIndex {
            schema_version: 2,
            media_type: Some(media_types::OCI_INDEX.to_owned()),
            manifests,
            annotations: Default::default(),
        }
    }

    #[test]
    fn parse_and_normalise() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/riscv64", "linux/riscv64"),
            ("linux/i386", "linux/386"),
        ];
        for (input, expected) in cases {
            assert_eq!(platform(input).to_string(), expected, "{input}");
        }
    }

    #[test]
    fn invalid_platforms_are_rejected() {
        for input in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
        ] {
            assert_eq!(
                input.parse::<Platform>(),
                Err(PlatformError::Invalid {
                    value: input.to_owned()
                }),
                "{input:?}"
            );
        }
    }

    #[test]
    fn host_platform_is_normalised() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host.to_string(), "linux/arm64");
        }
    }

    #[test]
    fn selection_prefers_exact_match() {
        let index = index(&[
            Some("linux/arm/v6"),
            Some("linux/amd64"),
            Some("linux/arm64/v8"),
            Some("linux/arm/v7"),
            Some("unknown/unknown"),
        ]);
        let pick = |wanted: &str| {
            let descriptor = select_manifest(&index, &platform(wanted), "img").unwrap();
            descriptor.platform.as_ref().unwrap().to_string()
        };
        assert_eq!(pick("linux/amd64"), "linux/amd64");
        assert_eq!(pick("linux/arm64"), "linux/arm64/v8");
        assert_eq!(pick("linux/arm/v7"), "linux/arm/v7");
        assert_eq!(pick("linux/arm/v6"), "linux/arm/v6");
    }

    #[test]
    fn older_arm_variant_is_a_fallback() {
        let index = index(&[Some("linux/arm/v5"), Some("linux/arm/v6")]);
        let descriptor = select_manifest(&index, &platform("linux/arm/v7"), "img").unwrap();
        assert_eq!(
            descriptor.platform.as_ref().unwrap().variant.as_deref(),
            Some("v6")
        );
        let exact = select_manifest(&index, &platform("linux/arm/v5"), "img").unwrap();
        assert_eq!(
            exact.platform.as_ref().unwrap().variant.as_deref(),
            Some("v5")
        );
    }

    #[test]
    fn missing_platform_lists_available_ones() {
        let index = index(&[
            Some("linux/amd64"),
            Some("linux/arm64"),
            None,
            Some("unknown/unknown"),
        ]);
        let error = select_manifest(&index, &platform("linux/s390x"), "busybox:multi").unwrap_err();
        assert_eq!(
            error,
            PlatformError::NotFound {
                wanted: "linux/s390x".to_owned(),
                image: "busybox:multi".to_owned(),
                available: vec!["linux/amd64".to_owned(), "linux/arm64".to_owned()],
            }
        );
        assert_eq!(
            error.to_string(),
            "no manifest for platform linux/s390x in busybox:multi; available platforms: linux/amd64, linux/arm64; choose one with --platform"
        );
    }

    #[test]
    fn newer_variant_does_not_match() {
        let index = index(&[Some("linux/arm/v8"), Some("linux/amd64/v3")]);
        assert!(select_manifest(&index, &platform("linux/arm/v7"), "x").is_err());
        assert!(select_manifest(&index, &platform("linux/amd64"), "x").is_err());
    }
}
