//! Registry credentials in the files Podman and Docker keep: containers-auth.json(5) and
//! `~/.docker/config.json`, both an `auths` map whose `auth` values are base64 `user:password`.
//!
//! Files are searched in the order containers-auth.json(5) gives, and the first file with an
//! entry for the registry wins:
//!
//! 1. the primary file: `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`,
//!    else (no runtime directory, as after `su`) `$XDG_CONFIG_HOME/containers/auth.json`;
//! 2. `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config/containers/auth.json`);
//! 3. `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`).
//!
//! `mayfly login` and `logout` write only the primary file. Inside a file the most specific
//! key wins: `host/ns/repo`, then `host/ns`, then `host`. Keys written by Docker as
//! `https://host/v1/` are read as `host`.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

/// Environment variable that names the primary auth file, as in Podman.
pub const AUTH_FILE_ENV: &str = "REGISTRY_AUTH_FILE";

/// Errors from reading or writing auth files.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("failed to read auth file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid auth file {path}: expected a JSON object with an \"auths\" object")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("invalid credentials for {key:?} in {path}: the \"auth\" value must be base64 of user:password")]
    InvalidEntry { path: PathBuf, key: String },

    #[error("failed to write auth file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid registry {key:?} for login: give host[:port] or host[:port]/repository, without a URL scheme")]
    InvalidKey { key: String },

    #[error("no auth file location: set REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR or HOME")]
    NoLocation,
}

/// A user name and password. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Encodes the pair as the `auth` value of an auth file (base64 of `user:password`).
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }

    /// Decodes an `auth` value; returns `None` when it is not base64 of `user:password`.
    pub fn decode(auth: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (username, password) = text.split_once(':')?;
        Some(Self::new(username, password))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The auth files to search and the one file that login and logout change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFiles {
    read: Vec<PathBuf>,
    primary: Option<PathBuf>,
}

impl AuthFiles {
    /// Selects the files from the environment, in the order of the module documentation.
    pub fn from_env() -> Self {
        Self::from_variables(|name| std::env::var_os(name))
    }

    /// Selects the files from environment variables that `lookup` returns.
    pub fn from_variables(lookup: impl Fn(&str) -> Option<OsString>) -> Self {
        let var = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let home = var("HOME").map(PathBuf::from);
        let config_home = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|home| home.join(".config")));
        let config_file = config_home.map(|dir| dir.join("containers/auth.json"));

        let primary = var(AUTH_FILE_ENV)
            .map(PathBuf::from)
            .or_else(|| {
                var("XDG_RUNTIME_DIR").map(|dir| PathBuf::from(dir).join("containers/auth.json"))
            })
            .or_else(|| config_file.clone());
        let docker_file = var("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| home.map(|home| home.join(".docker")))
            .map(|dir| dir.join("config.json"));

        let mut read = Vec::new();
        for path in [primary.clone(), config_file, docker_file]
            .into_iter()
            .flatten()
        {
            if !read.contains(&path) {
                read.push(path);
            }
        }
        Self { read, primary }
    }

    /// Uses one file for reading and writing, like `--authfile`.
    pub fn with_file(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            read: vec![path.clone()],
            primary: Some(path),
        }
    }

    /// Uses no files: every request is anonymous.
    pub fn none() -> Self {
        Self {
            read: Vec::new(),
            primary: None,
        }
    }

    /// Files searched for credentials, in order.
    pub fn read_paths(&self) -> &[PathBuf] {
        &self.read
    }

    /// File that `login` and `logout` change.
    pub fn primary_path(&self) -> Option<&Path> {
        self.primary.as_deref()
    }

    /// Finds credentials for `repository` on `registry` (`host[:port]`). Missing files are
    /// skipped, but an unreadable or invalid file is an error.
    pub fn credentials(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Credentials>, AuthError> {
        let registry = normalise_registry(registry);
        let mut keys = vec![registry.to_owned()];
        let mut namespace = registry.to_owned();
        for component in repository.split('/').filter(|c| !c.is_empty()) {
            namespace.push('/');
            namespace.push_str(component);
            keys.push(namespace.clone());
        }
        keys.reverse();

        for path in &self.read {
            let Some(auths) = read_auths(path)? else {
                continue;
            };
            for key in &keys {
                if let Some(entry) = find_entry(&auths, key) {
                    return decode_entry(path, key, entry).map(Some);
                }
            }
        }
        Ok(None)
    }

    /// Stores credentials for `key` (`host[:port]` or `host[:port]/repository`) in the primary
    /// file and returns that file's path. Other entries are kept, and a new file gets mode 0600.
    pub fn login(&self, key: &str, credentials: &Credentials) -> Result<PathBuf, AuthError> {
        let key = login_key(key)?;
        let path = self.primary.clone().ok_or(AuthError::NoLocation)?;
        let mut document = read_document(&path)?.unwrap_or_default();

        let auths = auths_object(&mut document);
        remove_equivalent_keys(auths, &key);
        let mut entry = Map::new();
        entry.insert("auth".to_owned(), Value::String(credentials.encode()));
        auths.insert(key.clone(), Value::Object(entry));

        write_document(&path, &document)?;
        tracing::info!(registry = %key, path = %path.display(), "stored registry credentials");
        Ok(path)
    }

    /// Removes the entry for `key` from the primary file; returns whether there was one.
    pub fn logout(&self, key: &str) -> Result<bool, AuthError> {
        let key = login_key(key)?;
        let path = self.primary.clone().ok_or(AuthError::NoLocation)?;
        let Some(mut document) = read_document(&path)? else {
            return Ok(false);
        };

        let removed = remove_equivalent_keys(auths_object(&mut document), &key);
        if removed {
            write_document(&path, &document)?;
            tracing::info!(registry = %key, path = %path.display(), "removed registry credentials");
        }
        Ok(removed)
    }
}

