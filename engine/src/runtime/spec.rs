//! What the engine asks the runtime to start, and the plan it hands to the container's init.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::overlay::OverlayDirs;
use crate::bootstrap::Storage;

/// Where one of the container's standard streams goes.
#[derive(Clone, Debug, Default)]
pub enum Stdio {
    /// The engine's own descriptor.
    Inherit,
    /// `/dev/null`.
    #[default]
    Null,
    /// A pipe whose other end [`super::ContainerProcess`] hands out.
    Piped,
    /// A descriptor the caller opened, such as a log file.
    Fd(Arc<OwnedFd>),
}

/// A container to start with [`super::spawn`].
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    /// Unique name of this container among the engine's containers; it names the state
    /// directory `<containers_dir>/<id>/`. Characters: a-z, A-Z, 0-9, '_', '-', '.'.
    pub id: String,
    /// The OCI runtime spec; [`super::default_spec`] gives Docker's defaults. The runtime
    /// honours `process` (args, env, cwd, user, terminal, console size, capabilities,
    /// rlimits, no_new_privileges), `hostname`, `domainname`, `root.readonly`, `mounts` of
    /// type `bind` and `tmpfs`, and `linux` `sysctl`, `masked_paths` and `readonly_paths`.
    /// `root.path` is ignored in favour of `layers`, and `/proc`, `/dev`, `/dev/pts`,
    /// `/dev/shm`, `/dev/mqueue` and `/sys` are always mounted by the runtime.
    pub oci: oci_spec::runtime::Spec,
    /// Unpacked image layers in overlay format, the bottom-most (base) first.
    pub layers: Vec<PathBuf>,
    /// How to build the root file system; pass [`crate::bootstrap::Bootstrap::storage`].
    pub storage: Storage,
    /// Directory of the container state directories; pass
    /// `bootstrap.state_dirs().containers`.
    pub containers_dir: PathBuf,
    /// Standard input, ignored when `oci.process.terminal` is true.
    pub stdin: Stdio,
    /// Standard output, ignored when `oci.process.terminal` is true.
    pub stdout: Stdio,
    /// Standard error, ignored when `oci.process.terminal` is true.
    pub stderr: Stdio,
    /// Run the command as PID 1 instead of under the runtime's small init. Without the init,
    /// signals from the engine other than SIGKILL reach the command only if it handles them.
    pub no_init: bool,
    /// Content of the container's `/etc/hosts`; `None` keeps the image's file.
    pub hosts: Option<String>,
    /// Content of the container's `/etc/resolv.conf`; `None` keeps the image's file.
    pub resolv_conf: Option<String>,
}

/// How the init mounts the root file system.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum RootfsPlan {
    /// Overlay of the layers on the mount point.
    Overlay(OverlayDirs),
    /// Bind mount of an already copied tree onto itself.
    Copied,
}

/// A file from the container directory bind-mounted over a file of the container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FileMount {
    pub source: PathBuf,
    pub destination: PathBuf,
}

/// Everything the init needs, sent as JSON over the init socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InitPlan {
    pub oci: oci_spec::runtime::Spec,
    pub rootfs: RootfsPlan,
    /// Directory the root file system is mounted on before `pivot_root`.
    pub mountpoint: PathBuf,
    pub files: Vec<FileMount>,
    pub tty: bool,
    pub no_init: bool,
}

/// Messages from the engine to the init.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToInit {
    Plan(Box<InitPlan>),
    /// Release the container: drop privileges and run the command.
    Start,
    /// Run a command inside the running container (only under the small init).
    Exec(ExecRequest),
}

/// A command to run inside the running container, next to its main command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ExecRequest {
    pub args: Vec<String>,
    /// The init kills the command's process group with SIGKILL after this many milliseconds.
    pub timeout_ms: u64,
}

/// The result of an exec request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExecReply {
    /// The exit status, 128+N when signal N killed it, or `None` when the timeout killed it.
    pub code: Option<i32>,
    /// The last bytes the command wrote to stdout and stderr, in the order written.
    pub output: Vec<u8>,
    /// Whether earlier output was dropped to keep `output` short.
    pub truncated: bool,
}

/// Messages from the init to the engine.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromInit {
    /// The root file system and namespaces are ready; with a terminal, the pseudo-terminal
    /// master travels with this message.
    Ready,
    /// The command runs under the small init, which keeps the socket open for exec
    /// requests. Without the init the socket closes instead, when the command is executed.
    Started,
    /// A step failed; the init exits after sending this.
    Failed { message: String },
    /// The command of an exec request ended.
    ExecDone(ExecReply),
    /// The init could not start the command of an exec request, and it keeps running.
    ExecFailed { message: String },
}
