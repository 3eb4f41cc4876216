//! Flattening overlay-format layers into one tree.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::support::{mode_of, Layer, Scratch, Spec};
use crate::unpack::{flatten_layers, remove_tree, sys, whiteout};

fn lower_layer() -> Vec<u8> {
    Layer::new()
        .dir("etc", 0o755)
        .file("etc/keep", b"lower")
        .file("etc/deleted", b"lower")
        .dir("cache", 0o755)
        .file("cache/old1", b"1")
        .file("cache/old2", b"2")
        .file("mixed/lower", b"l")
        .symlink("link", "etc/keep")
        .entry(Spec {
            name: b"bin/hard1",
            data: b"shared inode",
            mode: 0o755,
            xattrs: &[("user.origin", b"lower")],
            ..Spec::default()
        })
        .hardlink("bin/hard2", "bin/hard1")
        .dir("ro", 0o555)
        .file("ro/inner", b"x")
        .dir("gone-dir", 0o755)
        .file("gone-dir/f", b"x")
        .finish()
}

fn upper_layer() -> Vec<u8> {
    Layer::new()
        .file("etc/.wh.deleted", b"")
        .file("cache/.wh..wh..opq", b"")
        .file("cache/new", b"upper")
        .file("mixed/upper", b"u")
        .file("link", b"now a file")
        .file(".wh.gone-dir", b"")
        .dir("ro", 0o500)
        .finish()
}

fn unpack_into(scratch: &Scratch, layer: &[u8]) {
    scratch.unpack(layer).unwrap();
}

#[test]
fn flatten_applies_overlay_rules() {
    let lower = Scratch::new();
    unpack_into(&lower, &lower_layer());
    let upper = Scratch::new();
    unpack_into(&upper, &upper_layer());
    let merged = Scratch::new();

    let report = flatten_layers(&[&lower.dest, &upper.dest], &merged.dest).unwrap();
    let path = |name: &str| merged.path(name);

    assert_eq!(fs::read(path("etc/keep")).unwrap(), b"lower");
    assert!(!path("etc/deleted").exists(), "whiteout deletes");
    assert!(
        !path("cache/old1").exists(),
        "opaque directory hides lower content"
    );
    assert_eq!(fs::read(path("cache/new")).unwrap(), b"upper");
    assert!(
        path("mixed/lower").exists() && path("mixed/upper").exists(),
        "directories merge"
    );
    assert!(fs::symlink_metadata(path("link")).unwrap().is_file());
    assert!(!path("gone-dir").exists());
    assert_eq!(mode_of(&path("ro")), 0o500, "upper directory metadata wins");
    assert!(path("ro/inner").exists());

    let hard1 = fs::metadata(path("bin/hard1")).unwrap();
    let hard2 = fs::metadata(path("bin/hard2")).unwrap();
    assert_eq!(
        hard1.ino(),
        hard2.ino(),
        "hardlinks inside a layer stay linked"
    );
    assert_eq!(hard1.mode() & 0o7777, 0o755);
    assert_eq!(hard1.mtime(), 1_600_000_000);
    let file = fs::File::open(path("bin/hard1")).unwrap();
    assert_eq!(
        sys::fgetxattr(file.as_fd(), c"user.origin")
            .unwrap()
            .as_deref(),
        Some(&b"lower"[..])
    );

    assert_no_overlay_markers(&merged.dest);
    assert!(report.whiteouts_applied >= 3, "{report:?}");
    assert_eq!(report.hardlinks, 1);
    merged.assert_nothing_escaped();
}

#[test]
fn flatten_applies_xattr_whiteouts() {
    let lower = Scratch::new();
    unpack_into(
        &lower,
        &Layer::new()
            .file("dir/victim", b"x")
            .file("dir/other", b"y")
            .finish(),
    );
    let upper = Scratch::new();
    fs::create_dir(upper.path("dir")).unwrap();
    let dir = fs::File::open(upper.path("dir")).unwrap();
    whiteout::create_xattr_whiteout(dir.as_fd(), c"victim").unwrap();
    let merged = Scratch::new();

    flatten_layers(&[&lower.dest, &upper.dest], &merged.dest).unwrap();
    assert!(!merged.path("dir/victim").exists());
    assert!(
        merged.path("dir/other").exists(),
        "an `x` directory is not opaque"
    );
    assert_no_overlay_markers(&merged.dest);
}

#[test]
fn flatten_never_follows_symlinks_in_dest() {
    let lower = Scratch::new();
    unpack_into(&lower, &Layer::new().symlink("etc", "/").finish());
    let upper = Scratch::new();
    unpack_into(
        &upper,
        &Layer::new()
            .dir("etc", 0o755)
            .file("etc/x", b"inside")
            .finish(),
    );
    let merged = Scratch::new();

    flatten_layers(&[&lower.dest, &upper.dest], &merged.dest).unwrap();
    assert!(fs::symlink_metadata(merged.path("etc")).unwrap().is_dir());
    assert_eq!(fs::read(merged.path("etc/x")).unwrap(), b"inside");
    merged.assert_nothing_escaped();
}

fn assert_no_overlay_markers(root: &Path) {
    for entry in walk(root) {
        let metadata = fs::symlink_metadata(&entry).unwrap();
        assert!(
            !metadata.file_type().is_char_device(),
            "whiteout left at {entry:?}"
        );
        if metadata.is_dir() || metadata.is_file() {
            let file = fs::File::open(&entry).unwrap();
            for name in sys::flistxattr(file.as_fd()).unwrap() {
                assert!(
                    !name.to_bytes().starts_with(b"user.overlay."),
                    "{name:?} left on {entry:?}"
                );
            }
        }
    }
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut found = vec![root.to_path_buf()];
    let mut index = 0;
    while index < found.len() {
        let path = found[index].clone();
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                found.push(entry.unwrap().path());
            }
        }
        index += 1;
    }
    found
}

#[test]
fn remove_tree_handles_read_only_directories() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .dir("a", 0o500)
        .dir("a/b", 0o000)
        .entry(Spec {
            name: b"a/b/file",
            mode: 0o000,
            ..Spec::default()
        })
        .symlink("a/link", "/etc")
        .finish();
    scratch.unpack(&layer).unwrap();
    assert_eq!(mode_of(&scratch.path("a/b")), 0o000);

    remove_tree(&scratch.dest).unwrap();
    assert!(!scratch.dest.exists());
    assert!(
        Path::new("/etc/passwd").exists(),
        "the symlink was removed, not followed"
    );
    remove_tree(&scratch.dest).unwrap();
}
