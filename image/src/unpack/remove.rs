//! Robust removal of trees that layers made hard to delete: read-only directories, files with
//! odd modes, deep nesting. Every step works on directory descriptors and never follows a
//! symlink, so removing a tree never touches anything outside it.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmod, fchmodat, fstat, fstatat, FchmodatFlags, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::sys;

/// Error from [`remove_tree`].
#[derive(Debug, thiserror::Error)]
#[error("failed to remove {path}; remove it by hand (you may need `chmod -R u+w` first)")]
pub struct RemoveTreeError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Deletes `path` and everything below it, making directories writable as needed. A missing
/// `path` is not an error. A symlink at `path` is removed itself, never followed.
///
/// Directories owned by IDs that the current user namespace does not map cannot be made
/// writable, so callers that unpacked with subordinate IDs remove trees from inside the same
/// user namespace.
pub fn remove_tree(path: &Path) -> Result<(), RemoveTreeError> {
    let error = |source| RemoveTreeError {
        path: path.to_owned(),
        source,
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err(error(io::Error::from_raw_os_error(libc::EINVAL)));
    };
    let parent_fd: OwnedFd = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(parent)
    {
        Ok(file) => file.into(),
        Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(error(source)),
    };
    let name = sys::c_string(name.as_bytes()).map_err(error)?;
    match remove_at(parent_fd.as_fd(), &name) {
        Err(Errno::ENOENT) => Ok(()),
        result => result.map_err(|errno| error(errno.into())),
    }
}

/// Removes `name` in `dir`: a non-directory is unlinked, a directory is emptied and removed.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    let stat = fstatat(Some(dir_raw(dir)), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return unlinkat(Some(dir_raw(dir)), name, UnlinkatFlags::NoRemoveDir);
    }
    // Reading and emptying the directory needs read, write and search permission on it.
    if stat.st_mode & 0o700 != 0o700 {
        let mode = Mode::from_bits_truncate((stat.st_mode | 0o700) & 0o7777);
        fchmodat(
            Some(dir_raw(dir)),
            name,
            mode,
            FchmodatFlags::NoFollowSymlink,
        )?;
    }
    let child = sys::open_beneath(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
    .map_err(errno_of)?;
    clear_dir(child.as_fd())?;
    drop(child);
    unlinkat(Some(dir_raw(dir)), name, UnlinkatFlags::RemoveDir)
}

/// Removes every entry inside the directory open at `dir`, keeping `dir` itself.
pub(crate) fn clear_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    // Entries can be removed only from a directory we may write and search.
    let mode = fstat(dir_raw(dir))?.st_mode;
    if mode & 0o700 != 0o700 {
        fchmod(
            dir_raw(dir),
            Mode::from_bits_truncate((mode | 0o700) & 0o7777),
        )?;
    }

    let names = list_dir(dir)?;
    for name in names {
        match remove_at(dir, &name) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

/// Lists the names in the directory open at `dir`, without `.` and `..`.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> Result<Vec<std::ffi::CString>, Errno> {
    // `Dir` takes ownership of its descriptor, so give it a duplicate opened for reading.
    let mut listing = Dir::openat(
        Some(dir_raw(dir)),
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

fn dir_raw(dir: BorrowedFd<'_>) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    dir.as_raw_fd()
}

pub(crate) fn errno_of(error: io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO))
}
