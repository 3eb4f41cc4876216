//! Keys that the Compose Specification defines, so that a warning can tell a key mayfly
//! does not implement from a misspelt one. Taken from the specification's services and
//! top-level sections (compose-spec, 2025).

/// Top-level keys.
pub(super) const TOP_LEVEL: &[&str] = &[
    "version", "name", "include", "services", "networks", "volumes", "configs", "secrets", "models",
];

/// Keys of a service definition.
pub(super) const SERVICE: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "label_file",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];

/// Keys of a `healthcheck`.
pub(super) const HEALTHCHECK: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
];

/// Keys of an `env_file` entry in the long syntax.
pub(super) const ENV_FILE: &[&str] = &["path", "required", "format"];

/// Keys of a `depends_on` entry in the long syntax.
pub(super) const DEPENDS_ON: &[&str] = &["condition", "required", "restart"];

/// Keys of a `ports` entry in the long syntax.
pub(super) const PORT: &[&str] = &[
    "name",
    "target",
    "published",
    "host_ip",
    "protocol",
    "app_protocol",
    "mode",
];

/// Keys of a `volumes` entry in the long syntax, and of its `bind` and `tmpfs` parts.
pub(super) const VOLUME: &[&str] = &[
    "type",
    "source",
    "target",
    "read_only",
    "bind",
    "volume",
    "tmpfs",
    "image",
    "consistency",
];
pub(super) const VOLUME_BIND: &[&str] = &["propagation", "create_host_path", "selinux"];
pub(super) const VOLUME_TMPFS: &[&str] = &["size", "mode"];

/// Keys of a service's `configs` entry in the long syntax.
pub(super) const SERVICE_CONFIG: &[&str] = &["source", "target", "uid", "gid", "mode"];

/// Keys of a top-level config.
pub(super) const CONFIG: &[&str] = &[
    "file",
    "environment",
    "content",
    "external",
    "name",
    "labels",
    "driver",
    "driver_opts",
    "template_driver",
];

/// `x-` keys are extensions, which Compose ignores without a word anywhere in the file.
pub(super) fn is_extension(key: &str) -> bool {
    key.starts_with("x-")
}
