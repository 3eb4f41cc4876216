//! Images on this machine: pulling into the content store, unpacking layers while they
//! download, and looking images up for containers to run.

mod unpack_sink;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mayfly_image::client::RegistryClient;
use mayfly_image::digest::Digest;
use mayfly_image::layers::{LayerError, LayerHold, LayerStore};
use mayfly_image::manifest::{ImageConfig, ManifestError};
use mayfly_image::platform::Platform;
use mayfly_image::pull::{self, ProgressSink, PullError, PullOptions};
use mayfly_image::reference::Reference;
use mayfly_image::registry_config::RegistryConfigError;
use mayfly_image::store::{ImageRecord, PruneReport, Store, StoreError};
use mayfly_image::unpack::{Compression, UnpackOptions, UnpackWarnings};

use unpack_sink::UnpackSink;

/// Errors from managing local images.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layers(#[from] LayerError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    RegistryConfig(#[from] RegistryConfigError),
    #[error("invalid image config {digest} of {reference}")]
    Config {
        reference: String,
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error(
        "layer {layer} of {reference} has media type {media_type:?}, which mayfly cannot unpack \
         (supported: tar, tar+gzip, tar+zstd)"
    )]
    UnsupportedLayer {
        reference: String,
        layer: Digest,
        media_type: String,
    },
    #[error("image {reference} is not in the local store (`mayfly images` lists what is)")]
    NotFound { reference: String },
    #[error("failed to unpack layer {layer} of {reference}: the unpacking thread panicked")]
    UnpackPanicked { reference: String, layer: Digest },
}

/// An image ready to run: its record, its parsed config and its unpacked layers.
#[derive(Debug, Clone)]
pub struct LocalImage {
    pub record: ImageRecord,
    pub config: ImageConfig,
    /// Unpacked layer trees in overlay format, lowest first.
    pub layer_dirs: Vec<PathBuf>,
    /// Counts of what unpacking had to work around, for the front-end to show once.
    pub warnings: UnpackWarnings,
    /// Blobs this call downloaded (empty when the image was already present).
    pub downloaded: Vec<Digest>,
}

/// Summary of a prune: what it removed, and the layers it kept because they are in use.
#[derive(Debug, Default)]
pub struct PruneSummary {
    pub blobs: PruneReport,
    pub removed_layers: usize,
    pub layers_in_use: usize,
}

/// The content store, the unpacked-layer store and a registry client.
pub struct Images {
    store: Store,
    layers: Arc<LayerStore>,
    client: RegistryClient,
}

