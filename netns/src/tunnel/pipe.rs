//! Pipes for the splice relay: a bounded pool of empty pipes shared by the
//! TCP tunnels of the process, and enlargement of busy pipes within a
//! process-wide budget.
//!
//! For a user without CAP_SYS_RESOURCE in the initial user namespace (as
//! root in a user namespace is), pipe buffers count against
//! `fs.pipe-user-pages-soft` (16384 pages by default), shared with every
//! container process mapped to the same uid. Past that limit `F_SETPIPE_SZ`
//! fails with EPERM and each new pipe of the user gets only two pages
//! (`alloc_pipe_info` in the kernel's `fs/pipe.c`). So a pipe grows only
//! when its connection fills it, the enlarged pipes of the process stay
//! within [`TunnelConfig::max_enlarged_pipe_bytes`], and after an EPERM no
//! pipe grows for [`ENLARGE_BACKOFF`].
//!
//! [`TunnelConfig::max_enlarged_pipe_bytes`]: super::TunnelConfig::max_enlarged_pipe_bytes

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;

/// Size of an enlarged pipe in bytes: the default `fs.pipe-max-size`, the
/// largest size an unprivileged user may set.
pub(crate) const ENLARGED_PIPE_SIZE: usize = 1024 * 1024;

/// Size a new pipe gets while its user is under the page limit.
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// Maximum number of idle pipes kept for reuse. Each one holds 16 pages of
/// its user's pipe limit while idle.
const MAX_IDLE_PIPES: usize = 16;

/// How long no pipe is enlarged after `F_SETPIPE_SZ` failed with EPERM.
pub(crate) const ENLARGE_BACKOFF: Duration = Duration::from_secs(30);

/// A pipe with both ends non-blocking, and what the relay put into it.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Size in bytes when created, as `F_GETPIPE_SZ` reported it.
    initial_size: usize,
    /// Current size in bytes.
    size: usize,
    /// Bytes spliced into the pipe and not yet spliced out of it.
    buffered: usize,
    /// Bytes charged to the enlargement budget.
    charged: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let size = fcntl(write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)?;
        let size = usize::try_from(size).unwrap_or(DEFAULT_PIPE_SIZE);
        Ok(Self {
            read,
            write,
            initial_size: size,
            size,
            buffered: 0,
            charged: 0,
        })
    }

    pub(crate) fn read_end(&self) -> &OwnedFd {
        &self.read
    }

    pub(crate) fn write_end(&self) -> &OwnedFd {
        &self.write
    }

    /// Current size in bytes.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Records `len` bytes spliced into the pipe.
    pub(crate) fn filled(&mut self, len: usize) {
        self.buffered += len;
    }

    /// Records `len` bytes spliced out of the pipe.
    pub(crate) fn drained(&mut self, len: usize) {
        self.buffered = self.buffered.saturating_sub(len);
    }

    /// Grows the pipe to [`ENLARGED_PIPE_SIZE`] if `budget` allows it.
    /// Failure leaves the pipe as it was, since a small pipe still relays.
    pub(crate) fn enlarge(&mut self, budget: &EnlargeBudget, max_bytes: usize) {
        if self.charged > 0 || self.size >= ENLARGED_PIPE_SIZE {
            return;
        }
        if !budget.reserve(ENLARGED_PIPE_SIZE, max_bytes) {
            return;
        }
        match set_size(&self.write, ENLARGED_PIPE_SIZE) {
            Ok(size) => {
                self.size = size;
                self.charged = ENLARGED_PIPE_SIZE;
            }
            Err(errno) => {
                budget.release(ENLARGED_PIPE_SIZE);
                budget.record_failure(errno);
            }
        }
    }

    /// Shrinks an enlarged pipe back to its initial size and returns its
    /// charge to `budget`. The pipe must be empty. Returns false when the
    /// pipe could not be shrunk, so it must be closed instead of reused.
    fn shrink(&mut self, budget: &EnlargeBudget) -> bool {
        if self.charged == 0 {
            return true;
        }
        budget.release(self.charged);
        self.charged = 0;
        match set_size(&self.write, self.initial_size) {
            Ok(size) => {
                self.size = size;
                true
            }
            Err(_) => false,
        }
    }

    /// Checks with a one-byte read that the pipe is empty. A read that
    /// returns data consumes it, but such a pipe is closed anyway.
    fn is_empty(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            nix::unistd::read(self.read.as_raw_fd(), &mut byte),
            Err(Errno::EAGAIN)
        )
    }
}

