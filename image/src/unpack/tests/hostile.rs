//! Hostile layers: every case must fail cleanly or stay inside `dest`.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;

use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;

use tar::EntryType;

use super::support::{mode_of, Layer, Scratch, Spec};
use crate::unpack::{sys, UnpackError};

#[test]
fn dotdot_name_is_rejected() {
    for name in [
        "../escaped",
        "a/../../escaped",
        "./../escaped",
        "/../escaped",
    ] {
        let scratch = Scratch::new();
        let layer = Layer::new().file(name, b"pwned").finish();
        let error = scratch.unpack(&layer).unwrap_err();
        match &error {
            UnpackError::EscapesRoot { layer, entry } => {
                assert_eq!(*layer, super::support::layer_digest());
                assert_eq!(entry, name);
            }
            other => panic!("{name}: expected EscapesRoot, got {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains(name), "{message}");
        assert!(message.contains("sha256:"), "{message}");
        assert!(!scratch.outer.join("escaped").exists());
        scratch.assert_nothing_escaped();
    }
}

#[test]
fn harmless_dotdot_stays_inside() {
    let scratch = Scratch::new();
    scratch
        .unpack(&Layer::new().file("a/../inside", b"ok").finish())
        .unwrap();
    assert_eq!(fs::read(scratch.path("inside")).unwrap(), b"ok");
    scratch.assert_nothing_escaped();
}

#[test]
fn absolute_name_lands_inside_root() {
    let scratch = Scratch::new();
    let layer = Layer::new().file("/etc/absolute", b"inside").finish();
    scratch.unpack(&layer).unwrap();
    assert_eq!(fs::read(scratch.path("etc/absolute")).unwrap(), b"inside");
    scratch.assert_nothing_escaped();
}

#[test]
fn symlink_to_root_is_followed_inside() {
    for target in ["/", "..", "../..", "../../../../../../..", "/.."] {
        let scratch = Scratch::new();
        let layer = Layer::new()
            .symlink("link", target)
            .file("link/escaped", b"pwned")
            .file("link/tmp/deeper", b"also inside")
            .finish();
        scratch.unpack(&layer).unwrap();
        assert_eq!(
            fs::read(scratch.path("escaped")).unwrap(),
            b"pwned",
            "{target}"
        );
        assert_eq!(
            fs::read(scratch.path("tmp/deeper")).unwrap(),
            b"also inside"
        );
        assert!(!scratch.outer.join("escaped").exists(), "{target}");
        scratch.assert_nothing_escaped();
    }
}

#[test]
fn absolute_symlink_to_host_dir_stays_inside() {
    let scratch = Scratch::new();
    let host_tmp = std::env::temp_dir().join(format!("mayfly-escape-{}", std::process::id()));
    let layer = Layer::new()
        .symlink("link", host_tmp.to_str().unwrap())
        .file("link/x", b"pwned")
        .finish();
    scratch.unpack(&layer).unwrap();
    assert!(
        !host_tmp.exists(),
        "wrote through to the host's {host_tmp:?}"
    );
    let inside = scratch
        .dest
        .join(host_tmp.strip_prefix("/").unwrap())
        .join("x");
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
    scratch.assert_nothing_escaped();
}

#[test]
fn symlink_to_parent_stays_inside() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .symlink("up", "../")
        .file("up/escaped", b"pwned")
        .finish();
    scratch.unpack(&layer).unwrap();
    assert!(!scratch.outer.join("escaped").exists());
    assert!(scratch.path("escaped").exists());
    scratch.assert_nothing_escaped();
}

#[test]
fn hardlink_outside_root_is_rejected() {
    let scratch = Scratch::new();
    fs::write(scratch.outer.join("../secret"), b"host secret").unwrap();
    let layer = Layer::new().hardlink("stolen", "../../secret").finish();
    let error = scratch.unpack(&layer).unwrap_err();
    match &error {
        UnpackError::HardlinkEscapesRoot { entry, target, .. } => {
            assert_eq!(entry, "stolen");
            assert_eq!(target, "../../secret");
        }
        other => panic!("expected HardlinkEscapesRoot, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("stolen"), "{message}");
    assert!(message.contains("../../secret"), "{message}");
    assert!(!scratch.path("stolen").exists());
    scratch.assert_nothing_escaped();
}

#[test]
fn hardlink_to_absolute_host_file_stays_inside() {
    let scratch = Scratch::new();
    let layer = Layer::new().hardlink("passwd", "/etc/passwd").finish();
    let error = scratch.unpack(&layer).unwrap_err();
    assert!(
        matches!(error, UnpackError::HardlinkTargetMissing { .. }),
        "{error:?}"
    );
    assert!(!scratch.path("passwd").exists());
    scratch.assert_nothing_escaped();
}

#[test]
fn hardlink_through_symlink_to_root_stays_inside() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .file("etc/passwd", b"root:x:0:0")
        .symlink("up", "../../..")
        .hardlink("copy", "up/etc/passwd")
        .finish();
    scratch.unpack(&layer).unwrap();
    let copy = fs::metadata(scratch.path("copy")).unwrap();
    let original = fs::metadata(scratch.path("etc/passwd")).unwrap();
    assert_eq!(copy.ino(), original.ino());
    scratch.assert_nothing_escaped();
}

#[test]
fn symlink_loop_is_a_clear_error() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", b"never")
        .finish();
    let error = scratch.unpack(&layer).unwrap_err();
    match &error {
        UnpackError::SymlinkLoop { entry, .. } => assert_eq!(entry, "a/x"),
        other => panic!("expected SymlinkLoop, got {other:?}"),
    }
    assert!(error.to_string().contains("ELOOP"), "{error}");
    scratch.assert_nothing_escaped();
}

#[test]
fn self_referencing_symlink_is_a_clear_error() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .symlink("self", "self/x")
        .file("self/y", b"never")
        .finish();
    let error = scratch.unpack(&layer).unwrap_err();
    assert!(
        matches!(error, UnpackError::SymlinkLoop { .. }),
        "{error:?}"
    );
    scratch.assert_nothing_escaped();
}

