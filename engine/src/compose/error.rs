//! Errors from loading a Compose file. Each one names the file, the line and the key path
//! (such as `services.web.ports[0]`) and the fix.

use std::fmt;
use std::path::PathBuf;

/// The place of a value in a Compose file: the file, the 1-based line and the key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub key: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.key)
    }
}

/// Errors from finding, reading, parsing and validating a Compose file.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(
        "no Compose file found in {}: looked for {}; create one there or pass -f FILE",
        dir.display(),
        searched.join(", ")
    )]
    NotFound {
        dir: PathBuf,
        searched: Vec<&'static str>,
    },

    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} is not valid YAML", file.display())]
    Yaml {
        file: PathBuf,
        #[source]
        source: saphyr::ScanError,
    },

    #[error(
        "{} holds {count} YAML documents; mayfly reads one, so remove the `---` separators",
        file.display()
    )]
    MultipleDocuments { file: PathBuf, count: usize },

    #[error(
        "{} has no services{}; add a `services:` mapping with at least one service",
        file.display(),
        misspelt.as_ref().map(|key| format!(" (is `{key}` a misspelling of `services`?)")).unwrap_or_default()
    )]
    NoServices {
        file: PathBuf,
        /// A top-level key close to `services`.
        misspelt: Option<String>,
    },

    #[error("{at}: expected {expected}, found {found}")]
    WrongType {
        at: Location,
        expected: &'static str,
        found: &'static str,
    },

    #[error("{at}: invalid value {value:?}: expected {expected}")]
    InvalidValue {
        at: Location,
        value: String,
        expected: &'static str,
    },

    #[error("{at}: invalid port {value:?}: {reason}")]
    InvalidPort {
        at: Location,
        value: String,
        reason: &'static str,
    },

    #[error("{at}: {source}")]
    InvalidDuration {
        at: Location,
        #[source]
        source: crate::health_check::HealthCheckError,
    },

    #[error("{at}: {first} and {second} cannot both be set; keep one of them")]
    ConflictingKeys {
        at: Location,
        first: String,
        second: String,
    },

    #[error("{at}: {source}")]
    InvalidHealthTest {
        at: Location,
        #[source]
        source: crate::health_check::HealthCheckError,
    },

    #[error("{at}: {key} is required; add it")]
    MissingKey { at: Location, key: &'static str },

    #[error("{at}: service {service:?} has no image; add `image:` naming the image to run")]
    MissingImage { at: Location, service: String },

    #[error(
        "{at}: service {service:?} has only `build:`, and mayfly does not build images; \
         build and push the image with another tool, then name it with `image:`"
    )]
    BuildNotSupported { at: Location, service: String },

    #[error("{at}: {what} is not supported by mayfly; {hint}")]
    Unsupported {
        at: Location,
        what: String,
        hint: &'static str,
    },

    #[error(
        "{origin}: invalid project name {name:?}: use lowercase letters, digits, `_` and `-`, \
         starting with a letter or digit"
    )]
    InvalidProjectName { origin: String, name: String },

    #[error("{at}: invalid service name {name:?}: use letters, digits, `.`, `_` and `-`")]
    InvalidServiceName { at: Location, name: String },

    #[error(
        "{at}: service {service:?} is not defined in this file (services: {}); \
         fix the name or add the service",
        known.join(", ")
    )]
    UnknownService {
        at: Location,
        service: String,
        known: Vec<String>,
    },

    #[error(
        "service {service:?} is not defined in {} (services: {}); pick one of those",
        file.display(),
        known.join(", ")
    )]
    UnknownRootService {
        file: PathBuf,
        service: String,
        known: Vec<String>,
    },

    #[error(
        "{at}: config {config:?} is not defined under the top-level `configs:`; define it \
         there with `content:`, `file:` or `environment:`"
    )]
    UnknownConfig { at: Location, config: String },

    #[error(
        "{}: services depend on each other in a cycle: {}; remove one of these \
         depends_on or links entries",
        file.display(),
        cycle.join(" -> ")
    )]
    DependencyCycle { file: PathBuf, cycle: Vec<String> },

    #[error("{at}: variable {variable} is required but {state}: {message}")]
    RequiredVariable {
        at: Location,
        variable: String,
        state: &'static str,
        message: String,
    },

    #[error("{at}: invalid interpolation in {value:?}: {reason}; write `$$` for a literal `$`")]
    InvalidInterpolation {
        at: Location,
        value: String,
        reason: &'static str,
    },

    #[error("{at}: variable {variable} is not set; export it before running mayfly")]
    UnsetVariable { at: Location, variable: String },

    #[error("{}:{line}: invalid env file line: {reason}", path.display())]
    InvalidEnvFile {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },

    #[error("{at}: failed to read env file {}; create it or set `required: false`", path.display())]
    ReadEnvFile {
        at: Location,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{at}: failed to read config file {}", path.display())]
    ReadConfigFile {
        at: Location,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{at}: config file {} is not UTF-8 text; mayfly only copies text configs", path.display())]
    BinaryConfigFile { at: Location, path: PathBuf },

    #[error("{at}: cannot split {value:?} into words; close its quotes or write it as a list")]
    InvalidCommand {
        at: Location,
        value: String,
        #[source]
        source: shell_words::ParseError,
    },
}
