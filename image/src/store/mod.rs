//! The content store: blobs by digest and the images pulled into it.
//!
//! Layout under the root directory (mode 0700):
//!
//! ```text
//! blobs/sha256/<hex>   verified blobs: manifests, indexes, configs, compressed layers
//! tmp/                 downloads in progress, renamed into blobs/ once their digest matches
//! locks/<hex>.lock     one flock(2) lock per digest, so each blob is downloaded once
//! locks/store.lock     shared while pulling, exclusive while pruning
//! refs/<name>.json     one image record per normalised reference
//! ```
//!
//! A blob appears under `blobs/` only by rename after its digest and size were checked, so a
//! reader never opens a partial or wrong blob.

mod blob_writer;
mod images;
mod lock;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use blob_writer::BlobWriter;
pub use images::{ImageRecord, PruneReport, Reachable};
pub use lock::FileLock;

use crate::digest::Digest;

/// Errors from the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to create store directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("blob {expected} from {origin} has digest {actual}: the content does not match its digest, so it was discarded")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        origin: String,
    },

    #[error("blob {digest} from {origin} has {actual} bytes, but its descriptor states {expected}; it was discarded")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
        origin: String,
    },

    #[error("blob {digest} is not in the store; pull the image again")]
    BlobMissing { digest: Digest },

    #[error("invalid image record {path}; remove it and pull the image again")]
    InvalidRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("the caller's cleanup of unpacked layers failed during prune")]
    PruneCallback(#[source] io::Error),
}

/// A content store rooted at one directory. Cheap to clone; every method works on the file
/// system, so several handles and several processes may share one root.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// The per-digest lock that a writer of that blob holds.
#[derive(Debug)]
pub struct BlobLock {
    digest: Digest,
    _lock: FileLock,
}

impl BlobLock {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

/// Returns the default store root, `$XDG_DATA_HOME/mayfly` (default
/// `~/.local/share/mayfly`); `None` when neither variable is set.
pub fn default_root() -> Option<PathBuf> {
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|value| !value.is_empty())
                .map(|home| PathBuf::from(home).join(".local/share"))
        })?;
    Some(data_home.join("mayfly"))
}

impl Store {
    /// Opens the store at `root`, creating it and its subdirectories; `root` gets mode 0700.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self { root: root.into() };
        for dir in [
            store.root.clone(),
            store.blobs_dir(),
            store.tmp_dir(),
            store.locks_dir(),
            store.refs_dir(),
        ] {
            create_private_dir(&dir)?;
        }
        fs::set_permissions(&store.root, fs::Permissions::from_mode(0o700)).map_err(|source| {
            StoreError::CreateDir {
                path: store.root.clone(),
                source,
            }
        })?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns where the blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|source| missing_or_read(digest, path, source))
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(|source| missing_or_read(digest, path, source))
    }

    /// Waits for the lock of `digest`. Holders of the lock are the only writers of that blob;
    /// after taking it, check [`Store::has_blob`], because an earlier holder may have stored it.
    /// This blocks: call it from a blocking thread in async code.
    pub fn lock_blob(&self, digest: &Digest) -> Result<BlobLock, StoreError> {
        let path = self.locks_dir().join(format!("{}.lock", digest.hex()));
        Ok(BlobLock {
            digest: digest.clone(),
            _lock: FileLock::acquire(&path, true)?,
        })
    }

    /// Starts writing the blob that `lock` protects into a temporary file. `expected_size`
    /// and the digest are checked on commit; `origin` (such as `registry/repository`) names
    /// the source in errors.
    pub fn blob_writer(
        &self,
        lock: BlobLock,
        expected_size: u64,
        origin: &str,
    ) -> Result<BlobWriter, StoreError> {
        BlobWriter::create(self, lock, expected_size, origin)
    }

    /// Stores `bytes` as blob `digest` unless it is already there; returns whether it wrote.
    /// The digest is checked first, so wrong bytes are never stored.
    pub fn write_blob(
        &self,
        digest: &Digest,
        bytes: &[u8],
        origin: &str,
    ) -> Result<bool, StoreError> {
        let lock = self.lock_blob(digest)?;
        if self.has_blob(digest) {
            return Ok(false);
        }
        let mut writer = self.blob_writer(lock, bytes.len() as u64, origin)?;
        writer.write_bytes(bytes)?;
        writer.commit()?;
        Ok(true)
    }

    /// Takes the store lock shared, as every pull must for its whole duration, so that a
    /// prune never removes blobs a pull wrote but has not yet recorded. This blocks while a
    /// prune runs.
    pub fn shared_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::acquire(&self.locks_dir().join("store.lock"), false)
    }

    pub(crate) fn exclusive_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::acquire(&self.locks_dir().join("store.lock"), true)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }
}

fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| StoreError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

fn missing_or_read(digest: &Digest, path: PathBuf, source: io::Error) -> StoreError {
    if source.kind() == io::ErrorKind::NotFound {
        StoreError::BlobMissing {
            digest: digest.clone(),
        }
    } else {
        StoreError::Read { path, source }
    }
}

/// Flushes a directory's entries to disk, so that a rename into it survives a crash.
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| StoreError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn open_creates_private_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data/mayfly");
        let store = Store::open(&root).unwrap();
        for sub in ["blobs/sha256", "tmp", "locks", "refs"] {
            assert!(root.join(sub).is_dir(), "{sub}");
        }
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        assert_eq!(store.root(), root);
        Store::open(&root).unwrap();
    }

    #[test]
    fn write_blob_checks_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of_bytes(b"hello");

        assert!(store.write_blob(&digest, b"hello", "test").unwrap());
        assert!(!store.write_blob(&digest, b"hello", "test").unwrap());
        assert_eq!(store.read_blob(&digest).unwrap(), b"hello");

        let other = Digest::of_bytes(b"other");
        let error = store.write_blob(&other, b"wrong", "reg/repo").unwrap_err();
        assert!(
            matches!(&error, StoreError::DigestMismatch { expected, actual, origin }
                if *expected == other && *actual == Digest::of_bytes(b"wrong") && origin == "reg/repo"),
            "{error:?}"
        );
        assert!(!store.has_blob(&other));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn missing_blob_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of_bytes(b"absent");
        assert!(matches!(
            store.read_blob(&digest),
            Err(StoreError::BlobMissing { digest: d }) if d == digest
        ));
        assert!(matches!(
            store.open_blob(&digest),
            Err(StoreError::BlobMissing { .. })
        ));
    }

    #[test]
    fn blob_lock_excludes_other_handles() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of_bytes(b"x");
        let lock = store.lock_blob(&digest).unwrap();

        let (sender, receiver) = std::sync::mpsc::channel();
        let other = store.clone();
        let waiter_digest = digest.clone();
        let waiter = std::thread::spawn(move || {
            let _lock = other.lock_blob(&waiter_digest).unwrap();
            sender.send(()).unwrap();
        });
        assert!(receiver
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(lock);
        receiver
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        waiter.join().unwrap();
    }
}
