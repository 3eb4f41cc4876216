//! Init mode: the re-executed binary that becomes a container's PID 1.
//!
//! Sequence, driven by the engine over the init socket (descriptor 3):
//!
//! 1. receive the plan;
//! 2. build the root file system and `pivot_root` into it ([`rootfs`]), open the terminal;
//! 3. send ready (with the terminal master), wait for start (the engine sets up the network
//!    namespace in between);
//! 4. drop privileges and install seccomp ([`security`], [`seccomp`]);
//! 5. run the command: exec it as PID 1 (`no_init`), or fork it under the small init
//!    ([`reaper`]), which reports started, keeps the socket open and runs the engine's exec
//!    requests ([`exec_child`]) until the command exits.

mod devices;
mod exec;
mod exec_child;
mod mounts;
mod paths;
mod reaper;
mod rootfs;
mod seccomp;
mod security;
mod tty;

use std::io;
use std::os::fd::{AsFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use super::channel::Channel;
use super::launcher::INIT_FD_VAR;
use super::overlay::OverlayError;
use super::spec::{FromInit, InitPlan, ToInit};
use crate::sys;

/// A failed step of the init, sent to the engine as text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    /// A file system operation failed.
    #[error("failed to {action} {path}: {source}")]
    Path {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A system call without a path failed.
    #[error("failed to {step}: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// The overlay root file system could not be mounted.
    #[error("failed to mount the root file system: {0}")]
    Overlay(#[from] OverlayError),
    /// Changing capabilities failed.
    #[error("failed to set the {set} capability set: {source}")]
    Caps {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    /// A capability name from the spec is unknown to the kernel interface.
    #[error("unknown capability {name} in process.capabilities")]
    UnknownCapability { name: String },
    /// Building or installing the seccomp filter failed.
    #[error("failed to install the seccomp filter: {0}")]
    Seccomp(#[source] seccompiler::Error),
    /// The engine closed the socket before sending start.
    #[error("the engine closed the init socket")]
    EngineGone,
}

impl InitError {
    pub(crate) fn path(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Path {
            action,
            path,
            source,
        }
    }

    pub(crate) fn errno(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(nix::errno::Errno) -> Self {
        let path = path.into();
        move |errno| Self::Path {
            action,
            path,
            source: errno.into(),
        }
    }

    pub(crate) fn step(step: &'static str) -> impl FnOnce(nix::errno::Errno) -> Self {
        move |errno| Self::Step {
            step,
            source: errno.into(),
        }
    }
}

/// Runs the container init when this process was started as one, and never returns then.
///
/// Call it as the first statement of `main` in every binary that embeds the engine, before
/// [`crate::bootstrap::enter`] and before anything starts a thread: the runtime starts
/// containers by re-executing `/proc/self/exe` with the environment variable
/// `MAYFLY_INIT_FD` set. Without that variable it returns at once.
pub fn init_if_requested() {
    let Ok(value) = std::env::var(INIT_FD_VAR) else {
        return;
    };
    let code = run(&value);
    std::process::exit(code);
}

fn run(fd_text: &str) -> i32 {
    std::env::remove_var(INIT_FD_VAR);
    let Ok(fd) = fd_text.parse::<RawFd>() else {
        eprintln!("mayfly-init: invalid {INIT_FD_VAR}={fd_text:?}");
        return 125;
    };
    // Nothing but stdio and the socket may reach the command.
    let _ = sys::close_range_cloexec(3, fd - 1);
    let _ = sys::close_range_cloexec(fd + 1, RawFd::MAX);
    let _ = sys::close_range_cloexec(fd, fd);
    // SAFETY: the launcher installed the init socket at this descriptor number and nothing
    // else in this freshly executed process owns it.
    let socket = unsafe { UnixStream::from_raw_fd(fd) };
    let mut channel = Channel::new(socket);

    let plan = match channel.recv::<ToInit>() {
        Ok(Some((ToInit::Plan(plan), _))) => *plan,
        _ => return 125,
    };
    match run_plan(&plan, &mut channel) {
        Ok(code) => code,
        Err(err) => {
            // The engine may be gone already, and then only the exit status remains.
            let _ = channel.send(
                &FromInit::Failed {
                    message: err.to_string(),
                },
                None,
            );
            125
        }
    }
}

fn run_plan(plan: &InitPlan, channel: &mut Channel) -> Result<i32, InitError> {
    rootfs::prepare(plan)?;
    let terminal = if plan.tty {
        Some(tty::open(plan)?)
    } else {
        None
    };

    let master = terminal.as_ref().map(|t| t.master.as_fd());
    channel
        .send(&FromInit::Ready, master)
        .map_err(|source| InitError::Step {
            step: "report ready to the engine",
            source,
        })?;
    let slave = terminal.map(|t| t.slave);
    match channel.recv::<ToInit>() {
        Ok(Some((ToInit::Start, _))) => {}
        _ => return Err(InitError::EngineGone),
    }

    let process = plan
        .oci
        .process()
        .as_ref()
        .expect("validated by the engine");
    security::apply(process, channel)?;

    let command = exec::Command::from_process(process);
    if plan.no_init {
        // The socket is close-on-exec, so the engine reads end of stream once the command starts.
        exec::exec_as_pid1(&command, slave.as_ref())
    } else {
        reaper::run(&command, slave, channel)
    }
}
