//! New files of a definition (`with_new_file`, `--new-file`) as one more read-only layer on top
//! of the image. The layer is content-addressed, so the same files share one directory. Also
//! reading a file such as `/etc/passwd` through a stack of overlay-format layers.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use mayfly_image::digest::Digest;
use mayfly_image::unpack::{remove_tree, OPAQUE_XATTR};

use super::settings::FileRequest;
use super::ContainerError;

/// Writes `files` into `<files_dir>/<digest>/root` unless that layer exists, and returns it.
pub fn file_layer(files_dir: &Path, files: &[FileRequest]) -> Result<PathBuf, ContainerError> {
    let mut key = String::new();
    for file in files {
        key.push_str(&format!(
            "{}\0{:o}\0{}\0{}\0",
            file.path,
            file.permissions,
            file.contents.len(),
            file.contents
        ));
    }
    let digest = Digest::of_bytes(key.as_bytes());
    let layer = files_dir.join(&digest.hex()[..32]);
    let root = layer.join("root");
    if root.exists() {
        return Ok(root);
    }

    let io_error = |path: &Path, source: std::io::Error| ContainerError::FileLayer {
        path: path.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(files_dir)
        .map_err(|source| io_error(files_dir, source))?;
    let staging = files_dir.join(format!(".tmp-{}-{}", digest.hex(), std::process::id()));
    let staging_root = staging.join("root");
    let _ = remove_tree(&staging);

    for file in files {
        let relative = file.path.trim_start_matches('/');
        let target = staging_root.join(relative);
        if let Some(parent) = target.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|source| io_error(parent, source))?;
        }
        let mut output = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file.permissions & 0o7777)
            .open(&target)
            .map_err(|source| io_error(&target, source))?;
        output
            .write_all(file.contents.as_bytes())
            .map_err(|source| io_error(&target, source))?;
    }

    match fs::rename(&staging, &layer) {
        Ok(()) => Ok(root),
        // Another process wrote the same layer first; its copy is identical.
        Err(_) if root.exists() => {
            let _ = remove_tree(&staging);
            Ok(root)
        }
        Err(source) => {
            let _ = remove_tree(&staging);
            Err(io_error(&layer, source))
        }
    }
}

/// Reads `path` (absolute in the container) through `layers`, lowest first, as overlay would
/// show it: the top-most layer that has the file wins, and a whiteout or an opaque directory
/// above hides the lower ones. Returns `None` when the file does not exist.
pub fn read_through_layers(layers: &[PathBuf], path: &str) -> Option<String> {
    let relative = Path::new(path.trim_start_matches('/'));
    for layer in layers.iter().rev() {
        let candidate = layer.join(relative);
        if let Ok(metadata) = fs::symlink_metadata(&candidate) {
            let is_whiteout = metadata.file_type().is_char_device() && metadata.rdev() == 0;
            if is_whiteout {
                return None;
            }
            if metadata.is_file() {
                return fs::read_to_string(&candidate).ok();
            }
            // NOTE: a symlink (to /usr/etc/passwd, say) is not followed; Docker's lookup of
            // users in images follows it, but no common base image links these files.
            return None;
        }
        if has_opaque_parent(layer, relative) {
            return None;
        }
    }
    None
}

fn has_opaque_parent(layer: &Path, relative: &Path) -> bool {
    relative.ancestors().skip(1).any(|ancestor| {
        !ancestor.as_os_str().is_empty() && xattr_is_set(&layer.join(ancestor), OPAQUE_XATTR)
    })
}

fn xattr_is_set(path: &Path, name: &str) -> bool {
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let name = std::ffi::CString::new(name).expect("attribute names have no NUL");
    // SAFETY: both pointers come from live CStrings, and a null buffer of size 0 only requests
    // the value's size, so the kernel writes nothing.
    let size = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    size >= 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_layer_is_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![FileRequest {
            path: "/srv/index.html".into(),
            contents: "Hello, world!".into(),
            permissions: 0o640,
        }];
        let first = file_layer(dir.path(), &files).unwrap();
        let second = file_layer(dir.path(), &files).unwrap();
        assert_eq!(first, second);
        let written = first.join("srv/index.html");
        assert_eq!(fs::read_to_string(&written).unwrap(), "Hello, world!");
        assert_eq!(fs::metadata(&written).unwrap().mode() & 0o777, 0o640);

        let other = vec![FileRequest {
            contents: "changed".into(),
            ..files[0].clone()
        }];
        assert_ne!(file_layer(dir.path(), &other).unwrap(), first);
    }

    #[test]
    fn read_through_layers_takes_the_top_file() {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(lower.join("etc/passwd"), "lower").unwrap();
        fs::write(lower.join("etc/group"), "lower group").unwrap();
        fs::write(upper.join("etc/passwd"), "upper").unwrap();
        let layers = vec![lower, upper];
        assert_eq!(
            read_through_layers(&layers, "/etc/passwd").as_deref(),
            Some("upper")
        );
        assert_eq!(
            read_through_layers(&layers, "/etc/group").as_deref(),
            Some("lower group")
        );
        assert_eq!(read_through_layers(&layers, "/etc/shadow"), None);
    }
}
