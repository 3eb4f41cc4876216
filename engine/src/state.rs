//! The engine's state directories and per-container directories guarded by lock files.
//!
//! Layout (all mode 0700, owned by the user):
//!
//! ```text
//! $XDG_RUNTIME_DIR/mayfly/             runtime dir (sockets); /tmp/mayfly-<uid>/ when unset
//! $XDG_DATA_HOME/mayfly/               data dir (content store of the image crate)
//! $XDG_DATA_HOME/mayfly/containers/<id>/       upper/, work/, rootfs/, hosts, resolv.conf
//! $XDG_DATA_HOME/mayfly/containers/<id>.lock   flock held by the owning engine
//! ```
//!
//! Container directories live in the data dir and not in the runtime dir because the upper
//! layer receives everything a container writes (a database's files, for example), and
//! `$XDG_RUNTIME_DIR` is usually a small tmpfs in memory. The lock file sits beside the
//! directory so that the directory can be removed and recreated while the lock is held.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Failure to prepare or clean a state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Neither the override, `$XDG_DATA_HOME` nor `$HOME` names a data directory.
    #[error("no data directory: set XDG_DATA_HOME or HOME, or pass a data directory explicitly")]
    NoDataDir,
    /// Creating a directory failed.
    #[error("failed to create directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Opening or locking a lock file failed.
    #[error("failed to lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The container directory is held by another live engine.
    #[error("container directory {path} is in use by another mayfly process; pick another id")]
    InUse { path: PathBuf },
    /// The runtime dir belongs to someone else or is open to other users.
    #[error(
        "{path} is not a private directory of this user (owner and mode 0700 expected); \
         remove it or set XDG_RUNTIME_DIR"
    )]
    NotPrivate { path: PathBuf },
    /// The container id would not make a plain file name.
    #[error(
        "invalid container id {id:?}: use 1 to 128 characters from a-z, A-Z, 0-9, '_', '-' \
         and '.', not starting with '.'"
    )]
    InvalidId { id: String },
    /// Removing a tree failed.
    #[error(
        "failed to remove {path}: {source}; if it holds files of IDs outside the current ID \
         map (left by a run with another map), remove it with the same map or as root"
    )]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Listing a directory failed.
    #[error("failed to list {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The engine's state directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDirs {
    /// Directory for sockets and other per-boot state.
    pub runtime: PathBuf,
    /// Directory for persistent data (the content store).
    pub data: PathBuf,
    /// Directory holding one subdirectory and one lock file per container.
    pub containers: PathBuf,
}

impl StateDirs {
    /// Resolves the directories from overrides, then the XDG variables, for the host user
    /// `host_uid`. Nothing is created.
    pub fn resolve(
        runtime_override: Option<&Path>,
        data_override: Option<&Path>,
        host_uid: u32,
    ) -> Result<Self, StateError> {
        let runtime = match runtime_override {
            Some(dir) => dir.to_owned(),
            None => match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
                Some(dir) => PathBuf::from(dir).join("mayfly"),
                None => PathBuf::from(format!("/tmp/mayfly-{host_uid}")),
            },
        };
        let data = match data_override {
            Some(dir) => dir.to_owned(),
            None => match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
                Some(dir) => PathBuf::from(dir).join("mayfly"),
                None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                    Some(home) => PathBuf::from(home).join(".local/share/mayfly"),
                    None => return Err(StateError::NoDataDir),
                },
            },
        };
        let containers = data.join("containers");
        Ok(Self {
            runtime,
            data,
            containers,
        })
    }

    /// Creates the directories with mode 0700 and checks that the runtime dir, which may sit
    /// in the shared `/tmp`, belongs to the caller and is private.
    pub fn create(&self) -> Result<(), StateError> {
        for dir in [&self.runtime, &self.data, &self.containers] {
            create_private_dir(dir)?;
        }
        let meta =
            std::fs::symlink_metadata(&self.runtime).map_err(|source| StateError::Create {
                path: self.runtime.clone(),
                source,
            })?;
        let private = meta.is_dir()
            && meta.uid() == nix::unistd::geteuid().as_raw()
            && meta.mode() & 0o077 == 0;
        if !private {
            return Err(StateError::NotPrivate {
                path: self.runtime.clone(),
            });
        }
        Ok(())
    }
}

/// Creates `path` and its missing parents; the last component gets mode 0700.
pub fn create_private_dir(path: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StateError::Create {
            path: path.to_owned(),
            source,
        })
}

/// Checks that a container id is safe to use as a file name.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(StateError::InvalidId { id: id.to_owned() })
    }
}

/// A container's state directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct ContainerDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: Flock<File>,
}

