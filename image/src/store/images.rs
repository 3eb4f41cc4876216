//! Image records (`refs/`): which manifest each pulled reference resolved to, and pruning of
//! blobs that no record reaches.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{sync_dir, Store, StoreError};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::platform::Platform;
use crate::reference::Reference;

/// The manifest, config and layers a reference resolved to when it was last pulled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalised reference, as pulled (`docker.io/library/python:3.11`).
    pub reference: Reference,
    /// Digest of the platform's image manifest.
    pub manifest_digest: Digest,
    /// Digest of the index the manifest was selected from, for multi-platform images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub config_digest: Digest,
    /// Compressed layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<Digest>,
    pub platform: Platform,
    /// Seconds since the Unix epoch.
    pub pulled_at: u64,
}

impl ImageRecord {
    /// Returns every blob the image needs: index, manifest, config and layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.index_digest
            .iter()
            .chain([&self.manifest_digest, &self.config_digest])
            .chain(self.layers.iter().map(|layer| &layer.digest))
    }
}

/// Blobs and layers that some image record still needs, handed to the prune callback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reachable {
    pub blobs: BTreeSet<Digest>,
    /// Compressed layer digests.
    pub layers: BTreeSet<Digest>,
    pub diff_ids: BTreeSet<Digest>,
}

/// Summary of the blobs and temporary files a prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub removed_blobs: Vec<Digest>,
    pub freed_bytes: u64,
    pub removed_temp_files: usize,
}

impl Store {
    /// Records `record` for its reference, replacing an earlier record of the same reference.
    pub fn save_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let path = self.record_path(&record.reference);
        let tmp_dir = self.tmp_dir();
        let write_error = |source| StoreError::Write {
            path: path.clone(),
            source,
        };

        let mut file = tempfile::Builder::new()
            .prefix("record.")
            .tempfile_in(&tmp_dir)
            .map_err(write_error)?;
        let mut text =
            serde_json::to_vec_pretty(record).expect("an image record always serialises");
        text.push(b'\n');
        file.write_all(&text).map_err(write_error)?;
        file.as_file().sync_all().map_err(write_error)?;
        file.persist(&path)
            .map_err(|error| write_error(error.error))?;
        sync_dir(&self.refs_dir())
    }

    /// Returns the record of `reference`, if it was pulled.
    pub fn image(&self, reference: &Reference) -> Result<Option<ImageRecord>, StoreError> {
        read_record(&self.record_path(reference))
    }

    /// Returns every image record, sorted by reference.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.refs_dir();
        let entries = fs::read_dir(&dir).map_err(|source| StoreError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut records = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| StoreError::Read {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.extension().is_some_and(|ext| ext == "json") {
                records.extend(read_record(&path)?);
            }
        }
        records.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(records)
    }

    /// Removes the record of `reference` and returns it. Its blobs stay until
    /// [`Store::prune`].
    pub fn remove_image(&self, reference: &Reference) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(reference);
        let Some(record) = read_record(&path)? else {
            return Ok(None);
        };
        fs::remove_file(&path).map_err(|source| StoreError::Remove {
            path: path.clone(),
            source,
        })?;
        tracing::info!(reference = %reference, "removed image record");
        Ok(Some(record))
    }

    /// Removes blobs that no image record reaches and leftover temporary files.
    ///
    /// Runs under the exclusive store lock, so it waits for pulls in progress and blocks new
    /// ones. `remove_unreachable_layers` runs first, under the same lock, with the set of
    /// layers still needed, so that the caller can delete unpacked layers that no image uses.
    /// Lock files stay: removing them could let two processes lock different files for one
    /// digest.
    pub fn prune(
        &self,
        remove_unreachable_layers: impl FnOnce(&Reachable) -> io::Result<()>,
    ) -> Result<PruneReport, StoreError> {
        let _exclusive = self.exclusive_lock()?;

        let mut reachable = Reachable::default();
        for record in self.images()? {
            reachable.blobs.extend(record.blobs().cloned());
            reachable
                .layers
                .extend(record.layers.iter().map(|layer| layer.digest.clone()));
            reachable.diff_ids.extend(record.diff_ids.iter().cloned());
        }
        remove_unreachable_layers(&reachable).map_err(StoreError::PruneCallback)?;

        let mut report = PruneReport::default();
        for path in list_dir(&self.blobs_dir())? {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default();
            let digest = format!("sha256:{name}").parse::<Digest>().ok();
            if digest.as_ref().is_some_and(|d| reachable.blobs.contains(d)) {
                continue;
            }
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            remove(&path)?;
            report.freed_bytes += size;
            report.removed_blobs.extend(digest);
        }

        // No pull runs while the exclusive lock is held, so every temporary file is a leftover.
        for path in list_dir(&self.tmp_dir())? {
            remove(&path)?;
            report.removed_temp_files += 1;
        }
        tracing::info!(
            removed_blobs = report.removed_blobs.len(),
            freed_bytes = report.freed_bytes,
            removed_temp_files = report.removed_temp_files,
            "pruned content store"
        );
        Ok(report)
    }

    fn record_path(&self, reference: &Reference) -> PathBuf {
        self.refs_dir()
            .join(format!("{}.json", encode_file_name(&reference.to_string())))
    }
}

