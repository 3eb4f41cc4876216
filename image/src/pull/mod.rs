//! Pulling an image into the content store. A pull resolves the reference to an endpoint,
//! follows an index to the wanted platform and stores index, manifest and config. Then it
//! downloads the layers in parallel. Each layer streams through its digest check into the
//! store and, at the same time, into a caller's [`LayerSink`] such as a layer unpacker.
//!
//! The whole pull holds the store's shared lock, so a concurrent prune waits for it.

mod layer;

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::client::{ClientError, FetchedManifest, RegistryClient};
use crate::digest::Digest;
use crate::manifest::{
    media_types, Descriptor, ImageConfig, ImageManifest, Manifest, ManifestError, MAX_CONFIG_SIZE,
};
use crate::platform::{select_manifest, Platform, PlatformError};
use crate::reference::Reference;
use crate::registry_config::{Endpoint, RegistryConfigError};
use crate::store::{ImageRecord, Store, StoreError};

/// Default maximum of layer downloads that run at once.
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 4;

/// Errors from pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registries(#[from] RegistryConfigError),

    #[error("failed to pull {reference} from {location}")]
    Registry {
        reference: String,
        location: String,
        #[source]
        source: Box<ClientError>,
    },

    #[error("invalid manifest for {reference} from {location}")]
    Manifest {
        reference: String,
        location: String,
        #[source]
        source: ManifestError,
    },

    #[error("invalid image config {digest} of {reference}")]
    ImageConfig {
        reference: String,
        digest: Digest,
        #[source]
        source: ManifestError,
    },

    #[error(transparent)]
    Platform(#[from] PlatformError),

    #[error("{reference} is built for {actual}, not for the requested platform {wanted}")]
    PlatformMismatch {
        reference: String,
        wanted: String,
        actual: String,
    },

    #[error("image {reference} is inconsistent: its manifest lists {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCount {
        reference: String,
        layers: usize,
        diff_ids: usize,
    },

    #[error("layer {digest} of {reference} has media type {media_type:?}, which mayfly cannot pull: supported are tar layers, plain or compressed with gzip or zstd, without external URLs")]
    UnsupportedLayer {
        reference: String,
        digest: Digest,
        media_type: String,
    },

    #[error("content store failed while pulling {reference}")]
    Store {
        reference: String,
        #[source]
        source: StoreError,
    },

    #[error("the layer consumer failed on layer {digest}")]
    LayerSink {
        digest: Digest,
        #[source]
        source: io::Error,
    },

    #[error("background task failed: {task}")]
    Task {
        task: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl PullError {
    /// Returns the registry client's error, when the registry side failed.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            Self::Registry { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Progress of a pull, for progress bars. Events of different layers interleave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullEvent {
    /// The reference resolved to this manifest on this endpoint.
    Resolved {
        reference: Reference,
        endpoint: Endpoint,
        manifest: Digest,
    },
    /// The layer was already in the store; no bytes are downloaded for it.
    LayerPresent { digest: Digest, size: u64 },
    /// The layer download started; `size` is the total to expect.
    LayerStarted { digest: Digest, size: u64 },
    /// `bytes` more bytes of the layer arrived.
    LayerProgress { digest: Digest, bytes: u64 },
    /// The download starts again from byte 0; progress so far is void.
    LayerRestarted { digest: Digest },
    /// The layer was verified and stored.
    LayerDone { digest: Digest },
}

/// Receiver of [`PullEvent`]s. The library prints nothing; the CLI draws bars from these.
pub trait ProgressSink: Send + Sync {
    fn event(&self, event: PullEvent);
}

/// A [`ProgressSink`] that drops every event.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _event: PullEvent) {}
}

/// A consumer of layer bytes while they download, so that decompression and unpacking can
/// overlap the download.
///
/// For each layer that is downloaded (not for layers already in the store), the pull calls
/// `start` from a blocking thread and writes the compressed bytes, in order, to the returned
/// writer. After the digest was verified and the blob stored, it calls
/// [`LayerWriter::finish`]; when the download fails, the digest does not match, or the
/// download starts again from byte 0, it calls [`LayerWriter::abort`] (and `start` again for
/// a restart). An error from the writer fails the pull.
pub trait LayerSink: Send + Sync {
    /// Returns a writer for `layer`, whose uncompressed tar stream hashes to `diff_id` by the
    /// image config, or `None` when the layer's bytes are not needed.
    fn start(&self, layer: &Descriptor, diff_id: &Digest) -> Option<Box<dyn LayerWriter>>;
}

