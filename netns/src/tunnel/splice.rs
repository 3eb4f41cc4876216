//! Relaying a TCP connection pair with `splice(2)` through pipes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::sys::socket::{shutdown, Shutdown};
use nix::unistd::pipe2;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes asked of one `splice` call. A pipe holds 64 KiB by default, so the
/// data in flight per direction is bounded by the pipe, not by this.
const SPLICE_LEN: usize = 64 * 1024;

/// Moves bytes both ways between `a` and `b` until both directions reach
/// end of file, passing each half-close on with `shutdown(SHUT_WR)`.
/// Returns the bytes moved from `a` to `b` and from `b` to `a`. An error in
/// either direction ends both.
///
/// NOTE: splice into a socket whose peer is gone raises SIGPIPE (the kernel
/// sets no MSG_NOSIGNAL for it). Rust binaries ignore SIGPIPE from startup,
/// so the call fails with EPIPE instead; a host program that restores the
/// default disposition would be killed.
pub(crate) async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    let a_to_b = Pipe::new()?;
    let b_to_a = Pipe::new()?;
    tokio::try_join!(pump(a, b, &a_to_b), pump(b, a, &b_to_a))
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Self { read, write })
    }
}

/// One direction: fill the pipe from `src`, drain it fully into `dst`, and
/// only then read again. When `dst` stops reading, the pipe stays full and
/// `src` is not read, so the sender's TCP window closes (backpressure).
async fn pump(src: &TcpStream, dst: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so EAGAIN can only mean that `src` has
        // nothing to read, which is what clearing its readiness assumes.
        let filled = src
            .async_io(Interest::READABLE, || {
                splice(
                    src.as_fd(),
                    None,
                    pipe.write.as_fd(),
                    None,
                    SPLICE_LEN,
                    flags,
                )
                .map_err(io::Error::from)
            })
            .await?;
        if filled == 0 {
            half_close(dst);
            return Ok(total);
        }

        let mut pending = filled;
        while pending > 0 {
            pending -= dst
                .async_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_fd(), None, dst.as_fd(), None, pending, flags)
                        .map_err(io::Error::from)
                })
                .await?;
        }
        total += filled as u64;
    }
}

/// Passes end of file on: the peer of `stream` reads EOF but can still send.
fn half_close(stream: &TcpStream) {
    // ENOTCONN means the peer has already closed, so there is nothing to do.
    let _ = shutdown(stream.as_raw_fd(), Shutdown::Write);
}
