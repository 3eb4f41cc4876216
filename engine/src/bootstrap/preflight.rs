//! Host checks that turn a bare `EPERM` from the kernel into an error that says how to fix the
//! host.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A host setting that blocks unprivileged user namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsernsBlocker {
    /// Debian's `kernel.unprivileged_userns_clone` is 0.
    DebianSysctl,
    /// `user.max_user_namespaces` is 0.
    MaxUserNamespacesZero,
    /// Ubuntu 23.10+ restricts unprivileged user namespaces through AppArmor.
    AppArmorRestriction,
}

impl fmt::Display for UsernsBlocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DebianSysctl => write!(
                f,
                "kernel.unprivileged_userns_clone is 0; enable it with \
                 `sysctl -w kernel.unprivileged_userns_clone=1` (persist it in /etc/sysctl.d/)"
            ),
            Self::MaxUserNamespacesZero => write!(
                f,
                "user.max_user_namespaces is 0; raise it with \
                 `sysctl -w user.max_user_namespaces=28633` (persist it in /etc/sysctl.d/)"
            ),
            Self::AppArmorRestriction => write!(
                f,
                "AppArmor restricts unprivileged user namespaces \
                 (kernel.apparmor_restrict_unprivileged_userns=1); either lift it with \
                 `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or load an AppArmor \
                 profile for the mayfly binary that contains the rule `userns,`"
            ),
        }
    }
}

fn read_sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Returns the host settings that block unprivileged user namespaces, first the most likely.
pub fn userns_blockers() -> Vec<UsernsBlocker> {
    let mut blockers = Vec::new();
    if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        blockers.push(UsernsBlocker::DebianSysctl);
    }
    if read_sysctl("/proc/sys/user/max_user_namespaces") == Some(0) {
        blockers.push(UsernsBlocker::MaxUserNamespacesZero);
    }
    if read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        blockers.push(UsernsBlocker::AppArmorRestriction);
    }
    blockers
}

/// Formats blockers as one sentence for an error message.
pub fn describe_blockers(blockers: &[UsernsBlocker]) -> String {
    if blockers.is_empty() {
        return "no known host setting explains it; check that the kernel supports user \
                namespaces (CONFIG_USER_NS) and that no seccomp or LSM policy forbids them"
            .to_owned();
    }
    blockers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; also ")
}

/// Why a setuid ID-map helper cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelperProblem {
    /// The helper is not installed.
    Missing { name: &'static str },
    /// The helper exists but lacks the setuid bit or is not owned by root.
    NotSetuid { path: PathBuf },
}

impl fmt::Display for HelperProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { name } => write!(
                f,
                "{name} was not found in /usr/bin, /bin or /usr/sbin; install it with \
                 `apt-get install uidmap`"
            ),
            Self::NotSetuid { path } => write!(
                f,
                "{} is not setuid root; reinstall it with `apt-get install --reinstall uidmap`",
                path.display()
            ),
        }
    }
}

/// Finds a setuid-root helper such as `newuidmap`.
pub fn find_setuid_helper(name: &'static str) -> Result<PathBuf, HelperProblem> {
    let candidates = ["/usr/bin", "/bin", "/usr/sbin", "/usr/local/bin"];
    let path = candidates
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .ok_or(HelperProblem::Missing { name })?;

    let meta = std::fs::metadata(&path).map_err(|_| HelperProblem::Missing { name })?;
    let setuid = meta.permissions().mode() & libc::S_ISUID != 0;
    if !setuid || std::os::unix::fs::MetadataExt::uid(&meta) != 0 {
        return Err(HelperProblem::NotSetuid { path });
    }
    Ok(path)
}

/// Counts the threads of the calling process from `/proc/self/task`.
pub fn thread_count() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}