/// The writer a [`LayerSink`] returns for one layer.
pub trait LayerWriter: io::Write + Send {
    /// Writes the next chunk of the layer. The default copies it through [`io::Write`]; a
    /// writer that hands chunks to another thread can keep the [`Bytes`] without a copy.
    fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.write_all(&chunk)
    }

    /// Completes the layer: every byte was written and the blob's digest matched.
    fn finish(self: Box<Self>) -> io::Result<()>;

    /// Discards the layer: the bytes written so far must not be used.
    fn abort(self: Box<Self>);
}

/// Settings of one pull.
#[derive(Clone)]
pub struct PullOptions {
    /// Platform to select from an index; `None` means this machine's platform.
    pub platform: Option<Platform>,
    /// Maximum layer downloads at once (at least 1).
    pub max_concurrent_downloads: usize,
    pub layer_sink: Option<Arc<dyn LayerSink>>,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            platform: None,
            max_concurrent_downloads: DEFAULT_CONCURRENT_DOWNLOADS,
            layer_sink: None,
        }
    }
}

/// A pulled image: everything needed to unpack and run it.
#[derive(Clone, Debug)]
pub struct PulledImage {
    pub reference: Reference,
    /// Source of the image: a mirror or the registry itself.
    pub endpoint: Endpoint,
    pub manifest_digest: Digest,
    pub index_digest: Option<Digest>,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Compressed layer blobs, bottom first; each is in the store.
    pub layers: Vec<Descriptor>,
    /// Digests of the uncompressed layers, bottom first, from the config.
    pub diff_ids: Vec<Digest>,
    pub platform: Platform,
    /// Blobs this pull fetched and wrote to the store. Blobs that were already present, or
    /// that a concurrent process stored first, are not listed.
    pub downloaded: Vec<Digest>,
    /// Dropped layer downloads that continued with a range request.
    pub resumed_downloads: u32,
    /// Dropped layer downloads that started again from byte 0.
    pub restarted_downloads: u32,
}

impl PulledImage {
    pub fn record(&self) -> ImageRecord {
        ImageRecord {
            reference: self.reference.clone(),
            manifest_digest: self.manifest_digest.clone(),
            index_digest: self.index_digest.clone(),
            config_digest: self.config_digest.clone(),
            layers: self.layers.clone(),
            diff_ids: self.diff_ids.clone(),
            platform: self.platform.clone(),
            pulled_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs())
                .unwrap_or(0),
        }
    }
}

/// Shared state of one pull, passed to the per-blob steps.
struct PullContext<'a> {
    store: &'a Store,
    client: &'a RegistryClient,
    reference: &'a Reference,
    endpoint: Endpoint,
    options: &'a PullOptions,
    progress: &'a dyn ProgressSink,
}

impl PullContext<'_> {
    fn origin(&self) -> String {
        self.endpoint.to_string()
    }

    fn store_error(&self, source: StoreError) -> PullError {
        PullError::Store {
            reference: self.reference.to_string(),
            source,
        }
    }

    fn registry_error(&self, source: ClientError) -> PullError {
        PullError::Registry {
            reference: self.reference.to_string(),
            location: self.origin(),
            source: Box::new(source),
        }
    }
}

