//! `mayfly run -t`: the caller's terminal in raw mode, bytes copied both ways to the
//! container's pseudo-terminal, and window-size changes passed on.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};

use anyhow::Context;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::signal::unix::{signal, SignalKind};

/// Restores the caller's terminal and stops the window-size task when dropped.
pub struct Attached {
    saved: Option<Termios>,
    resize_task: tokio::task::JoinHandle<()>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.resize_task.abort();
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

pub fn attach(master: File) -> anyhow::Result<Attached> {
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(stdin.as_fd()).ok();
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("failed to put the terminal in raw mode")?;
    }
    let control = master
        .try_clone()
        .context("failed to duplicate the terminal")?;
    pass_window_size(&control);

    let mut from_container = master
        .try_clone()
        .context("failed to duplicate the terminal")?;
    let mut to_container = master;
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        let mut stdout = std::io::stdout();
        while let Ok(count) = from_container.read(&mut buffer) {
            if count == 0 || stdout.write_all(&buffer[..count]).is_err() {
                break;
            }
            let _ = stdout.flush();
        }
    });
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        let mut stdin = std::io::stdin();
        while let Ok(count) = stdin.read(&mut buffer) {
            if count == 0 || to_container.write_all(&buffer[..count]).is_err() {
                break;
            }
        }
    });

    let resize_task = tokio::spawn(async move {
        let Ok(mut changes) = signal(SignalKind::window_change()) else {
            return;
        };
        while changes.recv().await.is_some() {
            pass_window_size(&control);
        }
    });
    Ok(Attached { saved, resize_task })
}

/// Copies the caller's window size to the container's terminal; the kernel then sends
/// SIGWINCH to the container's foreground process group.
fn pass_window_size(master: &File) {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointed-to, properly sized struct.
    let read = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) };
    if read != 0 || size.ws_row == 0 {
        return;
    }
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer; `master` is an open pty master.
    let written = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if written != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "failed to pass on the window size");
    }
}
