//! An engine session: the handle a front-end keeps after the bootstrap. It owns the image
//! stores, the settings, the network and the outcomes of exec steps already run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mayfly_image::digest::Digest;
use mayfly_image::pull::NoProgress;
use mayfly_image::unpack::remove_tree;

use crate::bootstrap::Bootstrap;
use crate::config::Config;
use crate::container::builder::Container;
use crate::container::exec::ExecOutcome;
use crate::images::{Images, ImagesError};
use crate::network::{Network, NetworkError};
use crate::service::{Host, Registry, ServiceRef};

/// The engine of one front-end session.
pub struct Engine {
    config: Config,
    /// This session's exec-step layers; removed when the session ends.
    snapshots: PathBuf,
    bootstrap: Bootstrap,
    images: Images,
    /// Outcomes of exec steps, by the digest of the definition that ends with the step.
    pub(crate) execs: Mutex<HashMap<Digest, Arc<ExecOutcome>>>,
    pub(crate) progress: Box<dyn mayfly_image::pull::ProgressSink + Send + Sync>,
    /// The service instances of this session.
    pub(crate) services: Arc<Registry>,
    /// References that [`crate::service::Service::start`] holds until `stop`.
    pub(crate) started_services: Mutex<HashMap<Digest, ServiceRef>>,
    /// The sandbox and DNS responder, made when the first container needs them.
    network: tokio::sync::OnceCell<Network>,
}

impl Engine {
    /// Opens the stores named by `config`. Call [`crate::bootstrap::enter`] first.
    pub fn new(config: Config, bootstrap: Bootstrap) -> Result<Arc<Self>, ImagesError> {
        let images = Images::open(&config.data_dir)?;
        let snapshots_root = config.data_dir.join("snapshots");
        remove_dead_sessions(&snapshots_root);
        let snapshots = snapshots_root.join(std::process::id().to_string());
        let grace_period = config.grace_period;
        Ok(Arc::new(Self {
            services: Registry::new(grace_period),
            config,
            snapshots,
            bootstrap,
            images,
            execs: Mutex::default(),
            progress: Box::new(NoProgress),
            started_services: Mutex::default(),
            network: tokio::sync::OnceCell::new(),
        }))
    }

    /// Returns a container definition with no image yet; start it with [`Container::from`].
    pub fn container(self: &Arc<Self>) -> Container {
        Container::new(self.clone())
    }

    /// Stops every service of the session (SIGTERM, then SIGKILL after the stop timeout) and
    /// waits until each has released its container, network and tunnels.
    pub async fn stop_services(&self) {
        self.started_services
            .lock()
            .expect("started services poisoned")
            .clear();
        self.services
            .stop_all(crate::service::StopMode::Graceful)
            .await;
    }

    /// The host the engine runs on, for host services.
    pub fn host(self: &Arc<Self>) -> Host {
        Host::new(self.clone())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Returns the session's network, creating it on first use.
    pub async fn network(&self) -> Result<&Network, NetworkError> {
        self.network
            .get_or_try_init(|| async {
                // The netlink requests block, and on a thread of their own they overlap with
                // what the caller does meanwhile, such as spawning a container.
                let config = self.config.clone();
                tokio::task::spawn_blocking(move || Network::create(&config))
                    .await
                    .expect("the network creation task panicked")
            })
            .await
    }

    /// Directory of the content-addressed layers that hold new files.
    pub fn files_dir(&self) -> PathBuf {
        self.config.data_dir.join("files")
    }

    /// Directory of the layers that this session's exec steps leave behind.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.snapshots.clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(error) = remove_tree(&self.snapshots) {
            tracing::warn!(path = %self.snapshots.display(), %error, "failed to remove the session's exec layers");
        }
    }
}

/// Removes the exec layers of sessions whose process is gone (killed engines). A session's
/// directory is named after its process ID, which is alive while the session runs.
fn remove_dead_sessions(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!(pid, "removing exec layers of a session that is gone");
        if let Err(error) = remove_tree(&entry.path()) {
            tracing::warn!(path = %entry.path().display(), %error, "failed to remove stale exec layers");
        }
    }
}
