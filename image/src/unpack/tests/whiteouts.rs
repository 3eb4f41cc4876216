//! Conversion of OCI whiteouts to overlayfs's format.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::support::{Layer, Scratch};
use crate::unpack::{sys, whiteout};

pub(super) fn opaque_value(dir: &Path) -> Option<Vec<u8>> {
    let dir = fs::File::open(dir).unwrap();
    sys::fgetxattr(dir.as_fd(), c"user.overlay.opaque").unwrap()
}

pub(super) fn assert_whiteout_device(path: &Path) {
    let metadata = fs::symlink_metadata(path).unwrap_or_else(|error| panic!("{path:?}: {error}"));
    assert!(
        metadata.file_type().is_char_device(),
        "{path:?} is not a character device"
    );
    assert_eq!(metadata.rdev(), 0, "{path:?} is not device 0:0");
}

#[test]
fn whiteout_becomes_device_0_0() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .dir("dir", 0o755)
        .file("dir/.wh.gone", b"")
        .finish();
    let report = scratch.unpack(&layer).unwrap();
    assert_whiteout_device(&scratch.path("dir/gone"));
    assert!(!scratch.path("dir/.wh.gone").exists());
    assert_eq!(report.counts.whiteouts, 1);
    assert_eq!(report.warnings.xattr_whiteouts, 0);
}

#[test]
fn opaque_marker_sets_xattr_and_keeps_layer_entries() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .dir("dir", 0o755)
        .file("dir/before", b"1")
        .file("dir/.wh..wh..opq", b"")
        .file("dir/after", b"2")
        .finish();
    let report = scratch.unpack(&layer).unwrap();
    assert_eq!(
        opaque_value(&scratch.path("dir")).as_deref(),
        Some(&b"y"[..])
    );
    assert!(
        scratch.path("dir/before").exists(),
        "entries before the marker stay"
    );
    assert!(
        scratch.path("dir/after").exists(),
        "entries after the marker stay"
    );
    assert!(!scratch.path("dir/.wh..wh..opq").exists());
    assert_eq!(report.counts.opaque_directories, 1);
}

#[test]
fn opaque_marker_without_directory_entry_creates_it() {
    let scratch = Scratch::new();
    let layer = Layer::new().file("implicit/.wh..wh..opq", b"").finish();
    scratch.unpack(&layer).unwrap();
    assert_eq!(
        opaque_value(&scratch.path("implicit")).as_deref(),
        Some(&b"y"[..])
    );
}

#[test]
fn whiteout_then_directory_makes_it_opaque() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .file(".wh.config", b"")
        .dir("config", 0o755)
        .file("config/new", b"fresh")
        .finish();
    scratch.unpack(&layer).unwrap();
    assert!(fs::symlink_metadata(scratch.path("config"))
        .unwrap()
        .is_dir());
    assert_eq!(
        opaque_value(&scratch.path("config")).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(scratch.path("config/new")).unwrap(), b"fresh");
}

#[test]
fn whiteout_of_own_directory_is_opaque() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .dir("config", 0o755)
        .file("config/new", b"fresh")
        .file(".wh.config", b"")
        .finish();
    scratch.unpack(&layer).unwrap();
    assert_eq!(
        opaque_value(&scratch.path("config")).as_deref(),
        Some(&b"y"[..])
    );
    assert!(scratch.path("config/new").exists());
}

#[test]
fn whiteout_then_children_make_opaque_directory() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .file(".wh.config", b"")
        .file("config/new", b"fresh")
        .file(".wh.cache", b"")
        .file("cache/.wh..wh..opq", b"")
        .finish();
    let report = scratch.unpack(&layer).unwrap();
    assert_eq!(fs::read(scratch.path("config/new")).unwrap(), b"fresh");
    assert_eq!(
        opaque_value(&scratch.path("config")).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        opaque_value(&scratch.path("cache")).as_deref(),
        Some(&b"y"[..])
    );
    assert!(report.counts.opaque_directories >= 2, "{:?}", report.counts);
}

#[test]
fn whiteout_does_not_delete_same_layer_file() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .file("kept", b"mine")
        .file(".wh.kept", b"")
        .finish();
    scratch.unpack(&layer).unwrap();
    assert_eq!(fs::read(scratch.path("kept")).unwrap(), b"mine");
}

#[test]
fn file_after_whiteout_replaces_it() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .file(".wh.name", b"")
        .file("name", b"back")
        .finish();
    scratch.unpack(&layer).unwrap();
    assert_eq!(fs::read(scratch.path("name")).unwrap(), b"back");
}

#[test]
fn aufs_metadata_is_skipped() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .dir(".wh..wh.plnk", 0o700)
        .file(".wh..wh.plnk/123.456", b"aufs")
        .file(".wh..wh.aufs", b"")
        .finish();
    let report = scratch.unpack(&layer).unwrap();
    assert_eq!(fs::read_dir(&scratch.dest).unwrap().count(), 0);
    assert_eq!(report.warnings.skipped_entries, 3);
}

#[test]
fn xattr_whiteout_form_marks_parent() {
    let scratch = Scratch::new();
    let dir = fs::File::open(&scratch.dest).unwrap();
    whiteout::create_xattr_whiteout(dir.as_fd(), c"gone").unwrap();

    let file = fs::File::open(scratch.path("gone")).unwrap();
    assert_eq!(file.metadata().unwrap().len(), 0);
    let marker = sys::fgetxattr(file.as_fd(), c"user.overlay.whiteout").unwrap();
    assert!(marker.is_some());
    assert_eq!(opaque_value(&scratch.dest).as_deref(), Some(&b"x"[..]));
}
