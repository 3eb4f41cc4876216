//! Property tests: arbitrary input never panics the unpacker and never writes outside `dest`.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use proptest::prelude::*;
use tar::EntryType;

use super::support::{Layer, Scratch, Spec};
use crate::unpack::Compression;

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("".to_owned()),
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("link".to_owned()),
        Just(".wh.a".to_owned()),
        Just(".wh..wh..opq".to_owned()),
        Just(".wh..wh.plnk".to_owned()),
        Just("n".repeat(256)),
        "[a-z]{1,3}",
    ]
}

fn name() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 1..5)).prop_map(|(absolute, parts)| {
        format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
    })
}

fn entry_type() -> impl Strategy<Value = EntryType> {
    prop_oneof![
        Just(EntryType::Regular),
        Just(EntryType::Directory),
        Just(EntryType::Symlink),
        Just(EntryType::Link),
        Just(EntryType::Fifo),
        Just(EntryType::Char),
        Just(EntryType::Block),
        Just(EntryType::new(b'V')),
    ]
}

#[derive(Debug, Clone)]
struct ArbitraryEntry {
    name: String,
    entry_type: EntryType,
    link: String,
    mode: u32,
    uid: u64,
    device: (u32, u32),
}

fn arbitrary_entry() -> impl Strategy<Value = ArbitraryEntry> {
    (
        name(),
        entry_type(),
        name(),
        any::<u32>(),
        0u64..70000,
        (0u32..3, 0u32..3),
    )
        .prop_map(
            |(name, entry_type, link, mode, uid, device)| ArbitraryEntry {
                name,
                entry_type,
                link,
                mode: mode & 0o7777,
                uid,
                device,
            },
        )
}

/// Asserts the invariants every unpack result keeps, successful or not.
fn assert_safe(scratch: &Scratch) {
    scratch.assert_nothing_escaped();
    let siblings: Vec<_> = fs::read_dir(scratch.outer.parent().unwrap())
        .unwrap()
        .collect();
    assert_eq!(siblings.len(), 1, "entries beside outer");
    check_tree(&scratch.dest);
}

fn check_tree(dir: &Path) {
    // A layer may leave directories, the root included, without read or search permission for
    // their owner; take it back to look inside.
    let mut permissions = fs::symlink_metadata(dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o700);
    fs::set_permissions(dir, permissions).unwrap();

    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let metadata = fs::symlink_metadata(&path).unwrap();
        let file_type = metadata.file_type();
        assert!(!file_type.is_block_device(), "block device at {path:?}");
        if file_type.is_char_device() {
            assert_eq!(
                metadata.rdev(),
                0,
                "device other than a whiteout at {path:?}"
            );
        }
        if !metadata.is_dir() {
            assert_eq!(metadata.mode() & 0o4000, 0, "setuid at {path:?}");
        }
        if metadata.is_dir() {
            check_tree(&path);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_escape(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let scratch = Scratch::new();
            let _ = scratch.unpack_with(&bytes, compression, &super::support::options());
            assert_safe(&scratch);
        }
    }

    #[test]
    fn arbitrary_entries_never_escape(entries in prop::collection::vec(arbitrary_entry(), 1..12)) {
        let mut layer = Layer::new();
        for entry in &entries {
            layer = layer.entry(Spec {
                name: entry.name.as_bytes(),
                entry_type: entry.entry_type,
                data: if entry.entry_type == EntryType::Regular { b"data" } else { b"" },
                link: Some(entry.link.as_bytes()),
                mode: entry.mode,
                uid: entry.uid,
                gid: entry.uid,
                device: entry.device,
                ..Spec::default()
            });
        }
        let scratch = Scratch::new();
        let _ = scratch.unpack(&layer.finish());
        assert_safe(&scratch);
    }

    #[test]
    fn corrupted_layers_never_escape(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut tar = Layer::new()
            .symlink("link", "/")
            .file("link/x", b"data")
            .hardlink("h", "link/x")
            .file(".wh.y", b"")
            .finish();
        for (index, byte) in flips {
            let position = index.index(tar.len());
            tar[position] = byte;
        }
        let scratch = Scratch::new();
        let _ = scratch.unpack(&tar);
        assert_safe(&scratch);
    }
}