/// Encodes a reference as a file name: bytes other than `[a-z0-9._-]` become `%XX`.
fn encode_file_name(text: &str) -> String {
    let mut name = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"._-".contains(&byte) {
            name.push(byte as char);
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name
}

fn read_record(path: &Path) -> Result<Option<ImageRecord>, StoreError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| StoreError::InvalidRecord {
            path: path.to_owned(),
            source,
        })
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let read_error = |source| StoreError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        paths.push(entry.map_err(read_error)?.path());
    }
    Ok(paths)
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::media_types;

    fn record(store: &Store, reference: &str, layer_data: &[&[u8]]) -> ImageRecord {
        let mut layers = Vec::new();
        for data in layer_data {
            let digest = Digest::of_bytes(data);
            store.write_blob(&digest, data, "test").unwrap();
            layers.push(Descriptor {
                media_type: media_types::OCI_LAYER_GZIP.to_owned(),
                digest,
                size: data.len() as u64,
                urls: Vec::new(),
                annotations: Default::default(),
                platform: None,
            });
        }
        let config = format!("config of {reference}");
        let manifest = format!("manifest of {reference}");
        let config_digest = Digest::of_bytes(config.as_bytes());
        let manifest_digest = Digest::of_bytes(manifest.as_bytes());
        store
            .write_blob(&config_digest, config.as_bytes(), "test")
            .unwrap();
        store
            .write_blob(&manifest_digest, manifest.as_bytes(), "test")
            .unwrap();
        ImageRecord {
            reference: Reference::parse(reference).unwrap(),
            manifest_digest,
            index_digest: None,
            config_digest,
            diff_ids: layers
                .iter()
                .map(|l| Digest::of_bytes(l.digest.hex().as_bytes()))
                .collect(),
            layers,
            platform: Platform::new("linux", "amd64", None),
            pulled_at: 1,
        }
    }

    #[test]
    fn file_names_encode_reference_text() {
        assert_eq!(
            encode_file_name("127.0.0.1:5000/library/x:Tag"),
            "127.0.0.1%3A5000%2Flibrary%2Fx%3A%54ag"
        );
    }

    #[test]
    fn records_save_list_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let python = record(&store, "python:3.11", &[b"base", b"python"]);
        let busybox = record(&store, "127.0.0.1:5000/library/busybox", &[b"busybox"]);
        store.save_image(&python).unwrap();
        store.save_image(&busybox).unwrap();

        assert_eq!(
            store.images().unwrap(),
            vec![busybox.clone(), python.clone()]
        );
        assert_eq!(
            store.image(&python.reference).unwrap(),
            Some(python.clone())
        );

        let mut replaced = python.clone();
        replaced.pulled_at = 2;
        store.save_image(&replaced).unwrap();
        assert_eq!(store.images().unwrap().len(), 2);
        assert_eq!(
            store.image(&python.reference).unwrap().unwrap().pulled_at,
            2
        );

        assert_eq!(
            store.remove_image(&python.reference).unwrap(),
            Some(replaced)
        );
        assert_eq!(store.remove_image(&python.reference).unwrap(), None);
        assert_eq!(store.images().unwrap(), vec![busybox]);
    }

    #[test]
    fn prune_keeps_reachable_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kept = record(&store, "keep:1", &[b"shared", b"kept"]);
        let dropped = record(&store, "drop:1", &[b"shared", b"dropped"]);
        store.save_image(&kept).unwrap();
        store.save_image(&dropped).unwrap();
        store.remove_image(&dropped.reference).unwrap();
        fs::write(store.root().join("tmp/leftover"), b"partial").unwrap();

        let mut seen = None;
        let report = store
            .prune(|reachable| {
                seen = Some(reachable.clone());
                Ok(())
            })
            .unwrap();

        let seen = seen.unwrap();
        assert_eq!(seen.layers.len(), 2);
        assert_eq!(seen.diff_ids.len(), 2);
        for digest in kept.blobs() {
            assert!(store.has_blob(digest), "{digest}");
        }
        assert!(!store.has_blob(&dropped.layers[1].digest));
        assert!(!store.has_blob(&dropped.config_digest));
        assert!(!store.has_blob(&dropped.manifest_digest));
        assert_eq!(report.removed_blobs.len(), 3);
        assert_eq!(report.removed_temp_files, 1);
        assert!(report.freed_bytes > 0);
        assert!(store.root().join("locks").read_dir().unwrap().count() > 0);
    }

    #[test]
    fn prune_callback_error_stops_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let orphan = Digest::of_bytes(b"orphan");
        store.write_blob(&orphan, b"orphan", "test").unwrap();
        let error = store
            .prune(|_| Err(io::Error::other("layer store busy")))
            .unwrap_err();
        assert!(matches!(error, StoreError::PruneCallback(_)));
        assert!(store.has_blob(&orphan));
    }
}
