//! One running instance per service digest in an engine session: a single-flight start, a
//! reference per binding, and a stop one grace period after the last reference goes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_image::digest::Digest;
use tokio::sync::watch;

use super::error::ServiceError;
use super::instance::{Instance, StopMode};

type StartResult = Option<Result<Arc<Instance>, Arc<ServiceError>>>;

/// The service instances of one engine session.
#[derive(Debug)]
pub(crate) struct Registry {
    entries: Mutex<Entries>,
    grace: Duration,
}

#[derive(Debug, Default)]
struct Entries {
    by_digest: HashMap<Digest, Entry>,
    next_generation: u64,
}

#[derive(Debug)]
struct Entry {
    /// Tells this instance apart from earlier and later ones of the same digest.
    generation: u64,
    refs: usize,
    /// Bumped by every release and acquire; a grace timer acts only if it is unchanged.
    epoch: u64,
    stopping: bool,
    started: watch::Receiver<StartResult>,
    /// Becomes true once the instance has stopped and released everything.
    gone: watch::Receiver<bool>,
}

/// A reference to a running instance; the instance stops one grace period after the last
/// reference is dropped.
#[derive(Debug)]
pub struct ServiceRef {
    registry: Arc<Registry>,
    digest: Digest,
    generation: u64,
    instance: Arc<Instance>,
}

impl ServiceRef {
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }
}

impl Drop for ServiceRef {
    fn drop(&mut self) {
        self.registry.release(&self.digest, self.generation);
    }
}

enum Next {
    /// Wait for the instance that is stopping, then try again.
    AfterStop(watch::Receiver<bool>),
    /// Wait for the start this reference joined.
    Started(watch::Receiver<StartResult>, u64),
}

