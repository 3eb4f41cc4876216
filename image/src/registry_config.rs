//! Registry settings read from containers-registries.conf(5), version 2, the file Podman uses:
//! per-prefix `location` rewrites, `insecure`, `blocked` and `[[registry.mirror]]` lists.
//!
//! Files are read in this order, each overriding what came before:
//!
//! 1. `$MAYFLY_REGISTRIES_CONF` alone, and the `.conf` files in `$MAYFLY_REGISTRIES_CONF.d`, when
//!    that variable is set;
//! 2. otherwise `$XDG_CONFIG_HOME/containers/registries.conf` (default `~/.config/...`) and its
//!    `registries.conf.d` directory, when that file exists;
//! 3. otherwise `/etc/containers/registries.conf`, then the `.conf` files in
//!    `/etc/containers/registries.conf.d` and in `~/.config/containers/registries.conf.d`.
//!
//! Drop-in files are read in name order; a `[[registry]]` with an already known prefix replaces
//! the earlier one, as containers-registries.conf.d(5) describes. Short names always resolve to
//! `docker.io` (see [`crate::reference`]), so `unqualified-search-registries` is read but only
//! reported. Loopback registries (`127.0.0.0/8`, `::1`, `localhost`) are insecure unless a file
//! sets `insecure = false` for them, as Docker's default `insecure-registries` list makes them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::reference::Reference;

/// Environment variable naming the registries.conf file to read instead of the default ones.
pub const REGISTRIES_CONF_ENV: &str = "MAYFLY_REGISTRIES_CONF";

const SYSTEM_REGISTRIES_CONF: &str = "/etc/containers/registries.conf";

/// Errors from reading registries.conf files or applying them to a reference.
#[derive(Debug, thiserror::Error)]
pub enum RegistryConfigError {
    #[error("failed to read registries configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid registries configuration {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },

    #[error("invalid [[registry]] entry in {path}: {problem}")]
    InvalidEntry { path: PathBuf, problem: String },

    #[error("invalid registries configuration {path}: it mixes version 1 ([registries.*]) and version 2 ([[registry]]) tables; use only [[registry]]")]
    MixedVersions { path: PathBuf },

    #[error("registry {prefix:?} is blocked by {path}, so {reference} cannot be pulled; remove `blocked = true` there to allow it")]
    Blocked {
        reference: String,
        prefix: String,
        path: PathBuf,
    },

    #[error("cannot rewrite {reference} with location {location:?} from {path}: the result {rewritten:?} is not a valid repository name")]
    InvalidRewrite {
        reference: String,
        location: String,
        rewritten: String,
        path: PathBuf,
    },
}

/// One place to try fetching an image from: a mirror or the registry itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` to connect to.
    pub registry: String,
    /// Repository path on that registry, after the `location` rewrite.
    pub repository: String,
    /// Plain HTTP is allowed and TLS certificates are not verified.
    pub insecure: bool,
    /// The endpoint came from a `[[registry.mirror]]` table.
    pub mirror: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// Selection of references a mirror serves, the `pull-from-mirror` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullFromMirror {
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorEntry {
    pub location: String,
    pub insecure: Option<bool>,
    pub pull_from_mirror: PullFromMirror,
}

/// One `[[registry]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryEntry {
    /// Names this entry applies to: `host[:port][/namespace...]` or `*.domain`.
    pub prefix: String,
    /// Replacement for `prefix` when contacting the registry; equal to `prefix` when the file
    /// gave none (and then unused for a wildcard prefix).
    pub location: String,
    pub insecure: Option<bool>,
    pub blocked: bool,
    pub mirror_by_digest_only: bool,
    pub mirrors: Vec<MirrorEntry>,
    /// File that defined this entry, for error messages.
    pub source: PathBuf,
}

/// Merged registry settings from every file that was read.
#[derive(Clone, Debug, Default)]
pub struct RegistriesConfig {
    entries: Vec<RegistryEntry>,
    unqualified_search_registries: Vec<String>,
    files: Vec<PathBuf>,
    unknown_keys: Vec<String>,
}

impl RegistriesConfig {
    /// Settings with no files: every reference goes to its own registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads the files the environment selects, in the order the module documentation gives.
    pub fn load() -> Result<Self, RegistryConfigError> {
        Self::load_with(
            |name| std::env::var_os(name),
            Path::new(SYSTEM_REGISTRIES_CONF),
        )
    }