fn set_size(pipe: &OwnedFd, size: usize) -> Result<usize, Errno> {
    let requested = i32::try_from(size).map_err(|_| Errno::EINVAL)?;
    let granted = fcntl(pipe.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(requested))?;
    Ok(usize::try_from(granted).unwrap_or(size))
}

/// Bytes of enlarged pipes currently held, bounded by a limit that each
/// caller passes, and the EPERM back-off.
#[derive(Debug, Default)]
pub(crate) struct EnlargeBudget {
    used: AtomicUsize,
    /// No pipe is enlarged before this instant.
    retry_at: Mutex<Option<Instant>>,
}

impl EnlargeBudget {
    /// Returns the budget shared by every tunnel of the process.
    pub(crate) fn process() -> &'static EnlargeBudget {
        static BUDGET: OnceLock<EnlargeBudget> = OnceLock::new();
        BUDGET.get_or_init(EnlargeBudget::default)
    }

    /// Bytes of enlarged pipes currently held.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget unless that would pass `max_bytes` or
    /// the back-off after an EPERM is still running.
    fn reserve(&self, bytes: usize, max_bytes: usize) -> bool {
        if self.backing_off() {
            return false;
        }
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                let total = used.checked_add(bytes)?;
                (total <= max_bytes).then_some(total)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn backing_off(&self) -> bool {
        let mut retry_at = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        match *retry_at {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *retry_at = None;
                tracing::info!("retrying to enlarge tunnel pipes after the back-off");
                false
            }
            None => false,
        }
    }

    /// Handles a failed `F_SETPIPE_SZ`. EPERM means the user reached
    /// `fs.pipe-user-pages-soft` (or `fs.pipe-max-size` is below 1 MiB), so
    /// enlarging stops for [`ENLARGE_BACKOFF`] to leave the rest of the
    /// limit to the containers.
    fn record_failure(&self, errno: Errno) {
        if errno != Errno::EPERM {
            tracing::debug!(error = %errno, size = ENLARGED_PIPE_SIZE, "failed to enlarge a tunnel pipe");
            return;
        }
        let mut retry_at = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        if retry_at.is_none() {
            *retry_at = Some(Instant::now() + ENLARGE_BACKOFF);
            tracing::warn!(
                error = %errno,
                size = ENLARGED_PIPE_SIZE,
                backoff = ?ENLARGE_BACKOFF,
                "failed to enlarge a tunnel pipe; this user's pipe pages (fs.pipe-user-pages-soft) are probably used up, so tunnels keep default pipes for a while"
            );
        }
    }
}

/// Idle, empty pipes for reuse. One pool serves every TCP tunnel of the
/// process, and it closes its pipes when the last tunnel holding it is
/// dropped.
#[derive(Debug)]
pub(crate) struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    max_idle: usize,
    budget: &'static EnlargeBudget,
}

impl PipePool {
    /// Returns the process's pool, creating it when no tunnel uses it.
    pub(crate) fn shared() -> Arc<PipePool> {
        static SHARED: Mutex<Weak<PipePool>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = shared.upgrade() {
            return pool;
        }
        let pool = Arc::new(PipePool::new(MAX_IDLE_PIPES, EnlargeBudget::process()));
        *shared = Arc::downgrade(&pool);
        pool
    }

    fn new(max_idle: usize, budget: &'static EnlargeBudget) -> Self {
        Self {
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
            budget,
        }
    }

