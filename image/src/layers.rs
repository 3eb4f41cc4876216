//! The store of unpacked layers, each unpacked once per machine and shared by every image that
//! contains it.
//!
//! Layout under the root that the caller chooses (the CLI uses `$XDG_DATA_HOME/mayfly/layers`):
//!
//! ```text
//! <root>/<diff_id hex>/root            the unpacked tree, an overlayfs lower directory
//! <root>/<diff_id hex>/unpacked.json   completion marker: the UnpackReport
//! <root>/locks/<diff_id hex>.lock      flock(2) taken while unpacking or removing the layer
//! <root>/tmp/<diff_id hex>.<pid>.<n>   trees being unpacked or removed
//! ```
//!
//! A layer is unpacked into `tmp/`, checked against its expected diff_id, given its marker and
//! only then renamed into place, so a layer directory is either complete or absent.
//!
//! Overlay mount options must fit in one page (4096 bytes) with the legacy `mount(2)` API.
//! Callers with many layers therefore change to [`LayerStore::root`] and pass
//! [`LayerStore::relative_path`] (69 bytes per layer), or add layers one by one with
//! `fsconfig(2)` `lowerdir+` (Linux 6.8+).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::digest::Digest;
use crate::unpack::{
    remove_tree, unpack_layer, Compression, RemoveTreeError, UnpackError, UnpackOptions,
    UnpackReport,
};

const TREE: &str = "root";
const MARKER: &str = "unpacked.json";
const LOCKS: &str = "locks";
const TEMPORARY: &str = "tmp";

/// Distinguishes temporary directories made by one process.
static TEMPORARY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Errors from the layer store.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A running container holds the layer (see [`LayerStore::hold`]).
    #[error("layer {diff_id} is in use by a running container; it is left in place")]
    InUse { diff_id: Digest },
    #[error("failed to {operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("invalid completion marker {path}; remove the directory {} and unpack the layer again", .path.parent().map(Path::display).map(|d| d.to_string()).unwrap_or_default())]
    InvalidMarker {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to unpack a layer into the store")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {layer} unpacks to diff_id {actual}, but the image config lists {expected}; the blob does not belong to this image, so pull it again")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("failed to remove a layer tree")]
    Remove(#[source] RemoveTreeError),
}

/// A running container's claim on an unpacked layer; see [`LayerStore::hold`].
#[derive(Debug)]
pub struct LayerHold {
    _lock: Flock<File>,
}

/// Unpacked layers under one root directory, safe to share between concurrent processes.
#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
}

