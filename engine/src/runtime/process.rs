//! The engine's handle on a running container: the init's PID and pidfd, its streams and its
//! state directory.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use tokio::io::unix::AsyncFd;

use super::channel::Channel;
use super::exec_in::{self, ExecOutcome, ExecSlot};
use super::spec::{FromInit, ToInit};
use super::RuntimeError;
use crate::state::ContainerDir;
use crate::sys;

/// Exit status of a container's init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this status. Under the small init, a command killed by signal N shows up
    /// here as 128+N.
    Exited(i32),
    /// Killed by this signal number (the init itself, for example by SIGKILL).
    Signaled(i32),
}

impl ExitStatus {
    /// Returns the status the way a shell reports it: the exit status, or 128+N.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled(signal) => 128 + signal,
        }
    }

    /// Returns whether the status is 0.
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }

    fn from_wait(status: WaitStatus) -> Option<Self> {
        match status {
            WaitStatus::Exited(_, code) => Some(Self::Exited(code)),
            WaitStatus::Signaled(_, signal, _) => Some(Self::Signaled(signal as i32)),
            _ => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exit status {code}"),
            Self::Signaled(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// A cloneable handle that sends signals to a container's init and runs commands inside
/// the container, usable while another task waits on the [`ContainerProcess`].
#[derive(Clone, Debug)]
pub struct ProcessHandle {
    id: Arc<str>,
    pidfd: Arc<OwnedFd>,
    exec: Arc<ExecSlot>,
}

impl ProcessHandle {
    /// Sends `signal` to the container's PID 1. The small init forwards SIGINT, SIGTERM,
    /// SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH to the command.
    pub fn signal(&self, signal: Signal) -> Result<(), RuntimeError> {
        match sys::pidfd_send_signal(self.pidfd.as_fd(), signal as i32) {
            Ok(()) => Ok(()),
            // ESRCH: the process already exited; there is nothing left to signal.
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(RuntimeError::Signal {
                id: self.id.to_string(),
                signal: signal as i32,
                source,
            }),
        }
    }

    /// Returns whether the container's PID 1 has exited, without waiting or reaping it. A
    /// pidfd becomes readable when its process exits.
    pub fn has_exited(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(1..)
        )
    }

    /// Runs `args` inside the running container and waits for it, like `docker exec`. The
    /// small init forks the command with the container's namespaces, root file system,
    /// user, capabilities, no_new_privs, seccomp filter, environment and working directory.
    /// Standard input is `/dev/null`, and stdout and stderr are captured together.
    ///
    /// After `timeout` the init kills the command's process group with SIGKILL and the
    /// outcome's `code` is `None`; the container keeps running. Requests to one container
    /// run one at a time, in the order they arrive. A command that is not found exits with
    /// 127, one that cannot be executed with 126. Fails when the container has not started,
    /// runs without the init (`no_init`), or exits before the command ends. Must run inside
    /// a tokio runtime, and the exchange with the init finishes on a blocking thread even
    /// when the returned future is dropped.
    pub async fn exec(
        &self,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutcome, RuntimeError> {
        exec_in::exec(&self.exec, &self.id, args, timeout).await
    }
}

/// A container started by [`super::spawn`]. Dropping it kills the container (SIGKILL to its
/// PID 1 takes down the whole PID namespace), reaps it and removes its state directory.
#[derive(Debug)]
pub struct ContainerProcess {
    handle: ProcessHandle,
    pid: libc::pid_t,
    channel: Option<Channel>,
    no_init: bool,
    started: bool,
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    tty: Option<File>,
    tty_control: Option<OwnedFd>,
    dir: Option<ContainerDir>,
    status: Option<ExitStatus>,
}

/// Parent-side ends of the standard streams.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

impl ContainerProcess {
    pub(crate) fn new(
        id: &str,
        pid: libc::pid_t,
        pidfd: OwnedFd,
        channel: Channel,
        no_init: bool,
        streams: Streams,
        dir: ContainerDir,
    ) -> Self {
        Self {
            handle: ProcessHandle {
                id: Arc::from(id),
                pidfd: Arc::new(pidfd),
                exec: Arc::new(ExecSlot::new()),
            },
            pid,
            channel: Some(channel),
            no_init,
            started: false,
            stdin: streams.stdin,
            stdout: streams.stdout,
            stderr: streams.stderr,
            tty: None,
            tty_control: None,
            dir: Some(dir),
            status: None,
        }
    }

    pub(crate) fn channel(&mut self) -> &mut Channel {
        self.channel
            .as_mut()
            .expect("the channel lives until start")
    }

    pub(crate) fn set_tty(&mut self, master: OwnedFd) -> io::Result<()> {
        self.tty_control = Some(master.try_clone()?);
        self.tty = Some(File::from(master));
        Ok(())
    }

    /// Returns the container's id.
    pub fn id(&self) -> &str {
        &self.handle.id
    }

    /// Returns the PID of the container's init in the engine's PID namespace, which is the host's.
    /// Its `/proc/<pid>/ns/net` is the container's network namespace.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Returns a pidfd of the container's init, valid as long as this value lives.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.handle.pidfd.as_fd()
    }

    /// Returns the state directory, which contains the upper layer and the generated files.
    pub fn state_dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(ContainerDir::path)
    }

    /// Returns a handle to signal the container and run commands in it from another task.
    pub fn handle(&self) -> ProcessHandle {
        self.handle.clone()
    }

    /// Releases the container: the init drops privileges, installs seccomp and runs the
    /// command. Blocks for the few milliseconds this takes; call it from `spawn_blocking` in
    /// async code. Errors of the command itself (not found: 127, not executable: 126) show up
    /// as its exit status, as with Docker.
    pub fn start(&mut self) -> Result<(), RuntimeError> {
        let id = self.id().to_owned();
        if self.started {
            return Err(RuntimeError::AlreadyStarted { id });
        }
        self.started = true;
        let mut channel = self
            .channel
            .take()
            .ok_or_else(|| RuntimeError::AlreadyStarted { id: id.clone() })?;
        let lost = |source| RuntimeError::Channel {
            id: id.clone(),
            source,
        };
        channel.send(&ToInit::Start, None).map_err(lost)?;

        // The small init reports started and keeps the socket for exec requests. Without
        // it, the socket closes when the command is executed as PID 1.
        match channel.recv::<FromInit>().map_err(lost)? {
            Some((FromInit::Started, _)) => {
                tracing::info!(container = %id, pid = self.pid, "container started");
                self.handle.exec.set_started(Some(channel));
                Ok(())
            }
            None if self.no_init => {
                tracing::info!(container = %id, pid = self.pid, "container started without init");
                self.handle.exec.set_started(None);
                Ok(())
            }
            None => {
                // The init died before it could report, and wait() returns its status.
                tracing::warn!(container = %id, pid = self.pid, "the init closed its socket without reporting the start");
                self.handle.exec.close();
                Ok(())
            }
            Some((FromInit::Failed { message }, _)) => {
                Err(RuntimeError::InitFailed { id, message })
            }
            Some((other, _)) => Err(RuntimeError::InitFailed {
                id,
                message: format!("the init sent an unexpected message {other:?} at start"),
            }),
        }
    }

    /// Takes the write end of the container's stdin pipe (with [`super::Stdio::Piped`]).
    pub fn take_stdin(&mut self) -> Option<File> {
        self.stdin.take()
    }

    /// Takes the read end of the container's stdout pipe (with [`super::Stdio::Piped`]).
    pub fn take_stdout(&mut self) -> Option<File> {
        self.stdout.take()
    }

    /// Takes the read end of the container's stderr pipe (with [`super::Stdio::Piped`]).
    pub fn take_stderr(&mut self) -> Option<File> {
        self.stderr.take()
    }

    /// Takes the pseudo-terminal master (with `process.terminal`).
    pub fn take_tty(&mut self) -> Option<File> {
        self.tty.take()
    }

    /// Sets the terminal's window size; the kernel sends SIGWINCH to the command.
    pub fn resize_tty(&self, rows: u16, cols: u16) -> Result<(), RuntimeError> {
        let Some(master) = &self.tty_control else {
            return Ok(());
        };
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        sys::set_window_size(master.as_fd(), &size).map_err(|source| RuntimeError::Tty {
            id: self.id().to_owned(),
            source,
        })
    }

    /// Sends `signal` to the container's PID 1 (see [`ProcessHandle::signal`]).
    pub fn signal(&self, signal: Signal) -> Result<(), RuntimeError> {
        self.handle.signal(signal)
    }

    /// Returns the exit status if the init has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, RuntimeError> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
        match waitid(Id::PIDFd(self.handle.pidfd.as_fd()), flags) {
            Ok(status) => {
                self.status = ExitStatus::from_wait(status);
                if let Some(status) = self.status {
                    tracing::info!(container = %self.id(), %status, "container exited");
                }
                Ok(self.status)
            }
            Err(errno) => Err(RuntimeError::Wait {
                id: self.id().to_owned(),
                source: errno.into(),
            }),
        }
    }

    /// Waits for the init to exit, blocking the thread.
    pub fn wait_blocking(&mut self) -> Result<ExitStatus, RuntimeError> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            let mut fds = [nix::poll::PollFd::new(
                self.handle.pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => {
                    return Err(RuntimeError::Wait {
                        id: self.id().to_owned(),
                        source: errno.into(),
                    })
                }
            }
        }
    }

    /// Waits for the init to exit. The pidfd is registered with the tokio reactor, so this
    /// must run inside a tokio runtime.
    pub async fn wait(&mut self) -> Result<ExitStatus, RuntimeError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let id = self.id().to_owned();
        let wait_error = |source| RuntimeError::Wait {
            id: id.clone(),
            source,
        };
        let pidfd = Arc::clone(&self.handle.pidfd);
        // SAFETY: the Arc inside the AsyncFd keeps the pidfd open until the registration is
        // dropped at the end of this function.
        let registered =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(|err| wait_error(err.into_parts().1))?;
        loop {
            let mut ready = registered.readable().await.map_err(wait_error)?;
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            ready.clear_ready();
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then sends SIGKILL, and returns the exit status.
    pub async fn kill_after(&mut self, grace: Duration) -> Result<ExitStatus, RuntimeError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM)?;
        if let Ok(result) = tokio::time::timeout(grace, self.wait()).await {
            return result;
        }
        tracing::info!(container = %self.id(), grace_ms = grace.as_millis() as u64, "grace period over, sending SIGKILL");
        self.signal(Signal::SIGKILL)?;
        self.wait().await
    }

    /// Kills the container if it still runs, reaps it and removes its state directory.
    pub fn remove(mut self) -> Result<(), RuntimeError> {
        self.kill_and_reap()?;
        match self.dir.take() {
            Some(dir) => dir.remove().map_err(|source| RuntimeError::State {
                id: self.id().to_owned(),
                source,
            }),
            None => Ok(()),
        }
    }

    fn kill_and_reap(&mut self) -> Result<ExitStatus, RuntimeError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGKILL)?;
        self.wait_blocking()
    }
}

impl Drop for ContainerProcess {
    fn drop(&mut self) {
        if let Err(err) = self.kill_and_reap() {
            tracing::warn!(container = %self.id(), error = %err, "failed to reap the container");
        }
        if let Some(dir) = self.dir.take() {
            if let Err(err) = dir.remove() {
                tracing::warn!(container = %self.id(), error = %err, "failed to remove the container's state");
            }
        }
    }
}
