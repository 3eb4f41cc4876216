//! The rootless process runtime: starts containers from the engine's user namespace.
//!
//! [`spawn`] re-executes the current binary (`/proc/self/exe`) in a hidden init mode, in new
//! mount, PID, UTS, IPC and network namespaces. The init reads its plan (the OCI runtime spec
//! plus the root file system plan) from a socket, builds the root file system, and reports
//! ready; the engine may then configure the container's network namespace through
//! [`ContainerProcess::pid`] before [`ContainerProcess::start`] releases it. The init then
//! drops privileges, installs the seccomp filter and runs the command, as PID 1 or under a
//! small init that reaps orphans and forwards signals.
//!
//! Every binary that embeds the engine must call [`init_if_requested`] as the first statement
//! of `main`, before [`crate::bootstrap::enter`]: in init mode it never returns.
//!
//! Terminals: with `process.terminal`, the init opens a pseudo-terminal in the container's
//! own `/dev/pts` (so it belongs to the container) and sends the master to the engine with
//! the ready message; [`ContainerProcess::take_tty`] hands it out and
//! [`ContainerProcess::resize_tty`] sets the window size (the kernel then sends SIGWINCH to
//! the command). A front-end forwards its own SIGWINCH by calling `resize_tty`.
//!
//! Commands inside a running container: under the small init, the init socket stays open
//! after start, and [`ProcessHandle::exec`] requests the init to fork a command next to the
//! container's command, with the same namespaces, root, user and security settings, and to
//! report its exit status and the tail of its output. Health checks use it.

mod channel;
pub mod copy;
mod defaults;
mod exec_in;
mod init;
mod launcher;
pub mod overlay;
mod process;
mod spawn;
mod spec;
mod validate;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use defaults::{default_spec, DEFAULT_CAPABILITIES, DEFAULT_PATH};
pub use exec_in::ExecOutcome;
pub use init::init_if_requested;
pub use process::{ContainerProcess, ExitStatus, ProcessHandle};
pub use spawn::spawn;
pub use spec::{ContainerSpec, Stdio};

use crate::state::StateError;

/// Failure to start, release, signal or wait for a container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container's state directory could not be prepared.
    #[error("container {id}: {source}")]
    State {
        id: String,
        #[source]
        source: StateError,
    },
    /// The spec is incomplete or contradicts itself.
    #[error("container {id}: invalid spec: {reason}")]
    InvalidSpec { id: String, reason: String },
    /// The spec requests something this runtime does not implement.
    #[error("container {id}: {what} is not supported by the mayfly runtime")]
    Unsupported { id: String, what: String },
    /// A bind mount's host path is missing or unreadable.
    #[error("container {id}: bind mount source {path} cannot be used: {source}; create it or fix the path")]
    BindSource {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The requested user or group does not exist in the engine's user namespace.
    #[error(
        "container {id}: {kind} {value} is not mapped in the engine's user namespace; with a \
         single-ID map only 0 exists, so add a subordinate range to /etc/subuid and /etc/subgid"
    )]
    IdNotMapped {
        id: String,
        kind: &'static str,
        value: u32,
    },
    /// Preparing a file or directory of the container failed.
    #[error("container {id}: failed to prepare {path}: {source}")]
    Prepare {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Copying the layers into a private root file system failed.
    #[error("container {id}: failed to copy the root file system: {source}")]
    CopyRootfs {
        id: String,
        #[source]
        source: copy::CopyError,
    },
    /// Starting the init process failed.
    #[error("container {id}: failed to start the init process: {source}")]
    Launch {
        id: String,
        #[source]
        source: io::Error,
    },
    /// Talking to the init over its socket failed.
    #[error("container {id}: lost contact with the init process: {source}")]
    Channel {
        id: String,
        #[source]
        source: io::Error,
    },
    /// The init reported a failed step.
    #[error("container {id}: {message}")]
    InitFailed { id: String, message: String },
    /// The init exited without reporting why.
    #[error("container {id}: the init process exited with {status} before the container started")]
    InitExited { id: String, status: ExitStatus },
    /// [`ContainerProcess::start`] was called twice.
    #[error("container {id} was already started")]
    AlreadyStarted { id: String },
    /// Waiting for the init process failed.
    #[error("container {id}: failed to wait for the init process: {source}")]
    Wait {
        id: String,
        #[source]
        source: io::Error,
    },
    /// Sending a signal failed.
    #[error("container {id}: failed to send signal {signal}: {source}")]
    Signal {
        id: String,
        signal: i32,
        #[source]
        source: io::Error,
    },
    /// A command was to run inside a container that has not started.
    #[error("container {id} has not started yet; call start before running a command in it")]
    NotStarted { id: String },
    /// A command was to run inside a container whose command runs as PID 1.
    #[error(
        "container {id} runs without mayfly's init (no_init), and only the init can run a \
         command inside a running container; start the container without --no-init"
    )]
    ExecWithoutInit { id: String },
    /// The command to run inside the container is empty.
    #[error("container {id}: the command to run inside the container is empty")]
    ExecEmpty { id: String },
    /// The init could not start the command.
    #[error("container {}: failed to run `{command}` inside the container: {message}", short_id(.id))]
    ExecFailed {
        id: String,
        command: String,
        message: String,
    },
    /// The container exited before the command inside it finished.
    #[error("container {} exited before `{command}` inside it finished", short_id(.id))]
    ExecContainerExited { id: String, command: String },
    /// The init did not report the end of the command in time.
    #[error(
        "container {}: the init did not report the end of `{command}` within {waited:?}, \
         so the container accepts no more commands; stop and restart it",
        short_id(.id)
    )]
    ExecNoReply {
        id: String,
        command: String,
        waited: Duration,
    },
    /// The init's socket was closed by an earlier failure or by the container's exit.
    #[error("container {id} accepts no more commands because its init exited or lost contact")]
    ExecClosed { id: String },
    /// Setting the terminal size failed.
    #[error("container {id}: failed to resize the terminal: {source}")]
    Tty {
        id: String,
        #[source]
        source: io::Error,
    },
}

/// Returns the first 12 characters of a container ID, as Docker shows them: enough to tell
/// containers apart in a message, and short enough to read.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
