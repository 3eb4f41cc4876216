//! Unpacking ordinary layers: entry kinds, metadata, compression and the diff_id.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use tar::EntryType;

use super::support::{gzip, mode_of, zstd, Layer, Scratch, Spec};
use crate::digest::Digest;
use crate::unpack::{Compression, UnpackError};

fn sample_layer() -> Vec<u8> {
    Layer::new()
        .dir("etc", 0o755)
        .file("etc/hostname", b"mayfly\n")
        .entry(Spec {
            name: b"usr/bin/tool",
            data: b"#!/bin/sh\n",
            mode: 0o750,
            mtime: 1_234_567_890,
            ..Spec::default()
        })
        .symlink("usr/bin/alias", "tool")
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .entry(Spec {
            name: b"run/pipe",
            entry_type: EntryType::Fifo,
            mode: 0o620,
            ..Spec::default()
        })
        .finish()
}

#[test]
fn unpack_creates_every_entry_kind() {
    let scratch = Scratch::new();
    let report = scratch.unpack(&sample_layer()).unwrap();

    assert_eq!(fs::read(scratch.path("etc/hostname")).unwrap(), b"mayfly\n");
    assert_eq!(
        fs::read_link(scratch.path("usr/bin/alias"))
            .unwrap()
            .to_str(),
        Some("tool")
    );
    let tool = fs::metadata(scratch.path("usr/bin/tool")).unwrap();
    let tool2 = fs::metadata(scratch.path("usr/bin/tool2")).unwrap();
    assert_eq!(tool.ino(), tool2.ino(), "hardlink shares the inode");
    assert!(fs::symlink_metadata(scratch.path("run/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());

    assert_eq!(report.counts.files, 2);
    assert_eq!(report.counts.directories, 1);
    assert_eq!(report.counts.symlinks, 1);
    assert_eq!(report.counts.hardlinks, 1);
    assert_eq!(report.counts.fifos, 1);
    // Owner 0 from the headers is kept only by root; anyone else keeps their own.
    let squashed = if nix::unistd::geteuid().is_root() {
        0
    } else {
        5
    };
    let expected = crate::unpack::UnpackWarnings {
        squashed_owners: squashed,
        ..Default::default()
    };
    assert_eq!(report.warnings, expected);
    scratch.assert_nothing_escaped();
}

#[test]
fn unpack_applies_modes_and_times() {
    let scratch = Scratch::new();
    scratch.unpack(&sample_layer()).unwrap();

    assert_eq!(mode_of(&scratch.path("usr/bin/tool")), 0o750);
    assert_eq!(mode_of(&scratch.path("etc")), 0o755);
    assert_eq!(mode_of(&scratch.path("run/pipe")), 0o620);
    assert_eq!(
        mode_of(&scratch.path("usr")),
        0o755,
        "implicit parents get 0755"
    );
    let tool = fs::metadata(scratch.path("usr/bin/tool")).unwrap();
    assert_eq!(tool.mtime(), 1_234_567_890);
    let etc = fs::metadata(scratch.path("etc")).unwrap();
    assert_eq!(
        etc.mtime(),
        1_600_000_000,
        "directory time survives adding children"
    );
    let link = fs::symlink_metadata(scratch.path("usr/bin/alias")).unwrap();
    assert_eq!(link.mtime(), 1_600_000_000);
}

#[test]
fn file_modes_exact_whatever_the_umask() {
    // Some modes survive the usual umask 022 at creation, others need chmod afterwards.
    let modes = [0o644, 0o664, 0o400, 0o755, 0o777, 0o000, 0o1644];
    let names: Vec<String> = modes.iter().map(|mode| format!("dir/{mode:o}")).collect();
    let mut layer = Layer::new().dir("dir", 0o755);
    for (name, mode) in names.iter().zip(modes) {
        layer = layer.entry(Spec {
            name: name.as_bytes(),
            data: b"data",
            mode,
            ..Spec::default()
        });
    }
    let scratch = Scratch::new();
    scratch.unpack(&layer.finish()).unwrap();

    for (name, mode) in names.iter().zip(modes) {
        assert_eq!(mode_of(&scratch.path(name)), mode, "{name}");
    }
}

#[test]
fn read_only_directory_still_receives_entries() {
    let layer = Layer::new()
        .dir("locked", 0o555)
        .file("locked/inside", b"data")
        .dir("locked/sub", 0o500)
        .file("locked/sub/deeper", b"more")
        .finish();
    let scratch = Scratch::new();
    scratch.unpack(&layer).unwrap();

    assert_eq!(
        fs::read(scratch.path("locked/sub/deeper")).unwrap(),
        b"more"
    );
    assert_eq!(mode_of(&scratch.path("locked")), 0o555);
    assert_eq!(mode_of(&scratch.path("locked/sub")), 0o500);
}

#[test]
fn user_xattrs_are_kept_and_others_skipped() {
    let layer = Layer::new()
        .entry(Spec {
            name: b"tagged",
            data: b"x",
            xattrs: &[
                ("user.mime_type", b"text/plain"),
                ("user.overlay.redirect", b"/etc"),
                ("trusted.overlay.opaque", b"y"),
                ("security.capability", b"\x01\x00\x00\x02"),
            ],
            ..Spec::default()
        })
        .finish();
    let scratch = Scratch::new();
    let report = scratch.unpack(&layer).unwrap();

    let file = fs::File::open(scratch.path("tagged")).unwrap();
    use std::os::fd::AsFd;
    let value = crate::unpack::sys::fgetxattr(file.as_fd(), c"user.mime_type").unwrap();
    assert_eq!(value.as_deref(), Some(&b"text/plain"[..]));
    let forged = crate::unpack::sys::fgetxattr(file.as_fd(), c"user.overlay.redirect").unwrap();
    assert_eq!(forged, None, "a layer must not forge overlay xattrs");
    assert_eq!(report.warnings.skipped_xattrs, 3);
}

#[test]
fn diff_id_matches_uncompressed_stream() {
    let tar = sample_layer();
    let expected = Digest::of_bytes(&tar);
    for (compression, bytes) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd(&tar)),
    ] {
        let scratch = Scratch::new();
        let report = scratch
            .unpack_with(&bytes, compression, &super::support::options())
            .unwrap();
        assert_eq!(report.diff_id, expected, "{compression}");
        assert_eq!(report.uncompressed_size, tar.len() as u64, "{compression}");
        assert_eq!(report.compression, compression);
        assert_eq!(fs::read(scratch.path("etc/hostname")).unwrap(), b"mayfly\n");
    }
}

#[test]
fn mislabelled_compression_is_detected() {
    let tar = sample_layer();
    let scratch = Scratch::new();
    let report = scratch
        .unpack_with(&gzip(&tar), Compression::None, &super::support::options())
        .unwrap();
    assert_eq!(report.compression, Compression::Gzip);
    assert_eq!(report.diff_id, Digest::of_bytes(&tar));
}

#[test]
fn trailing_slash_marks_old_style_directory() {
    let layer = Layer::new()
        .entry(Spec {
            name: b"old-dir/",
            mode: 0o711,
            ..Spec::default()
        })
        .file("old-dir/inner", b"x")
        .finish();
    let scratch = Scratch::new();
    let report = scratch.unpack(&layer).unwrap();
    assert!(fs::symlink_metadata(scratch.path("old-dir"))
        .unwrap()
        .is_dir());
    assert_eq!(mode_of(&scratch.path("old-dir")), 0o711);
    assert_eq!(report.counts.directories, 1);
}

#[test]
fn plain_tar_labelled_gzip_is_detected() {
    let tar = sample_layer();
    let scratch = Scratch::new();
    let report = scratch
        .unpack_with(&tar, Compression::Gzip, &super::support::options())
        .unwrap();
    assert_eq!(report.compression, Compression::None);
    assert_eq!(report.diff_id, Digest::of_bytes(&tar));
}

#[test]
fn entry_after_end_marker_is_hashed_not_unpacked() {
    let mut tar = Layer::new().file("before", b"1").finish();
    let trailing = Layer::new().file("after", b"2").finish();
    tar.extend_from_slice(&trailing);

    let scratch = Scratch::new();
    let report = scratch.unpack(&tar).unwrap();
    assert!(scratch.path("before").exists());
    assert!(
        !scratch.path("after").exists(),
        "entries after the end marker are ignored"
    );
    assert_eq!(
        report.diff_id,
        Digest::of_bytes(&tar),
        "the diff_id covers the whole stream"
    );
}

#[test]
fn later_entries_replace_earlier_ones() {
    let layer = Layer::new()
        .file("a", b"file first")
        .dir("a", 0o700)
        .file("a/kept", b"child")
        .dir("a", 0o751)
        .dir("b", 0o755)
        .file("b/child", b"x")
        .file("b", b"file replaces dir")
        .file("c", b"old")
        .file("c", b"new")
        .finish();
    let scratch = Scratch::new();
    scratch.unpack(&layer).unwrap();

    assert_eq!(
        fs::read(scratch.path("a/kept")).unwrap(),
        b"child",
        "dir over dir keeps content"
    );
    assert_eq!(
        mode_of(&scratch.path("a")),
        0o751,
        "dir over dir updates metadata"
    );
    assert_eq!(fs::read(scratch.path("b")).unwrap(), b"file replaces dir");
    assert_eq!(fs::read(scratch.path("c")).unwrap(), b"new");
}

#[test]
fn symlink_replaced_by_file_is_not_written_through() {
    let layer = Layer::new()
        .file("target", b"original")
        .symlink("link", "target")
        .file("link", b"replacement")
        .finish();
    let scratch = Scratch::new();
    scratch.unpack(&layer).unwrap();

    assert_eq!(fs::read(scratch.path("target")).unwrap(), b"original");
    assert!(fs::symlink_metadata(scratch.path("link"))
        .unwrap()
        .is_file());
    assert_eq!(fs::read(scratch.path("link")).unwrap(), b"replacement");
}

#[test]
fn write_through_internal_symlink_stays_inside() {
    let layer = Layer::new()
        .dir("real", 0o755)
        .symlink("alias", "real")
        .file("alias/file", b"through the alias")
        .finish();
    let scratch = Scratch::new();
    scratch.unpack(&layer).unwrap();
    assert_eq!(
        fs::read(scratch.path("real/file")).unwrap(),
        b"through the alias"
    );
}

#[test]
fn root_entry_sets_root_metadata() {
    let layer = Layer::new().dir("./", 0o750).file("x", b"").finish();
    let scratch = Scratch::new();
    scratch.unpack(&layer).unwrap();
    assert_eq!(
        fs::metadata(&scratch.dest).unwrap().permissions().mode() & 0o7777,
        0o750
    );
}

#[test]
fn truncated_file_data_is_an_error() {
    let tar = Layer::new().file("big", &[7u8; 4096]).finish();
    // Cut inside the file data: header blocks (PAX + ustar) come first.
    let cut = &tar[..tar.len() - 1024 - 4096 + 100];
    let scratch = Scratch::new();
    let error = scratch.unpack(cut).unwrap_err();
    assert!(
        matches!(
            error,
            UnpackError::Truncated { .. } | UnpackError::Read { .. }
        ),
        "{error:?}"
    );
}

#[test]
fn truncated_gzip_is_an_error() {
    let tar = sample_layer();
    let compressed = gzip(&tar);
    let scratch = Scratch::new();
    let error = scratch
        .unpack_with(
            &compressed[..compressed.len() / 2],
            Compression::Gzip,
            &super::support::options(),
        )
        .unwrap_err();
    assert!(matches!(error, UnpackError::Read { .. }), "{error:?}");
    assert!(
        error.to_string().contains("truncated or corrupt"),
        "{error}"
    );
}

#[test]
fn corrupt_header_checksum_is_an_error() {
    let mut tar = Layer::new().file("x", b"data").finish();
    tar[0] ^= 0xff;
    let scratch = Scratch::new();
    let error = scratch.unpack(&tar).unwrap_err();
    assert!(matches!(error, UnpackError::Read { .. }), "{error:?}");
}
