//! OCI whiteouts in overlayfs's `userxattr` format.
//!
//! An OCI layer deletes a lower-layer path `d/NAME` with an entry `d/.wh.NAME`, and hides all of
//! a lower directory's content with `d/.wh..wh..opq`. Overlayfs mounted with `userxattr`
//! (Linux 5.11+) expects instead a 0:0 character device at `d/NAME` and the xattr
//! `user.overlay.opaque=y` on `d` (Documentation/filesystems/overlayfs.rst, sections
//! "whiteouts and opaque directories" and "User xattr"). Since Linux 5.8 `mknod` of a 0:0
//! character device needs no privilege, so the device form works for unprivileged users.
//! Where `mknod` still fails with `EPERM` (an LSM, say), the whiteout is stored in the
//! alternative form of the same document: a zero-size regular file with the
//! `user.overlay.whiteout` xattr, in a directory marked `user.overlay.opaque=x`. Overlayfs reads
//! that form from Linux 6.7 on.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::stat::{makedev, mknodat, FileStat, Mode, SFlag};

use super::sys;

/// Xattr that marks an opaque directory (`y`) or a directory holding xattr whiteouts (`x`).
pub const OPAQUE_XATTR: &str = "user.overlay.opaque";
/// Xattr that turns a zero-size regular file into a whiteout.
pub const WHITEOUT_XATTR: &str = "user.overlay.whiteout";

pub(crate) const OPAQUE_XATTR_C: &CStr = c"user.overlay.opaque";
pub(crate) const WHITEOUT_XATTR_C: &CStr = c"user.overlay.whiteout";

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS bookkeeping names such as `.wh..wh.plnk`, which carry no image content.
const AUFS_METADATA_PREFIX: &[u8] = b".wh..wh.";

/// Meaning of a `.wh.`-prefixed file name in a layer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WhiteoutName<'a> {
    /// `.wh..wh..opq`: hide the lower layers' content of this directory.
    Opaque,
    /// `.wh.NAME`: delete `NAME` of the lower layers.
    Whiteout(&'a [u8]),
    /// `.wh..wh.*` other than the opaque marker: AUFS metadata, ignored.
    AufsMetadata,
}

/// Classifies a file name; `None` for an ordinary name.
pub(crate) fn classify(file_name: &[u8]) -> Option<WhiteoutName<'_>> {
    if file_name == OPAQUE_MARKER {
        Some(WhiteoutName::Opaque)
    } else if file_name.starts_with(AUFS_METADATA_PREFIX) {
        Some(WhiteoutName::AufsMetadata)
    } else {
        file_name
            .strip_prefix(WHITEOUT_PREFIX)
            .map(WhiteoutName::Whiteout)
    }
}

/// Reports whether a path component is AUFS metadata, whose whole subtree is ignored.
pub(crate) fn is_aufs_metadata(component: &[u8]) -> bool {
    component.starts_with(AUFS_METADATA_PREFIX) && component != OPAQUE_MARKER
}

/// Reports whether `stat` describes an overlay whiteout device (character device 0:0).
pub(crate) fn is_whiteout_device(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && stat.st_rdev == 0
}

/// Form in which a whiteout was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhiteoutForm {
    Device,
    Xattr,
}

/// Creates a whiteout named `name` in `parent`, as a 0:0 device or, where `mknod` is not
/// permitted, as an xattr whiteout.
pub(crate) fn create(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<WhiteoutForm> {
    match mknodat(
        Some(parent.as_raw_fd()),
        name,
        SFlag::S_IFCHR,
        Mode::empty(),
        makedev(0, 0),
    ) {
        Ok(()) => Ok(WhiteoutForm::Device),
        Err(nix::errno::Errno::EPERM) => {
            create_xattr_whiteout(parent, name)?;
            Ok(WhiteoutForm::Xattr)
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Creates the alternative whiteout form: a zero-size file with `user.overlay.whiteout`,
/// in a parent marked `user.overlay.opaque=x` unless it is already fully opaque.
pub(crate) fn create_xattr_whiteout(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let file = File::from(sys::open_beneath(
        parent,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o600,
    )?);
    sys::fsetxattr(file.as_fd(), WHITEOUT_XATTR_C, b"y")?;

    let dir = sys::open_beneath(parent, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    if opaque_value(dir.as_fd())?.as_deref() != Some(b"y") {
        sys::fsetxattr(dir.as_fd(), OPAQUE_XATTR_C, b"x")?;
    }
    Ok(())
}

/// Marks the directory open at `dir` opaque.
pub(crate) fn mark_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    sys::fsetxattr(dir, OPAQUE_XATTR_C, b"y")
}

/// Returns the value of `user.overlay.opaque` on the directory open at `dir`.
pub(crate) fn opaque_value(dir: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    sys::fgetxattr(dir, OPAQUE_XATTR_C)
}

/// Reports whether the regular file open at `file` is an xattr whiteout.
pub(crate) fn is_xattr_whiteout(file: BorrowedFd<'_>, size: i64) -> io::Result<bool> {
    Ok(size == 0 && sys::fgetxattr(file, WHITEOUT_XATTR_C)?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_whiteout_names() {
        assert_eq!(classify(b".wh..wh..opq"), Some(WhiteoutName::Opaque));
        assert_eq!(classify(b".wh.foo"), Some(WhiteoutName::Whiteout(b"foo")));
        assert_eq!(classify(b".wh..wh.plnk"), Some(WhiteoutName::AufsMetadata));
        assert_eq!(classify(b".wh."), Some(WhiteoutName::Whiteout(b"")));
        assert_eq!(classify(b"foo.wh.bar"), None);
        assert_eq!(classify(b"foo"), None);
    }
}