impl LayerStore {
    /// Opens the store at `root`, creating it with mode 0700 if needed, and removes temporary
    /// trees that crashed processes left behind.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, LayerError> {
        let store = Self { root: root.into() };
        for directory in [store.root.clone(), store.locks_dir(), store.temporary_dir()] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&directory)
                .map_err(|source| io_error("create", &directory, source))?;
        }
        store.remove_stale_temporaries()?;
        Ok(store)
    }

    /// Returns the store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the directory holding the unpacked tree of the layer with `diff_id`; it exists
    /// only once [`LayerStore::is_unpacked`] reports true.
    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join(self.relative_path(diff_id))
    }

    /// Returns [`LayerStore::path`] relative to [`LayerStore::root`]: `<hex>/root`, 69 bytes.
    pub fn relative_path(&self, diff_id: &Digest) -> PathBuf {
        Path::new(diff_id.hex()).join(TREE)
    }

    pub fn is_unpacked(&self, diff_id: &Digest) -> bool {
        self.marker_path(diff_id).is_file()
    }

    /// Returns the report stored when the layer was unpacked, or `None` if it is not unpacked.
    pub fn report(&self, diff_id: &Digest) -> Result<Option<UnpackReport>, LayerError> {
        let path = self.marker_path(diff_id);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error("read", &path, source)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| LayerError::InvalidMarker { path, source })
    }

    /// Unpacks the layer blob read from `reader` unless the store already has
    /// `expected_diff_id`, and returns the report of the unpack that made it.
    ///
    /// Concurrent calls for the same layer, in this process or others, unpack it once: the
    /// others wait on the layer's lock and then return the stored report without reading
    /// their `reader`. On any error nothing of the attempt is left in the store.
    pub fn unpack<R: Read + Send>(
        &self,
        layer_digest: &Digest,
        expected_diff_id: &Digest,
        compression: Compression,
        reader: R,
        options: &UnpackOptions,
    ) -> Result<UnpackReport, LayerError> {
        if let Some(report) = self.report(expected_diff_id)? {
            return Ok(report);
        }
        let _lock = self.lock(expected_diff_id, FlockArg::LockExclusive)?;
        if let Some(report) = self.report(expected_diff_id)? {
            tracing::debug!(layer = %layer_digest, diff_id = %expected_diff_id, "layer was unpacked by another process");
            return Ok(report);
        }

        let temporary = self.new_temporary(expected_diff_id);
        tracing::debug!(layer = %layer_digest, diff_id = %expected_diff_id, dir = %temporary.display(), "unpacking layer into the store");
        let result = self.unpack_into(
            &temporary,
            layer_digest,
            expected_diff_id,
            compression,
            reader,
            options,
        );
        if result.is_err() {
            if let Err(error) = remove_tree(&temporary) {
                tracing::warn!(dir = %temporary.display(), error = %error, "failed to remove a failed unpack; the next LayerStore::open retries");
            }
        }
        result
    }

    fn unpack_into<R: Read + Send>(
        &self,
        temporary: &Path,
        layer_digest: &Digest,
        expected_diff_id: &Digest,
        compression: Compression,
        reader: R,
        options: &UnpackOptions,
    ) -> Result<UnpackReport, LayerError> {
        let tree = temporary.join(TREE);
        for directory in [temporary, tree.as_path()] {
            DirBuilder::new()
                .mode(0o700)
                .create(directory)
                .map_err(|source| io_error("create", directory, source))?;
        }

        let options = UnpackOptions {
            layer_digest: layer_digest.clone(),
            ..options.clone()
        };
        let report = unpack_layer(reader, compression, &tree, &options).map_err(|source| {
            LayerError::Unpack {
                layer: layer_digest.clone(),
                source,
            }
        })?;
        if report.diff_id != *expected_diff_id {
            return Err(LayerError::DiffIdMismatch {
                layer: layer_digest.clone(),
                expected: expected_diff_id.clone(),
                actual: report.diff_id,
            });
        }

        // NOTE: the unpacked files are not flushed to disk, as neither Podman's storage nor
        // containerd flushes them: syncfs(2) here flushed every dirty page of the whole file
        // system, other programs' included, and doubled pull times. A process crash loses
        // nothing (the page cache survives it); a power loss right after a pull can leave a
        // layer with missing data behind a complete marker, which `mayfly rmi` and `prune`
        // followed by a new pull repair.
        self.write_marker(temporary, &report)?;

        // The lock guarantees that no other process renames into place; a directory without
        // marker there is the remnant of an interrupted removal.
        let destination = self.root.join(expected_diff_id.hex());
        if destination.exists() {
            remove_tree(&destination).map_err(LayerError::Remove)?;
        }
        fs::rename(temporary, &destination)
            .map_err(|source| io_error("move into place", temporary, source))?;
        tracing::info!(layer = %layer_digest, diff_id = %expected_diff_id, files = report.counts.files, "unpacked layer");
        Ok(report)
    }

    /// Removes an unpacked layer. Returns `false` when it was not there. The caller makes sure
    /// no running container uses the layer.
    pub fn remove(&self, diff_id: &Digest) -> Result<bool, LayerError> {
        let _lock = self.lock(diff_id, FlockArg::LockExclusive)?;
        let _unused = match self.use_lock(diff_id, FlockArg::LockExclusiveNonblock) {
            Err(LayerError::Lock {
                source: Errno::EWOULDBLOCK,
                ..
            }) => {
                return Err(LayerError::InUse {
                    diff_id: diff_id.clone(),
                })
            }
            other => other?,
        };
        let directory = self.root.join(diff_id.hex());
        let doomed = self.new_temporary(diff_id);

        // Rename first, so that an interrupted removal never leaves a layer that looks whole.
        match fs::rename(&directory, &doomed) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(io_error("move away", &directory, source)),
        }
        remove_tree(&doomed).map_err(LayerError::Remove)?;
        tracing::info!(diff_id = %diff_id, "removed layer");
        Ok(true)
    }

    /// Lists the diff_ids of the unpacked layers, sorted.
    pub fn list(&self) -> Result<Vec<Digest>, LayerError> {
        let entries =
            fs::read_dir(&self.root).map_err(|source| io_error("list", &self.root, source))?;
        let mut layers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_error("list", &self.root, source))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(diff_id) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            if self.is_unpacked(&diff_id) {
                layers.push(diff_id);
            }
        }
        layers.sort();
        Ok(layers)
    }

    fn write_marker(&self, temporary: &Path, report: &UnpackReport) -> Result<(), LayerError> {
        let path = temporary.join(MARKER);
        let text = serde_json::to_vec_pretty(report).expect("UnpackReport serialises to JSON");
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| io_error("create", &path, source))?;
        file.write_all(&text)
            .map_err(|source| io_error("write", &path, source))
    }

    /// Marks the layer as used until the returned guard is dropped: [`LayerStore::remove`]
    /// then fails with [`LayerError::InUse`] instead of deleting a running container's files.
    /// This is a lock of its own, so that holding it never delays unpacking other layers.
    pub fn hold(&self, diff_id: &Digest) -> Result<LayerHold, LayerError> {
        self.use_lock(diff_id, FlockArg::LockShared)
            .map(|lock| LayerHold { _lock: lock })
    }

    fn use_lock(&self, diff_id: &Digest, mode: FlockArg) -> Result<Flock<File>, LayerError> {
        self.lock_file(
            &self.locks_dir().join(format!("{}.use", diff_id.hex())),
            mode,
        )
    }

    fn lock(&self, diff_id: &Digest, mode: FlockArg) -> Result<Flock<File>, LayerError> {
        self.lock_file(
            &self.locks_dir().join(format!("{}.lock", diff_id.hex())),
            mode,
        )
    }

    fn lock_file(&self, path: &Path, mode: FlockArg) -> Result<Flock<File>, LayerError> {
        let path = path.to_owned();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| io_error("open", &path, source))?;
        loop {
            match Flock::lock(file, mode) {
                Ok(lock) => return Ok(lock),
                Err((returned, Errno::EINTR)) => file = returned,
                Err((_, source)) => return Err(LayerError::Lock { path, source }),
            }
        }
    }

    /// Removes temporary trees whose layer lock no process holds, because their process died.
    fn remove_stale_temporaries(&self) -> Result<(), LayerError> {
        let directory = self.temporary_dir();
        let entries =
            fs::read_dir(&directory).map_err(|source| io_error("list", &directory, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| io_error("list", &directory, source))?;
            let name = entry.file_name();
            let hex = name.to_str().and_then(|name| name.split('.').next());
            let Some(diff_id) = hex.and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
            else {
                continue;
            };
            match self.lock(&diff_id, FlockArg::LockExclusiveNonblock) {
                Ok(_lock) => {
                    tracing::info!(dir = %entry.path().display(), "removing a temporary layer tree left by a crashed process");
                    remove_tree(&entry.path()).map_err(LayerError::Remove)?;
                }
                Err(LayerError::Lock {
                    source: Errno::EWOULDBLOCK,
                    ..
                }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    fn new_temporary(&self, diff_id: &Digest) -> PathBuf {
        let sequence = TEMPORARY_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.temporary_dir().join(format!(
            "{}.{}.{sequence}",
            diff_id.hex(),
            std::process::id()
        ))
    }

    fn marker_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join(diff_id.hex()).join(MARKER)
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join(LOCKS)
    }

    fn temporary_dir(&self) -> PathBuf {
        self.root.join(TEMPORARY)
    }
}

fn io_error(operation: &'static str, path: &Path, source: io::Error) -> LayerError {
    LayerError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
