//! The small init: PID 1 that forks the command, reaps every orphan, forwards signals to
//! the command and exits with its status.

use std::net::Shutdown;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::exec::{self, Command};
use super::InitError;
use crate::runtime::channel::Channel;
use crate::sys;

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
    // The signals stay blocked in PID 1 and are taken with sigwaitinfo. Blocked signals are
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
    // The engine reads end of stream as "started".
    let _ = channel.socket().shutdown(Shutdown::Both);

    loop {
        let info = match sys::sigwaitinfo(&signals) {
            Ok(info) => info,
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
            Err(source) => {
                return Err(InitError::Step {
                    step: "wait for signals",
                    source,
                })
            }
        };
        if info.si_signo != libc::SIGCHLD {
            if let Ok(signal) = Signal::try_from(info.si_signo) {
                let _ = kill(child, signal);
            }
            continue;
        }
        if let Some(code) = reap_all(child) {
            return Ok(code);
        }
    }
}

/// Reaps every exited child; returns the command's status once it has exited.
fn reap_all(command: Pid) -> Option<i32> {
    let mut command_status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => command_status = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                command_status = Some(128 + signal as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return command_status,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(_) => return command_status,
        }
    }
}