/// Maps Docker Hub's other host names to `docker.io`, the name references use.
fn normalise_registry(registry: &str) -> &str {
    match registry {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    }
}

/// Returns the key an auth-file key stands for: `https://index.docker.io/v1/` is `docker.io`,
/// `http://host:5000` is `host:5000`, and a namespaced key stays as it is.
fn normalise_key(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"));
    match without_scheme {
        // Keys with a scheme come from Docker, whose keys are URLs of a whole registry.
        Some(rest) => normalise_registry(rest.split('/').next().unwrap_or(rest)).to_owned(),
        None => {
            let (host, path) = key.split_once('/').unwrap_or((key, ""));
            let host = normalise_registry(host);
            if path.is_empty() {
                host.to_owned()
            } else {
                format!("{host}/{path}")
            }
        }
    }
}

fn login_key(key: &str) -> Result<String, AuthError> {
    let valid = !key.is_empty()
        && !key.contains("://")
        && !key.chars().any(char::is_whitespace)
        && !key.starts_with('/')
        && !key.ends_with('/');
    if valid {
        Ok(normalise_key(key))
    } else {
        Err(AuthError::InvalidKey {
            key: key.to_owned(),
        })
    }
}

fn find_entry<'a>(auths: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    auths.get(key).or_else(|| {
        auths
            .iter()
            .find(|(candidate, _)| normalise_key(candidate) == key)
            .map(|(_, value)| value)
    })
}

fn decode_entry(path: &Path, key: &str, entry: &Value) -> Result<Credentials, AuthError> {
    let invalid = || AuthError::InvalidEntry {
        path: path.to_owned(),
        key: key.to_owned(),
    };
    if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
        return Credentials::decode(auth).ok_or_else(invalid);
    }
    // Some tools write the pair unencoded.
    match (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        (Some(username), Some(password)) => Ok(Credentials::new(username, password)),
        _ => Err(invalid()),
    }
}

fn remove_equivalent_keys(auths: &mut Map<String, Value>, key: &str) -> bool {
    let before = auths.len();
    auths.retain(|candidate, _| normalise_key(candidate) != key);
    auths.len() != before
}

fn auths_object(document: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let auths = document
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    auths
        .as_object_mut()
        .expect("auths was just made an object")
}

/// Reads a whole auth file; `None` when it does not exist.
fn read_document(path: &Path) -> Result<Option<Map<String, Value>>, AuthError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    if text.trim().is_empty() {
        return Ok(Some(Map::new()));
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| AuthError::Parse {
            path: path.to_owned(),
            source,
        })
}

fn read_auths(path: &Path) -> Result<Option<Map<String, Value>>, AuthError> {
    let Some(mut document) = read_document(path)? else {
        return Ok(None);
    };
    match document.remove("auths") {
        Some(Value::Object(auths)) => Ok(Some(auths)),
        _ => Ok(Some(Map::new())),
    }
}

