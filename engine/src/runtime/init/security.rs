//! Dropping privileges before the command runs: rlimits, no_new_privs, the capability
//! bounding set, seccomp, the user and groups, the remaining capability sets, and the
//! working directory.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use caps::{CapSet, Capability as KernelCap, CapsHashSet};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, PosixRlimitType, Process};

use super::{seccomp, InitError};
use crate::runtime::channel::Channel;

/// Applies the process's security settings in the order the kernel needs: everything that
/// needs privilege first, the user switch, then the capability sets the command keeps.
pub(super) fn apply(process: &Process, channel: &Channel) -> Result<(), InitError> {
    set_rlimits(process)?;
    create_workdir(process)?;

    if process.no_new_privileges() != Some(false) {
        nix::sys::prctl::set_no_new_privs().map_err(InitError::step("set no_new_privs"))?;
    }

    let wanted = process.capabilities().clone().unwrap_or_default();
    let bounding = to_kernel(wanted.bounding())?;
    for cap in caps::all().difference(&bounding) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(|source| InitError::Caps {
            set: "bounding",
            source,
        })?;
    }

    // Installed while CAP_SYS_ADMIN is still held, so it works with no_new_privileges=false
    // too; the steps below make none of the denied calls.
    seccomp::install()?;

    switch_user(process)?;
    let sets = [
        ("effective", CapSet::Effective, wanted.effective()),
        ("permitted", CapSet::Permitted, wanted.permitted()),
        ("inheritable", CapSet::Inheritable, wanted.inheritable()),
        ("ambient", CapSet::Ambient, wanted.ambient()),
    ];
    for (name, set, caps_wanted) in sets {
        caps::set(None, set, &to_kernel(caps_wanted)?)
            .map_err(|source| InitError::Caps { set: name, source })?;
    }

    // Changing the UID cleared the parent-death signal; the engine may have died before it
    // is armed again, which the closed socket shows.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(InitError::step("set the parent-death signal"))?;
    if engine_gone(channel) {
        return Err(InitError::EngineGone);
    }

    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(InitError::errno("change directory to", cwd))?;
    if let Some(mask) = process.user().umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

fn to_kernel(set: &Option<Capabilities>) -> Result<CapsHashSet, InitError> {
    set.iter()
        .flatten()
        .map(|cap| {
            let name = format!("CAP_{cap}");
            KernelCap::from_str(&name).map_err(|_| InitError::UnknownCapability { name })
        })
        .collect()
}

fn set_rlimits(process: &Process) -> Result<(), InitError> {
    for limit in process.rlimits().iter().flatten() {
        let Some(resource) = resource(limit.typ()) else {
            continue;
        };
        // Raising a hard limit needs CAP_SYS_RESOURCE in the initial user namespace, so the
        // engine's hard limit caps both values.
        let (_, engine_hard) = getrlimit(resource).map_err(InitError::step("read an rlimit"))?;
        let hard = limit.hard().min(engine_hard);
        let soft = limit.soft().min(hard);
        setrlimit(resource, soft, hard).map_err(InitError::step("set an rlimit"))?;
    }
    Ok(())
}

fn resource(typ: PosixRlimitType) -> Option<Resource> {
    Some(match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// Creates the working directory when the image lacks it, as Docker does, owned by the
/// process's user.
fn create_workdir(process: &Process) -> Result<(), InitError> {
    let cwd = process.cwd();
    if cwd.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(cwd).map_err(InitError::path("create the working directory", cwd))?;
    std::fs::set_permissions(cwd, std::fs::Permissions::from_mode(0o755))
        .map_err(InitError::path("set the mode of", cwd))?;
    let user = process.user();
    nix::unistd::chown(
        cwd,
        Some(Uid::from_raw(user.uid())),
        Some(Gid::from_raw(user.gid())),
    )
    .map_err(InitError::errno("change the owner of", cwd))
}

fn switch_user(process: &Process) -> Result<(), InitError> {
    let user = process.user();
    let uid = Uid::from_raw(user.uid());
    let gid = Gid::from_raw(user.gid());
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();

    // setgroups is denied in a user namespace with a self-written single-ID map. Only GID 0
    // exists there, and the engine checked that every requested group is mapped.
    if setgroups_allowed() {
        nix::unistd::setgroups(&groups).map_err(InitError::step("set the supplementary groups"))?;
    }
    nix::sys::prctl::set_keepcaps(true)
        .map_err(InitError::step("keep capabilities across setuid"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(InitError::step("set the group ID"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(InitError::step("set the user ID"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(InitError::step("reset keepcaps"))
}

fn setgroups_allowed() -> bool {
    std::fs::read_to_string(Path::new("/proc/self/setgroups")).is_ok_and(|s| s.trim() == "allow")
}

fn engine_gone(channel: &Channel) -> bool {
    use std::os::fd::AsFd;
    let flags = nix::poll::PollFlags::POLLIN | nix::poll::PollFlags::POLLHUP;
    let mut fds = [nix::poll::PollFd::new(channel.socket().as_fd(), flags)];
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
        // The engine sends nothing after "start", so anything readable is end of stream.
        Ok(ready) => ready > 0,
        Err(_) => false,
    }
}