/// Pulls `reference` into `store` and records it there.
pub async fn pull(
    store: &Store,
    client: &RegistryClient,
    reference: &Reference,
    options: &PullOptions,
    progress: &dyn ProgressSink,
) -> Result<PulledImage, PullError> {
    tracing::info!(reference = %reference, "pulling image");
    let store_error = |source| PullError::Store {
        reference: reference.to_string(),
        source,
    };

    // A prune must not remove what this pull stores before the image record exists.
    let shared_store = store.clone();
    let _shared_lock = tokio::task::spawn_blocking(move || shared_store.shared_lock())
        .await
        .map_err(|source| PullError::Task {
            task: "locking the store".to_owned(),
            source,
        })?
        .map_err(store_error)?;

    // Mirrors come first; the first endpoint that serves the manifest serves the whole pull.
    let endpoints = client.registries().endpoints(reference)?;
    let (endpoint, top) = resolve_manifest(client, &endpoints, reference).await?;
    let context = PullContext {
        store,
        client,
        reference,
        endpoint,
        options,
        progress,
    };
    let mut downloaded = Vec::new();

    let (manifest, manifest_digest, index_digest) =
        resolve_platform_manifest(&context, top, &mut downloaded).await?;
    progress.event(PullEvent::Resolved {
        reference: reference.clone(),
        endpoint: context.endpoint.clone(),
        manifest: manifest_digest.clone(),
    });

    let (config, config_digest) = fetch_config(&context, &manifest, &mut downloaded).await?;
    let platform = check_platform(&context, &config)?;
    check_layers(&context, &manifest, &config)?;

    // Each distinct layer once, a bounded number at a time.
    // The layers are owned values so that the stream's future stays Send (a closure over
    // borrowed items trips a rustc limitation with higher-ranked lifetimes).
    let mut seen = HashSet::new();
    let unique: Vec<(Descriptor, Digest)> = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .filter(|(layer, _)| seen.insert(layer.digest.clone()))
        .map(|(layer, diff_id)| (layer.clone(), diff_id.clone()))
        .collect();
    let context_ref = &context;
    let outcomes: Vec<layer::LayerOutcome> = stream::iter(unique)
        .map(|(descriptor, diff_id)| layer::pull_layer(context_ref, descriptor, diff_id))
        .buffer_unordered(options.max_concurrent_downloads.max(1))
        .try_collect()
        .await?;

    let mut pulled = PulledImage {
        reference: reference.clone(),
        endpoint: context.endpoint.clone(),
        manifest_digest,
        index_digest,
        config_digest,
        layers: manifest.layers.clone(),
        diff_ids: config.rootfs.diff_ids.clone(),
        manifest,
        config,
        platform,
        downloaded,
        resumed_downloads: 0,
        restarted_downloads: 0,
    };
    for outcome in outcomes {
        if let Some(transfer) = outcome.transfer {
            pulled.downloaded.push(outcome.digest);
            pulled.resumed_downloads += transfer.resumed;
            pulled.restarted_downloads += transfer.restarted;
        }
    }

    store.save_image(&pulled.record()).map_err(store_error)?;
    tracing::info!(
        reference = %reference,
        manifest = %pulled.manifest_digest,
        downloaded = pulled.downloaded.len(),
        "pulled image"
    );
    Ok(pulled)
}

/// Fetches the manifest `reference` names from the first endpoint that serves it.
async fn resolve_manifest(
    client: &RegistryClient,
    endpoints: &[Endpoint],
    reference: &Reference,
) -> Result<(Endpoint, FetchedManifest), PullError> {
    let tag_or_digest = reference.manifest_reference();
    let mut last_error = None;
    for endpoint in endpoints {
        match client
            .fetch_manifest(endpoint, &tag_or_digest, reference.digest.as_ref())
            .await
        {
            Ok(manifest) => return Ok((endpoint.clone(), manifest)),
            Err(error) => {
                if endpoint.mirror {
                    tracing::warn!(
                        reference = %reference,
                        mirror = %endpoint,
                        error = %crate::client::error_chain(&error),
                        "mirror failed, trying the next endpoint"
                    );
                }
                last_error = Some((endpoint, error));
            }
        }
    }
    let (endpoint, source) = last_error.expect("endpoints() returns at least one endpoint");
    Err(PullError::Registry {
        reference: reference.to_string(),
        location: endpoint.to_string(),
        source: Box::new(source),
    })
}

/// Parses the fetched manifest; for an index, stores it and fetches the platform's manifest.
/// Stores the image manifest and returns it with its digest and the index digest.
async fn resolve_platform_manifest(
    context: &PullContext<'_>,
    top: FetchedManifest,
    downloaded: &mut Vec<Digest>,
) -> Result<(ImageManifest, Digest, Option<Digest>), PullError> {
    let parse = |fetched: &FetchedManifest| {
        Manifest::parse(&fetched.bytes, fetched.content_type.as_deref()).map_err(|source| {
            PullError::Manifest {
                reference: context.reference.to_string(),
                location: context.origin(),
                source,
            }
        })
    };

    let (manifest, fetched, index_digest) = match parse(&top)? {
        Manifest::Image(manifest) => (manifest, top, None),
        Manifest::Index(index) => {
            let wanted = context
                .options
                .platform
                .clone()
                .unwrap_or_else(Platform::host);
            let descriptor = select_manifest(&index, &wanted, &context.reference.to_string())?;
            store_bytes(context, &top.digest, &top.bytes, downloaded).await?;
            let child = fetch_manifest_by_digest(context, &descriptor.digest).await?;
            match parse(&child)? {
                Manifest::Image(manifest) => (manifest, child, Some(top.digest)),
                Manifest::Index(_) => {
                    return Err(PullError::Manifest {
                        reference: context.reference.to_string(),
                        location: context.origin(),
                        source: ManifestError::NestedIndex {
                            digest: descriptor.digest.clone(),
                        },
                    })
                }
            }
        }
    };
    store_bytes(context, &fetched.digest, &fetched.bytes, downloaded).await?;
    Ok((manifest, fetched.digest, index_digest))
}

