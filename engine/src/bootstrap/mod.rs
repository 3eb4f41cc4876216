//! Engine bootstrap: moves the engine into its own user and mount namespace.
//!
//! [`enter`] must run at the top of a binary's `main`, after
//! [`crate::runtime::init_if_requested`] and before anything starts a thread (a tokio
//! runtime, a thread pool, a logger with a background thread). The kernel allows
//! `unshare(CLONE_NEWUSER)` only in a single-threaded process, and [`enter`] forks.
//!
//! ```text
//! host user namespace                 engine user namespace (root inside)
//! ┌─────────────────────┐  fork       ┌──────────────────────────────────┐
//! │ parent (host side)  │ ──────────> │ child = the engine; enter()      │
//! │ writes the ID maps, │  signals    │ returns here, in a new mount ns, │
//! │ forwards signals,   │ ──────────> │ host network namespace           │
//! │ exits with status   │             └──────────────────────────────────┘
//! └─────────────────────┘
//! ```
//!
//! IDs: with ranges for the user in `/etc/subuid` and `/etc/subgid`, container ID 0 is the
//! user and IDs 1..=N are the subordinate range, written by the setuid helpers
//! `newuidmap`/`newgidmap`. Without ranges the engine maps only its own ID (a single-ID
//! map) and warns that files of other owners in images are squashed to root. When root
//! starts the engine (development machines, CI), the parent writes the maps itself: root's
//! subordinate ranges if it has any, otherwise the identity map of IDs 0..65536, so container
//! root is host root as with a rootful engine.

mod host;
pub mod idmap;
pub mod preflight;
mod probe;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

pub use idmap::{IdMapError, IdMapKind, IdMapping, IdRange, SubordinateRange};
pub use preflight::{HelperProblem, UsernsBlocker};

use crate::state::{StateDirs, StateError};
use host::MapWriter;

/// Whether to use subordinate ID ranges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdMapMode {
    /// Subordinate ranges when the user has them, otherwise a single-ID map.
    #[default]
    Auto,
    /// Always the single-ID map (`MAYFLY_ID_MAP=single`).
    SingleId,
}

/// Whether to try overlay for container root file systems.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageMode {
    /// Overlay when an unprivileged overlay mount works, otherwise a copied tree.
    #[default]
    Auto,
    /// Always copy the layers into a private tree (`MAYFLY_STORAGE=copy`).
    Copy,
}

/// The way container root file systems are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Storage {
    /// Overlay of the image layers plus a private upper directory.
    Overlay,
    /// A private copy of the merged layers.
    Copy,
}

/// Settings for [`enter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootstrapOptions {
    /// ID map selection.
    pub id_map: IdMapMode,
    /// Storage selection.
    pub storage: StorageMode,
    /// Overrides the runtime dir (default `$XDG_RUNTIME_DIR/mayfly`, or `/tmp/mayfly-<uid>`).
    pub runtime_dir: Option<PathBuf>,
    /// Overrides the data dir (default `$XDG_DATA_HOME/mayfly`, or
    /// `$HOME/.local/share/mayfly`).
    pub data_dir: Option<PathBuf>,
}

impl BootstrapOptions {
    /// Reads `MAYFLY_ID_MAP` (`auto` or `single`) and `MAYFLY_STORAGE` (`auto` or `copy`).
    /// Unset variables keep the defaults.
    pub fn from_env() -> Result<Self, BootstrapError> {
        let mut options = Self::default();
        if let Ok(value) = std::env::var("MAYFLY_ID_MAP") {
            options.id_map = match value.as_str() {
                "" | "auto" => IdMapMode::Auto,
                "single" => IdMapMode::SingleId,
                _ => {
                    return Err(BootstrapError::InvalidSetting {
                        name: "MAYFLY_ID_MAP",
                        value,
                        expected: "auto or single",
                    })
                }
            };
        }
        if let Ok(value) = std::env::var("MAYFLY_STORAGE") {
            options.storage = match value.as_str() {
                "" | "auto" => StorageMode::Auto,
                "copy" => StorageMode::Copy,
                _ => {
                    return Err(BootstrapError::InvalidSetting {
                        name: "MAYFLY_STORAGE",
                        value,
                        expected: "auto or copy",
                    })
                }
            };
        }
        Ok(options)
    }
}

