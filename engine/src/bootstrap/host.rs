//! The host-side parent of the engine: it maps the engine's IDs, forwards termination signals
//! to it, and exits with its status.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::idmap::{self, IdMapError, IdMapping};
use crate::sys;

/// Who writes the engine's ID maps.
#[derive(Clone, Debug)]
pub(super) enum MapWriter {
    /// The parent runs `newuidmap` and `newgidmap`.
    Helpers {
        mapping: IdMapping,
        newuidmap: PathBuf,
        newgidmap: PathBuf,
    },
    /// The parent is root and writes the map files itself.
    Parent(IdMapping),
    /// The child writes its own single-ID map.
    Child(IdMapping),
}

impl MapWriter {
    pub(super) fn mapping(&self) -> &IdMapping {
        match self {
            Self::Helpers { mapping, .. } | Self::Parent(mapping) | Self::Child(mapping) => mapping,
        }
    }
}

/// The signals the parent forwards to the engine.
pub(super) const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Bytes the parent sends after mapping.
pub(super) const MAP_DONE: u8 = b'1';
pub(super) const MAP_FAILED: u8 = b'0';

/// Runs the parent side: waits for the child's user namespace, maps it, then supervises the
/// child until it exits and exits with its status. Returns only when mapping failed, after
/// the child has exited, so that the caller can report the error.
///
/// `signals` holds the signals blocked before the fork: the forwarded ones and `SIGCHLD`.
pub(super) fn run(
    child: Pid,
    writer: &MapWriter,
    from_child: OwnedFd,
    to_child: OwnedFd,
    signals: &SigSet,
) -> IdMapError {
    let mut from_child = File::from(from_child);
    let mut to_child = File::from(to_child);

    // The child sends one byte once it is in its own user namespace; EOF means it failed
    // before that and returns the error to its own caller.
    let mut byte = [0u8; 1];
    if !matches!(from_child.read(&mut byte), Ok(1)) {
        supervise(child, signals);
    }

    let mapped = match writer {
        MapWriter::Helpers {
            mapping,
            newuidmap,
            newgidmap,
        } => idmap::apply_with_helpers(child.as_raw(), mapping, newuidmap, newgidmap),
        MapWriter::Parent(mapping) => idmap::apply_directly(&child.to_string(), mapping, false),
        MapWriter::Child(_) => Ok(()),
    };

    match mapped {
        Ok(()) => {
            // A failed write means the child died; supervise() reports its status.
            let _ = to_child.write_all(&[MAP_DONE]);
            drop(to_child);
            supervise(child, signals)
        }
        Err(err) => {
            let _ = to_child.write_all(&[MAP_FAILED]);
            drop(to_child);
            let _ = waitpid(child, None);
            err
        }
    }
}

/// Forwards signals to `child` until it exits, then exits with its status (128+N when a
/// signal killed it).
fn supervise(child: Pid, signals: &SigSet) -> ! {
    loop {
        if let Some(code) = reap(child) {
            std::process::exit(code);
        }

        let Ok(info) = sys::sigwaitinfo(signals) else {
            continue;
        };
        if info.si_signo == libc::SIGCHLD {
            continue;
        }
        // A terminal sends SIGINT and SIGQUIT to its whole foreground process group, which
        // includes the engine; only signals sent to this process alone are forwarded.
        if info.si_code == libc::SI_KERNEL {
            continue;
        }
        if let Ok(signal) = Signal::try_from(info.si_signo) {
            let _ = kill(child, signal);
        }
    }
}

fn reap(child: Pid) -> Option<i32> {
    match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
        Ok(_) => None,
        // ECHILD: nothing left to wait for.
        Err(_) => Some(1),
    }
}