/// Returns the manifest `digest` from the store, or else fetches it.
async fn fetch_manifest_by_digest(
    context: &PullContext<'_>,
    digest: &Digest,
) -> Result<FetchedManifest, PullError> {
    if context.store.has_blob(digest) {
        let bytes = context
            .store
            .read_blob(digest)
            .map_err(|source| context.store_error(source))?;
        return Ok(FetchedManifest {
            bytes,
            content_type: None,
            digest: digest.clone(),
        });
    }
    context
        .client
        .fetch_manifest(&context.endpoint, &digest.to_string(), Some(digest))
        .await
        .map_err(|source| context.registry_error(source))
}

/// Returns the image config from the store, or else fetches and stores it. The blob lock is
/// held across the fetch, so concurrent pulls fetch it once.
async fn fetch_config(
    context: &PullContext<'_>,
    manifest: &ImageManifest,
    downloaded: &mut Vec<Digest>,
) -> Result<(ImageConfig, Digest), PullError> {
    let descriptor = &manifest.config;
    let digest = descriptor.digest.clone();
    let lock = layer::lock_blob(context, &digest).await?;

    let bytes = if context.store.has_blob(&digest) {
        drop(lock);
        context
            .store
            .read_blob(&digest)
            .map_err(|source| context.store_error(source))?
    } else {
        let bytes = context
            .client
            .fetch_blob_bytes(&context.endpoint, descriptor, MAX_CONFIG_SIZE)
            .await
            .map_err(|source| context.registry_error(source))?;
        let mut writer = context
            .store
            .blob_writer(lock, descriptor.size, &context.origin())
            .map_err(|source| context.store_error(source))?;
        writer
            .write_bytes(&bytes)
            .and_then(|()| writer.commit())
            .map_err(|source| context.store_error(source))?;
        downloaded.push(digest.clone());
        bytes
    };

    let config = ImageConfig::parse(&bytes).map_err(|source| PullError::ImageConfig {
        reference: context.reference.to_string(),
        digest: digest.clone(),
        source,
    })?;
    Ok((config, digest))
}

/// Stores small verified bytes (manifests) unless present; notes a new blob in `downloaded`.
async fn store_bytes(
    context: &PullContext<'_>,
    digest: &Digest,
    bytes: &[u8],
    downloaded: &mut Vec<Digest>,
) -> Result<(), PullError> {
    let store = context.store.clone();
    let origin = context.origin();
    let (digest_owned, bytes_owned) = (digest.clone(), bytes.to_vec());
    let written =
        tokio::task::spawn_blocking(move || store.write_blob(&digest_owned, &bytes_owned, &origin))
            .await
            .map_err(|source| PullError::Task {
                task: format!("storing blob {digest}"),
                source,
            })?
            .map_err(|source| context.store_error(source))?;
    if written {
        downloaded.push(digest.clone());
    }
    Ok(())
}

/// Returns the image's platform, failing when an explicitly requested platform differs.
fn check_platform(context: &PullContext<'_>, config: &ImageConfig) -> Result<Platform, PullError> {
    let actual = config.platform().normalised();
    match &context.options.platform {
        Some(wanted) if wanted.match_rank(&actual).is_none() => Err(PullError::PlatformMismatch {
            reference: context.reference.to_string(),
            wanted: wanted.to_string(),
            actual: actual.to_string(),
        }),
        Some(_) => Ok(actual),
        None => {
            let host = Platform::host();
            if host.match_rank(&actual).is_none() {
                tracing::warn!(reference = %context.reference, image = %actual, host = %host, "image platform differs from this machine's");
            }
            Ok(actual)
        }
    }
}

fn check_layers(
    context: &PullContext<'_>,
    manifest: &ImageManifest,
    config: &ImageConfig,
) -> Result<(), PullError> {
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return Err(PullError::LayerCount {
            reference: context.reference.to_string(),
            layers: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    for layer in &manifest.layers {
        let supported = matches!(
            layer.media_type.as_str(),
            media_types::OCI_LAYER_TAR
                | media_types::OCI_LAYER_GZIP
                | media_types::OCI_LAYER_ZSTD
                | media_types::DOCKER_LAYER_GZIP
        );
        if !supported || !layer.urls.is_empty() {
            return Err(PullError::UnsupportedLayer {
                reference: context.reference.to_string(),
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
            });
        }
    }
    Ok(())
}
