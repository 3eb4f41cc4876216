//! Unprivileged overlay mounts.
//!
//! Inside a user namespace, overlay needs the `userxattr` option (Linux 5.11): it then keeps
//! its metadata in `user.overlay.*` extended attributes. Layers are passed one by one with the
//! new mount API's `lowerdir+` parameter (Linux 6.8), which has no length limit; on older
//! kernels the classic `mount(2)` option string is used, which the kernel limits to one page
//! (4096 bytes on x86_64), enough for about 40 layers with paths of 80 bytes.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// The directories of one overlay mount.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlayDirs {
    /// Read-only layers, the top-most first (the order of overlay's `lowerdir`).
    pub lowers: Vec<PathBuf>,
    /// The writable upper directory.
    pub upper: PathBuf,
    /// Overlay's scratch directory, on the same file system as `upper`.
    pub work: PathBuf,
}

/// Failure to mount an overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A path contains a NUL byte.
    #[error("path {path} contains a NUL byte")]
    NulInPath { path: PathBuf },
    /// A path contains a character that the classic option string cannot carry.
    #[error(
        "layer path {path} contains ',' or ':', which overlay on kernels before 6.8 cannot take"
    )]
    UnsafeCharacter { path: PathBuf },
    /// The kernel rejected the overlay.
    #[error("overlay mount on {target} failed at {step}: {source}")]
    Mount {
        target: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

fn c_path(path: &Path) -> Result<CString, OverlayError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| OverlayError::NulInPath {
        path: path.to_owned(),
    })
}

/// Mounts an overlay of `dirs` on `target` with `userxattr`.
pub fn mount(dirs: &OverlayDirs, target: &Path) -> Result<(), OverlayError> {
    match mount_with_fsconfig(dirs, target) {
        Ok(()) => Ok(()),
        // EINVAL from `lowerdir+` means a kernel before 6.8: use the option string.
        Err(OverlayError::Mount {
            step: "lowerdir+",
            source,
            ..
        }) if source.raw_os_error() == Some(libc::EINVAL) => mount_with_options(dirs, target),
        Err(err) => Err(err),
    }
}

fn mount_with_fsconfig(dirs: &OverlayDirs, target: &Path) -> Result<(), OverlayError> {
    let fail = |step: &'static str| {
        let target = target.to_owned();
        move |source| OverlayError::Mount {
            target,
            step,
            source,
        }
    };
    let context = sys::FsContext::open(c"overlay").map_err(fail("fsopen"))?;
    context
        .set_string(c"source", c"overlay")
        .map_err(fail("source"))?;
    for lower in &dirs.lowers {
        context
            .set_string(c"lowerdir+", &c_path(lower)?)
            .map_err(fail("lowerdir+"))?;
    }
    context
        .set_string(c"upperdir", &c_path(&dirs.upper)?)
        .map_err(fail("upperdir"))?;
    context
        .set_string(c"workdir", &c_path(&dirs.work)?)
        .map_err(fail("workdir"))?;
    context.set_flag(c"userxattr").map_err(fail("userxattr"))?;

    let mount = context.create_mount().map_err(fail("create"))?;
    sys::move_mount_to(mount.as_fd(), &c_path(target)?).map_err(fail("move_mount"))
}

fn mount_with_options(dirs: &OverlayDirs, target: &Path) -> Result<(), OverlayError> {
    let mut lowers = Vec::new();
    for lower in &dirs.lowers {
        let bytes = lower.as_os_str().as_bytes();
        if bytes.iter().any(|b| matches!(b, b',' | b':')) {
            return Err(OverlayError::UnsafeCharacter {
                path: lower.clone(),
            });
        }
        lowers.push(lower.display().to_string());
    }
    // TODO: chdir into the layers' common parent and pass relative paths when the option
    // string exceeds one page on kernels before 6.8.
    let options = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lowers.join(":"),
        dirs.upper.display(),
        dirs.work.display()
    );
    nix::mount::mount(
        Some(OsStr::new("overlay")),
        target,
        Some(OsStr::new("overlay")),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|errno| OverlayError::Mount {
        target: target.to_owned(),
        step: "mount",
        source: errno.into(),
    })
}
