//! Raw system calls that neither `nix` nor `libc` wrap: `clone3`, the pidfd calls, the new mount
//! API (`fsopen`, `fsconfig`, `fsmount`, `move_mount`, `mount_setattr`) and `close_range`.
//!
//! Every function here is a thin wrapper that turns the C return convention into `io::Result`.
//! The constants are copied from the kernel's uapi headers (`linux/mount.h`, `linux/sched.h`)
//! so the crate does not depend on the exact `libc` release that exports them.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `fsconfig` command: set a string parameter (`linux/mount.h`).
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// `mount_setattr` attribute: read-only mount.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `mount_setattr` attribute: ignore setuid and setgid bits.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `mount_setattr` attribute: no access to device nodes.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
/// `mount_setattr` attribute: no program execution.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `struct mount_attr` from `linux/mount.h` (version 0, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Converts a raw syscall result to `io::Result`.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Result of [`clone_into_namespaces`] as seen by each side.
pub enum CloneResult {
    /// In the parent: the child's PID and a pidfd for it.
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
    /// In the child, which runs on a copy of the parent's stack like after `fork`.
    Child,
}

/// Creates a child process in new namespaces with `clone3(CLONE_PIDFD | flags)`, like `fork`.
///
/// # Safety
///
/// The calling process may have other threads. In the child only async-signal-safe operations
/// are allowed until `execve` or `_exit`: no allocation, no locks, no Rust `std` I/O that could
/// take a lock held by a thread of the parent at the time of the clone.
pub unsafe fn clone_into_namespaces(namespace_flags: u64) -> io::Result<CloneResult> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone_args is plain data; all-zero is a valid value (no stack, no tls, no set_tid).
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = namespace_flags | libc::CLONE_PIDFD as u64;
    args.pidfd = std::ptr::addr_of_mut!(pidfd) as u64;
    args.exit_signal = libc::SIGCHLD as u64;

    // SAFETY: `args` is a valid clone_args of the size passed; with stack = 0 the child continues
    // on a copy-on-write copy of this stack, exactly like fork(). The kernel writes the pidfd
    // into `pidfd`, which lives until after the call returns in the parent.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    let pid = check(ret)?;
    if pid == 0 {
        return Ok(CloneResult::Child);
    }

    // SAFETY: with CLONE_PIDFD the kernel returned a new pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(CloneResult::Parent {
        pid: pid as libc::pid_t,
        pidfd,
    })
}

/// Sends `signal` to the process behind `pidfd` (`pidfd_send_signal(2)`).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: the pidfd is open for the duration of the call; a null siginfo asks the kernel to
    // fill in the same siginfo as kill(2).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

/// Marks every descriptor from `first` up to and including `last` close-on-exec.
pub fn close_range_cloexec(first: RawFd, last: RawFd) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors that exist;
    // it closes nothing, so no owned descriptor is invalidated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    check(ret).map(drop)
}

/// A file system context from `fsopen(2)`, configured with `fsconfig(2)`.
pub struct FsContext {
    fd: OwnedFd,
}

