//! Writing one blob: a temporary file in `tmp/`, hashed while written, fsynced and renamed
//! into `blobs/` only when size and digest match.

use std::io::{self, Seek, Write};
use std::path::PathBuf;

use tempfile::NamedTempFile;

use super::{sync_dir, BlobLock, Store, StoreError};
use crate::digest::{Digest, DigestHasher};

/// A blob being written. Dropping it without [`BlobWriter::commit`] removes the temporary
/// file; either way the blob's lock is released at the end.
#[derive(Debug)]
pub struct BlobWriter {
    file: NamedTempFile,
    hasher: DigestHasher,
    expected_size: u64,
    origin: String,
    final_path: PathBuf,
    lock: BlobLock,
}

impl BlobWriter {
    pub(super) fn create(
        store: &Store,
        lock: BlobLock,
        expected_size: u64,
        origin: &str,
    ) -> Result<Self, StoreError> {
        let tmp_dir = store.tmp_dir();
        let file = tempfile::Builder::new()
            .prefix(&format!("{}.", lock.digest().hex()))
            .tempfile_in(&tmp_dir)
            .map_err(|source| StoreError::Write {
                path: tmp_dir,
                source,
            })?;
        Ok(Self {
            file,
            hasher: DigestHasher::new(),
            expected_size,
            origin: origin.to_owned(),
            final_path: store.blob_path(lock.digest()),
            lock,
        })
    }

    pub fn digest(&self) -> &Digest {
        self.lock.digest()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.length()
    }

    /// Appends `bytes`, failing once more bytes arrive than the expected size.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let total = self.hasher.length() + bytes.len() as u64;
        if total > self.expected_size {
            return Err(StoreError::SizeMismatch {
                digest: self.digest().clone(),
                expected: self.expected_size,
                actual: total,
                origin: self.origin.clone(),
            });
        }
        self.file
            .write_all(bytes)
            .map_err(|source| self.write_error(source))?;
        self.hasher.update(bytes);
        Ok(())
    }

    /// Discards everything written, for a download that starts again from byte 0.
    pub fn restart(&mut self) -> Result<(), StoreError> {
        let file = self.file.as_file_mut();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .map_err(|source| self.write_error(source))?;
        self.hasher = DigestHasher::new();
        Ok(())
    }

    /// Checks size and digest, flushes the file to disk and renames it into `blobs/`.
    /// On a mismatch the temporary file is removed and the error names both digests.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let actual_size = self.hasher.length();
        if actual_size != self.expected_size {
            return Err(StoreError::SizeMismatch {
                digest: self.digest().clone(),
                expected: self.expected_size,
                actual: actual_size,
                origin: self.origin.clone(),
            });
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != *self.digest() {
            tracing::warn!(expected = %self.digest(), actual = %actual, origin = %self.origin, "discarding blob with wrong digest");
            return Err(StoreError::DigestMismatch {
                expected: self.digest().clone(),
                actual,
                origin: self.origin.clone(),
            });
        }

        self.file
            .as_file()
            .sync_all()
            .map_err(|source| self.write_error(source))?;
        let Self {
            file,
            final_path,
            lock,
            ..
        } = self;
        file.persist(&final_path)
            .map_err(|error| StoreError::Write {
                path: final_path.clone(),
                source: error.error,
            })?;
        if let Some(dir) = final_path.parent() {
            sync_dir(dir)?;
        }
        drop(lock);
        Ok(())
    }

    fn write_error(&self, source: io::Error) -> StoreError {
        StoreError::Write {
            path: self.file.path().to_owned(),
            source,
        }
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf)
            .map(|()| buf.len())
            .map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tmp_entries(store: &Store) -> usize {
        fs::read_dir(store.root().join("tmp")).unwrap().count()
    }

    #[test]
    fn commit_renames_after_checks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = b"layer bytes".repeat(1000);
        let digest = Digest::of_bytes(&data);

        let lock = store.lock_blob(&digest).unwrap();
        let mut writer = store
            .blob_writer(lock, data.len() as u64, "reg/repo")
            .unwrap();
        writer.write_bytes(&data[..100]).unwrap();
        assert!(!store.has_blob(&digest));
        assert_eq!(tmp_entries(&store), 1);
        writer.write_bytes(&data[100..]).unwrap();
        assert_eq!(writer.written(), data.len() as u64);
        writer.commit().unwrap();

        assert_eq!(store.read_blob(&digest).unwrap(), data);
        assert_eq!(tmp_entries(&store), 0);
    }

    #[test]
    fn restart_discards_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of_bytes(b"right");
        let lock = store.lock_blob(&digest).unwrap();
        let mut writer = store.blob_writer(lock, 5, "o").unwrap();
        writer.write_bytes(b"wro").unwrap();
        writer.restart().unwrap();
        writer.write_bytes(b"right").unwrap();
        writer.commit().unwrap();
        assert_eq!(store.read_blob(&digest).unwrap(), b"right");
    }

    #[test]
    fn mismatches_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of_bytes(b"expected");

        let lock = store.lock_blob(&digest).unwrap();
        let mut writer = store.blob_writer(lock, 8, "reg/repo").unwrap();
        writer.write_bytes(b"corrupt!").unwrap();
        let error = writer.commit().unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&digest.to_string()), "{message}");
        assert!(
            message.contains(&Digest::of_bytes(b"corrupt!").to_string()),
            "{message}"
        );
        assert!(message.contains("reg/repo"), "{message}");

        let lock = store.lock_blob(&digest).unwrap();
        let mut writer = store.blob_writer(lock, 8, "reg/repo").unwrap();
        writer.write_bytes(b"short").unwrap();
        assert!(matches!(
            writer.commit(),
            Err(StoreError::SizeMismatch { actual: 5, .. })
        ));

        let lock = store.lock_blob(&digest).unwrap();
        let mut writer = store.blob_writer(lock, 8, "reg/repo").unwrap();
        assert!(matches!(
            writer.write_bytes(b"too many bytes"),
            Err(StoreError::SizeMismatch { .. })
        ));
        drop(writer);

        assert!(!store.has_blob(&digest));
        assert_eq!(tmp_entries(&store), 0);
        assert_eq!(
            fs::read_dir(store.root().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }
}
