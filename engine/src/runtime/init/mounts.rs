//! Mounts inside the container: `/proc`, `/sys`, the spec's bind and tmpfs mounts, the
//! generated `/etc` files, sysctls, masked and read-only paths.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

use super::paths::resolve_in_root;
use super::InitError;
use crate::runtime::spec::FileMount;
use crate::runtime::validate::{mount_kind, MountKind};
use crate::sys;

const NO_DATA: Option<&str> = None;

/// Kind of file a mount destination must be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Dir,
    File,
}

/// Resolves `path` under `root` and creates it as a directory or empty file if missing.
pub(super) fn prepare_target(root: &Path, path: &Path, kind: Target) -> Result<PathBuf, InitError> {
    let target = resolve_in_root(root, path).map_err(InitError::path("resolve", path))?;
    if target.symlink_metadata().is_ok() {
        return Ok(target);
    }
    match kind {
        Target::Dir => std::fs::create_dir_all(&target)
            .map_err(InitError::path("create directory", &target))?,
        Target::File => {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(InitError::path("create directory", parent))?;
            }
            std::fs::File::create(&target).map_err(InitError::path("create file", &target))?;
        }
    }
    Ok(target)
}

/// Mounts a new proc instance, which shows the container's own PID namespace.
pub(super) fn mount_proc(root: &Path) -> Result<(), InitError> {
    let target = prepare_target(root, Path::new("/proc"), Target::Dir)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &target, Some("proc"), flags, NO_DATA)
        .map_err(InitError::errno("mount proc on", &target))
}

/// Mounts a read-only sysfs. The kernel allows a new sysfs only to the user namespace that owns
/// the current network namespace, which the engine's is. If the kernel still rejects it, the
/// host's `/sys` is bind-mounted read-only instead.
pub(super) fn mount_sys(root: &Path) -> Result<(), InitError> {
    let target = prepare_target(root, Path::new("/sys"), Target::Dir)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(Some("sysfs"), &target, Some("sysfs"), flags, NO_DATA) {
        Ok(()) => Ok(()),
        Err(Errno::EPERM | Errno::EACCES) => {
            mount(
                Some("/sys"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NO_DATA,
            )
            .map_err(InitError::errno("bind-mount /sys on", &target))?;
            set_readonly(&target, true)
        }
        Err(errno) => Err(InitError::errno("mount sysfs on", &target)(errno)),
    }
}

/// Performs the spec's `bind` and `tmpfs` mounts, in order.
pub(super) fn mount_spec_mounts(root: &Path, spec_mounts: &[Mount]) -> Result<(), InitError> {
    for spec_mount in spec_mounts {
        let options = MountOptions::parse(spec_mount.options().as_deref().unwrap_or_default());
        match mount_kind(spec_mount) {
            Some(MountKind::Bind) => {
                let source = spec_mount.source().clone().unwrap_or_default();
                bind(root, &source, spec_mount.destination(), &options)?;
            }
            Some(MountKind::Tmpfs) => tmpfs(root, spec_mount.destination(), &options)?,
            // The engine rejected unknown kinds; the runtime's own mounts are already done.
            Some(MountKind::Runtime) | None => {}
        }
    }
    Ok(())
}

/// Bind-mounts the generated `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
pub(super) fn mount_files(root: &Path, files: &[FileMount]) -> Result<(), InitError> {
    let options =
        MountOptions::parse(&["nosuid".to_owned(), "nodev".to_owned(), "noexec".to_owned()]);
    for file in files {
        bind(root, &file.source, &file.destination, &options)?;
    }
    Ok(())
}

fn bind(
    root: &Path,
    source: &Path,
    destination: &Path,
    options: &MountOptions,
) -> Result<(), InitError> {
    let kind = if source.is_dir() {
        Target::Dir
    } else {
        Target::File
    };
    let target = prepare_target(root, destination, kind)?;
    mount(
        Some(source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NO_DATA,
    )
    .map_err(InitError::errno("bind-mount", source))?;

    // Bind mounts ignore most flags on the first call; mount_setattr changes only the flags
    // named, so flags the kernel locked on the source (nosuid, nodev) stay set.
    if options.attributes != 0 {
        let path = c_path(&target)?;
        sys::mount_setattr(&path, true, options.attributes)
            .map_err(InitError::path("set mount flags on", &target))?;
    }
    Ok(())
}

fn tmpfs(root: &Path, destination: &Path, options: &MountOptions) -> Result<(), InitError> {
    let target = prepare_target(root, destination, Target::Dir)?;
    let data = options.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some("tmpfs"), &target, Some("tmpfs"), options.flags, data)
        .map_err(InitError::errno("mount tmpfs on", &target))
}

/// Spec mount options split into mount flags, `mount_setattr` attributes and file system
/// data.
struct MountOptions {
    flags: MsFlags,
    attributes: u64,
    data: Vec<String>,
}

impl MountOptions {
    fn parse(options: &[String]) -> Self {
        let mut parsed = Self {
            flags: MsFlags::empty(),
            attributes: 0,
            data: Vec::new(),
        };
        for option in options {
            let (flag, attribute) = match option.as_str() {
                "ro" => (MsFlags::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
                "nosuid" => (MsFlags::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, sys::MOUNT_ATTR_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
                // Propagation and bind options are decided by the runtime; defaults are no-ops.
                "rw" | "bind" | "rbind" | "private" | "rprivate" | "slave" | "rslave"
                | "shared" | "rshared" | "suid" | "dev" | "exec" => continue,
                data => {
                    parsed.data.push(data.to_owned());
                    continue;
                }
            };
            parsed.flags |= flag;
            parsed.attributes |= attribute;
        }
        parsed
    }
}

fn c_path(path: &Path) -> Result<CString, InitError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| InitError::path("use", path)(std::io::ErrorKind::InvalidInput.into()))
}

/// Makes the mount at `path` read-only, with every mount below it when `recursive`.
pub(super) fn set_readonly(path: &Path, recursive: bool) -> Result<(), InitError> {
    sys::mount_setattr(&c_path(path)?, recursive, sys::MOUNT_ATTR_RDONLY)
        .map_err(InitError::path("make read-only", path))
}

/// Writes `net.ipv4.ip_forward=1`-style settings to `/proc/sys`.
pub(super) fn write_sysctls(sysctls: &HashMap<String, String>) -> Result<(), InitError> {
    for (key, value) in sysctls {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(InitError::path("write sysctl", &path))?;
    }
    Ok(())
}

/// Hides `path`: `/dev/null` over a file, an empty read-only tmpfs over a directory.
pub(super) fn mask_path(path: &Path) -> Result<(), InitError> {
    let Ok(meta) = path.symlink_metadata() else {
        return Ok(());
    };
    let result = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0"),
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            NO_DATA,
        )
    };
    result.map_err(InitError::errno("mask", path))
}

/// Makes `path` a read-only bind mount of itself; a missing path is skipped.
pub(super) fn make_readonly(path: &Path) -> Result<(), InitError> {
    if path.symlink_metadata().is_err() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NO_DATA,
    )
    .map_err(InitError::errno("bind-mount", path))?;
    set_readonly(path, true)
}

/// Sets the NIS domain name of the container's UTS namespace.
pub(super) fn set_domainname(domain: &str) -> Result<(), InitError> {
    sys::setdomainname(domain).map_err(|source| InitError::Step {
        step: "set the domain name",
        source,
    })
}