impl FsContext {
    /// Opens a context for the file system type `fstype` (for example `overlay`).
    pub fn open(fstype: &CStr) -> io::Result<Self> {
        // SAFETY: `fstype` is a NUL-terminated string that outlives the call.
        let ret = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
        let fd = check(ret)? as RawFd;
        // SAFETY: fsopen returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Sets the string parameter `key` to `value` (`FSCONFIG_SET_STRING`).
    pub fn set_string(&self, key: &CStr, value: &CStr) -> io::Result<()> {
        // SAFETY: both strings are NUL-terminated and outlive the call; aux must be 0.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        check(ret).map(drop)
    }

    /// Sets the flag parameter `key` (`FSCONFIG_SET_FLAG`).
    pub fn set_flag(&self, key: &CStr) -> io::Result<()> {
        // SAFETY: `key` is NUL-terminated and outlives the call; value must be null, aux 0.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_SET_FLAG,
                key.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        check(ret).map(drop)
    }

    /// Creates the superblock and returns a detached mount of it (`fsmount(2)`).
    pub fn create_mount(&self) -> io::Result<OwnedFd> {
        // SAFETY: the context descriptor is open; key and value must be null for CMD_CREATE.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        check(ret)?;

        // SAFETY: the context is in the created state; fsmount returns a new descriptor.
        let ret =
            unsafe { libc::syscall(libc::SYS_fsmount, self.fd.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
        let fd = check(ret)? as RawFd;
        // SAFETY: fsmount returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Attaches the detached mount `mount` at `target` (`move_mount(2)`).
pub fn move_mount_to(mount: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    // SAFETY: the mount descriptor is open; the empty from-path with MOVE_MOUNT_F_EMPTY_PATH
    // names the descriptor itself, and `target` is NUL-terminated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

/// Sets mount attributes on `path` and, with `recursive`, every mount below it
/// (`mount_setattr(2)`, Linux 5.12). Flags locked by a less privileged mount namespace stay as
/// they are because only the bits in `attr_set` change.
pub fn mount_setattr(path: &CStr, recursive: bool, attr_set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is NUL-terminated and `attr` is a valid mount_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags as libc::c_uint,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// Waits for one of the blocked signals in `signals` and returns its `siginfo_t`
/// (`sigwaitinfo(2)`). Unlike nix's `SigSet::wait`, this keeps the sender's PID and `si_code`.
pub fn sigwaitinfo(signals: &nix::sys::signal::SigSet) -> io::Result<libc::siginfo_t> {
    // SAFETY: an all-zero siginfo_t is a valid value for the kernel to overwrite.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `signals` is a valid sigset and `info` a valid out-pointer for the call.
    let ret = unsafe { libc::sigwaitinfo(signals.as_ref(), &mut info) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Descriptors and arguments for [`exec_after_clone`], prepared before the clone because the
/// child must not allocate.
pub struct ExecPlan<'a> {
    /// Source descriptors for fds 0, 1, 2 and 3 (`-1` keeps the inherited descriptor). Each
    /// source must be at least 4 so that an earlier `dup2` cannot overwrite it.
    pub fds: [RawFd; 4],
    /// Close-on-exec pipe end to report an `execve` errno through.
    pub error_fd: RawFd,
    pub path: &'a CStr,
    /// NULL-terminated pointer array into live `CString`s.
    pub argv: &'a [*const libc::c_char],
    /// NULL-terminated pointer array into live `CString`s.
    pub envp: &'a [*const libc::c_char],
}

/// Runs in the child of [`clone_into_namespaces`]: arms the parent-death signal, installs
/// the descriptors, resets the signal mask and `SIGPIPE`, and executes `plan.path`. On
/// failure it writes the errno to `plan.error_fd` and exits with status 127.
///
/// # Safety
///
/// Call only in the child of a clone or fork of a possibly multi-threaded process; `plan`
/// must point to memory that was valid at the time of the clone. Only async-signal-safe
/// system calls are made.
pub unsafe fn exec_after_clone(plan: &ExecPlan<'_>) -> ! {
    // SAFETY: each call is a raw async-signal-safe system call on descriptors and memory that
    // the child inherited; nothing allocates or takes a lock.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        for (target, source) in plan.fds.iter().enumerate() {
            if *source >= 0 && libc::dup2(*source, target as libc::c_int) < 0 {
                report_and_exit(plan.error_fd);
            }
        }

        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Rust's runtime ignores SIGPIPE; an ignored disposition would survive execve.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        report_and_exit(plan.error_fd)
    }
}

/// Writes the current errno to `fd` and exits with status 127 without running destructors.
unsafe fn report_and_exit(fd: RawFd) -> ! {
    // SAFETY: errno is thread-local and readable; write and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// Sets a terminal's window size (`TIOCSWINSZ`).
pub fn set_window_size(tty: BorrowedFd<'_>, size: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer; the descriptor is open.
    let ret = unsafe {
        libc::ioctl(
            tty.as_raw_fd(),
            libc::TIOCSWINSZ,
            size as *const libc::winsize,
        )
    };
    check(ret.into()).map(drop)
}

/// Makes `tty` the controlling terminal of the calling session leader (`TIOCSCTTY`).
pub fn set_controlling_terminal(tty: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); the descriptor is open.
    let ret = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) };
    check(ret.into()).map(drop)
}

/// Reads the extended attribute `name` of `path` without following a final symlink.
/// Returns `None` when the attribute is absent or the file system has no xattrs.
pub fn lgetxattr(path: &CStr, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buffer = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated; the buffer is valid for its length.
    let ret = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA | libc::ENOTSUP) => Ok(None),
            _ => Err(err),
        };
    }
    buffer.truncate(ret as usize);
    Ok(Some(buffer))
}

/// Sets the NIS domain name of the caller's UTS namespace (`setdomainname(2)`).
pub fn setdomainname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe the bytes of `name`, which outlives the call.
    let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    check(ret.into()).map(drop)
}

/// Sets the `IFF_UP` flag of the loopback interface `lo` in the caller's network namespace
/// (`SIOCGIFFLAGS`/`SIOCSIFFLAGS` on a datagram socket).
pub fn set_loopback_up() -> io::Result<()> {
    // SAFETY: socket() has no memory arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let fd = check(fd.into())? as RawFd;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into the valid ifreq.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) };
    check(ret.into())?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union, so reading it is defined.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags from the valid ifreq.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) };
    check(ret.into()).map(drop)
}
