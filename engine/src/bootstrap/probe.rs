//! Detects whether unprivileged overlay works on the file system of the container
//! directories, by mounting a real one.

use std::io;
use std::path::{Path, PathBuf};

use crate::runtime::overlay::{self, OverlayDirs, OverlayError};
use crate::state::{ContainerDir, StateError};

/// Why the overlay probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The scratch directory could not be prepared.
    #[error("failed to prepare the overlay probe directory: {0}")]
    State(#[from] StateError),
    /// Creating a file or directory in the scratch directory failed.
    #[error("failed to prepare {path} for the overlay probe: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel rejected the overlay.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// The overlay mounted but did not show the lower layer's file or take a write.
    #[error("overlay mounted on {path} but {what}")]
    Broken { path: PathBuf, what: &'static str },
}

/// Mounts an overlay with `userxattr` in a scratch directory under `containers`, writes
/// through it, and unmounts it. Must run inside the engine's mount namespace.
pub fn overlay_works(containers: &Path) -> Result<(), ProbeError> {
    let scratch = ContainerDir::create(containers, &format!("probe-{}", std::process::id()))?;
    let result = probe_in(scratch.path());
    if let Err(err) = scratch.remove() {
        tracing::warn!(error = %err, "failed to remove the overlay probe directory");
    }
    result
}

fn probe_in(dir: &Path) -> Result<(), ProbeError> {
    let lower = dir.join("lower");
    let merged = dir.join("merged");
    let dirs = OverlayDirs {
        lowers: vec![lower.clone()],
        upper: dir.join("upper"),
        work: dir.join("work"),
    };
    for path in [&lower, &dirs.upper, &dirs.work, &merged] {
        std::fs::create_dir(path).map_err(|source| ProbeError::Prepare {
            path: path.clone(),
            source,
        })?;
    }
    let marker = lower.join("marker");
    std::fs::write(&marker, "lower").map_err(|source| ProbeError::Prepare {
        path: marker,
        source,
    })?;

    overlay::mount(&dirs, &merged)?;
    let check = check_merged(&merged);
    if let Err(errno) = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(path = %merged.display(), %errno, "failed to unmount the overlay probe");
    }
    check
}

fn check_merged(merged: &Path) -> Result<(), ProbeError> {
    let broken = |what| ProbeError::Broken {
        path: merged.to_owned(),
        what,
    };
    if std::fs::read_to_string(merged.join("marker"))
        .ok()
        .as_deref()
        != Some("lower")
    {
        return Err(broken("the lower layer's file is not visible"));
    }
    // Removing a lower file makes overlay create a whiteout, which needs user xattrs or
    // mknod on the upper file system.
    std::fs::remove_file(merged.join("marker"))
        .map_err(|_| broken("removing a lower file (a whiteout) failed"))?;
    std::fs::write(merged.join("written"), "upper")
        .map_err(|_| broken("writing a new file failed"))?;
    Ok(())
}