#[test]
fn devices_are_skipped() {
    let scratch = Scratch::new();
    let device = |name: &'static [u8], entry_type, device| Spec {
        name,
        entry_type,
        device,
        mode: 0o666,
        ..Spec::default()
    };
    let layer = Layer::new()
        .entry(device(b"dev/null", EntryType::Char, (1, 3)))
        .entry(device(b"dev/sda", EntryType::Block, (8, 0)))
        .entry(device(b"fake-whiteout", EntryType::Char, (0, 0)))
        .hardlink("dev/null-again", "dev/null")
        .file("after", b"still unpacked")
        .finish();
    let report = scratch.unpack(&layer).unwrap();
    assert!(!scratch.path("dev/null").exists());
    assert!(!scratch.path("dev/sda").exists());
    assert!(
        !scratch.path("fake-whiteout").exists(),
        "0:0 devices from input are devices"
    );
    assert!(!scratch.path("dev/null-again").exists());
    assert!(scratch.path("after").exists());
    assert_eq!(report.warnings.skipped_devices, 4);
    assert_eq!(report.counts.whiteouts, 0);
    scratch.assert_nothing_escaped();
}

#[test]
fn setuid_and_setgid_bits_are_cleared() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .entry(Spec {
            name: b"usr/bin/su",
            data: b"\x7fELF",
            mode: 0o4755,
            ..Spec::default()
        })
        .entry(Spec {
            name: b"usr/bin/wall",
            data: b"\x7fELF",
            mode: 0o2755,
            ..Spec::default()
        })
        .dir("shared", 0o2775)
        .dir("tmp", 0o1777)
        .finish();
    let report = scratch.unpack(&layer).unwrap();
    assert_eq!(mode_of(&scratch.path("usr/bin/su")), 0o755);
    assert_eq!(mode_of(&scratch.path("usr/bin/wall")), 0o755);
    assert_eq!(
        mode_of(&scratch.path("shared")),
        0o2775,
        "setgid on directories is kept"
    );
    assert_eq!(mode_of(&scratch.path("tmp")), 0o1777, "sticky bit is kept");
    assert_eq!(report.warnings.cleared_setid_bits, 2);
}

