//! A minimal `/dev` for the container.
//!
//! A user namespace may not create device nodes that work (`mknod` of a real device fails
//! with EPERM), so the few standard devices are bind-mounted from the host's `/dev` onto
//! empty files in a fresh tmpfs.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::mounts::{prepare_target, Target};
use super::InitError;
use crate::runtime::validate::{maps, read_own_map};

/// Devices bind-mounted from the host.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Symlinks every Linux system has in `/dev`.
const LINKS: [(&str, &str); 5] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// The `tty` group of Debian-like images, which owns terminals.
const TTY_GID: u32 = 5;

/// Mounts a tmpfs on `<root>/dev` with the standard devices, `pts`, `shm` and `mqueue`.
pub(super) fn mount_dev(root: &Path) -> Result<(), InitError> {
    let dev = prepare_target(root, Path::new("/dev"), Target::Dir)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(InitError::errno("mount tmpfs on", &dev))?;

    for name in DEVICES {
        let target = dev.join(name);
        std::fs::File::create(&target).map_err(InitError::path("create", &target))?;
        let source = Path::new("/dev").join(name);
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(InitError::errno("bind-mount", &source))?;
    }

    // A new devpts instance keeps the container's terminals apart from the host's. The gid
    // option fails when the group does not exist in the user namespace (single-ID map).
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(InitError::path("create", &pts))?;
    let mut pts_options = "newinstance,ptmxmode=0666,mode=0620".to_owned();
    if maps(&read_own_map("/proc/self/gid_map"), TTY_GID) {
        pts_options.push_str(&format!(",gid={TTY_GID}"));
    }
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(pts_options.as_str()),
    )
    .map_err(InitError::errno("mount devpts on", &pts))?;

    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(InitError::path("create", &shm))?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(InitError::errno("mount tmpfs on", &shm))?;

    let mqueue = dev.join("mqueue");
    std::fs::create_dir(&mqueue).map_err(InitError::path("create", &mqueue))?;
    mount(
        Some("mqueue"),
        &mqueue,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(InitError::errno("mount mqueue on", &mqueue))?;

    for (name, target) in LINKS {
        let link = dev.join(name);
        std::os::unix::fs::symlink(target, &link)
            .map_err(InitError::path("create symlink", &link))?;
    }
    Ok(())
}
