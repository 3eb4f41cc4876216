//! Compose files: parsing, validation and conversion into plain typed data.
//!
//! mayfly reads the subset of the Compose Specification that describes what to run:
//!
//! - top level: `name`, `services`, `configs` (`content`, `file` or `environment`), and
//!   `version`, which is obsolete and accepted without a warning;
//! - per service: `image`, `platform`, `command`, `entrypoint`, `environment`, `env_file`,
//!   `working_dir`, `user`, `expose`, `ports`, `healthcheck`, `depends_on`, `links`,
//!   `volumes` (bind and tmpfs), `tmpfs` and `configs`.
//!
//! Values are interpolated first (`${VAR:-default}` and the other forms) from the process
//! environment and then the `.env` file next to the Compose file, as in Compose. Every other key becomes a [`ComposeWarning`] and is never dropped silently,
//! except `x-` extension keys, which the specification says to skip without a word. Named
//! and anonymous volumes are skipped with a warning, so a database keeps its data only as
//! long as its container. `build`-only services, `extends` and `include` are errors.

mod configs;
mod context;
mod dotenv;
mod error;
mod graph;
mod health;
mod interpolate;
mod known_keys;
mod model;
mod mounts;
mod ports;
mod project;
mod service;
mod units;
mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use error::{ComposeError, Location};
pub use model::{
    ComposePort, ComposeProject, ComposeService, ComposeWarning, ConfigFile, Dependency,
    DependencyCondition, Mount,
};

/// The names looked for by [`find_default_file`], in order.
pub const DEFAULT_FILE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Returns the first of [`DEFAULT_FILE_NAMES`] that exists in `dir`.
pub fn find_default_file(dir: &Path) -> Result<PathBuf, ComposeError> {
    DEFAULT_FILE_NAMES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| ComposeError::NotFound {
            dir: dir.to_owned(),
            searched: DEFAULT_FILE_NAMES.to_vec(),
        })
}

impl ComposeProject {
    /// Reads and parses the Compose file at `path`, interpolating from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Self, ComposeError> {
        let source = std::fs::read_to_string(path).map_err(|source| ComposeError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str(&source, path)
    }

    /// Parses `source` as the text of the Compose file `file`, interpolating from the
    /// process environment. `file` names the file in messages and its directory anchors
    /// relative paths. `file` itself is not read, but the `.env`, `env_file` and `file:`
    /// config files next to it are.
    pub fn from_str(source: &str, file: &Path) -> Result<Self, ComposeError> {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        Self::parse(source, file, &env)
    }

    /// Parses `source` like [`ComposeProject::from_str`], with `env` in place of the
    /// process environment. The `.env` file next to `file` still applies.
    pub fn parse(
        source: &str,
        file: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Self, ComposeError> {
        let parent = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let dir = std::path::absolute(parent).map_err(|source| ComposeError::Read {
            path: parent.to_owned(),
            source,
        })?;
        project::parse(source, file, &dir, env)
    }

    /// Returns the service `name`, or an error that lists the services of the file.
    pub fn service(&self, name: &str) -> Result<&ComposeService, ComposeError> {
        self.services
            .get(name)
            .ok_or_else(|| ComposeError::UnknownRootService {
                file: self.file.clone(),
                service: name.to_owned(),
                known: self.services.keys().cloned().collect(),
            })
    }

    /// Returns `roots` and every service they depend on through `depends_on` or `links`,
    /// each once, dependencies first. Empty `roots` means every service.
    pub fn dependency_order(&self, roots: &[&str]) -> Result<Vec<String>, ComposeError> {
        if roots.is_empty() {
            let all: Vec<&str> = self.services.keys().map(String::as_str).collect();
            return graph::start_order(&self.file, &self.services, &all);
        }
        graph::start_order(&self.file, &self.services, roots)
    }
}
