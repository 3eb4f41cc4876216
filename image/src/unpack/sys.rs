//! Raw system calls that neither `std` nor `nix` wrap: `openat2(2)` and the fd-based xattr calls.
//!
//! Every function here takes and returns owned Rust types, so the `unsafe` stays in this file.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Opens `path` relative to `dir` with `openat2(2)`, treating `dir` as the root directory
/// (`RESOLVE_IN_ROOT`) and refusing magic links such as `/proc/self/fd/*`
/// (`RESOLVE_NO_MAGICLINKS`). Absolute symlinks and `..` components resolve inside `dir`,
/// exactly as they would after `chroot(dir)`.
pub(crate) fn open_in_root(dir: BorrowedFd<'_>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    openat2(
        dir,
        path,
        flags,
        0,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// Opens or creates `path` relative to `dir` with `openat2(2)`, following no symlink at all
/// and staying beneath `dir` (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). `mode` applies only
/// with `O_CREAT` and is reduced by the umask.
pub(crate) fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    openat2(
        dir,
        path,
        flags,
        mode,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
    )
}

fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero `open_how` is the documented way to initialise it, because the kernel
    // rejects unknown non-zero fields; every field is a plain integer.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = resolve;

    // SAFETY: `dir` is a live descriptor for the duration of the call, `path` is a
    // NUL-terminated string that outlives it, and `how` is a valid `open_how` whose size we pass
    // as the fourth argument, so the kernel reads only memory we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }

    // SAFETY: the kernel returned a new descriptor that nothing else owns, so wrapping it in
    // `OwnedFd` gives it exactly one owner that closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sets the extended attribute `name` on the file open at `fd`.
pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and `value` is a live slice whose length we pass, so the
    // kernel reads only within both; `fd` stays open for the call.
    let result = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the value of the extended attribute `name` on the file open at `fd`, or `None`
/// when the file has no such attribute.
pub(crate) fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let read = |buffer: &mut [u8]| {
        // SAFETY: `buffer` is a live, writable slice whose length we pass, so the kernel writes
        // only within it; a zero length asks for the size and writes nothing.
        let size = unsafe {
            libc::fgetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if size < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(size as usize)
        }
    };
    match read_sized(read) {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Lists the names of the extended attributes on the file open at `fd`.
pub(crate) fn flistxattr(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let read = |buffer: &mut [u8]| {
        // SAFETY: as in `fgetxattr`, the kernel writes at most `buffer.len()` bytes.
        let size =
            unsafe { libc::flistxattr(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if size < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(size as usize)
        }
    };
    let list = read_sized(read)?;
    Ok(list
        .split(|&byte| byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| CString::new(name).expect("split on NUL leaves no NUL"))
        .collect())
}

/// Calls a size-probing xattr function twice: once for the size, once for the data, retrying
/// when the attribute grew in between (`ERANGE`).
fn read_sized(mut read: impl FnMut(&mut [u8]) -> io::Result<usize>) -> io::Result<Vec<u8>> {
    loop {
        let size = read(&mut [])?;
        let mut buffer = vec![0; size];
        match read(&mut buffer) {
            Ok(written) => {
                buffer.truncate(written);
                return Ok(buffer);
            }
            Err(error) if error.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Reads the path that the kernel records for `fd` in `/proc/self/fd`.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> io::Result<OsString> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(std::fs::read_link(link)?.into_os_string())
}

/// Converts raw path bytes to a `CString`, reporting an embedded NUL as `EINVAL`.
pub(crate) fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Makes `command` enter a new user namespace before it executes, with its user and group
/// (`uid`, `gid`: the IDs the child runs as) mapped to root: the map an unprivileged process
/// may write for itself. With `mount_namespace`, it also enters a new mount namespace owned by
/// that user namespace, where it may mount overlayfs.
#[cfg(test)]
pub(crate) fn enter_user_namespace_before_exec(
    command: &mut std::process::Command,
    uid: u32,
    gid: u32,
    mount_namespace: bool,
) {
    use std::os::unix::process::CommandExt;

    // Everything the child touches is prepared here, because between fork and exec it may
    // only make system calls.
    let uid_map = format!("0 {uid} 1");
    let gid_map = format!("0 {gid} 1");
    let write = |path: &CStr, contents: &[u8]| -> io::Result<()> {
        // SAFETY: `path` is NUL-terminated; the returned descriptor is checked and closed below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `contents` is a live slice and we pass its length; `fd` is open.
        let written = unsafe { libc::write(fd, contents.as_ptr().cast(), contents.len()) };
        let error = io::Error::last_os_error();
        // SAFETY: `fd` is open and owned by this closure alone.
        unsafe { libc::close(fd) };
        if written < 0 {
            return Err(error);
        }
        Ok(())
    };
    let setup = move || -> io::Result<()> {
        // Switching to another user (`Command::uid`) made the process non-dumpable, which
        // leaves its /proc/self files owned by root and unwritable to it.
        // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no memory of ours.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut namespaces = nix::sched::CloneFlags::CLONE_NEWUSER;
        if mount_namespace {
            namespaces |= nix::sched::CloneFlags::CLONE_NEWNS;
        }
        nix::sched::unshare(namespaces)?;
        write(c"/proc/self/setgroups", b"deny")?;
        write(c"/proc/self/uid_map", uid_map.as_bytes())?;
        write(c"/proc/self/gid_map", gid_map.as_bytes())
    };
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (unshare, open, write, close) on memory allocated before the fork; it neither allocates
    // nor takes locks, so it cannot deadlock on state held by another thread of the parent.
    unsafe { command.pre_exec(setup) };
}