    /// Reads the files that the variables `lookup` returns select, with `system_conf` in
    /// place of `/etc/containers/registries.conf`.
    pub fn load_with(
        lookup: impl Fn(&str) -> Option<OsString>,
        system_conf: &Path,
    ) -> Result<Self, RegistryConfigError> {
        let var = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let mut config = Self::empty();

        if let Some(path) = var(REGISTRIES_CONF_ENV) {
            let path = PathBuf::from(path);
            config.merge_file(&path)?;
            config.merge_drop_ins(&drop_in_dir(&path))?;
            return Ok(config);
        }

        let config_home = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".config")));
        let user_conf = config_home.map(|dir| dir.join("containers/registries.conf"));
        if let Some(user_conf) = user_conf.as_deref().filter(|path| path.exists()) {
            config.merge_file(user_conf)?;
            config.merge_drop_ins(&drop_in_dir(user_conf))?;
            return Ok(config);
        }

        if system_conf.exists() {
            config.merge_file(system_conf)?;
        }
        config.merge_drop_ins(&drop_in_dir(system_conf))?;
        if let Some(user_conf) = &user_conf {
            config.merge_drop_ins(&drop_in_dir(user_conf))?;
        }
        Ok(config)
    }

    /// Reads one file; `path` must exist.
    pub fn from_file(path: &Path) -> Result<Self, RegistryConfigError> {
        let mut config = Self::empty();
        config.merge_file(path)?;
        Ok(config)
    }

    /// Parses TOML text as if it had been read from `source`.
    pub fn from_toml(text: &str, source: &Path) -> Result<Self, RegistryConfigError> {
        let mut config = Self::empty();
        config.merge_text(text, source)?;
        Ok(config)
    }

    /// Files that were read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Keys the files hold that containers-registries.conf(5) does not define, as
    /// `FILE: TABLE.KEY`. They are ignored with a warning, as Podman ignores them.
    pub fn unknown_keys(&self) -> &[String] {
        &self.unknown_keys
    }

    pub fn entries(&self) -> &[RegistryEntry] {
        &self.entries
    }

    /// The `unqualified-search-registries` list. mayfly does not search it: short names always
    /// mean docker.io.
    pub fn unqualified_search_registries(&self) -> &[String] {
        &self.unqualified_search_registries
    }

    /// Returns the endpoints to try for `reference`, in order: mirrors first, then the
    /// (possibly rewritten) registry itself.
    pub fn endpoints(&self, reference: &Reference) -> Result<Vec<Endpoint>, RegistryConfigError> {
        let Some(entry) = self.matching_entry(reference) else {
            return Ok(vec![Endpoint {
                registry: reference.registry.clone(),
                repository: reference.repository.clone(),
                insecure: is_loopback_registry(&reference.registry),
                mirror: false,
            }]);
        };

        if entry.blocked {
            return Err(RegistryConfigError::Blocked {
                reference: reference.to_string(),
                prefix: entry.prefix.clone(),
                path: entry.source.clone(),
            });
        }

        let by_digest = reference.digest.is_some();
        let mut endpoints = Vec::new();
        let mirrors_allowed = by_digest || !entry.mirror_by_digest_only;
        for mirror in entry.mirrors.iter().filter(|_| mirrors_allowed) {
            let serves = match mirror.pull_from_mirror {
                PullFromMirror::All => true,
                PullFromMirror::DigestOnly => by_digest,
                PullFromMirror::TagOnly => !by_digest,
            };
            if serves {
                endpoints.push(rewrite(
                    entry,
                    reference,
                    &mirror.location,
                    mirror.insecure,
                    true,
                )?);
            }
        }
        endpoints.push(rewrite(
            entry,
            reference,
            &entry.location,
            entry.insecure,
            false,
        )?);
        Ok(endpoints)
    }

    /// Returns the entry whose prefix matches `reference` longest.
    fn matching_entry(&self, reference: &Reference) -> Option<&RegistryEntry> {
        let name = reference.name();
        self.entries
            .iter()
            .filter_map(|entry| prefix_match_length(&entry.prefix, &name).map(|len| (len, entry)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, entry)| entry)
    }

    fn merge_file(&mut self, path: &Path) -> Result<(), RegistryConfigError> {
        let text = fs::read_to_string(path).map_err(|source| RegistryConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.merge_text(&text, path)
    }

    fn merge_drop_ins(&mut self, dir: &Path) -> Result<(), RegistryConfigError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(RegistryConfigError::Read {
                    path: dir.to_owned(),
                    source,
                })
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| RegistryConfigError::Read {
                path: dir.to_owned(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "conf") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        for file in files {
            self.merge_file(&file)?;
        }
        Ok(())
    }

    fn merge_text(&mut self, text: &str, path: &Path) -> Result<(), RegistryConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|source| RegistryConfigError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        if file.registries.is_some() && !file.registry.is_empty() {
            return Err(RegistryConfigError::MixedVersions {
                path: path.to_owned(),
            });
        }

        let unknown = file.unknown_keys();
        if !unknown.is_empty() {
            tracing::warn!(
                file = %path.display(),
                keys = %unknown.join(", "),
                "ignoring keys that containers-registries.conf(5) does not define; check their spelling"
            );
            let file_name = path.display();
            self.unknown_keys
                .extend(unknown.iter().map(|key| format!("{file_name}: {key}")));
        }

        if let Some(search) = file.unqualified_search_registries {
            self.unqualified_search_registries = search;
        }
        let mut entries = Vec::new();
        for table in file.registry {
            entries.push(table.into_entry(path)?);
        }
        if let Some(v1) = file.registries {
            entries.extend(v1.into_entries(path));
        }
        for entry in entries {
            match self.entries.iter_mut().find(|e| e.prefix == entry.prefix) {
                Some(existing) => *existing = entry,
                None => self.entries.push(entry),
            }
        }
        self.files.push(path.to_owned());
        Ok(())
    }
}

