//! Building the container's root file system and switching into it.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{devices, mounts, InitError};
use crate::runtime::overlay;
use crate::runtime::spec::{InitPlan, RootfsPlan};

/// Mounts the root file system with `/proc`, `/dev`, `/sys`, the spec's mounts and the
/// generated files, and pivots into it. Then applies sysctls, masked and read-only paths,
/// brings up `lo` and sets the hostname.
pub(super) fn prepare(plan: &InitPlan) -> Result<(), InitError> {
    // The init's mount namespace is a copy of the engine's; nothing mounted here may
    // propagate back.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(InitError::step("make / a recursive private mount"))?;

    let root = plan.mountpoint.as_path();
    match &plan.rootfs {
        RootfsPlan::Overlay(dirs) => overlay::mount(dirs, root)?,
        // pivot_root needs the new root to be a mount point.
        RootfsPlan::Copied => mount(
            Some(root),
            root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(InitError::errno(
            "bind-mount the copied root file system at",
            root,
        ))?,
    }

    mounts::mount_proc(root)?;
    devices::mount_dev(root)?;
    mounts::mount_sys(root)?;
    mounts::mount_spec_mounts(root, plan.oci.mounts().as_deref().unwrap_or_default())?;
    mounts::mount_files(root, &plan.files)?;

    pivot_into(root)?;

    let linux = plan.oci.linux().as_ref();
    if let Some(sysctls) = linux.and_then(|l| l.sysctl().as_ref()) {
        mounts::write_sysctls(sysctls)?;
    }
    for path in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        mounts::mask_path(Path::new(path))?;
    }
    for path in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        mounts::make_readonly(Path::new(path))?;
    }
    if plan.oci.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mounts::set_readonly(Path::new("/"), false)?;
    }

    // The network namespace is new; the engine adds other links before it releases the
    // container.
    crate::sys::set_loopback_up().map_err(|source| InitError::Step {
        step: "bring up the loopback interface",
        source,
    })?;

    if let Some(hostname) = plan.oci.hostname() {
        nix::unistd::sethostname(hostname).map_err(InitError::step("set the hostname"))?;
    }
    if let Some(domain) = plan.oci.domainname() {
        mounts::set_domainname(domain)?;
    }
    Ok(())
}

/// `pivot_root(".", ".")` then detaching the old root, which leaves only the new root
/// visible without needing a directory for the old one.
fn pivot_into(root: &Path) -> Result<(), InitError> {
    nix::unistd::chdir(root).map_err(InitError::errno("change directory to", root))?;
    nix::unistd::pivot_root(".", ".").map_err(InitError::errno("pivot_root into", root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(InitError::step("detach the old root"))?;
    nix::unistd::chdir("/").map_err(InitError::step("change directory to the new root"))
}