#[test]
fn overlong_component_is_a_clear_error() {
    let scratch = Scratch::new();
    let name = format!("dir/{}", "n".repeat(300));
    let error = scratch
        .unpack(&Layer::new().file(&name, b"x").finish())
        .unwrap_err();
    match &error {
        UnpackError::NameTooLong { entry, .. } => assert!(entry.starts_with("dir/nnn")),
        other => panic!("expected NameTooLong, got {other:?}"),
    }
    assert!(error.to_string().contains("ENAMETOOLONG"));
    scratch.assert_nothing_escaped();
}

#[test]
fn path_over_path_max_unpacks() {
    // 16 directories of 250 bytes and an 80-byte file name: a 4096-byte path, one more than
    // fits in a system call, as in the `longname` fixture image.
    let mut layer = Layer::new();
    let mut parts = Vec::new();
    for _ in 0..16 {
        parts.push("d".repeat(250));
        layer = layer.dir(&parts.join("/"), 0o755);
    }
    parts.push("f".repeat(80));
    let name = parts.join("/");
    assert_eq!(name.len(), 4096);
    layer = layer
        .file(&name, b"deep")
        .file(&"n".repeat(300), b"too long");

    let scratch = Scratch::new();
    let error = scratch.unpack(&layer.finish()).unwrap_err();
    assert!(
        matches!(error, UnpackError::NameTooLong { .. }),
        "{error:?}"
    );
    assert!(error.to_string().len() < 1000, "the message stays readable");

    // Walk down with relative opens, since the whole path does not fit in one call.
    let mut dir = fs::File::open(&scratch.dest).unwrap();
    for part in &parts[..16] {
        let name = sys::c_string(part.as_bytes()).unwrap();
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        dir = fs::File::from(sys::open_beneath(dir.as_fd(), &name, flags, 0).unwrap());
    }
    let leaf = fstatat(
        Some(dir.as_raw_fd()),
        parts[16].as_str(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    assert_eq!(leaf.st_size, 4);
    scratch.assert_nothing_escaped();
}

#[test]
fn too_deep_path_is_rejected() {
    let scratch = Scratch::new();
    let name = vec!["d"; 257].join("/");
    let error = scratch
        .unpack(&Layer::new().file(&name, b"x").finish())
        .unwrap_err();
    assert!(
        matches!(error, UnpackError::NameTooLong { .. }),
        "{error:?}"
    );
}

#[test]
fn path_just_under_limit_unpacks() {
    let scratch = Scratch::new();
    let name = vec!["d".repeat(200); 19].join("/");
    scratch
        .unpack(&Layer::new().file(&name, b"deep").finish())
        .unwrap();
    assert!(scratch.dest.join(&name).exists());
}

#[test]
fn nul_in_name_is_invalid() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .entry(Spec {
            name: b"a\0b",
            ..Spec::default()
        })
        .finish();
    let error = scratch.unpack(&layer).unwrap_err();
    assert!(
        matches!(error, UnpackError::InvalidName { .. }),
        "{error:?}"
    );
}

#[test]
fn whiteout_cannot_delete_outside() {
    let scratch = Scratch::new();
    fs::write(scratch.outer.join("../victim"), b"keep").unwrap();
    let layer = Layer::new()
        .symlink("up", "../..")
        .file("up/.wh.victim", b"")
        .file(".wh...", b"")
        .finish();
    let error = scratch.unpack(&layer).unwrap_err();
    assert!(
        matches!(error, UnpackError::InvalidName { .. }),
        "{error:?}"
    );
    assert_eq!(fs::read(scratch.outer.join("../victim")).unwrap(), b"keep");
    scratch.assert_nothing_escaped();
}

#[test]
fn dangling_symlink_parent_is_created_inside() {
    let scratch = Scratch::new();
    let layer = Layer::new()
        .symlink("link", "/nonexistent/dir")
        .file("link/x", b"inside")
        .finish();
    scratch.unpack(&layer).unwrap();
    assert_eq!(
        fs::read(scratch.path("nonexistent/dir/x")).unwrap(),
        b"inside"
    );
    assert!(!std::path::Path::new("/nonexistent").exists());
    scratch.assert_nothing_escaped();
}