/// Returns whether `registry` (`host[:port]`) is a loopback address or `localhost`.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn drop_in_dir(conf: &Path) -> PathBuf {
    let mut dir = conf.as_os_str().to_owned();
    dir.push(".d");
    PathBuf::from(dir)
}

/// Returns the length of the matched prefix when `prefix` applies to `name`, using the rule of
/// containers-registries.conf(5): the name equals the prefix or continues it after a `/`.
fn prefix_match_length(prefix: &str, name: &str) -> Option<usize> {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host = name.split('/').next().unwrap_or(name);
        let host = host.split(':').next().unwrap_or(host);
        return host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1)
            .then_some(prefix.len());
    }
    let rest = name.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
}

/// Builds the endpoint for `location`: the location replaces the matched prefix in the name.
fn rewrite(
    entry: &RegistryEntry,
    reference: &Reference,
    location: &str,
    insecure: Option<bool>,
    mirror: bool,
) -> Result<Endpoint, RegistryConfigError> {
    let name = reference.name();
    let rewritten = if entry.prefix.starts_with("*.") {
        // A wildcard entry has no location of its own, and its mirrors replace only the
        // registry host.
        match (mirror, name.split_once('/')) {
            (false, _) => name.clone(),
            (true, Some((_, path))) => format!("{location}/{path}"),
            (true, None) => location.to_owned(),
        }
    } else {
        format!("{location}{}", &name[entry.prefix.len()..])
    };

    let invalid = || RegistryConfigError::InvalidRewrite {
        reference: reference.to_string(),
        location: location.to_owned(),
        rewritten: rewritten.clone(),
        path: entry.source.clone(),
    };
    let (registry, repository) = rewritten.split_once('/').ok_or_else(invalid)?;
    if repository.is_empty() || repository.split('/').any(str::is_empty) {
        return Err(invalid());
    }
    Ok(Endpoint {
        registry: registry.to_owned(),
        repository: repository.to_owned(),
        insecure: insecure.unwrap_or_else(|| is_loopback_registry(registry)),
        mirror,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ConfigFile {
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    registry: Vec<RegistryTable>,
    /// Version 1 tables: `[registries.search]`, `[registries.insecure]`, `[registries.block]`.
    registries: Option<V1Tables>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

/// Top-level keys of containers-registries.conf(5) that mayfly reads but has no use for.
const UNUSED_TOP_LEVEL_KEYS: [&str; 4] = [
    "short-name-mode",
    "credential-helpers",
    "aliases",
    "additional-layer-store-auth-helper",
];

impl ConfigFile {
    /// Returns the keys, as `TABLE.KEY`, that no part of the format defines.
    fn unknown_keys(&self) -> Vec<String> {
        let mut unknown: Vec<String> = self
            .other
            .keys()
            .filter(|key| !UNUSED_TOP_LEVEL_KEYS.contains(&key.as_str()))
            .cloned()
            .collect();
        for (index, registry) in self.registry.iter().enumerate() {
            let table = format!("registry[{index}]");
            unknown.extend(registry.other.keys().map(|key| format!("{table}.{key}")));
            for (mirror_index, mirror) in registry.mirror.iter().enumerate() {
                let mirror_table = format!("{table}.mirror[{mirror_index}]");
                unknown.extend(
                    mirror
                        .other
                        .keys()
                        .map(|key| format!("{mirror_table}.{key}")),
                );
            }
        }
        unknown
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryTable {
    prefix: Option<String>,
    location: Option<String>,
    insecure: Option<bool>,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorTable {
    location: String,
    insecure: Option<bool>,
    pull_from_mirror: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Default)]
struct V1Tables {
    #[serde(default)]
    insecure: V1List,
    #[serde(default)]
    block: V1List,
}

#[derive(Deserialize, Default)]
struct V1List {
    #[serde(default)]
    registries: Vec<String>,
}

impl RegistryTable {
    fn into_entry(self, path: &Path) -> Result<RegistryEntry, RegistryConfigError> {
        let invalid = |problem: String| RegistryConfigError::InvalidEntry {
            path: path.to_owned(),
            problem,
        };

        let location = self.location.filter(|l| !l.is_empty());
        let prefix = match (self.prefix.filter(|p| !p.is_empty()), &location) {
            (Some(prefix), _) => prefix,
            (None, Some(location)) => location.clone(),
            (None, None) => return Err(invalid("it has neither prefix nor location".to_owned())),
        };
        check_name_pattern(&prefix, "prefix").map_err(&invalid)?;

        let location = match location {
            Some(_) if prefix.starts_with("*.") => {
                return Err(invalid(format!(
                    "prefix {prefix:?} is a wildcard, so it cannot have a location"
                )))
            }
            Some(location) => location,
            None => prefix.clone(),
        };
        if !prefix.starts_with("*.") {
            check_location(&location).map_err(&invalid)?;
        }

        let mut mirrors = Vec::new();
        for mirror in self.mirror {
            check_location(&mirror.location).map_err(&invalid)?;
            let pull_from_mirror = match mirror.pull_from_mirror.as_deref() {
                None | Some("") | Some("all") => PullFromMirror::All,
                Some("digest-only") => PullFromMirror::DigestOnly,
                Some("tag-only") => PullFromMirror::TagOnly,
                Some(other) => {
                    return Err(invalid(format!(
                        "pull-from-mirror {other:?} of mirror {:?} is not one of all, digest-only, tag-only",
                        mirror.location
                    )))
                }
            };
            mirrors.push(MirrorEntry {
                location: mirror.location,
                insecure: mirror.insecure,
                pull_from_mirror,
            });
        }

        Ok(RegistryEntry {
            prefix,
            location,
            insecure: self.insecure,
            blocked: self.blocked,
            mirror_by_digest_only: self.mirror_by_digest_only,
            mirrors,
            source: path.to_owned(),
        })
    }
}

impl V1Tables {
    fn into_entries(self, path: &Path) -> Vec<RegistryEntry> {
        let new_entry = |prefix: &str| RegistryEntry {
            prefix: prefix.to_owned(),
            location: prefix.to_owned(),
            insecure: None,
            blocked: false,
            mirror_by_digest_only: false,
            mirrors: Vec::new(),
            source: path.to_owned(),
        };
        let mut entries: BTreeMap<String, RegistryEntry> = BTreeMap::new();
        for prefix in &self.insecure.registries {
            entries
                .entry(prefix.clone())
                .or_insert_with(|| new_entry(prefix))
                .insecure = Some(true);
        }
        for prefix in &self.block.registries {
            entries
                .entry(prefix.clone())
                .or_insert_with(|| new_entry(prefix))
                .blocked = true;
        }
        entries.into_values().collect()
    }
}

/// Rejects patterns that carry a scheme, a tag or a digest, which mayfly does not rewrite.
fn check_name_pattern(pattern: &str, field: &str) -> Result<(), String> {
    if pattern.contains("://") {
        return Err(format!(
            "{field} {pattern:?} contains a URL scheme; write host[:port][/path] and set insecure = true for plain HTTP"
        ));
    }
    let last = pattern.rsplit('/').next().unwrap_or(pattern);
    if pattern.contains('@') || (pattern.contains('/') && last.contains(':')) {
        return Err(format!(
            "{field} {pattern:?} names a tag or digest; mayfly matches only registry and repository names"
        ));
    }
    Ok(())
}

fn check_location(location: &str) -> Result<(), String> {
    check_name_pattern(location, "location")?;
    if location.starts_with("*.") {
        return Err(format!(
            "location {location:?} is a wildcard; a location must be a registry host"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> RegistriesConfig {
        RegistriesConfig::from_toml(text, Path::new("/test/registries.conf")).unwrap()
    }

    fn endpoints(config: &RegistriesConfig, reference: &str) -> Vec<Endpoint> {
        config
            .endpoints(&Reference::parse(reference).unwrap())
            .unwrap()
    }

    fn endpoint(registry: &str, repository: &str, insecure: bool, mirror: bool) -> Endpoint {
        Endpoint {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            insecure,
            mirror,
        }
    }

    #[test]
    fn empty_config_uses_registry_itself() {
        let empty = RegistriesConfig::empty();
        assert_eq!(
            endpoints(&empty, "python:3.11"),
            vec![endpoint("docker.io", "library/python", false, false)]
        );
        assert_eq!(
            endpoints(&empty, "127.0.0.1:5000/library/busybox"),
            vec![endpoint("127.0.0.1:5000", "library/busybox", true, false)]
        );
        assert_eq!(
            endpoints(&empty, "localhost/x"),
            vec![endpoint("localhost", "x", true, false)]
        );
    }

    #[test]
    fn mirrors_come_before_rewritten_location() {
        let config = config(
            r#"
            unqualified-search-registries = ["docker.io", "quay.io"]

            [[registry]]
            prefix = "docker.io"
            location = "registry.internal:443/hub"

            [[registry.mirror]]
            location = "127.0.0.1:5000"
            insecure = true

            [[registry.mirror]]
            location = "mirror.example.com/dockerhub"
            "#,
        );
        assert_eq!(
            config.unqualified_search_registries(),
            ["docker.io", "quay.io"]
        );
        assert_eq!(
            endpoints(&config, "python:3.11"),
            vec![
                endpoint("127.0.0.1:5000", "library/python", true, true),
                endpoint(
                    "mirror.example.com",
                    "dockerhub/library/python",
                    false,
                    true
                ),
                endpoint("registry.internal:443", "hub/library/python", false, false),
            ]
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let config = config(
            r#"
            [[registry]]
            prefix = "example.com"
            location = "a.example.net"

            [[registry]]
            prefix = "example.com/team"
            location = "b.example.net/mirror/team"
            insecure = true

            [[registry]]
            prefix = "example.com/te"
            location = "c.example.net"
            "#,
        );
        assert_eq!(
            endpoints(&config, "example.com/team/app:1"),
            vec![endpoint("b.example.net", "mirror/team/app", true, false)]
        );
        assert_eq!(
            endpoints(&config, "example.com/teams/app"),
            vec![endpoint("a.example.net", "teams/app", false, false)]
        );
        assert_eq!(
            endpoints(&config, "example.com:5000/team/app"),
            vec![endpoint("example.com:5000", "team/app", false, false)]
        );
    }

    #[test]
    fn wildcard_prefix_matches_subdomains() {
        let config = config(
            r#"
            [[registry]]
            prefix = "*.internal.test"
            insecure = true

            [[registry.mirror]]
            location = "cache.local:5000"
            "#,
        );
        assert_eq!(
            endpoints(&config, "a.internal.test/app"),
            vec![
                endpoint("cache.local:5000", "app", false, true),
                endpoint("a.internal.test", "app", true, false),
            ]
        );
        assert_eq!(
            endpoints(&config, "internal.test/app"),
            vec![endpoint("internal.test", "app", false, false)]
        );
    }

    #[test]
    fn mirror_selection_follows_digest_settings() {
        let config = config(
            r#"
            [[registry]]
            prefix = "quay.io"
            mirror-by-digest-only = true
            [[registry.mirror]]
            location = "m1.test"

            [[registry]]
            prefix = "ghcr.io"
            [[registry.mirror]]
            location = "tags.test"
            pull-from-mirror = "tag-only"
            [[registry.mirror]]
            location = "digests.test"
            pull-from-mirror = "digest-only"
            "#,
        );
        let digest = "@sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7";
        let registries = |reference: &str| -> Vec<String> {
            endpoints(&config, reference)
                .into_iter()
                .map(|e| e.registry)
                .collect()
        };
        assert_eq!(registries("quay.io/a/b:1"), ["quay.io"]);
        assert_eq!(
            registries(&format!("quay.io/a/b{digest}")),
            ["m1.test", "quay.io"]
        );
        assert_eq!(registries("ghcr.io/a/b:1"), ["tags.test", "ghcr.io"]);
        assert_eq!(
            registries(&format!("ghcr.io/a/b{digest}")),
            ["digests.test", "ghcr.io"]
        );
    }

    #[test]
    fn loopback_default_can_be_turned_off() {
        let config = config(
            r#"
            [[registry]]
            location = "127.0.0.1:5002"
            insecure = false
            "#,
        );
        assert_eq!(
            endpoints(&config, "127.0.0.1:5002/library/busybox"),
            vec![endpoint("127.0.0.1:5002", "library/busybox", false, false)]
        );
    }

    #[test]
    fn unknown_keys_are_listed_and_ignored() {
        let config = config(
            r#"
            short-name-mode = "enforcing"
            unqualified-serach-registries = ["docker.io"]

            [aliases]
            "busybox" = "docker.io/library/busybox"

            [[registry]]
            prefix = "docker.io"
            loaction = "127.0.0.1:5000"

            [[registry.mirror]]
            location = "127.0.0.1:5001"
            insecur = true
            "#,
        );
        assert_eq!(
            config.unknown_keys(),
            [
                "/test/registries.conf: unqualified-serach-registries",
                "/test/registries.conf: registry[0].loaction",
                "/test/registries.conf: registry[0].mirror[0].insecur",
            ]
        );
        assert_eq!(
            endpoints(&config, "busybox"),
            vec![
                endpoint("127.0.0.1:5001", "library/busybox", true, true),
                endpoint("docker.io", "library/busybox", false, false),
            ]
        );
    }

    #[test]
    fn blocked_registry_names_the_file() {
        let config = config(
            r#"
            [[registry]]
            prefix = "docker.io/library/evil"
            blocked = true
            "#,
        );
        let error = config
            .endpoints(&Reference::parse("evil:1").unwrap())
            .unwrap_err();
        assert!(matches!(error, RegistryConfigError::Blocked { .. }));
        let message = error.to_string();
        assert!(message.contains("/test/registries.conf"), "{message}");
        assert!(message.contains("docker.io/library/evil:1"), "{message}");
        assert!(endpoints(&config, "python").len() == 1);
    }

    #[test]
    fn version_one_tables_are_read() {
        let config = config(
            r#"
            [registries.search]
            registries = ["docker.io"]
            [registries.insecure]
            registries = ["reg.test:5000"]
            [registries.block]
            registries = ["bad.test"]
            "#,
        );
        assert!(endpoints(&config, "reg.test:5000/a")[0].insecure);
        assert!(matches!(
            config.endpoints(&Reference::parse("bad.test/a").unwrap()),
            Err(RegistryConfigError::Blocked { .. })
        ));
    }

    #[test]
    fn invalid_entries_are_rejected() {
        let cases = [
            "[[registry]]\ninsecure = true",
            "[[registry]]\nprefix = \"a.test\"\nlocation = \"https://b.test\"",
            "[[registry]]\nprefix = \"a.test/x:tag\"",
            "[[registry]]\nprefix = \"*.a.test\"\nlocation = \"b.test\"",
            "[[registry]]\nprefix = \"a.test\"\n[[registry.mirror]]\nlocation = \"m.test\"\npull-from-mirror = \"sometimes\"",
        ];
        for text in cases {
            let result = RegistriesConfig::from_toml(text, Path::new("/x.conf"));
            assert!(
                matches!(result, Err(RegistryConfigError::InvalidEntry { .. })),
                "{text:?} gave {result:?}"
            );
        }
        let mixed = "[registries.insecure]\nregistries = []\n[[registry]]\nprefix = \"a.test\"";
        assert!(matches!(
            RegistriesConfig::from_toml(mixed, Path::new("/x.conf")),
            Err(RegistryConfigError::MixedVersions { .. })
        ));
        assert!(matches!(
            RegistriesConfig::from_toml("[[registry]\n", Path::new("/x.conf")),
            Err(RegistryConfigError::Parse { .. })
        ));
    }

    #[test]
    fn drop_ins_override_by_prefix_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("registries.conf");
        fs::write(
            &main,
            "[[registry]]\nprefix = \"a.test\"\ninsecure = true\n[[registry]]\nprefix = \"b.test\"\nblocked = true\n",
        )
        .unwrap();
        let drop_ins = dir.path().join("registries.conf.d");
        fs::create_dir(&drop_ins).unwrap();
        fs::write(
            drop_ins.join("20-late.conf"),
            "[[registry]]\nprefix = \"a.test\"\nlocation = \"late.test\"\n",
        )
        .unwrap();
        fs::write(
            drop_ins.join("10-early.conf"),
            "[[registry]]\nprefix = \"a.test\"\nlocation = \"early.test\"\n",
        )
        .unwrap();
        fs::write(drop_ins.join("ignored.txt"), "not toml [").unwrap();

        let mut config = RegistriesConfig::from_file(&main).unwrap();
        config.merge_drop_ins(&drop_in_dir(&main)).unwrap();

        assert_eq!(
            endpoints(&config, "a.test/app"),
            vec![endpoint("late.test", "app", false, false)]
        );
        assert!(config
            .endpoints(&Reference::parse("b.test/app").unwrap())
            .is_err());
        assert_eq!(config.files().len(), 3);
    }

    #[test]
    fn load_follows_file_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let write = |relative: &str, text: &str| {
            let path = dir.path().join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            path
        };
        let entry = |prefix: &str| format!("[[registry]]\nprefix = \"{prefix}\"\n");
        let explicit = write("explicit.conf", &entry("explicit.test"));
        write("explicit.conf.d/a.conf", &entry("explicit-drop-in.test"));
        let system = write("etc/registries.conf", &entry("system.test"));
        write(
            "etc/registries.conf.d/a.conf",
            &entry("system-drop-in.test"),
        );
        write(
            "home/.config/containers/registries.conf.d/b.conf",
            &entry("user-drop-in.test"),
        );

        let home = dir.path().join("home");
        let config_home = dir.path().join("config");
        let load = |pairs: Vec<(&str, &Path)>| {
            let config = RegistriesConfig::load_with(
                |name| {
                    pairs
                        .iter()
                        .find(|(key, _)| *key == name)
                        .map(|(_, value)| value.as_os_str().to_owned())
                },
                &system,
            )
            .unwrap();
            let prefixes: Vec<String> = config.entries().iter().map(|e| e.prefix.clone()).collect();
            prefixes
        };

        assert_eq!(
            load(vec![(REGISTRIES_CONF_ENV, &explicit), ("HOME", &home)]),
            ["explicit.test", "explicit-drop-in.test"]
        );
        assert_eq!(
            load(vec![("HOME", &home)]),
            ["system.test", "system-drop-in.test", "user-drop-in.test"]
        );

        write("config/containers/registries.conf", &entry("user.test"));
        write(
            "config/containers/registries.conf.d/c.conf",
            &entry("user-config-drop-in.test"),
        );
        assert_eq!(
            load(vec![("HOME", &home), ("XDG_CONFIG_HOME", &config_home)]),
            ["user.test", "user-config-drop-in.test"]
        );
    }

    #[test]
    fn loopback_detection() {
        for registry in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:80",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback_registry(registry), "{registry}");
        }
        for registry in ["docker.io", "10.0.0.1:5000", "[fe80::1]", "localhost.test"] {
            assert!(!is_loopback_registry(registry), "{registry}");
        }
    }
}
