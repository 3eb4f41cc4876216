//! The container's pseudo-terminal, allocated in its own `/dev/pts` after `pivot_root`.

use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::InitError;
use crate::runtime::spec::InitPlan;
use crate::sys;

/// Both ends of the container's terminal.
pub(super) struct Terminal {
    /// Sent to the engine.
    pub master: OwnedFd,
    /// Becomes the command's controlling terminal and standard streams.
    pub slave: OwnedFd,
}

/// Opens a terminal pair on the container's `/dev/ptmx`, owned by the process's user, with
/// the spec's console size.
pub(super) fn open(plan: &InitPlan) -> Result<Terminal, InitError> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master = nix::pty::posix_openpt(flags).map_err(InitError::errno("open", "/dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(InitError::errno("grantpt on", "/dev/ptmx"))?;
    nix::pty::unlockpt(&master).map_err(InitError::errno("unlockpt on", "/dev/ptmx"))?;
    let name = nix::pty::ptsname_r(&master).map_err(InitError::errno("ptsname of", "/dev/ptmx"))?;
    let slave = nix::fcntl::open(name.as_str(), flags, Mode::empty())
        .map_err(InitError::errno("open", name.as_str()))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // SAFETY: into_raw_fd hands over the PtyMaster's descriptor, which nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };

    if let Some(process) = plan.oci.process() {
        let uid = nix::unistd::Uid::from_raw(process.user().uid());
        // Only the owner changes; the group stays tty (or root without a tty group).
        if let Err(errno) =
            nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(&slave), Some(uid), None)
        {
            tracing::debug!(%errno, "failed to give the terminal to the container user");
        }
        if let Some(size) = process.console_size() {
            let size = libc::winsize {
                ws_row: u16::try_from(size.height()).unwrap_or(u16::MAX),
                ws_col: u16::try_from(size.width()).unwrap_or(u16::MAX),
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            sys::set_window_size(slave.as_fd(), &size)
                .map_err(InitError::path("set the size of", name.as_str()))?;
        }
    }
    Ok(Terminal { master, slave })
}

/// Makes `slave` the controlling terminal of a new session and the standard streams.
pub(super) fn attach(slave: &OwnedFd) -> Result<(), InitError> {
    nix::unistd::setsid().map_err(InitError::step("start a new session"))?;
    sys::set_controlling_terminal(slave.as_fd()).map_err(|source| InitError::Step {
        step: "set the controlling terminal",
        source,
    })?;
    for target in 0..3 {
        nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(slave), target).map_err(
            InitError::step("attach the terminal to the standard streams"),
        )?;
    }
    Ok(())
}
