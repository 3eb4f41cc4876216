//! Docker's defaults as an OCI runtime spec.

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, Spec, SpecBuilder, UserBuilder,
};

/// `PATH` that Docker sets when an image does not.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// `RLIMIT_NOFILE` for containers; the runtime lowers it to the engine's own hard limit,
/// because raising a hard limit needs `CAP_SYS_RESOURCE` in the initial user namespace.
const NOFILE: u64 = 1_048_576;

/// Paths Docker hides from containers (moby `oci/defaults.go`).
const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only in containers.
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Returns a spec with Docker's defaults: `sh` as root in `/`, a writable root, no hostname
/// (the container gets the kernel's default), `PATH` only in the environment, Docker's capability set in the bounding, effective and permitted sets,
/// no_new_privileges, `RLIMIT_NOFILE` 1048576, and Docker's masked and read-only paths.
///
/// The inheritable set stays empty as in Docker since 20.10.14: inheritable capabilities let
/// a non-root user gain them through file capabilities (CVE-2022-24769).
pub fn default_spec() -> Spec {
    let capabilities = DEFAULT_CAPABILITIES
        .into_iter()
        .collect::<std::collections::HashSet<_>>();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capabilities.clone())
        .effective(capabilities.clone())
        .permitted(capabilities)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()
        .expect("all fields are set");
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(NOFILE)
        .soft(NOFILE)
        .build()
        .expect("all fields are set");
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .expect("all fields are set"),
        )
        .args(vec!["sh".to_owned()])
        .env(vec![format!("PATH={DEFAULT_PATH}")])
        .cwd("/")
        .capabilities(capabilities)
        .rlimits(vec![nofile])
        .no_new_privileges(true)
        .build()
        .expect("all fields are set");
    let linux = LinuxBuilder::default()
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .build()
        .expect("all fields are set");

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .mounts(Vec::new())
        .linux(linux)
        .build()
        .expect("all fields are set");
    // The builder fills unset fields from `Spec::default()`, which has a read-only root and
    // the hostname "youki".
    spec.set_root(None);
    spec.set_hostname(None);
    spec.set_annotations(None);
    spec
}
