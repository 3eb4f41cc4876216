//! Owners from tar headers: kept when mapped and permitted, squashed otherwise.

use std::fs;
use std::os::unix::fs::MetadataExt;

use nix::unistd::{getegid, geteuid};

use super::support::{Layer, Scratch, Spec};
use crate::unpack::{IdMaps, UnpackOptions};

fn owned_layer() -> Vec<u8> {
    Layer::new()
        .entry(Spec {
            name: b"owned-by-1000",
            uid: 1000,
            gid: 1001,
            ..Spec::default()
        })
        .entry(Spec {
            name: b"dir-1000",
            entry_type: tar::EntryType::Directory,
            uid: 1000,
            gid: 1001,
            mode: 0o755,
            ..Spec::default()
        })
        .symlink("link-0", "owned-by-1000")
        .finish()
}

#[test]
fn owners_kept_when_mapped_and_permitted() {
    let maps = IdMaps::current().unwrap();
    if !(geteuid().is_root() && maps.is_initial_namespace()) {
        super::support::skip("chown to arbitrary IDs needs root in the initial user namespace");
        return;
    }
    let scratch = Scratch::new();
    let report = scratch.unpack(&owned_layer()).unwrap();
    let file = fs::metadata(scratch.path("owned-by-1000")).unwrap();
    assert_eq!((file.uid(), file.gid()), (1000, 1001));
    let dir = fs::metadata(scratch.path("dir-1000")).unwrap();
    assert_eq!((dir.uid(), dir.gid()), (1000, 1001));
    assert_eq!(report.warnings.squashed_owners, 0);
}

#[test]
fn mixed_owners_in_one_directory() {
    let maps = IdMaps::current().unwrap();
    if !(geteuid().is_root() && maps.is_initial_namespace()) {
        super::support::skip("chown to arbitrary IDs needs root in the initial user namespace");
        return;
    }
    // The unpacker skips chown when an entry's owner is the one that new entries of its
    // directory get. The owners here alternate, so both cases occur in one directory.
    let owners = [(0, 0), (1000, 1001), (0, 0), (0, 1001), (1000, 0), (0, 0)];
    let names: Vec<String> = (0..owners.len())
        .map(|index| format!("dir/file-{index}"))
        .collect();
    let mut layer = Layer::new().dir("dir", 0o755);
    for (name, (uid, gid)) in names.iter().zip(owners) {
        layer = layer.entry(Spec {
            name: name.as_bytes(),
            uid,
            gid,
            ..Spec::default()
        });
    }
    let layer = layer
        .entry(Spec {
            name: b"dir/link-1000",
            entry_type: tar::EntryType::Symlink,
            link: Some(b"file-0"),
            uid: 1000,
            gid: 1000,
            ..Spec::default()
        })
        .symlink("dir/link-0", "file-1")
        .finish();
    let scratch = Scratch::new();
    let report = scratch.unpack(&layer).unwrap();

    for (name, (uid, gid)) in names.iter().zip(owners) {
        let file = fs::metadata(scratch.path(name)).unwrap();
        assert_eq!(
            (u64::from(file.uid()), u64::from(file.gid())),
            (uid, gid),
            "{name}"
        );
    }
    let link = fs::symlink_metadata(scratch.path("dir/link-1000")).unwrap();
    assert_eq!((link.uid(), link.gid()), (1000, 1000));
    let link = fs::symlink_metadata(scratch.path("dir/link-0")).unwrap();
    assert_eq!((link.uid(), link.gid()), (0, 0));
    assert_eq!(report.warnings.squashed_owners, 0);
}

#[test]
fn owners_squashed_when_unmapped() {
    let (uid, gid) = (geteuid().as_raw(), getegid().as_raw());
    let options = UnpackOptions {
        id_maps: Some(IdMaps::single(uid, gid)),
        ..super::support::options()
    };
    let layer = Layer::new()
        .entry(Spec {
            name: b"foreign",
            uid: 4242,
            gid: 4242,
            ..Spec::default()
        })
        .entry(Spec {
            name: b"mine",
            uid: u64::from(uid),
            gid: u64::from(gid),
            ..Spec::default()
        })
        .entry(Spec {
            name: b"minus-one",
            uid: u64::from(u32::MAX),
            gid: u64::from(u32::MAX),
            ..Spec::default()
        })
        .finish();
    let scratch = Scratch::new();
    let report = scratch
        .unpack_with(&layer, crate::unpack::Compression::None, &options)
        .unwrap();

    for name in ["foreign", "mine", "minus-one"] {
        let metadata = fs::metadata(scratch.path(name)).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (uid, gid), "{name}");
    }
    assert_eq!(report.warnings.squashed_owners, 2);
}
