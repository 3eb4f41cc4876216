//! The unpacked format as overlayfs reads it: layers mounted with `userxattr` inside a user
//! namespace must show the same tree as [`flatten_layers`] builds from them.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::mount::{mount, umount, MsFlags};

use super::support::{in_isolated_child, run_isolated, test_name, Isolation, Layer, Scratch};
use crate::unpack::{flatten_layers, whiteout};

fn lower_layer() -> Vec<u8> {
    Layer::new()
        .dir("etc", 0o755)
        .file("etc/keep", b"lower")
        .file("etc/deleted", b"lower")
        .dir("cache", 0o755)
        .file("cache/old", b"1")
        .file("mixed/lower", b"l")
        .symlink("link", "etc/keep")
        .file("gone-dir/f", b"x")
        .finish()
}

fn middle_layer() -> Vec<u8> {
    Layer::new()
        .file("etc/.wh.deleted", b"")
        .file("cache/.wh..wh..opq", b"")
        .file("cache/new", b"middle")
        .file("mixed/middle", b"m")
        .file(".wh.gone-dir", b"")
        .finish()
}

fn upper_layer() -> Vec<u8> {
    Layer::new()
        .file("link", b"now a file")
        .file(".wh.gone-dir", b"")
        .file("gone-dir", b"back as a file")
        .file("etc/deleted", b"recreated")
        .finish()
}

/// Describes a tree as path -> (kind, content or target), leaving out owners and times.
fn describe(root: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let mut tree = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let metadata = fs::symlink_metadata(&path).unwrap();
            let file_type = metadata.file_type();
            let description = if file_type.is_dir() {
                pending.push(path.clone());
                ("dir".to_owned(), Vec::new())
            } else if file_type.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                (
                    "symlink".to_owned(),
                    target.into_os_string().into_encoded_bytes(),
                )
            } else if file_type.is_file() {
                ("file".to_owned(), fs::read(&path).unwrap())
            } else {
                (
                    format!("other {:o} rdev {}", metadata.mode(), metadata.rdev()),
                    Vec::new(),
                )
            };
            tree.insert(relative, description);
        }
    }
    tree
}

fn check_overlay_matches_flatten() {
    let mut layers: Vec<Scratch> = [lower_layer(), middle_layer(), upper_layer()]
        .iter()
        .map(|tar| {
            let scratch = Scratch::new();
            scratch.unpack(tar).unwrap();
            scratch
        })
        .collect();

    // A top layer with an xattr whiteout, the form used where mknod is not permitted.
    let xattr_layer = Scratch::new();
    fs::create_dir(xattr_layer.path("mixed")).unwrap();
    let mixed = fs::File::open(xattr_layer.path("mixed")).unwrap();
    whiteout::create_xattr_whiteout(mixed.as_fd(), c"lower").unwrap();
    layers.push(xattr_layer);

    let merged = Scratch::new();
    let lower_dirs: Vec<&Path> = layers.iter().map(|layer| layer.dest.as_path()).collect();
    flatten_layers(&lower_dirs, &merged.dest).unwrap();

    // overlayfs lists the top layer first.
    let lowerdir: Vec<String> = lower_dirs
        .iter()
        .rev()
        .map(|dir| dir.display().to_string())
        .collect();
    let options = format!("lowerdir={},userxattr", lowerdir.join(":"));
    let mounted = Scratch::new();
    mount(
        Some("overlay"),
        &mounted.dest,
        Some("overlay"),
        MsFlags::MS_RDONLY,
        Some(options.as_str()),
    )
    .unwrap_or_else(|errno| panic!("mount -t overlay -o {options}: {errno}"));

    let seen_by_overlay = describe(&mounted.dest);
    umount(&mounted.dest).unwrap();
    let flattened = describe(&merged.dest);
    assert_eq!(seen_by_overlay, flattened);

    assert_eq!(flattened["etc/keep"].1, b"lower");
    assert_eq!(flattened["etc/deleted"].1, b"recreated");
    assert!(!flattened.contains_key("cache/old"));
    assert_eq!(flattened["cache/new"].1, b"middle");
    assert!(
        !flattened.contains_key("mixed/lower"),
        "xattr whiteout applied"
    );
    assert!(flattened.contains_key("mixed/middle"), "directories merge");
    assert_eq!(flattened["link"].0, "file");
    assert_eq!(
        flattened["gone-dir"],
        ("file".to_owned(), b"back as a file".to_vec())
    );
}

#[test]
fn overlay_matches_flatten() {
    if in_isolated_child() {
        check_overlay_matches_flatten();
    } else {
        // Root runs the check as nobody, the way an unprivileged user runs mayfly.
        let isolation = if nix::unistd::geteuid().is_root() {
            Isolation::NobodyWithMounts
        } else {
            Isolation::UserNamespaceWithMounts
        };
        let name = test_name(module_path!(), "overlay_matches_flatten");
        run_isolated(&name, isolation);
    }
}
