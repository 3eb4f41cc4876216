//! Engine settings: `$XDG_CONFIG_HOME/mayfly/config.toml`, each key overridable by an
//! environment variable so that tests and CI can point every setting at what they set up.
//!
//! Resolve the configuration before the user-namespace bootstrap: inside the namespace the
//! process runs as uid 0, so per-user defaults such as `/tmp/mayfly-<uid>` must be computed
//! while the real uid is still visible.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Errors from reading the configuration file or an override variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read the configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "neither HOME nor {variable} is set, so mayfly cannot place its {what}; set one of them"
    )]
    NoHome {
        variable: &'static str,
        what: &'static str,
    },
}

/// The way container root file systems are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// Overlay when the kernel allows it unprivileged, otherwise a copied tree.
    Auto,
    /// Always a copied tree (slower, works everywhere).
    Copy,
}

/// The way the engine's user namespace maps IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdMapMode {
    /// Subordinate ranges from /etc/subuid and /etc/subgid when present, else a single ID.
    Auto,
    /// Only the invoking user, as root of the namespace; other owners are squashed.
    Single,
}

/// The file format: every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    storage: Option<StorageMode>,
    id_map: Option<IdMapMode>,
    subnet: Option<String>,
    health_deadline: Option<String>,
    grace_period: Option<String>,
    stop_timeout: Option<String>,
    upstream_dns: Option<Vec<String>>,
}

/// Resolved engine settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Images, layers and other persistent state (`$XDG_DATA_HOME/mayfly`).
    pub data_dir: PathBuf,
    /// Per-run state: container directories and sockets (`$XDG_RUNTIME_DIR/mayfly`).
    pub runtime_dir: PathBuf,
    pub storage: StorageMode,
    pub id_map: IdMapMode,
    /// IPv4 subnet of the network sandbox, in CIDR notation.
    pub subnet: String,
    /// Overall time a service has to become healthy.
    pub health_deadline: Duration,
    /// Time an unneeded service keeps running in case a new client binds it.
    pub grace_period: Duration,
    /// Time between SIGTERM and SIGKILL when a container is stopped.
    pub stop_timeout: Duration,
    /// Resolvers for names outside the engine's domain; empty means the host's resolv.conf.
    pub upstream_dns: Vec<String>,
    /// The file the settings came from, when one existed.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Loads the configuration file (`$MAYFLY_CONFIG`, else `$XDG_CONFIG_HOME/mayfly/config.toml`)
    /// and applies the `MAYFLY_*` environment overrides.
    pub fn load() -> Result<Self, ConfigError> {
        let path = match std::env::var_os("MAYFLY_CONFIG") {
            Some(path) => Some(PathBuf::from(path)),
            None => xdg_dir("XDG_CONFIG_HOME", ".config")
                .ok()
                .map(|dir| dir.join("mayfly/config.toml")),
        };
        // A file named by MAYFLY_CONFIG must exist; the default location is optional.
        let named = std::env::var_os("MAYFLY_CONFIG").is_some();
        let file = match &path {
            Some(path) if path.exists() || named => read_file(path)?,
            _ => ConfigFile::default(),
        };
        let source = path.filter(|path| path.exists());
        Self::resolve(file, source, &|key| std::env::var(key).ok())
    }

    fn resolve(
        file: ConfigFile,
        source: Option<PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let data_dir = match env("MAYFLY_DATA_DIR").map(PathBuf::from).or(file.data_dir) {
            Some(dir) => dir,
            None => xdg_dir("XDG_DATA_HOME", ".local/share")?.join("mayfly"),
        };
        let runtime_dir = match env("MAYFLY_RUNTIME_DIR")
            .map(PathBuf::from)
            .or(file.runtime_dir)
        {
            Some(dir) => dir,
            None => default_runtime_dir(),
        };

        let storage = match env("MAYFLY_STORAGE") {
            Some(value) => parse_enum("MAYFLY_STORAGE", &value)?,
            None => file.storage.unwrap_or(StorageMode::Auto),
        };
        let id_map = match env("MAYFLY_ID_MAP") {
            Some(value) => parse_enum("MAYFLY_ID_MAP", &value)?,
            None => file.id_map.unwrap_or(IdMapMode::Auto),
        };

        let subnet = env("MAYFLY_SUBNET")
            .or(file.subnet)
            .unwrap_or_else(|| "10.89.0.0/24".to_owned());
        let deadline_variable = env("MAYFLY_HEALTH_DEADLINE");
        let (deadline_key, deadline_text) = match &deadline_variable {
            Some(text) => ("MAYFLY_HEALTH_DEADLINE".to_owned(), text.clone()),
            None => (
                "health-deadline in the configuration file".to_owned(),
                file.health_deadline.clone().unwrap_or_default(),
            ),
        };
        let health_deadline = duration_setting(
            ("MAYFLY_HEALTH_DEADLINE", deadline_variable),
            ("health-deadline", file.health_deadline),
            Duration::from_secs(60),
        )?;
        // A zero deadline would fail every service before it could start.
        if health_deadline.is_zero() {
            return Err(ConfigError::InvalidValue {
                key: deadline_key,
                value: deadline_text,
                reason: "it must be more than zero".to_owned(),
            });
        }
        let grace_period = duration_setting(
            ("MAYFLY_GRACE_PERIOD", env("MAYFLY_GRACE_PERIOD")),
            ("grace-period", file.grace_period),
            Duration::from_secs(2),
        )?;
        let stop_timeout = duration_setting(
            ("MAYFLY_STOP_TIMEOUT", env("MAYFLY_STOP_TIMEOUT")),
            ("stop-timeout", file.stop_timeout),
            Duration::from_secs(10),
        )?;
        let upstream_dns = match env("MAYFLY_DNS_UPSTREAM") {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect(),
            None => file.upstream_dns.unwrap_or_default(),
        };

        Ok(Self {
            data_dir,
            runtime_dir,
            storage,
            id_map,
            subnet,
            health_deadline,
            grace_period,
            stop_timeout,
            upstream_dns,
            source,
        })
    }
}

