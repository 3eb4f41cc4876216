//! The fallback root file system: the layers merged into a private copy, for hosts where
//! unprivileged overlay does not work.
//!
//! Layers are in overlay format (see the image crate): a whiteout is a character device
//! 0:0, and an opaque directory carries `user.overlay.opaque=y` (or the `trusted.` variant).
//! Merging applies layers from the bottom up: a whiteout removes the path, an opaque
//! directory replaces the lower directory's content, anything else replaces the lower entry.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

/// Failure to copy a layer.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct CopyError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn fail(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CopyError {
    let path = path.to_owned();
    move |source| CopyError {
        action,
        path,
        source,
    }
}

/// Merges `layers` (bottom-most first) into the existing directory `target`, keeping owners,
/// modes and symlinks. Hard links become separate copies.
// NOTE: timestamps are not preserved; files in the copy carry the time of the copy.
pub fn merge_layers(layers: &[PathBuf], target: &Path) -> Result<(), CopyError> {
    for layer in layers {
        merge_dir(layer, target)?;
        copy_metadata(layer, target)?;
    }
    Ok(())
}

fn merge_dir(source: &Path, target: &Path) -> Result<(), CopyError> {
    let entries = std::fs::read_dir(source).map_err(fail("failed to list", source))?;
    for entry in entries {
        let entry = entry.map_err(fail("failed to list", source))?;
        let from = entry.path();
        let to = target.join(entry.file_name());
        let meta = from
            .symlink_metadata()
            .map_err(fail("failed to stat", &from))?;
        let file_type = meta.file_type();

        if file_type.is_char_device() && meta.rdev() == 0 {
            remove_any(&to)?;
            continue;
        }

        if file_type.is_dir() {
            let keep_lower = !is_opaque(&from)? && to.symlink_metadata().is_ok_and(|m| m.is_dir());
            if !keep_lower {
                remove_any(&to)?;
                std::fs::create_dir(&to).map_err(fail("failed to create", &to))?;
            }
            merge_dir(&from, &to)?;
            copy_metadata(&from, &to)?;
            continue;
        }

        remove_any(&to)?;
        if file_type.is_symlink() {
            let link = std::fs::read_link(&from).map_err(fail("failed to read link", &from))?;
            std::os::unix::fs::symlink(&link, &to)
                .map_err(fail("failed to create symlink", &to))?;
            lchown(&to, &meta)?;
        } else if file_type.is_file() {
            std::fs::copy(&from, &to).map_err(fail("failed to copy", &from))?;
            copy_metadata(&from, &to)?;
        } else if file_type.is_fifo() {
            nix::unistd::mkfifo(&to, nix::sys::stat::Mode::from_bits_truncate(meta.mode()))
                .map_err(|errno| fail("failed to create fifo", &to)(errno.into()))?;
            copy_metadata(&from, &to)?;
        } else {
            // Device nodes and sockets never come out of the image unpacker.
            tracing::debug!(path = %from.display(), "skipping special file in layer copy");
        }
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> Result<bool, CopyError> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| fail("invalid path", dir)(io::ErrorKind::InvalidInput.into()))?;
    for name in [c"user.overlay.opaque", c"trusted.overlay.opaque"] {
        let value = sys::lgetxattr(&path, name).map_err(fail("failed to read xattrs of", dir))?;
        if value.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn remove_any(path: &Path) -> Result<(), CopyError> {
    match path.symlink_metadata() {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(path).map_err(fail("failed to remove", path))
        }
        Ok(_) => std::fs::remove_file(path).map_err(fail("failed to remove", path)),
    }
}

/// Copies the owner. An owner this user namespace cannot express (layers unpacked with
/// subordinate IDs, copied under a single-ID map) fails with EINVAL; the copy then keeps the
/// namespace's root as owner, as the unpacker squashes such owners.
fn lchown(path: &Path, meta: &std::fs::Metadata) -> Result<(), CopyError> {
    match std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid())) {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!(path = %path.display(), uid = meta.uid(), gid = meta.gid(), "owner not mapped here; kept root");
            Ok(())
        }
        other => other.map_err(fail("failed to change the owner of", path)),
    }
}

/// Copies owner, then mode (chown clears setuid bits, so the mode goes second).
fn copy_metadata(from: &Path, to: &Path) -> Result<(), CopyError> {
    let meta = from
        .symlink_metadata()
        .map_err(fail("failed to stat", from))?;
    lchown(to, &meta)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(fail("failed to set the mode of", to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_replace_and_remove() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().join("base");
        let top = root.path().join("top");
        let target = root.path().join("target");
        for dir in [&base, &top, &target] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/keep"), "base").unwrap();
        std::fs::write(base.join("etc/replace"), "base").unwrap();
        std::fs::write(base.join("gone"), "base").unwrap();
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::write(top.join("etc/replace"), "top").unwrap();
        std::os::unix::fs::symlink("etc/keep", top.join("link")).unwrap();

        merge_layers(&[base, top], &target).unwrap();

        assert_eq!(
            std::fs::read_to_string(target.join("etc/keep")).unwrap(),
            "base"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("etc/replace")).unwrap(),
            "top"
        );
        assert_eq!(
            std::fs::read_link(target.join("link")).unwrap(),
            Path::new("etc/keep")
        );
        assert!(target.join("gone").exists());
    }
}
