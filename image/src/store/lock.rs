//! Advisory file locks (flock(2)) that order concurrent mayfly processes sharing one store.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::StoreError;

/// A held lock; dropping it unlocks.
#[derive(Debug)]
pub struct FileLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl FileLock {
    /// Opens (creating it, mode 0600) `path` and waits until the lock is granted.
    pub(super) fn acquire(path: &Path, exclusive: bool) -> Result<Self, StoreError> {
        let lock_error = |source: io::Error| StoreError::Lock {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(lock_error)?;

        let mode = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        loop {
            match Flock::lock(file, mode) {
                Ok(lock) => {
                    return Ok(Self {
                        _lock: lock,
                        path: path.to_owned(),
                    })
                }
                // A signal interrupted the wait; wait again.
                Err((returned, Errno::EINTR)) => file = returned,
                Err((_, errno)) => return Err(lock_error(io::Error::from(errno))),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
