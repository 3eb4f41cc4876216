//! The unpacker where mayfly really runs it: inside a user namespace, as an unprivileged user.
//! Each test re-runs itself in a child process set up by [`run_isolated`].
//!
//! Observed on Linux 6.18 with ext4: `mknod` of a 0:0 character device succeeds for an
//! unprivileged user both inside and outside a user namespace, because Linux 5.8 made whiteout
//! creation unprivileged. The directory's owner can set `user.overlay.opaque`. Outside a user
//! namespace `chown` to another ID fails with `EPERM`, so those owners are squashed.

use std::fs;
use std::os::unix::fs::MetadataExt;

use nix::unistd::{getegid, geteuid};

use super::support::{in_isolated_child, run_isolated, test_name, Isolation, Layer, Scratch, Spec};
use super::whiteouts::{assert_whiteout_device, opaque_value};
use crate::unpack::IdMaps;

fn conversion_layer() -> Vec<u8> {
    Layer::new()
        .dir("etc", 0o755)
        .file("etc/.wh.removed", b"")
        .file("etc/.wh..wh..opq", b"")
        .entry(Spec {
            name: b"etc/root-owned",
            uid: 0,
            gid: 0,
            ..Spec::default()
        })
        .entry(Spec {
            name: b"etc/user-owned",
            uid: 1000,
            gid: 1000,
            ..Spec::default()
        })
        .entry(Spec {
            name: b"etc/setuid",
            mode: 0o4755,
            ..Spec::default()
        })
        .finish()
}

/// Unpacks a layer with whiteouts and foreign owners using the current user namespace's maps,
/// and checks the result against what the namespace permits.
fn check_conversion() {
    let maps = IdMaps::current().unwrap();
    let scratch = Scratch::new();
    let report = scratch.unpack(&conversion_layer()).unwrap();

    assert_whiteout_device(&scratch.path("etc/removed"));
    assert_eq!(
        opaque_value(&scratch.path("etc")).as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(report.counts.whiteouts, 1);
    assert_eq!(report.warnings.xattr_whiteouts, 0);
    assert_eq!(report.warnings.cleared_setid_bits, 1);

    let owner = |name: &str| {
        let metadata = fs::metadata(scratch.path(name)).unwrap();
        (metadata.uid(), metadata.gid())
    };
    let me = (geteuid().as_raw(), getegid().as_raw());
    let root_can_chown = me == (0, 0);
    if root_can_chown && !maps.is_initial_namespace() {
        // Root of a single-ID namespace: 0 exists, 1000 does not.
        assert_eq!(owner("etc/root-owned"), (0, 0));
        assert_eq!(owner("etc/user-owned"), (0, 0), "unmapped owner squashed");
    } else if !root_can_chown {
        // An unprivileged user outside a user namespace cannot give files away.
        assert_eq!(owner("etc/root-owned"), me);
        assert_eq!(owner("etc/user-owned"), me);
    }
    assert!(
        report.warnings.squashed_owners >= 1,
        "{:?}",
        report.warnings
    );
}

fn run(function: &str, isolation: Isolation) {
    if in_isolated_child() {
        check_conversion();
    } else {
        run_isolated(&test_name(module_path!(), function), isolation);
    }
}

#[test]
fn conversion_in_user_namespace() {
    run("conversion_in_user_namespace", Isolation::UserNamespace);
}

#[test]
fn conversion_as_nobody() {
    run("conversion_as_nobody", Isolation::Nobody);
}

#[test]
fn conversion_as_nobody_in_user_namespace() {
    run(
        "conversion_as_nobody_in_user_namespace",
        Isolation::NobodyInUserNamespace,
    );
}