    /// Returns the budget against which pipes from this pool are enlarged.
    pub(crate) fn budget(&self) -> &'static EnlargeBudget {
        self.budget
    }

    /// Takes an idle pipe or creates one. The pipe goes back to the pool
    /// when the returned guard is dropped.
    pub(crate) fn take(self: &Arc<Self>) -> io::Result<PooledPipe> {
        let idle = self.lock().pop();
        let pipe = match idle {
            Some(pipe) => pipe,
            None => Pipe::new()?,
        };
        Ok(PooledPipe {
            pipe: Some(pipe),
            pool: Arc::clone(self),
        })
    }

    /// Keeps `pipe` for reuse if it is empty, at its initial size, and that
    /// size is the default one. Otherwise closes it: a pipe with leftover
    /// bytes would hand them to the next connection, and a pipe created
    /// past the page limit (two pages) is replaced once the limit allows.
    fn put(&self, mut pipe: Pipe) {
        if pipe.buffered != 0 {
            self.budget.release(pipe.charged);
            return;
        }
        if !pipe.shrink(self.budget) || pipe.initial_size < DEFAULT_PIPE_SIZE {
            return;
        }
        if !pipe.is_empty() {
            tracing::warn!("a tunnel pipe held bytes that the relay did not count; closing it");
            return;
        }

        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(pipe);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pipe>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

/// A pipe on loan from a [`PipePool`]; dropping it gives it back.
#[derive(Debug)]
pub(crate) struct PooledPipe {
    pipe: Option<Pipe>,
    pool: Arc<PipePool>,
}

impl std::ops::Deref for PooledPipe {
    type Target = Pipe;

    fn deref(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a pooled pipe is present until drop")
    }
}

impl std::ops::DerefMut for PooledPipe {
    fn deref_mut(&mut self) -> &mut Pipe {
        self.pipe
            .as_mut()
            .expect("a pooled pipe is present until drop")
    }
}

impl Drop for PooledPipe {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.pool.put(pipe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use nix::unistd::write;

    fn leaked_budget() -> &'static EnlargeBudget {
        Box::leak(Box::default())
    }

    fn pool(budget: &'static EnlargeBudget) -> Arc<PipePool> {
        Arc::new(PipePool::new(2, budget))
    }

    fn raw_fds(pipe: &PooledPipe) -> (i32, i32) {
        (pipe.read_end().as_raw_fd(), pipe.write_end().as_raw_fd())
    }

    #[test]
    fn drained_pipe_is_reused() {
        let pool = pool(leaked_budget());
        let pipe = pool.take().unwrap();
        let fds = raw_fds(&pipe);
        drop(pipe);
        assert_eq!(pool.idle_count(), 1);

        let again = pool.take().unwrap();
        assert_eq!(raw_fds(&again), fds);
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn pipe_with_counted_bytes_is_closed() {
        let pool = pool(leaked_budget());
        let mut pipe = pool.take().unwrap();
        write(pipe.write_end(), b"left over").unwrap();
        pipe.filled(9);
        drop(pipe);
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn pipe_with_uncounted_bytes_is_closed() {
        let pool = pool(leaked_budget());
        let pipe = pool.take().unwrap();
        write(pipe.write_end(), b"x").unwrap();
        drop(pipe);
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn pool_keeps_at_most_max_idle() {
        let pool = pool(leaked_budget());
        let pipes: Vec<_> = (0..3).map(|_| pool.take().unwrap()).collect();
        drop(pipes);
        assert_eq!(pool.idle_count(), 2);
    }

    #[test]
    fn enlarge_stays_within_budget() {
        let budget = leaked_budget();
        let pool = pool(budget);
        let mut first = pool.take().unwrap();
        let mut second = pool.take().unwrap();

        first.enlarge(budget, ENLARGED_PIPE_SIZE);
        second.enlarge(budget, ENLARGED_PIPE_SIZE);
        assert_eq!(first.size(), ENLARGED_PIPE_SIZE);
        assert_eq!(second.size(), DEFAULT_PIPE_SIZE);
        assert_eq!(budget.used(), ENLARGED_PIPE_SIZE);
    }

    #[test]
    fn returned_pipe_shrinks_and_frees_budget() {
        let budget = leaked_budget();
        let pool = pool(budget);
        let mut pipe = pool.take().unwrap();
        pipe.enlarge(budget, ENLARGED_PIPE_SIZE);
        assert_eq!(budget.used(), ENLARGED_PIPE_SIZE);
        drop(pipe);
        assert_eq!(budget.used(), 0);

        let pipe = pool.take().unwrap();
        assert_eq!(pipe.size(), DEFAULT_PIPE_SIZE);
        let size = fcntl(pipe.write_end().as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap();
        assert_eq!(size as usize, DEFAULT_PIPE_SIZE);
    }

    #[test]
    fn closed_enlarged_pipe_frees_budget() {
        let budget = leaked_budget();
        let pool = pool(budget);
        let mut pipe = pool.take().unwrap();
        pipe.enlarge(budget, ENLARGED_PIPE_SIZE);
        pipe.filled(1);
        drop(pipe);
        assert_eq!(budget.used(), 0);
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn eperm_stops_enlarging() {
        let budget = leaked_budget();
        let pool = pool(budget);
        budget.record_failure(Errno::EPERM);

        let mut pipe = pool.take().unwrap();
        pipe.enlarge(budget, ENLARGED_PIPE_SIZE);
        assert_eq!(pipe.size(), DEFAULT_PIPE_SIZE);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn other_errors_do_not_stop_enlarging() {
        let budget = leaked_budget();
        budget.record_failure(Errno::EBUSY);
        assert!(budget.reserve(ENLARGED_PIPE_SIZE, ENLARGED_PIPE_SIZE));
    }
}
