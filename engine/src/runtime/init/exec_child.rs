//! A command that the engine runs inside the running container next to its main command (an
//! exec, in Docker's words), such as a health check.
//!
//! The init forks it after it dropped privileges, so the child has the container's
//! namespaces, root file system, user and groups, capability sets, no_new_privs and seccomp
//! filter, and it runs with the container's environment and working directory. Its standard
//! input is `/dev/null` and its standard output and error share one pipe that the init reads.
//! It gets a session of its own, so a timeout kills the whole process group and the
//! command cannot reach the container's terminal.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::unistd::{ForkResult, Pid};

use super::exec::{self, Command};
use super::InitError;
use crate::runtime::spec::{ExecReply, ExecRequest};

/// Maximum output bytes kept per command, the same amount Docker keeps of a health check.
/// Unlike Docker, which keeps the first bytes, the init keeps the last ones, because an error
/// message usually ends the output.
pub(super) const OUTPUT_MAX: usize = 4096;

/// The last [`OUTPUT_MAX`] bytes written to the output pipe.
#[derive(Debug, Default)]
pub(super) struct OutputTail {
    bytes: VecDeque<u8>,
    truncated: bool,
}

impl OutputTail {
    /// Appends `data`, dropping the oldest bytes beyond [`OUTPUT_MAX`].
    pub(super) fn push(&mut self, data: &[u8]) {
        let data = if data.len() > OUTPUT_MAX {
            self.truncated = true;
            self.bytes.clear();
            &data[data.len() - OUTPUT_MAX..]
        } else {
            data
        };
        let excess = (self.bytes.len() + data.len()).saturating_sub(OUTPUT_MAX);
        if excess > 0 {
            self.truncated = true;
            self.bytes.drain(..excess);
        }
        self.bytes.extend(data);
    }

    /// Returns the kept bytes and whether older bytes were dropped.
    pub(super) fn into_parts(self) -> (Vec<u8>, bool) {
        (self.bytes.into(), self.truncated)
    }
}

/// A running exec child and what the init has gathered about it.
#[derive(Debug)]
pub(super) struct ExecChild {
    pid: Pid,
    /// Non-blocking read end of the output pipe; `None` after end of file.
    output: Option<File>,
    tail: OutputTail,
    deadline: Instant,
    timed_out: bool,
    /// The exit status once reaped, 128+N for signal N.
    status: Option<i32>,
}

impl ExecChild {
    /// Forks the child for `request` with `command`'s environment. `signal_mask` is the mask
    /// to restore in the child, because the init keeps its signals blocked.
    pub(super) fn spawn(
        command: &Command,
        request: &ExecRequest,
        signal_mask: &SigSet,
    ) -> Result<Self, InitError> {
        let command = command.with_args(request.args.clone());
        if command.args().is_empty() {
            return Err(InitError::Step {
                step: "run an empty command",
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        let stdin: OwnedFd = File::open("/dev/null")
            .map_err(InitError::path("open", "/dev/null"))?
            .into();
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(InitError::step("create the output pipe"))?;
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&read),
            FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        )
        .map_err(InitError::step("make the output pipe non-blocking"))?;
        let deadline = Instant::now() + Duration::from_millis(request.timeout_ms);

        // SAFETY: the init process is single-threaded (a fresh exec of the binary that
        // started no threads), so the child gets a consistent copy of memory.
        let fork = unsafe { nix::unistd::fork() }.map_err(InitError::step("fork a command"))?;
        let pid = match fork {
            ForkResult::Child => {
                let _ = signal_mask.thread_set_mask();
                exec::exec_in_session(&command, &stdin, &write)
            }
            ForkResult::Parent { child } => child,
        };
        drop(write);
        tracing::debug!(pid = pid.as_raw(), args = ?command.args(), "exec child started");

        Ok(Self {
            pid,
            output: Some(File::from(read)),
            tail: OutputTail::default(),
            deadline,
            timed_out: false,
            status: None,
        })
    }

    pub(super) fn pid(&self) -> Pid {
        self.pid
    }

    /// Returns the output pipe while it is open.
    pub(super) fn output_fd(&self) -> Option<BorrowedFd<'_>> {
        self.output.as_ref().map(AsFd::as_fd)
    }

    /// Reads the bytes now in the pipe, and closes it at end of file.
    pub(super) fn read_output(&mut self) {
        let Some(pipe) = &mut self.output else {
            return;
        };
        let mut buffer = [0u8; 4096];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => {
                    self.output = None;
                    return;
                }
                Ok(read) => self.tail.push(&buffer[..read]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.output = None;
                    return;
                }
            }
        }
    }

    /// Returns how long the child may still run, or `None` once the timeout killed it.
    pub(super) fn remaining(&self) -> Option<Duration> {
        if self.timed_out || self.status.is_some() {
            return None;
        }
        Some(self.deadline.saturating_duration_since(Instant::now()))
    }

    /// Kills the child's process group with SIGKILL once its deadline has passed.
    pub(super) fn kill_if_overdue(&mut self) {
        if self.timed_out || self.status.is_some() || Instant::now() < self.deadline {
            return;
        }
        self.timed_out = true;
        // The child leads its own process group unless it was killed before its setsid, and
        // then the second call reaches it.
        let _ = killpg(self.pid, Signal::SIGKILL);
        let _ = kill(self.pid, Signal::SIGKILL);
        tracing::debug!(
            pid = self.pid.as_raw(),
            "exec child timed out and was killed"
        );
    }

    /// Records the status that the reaper collected.
    pub(super) fn set_exited(&mut self, code: i32) {
        self.status = Some(code);
    }

    pub(super) fn has_exited(&self) -> bool {
        self.status.is_some()
    }

    /// Returns the reply for the engine. Output still in the pipe is read first, but a
    /// background process that keeps the pipe open does not delay the reply.
    pub(super) fn into_reply(mut self) -> ExecReply {
        self.read_output();
        let code = if self.timed_out { None } else { self.status };
        let (output, truncated) = self.tail.into_parts();
        ExecReply {
            code,
            output,
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_short_output() {
        let mut tail = OutputTail::default();
        tail.push(b"hello ");
        tail.push(b"world");
        assert_eq!(tail.into_parts(), (b"hello world".to_vec(), false));
    }

    #[test]
    fn tail_drops_oldest_bytes() {
        let mut tail = OutputTail::default();
        tail.push(&[b'a'; OUTPUT_MAX - 1]);
        tail.push(b"xyz");
        let (bytes, truncated) = tail.into_parts();
        assert!(truncated);
        assert_eq!(bytes.len(), OUTPUT_MAX);
        assert!(bytes.ends_with(b"axyz"));
        assert_eq!(bytes[0], b'a');
    }

    #[test]
    fn tail_of_one_large_write() {
        let mut tail = OutputTail::default();
        tail.push(b"old");
        let mut large = vec![b'b'; OUTPUT_MAX * 2];
        large.extend_from_slice(b"end");
        tail.push(&large);
        let (bytes, truncated) = tail.into_parts();
        assert!(truncated);
        assert_eq!(bytes.len(), OUTPUT_MAX);
        assert!(bytes.ends_with(b"bend"));
    }
}