impl ContainerDir {
    /// Locks `<containers>/<id>.lock` and creates a fresh, empty `<containers>/<id>/`. A
    /// leftover directory of a dead run with the same id is removed first.
    pub fn create(containers: &Path, id: &str) -> Result<Self, StateError> {
        validate_id(id)?;
        let lock_path = containers.join(format!("{id}.lock"));
        let lock = lock_fresh(&lock_path)?.ok_or_else(|| StateError::InUse {
            path: containers.join(id),
        })?;

        let path = containers.join(id);
        if path.symlink_metadata().is_ok() {
            remove_tree(&path)?;
        }
        create_private_dir(&path)?;
        Ok(Self {
            path,
            lock_path,
            _lock: lock,
        })
    }

    /// Returns the directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory and the lock file, releasing the lock.
    pub fn remove(self) -> Result<(), StateError> {
        remove_tree(&self.path)?;
        match std::fs::remove_file(&self.lock_path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Remove {
                path: self.lock_path.clone(),
                source,
            }),
        }
    }
}

/// Opens and locks `path` without blocking. Returns `None` when another process holds it.
///
/// A cleaner unlinks a lock file while holding it, so after locking, the file must still be
/// the one at `path`; otherwise this retries with a new file.
fn lock_fresh(path: &Path) -> Result<Option<Flock<File>>, StateError> {
    let lock_error = |source| StateError::Lock {
        path: path.to_owned(),
        source,
    };
    loop {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(lock_error)?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => return Err(lock_error(errno.into())),
        };

        let locked = file.metadata().map_err(lock_error)?;
        match std::fs::metadata(path) {
            Ok(current) if current.ino() == locked.ino() && current.dev() == locked.dev() => {
                return Ok(Some(file))
            }
            Ok(_) => continue,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(lock_error(source)),
        }
    }
}

/// Removes the state of containers whose engine is gone: every `<id>` directory whose
/// `<id>.lock` is not held (or missing), and every lock file without a directory that nobody
/// holds. Directories of live engines are left alone. Returns the removed ids.
pub fn remove_stale(containers: &Path) -> Result<Vec<String>, StateError> {
    let entries = std::fs::read_dir(containers).map_err(|source| StateError::List {
        path: containers.to_owned(),
        source,
    })?;
    let mut ids: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| {
            name.strip_suffix(".lock")
                .map(str::to_owned)
                .unwrap_or(name)
        })
        .collect();
    ids.sort();
    ids.dedup();

    let mut removed = Vec::new();
    for id in ids {
        let lock_path = containers.join(format!("{id}.lock"));
        let Some(lock) = lock_fresh(&lock_path)? else {
            continue;
        };
        let dir = containers.join(&id);
        if dir.symlink_metadata().is_ok() {
            remove_tree(&dir)?;
        }
        // The lock file goes last, while still locked, so a concurrent creator retries.
        let _ = std::fs::remove_file(&lock_path);
        drop(lock);
        tracing::info!(container = %id, "removed state left by a dead engine");
        removed.push(id);
    }
    Ok(removed)
}

/// Removes a directory tree, including files of subordinate IDs. Inside the engine's user
/// namespace the engine is root with `CAP_DAC_OVERRIDE` over every mapped ID, so plain
/// removal works; directories without write permission (overlay's `work/work` has mode 000)
/// are first made writable as a fallback for callers outside the namespace.
pub fn remove_tree(path: &Path) -> Result<(), StateError> {
    let remove_error = |source| StateError::Remove {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            std::fs::remove_dir_all(path).map_err(remove_error)
        }
        Err(err) => Err(remove_error(err)),
    }
}

fn make_dirs_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = path.symlink_metadata() else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode() | 0o700;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.filter_map(Result::ok) {
            make_dirs_writable(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_names() {
        assert!(validate_id("web-1.test_2").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("../x").is_err());
        assert!(validate_id(".hidden").is_err());
        assert!(validate_id("a/b").is_err());
    }

    #[test]
    fn stale_dirs_removed_live_kept() {
        let root = tempfile::tempdir().unwrap();
        let live = ContainerDir::create(root.path(), "live").unwrap();
        std::fs::create_dir_all(root.path().join("dead/upper/x")).unwrap();
        std::fs::write(root.path().join("dead.lock"), "").unwrap();
        std::fs::create_dir_all(root.path().join("nolock/upper")).unwrap();

        let removed = remove_stale(root.path()).unwrap();
        assert_eq!(removed, vec!["dead".to_owned(), "nolock".to_owned()]);
        assert!(live.path().is_dir());
        assert!(!root.path().join("dead").exists());
        assert!(!root.path().join("dead.lock").exists());

        let path = live.path().to_owned();
        live.remove().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn second_lock_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let _first = ContainerDir::create(root.path(), "c1").unwrap();
        let second = ContainerDir::create(root.path(), "c1");
        assert!(matches!(second, Err(StateError::InUse { .. })));
    }
}
