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

/// A counted reference whose client is still waiting for the start.
struct PendingRef {
    registry: Arc<Registry>,
    digest: Digest,
    generation: u64,
    /// False once a [`ServiceRef`] owns the count.
    counted: bool,
}

impl Drop for PendingRef {
    fn drop(&mut self) {
        if self.counted {
            self.registry.release(&self.digest, self.generation);
        }
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
            if result.is_ok() {
                // Every client may have gone, or a stop come, while the start ran.
                registry.stop_later_if_unused(&digest, generation);
            }
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
        // The reference is counted already; a client cancelled while it waits gives it back.
        let mut pending = PendingRef {
            registry: self.clone(),
            digest: digest.clone(),
            generation,
            counted: true,
        };
        let result = match started.wait_for(Option::is_some).await {
            Ok(result) => result.clone().expect("waited for a result"),
            Err(_) => panic!("a service start task ended without a result"),
        };
        match result {
            Ok(instance) => {
                pending.counted = false;
                Ok(ServiceRef {
                    registry: self.clone(),
                    digest: digest.clone(),
                    generation,
                    instance,
                })
            }
            Err(error) => Err(ServiceError::Shared(error)),
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
        drop(entries);
        self.stop_later_if_unused(digest, generation);
    }

    /// Stops the instance one grace period from now unless a reference comes back first; a
    /// stop asked for during the start happens at once. An instance still starting is left
    /// to the end of its start, which calls this again.
    fn stop_later_if_unused(self: &Arc<Self>, digest: &Digest, generation: u64) {
        let mut entries = self.lock();
        let Some(entry) = entries.by_digest.get_mut(digest) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        let instance = entry.started.borrow().clone().and_then(Result::ok);
        let Some(instance) = instance else {
            return;
        };
        if entry.stopping {
            drop(entries);
            instance.request_stop(StopMode::Graceful);
            return;
        }
        if entry.refs > 0 {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::runtime::ExitStatus;
    use crate::service::output::OutputLog;

    type FakeStart =
        std::pin::Pin<Box<dyn Future<Output = Result<Arc<Instance>, ServiceError>> + Send>>;

    /// Starts a fake instance whose driver reports exit 0 once a stop is asked for, and
    /// counts starts and stops.
    fn fake_start(
        starts: Arc<AtomicUsize>,
        stops: Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl FnOnce() -> FakeStart {
        move || {
            Box::pin(async move {
                starts.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let (instance, control) = Instance::new(
                    "fake".to_owned(),
                    "fakehost".to_owned(),
                    IpAddr::from([10, 89, 0, 2]),
                    Vec::new(),
                    Arc::new(OutputLog::default()),
                );
                tokio::spawn(async move {
                    let _ = control.stop.await;
                    stops.fetch_add(1, Ordering::SeqCst);
                    let _ = control.exited.send(Some(ExitStatus::Exited(0)));
                });
                Ok(instance)
            })
        }
    }

    use std::net::IpAddr;

    fn digest() -> Digest {
        Digest::of_bytes(b"service")
    }

    #[tokio::test]
    async fn concurrent_clients_share_one_start() {
        let registry = Registry::new(Duration::from_millis(50));
        let starts = Arc::new(AtomicUsize::new(0));
        let stops = Arc::new(AtomicUsize::new(0));
        let acquires = (0..50).map(|_| {
            let start = fake_start(starts.clone(), stops.clone(), Duration::from_millis(20));
            let registry = registry.clone();
            async move { registry.acquire(&digest(), start).await.unwrap() }
        });
        let references = futures::future::join_all(acquires).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);

        drop(references);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stops.load(Ordering::SeqCst), 1);
        assert!(registry.lock().by_digest.is_empty());
    }

    #[tokio::test]
    async fn new_client_in_grace_period_cancels_stop() {
        let registry = Registry::new(Duration::from_millis(100));
        let starts = Arc::new(AtomicUsize::new(0));
        let stops = Arc::new(AtomicUsize::new(0));
        let start = || fake_start(starts.clone(), stops.clone(), Duration::ZERO);

        let first = registry.acquire(&digest(), start()).await.unwrap();
        drop(first);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let second = registry.acquire(&digest(), start()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stops.load(Ordering::SeqCst), 0);
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        drop(second);
    }

    #[tokio::test]
    async fn cancelled_first_client_still_starts_and_stops() {
        let registry = Registry::new(Duration::from_millis(20));
        let starts = Arc::new(AtomicUsize::new(0));
        let stops = Arc::new(AtomicUsize::new(0));
        let start = fake_start(starts.clone(), stops.clone(), Duration::from_millis(50));

        let digest = digest();
        let cancelled =
            tokio::time::timeout(Duration::from_millis(10), registry.acquire(&digest, start));
        assert!(cancelled.await.is_err());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(stops.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stopping_instance_is_not_handed_out() {
        let registry = Registry::new(Duration::ZERO);
        let starts = Arc::new(AtomicUsize::new(0));
        let stops = Arc::new(AtomicUsize::new(0));
        let start = || fake_start(starts.clone(), stops.clone(), Duration::ZERO);

        let first = registry.acquire(&digest(), start()).await.unwrap();
        let first_instance = first.instance().clone();
        drop(first);
        assert!(registry.stop_unused_now(&digest(), StopMode::Graceful));
        let second = registry.acquire(&digest(), start()).await.unwrap();
        assert!(!Arc::ptr_eq(second.instance(), &first_instance));
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }
}
