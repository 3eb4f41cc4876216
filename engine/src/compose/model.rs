//! The typed result of loading a Compose file: plain data that callers turn into container
//! definitions. Nothing here starts anything.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::definition::Protocol;
use crate::health_check::HealthCheck;

/// A loaded Compose file.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposeProject {
    /// `COMPOSE_PROJECT_NAME`, else the top-level `name`, else the file's directory name
    /// reduced to lowercase letters, digits, `_` and `-`.
    pub name: String,
    /// The Compose file, as given to the loader.
    pub file: PathBuf,
    /// The absolute directory of the Compose file, against which relative paths resolve.
    pub dir: PathBuf,
    pub services: BTreeMap<String, ComposeService>,
    /// Keys and values that mayfly read but does not act on, each reported once, for the
    /// caller to show.
    pub warnings: Vec<ComposeWarning>,
}

/// One service of a Compose file.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposeService {
    pub name: String,
    pub image: String,
    /// `platform` as OS[/ARCH[/VARIANT]].
    pub platform: Option<String>,
    /// `None` keeps the image's command; `Some(vec![])` clears it. Compose also drops the
    /// image's command when `entrypoint` is set.
    pub command: Option<Vec<String>>,
    /// `None` keeps the image's entrypoint; `Some(vec![])` clears it.
    pub entrypoint: Option<Vec<String>>,
    /// Variables from `env_file`, then `environment` (which wins), interpolated. A name
    /// given without a value took its value from mayfly's environment, or was left out when
    /// that variable is not set.
    pub environment: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub expose: Vec<(u16, Protocol)>,
    pub ports: Vec<ComposePort>,
    /// `None` when the file gives no check, so the image's HEALTHCHECK applies. A check
    /// with `disable: true` or test `NONE` is `Some` with `HealthTest::None`.
    pub healthcheck: Option<HealthCheck>,
    pub depends_on: Vec<Dependency>,
    /// Linked services as (service, alias); the alias is the service name when not given.
    pub links: Vec<(String, String)>,
    /// Bind and tmpfs mounts from `volumes` and `tmpfs`, in file order.
    pub mounts: Vec<Mount>,
    /// Files from `configs`, to be written into the container.
    pub files: Vec<ConfigFile>,
}

/// A published port. Compose binds to 0.0.0.0 when no address is given, but the address
/// stays `None` here so that the caller applies its own default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComposePort {
    pub host_ip: Option<IpAddr>,
    /// `None` lets the caller pick a free host port.
    pub published: Option<u16>,
    pub target: u16,
    pub protocol: Protocol,
}

/// One `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub condition: DependencyCondition,
    /// With `required: false` Compose only warns when the dependency fails to start.
    pub required: bool,
    /// With `restart: true` Compose restarts this service after it restarts the dependency.
    pub restart: bool,
}

/// When a dependency counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyCondition {
    /// `service_started`, also the short syntax.
    Started,
    /// `service_healthy`: its health check passed.
    Healthy,
    /// `service_completed_successfully`: it exited with status 0.
    CompletedSuccessfully,
}

/// A mount from `volumes` or `tmpfs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    Bind {
        /// Absolute; relative paths in the file are resolved against its directory.
        source: PathBuf,
        target: String,
        read_only: bool,
        /// Create `source` as a directory when it is missing, as Compose does by default.
        create_host_path: bool,
    },
    Tmpfs {
        target: String,
        /// Mount options such as `size=67108864` or `mode=1777`.
        options: Vec<String>,
    },
}

/// A file from a config: its path in the container, its text and its permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub target: String,
    pub content: String,
    /// 0o444 unless the file sets `mode`.
    pub mode: u32,
}

/// Something in the file that mayfly reads but does not act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComposeWarning {
    /// A Compose key or value that mayfly does not implement, with the reason when the
    /// key alone does not explain it.
    Ignored {
        key: String,
        reason: Option<&'static str>,
    },
    /// A key that the Compose Specification does not define, often a misspelling, with the
    /// defined key nearest to it when one is close.
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    /// A variable without a default that is not set: Compose substitutes an empty string.
    UnsetVariable { key: String, variable: String },
}

impl fmt::Display for ComposeWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComposeWarning::Ignored { key, reason: None } => {
                write!(f, "{key} is ignored by mayfly")
            }
            ComposeWarning::Ignored {
                key,
                reason: Some(reason),
            } => write!(f, "{key} is ignored by mayfly: {reason}"),
            ComposeWarning::UnknownKey {
                key,
                suggestion: Some(suggestion),
            } => write!(
                f,
                "{key} is not a Compose key and is ignored; did you mean {suggestion}?"
            ),
            ComposeWarning::UnknownKey {
                key,
                suggestion: None,
            } => write!(
                f,
                "{key} is not a Compose key and is ignored; check its spelling"
            ),
            ComposeWarning::UnsetVariable { key, variable } => write!(
                f,
                "{key}: variable {variable} is not set, so an empty string is used"
            ),
        }
    }
}
