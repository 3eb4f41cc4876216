//! Checks of a [`ContainerSpec`] in the engine, before anything is started, so that mistakes
//! come back as typed errors instead of a message from the init.

use std::path::Path;

use oci_spec::runtime::{Mount, Spec};

use super::spec::ContainerSpec;
use super::RuntimeError;
use crate::bootstrap::IdRange;

/// Destinations that the runtime mounts itself; spec mounts there are skipped.
const RUNTIME_MOUNTS: [&str; 7] = [
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
];

/// The kind of a spec mount that the runtime performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MountKind {
    Bind,
    Tmpfs,
    /// One of [`RUNTIME_MOUNTS`]: skipped.
    Runtime,
}

/// Classifies a spec mount, or returns `None` when the runtime cannot perform it.
pub(crate) fn mount_kind(mount: &Mount) -> Option<MountKind> {
    let is_bind = mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind");
    if is_bind {
        return Some(MountKind::Bind);
    }
    if RUNTIME_MOUNTS
        .iter()
        .any(|d| mount.destination() == Path::new(d))
    {
        return Some(MountKind::Runtime);
    }
    match mount.typ().as_deref() {
        Some("tmpfs") => Some(MountKind::Tmpfs),
        _ => None,
    }
}

/// Facts about a valid spec.
pub(crate) struct Checked {
    pub tty: bool,
}

/// Checks `spec` against what the runtime supports and against the engine's ID map.
pub(crate) fn check(spec: &ContainerSpec) -> Result<Checked, RuntimeError> {
    let id = &spec.id;
    let invalid = |reason: &str| RuntimeError::InvalidSpec {
        id: id.clone(),
        reason: reason.to_owned(),
    };
    let unsupported = |what: String| RuntimeError::Unsupported {
        id: id.clone(),
        what,
    };
    let oci: &Spec = &spec.oci;

    let process = oci
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process is missing"))?;
    if process.args().as_ref().is_none_or(|args| args.is_empty()) {
        return Err(invalid("process.args is empty"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid("process.cwd must be an absolute path"));
    }
    if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        return Err(unsupported("process.apparmorProfile".into()));
    }
    if process
        .selinux_label()
        .as_ref()
        .is_some_and(|l| !l.is_empty())
    {
        return Err(unsupported("process.selinuxLabel".into()));
    }
    if oci.hooks().is_some() {
        return Err(unsupported("hooks".into()));
    }
    if let Some(linux) = oci.linux() {
        if linux.seccomp().is_some() {
            return Err(unsupported(
                "linux.seccomp (the runtime always applies its built-in profile)".into(),
            ));
        }
        let joins = linux
            .namespaces()
            .iter()
            .flatten()
            .any(|ns| ns.path().is_some());
        if joins {
            return Err(unsupported(
                "joining an existing namespace (linux.namespaces[].path)".into(),
            ));
        }
    }

    for mount in oci.mounts().iter().flatten() {
        if !mount.destination().is_absolute() {
            return Err(invalid(&format!(
                "mount destination {} must be absolute",
                mount.destination().display()
            )));
        }
        match mount_kind(mount) {
            Some(MountKind::Bind) => check_bind_source(id, mount)?,
            Some(MountKind::Tmpfs | MountKind::Runtime) => {}
            None => {
                return Err(unsupported(format!(
                    "mount type {:?} at {}",
                    mount.typ().as_deref().unwrap_or("(none)"),
                    mount.destination().display()
                )))
            }
        }
    }

    check_ids(spec)?;
    Ok(Checked {
        tty: process.terminal().unwrap_or(false),
    })
}

fn check_bind_source(id: &str, mount: &Mount) -> Result<(), RuntimeError> {
    let source = mount
        .source()
        .as_ref()
        .ok_or_else(|| RuntimeError::InvalidSpec {
            id: id.to_owned(),
            reason: format!(
                "bind mount at {} has no source",
                mount.destination().display()
            ),
        })?;
    let error = |err| RuntimeError::BindSource {
        id: id.to_owned(),
        path: source.clone(),
        source: err,
    };
    let meta = std::fs::metadata(source).map_err(error)?;
    // Opening proves the engine may read it; a directory is opened as such.
    if meta.is_dir() {
        std::fs::read_dir(source).map_err(error)?;
    } else {
        std::fs::File::open(source).map_err(error)?;
    }
    Ok(())
}

/// Checks that the process's user and groups exist in the engine's user namespace.
fn check_ids(spec: &ContainerSpec) -> Result<(), RuntimeError> {
    let Some(process) = spec.oci.process() else {
        return Ok(());
    };
    let user = process.user();
    let uid_map = read_own_map("/proc/self/uid_map");
    let gid_map = read_own_map("/proc/self/gid_map");
    let not_mapped = |kind, value| RuntimeError::IdNotMapped {
        id: spec.id.clone(),
        kind,
        value,
    };
    if !maps(&uid_map, user.uid()) {
        return Err(not_mapped("uid", user.uid()));
    }
    let gids = std::iter::once(user.gid()).chain(user.additional_gids().iter().flatten().copied());
    for gid in gids {
        if !maps(&gid_map, gid) {
            return Err(not_mapped("gid", gid));
        }
    }
    Ok(())
}

/// Parses the calling process's own ID map; unreadable maps count as unrestricted.
pub(crate) fn read_own_map(path: &str) -> Option<Vec<IdRange>> {
    let text = std::fs::read_to_string(path).ok()?;
    let ranges = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(|f| f.parse::<u32>());
            Some(IdRange {
                container: fields.next()?.ok()?,
                host: fields.next()?.ok()?,
                size: fields.next()?.ok()?,
            })
        })
        .collect();
    Some(ranges)
}

pub(crate) fn maps(map: &Option<Vec<IdRange>>, id: u32) -> bool {
    match map {
        None => true,
        Some(ranges) => ranges.iter().any(|r| {
            id >= r.container && u64::from(id) < u64::from(r.container) + u64::from(r.size)
        }),
    }
}
