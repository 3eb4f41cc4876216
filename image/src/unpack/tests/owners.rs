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