impl Images {
    /// Opens the stores under `data_dir` (blobs, references and `layers/`) and reads the
    /// registry configuration and credentials from the environment.
    pub fn open(data_dir: &Path) -> Result<Self, ImagesError> {
        let store = Store::open(data_dir)?;
        let layers = Arc::new(LayerStore::open(data_dir.join("layers"))?);
        let client = RegistryClient::from_env()?;
        Ok(Self {
            store,
            layers,
            client,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn layers(&self) -> &LayerStore {
        &self.layers
    }

    /// Pulls `reference` and unpacks every layer, streaming each download into its unpacker.
    pub async fn pull(
        &self,
        reference: &Reference,
        platform: Option<Platform>,
        progress: &dyn ProgressSink,
    ) -> Result<LocalImage, ImagesError> {
        let sink = Arc::new(UnpackSink::new(self.layers.clone()));
        let options = PullOptions {
            platform,
            layer_sink: Some(sink.clone()),
            ..PullOptions::default()
        };
        let pulled = pull::pull(&self.store, &self.client, reference, &options, progress).await?;
        let mut warnings = sink.take_warnings();

        // Layers that were already stored as blobs (an earlier pull, another process) were not
        // streamed; unpack them from the store now.
        let record = pulled.record();
        let more = self.unpack_missing(&record).await?;
        warnings.add(&more);

        let mut image = self.local_from_record(record)?;
        image.warnings = warnings;
        image.downloaded = pulled.downloaded;
        Ok(image)
    }

    /// Returns the image from the local store, or pulls it when it is missing.
    pub async fn ensure(
        &self,
        reference: &Reference,
        platform: Option<Platform>,
        progress: &dyn ProgressSink,
    ) -> Result<LocalImage, ImagesError> {
        if let Some(record) = self.store.image(reference)? {
            let platform_matches = platform
                .as_ref()
                .is_none_or(|wanted| wanted.normalised() == record.platform.normalised());
            if platform_matches {
                let warnings = self.unpack_missing(&record).await?;
                let mut image = self.local_from_record(record)?;
                image.warnings = warnings;
                return Ok(image);
            }
        }
        tracing::info!(reference = %reference, "image not in the local store, pulling it");
        self.pull(reference, platform, progress).await
    }

    /// Returns the stored image `reference` with its layers, without any network access.
    pub fn local(&self, reference: &Reference) -> Result<LocalImage, ImagesError> {
        let record = self
            .store
            .image(reference)?
            .ok_or_else(|| ImagesError::NotFound {
                reference: reference.to_string(),
            })?;
        self.local_from_record(record)
    }

    fn local_from_record(&self, record: ImageRecord) -> Result<LocalImage, ImagesError> {
        let bytes = self.store.read_blob(&record.config_digest)?;
        let config = ImageConfig::parse(&bytes).map_err(|source| ImagesError::Config {
            reference: record.reference.to_string(),
            digest: record.config_digest.clone(),
            source,
        })?;
        let layer_dirs = record
            .diff_ids
            .iter()
            .map(|diff_id| self.layers.path(diff_id))
            .collect();
        Ok(LocalImage {
            record,
            config,
            layer_dirs,
            warnings: UnpackWarnings::default(),
            downloaded: Vec::new(),
        })
    }

    /// Unpacks, from the blobs in the store, every layer of `record` not unpacked yet.
    async fn unpack_missing(&self, record: &ImageRecord) -> Result<UnpackWarnings, ImagesError> {
        let mut warnings = UnpackWarnings::default();
        for (layer, diff_id) in record.layers.iter().zip(&record.diff_ids) {
            if self.layers.is_unpacked(diff_id) {
                continue;
            }
            let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
                ImagesError::UnsupportedLayer {
                    reference: record.reference.to_string(),
                    layer: layer.digest.clone(),
                    media_type: layer.media_type.clone(),
                }
            })?;
            let blob = self.store.open_blob(&layer.digest)?;
            let layers = self.layers.clone();
            let (layer_digest, diff_id) = (layer.digest.clone(), diff_id.clone());
            tracing::debug!(layer = %layer_digest, "unpacking a stored layer");
            let report = tokio::task::spawn_blocking(move || {
                let options = UnpackOptions::new(layer_digest.clone());
                layers.unpack(&layer_digest, &diff_id, compression, blob, &options)
            })
            .await
            .map_err(|_| ImagesError::UnpackPanicked {
                reference: record.reference.to_string(),
                layer: layer.digest.clone(),
            })??;
            warnings.add(&report.warnings);
        }
        Ok(warnings)
    }

    /// Lists every image in the store.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImagesError> {
        Ok(self.store.images()?)
    }

    /// Removes the reference; its blobs and layers stay until [`Images::prune`].
    pub fn remove(&self, reference: &Reference) -> Result<ImageRecord, ImagesError> {
        self.store
            .remove_image(reference)?
            .ok_or_else(|| ImagesError::NotFound {
                reference: reference.to_string(),
            })
    }

    /// Marks every layer of `image` as in use until the guards are dropped, so that a prune
    /// in another process leaves a running container's files alone.
    pub fn hold(&self, image: &LocalImage) -> Result<Vec<LayerHold>, ImagesError> {
        image
            .record
            .diff_ids
            .iter()
            .map(|diff_id| self.layers.hold(diff_id).map_err(ImagesError::from))
            .collect()
    }

    /// Removes blobs and unpacked layers that no image refers to, except layers a running
    /// container holds.
    pub fn prune(&self) -> Result<PruneSummary, ImagesError> {
        let mut summary = PruneSummary::default();
        let layers = &self.layers;
        summary.blobs = self.store.prune(|reachable| {
            let keep: &BTreeSet<Digest> = &reachable.diff_ids;
            for diff_id in layers.list().map_err(std::io::Error::other)? {
                if keep.contains(&diff_id) {
                    continue;
                }
                match layers.remove(&diff_id) {
                    Ok(true) => summary.removed_layers += 1,
                    Ok(false) => {}
                    Err(LayerError::InUse { .. }) => summary.layers_in_use += 1,
                    Err(error) => return Err(std::io::Error::other(error)),
                }
            }
            Ok(())
        })?;
        Ok(summary)
    }
}
