//! Shared setup for the namespace tests: the user namespace, stand-in
//! containers, runtimes and open-fd accounting.

use std::fs;
use std::net::Ipv4Addr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libtest_mimic::{Completion, Failed, Trial};
use mayfly_netns::{Attachment, NetNs, NetnsThread, Sandbox};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{getgid, getuid};

/// Enters a new user and mount namespace with a single-ID map (root inside
/// is the calling user outside), as the engine does at start. Must run before
/// any other thread exists.
pub fn enter_user_namespace() -> Result<()> {
    let uid = getuid();
    let gid = getgid();
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).context(
        "unshare(CLONE_NEWUSER | CLONE_NEWNS) failed; unprivileged user namespaces may be disabled",
    )?;
    fs::write("/proc/self/setgroups", "deny").context("failed to write /proc/self/setgroups")?;
    fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
        .context("failed to write /proc/self/uid_map")?;
    fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
        .context("failed to write /proc/self/gid_map")?;
    Ok(())
}

/// Trials that count open fds run alone; every other trial may run beside
/// the others.
static FD_COUNT_LOCK: RwLock<()> = RwLock::new(());

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

fn lock(exclusive: bool) -> Guard {
    if exclusive {
        Guard::Exclusive(FD_COUNT_LOCK.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Guard::Shared(FD_COUNT_LOCK.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A trial that runs `body` and fails with its error chain.
pub fn trial(name: &str, body: fn() -> Result<()>) -> Trial {
    make_trial(name, false, body)
}

/// A trial that counts open fds, so runs with no other trial beside it.
pub fn fd_counting_trial(name: &str, body: fn() -> Result<()>) -> Trial {
    make_trial(name, true, body)
}

/// An error that makes a trial report "skipped: <reason>" instead of
/// failing, for a condition of the machine that the trial cannot change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Skip(pub String);

fn make_trial(name: &str, exclusive: bool, body: fn() -> Result<()>) -> Trial {
    Trial::ignorable_test(name, move || {
        if let Some(reason) = crate::SKIP_REASON.get() {
            return Ok(Completion::ignored_with(format!("skipped: {reason}")));
        }
        let _guard = lock(exclusive);
        match body() {
            Ok(()) => Ok(Completion::Completed),
            Err(error) => match error.downcast_ref::<Skip>() {
                Some(Skip(reason)) => Ok(Completion::ignored_with(format!("skipped: {reason}"))),
                None => Err(Failed::from(format!("{error:#}"))),
            },
        }
    })
}

/// A tokio runtime for one trial.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("failed to build a tokio runtime")
}

/// A stand-in container: a network namespace of its own, joined to the
/// sandbox, with a thread that creates sockets in it.
pub struct Container {
    pub sockets: NetnsThread,
    pub attachment: Attachment,
}

impl Container {
    pub fn attach(sandbox: &Sandbox, name: &str) -> Result<Container> {
        let netns = NetNs::create()?;
        let attachment = sandbox.attach(&netns, name)?;
        let sockets = NetnsThread::spawn(&netns)?;
        Ok(Container {
            sockets,
            attachment,
        })
    }

    pub fn address(&self) -> Ipv4Addr {
        self.attachment.address()
    }
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn fd_targets() -> Vec<String> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok())
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .map(|target| target.display().to_string())
        .collect()
}

/// Waits up to five seconds for the open-fd count to drop back to
/// `baseline`, since aborted tasks release their sockets asynchronously.
pub fn wait_for_fd_baseline(baseline: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = open_fds();
        if now <= baseline {
            return Ok(());
        }
        if Instant::now() > deadline {
            let targets = fd_targets();
            bail!(
                "open fds did not return to the baseline of {baseline}: {now} open, the first: {:?}",
                &targets[..targets.len().min(40)]
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
