//! A running service instance: its name and address, its output, and the task that owns its
//! resources until it stops.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};

use super::error::ServiceError;
use super::output::OutputLog;
use crate::definition::ExposedPort;
use crate::runtime::ExitStatus;

/// How a stop was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// SIGTERM, then SIGKILL after the stop timeout.
    Graceful,
    /// SIGKILL at once.
    Kill,
}

/// One running instance of a service.
#[derive(Debug)]
pub struct Instance {
    /// The name shown in messages: the image reference, or the host of a host service.
    pub name: String,
    pub hostname: String,
    /// The instance's address on the bridge.
    pub address: IpAddr,
    pub ports: Vec<ExposedPort>,
    pub output: Arc<OutputLog>,
    exit: watch::Receiver<Option<ExitStatus>>,
    stop: Mutex<Option<oneshot::Sender<StopMode>>>,
    /// Set when the instance was stopped because a service it binds stopped.
    cause: Mutex<Option<Arc<ServiceError>>>,
}

/// The driver's ends of an instance's channels.
pub(crate) struct InstanceControl {
    /// Resolves when a stop is asked for; a dropped instance counts as a kill.
    pub stop: oneshot::Receiver<StopMode>,
    /// Receives the exit status once everything the instance held is released.
    pub exited: watch::Sender<Option<ExitStatus>>,
}

impl Instance {
    pub(crate) fn new(
        name: String,
        hostname: String,
        address: IpAddr,
        ports: Vec<ExposedPort>,
        output: Arc<OutputLog>,
    ) -> (Arc<Self>, InstanceControl) {
        let (stop_sender, stop) = oneshot::channel();
        let (exited, exit) = watch::channel(None);
        let instance = Arc::new(Self {
            name,
            hostname,
            address,
            ports,
            output,
            exit,
            stop: Mutex::new(Some(stop_sender)),
            cause: Mutex::default(),
        });
        (instance, InstanceControl { stop, exited })
    }

    /// Returns the exit status once the instance has stopped and released everything.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits until the instance has stopped and released everything.
    pub async fn exited(&self) -> ExitStatus {
        let mut exit = self.exit.clone();
        loop {
            if let Some(status) = *exit.borrow_and_update() {
                return status;
            }
            if exit.changed().await.is_err() {
                // The driver is gone without a status: it was dropped with the runtime.
                return ExitStatus::Signaled(libc::SIGKILL);
            }
        }
    }

    /// Returns why the instance was stopped, when a service it binds stopped first.
    pub fn cause(&self) -> Option<Arc<ServiceError>> {
        self.cause.lock().expect("cause lock poisoned").clone()
    }

    /// Records that the instance stops because a service it binds stopped.
    pub(crate) fn set_cause(&self, cause: ServiceError) {
        *self.cause.lock().expect("cause lock poisoned") = Some(Arc::new(cause));
    }

    /// Asks the driver to stop the instance; later calls do nothing.
    pub(crate) fn request_stop(&self, mode: StopMode) {
        let sender = self.stop.lock().expect("stop lock poisoned").take();
        if let Some(sender) = sender {
            tracing::info!(service = %self.name, hostname = %self.hostname, ?mode, "stopping service");
            let _ = sender.send(mode);
        }
    }
}
