//! Relaying a TCP connection pair with `splice(2)` through pipes.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use nix::fcntl::{splice, SpliceFFlags};
use nix::sys::socket::{shutdown, Shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pipe::{Pipe, PipePool};

/// Moves bytes both ways between `a` and `b` until both directions reach
/// end of file, passing each half-close on with `shutdown(SHUT_WR)`.
/// Returns the bytes moved from `a` to `b` and from `b` to `a`. An error in
/// either direction ends both.
///
/// The two pipes come from `pipes` and go back to it when the relay ends or
/// is dropped. A direction that fills at least half its pipe in one call
/// gets a 1 MiB pipe, unless the process's enlarged pipes would then exceed
/// `max_enlarged_pipe_bytes`.
///
/// NOTE: splice into a socket whose peer is gone raises SIGPIPE (the kernel
/// sets no MSG_NOSIGNAL for it). Rust binaries ignore SIGPIPE from startup,
/// so the call fails with EPIPE instead; a host program that restores the
/// default disposition would be killed.
pub(crate) async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    pipes: &Arc<PipePool>,
    max_enlarged_pipe_bytes: usize,
) -> io::Result<(u64, u64)> {
    let mut a_to_b = pipes.take()?;
    let mut b_to_a = pipes.take()?;
    let budget = (pipes, max_enlarged_pipe_bytes);
    tokio::try_join!(
        pump(a, b, &mut a_to_b, budget),
        pump(b, a, &mut b_to_a, budget)
    )
}

/// One direction: fill the pipe from `src`, drain it fully into `dst`, and
/// only then read again. When `dst` stops reading, the pipe stays full and
/// `src` is not read, so the sender's TCP window closes (backpressure).
///
/// The pipe's byte count is updated inside the closure that makes each
/// splice call, so it stays right when the future is dropped at an await.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &mut Pipe,
    (pipes, max_enlarged_pipe_bytes): (&Arc<PipePool>, usize),
) -> io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let mut total = 0u64;
    loop {
        // The pipe is empty here, so EAGAIN can only mean that `src` has
        // nothing to read, which is what clearing its readiness assumes.
        let size = pipe.size();
        let filled = src
            .async_io(Interest::READABLE, || {
                let len = splice(src.as_fd(), None, pipe.write_end(), None, size, flags)?;
                pipe.filled(len);
                Ok(len)
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
                    let len = splice(pipe.read_end(), None, dst.as_fd(), None, pending, flags)?;
                    pipe.drained(len);
                    Ok(len)
                })
                .await?;
        }
        total += filled as u64;

        // A splice that filled half the pipe or more suggests a sender with
        // more data queued than the pipe takes, so a larger pipe would save
        // calls.
        if filled >= size / 2 {
            pipe.enlarge(pipes.budget(), max_enlarged_pipe_bytes);
        }
    }
}

/// Passes end of file on: the peer of `stream` reads EOF but can still send.
fn half_close(stream: &TcpStream) {
    // ENOTCONN means the peer has already closed, so there is nothing to do.
    let _ = shutdown(stream.as_raw_fd(), Shutdown::Write);
}