impl Registry {
    pub(crate) fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::default(),
            grace,
        })
    }

    /// Returns a reference to the instance of `digest`, starting it with `start` when none
    /// runs. Concurrent callers share one start, which runs on its own task so that it
    /// finishes even when the caller that began it is cancelled.
    pub(crate) async fn acquire<F, Fut>(
        self: &Arc<Self>,
        digest: &Digest,
        start: F,
    ) -> Result<ServiceRef, ServiceError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Instance>, ServiceError>> + Send + 'static,
    {
        let mut start = Some(start);
        loop {
            let next = self.join_or_begin(digest, &mut start);
            match next {
                Next::AfterStop(mut gone) => {
                    tracing::debug!(%digest, "waiting for a stopping service instance to go");
                    // An error means the stopping instance's driver is gone, which is as good.
                    let _ = gone.wait_for(|gone| *gone).await;
                }
                Next::Started(started, generation) => {
                    return self.wait_started(digest, started, generation).await;
                }
            }
        }
    }

    fn join_or_begin<F, Fut>(self: &Arc<Self>, digest: &Digest, start: &mut Option<F>) -> Next
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Instance>, ServiceError>> + Send + 'static,
    {
        let mut entries = self.lock();
        if let Some(entry) = entries.by_digest.get_mut(digest) {
            if entry.stopping {
                return Next::AfterStop(entry.gone.clone());
            }
            entry.refs += 1;
            entry.epoch += 1;
            return Next::Started(entry.started.clone(), entry.generation);
        }

        let generation = entries.next_generation;
        entries.next_generation += 1;
        let (started_sender, started) = watch::channel(None);
        let (gone_sender, gone) = watch::channel(false);
        entries.by_digest.insert(
            digest.clone(),
            Entry {
                generation,
                refs: 1,
                epoch: 0,
                stopping: false,
                started: started.clone(),
                gone,
            },
        );
        drop(entries);

        tracing::info!(%digest, "starting service");
        let start = start.take().expect("a start is begun at most once");
        let starting = start();
        let registry = self.clone();
        let digest = digest.clone();
        tokio::spawn(async move {
            let result = starting.await.map_err(Arc::new);
            let _ = started_sender.send(Some(result.clone()));
            match result {
                Ok(instance) => {
                    let status = instance.exited().await;
                    tracing::info!(service = %instance.name, hostname = %instance.hostname, %status, "service stopped");
                }
                // The clients that waited get the error; the log keeps only the fact.
                Err(_) => tracing::info!(%digest, "service failed to start"),
            }
            registry.forget(&digest, generation);
            let _ = gone_sender.send(true);
        });
        Next::Started(started, generation)
    }

    async fn wait_started(
        self: &Arc<Self>,
        digest: &Digest,
        mut started: watch::Receiver<StartResult>,
        generation: u64,
    ) -> Result<ServiceRef, ServiceError> {
        let result = match started.wait_for(Option::is_some).await {
            Ok(result) => result.clone().expect("waited for a result"),
            Err(_) => {
                self.release(digest, generation);
                panic!("a service start task ended without a result");
            }
        };
        match result {
            Ok(instance) => Ok(ServiceRef {
                registry: self.clone(),
                digest: digest.clone(),
                generation,
                instance,
            }),
            Err(error) => {
                self.release(digest, generation);
                Err(ServiceError::Shared(error))
            }
        }
    }

    /// Forgets the instance once it has stopped, so that the next client starts anew.
    fn forget(&self, digest: &Digest, generation: u64) {
        let mut entries = self.lock();
        if entries
            .by_digest
            .get(digest)
            .is_some_and(|entry| entry.generation == generation)
        {
            entries.by_digest.remove(digest);
        }
    }

    fn release(self: &Arc<Self>, digest: &Digest, generation: u64) {
        let mut entries = self.lock();
        let Some(entry) = entries.by_digest.get_mut(digest) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        entry.refs -= 1;
        entry.epoch += 1;
        if entry.refs > 0 || entry.stopping {
            return;
        }
        let epoch = entry.epoch;
        drop(entries);

        let registry = self.clone();
        let owned_digest = digest.clone();
        let stop_later = async move {
            tokio::time::sleep(registry.grace).await;
            registry.stop_if_unused(&owned_digest, generation, epoch, StopMode::Graceful);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(stop_later);
            }
            Err(_) => self.stop_if_unused(digest, generation, epoch, StopMode::Kill),
        }
    }

    /// Stops the instance when no reference came back since `epoch`.
    fn stop_if_unused(&self, digest: &Digest, generation: u64, epoch: u64, mode: StopMode) {
        let mut entries = self.lock();
        let Some(entry) = entries.by_digest.get_mut(digest) else {
            return;
        };
        if entry.generation != generation || entry.refs > 0 || entry.epoch != epoch {
            return;
        }
        entry.stopping = true;
        let instance = entry.started.borrow().clone().and_then(Result::ok);
        drop(entries);
        if let Some(instance) = instance {
            instance.request_stop(mode);
        }
    }

    /// Stops the instance of `digest` now if no reference holds it; returns whether it did.
    pub(crate) fn stop_unused_now(&self, digest: &Digest, mode: StopMode) -> bool {
        let (generation, epoch) = {
            let entries = self.lock();
            match entries.by_digest.get(digest) {
                Some(entry) if entry.refs == 0 => (entry.generation, entry.epoch),
                _ => return false,
            }
        };
        self.stop_if_unused(digest, generation, epoch, mode);
        true
    }

    /// Stops every running instance and waits until each has released everything, as a
    /// front-end does before it exits.
    pub(crate) async fn stop_all(&self, mode: StopMode) {
        let instances: Vec<Arc<Instance>> = {
            let mut entries = self.lock();
            entries
                .by_digest
                .values_mut()
                .filter_map(|entry| {
                    entry.stopping = true;
                    entry.started.borrow().clone().and_then(Result::ok)
                })
                .collect()
        };
        for instance in &instances {
            instance.request_stop(mode);
        }
        futures::future::join_all(instances.iter().map(|instance| instance.exited())).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().expect("service registry poisoned")
    }
}