/// Replaces `path` atomically with `document`, mode 0600, creating its directory (mode 0700).
fn write_document(path: &Path, document: &Map<String, Value>) -> Result<(), AuthError> {
    let write_error = |source| AuthError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_error)?;

    // tempfile creates the file with mode 0600, so the secret is never readable by others.
    let mut file = tempfile::Builder::new()
        .prefix(".auth.json.")
        .tempfile_in(dir)
        .map_err(write_error)?;
    let mut text = serde_json::to_vec_pretty(document).expect("a JSON map always serialises");
    text.push(b'\n');
    file.write_all(&text).map_err(write_error)?;
    file.as_file().sync_all().map_err(write_error)?;
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(write_error)?;
    file.persist(path)
        .map_err(|error| write_error(error.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn encoded(user: &str, password: &str) -> String {
        Credentials::new(user, password).encode()
    }

    #[test]
    fn credentials_round_trip_through_base64() {
        let credentials = Credentials::new("mayfly", "pa:ss");
        assert_eq!(credentials.encode(), "bWF5Zmx5OnBhOnNz");
        assert_eq!(Credentials::decode("bWF5Zmx5OnBhOnNz"), Some(credentials));
        assert_eq!(Credentials::decode("not base64!"), None);
        assert_eq!(Credentials::decode("bm9jb2xvbg=="), None);
    }

    #[test]
    fn debug_hides_password() {
        let text = format!("{:?}", Credentials::new("user", "s3cret"));
        assert!(text.contains("user"));
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn key_forms_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auths = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": {"auth": encoded("hub", "1")},
                "http://reg.test:5000": {"auth": encoded("port", "2")},
                "plain.test": {"auth": encoded("plain", "3")},
                "https://url.test/v2/": {"username": "url", "password": "4"},
            }
        });
        write(&path, &auths.to_string());
        let files = AuthFiles::with_file(&path);

        let user = |registry: &str| {
            files
                .credentials(registry, "library/x")
                .unwrap()
                .map(|c| c.username)
        };
        assert_eq!(user("docker.io").as_deref(), Some("hub"));
        assert_eq!(user("registry-1.docker.io").as_deref(), Some("hub"));
        assert_eq!(user("reg.test:5000").as_deref(), Some("port"));
        assert_eq!(user("reg.test").as_deref(), None);
        assert_eq!(user("plain.test").as_deref(), Some("plain"));
        assert_eq!(user("url.test").as_deref(), Some("url"));
        assert_eq!(user("other.test"), None);
    }

    #[test]
    fn namespaced_key_wins_over_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let auths = serde_json::json!({
            "auths": {
                "quay.io": {"auth": encoded("host", "1")},
                "quay.io/team": {"auth": encoded("team", "2")},
                "quay.io/team/app": {"auth": encoded("app", "3")},
            }
        });
        write(&path, &auths.to_string());
        let files = AuthFiles::with_file(&path);
        let user = |repository: &str| {
            files
                .credentials("quay.io", repository)
                .unwrap()
                .unwrap()
                .username
        };
        assert_eq!(user("team/app"), "app");
        assert_eq!(user("team/other"), "team");
        assert_eq!(user("teams/app"), "host");
    }

    #[test]
    fn first_file_with_entry_wins() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.json");
        let second = dir.path().join("b.json");
        let missing = dir.path().join("missing.json");
        write(
            &first,
            &serde_json::json!({"auths": {"one.test": {"auth": encoded("first", "1")}}})
                .to_string(),
        );
        write(
            &second,
            &serde_json::json!({"auths": {
                "one.test": {"auth": encoded("second", "1")},
                "two.test": {"auth": encoded("second", "2")},
            }})
            .to_string(),
        );
        let files = AuthFiles {
            read: vec![missing, first, second],
            primary: None,
        };
        let user = |registry: &str| files.credentials(registry, "x").unwrap().unwrap().username;
        assert_eq!(user("one.test"), "first");
        assert_eq!(user("two.test"), "second");
    }

    #[test]
    fn invalid_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        write(&path, "{not json");
        assert!(matches!(
            AuthFiles::with_file(&path).credentials("a.test", "x"),
            Err(AuthError::Parse { .. })
        ));
        write(&path, r#"{"auths": {"a.test": {"auth": "!!"}}}"#);
        let error = AuthFiles::with_file(&path)
            .credentials("a.test", "x")
            .unwrap_err();
        assert!(matches!(error, AuthError::InvalidEntry { .. }));
        assert!(error.to_string().contains("a.test"));
    }

    #[test]
    fn login_keeps_other_entries_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/containers/auth.json");
        write(
            &path,
            r#"{"auths": {"keep.test": {"auth": "a2VlcDox"}, "https://reg.test:5000/v1/": {"auth": "b2xkOm9sZA=="}}, "credHelpers": {"x.test": "helper"}}"#,
        );
        let files = AuthFiles::with_file(&path);

        let written = files
            .login("reg.test:5000", &Credentials::new("mayfly", "secret"))
            .unwrap();
        assert_eq!(written, path);

        let document: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(document["credHelpers"]["x.test"], "helper");
        assert_eq!(document["auths"]["keep.test"]["auth"], "a2VlcDox");
        assert!(document["auths"].get("https://reg.test:5000/v1/").is_none());
        assert_eq!(
            document["auths"]["reg.test:5000"]["auth"],
            encoded("mayfly", "secret")
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            files.credentials("reg.test:5000", "any").unwrap(),
            Some(Credentials::new("mayfly", "secret"))
        );
    }

    #[test]
    fn login_creates_private_directory_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/containers/auth.json");
        let files = AuthFiles::with_file(&path);
        files
            .login(
                "127.0.0.1:5001",
                &Credentials::new("mayfly", "mayfly-secret"),
            )
            .unwrap();

        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let file_mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(file_mode, 0o600);
        assert_eq!(
            files
                .credentials("127.0.0.1:5001", "library/busybox")
                .unwrap()
                .unwrap()
                .username,
            "mayfly"
        );
    }

    #[test]
    fn logout_removes_only_that_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let files = AuthFiles::with_file(&path);
        assert!(!files.logout("a.test").unwrap());

        files.login("a.test", &Credentials::new("a", "1")).unwrap();
        files.login("b.test", &Credentials::new("b", "2")).unwrap();
        assert!(files.logout("a.test").unwrap());
        assert!(!files.logout("a.test").unwrap());

        assert_eq!(files.credentials("a.test", "x").unwrap(), None);
        assert!(files.credentials("b.test", "x").unwrap().is_some());
    }

    #[test]
    fn login_rejects_urls() {
        let files = AuthFiles::with_file("/nonexistent/auth.json");
        for key in ["https://a.test", "", "a.test/", "a test"] {
            assert!(
                matches!(
                    files.login(key, &Credentials::new("u", "p")),
                    Err(AuthError::InvalidKey { .. })
                ),
                "{key:?}"
            );
        }
    }

    #[test]
    fn environment_selects_files() {
        let files_for = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            AuthFiles::from_variables(|name| {
                pairs
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| OsString::from(value))
            })
        };

        let files = files_for(&[("HOME", "/h"), ("XDG_RUNTIME_DIR", "/run/user/1")]);
        assert_eq!(
            files.read_paths(),
            [
                PathBuf::from("/run/user/1/containers/auth.json"),
                PathBuf::from("/h/.config/containers/auth.json"),
                PathBuf::from("/h/.docker/config.json"),
            ]
        );
        assert_eq!(
            files.primary_path(),
            Some(Path::new("/run/user/1/containers/auth.json"))
        );

        let files = files_for(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/c")]);
        assert_eq!(
            files.read_paths(),
            [
                PathBuf::from("/c/containers/auth.json"),
                PathBuf::from("/h/.docker/config.json"),
            ]
        );
        assert_eq!(
            files.primary_path(),
            Some(Path::new("/c/containers/auth.json"))
        );

        let files = files_for(&[
            ("HOME", "/h"),
            ("REGISTRY_AUTH_FILE", "/x/auth.json"),
            ("XDG_RUNTIME_DIR", "/run/user/1"),
            ("DOCKER_CONFIG", "/d"),
        ]);
        assert_eq!(
            files.read_paths(),
            [
                PathBuf::from("/x/auth.json"),
                PathBuf::from("/h/.config/containers/auth.json"),
                PathBuf::from("/d/config.json"),
            ]
        );
        assert_eq!(files.primary_path(), Some(Path::new("/x/auth.json")));
    }

    #[test]
    fn none_is_anonymous() {
        let files = AuthFiles::none();
        assert_eq!(files.credentials("a.test", "x").unwrap(), None);
        assert!(matches!(
            files.login("a.test", &Credentials::new("u", "p")),
            Err(AuthError::NoLocation)
        ));
    }
}
