//! The default seccomp filter.
//!
//! Docker's default profile is an allow-list of about 350 system calls. This runtime uses a
//! deny-list instead: every system call is allowed except the ones Docker's profile refuses
//! to a container without extra capabilities, which fail with EPERM. The container already
//! runs in a user namespace without real privilege, so the filter is a second line that
//! closes kernel attack surface (keyrings, BPF, perf, module loading, new namespaces, mount
//! API), and a deny-list does not break programs that use system calls newer than the list.
//! The price: a system call added to the kernel later is allowed until it is listed here.
//!
//! Argument rules as in Docker's profile: `clone` fails when it asks for a new namespace,
//! `clone3` fails with ENOSYS (its flags sit in memory that seccomp cannot read, and ENOSYS
//! makes glibc fall back to `clone`), and `personality` accepts only the values Docker
//! accepts. `ptrace` stays allowed, as in Docker on kernels 4.8 and later.
//!
//! NOTE: seccompiler's architecture check kills a process that makes a system call of another
//! ABI, so 32-bit x86 programs die on their first call, which Docker's profile allows.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::InitError;

/// System calls that always fail with EPERM.
const DENIED: &[libc::c_long] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_bpf,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_delete_module,
    libc::SYS_fanotify_init,
    libc::SYS_finit_module,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fsopen,
    libc::SYS_fspick,
    libc::SYS_get_mempolicy,
    libc::SYS_init_module,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_io_uring_setup,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_mbind,
    libc::SYS_mount,
    libc::SYS_mount_setattr,
    libc::SYS_move_mount,
    libc::SYS_move_pages,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_open_tree,
    libc::SYS_perf_event_open,
    libc::SYS_pivot_root,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_reboot,
    libc::SYS_request_key,
    libc::SYS_set_mempolicy,
    libc::SYS_setns,
    libc::SYS_settimeofday,
    libc::SYS_swapoff,
    libc::SYS_swapon,
    libc::SYS_syslog,
    libc::SYS_umount2,
    libc::SYS_unshare,
    libc::SYS_userfaultfd,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS__sysctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lookup_dcookie,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_nfsservctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_sysfs,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ustat,
];

/// Namespace flags that make `clone` fail.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// `personality` values Docker allows: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE, both, and the
/// query value 0xffffffff.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// x32 system calls on x86_64 carry this bit; the denied numbers are denied with it too.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Builds both filters of the default profile.
fn build() -> Result<[BpfProgram; 2], seccompiler::Error> {
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in DENIED {
        denied.insert(*nr, Vec::new());
        #[cfg(target_arch = "x86_64")]
        denied.insert(*nr | X32_SYSCALL_BIT, Vec::new());
    }

    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = *flag as u64;
            let condition = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![condition])
        })
        .collect::<Result<Vec<_>, _>>()?;
    denied.insert(libc::SYS_clone, clone_rules);

    let not_allowed = PERSONALITIES
        .iter()
        .map(|value| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *value))
        .collect::<Result<Vec<_>, _>>()?;
    denied.insert(libc::SYS_personality, vec![SeccompRule::new(not_allowed)?]);

    let deny = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        ARCH,
    )?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )?;
    Ok([deny.try_into()?, clone3.try_into()?])
}

/// Installs the default profile on the calling thread; it is inherited by every child.
pub(super) fn install() -> Result<(), InitError> {
    let filters = build().map_err(InitError::Seccomp)?;
    for filter in &filters {
        seccompiler::apply_filter(filter).map_err(InitError::Seccomp)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_compiles() {
        let [deny, clone3] = build().unwrap();
        assert!(deny.len() > DENIED.len());
        assert!(!clone3.is_empty());
    }
}
