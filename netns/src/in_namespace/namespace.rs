//! Network namespace handles: an open nsfs file descriptor and its identity.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{fstat, stat, FileStat};

use super::NetnsError;

/// Identity of a namespace: device and inode number of its nsfs file, as
/// shown by `stat -L /proc/<pid>/ns/net`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl NsId {
    fn from_stat(st: &FileStat) -> Self {
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// Returns the network namespace of the calling thread.
    pub fn of_current_thread() -> Result<Self, NetnsError> {
        Self::of_path("/proc/thread-self/ns/net")
    }

    /// Returns the network namespace of the process's main thread.
    pub fn of_process() -> Result<Self, NetnsError> {
        Self::of_path("/proc/self/ns/net")
    }

    fn of_path(path: &str) -> Result<Self, NetnsError> {
        let st = stat(path).map_err(|errno| NetnsError::Open {
            path: path.to_owned(),
            source: errno.into(),
        })?;
        Ok(Self::from_stat(&st))
    }
}

impl fmt::Display for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The same form as the target of the /proc/<pid>/ns/net link.
        write!(f, "net:[{}]", self.ino)
    }
}

/// An open network namespace. The namespace stays alive at least as long as
/// this handle does.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    id: NsId,
}

impl NetNs {
    /// Opens the network namespace of this process (that of its main thread).
    pub fn of_process() -> Result<Self, NetnsError> {
        Self::open_path("/proc/self/ns/net")
    }

    /// Opens the network namespace of the calling thread.
    pub fn of_current_thread() -> Result<Self, NetnsError> {
        Self::open_path("/proc/thread-self/ns/net")
    }

    /// Opens the network namespace of process `pid`.
    pub fn of_pid(pid: u32) -> Result<Self, NetnsError> {
        Self::open_path(&format!("/proc/{pid}/ns/net"))
    }

    /// Takes ownership of `fd`, which must refer to a network namespace (an
    /// fd of `/proc/<pid>/ns/net` or one bind-mounted from it).
    pub fn from_fd(fd: OwnedFd) -> Result<Self, NetnsError> {
        // The link text of an nsfs fd is "net:[<inode>]" for a network
        // namespace, "mnt:[...]" for a mount namespace, a path for a file.
        let link = format!("/proc/thread-self/fd/{}", fd.as_raw_fd());
        let target = nix::fcntl::readlink(Path::new(&link))
            .map_err(NetnsError::Stat)?
            .to_string_lossy()
            .into_owned();
        if !target.starts_with("net:[") {
            return Err(NetnsError::NotNetworkNamespace {
                fd: fd.as_raw_fd(),
                target,
            });
        }

        let st = fstat(fd.as_raw_fd()).map_err(NetnsError::Stat)?;
        Ok(Self {
            id: NsId::from_stat(&st),
            fd,
        })
    }

    /// Creates a new network namespace, owned by the caller's user
    /// namespace, and returns a handle to it. Only loopback exists in it,
    /// and it is down.
    ///
    /// `unshare(CLONE_NEWNET)` runs on a short-lived thread, so no thread of
    /// the caller changes namespace.
    pub fn create() -> Result<Self, NetnsError> {
        let spawned = std::thread::Builder::new()
            .name("netns-create".to_owned())
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
                Self::of_current_thread()
            });
        let handle = spawned.map_err(NetnsError::CreateThread)?;
        handle.join().unwrap_or_else(|_| {
            Err(NetnsError::CreateThread(std::io::Error::other(
                "the thread creating the network namespace panicked",
            )))
        })
    }

    /// Identity of this namespace.
    pub fn id(&self) -> NsId {
        self.id
    }

    /// Duplicates the handle (a new fd for the same namespace).
    pub fn try_clone(&self) -> Result<Self, NetnsError> {
        let fd = self.fd.try_clone().map_err(NetnsError::Duplicate)?;
        Ok(Self { fd, id: self.id })
    }

    fn open_path(path: &str) -> Result<Self, NetnsError> {
        // std opens with O_CLOEXEC, so the fd does not leak into children.
        let file = std::fs::File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        let fd = OwnedFd::from(file);
        let st = fstat(fd.as_raw_fd()).map_err(NetnsError::Stat)?;
        Ok(Self {
            id: NsId::from_stat(&st),
            fd,
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
