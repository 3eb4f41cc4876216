//! The engine side of starting a container.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::channel::Channel;
use super::launcher;
use super::overlay::OverlayDirs;
use super::process::{ContainerProcess, Streams};
use super::spec::{ContainerSpec, FileMount, FromInit, InitPlan, RootfsPlan, Stdio, ToInit};
use super::{copy, validate, RuntimeError};
use crate::bootstrap::Storage;
use crate::state::ContainerDir;

/// Starts a container's init and waits until its root file system is ready.
///
/// The returned process is *created*, not running: its namespaces exist and the engine may
/// configure the network namespace (`/proc/<pid>/ns/net`) before
/// [`ContainerProcess::start`] runs the command. Call from the engine process after
/// [`crate::bootstrap::enter`]. It blocks while it prepares the state directory (copying the
/// layers with [`Storage::Copy`]) and while the init mounts; use `spawn_blocking` in async
/// code.
pub fn spawn(spec: &ContainerSpec) -> Result<ContainerProcess, RuntimeError> {
    let id = spec.id.as_str();
    let checked = validate::check(spec)?;
    let dir =
        ContainerDir::create(&spec.containers_dir, id).map_err(|source| RuntimeError::State {
            id: id.to_owned(),
            source,
        })?;
    let launch = || -> Result<_, RuntimeError> {
        let plan = prepare_dir(spec, dir.path(), checked.tty)?;
        let (child_fds, streams) = if checked.tty {
            ([None, None, None], Streams::default())
        } else {
            stdio_fds(spec)?
        };
        let launch_error = |source| RuntimeError::Launch {
            id: id.to_owned(),
            source,
        };
        let (engine_end, init_end) = UnixStream::pair().map_err(launch_error)?;
        let [stdin, stdout, stderr] = child_fds;
        let launched = launcher::launch_init([stdin, stdout, stderr, Some(init_end.into())])
            .map_err(launch_error)?;
        Ok((plan, streams, engine_end, launched))
    };
    let (plan, streams, engine_end, launched) = match launch() {
        Ok(launched) => launched,
        Err(err) => {
            if let Err(cleanup) = dir.remove() {
                tracing::warn!(container = %id, error = %cleanup, "failed to remove the state of a container that did not start");
            }
            return Err(err);
        }
    };
    tracing::debug!(container = %id, pid = launched.pid, "init process launched");

    // From here on, dropping `process` kills and reaps the init and removes the directory.
    let mut process = ContainerProcess::new(
        id,
        launched.pid,
        launched.pidfd,
        Channel::new(engine_end),
        spec.no_init,
        streams,
        dir,
    );
    let lost = |source| RuntimeError::Channel {
        id: id.to_owned(),
        source,
    };
    process
        .channel()
        .send(&ToInit::Plan(Box::new(plan)), None)
        .map_err(lost)?;

    match process.channel().recv::<FromInit>().map_err(lost)? {
        Some((FromInit::Ready, master)) => {
            if let Some(master) = master {
                process.set_tty(master).map_err(lost)?;
            }
            tracing::info!(container = %id, pid = process.pid(), "container created");
            Ok(process)
        }
        Some((FromInit::Failed { message }, _)) => Err(RuntimeError::InitFailed {
            id: id.to_owned(),
            message,
        }),
        Some((other, _)) => Err(RuntimeError::InitFailed {
            id: id.to_owned(),
            message: format!("the init sent an unexpected message {other:?} instead of ready"),
        }),
        None => {
            let status = process.wait_blocking()?;
            Err(RuntimeError::InitExited {
                id: id.to_owned(),
                status,
            })
        }
    }
}

/// Fills the container directory and returns the init's plan.
fn prepare_dir(spec: &ContainerSpec, dir: &Path, tty: bool) -> Result<InitPlan, RuntimeError> {
    let prepare_error = |path: &Path| {
        let path = path.to_owned();
        move |source| RuntimeError::Prepare {
            id: spec.id.clone(),
            path,
            source,
        }
    };
    let mkdir = |path: &Path| std::fs::create_dir(path).map_err(prepare_error(path));

    let mountpoint = dir.join("rootfs");
    mkdir(&mountpoint)?;
    let rootfs = match spec.storage {
        Storage::Overlay => {
            let mut lowers: Vec<_> = spec.layers.iter().rev().cloned().collect();
            if lowers.is_empty() {
                let empty = dir.join("empty");
                mkdir(&empty)?;
                lowers.push(empty);
            }
            let dirs = OverlayDirs {
                lowers,
                upper: dir.join("upper"),
                work: dir.join("work"),
            };
            mkdir(&dirs.upper)?;
            mkdir(&dirs.work)?;
            RootfsPlan::Overlay(dirs)
        }
        Storage::Copy => {
            copy::merge_layers(&spec.layers, &mountpoint).map_err(|source| {
                RuntimeError::CopyRootfs {
                    id: spec.id.clone(),
                    source,
                }
            })?;
            RootfsPlan::Copied
        }
    };

    let mut files = Vec::new();
    let hostname = spec.oci.hostname().as_ref().map(|name| format!("{name}\n"));
    let generated = [
        ("hosts", "/etc/hosts", spec.hosts.as_ref()),
        ("resolv.conf", "/etc/resolv.conf", spec.resolv_conf.as_ref()),
        ("hostname", "/etc/hostname", hostname.as_ref()),
    ];
    for (name, destination, content) in generated {
        let Some(content) = content else { continue };
        let source = dir.join(name);
        std::fs::write(&source, content).map_err(prepare_error(&source))?;
        files.push(FileMount {
            source,
            destination: destination.into(),
        });
    }

    Ok(InitPlan {
        oci: spec.oci.clone(),
        rootfs,
        mountpoint,
        files,
        tty,
        no_init: spec.no_init,
    })
}

/// Builds the child's descriptors 0..=2 and the engine's ends of any pipes.
fn stdio_fds(spec: &ContainerSpec) -> Result<([Option<OwnedFd>; 3], Streams), RuntimeError> {
    let launch_error = |source| RuntimeError::Launch {
        id: spec.id.clone(),
        source,
    };
    let mut streams = Streams::default();
    let mut fds: [Option<OwnedFd>; 3] = [None, None, None];

    for (index, stdio) in [&spec.stdin, &spec.stdout, &spec.stderr]
        .into_iter()
        .enumerate()
    {
        let is_input = index == 0;
        fds[index] = match stdio {
            Stdio::Inherit => None,
            Stdio::Null => {
                let null = std::fs::OpenOptions::new()
                    .read(is_input)
                    .write(!is_input)
                    .open("/dev/null")
                    .map_err(launch_error)?;
                Some(OwnedFd::from(null))
            }
            Stdio::Fd(fd) => Some(fd.try_clone().map_err(launch_error)?),
            Stdio::Piped => {
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|errno| launch_error(errno.into()))?;
                let (child, parent) = if is_input {
                    (read, write)
                } else {
                    (write, read)
                };
                let parent = Some(File::from(parent));
                match index {
                    0 => streams.stdin = parent,
                    1 => streams.stdout = parent,
                    _ => streams.stderr = parent,
                }
                Some(child)
            }
        };
    }
    Ok((fds, streams))
}
