//! The small init: PID 1 that forks the command, reaps every orphan, forwards signals to
//! the command, runs exec requests from the engine, and exits with the command's status.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::exec::{self, Command};
use super::exec_child::ExecChild;
use super::InitError;
use crate::runtime::channel::Channel;
use crate::runtime::spec::{FromInit, ToInit};

/// Signals passed on to the command.
const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Forks the command and supervises it; returns the command's exit status, 128+N when
/// signal N killed it.
pub(super) fn run(
    command: &Command,
    terminal: Option<OwnedFd>,
    channel: &mut Channel,
) -> Result<i32, InitError> {
    // The signals stay blocked in PID 1 and are read from a signalfd. Blocked signals are
    // queued even for a namespace's init, which otherwise drops signals it has no handler
    // for. Blocking before the fork means none is lost between fork and the loop.
    let mut signals = SigSet::empty();
    for signal in FORWARDED {
        signals.add(signal);
    }
    signals.add(Signal::SIGCHLD);
    let old_mask = signals
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(InitError::step("block signals in the init"))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(InitError::step("open a signalfd"))?;

    // SAFETY: the init process is single-threaded (it is a fresh exec of the binary and
    // started no threads), so the child gets a consistent copy of memory.
    let child = match unsafe { nix::unistd::fork() }.map_err(InitError::step("fork the command"))? {
        ForkResult::Child => {
            let _ = old_mask.thread_set_mask();
            exec::exec_as_pid1(command, terminal.as_ref())
        }
        ForkResult::Parent { child } => child,
    };
    drop(terminal);

    // The socket stays open for exec requests. If the engine is gone, no request comes.
    let listening = channel.send(&FromInit::Started, None).is_ok();
    let mut supervisor = Supervisor {
        command,
        child,
        old_mask,
        signal_fd,
        channel,
        listening,
        exec: None,
    };
    supervisor.run()
}

/// The state of the init's event loop.
struct Supervisor<'a> {
    command: &'a Command,
    /// The container's command.
    child: Pid,
    /// The signal mask to restore in forked children.
    old_mask: SigSet,
    signal_fd: SignalFd,
    channel: &'a mut Channel,
    /// Whether the engine's socket is still open for requests.
    listening: bool,
    /// The running exec request, at most one at a time.
    exec: Option<ExecChild>,
}

/// The descriptors that a poll found ready.
#[derive(Default)]
struct Ready {
    signals: bool,
    request: bool,
    output: bool,
}

impl Supervisor<'_> {
    fn run(&mut self) -> Result<i32, InitError> {
        loop {
            let ready = self.poll()?;

            // Output first, so that what the exec child wrote before it exited is kept.
            if ready.output {
                if let Some(exec) = &mut self.exec {
                    exec.read_output();
                }
            }

            if ready.signals {
                if let Some(code) = self.handle_signals()? {
                    return Ok(code);
                }
            }

            if let Some(exec) = &mut self.exec {
                exec.kill_if_overdue();
            }
            if self.exec.as_ref().is_some_and(ExecChild::has_exited) {
                self.reply_exec();
            }

            // A request is only read while no exec child runs, so they never overlap.
            if ready.request && self.exec.is_none() {
                self.serve_request();
            }
        }
    }

    /// Waits for a signal, a request, exec output or the exec child's deadline.
    fn poll(&self) -> Result<Ready, InitError> {
        let mut fds = vec![PollFd::new(self.signal_fd.as_fd(), PollFlags::POLLIN)];
        let request_index = (self.listening && self.exec.is_none()).then(|| {
            fds.push(PollFd::new(
                self.channel.socket().as_fd(),
                PollFlags::POLLIN,
            ));
            fds.len() - 1
        });
        let output_index = self.exec.as_ref().and_then(ExecChild::output_fd).map(|fd| {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            fds.len() - 1
        });
        // Rounded up, so the loop does not wake just before the deadline and poll again.
        let timeout = match self.exec.as_ref().and_then(ExecChild::remaining) {
            Some(remaining) => {
                let millis = remaining.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };

        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Ready::default()),
            Err(errno) => return Err(InitError::step("wait for events")(errno)),
        }
        let is_ready = |index: Option<usize>| {
            index
                .and_then(|i| fds[i].revents())
                .is_some_and(|events| !events.is_empty())
        };
        Ok(Ready {
            signals: is_ready(Some(0)),
            request: is_ready(request_index),
            output: is_ready(output_index),
        })
    }

    /// Forwards pending signals to the command and reaps exited children. Returns the
    /// command's status once it has exited.
    fn handle_signals(&mut self) -> Result<Option<i32>, InitError> {
        loop {
            match self.signal_fd.read_signal() {
                Ok(Some(info)) => {
                    let number = info.ssi_signo as i32;
                    if number == libc::SIGCHLD {
                        continue;
                    }
                    if let Ok(signal) = Signal::try_from(number) {
                        let _ = kill(self.child, signal);
                    }
                }
                Ok(None) => break,
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(InitError::step("read the signalfd")(errno)),
            }
        }
        // Reaping on every wake-up is cheap and does not depend on SIGCHLD coalescing.
        Ok(reap_all(self.child, self.exec.as_mut()))
    }

    /// Reads one request from the engine and starts it.
    fn serve_request(&mut self) {
        let request = match self.channel.recv::<ToInit>() {
            Ok(Some((ToInit::Exec(request), _))) => request,
            Ok(Some((other, _))) => {
                let message = format!("unexpected request {other:?} after start");
                self.send(&FromInit::ExecFailed { message });
                return;
            }
            // The engine closed its end or the socket broke: no more requests.
            Ok(None) | Err(_) => {
                self.listening = false;
                return;
            }
        };
        match ExecChild::spawn(self.command, &request, &self.old_mask) {
            Ok(child) => self.exec = Some(child),
            Err(err) => self.send(&FromInit::ExecFailed {
                message: err.to_string(),
            }),
        }
    }

    /// Sends the finished exec child's status and output to the engine.
    fn reply_exec(&mut self) {
        if let Some(exec) = self.exec.take() {
            let reply = exec.into_reply();
            self.send(&FromInit::ExecDone(reply));
        }
    }

    fn send(&mut self, message: &FromInit) {
        if self.channel.send(message, None).is_err() {
            self.listening = false;
        }
    }
}

/// Reaps every exited child: records the exec child's status in `exec`, and returns the
/// command's status once it has exited.
fn reap_all(command: Pid, mut exec: Option<&mut ExecChild>) -> Option<i32> {
    let mut command_status = None;
    loop {
        let (pid, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return command_status,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return command_status,
        };
        if pid == command {
            command_status = Some(code);
        } else if let Some(exec) = exec.as_deref_mut().filter(|e| e.pid() == pid) {
            exec.set_exited(code);
        }
    }
}