fn read_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

fn xdg_dir(variable: &'static str, fallback_under_home: &str) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = std::env::var_os(variable).filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(fallback_under_home)),
        None => Err(ConfigError::NoHome {
            variable,
            what: "files",
        }),
    }
}

/// `$XDG_RUNTIME_DIR/mayfly`, or a private directory under `/tmp` when the variable is unset,
/// as it is after `su`.
fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("mayfly"),
        None => PathBuf::from(format!("/tmp/mayfly-{}", nix::unistd::getuid())),
    }
}

fn parse_enum<T: for<'de> Deserialize<'de>>(key: &str, value: &str) -> Result<T, ConfigError> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value))
        .map_err(|error| ConfigError::InvalidValue {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: error.to_string(),
        })
}

/// Picks the environment variable over the file's key, and names whichever gave a bad value.
fn duration_setting(
    variable: (&str, Option<String>),
    file_key: (&str, Option<String>),
    default: Duration,
) -> Result<Duration, ConfigError> {
    let (key, value) = match variable {
        (name, Some(value)) => (name.to_owned(), Some(value)),
        _ => (
            format!("{} in the configuration file", file_key.0),
            file_key.1,
        ),
    };
    match value {
        Some(text) => parse_duration(&text).ok_or_else(|| ConfigError::InvalidValue {
            key,
            value: text,
            reason: "expected a number with a unit, such as 500ms, 30s or 2m".to_owned(),
        }),
        None => Ok(default),
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve_with(file: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(file).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Config::resolve(file, None, &|key| env.get(key).cloned())
    }

    #[test]
    fn config_defaults() {
        let config = resolve_with("", &[("MAYFLY_DATA_DIR", "/d")]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/d"));
        assert_eq!(config.storage, StorageMode::Auto);
        assert_eq!(config.id_map, IdMapMode::Auto);
        assert_eq!(config.health_deadline, Duration::from_secs(60));
        assert_eq!(config.subnet, "10.89.0.0/24");
    }

    #[test]
    fn config_env_overrides_file() {
        let config = resolve_with(
            "storage = \"auto\"\nhealth-deadline = \"5s\"\nupstream-dns = [\"127.0.0.53\"]",
            &[
                ("MAYFLY_DATA_DIR", "/d"),
                ("MAYFLY_STORAGE", "copy"),
                ("MAYFLY_DNS_UPSTREAM", "127.0.0.1:5353, 127.0.0.2"),
            ],
        )
        .unwrap();
        assert_eq!(config.storage, StorageMode::Copy);
        assert_eq!(config.health_deadline, Duration::from_secs(5));
        assert_eq!(config.upstream_dns, vec!["127.0.0.1:5353", "127.0.0.2"]);
    }

    #[test]
    fn config_rejects_bad_values() {
        let error =
            resolve_with("", &[("MAYFLY_DATA_DIR", "/d"), ("MAYFLY_STORAGE", "fast")]).unwrap_err();
        assert!(error.to_string().contains("MAYFLY_STORAGE"), "{error}");
        let error = resolve_with(
            "",
            &[("MAYFLY_DATA_DIR", "/d"), ("MAYFLY_GRACE_PERIOD", "soon")],
        )
        .unwrap_err();
        assert!(error.to_string().contains("soon"), "{error}");

        let error = resolve_with(
            "",
            &[("MAYFLY_DATA_DIR", "/d"), ("MAYFLY_HEALTH_DEADLINE", "0s")],
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("MAYFLY_HEALTH_DEADLINE") && message.contains("\"0s\""),
            "{message}"
        );
        assert!(message.contains("more than zero"), "{message}");
        let error =
            resolve_with("health-deadline = \"0ms\"", &[("MAYFLY_DATA_DIR", "/d")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("health-deadline in the configuration file"),
            "{error}"
        );
    }

    #[test]
    fn config_file_errors_name_the_key() {
        let error =
            resolve_with("stop-timeout = \"5 minutes\"", &[("MAYFLY_DATA_DIR", "/d")]).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("stop-timeout in the configuration file"),
            "{message}"
        );
        assert!(!message.contains("MAYFLY_STOP_TIMEOUT"), "{message}");
    }

    #[test]
    fn duration_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