/// A condition the engine works around, for the front-end to show once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapWarning {
    /// The user has no subordinate ranges, so the engine uses a single-ID map.
    NoSubordinateRange { user: String },
    /// Unprivileged overlay failed, so root file systems are copied.
    OverlayUnavailable { reason: String },
}

impl fmt::Display for BootstrapWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSubordinateRange { user } => write!(
                f,
                "user {user} has no subordinate ID range in /etc/subuid and /etc/subgid, so \
                 containers get a single ID and image files of other owners are squashed to \
                 root; add a range with `usermod --add-subuids 100000-165535 \
                 --add-subgids 100000-165535 {user}`"
            ),
            Self::OverlayUnavailable { reason } => write!(
                f,
                "unprivileged overlay is unavailable ({reason}), so each container gets a \
                 copied root file system, which is slower and uses more disk"
            ),
        }
    }
}

/// Failure to enter the engine's namespaces.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// An environment setting has an unknown value.
    #[error("invalid {name}={value:?}: expected {expected}")]
    InvalidSetting {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The process already has threads.
    #[error(
        "bootstrap::enter found {count} threads: call it at the top of main, before anything \
         starts a thread (a tokio runtime, a thread pool)"
    )]
    Threaded { count: usize },
    /// Counting threads failed.
    #[error("failed to count threads in /proc/self/task: {0}")]
    ThreadCount(#[source] io::Error),
    /// Reading `/etc/subuid` or `/etc/subgid` failed.
    #[error("failed to read {path}: {source}")]
    SubordinateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The user has subordinate ranges but the helpers cannot be used.
    #[error(
        "user {user} has subordinate ID ranges but {problem}; or set MAYFLY_ID_MAP=single to \
         run with a single-ID map"
    )]
    HelperUnavailable {
        user: String,
        problem: HelperProblem,
    },
    /// A system call of the bootstrap failed.
    #[error("{step} failed: {source}")]
    Syscall {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the user namespace or its ID map.
    #[error("{step} failed: {source}; unprivileged user namespaces look blocked: {diagnosis}")]
    UsernsBlocked {
        step: &'static str,
        diagnosis: String,
        #[source]
        source: io::Error,
    },
    /// Writing the ID maps failed.
    #[error("failed to map the engine's IDs: {0}")]
    IdMap(#[from] IdMapError),
    /// The host-side parent died before the engine was ready.
    #[error("the host-side parent process exited during bootstrap")]
    ParentGone,
    /// Preparing the state directories failed.
    #[error(transparent)]
    State(#[from] StateError),
}

fn syscall(step: &'static str) -> impl FnOnce(nix::errno::Errno) -> BootstrapError {
    move |errno| BootstrapError::Syscall {
        step,
        source: errno.into(),
    }
}

fn userns_blocked(step: &'static str) -> impl FnOnce(io::Error) -> BootstrapError {
    move |source| {
        if !matches!(
            source.raw_os_error(),
            Some(libc::EPERM | libc::EACCES | libc::ENOSPC)
        ) {
            return BootstrapError::Syscall { step, source };
        }
        BootstrapError::UsernsBlocked {
            step,
            diagnosis: preflight::describe_blockers(&preflight::userns_blockers()),
            source,
        }
    }
}

/// The engine's view of its namespaces, returned by [`enter`] in the engine process.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    id_mapping: IdMapping,
    storage: Storage,
    dirs: StateDirs,
    host_uid: u32,
    host_gid: u32,
    warnings: Vec<BootstrapWarning>,
}

impl Bootstrap {
    /// The ID maps of the engine's user namespace; the image unpacker uses them to know
    /// which owners it can keep.
    pub fn id_mapping(&self) -> &IdMapping {
        &self.id_mapping
    }

    /// Whether container root file systems use overlay or a copy.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Returns whether unprivileged overlay works (and was not disabled).
    pub fn overlay_works(&self) -> bool {
        self.storage == Storage::Overlay
    }

    /// The state directories, created with mode 0700.
    pub fn state_dirs(&self) -> &StateDirs {
        &self.dirs
    }

    /// The user's UID in the host user namespace.
    pub fn host_uid(&self) -> u32 {
        self.host_uid
    }

    /// The user's GID in the host user namespace.
    pub fn host_gid(&self) -> u32 {
        self.host_gid
    }

    /// Conditions worked around, each already logged once with `tracing::warn!`.
    pub fn warnings(&self) -> &[BootstrapWarning] {
        &self.warnings
    }
}

/// Forks the engine into a new user and mount namespace and returns in the engine process.
///
/// Call it at the top of `main` before any thread exists (see the module documentation). The
/// calling process becomes the host-side parent: it maps IDs, forwards SIGINT, SIGTERM,
/// SIGHUP and SIGQUIT to the engine, and exits with the engine's exit status, or 128+N when
/// signal N killed it. `enter` returns an error in the parent only when mapping the IDs
/// failed, after the child exited. The engine gets SIGKILL if the parent dies.
pub fn enter(options: &BootstrapOptions) -> Result<Bootstrap, BootstrapError> {
    let count = preflight::thread_count().map_err(BootstrapError::ThreadCount)?;
    if count > 1 {
        return Err(BootstrapError::Threaded { count });
    }

    let host_uid = Uid::current().as_raw();
    let host_gid = Gid::current().as_raw();
    let dirs = StateDirs::resolve(
        options.runtime_dir.as_deref(),
        options.data_dir.as_deref(),
        host_uid,
    )?;
    let mut warnings = Vec::new();
    let writer = choose_map_writer(options.id_map, host_uid, host_gid, &mut warnings)?;

    // Forwarded signals and SIGCHLD stay blocked in the parent, which takes them with
    // sigwaitinfo. Blocking them before the fork closes the window where one would kill the
    // parent with its default action. The child restores the old mask.
    let mut signals = SigSet::empty();
    for signal in host::FORWARDED {
        signals.add(signal);
    }
    signals.add(Signal::SIGCHLD);
    let old_mask = signals
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(syscall("sigprocmask"))?;

    let (child_read, parent_write) = nix::unistd::pipe().map_err(syscall("pipe"))?;
    let (parent_read, child_write) = nix::unistd::pipe().map_err(syscall("pipe"))?;
    let parent_pid = Pid::this();

    // SAFETY: the process is single-threaded (checked above), so the child owns a consistent
    // copy of the whole address space, including allocator locks.
    match unsafe { nix::unistd::fork() }.map_err(syscall("fork"))? {
        ForkResult::Parent { child } => {
            drop((child_read, child_write));
            Err(host::run(child, &writer, parent_read, parent_write, &signals).into())
        }
        ForkResult::Child => {
            drop((parent_read, parent_write));
            old_mask.thread_set_mask().map_err(syscall("sigprocmask"))?;
            let id_mapping = writer.mapping().clone();
            enter_namespaces(&writer, parent_pid, child_read, child_write)?;

            dirs.create()?;
            crate::state::remove_stale(&dirs.containers)?;
            let storage = choose_storage(options.storage, &dirs.containers, &mut warnings);
            tracing::info!(
                id_map = ?id_mapping.kind,
                ?storage,
                containers = %dirs.containers.display(),
                "engine namespaces ready"
            );
            Ok(Bootstrap {
                id_mapping,
                storage,
                dirs,
                host_uid,
                host_gid,
                warnings,
            })
        }
    }
}

fn choose_map_writer(
    mode: IdMapMode,
    uid: u32,
    gid: u32,
    warnings: &mut Vec<BootstrapWarning>,
) -> Result<MapWriter, BootstrapError> {
    let user = nix::unistd::User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let user_label = user.clone().unwrap_or_else(|| uid.to_string());

    if mode == IdMapMode::SingleId {
        let mapping = IdMapping::single(uid, gid);
        return Ok(if uid == 0 {
            MapWriter::Parent(mapping)
        } else {
            MapWriter::Child(mapping)
        });
    }

    let read = |path: &str, id| {
        idmap::read_subordinate(Path::new(path), user.as_deref(), id).map_err(|source| {
            BootstrapError::SubordinateFile {
                path: path.into(),
                source,
            }
        })
    };
    let ranges = (read("/etc/subuid", uid)?, read("/etc/subgid", gid)?);

    match ranges {
        (Some(subuid), Some(subgid)) => {
            let mapping = IdMapping::subordinate(uid, gid, subuid, subgid);
            if uid == 0 {
                return Ok(MapWriter::Parent(mapping));
            }
            let helper = |name| {
                preflight::find_setuid_helper(name).map_err(|problem| {
                    BootstrapError::HelperUnavailable {
                        user: user_label.clone(),
                        problem,
                    }
                })
            };
            Ok(MapWriter::Helpers {
                mapping,
                newuidmap: helper("newuidmap")?,
                newgidmap: helper("newgidmap")?,
            })
        }
        _ if uid == 0 => Ok(MapWriter::Parent(IdMapping::identity())),
        _ => {
            let warning = BootstrapWarning::NoSubordinateRange { user: user_label };
            tracing::warn!("{warning}");
            warnings.push(warning);
            Ok(MapWriter::Child(IdMapping::single(uid, gid)))
        }
    }
}

/// The child side: creates the user namespace, waits for the map, becomes root in it and
/// creates the engine's mount namespace.
fn enter_namespaces(
    writer: &MapWriter,
    parent_pid: Pid,
    from_parent: OwnedFd,
    to_parent: OwnedFd,
) -> Result<(), BootstrapError> {
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|errno| userns_blocked("unshare(CLONE_NEWUSER)")(errno.into()))?;

    // Tell the parent the namespace exists, then wait until it has written the maps.
    let mut to_parent = File::from(to_parent);
    to_parent
        .write_all(b"u")
        .map_err(|_| BootstrapError::ParentGone)?;
    let mut reply = [0u8; 1];
    let read = File::from(from_parent).read(&mut reply);
    match read {
        Ok(1) if reply[0] == host::MAP_DONE => {}
        // The parent reports its mapping error itself; leave quietly.
        Ok(1) => std::process::exit(1),
        _ => return Err(BootstrapError::ParentGone),
    }

    if let MapWriter::Child(mapping) = writer {
        idmap::apply_directly("self", mapping, true).map_err(|err| match err {
            IdMapError::Write { source, .. } => userns_blocked("writing the single-ID map")(source),
            other => other.into(),
        })?;
    }

    become_root()?;

    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|errno| userns_blocked("unshare(CLONE_NEWNS)")(errno.into()))?;
    // Mounts made by the engine and its containers must never reach the host; rslave still
    // lets the engine see what the host mounts later.
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|errno| userns_blocked("making / a recursive slave mount")(errno.into()))?;

    // The parent may have died before the death signal was armed: check it afterwards.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(syscall("PR_SET_PDEATHSIG"))?;
    if nix::unistd::getppid() != parent_pid {
        return Err(BootstrapError::ParentGone);
    }
    Ok(())
}

fn become_root() -> Result<(), BootstrapError> {
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .map_err(|errno| userns_blocked("setresgid(0)")(errno.into()))?;
    // Supplementary groups of the host user are unmapped; dropping them fails harmlessly when
    // setgroups is denied (single-ID map).
    let _ = nix::unistd::setgroups(&[]);
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .map_err(|errno| userns_blocked("setresuid(0)")(errno.into()))
}

fn choose_storage(
    mode: StorageMode,
    containers: &Path,
    warnings: &mut Vec<BootstrapWarning>,
) -> Storage {
    if mode == StorageMode::Copy {
        tracing::info!("overlay disabled by configuration; root file systems are copied");
        return Storage::Copy;
    }
    match probe::overlay_works(containers) {
        Ok(()) => Storage::Overlay,
        Err(err) => {
            let warning = BootstrapWarning::OverlayUnavailable {
                reason: err.to_string(),
            };
            tracing::warn!("{warning}");
            warnings.push(warning);
            Storage::Copy
        }
    }
}
