//! Resolving container paths inside the root file system before `pivot_root`.
//!
//! An image may contain symlinks such as `/etc/resolv.conf -> /run/resolv.conf` or
//! `/data -> ../../host/path`. Mount destinations are resolved the way the container will
//! see them: absolute link targets and `..` stay inside the root.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Maximum number of symlinks followed, as the kernel's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// Resolves `path` (a container path) under `root` without leaving `root`. Components that
/// do not exist are taken as they are.
pub(super) fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = components(path);
    pending.reverse();
    let mut resolved = PathBuf::new();
    let mut links = 0;

    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match full.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut parts = components(&target);
                parts.reverse();
                pending.extend(parts);
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_stay_inside_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("run")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::os::unix::fs::symlink("/run/resolv.conf", r.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc", r.join("escape")).unwrap();

        assert_eq!(
            resolve_in_root(r, Path::new("/etc/resolv.conf")).unwrap(),
            r.join("run/resolv.conf")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/escape/x")).unwrap(),
            r.join("etc/x")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/../../new/dir")).unwrap(),
            r.join("new/dir")
        );
    }

    #[test]
    fn symlink_loop_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/a", root.path().join("a")).unwrap();
        let err = resolve_in_root(root.path(), Path::new("/a")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }
}
