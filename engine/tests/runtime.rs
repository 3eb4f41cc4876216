//! End-to-end tests of the bootstrap and the container runtime on the real kernel.
//!
//! The engine must run as an unprivileged user. `scripts/test` runs test binaries as that user.
//! Started directly as root, this binary re-executes itself as the user named by
//! `MAYFLY_TEST_USER` (default `mayfly-ci`) with a private data directory. When that user does
//! not exist, every test reports "skipped: <reason>". Tests that need another engine
//! configuration (copied storage, a single-ID map, an engine to kill) run this binary again,
//! from the host namespaces, in a scenario mode selected by `MAYFLY_TEST_SCENARIO`.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcessStdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::{Arguments, Failed, Trial};
use mayfly_engine::bootstrap::{self, Bootstrap, BootstrapOptions, Storage};
use mayfly_engine::health_check::{
    wait_until_healthy, CommandHealthError, HealthCheck, HealthTest,
};
use mayfly_engine::runtime::{
    self, ContainerProcess, ContainerSpec, ExecOutcome, ExitStatus, ProcessHandle, RuntimeError,
    Stdio,
};
use nix::sys::signal::Signal;

const USER_VAR: &str = "MAYFLY_TEST_USER";
const SCENARIO_VAR: &str = "MAYFLY_TEST_SCENARIO";
const DEFAULT_USER: &str = "mayfly-ci";
/// Set to run as root without switching user, to exercise the bootstrap's root path.
const AS_ROOT_VAR: &str = "MAYFLY_TEST_AS_ROOT";

/// Docker's default capabilities as the kernel's bit mask (CapEff of `docker run`).
const DOCKER_CAPS: &str = "00000000a80425fb";

static ENGINE: OnceLock<Engine> = OnceLock::new();
static HOST_SIDE: OnceLock<HostSide> = OnceLock::new();
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

struct Engine {
    bootstrap: Bootstrap,
    rootfs: PathBuf,
}

fn main() {
    runtime::init_if_requested();

    let as_root = std::env::var_os(AS_ROOT_VAR).is_some();
    if nix::unistd::Uid::current().is_root() && !as_root {
        std::process::exit(delegate_to_user());
    }
    if let Ok(scenario) = std::env::var(SCENARIO_VAR) {
        std::process::exit(run_scenario(&scenario));
    }

    // Scenarios bootstrap engines of their own, so they start from the host namespaces,
    // before this process enters its engine namespace.
    let _ = HOST_SIDE.set(HostSide::run());

    let options = BootstrapOptions::from_env().expect("valid MAYFLY_* settings");
    let bootstrap = bootstrap::enter(&options).expect("bootstrap");
    let rootfs = build_rootfs(&bootstrap.state_dirs().data.join("test-rootfs"))
        .expect("busybox root file system");
    let _ = ENGINE.set(Engine { bootstrap, rootfs });

    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials()).exit();
}

type TestFn = fn() -> Result<()>;

fn trials() -> Vec<Trial> {
    let tests: Vec<(&'static str, TestFn)> = vec![
        ("uid_map_matches_bootstrap", uid_map_matches_bootstrap),
        ("docker_capabilities", docker_capabilities),
        ("seccomp_and_no_new_privs", seccomp_and_no_new_privs),
        ("seccomp_denies_unshare", seccomp_denies_unshare),
        ("hostname_and_etc_files", hostname_and_etc_files),
        ("mount_table", mount_table),
        ("pid1_is_init", pid1_is_init),
        ("network_has_only_loopback_up", network_has_only_loopback_up),
        ("no_init_runs_command_as_pid1", no_init_runs_command_as_pid1),
        ("env_and_created_workdir", env_and_created_workdir),
        ("exit_statuses", exit_statuses),
        ("sigterm_forwarded_to_command", sigterm_forwarded_to_command),
        ("kill_after_grace", kill_after_grace),
        ("stdin_piped", stdin_piped),
        ("bind_mount_read_only", bind_mount_read_only),
        ("bind_source_missing", bind_source_missing),
        ("user_switch", user_switch),
        ("tty_allocated_in_container", tty_allocated_in_container),
        ("many_layers_mount", many_layers_mount),
        ("whiteouts_hide_lower_files", whiteouts_hide_lower_files),
        ("copy_storage_forced", copy_storage_forced),
        ("single_id_map_forced", single_id_map_forced),
        ("engine_kill_leaves_nothing", engine_kill_leaves_nothing),
        ("parent_forwards_sigterm", parent_forwards_sigterm),
        ("exec_sees_container", exec_sees_container),
        ("exec_as_container_user", exec_as_container_user),
        ("exec_exit_codes", exec_exit_codes),
        ("exec_timeout_kills_group", exec_timeout_kills_group),
        ("exec_status_apart_from_main", exec_status_apart_from_main),
        (
            "exec_ends_when_container_exits",
            exec_ends_when_container_exits,
        ),
        ("exec_needs_started_init", exec_needs_started_init),
        ("health_check_turns_healthy", health_check_turns_healthy),
        (
            "health_check_fails_after_retries",
            health_check_fails_after_retries,
        ),
        ("health_check_probe_timeout", health_check_probe_timeout),
        ("health_check_deadline", health_check_deadline),
    ];
    tests
        .into_iter()
        .map(|(name, test)| {
            Trial::test(name, move || {
                test().map_err(|e| Failed::from(format!("{e:#}")))
            })
        })
        .collect()
}

// ----- delegation from root to the unprivileged user -----

/// Runs this binary again as the test user; returns its exit status.
fn delegate_to_user() -> i32 {
    let name = std::env::var(USER_VAR).unwrap_or_else(|_| DEFAULT_USER.to_owned());
    let Some(user) = nix::unistd::User::from_name(&name).ok().flatten() else {
        return report_skipped(&format!(
            "user {name} does not exist (set {USER_VAR} or create it)"
        ));
    };

    let home = tempfile::Builder::new()
        .prefix("mayfly-engine-test-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    nix::unistd::chown(home.path(), Some(user.uid), Some(user.gid)).expect("chown temp dir");

    let exe = std::env::current_exe().expect("current exe");
    let status = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env("XDG_RUNTIME_DIR", home.path().join("run"))
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .status()
        .expect("run the tests as the test user");
    status.code().unwrap_or(1)
}

fn report_skipped(reason: &str) -> i32 {
    let args = Arguments::from_args();
    let trials = trials()
        .into_iter()
        .map(|t| {
            let name = t.name().to_owned();
            let reason = reason.to_owned();
            Trial::test(name, move || {
                println!("skipped: {reason}");
                Ok(())
            })
            .with_ignored_flag(true)
        })
        .collect();
    eprintln!("skipped: {reason}");
    if libtest_mimic::run(&args, trials).has_failed() {
        101
    } else {
        0
    }
}

// ----- the test root file system and container helpers -----

/// Builds a root file system with static busybox, its applets and an /etc/passwd.
fn build_rootfs(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        return Ok(dir.to_owned());
    }
    let staging = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&staging);
    for sub in ["bin", "etc", "tmp", "root", "home/user"] {
        std::fs::create_dir_all(staging.join(sub))?;
    }
    std::fs::set_permissions(staging.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy("/bin/busybox", staging.join("bin/busybox"))
        .context("copy /bin/busybox (install busybox-static)")?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8(list.stdout)?.lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", staging.join("bin").join(applet))?;
        }
    }
    std::fs::write(
        staging.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )?;
    std::fs::write(
        staging.join("etc/group"),
        "root:x:0:\ntty:x:5:\nuser:x:1000:\n",
    )?;
    std::fs::write(staging.join("etc/hosts"), "127.0.0.1 image-hosts\n")?;
    std::os::unix::fs::chown(staging.join("home/user"), Some(1000), Some(1000)).ok();
    std::fs::rename(&staging, dir)?;
    Ok(dir.to_owned())
}

fn engine() -> &'static Engine {
    ENGINE.get().expect("engine bootstrapped in main")
}

fn spec(args: &[&str]) -> ContainerSpec {
    let engine = engine();
    let mut oci = runtime::default_spec();
    let process = oci.process_mut().as_mut().expect("default process");
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    ContainerSpec {
        id: format!(
            "t{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ),
        oci,
        layers: vec![engine.rootfs.clone()],
        storage: engine.bootstrap.storage(),
        containers_dir: engine.bootstrap.state_dirs().containers.clone(),
        stdin: Stdio::Null,
        stdout: Stdio::Piped,
        stderr: Stdio::Piped,
        no_init: false,
        hosts: None,
        resolv_conf: None,
    }
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Starts a container, collects its output and waits for it.
fn run(spec: &ContainerSpec) -> Result<Output> {
    let mut process = runtime::spawn(spec)?;
    process.start()?;
    let (stdout, stderr) = collect(&mut process);
    let status = process.wait_blocking()?;
    Ok(Output {
        status,
        stdout: stdout.join().expect("reader thread"),
        stderr: stderr.join().expect("reader thread"),
    })
}

type Reader = std::thread::JoinHandle<String>;

fn collect(process: &mut ContainerProcess) -> (Reader, Reader) {
    let read_all = |file: Option<std::fs::File>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut file) = file {
                let _ = file.read_to_string(&mut text);
            }
            text
        })
    };
    (
        read_all(process.take_stdout()),
        read_all(process.take_stderr()),
    )
}

fn sh(script: &str) -> ContainerSpec {
    spec(&["sh", "-c", script])
}

fn run_ok(spec: &ContainerSpec) -> Result<String> {
    let output = run(spec)?;
    ensure!(
        output.status == ExitStatus::Exited(0),
        "container exited with {}; stderr: {}",
        output.status,
        output.stderr
    );
    Ok(output.stdout)
}

fn status_field(status: &str, field: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

// ----- tests -----

fn uid_map_matches_bootstrap() -> Result<()> {
    let out = run_ok(&sh(
        "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map",
    ))?;
    let mapping = engine().bootstrap.id_mapping();
    let (uids, gids) = out.split_once("--\n").context("separator")?;
    let normalize = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let expected = |ranges: &[bootstrap::IdRange]| {
        ranges
            .iter()
            .map(|r| format!("{} {} {}", r.container, r.host, r.size))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(normalize(uids), expected(&mapping.uids));
    assert_eq!(normalize(gids), expected(&mapping.gids));
    Ok(())
}

fn docker_capabilities() -> Result<()> {
    let out = run_ok(&sh("cat /proc/self/status"))?;
    assert_eq!(status_field(&out, "CapEff").as_deref(), Some(DOCKER_CAPS));
    assert_eq!(status_field(&out, "CapPrm").as_deref(), Some(DOCKER_CAPS));
    assert_eq!(status_field(&out, "CapBnd").as_deref(), Some(DOCKER_CAPS));
    assert_eq!(
        status_field(&out, "CapInh").as_deref(),
        Some("0000000000000000")
    );
    assert_eq!(
        status_field(&out, "CapAmb").as_deref(),
        Some("0000000000000000")
    );
    Ok(())
}

fn seccomp_and_no_new_privs() -> Result<()> {
    let out = run_ok(&sh("cat /proc/self/status"))?;
    assert_eq!(status_field(&out, "Seccomp").as_deref(), Some("2"));
    assert_eq!(status_field(&out, "NoNewPrivs").as_deref(), Some("1"));
    Ok(())
}

fn seccomp_denies_unshare() -> Result<()> {
    let out = run(&sh("unshare -n true"))?;
    ensure!(
        out.status != ExitStatus::Exited(0),
        "unshare succeeded: {}",
        out.stderr
    );
    ensure!(
        out.stderr.contains("Operation not permitted"),
        "expected EPERM, stderr: {}",
        out.stderr
    );
    Ok(())
}

fn hostname_and_etc_files() -> Result<()> {
    let mut spec = sh("hostname; cat /etc/hostname; cat /etc/hosts; cat /etc/resolv.conf");
    spec.oci.set_hostname(Some("box1".to_owned()));
    spec.hosts = Some("10.0.0.5 box1\n".to_owned());
    spec.resolv_conf = Some("nameserver 10.0.0.1\n".to_owned());
    let out = run_ok(&spec)?;
    assert_eq!(out, "box1\nbox1\n10.0.0.5 box1\nnameserver 10.0.0.1\n");
    Ok(())
}

fn mount_table() -> Result<()> {
    let out = run_ok(&sh("cat /proc/self/mountinfo"))?;
    // mountinfo: id parent major:minor root mountpoint options ... - fstype source superopts
    let mounts: Vec<(String, String, String)> = out
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some((
                fields[4].to_owned(),
                fields[5].to_owned(),
                fields.get(dash + 1)?.to_string(),
            ))
        })
        .collect();
    let find = |point: &str| mounts.iter().find(|(p, _, _)| p == point);

    let root_type = if engine().bootstrap.storage() == Storage::Overlay {
        "overlay"
    } else {
        "ext4"
    };
    let root = find("/").context("no / mount")?;
    if root_type == "overlay" {
        assert_eq!(root.2, "overlay");
    }
    assert_eq!(find("/proc").context("no /proc")?.2, "proc");
    assert_eq!(find("/dev").context("no /dev")?.2, "tmpfs");
    assert_eq!(find("/dev/pts").context("no /dev/pts")?.2, "devpts");
    assert_eq!(find("/dev/shm").context("no /dev/shm")?.2, "tmpfs");
    assert_eq!(find("/dev/mqueue").context("no /dev/mqueue")?.2, "mqueue");
    let sys = find("/sys").context("no /sys")?;
    ensure!(
        sys.1.split(',').any(|o| o == "ro"),
        "/sys is not read-only: {}",
        sys.1
    );
    let proc_sys = find("/proc/sys").context("no /proc/sys")?;
    ensure!(
        proc_sys.1.split(',').any(|o| o == "ro"),
        "/proc/sys is not read-only"
    );
    for masked in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/sys/firmware",
    ] {
        if Path::new(masked).exists() {
            ensure!(find(masked).is_some(), "{masked} is not masked");
        }
    }
    let root_options = &find("/").context("no / mount")?.1;
    ensure!(
        root_options.split(',').any(|o| o == "rw"),
        "/ is not writable: {root_options}\n{out}"
    );
    Ok(())
}

fn pid1_is_init() -> Result<()> {
    let out = run_ok(&sh(
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$; ls /proc | grep -c '^[0-9]'",
    ))?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "mayfly-init");
    assert_eq!(lines[1], "2");
    Ok(())
}

fn network_has_only_loopback_up() -> Result<()> {
    let out = run_ok(&sh("ls /sys/class/net; cat /sys/class/net/lo/flags"))?;
    // 0x9 is IFF_UP | IFF_LOOPBACK.
    assert_eq!(out, "lo\n0x9\n");
    Ok(())
}

fn no_init_runs_command_as_pid1() -> Result<()> {
    let mut spec = sh("echo $$");
    spec.no_init = true;
    assert_eq!(run_ok(&spec)?, "1\n");
    Ok(())
}

fn env_and_created_workdir() -> Result<()> {
    let mut spec = sh("echo $FOO; pwd; ls -ld . | cut -c1-10");
    let process = spec.oci.process_mut().as_mut().context("process")?;
    process.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar baz".into()]));
    process.set_cwd("/srv/app/data".into());
    assert_eq!(run_ok(&spec)?, "bar baz\n/srv/app/data\ndrwxr-xr-x\n");
    Ok(())
}

fn exit_statuses() -> Result<()> {
    let cases: [(&[&str], ExitStatus); 5] = [
        (&["true"], ExitStatus::Exited(0)),
        (&["sh", "-c", "exit 42"], ExitStatus::Exited(42)),
        (&["/etc/passwd"], ExitStatus::Exited(126)),
        (&["no-such-command"], ExitStatus::Exited(127)),
        (&["sh", "-c", "kill -9 $$"], ExitStatus::Exited(137)),
    ];
    for (args, expected) in cases {
        let out = run(&spec(args))?;
        ensure!(
            out.status == expected,
            "{args:?}: expected {expected}, got {} ({})",
            out.status,
            out.stderr
        );
    }
    let mut no_init = spec(&["no-such-command"]);
    no_init.no_init = true;
    let out = run(&no_init)?;
    assert_eq!(out.status, ExitStatus::Exited(127));
    assert!(
        out.stderr.contains("executable file not found"),
        "stderr: {}",
        out.stderr
    );
    Ok(())
}

/// Starts a script that prints "ready" once its trap is set, and waits for that line.
fn start_trapping(script: &str) -> Result<(ContainerProcess, BufReader<std::fs::File>)> {
    start_until_ready(&sh(script))
}

/// Starts a container whose command prints "ready" once set up, and waits for that line.
fn start_until_ready(spec: &ContainerSpec) -> Result<(ContainerProcess, BufReader<std::fs::File>)> {
    let mut process = runtime::spawn(spec)?;
    process.start()?;
    let mut stdout = BufReader::new(process.take_stdout().context("stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    ensure!(line == "ready\n", "unexpected first line {line:?}");
    Ok((process, stdout))
}

fn sigterm_forwarded_to_command() -> Result<()> {
    let (mut process, mut stdout) = start_trapping(
        "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
    )?;
    process.signal(Signal::SIGTERM)?;
    let status = process.wait_blocking()?;
    let mut rest = String::new();
    stdout.read_to_string(&mut rest)?;
    assert_eq!(rest, "got-term\n");
    assert_eq!(status, ExitStatus::Exited(3));
    Ok(())
}

fn kill_after_grace() -> Result<()> {
    let (mut process, _stdout) =
        start_trapping("trap '' TERM; echo ready; while :; do sleep 0.1; done")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let status = runtime.block_on(process.kill_after(Duration::from_millis(300)))?;
    assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
    ensure!(
        started.elapsed() >= Duration::from_millis(300),
        "SIGKILL came before the grace period ended"
    );
    Ok(())
}

fn stdin_piped() -> Result<()> {
    let mut spec = spec(&["cat"]);
    spec.stdin = Stdio::Piped;
    let mut process = runtime::spawn(&spec)?;
    process.start()?;
    let mut stdin = process.take_stdin().context("stdin")?;
    let (stdout, _stderr) = collect(&mut process);
    stdin.write_all(b"hello through the pipe\n")?;
    drop(stdin);
    assert_eq!(process.wait_blocking()?, ExitStatus::Exited(0));
    assert_eq!(stdout.join().expect("reader"), "hello through the pipe\n");
    Ok(())
}

fn bind_mount_read_only() -> Result<()> {
    let host_dir = engine()
        .bootstrap
        .state_dirs()
        .data
        .join(format!("bind-{}", std::process::id()));
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("file"), "from host")?;
    let mut spec =
        sh("cat /data/file; echo; touch /data/new 2>/dev/null && echo writable || echo read-only");
    let mount = oci_spec::runtime::MountBuilder::default()
        .destination("/data")
        .typ("bind")
        .source(&host_dir)
        .options(vec!["rbind".to_owned(), "ro".to_owned()])
        .build()?;
    spec.oci.set_mounts(Some(vec![mount]));
    let out = run_ok(&spec)?;
    std::fs::remove_dir_all(&host_dir)?;
    assert_eq!(out, "from host\nread-only\n");
    Ok(())
}

fn bind_source_missing() -> Result<()> {
    let mut spec = sh("true");
    let mount = oci_spec::runtime::MountBuilder::default()
        .destination("/data")
        .typ("bind")
        .source("/nonexistent/mayfly-test")
        .build()?;
    spec.oci.set_mounts(Some(vec![mount]));
    match runtime::spawn(&spec) {
        Err(RuntimeError::BindSource { path, .. }) => {
            assert_eq!(path, Path::new("/nonexistent/mayfly-test"));
            Ok(())
        }
        Err(other) => bail!("expected BindSource, got {other}"),
        Ok(_) => bail!("spawn succeeded with a missing bind source"),
    }
}

fn user_switch() -> Result<()> {
    if engine().bootstrap.id_mapping().contiguous_uids() < 1001 {
        println!("skipped: the engine has a single-ID map");
        return Ok(());
    }
    let mut spec = sh("id -u; id -g; id -G; cat /proc/self/status | grep CapEff");
    let process = spec.oci.process_mut().as_mut().context("process")?;
    let user = oci_spec::runtime::UserBuilder::default()
        .uid(1000u32)
        .gid(1000u32)
        .additional_gids(vec![1000u32, 5])
        .build()?;
    process.set_user(user);
    let out = run_ok(&spec)?;
    assert_eq!(out, "1000\n1000\n1000 5\nCapEff:\t0000000000000000\n");
    Ok(())
}

fn tty_allocated_in_container() -> Result<()> {
    let mut spec = sh("tty; stty size");
    let process = spec.oci.process_mut().as_mut().context("process")?;
    process.set_terminal(Some(true));
    let mut container = runtime::spawn(&spec)?;
    container.resize_tty(33, 101)?;
    let mut master = container.take_tty().context("no terminal master")?;
    container.start()?;
    let status = container.wait_blocking()?;
    // The slave is closed once the command exits; reading then ends with EIO.
    let mut out = Vec::new();
    let mut buffer = [0u8; 1024];
    while let Ok(n) = master.read(&mut buffer) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buffer[..n]);
    }
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(out, "/dev/pts/0\n33 101\n");
    Ok(())
}

/// Creates a layer directory named `name` under the data dir, replacing an older one.
fn fresh_layer(name: &str) -> Result<PathBuf> {
    let dir = engine()
        .bootstrap
        .state_dirs()
        .data
        .join("test-layers")
        .join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn many_layers_mount() -> Result<()> {
    // 60 layers with long paths exceed the one-page limit of overlay's classic option string.
    let mut layers = vec![engine().rootfs.clone()];
    for index in 0..60 {
        let layer = fresh_layer(&format!("many-{index:02}-{}", "x".repeat(60)))?;
        std::fs::create_dir(layer.join("layers"))?;
        std::fs::write(layer.join("layers").join(index.to_string()), "")?;
        std::fs::write(layer.join("top"), index.to_string())?;
        layers.push(layer);
    }
    let mut spec = sh("ls /layers | wc -l; cat /top");
    spec.layers = layers;
    let out = run_ok(&spec)?;
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["60", "59"]);
    Ok(())
}

/// Layers in overlay format: a 0:0 character device deletes a lower file, and an opaque
/// directory hides the lower directory's content. Checked with the engine's storage mode.
fn whiteouts_hide_lower_files() -> Result<()> {
    let upper = fresh_layer(&format!("whiteout-{:?}", engine().bootstrap.storage()))?;
    std::fs::create_dir_all(upper.join("bin"))?;
    nix::sys::stat::mknod(
        &upper.join("bin/vi"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .context("mknod of a whiteout")?;
    std::fs::create_dir_all(upper.join("etc"))?;
    std::fs::write(upper.join("etc/added"), "")?;
    set_opaque(&upper.join("etc"))?;

    let mut spec = sh("ls /bin/vi 2>/dev/null || echo no-vi; ls /bin/sh; ls /etc");
    spec.layers = vec![engine().rootfs.clone(), upper];
    let out = run_ok(&spec)?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "no-vi");
    assert_eq!(lines[1], "/bin/sh");
    assert_eq!(lines[2..], ["added"]);
    Ok(())
}

/// Marks `dir` opaque the way overlay with `userxattr` reads it.
fn set_opaque(dir: &Path) -> Result<()> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: both strings are NUL-terminated and the value pointer and length describe the
    // one-byte slice, all alive for the call.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    ensure!(
        ret == 0,
        "setxattr on {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

// ----- scenarios in a separate engine process -----

/// Results of the scenarios, gathered from the host namespaces before the bootstrap.
struct HostSide {
    copy: Result<String, String>,
    single: Result<String, String>,
    engine_kill: Result<(), String>,
    term_forward: Result<(), String>,
    host_uid: u32,
}

impl HostSide {
    fn run() -> Self {
        let text = |r: Result<String>| r.map_err(|e| format!("{e:#}"));
        Self {
            copy: text(run_scenario_process("copy", &[("MAYFLY_STORAGE", "copy")])),
            single: text(run_scenario_process(
                "single",
                &[("MAYFLY_ID_MAP", "single")],
            )),
            engine_kill: kill_engine_from_host().map_err(|e| format!("{e:#}")),
            term_forward: terminate_through_parent().map_err(|e| format!("{e:#}")),
            host_uid: nix::unistd::Uid::current().as_raw(),
        }
    }
}

fn host_side() -> &'static HostSide {
    HOST_SIDE.get().expect("scenarios ran in main")
}

/// Runs this binary in a scenario; returns its stdout. The scenario's exit status must be 0.
fn run_scenario_process(scenario: &str, extra_env: &[(&str, &str)]) -> Result<String> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command.env(SCENARIO_VAR, scenario);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let output = command.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "scenario {scenario} failed with {}: {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

fn copy_storage_forced() -> Result<()> {
    let out = host_side().copy.clone().map_err(anyhow::Error::msg)?;
    assert_eq!(
        out,
        "storage Copy\nroot not-overlay\nwritten\nwhiteouts applied\n"
    );
    Ok(())
}

fn single_id_map_forced() -> Result<()> {
    let out = host_side().single.clone().map_err(anyhow::Error::msg)?;
    let uid = host_side().host_uid;
    assert_eq!(out, format!("map 0 {uid} 1\nuid 0\nuser 1000 refused\n"));
    Ok(())
}

fn engine_kill_leaves_nothing() -> Result<()> {
    host_side().engine_kill.clone().map_err(anyhow::Error::msg)
}

fn parent_forwards_sigterm() -> Result<()> {
    host_side().term_forward.clone().map_err(anyhow::Error::msg)
}

/// Sends SIGTERM to the host-side parent of an engine: the parent forwards it, the engine
/// dies of it (no handler), its container follows, and the parent exits with 128+15.
fn terminate_through_parent() -> Result<()> {
    let marker = format!("98764{}", std::process::id());
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .env(SCENARIO_VAR, "victim")
        .env("MAYFLY_TEST_MARKER", &marker)
        .stdout(ProcessStdio::piped())
        .spawn()?;
    let result = (|| -> Result<()> {
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        lines.next().context("no engine pid")??;
        lines.next().context("no state dir line")??;
        let parent = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(parent, Signal::SIGTERM)?;
        let status = child.wait()?;
        ensure!(
            status.code() == Some(128 + libc::SIGTERM),
            "the host-side parent exited with {status}"
        );
        let deadline = Instant::now() + Duration::from_secs(1);
        while process_with_marker(&marker).is_some() {
            ensure!(
                Instant::now() < deadline,
                "container still alive 1 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Starts an engine with a sleeping container, kills the engine with SIGKILL, and checks
/// that the container dies within a second and no mount shows up in this (the host's)
/// mount namespace.
fn kill_engine_from_host() -> Result<()> {
    let marker = format!("98765{}", std::process::id());
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .env(SCENARIO_VAR, "victim")
        .env("MAYFLY_TEST_MARKER", &marker)
        .stdout(ProcessStdio::piped())
        .spawn()?;
    let result = kill_victim(&mut child, &marker);
    // Whatever failed above, no victim may outlive the test.
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn kill_victim(child: &mut std::process::Child, marker: &str) -> Result<()> {
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let engine_pid: i32 = lines.next().context("no engine pid")??.parse()?;
    let engine = nix::unistd::Pid::from_raw(engine_pid);
    let state_dir = lines.next().context("no state dir line")??;

    // The command may still be between fork and exec when the engine prints.
    let deadline = Instant::now() + Duration::from_secs(2);
    while process_with_marker(marker).is_none() {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(engine, Signal::SIGKILL);
            bail!("the container's sleep never showed up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    nix::sys::signal::kill(engine, Signal::SIGKILL)?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while process_with_marker(marker).is_some() {
        ensure!(
            Instant::now() < deadline,
            "container process still alive 1 s after the engine died"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait()?;
    ensure!(
        status.code() == Some(128 + libc::SIGKILL),
        "the host-side parent exited with {status}"
    );

    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !host_mounts.contains(&state_dir),
        "a container mount leaked into the host namespace"
    );
    ensure!(
        !host_mounts.contains(" - overlay "),
        "an overlay mount is visible on the host"
    );
    Ok(())
}

fn process_with_marker(marker: &str) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline: OsString = std::os::unix::ffi::OsStringExt::from_vec(cmdline);
            cmdline.to_string_lossy().contains(marker).then_some(pid)
        })
}

/// Entry point of a scenario process: bootstraps its own engine from the environment.
fn run_scenario(scenario: &str) -> i32 {
    let result = (|| -> Result<()> {
        let options = BootstrapOptions::from_env()?;
        let bootstrap = bootstrap::enter(&options)?;
        let rootfs = build_rootfs(&bootstrap.state_dirs().data.join("test-rootfs"))?;
        let _ = ENGINE.set(Engine { bootstrap, rootfs });
        match scenario {
            "copy" => scenario_copy(),
            "single" => scenario_single(),
            "victim" => scenario_victim(),
            other => bail!("unknown scenario {other}"),
        }
    })();
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("scenario {scenario}: {err:#}");
            1
        }
    }
}

fn scenario_copy() -> Result<()> {
    println!("storage {:?}", engine().bootstrap.storage());
    let script = "grep -q ' / / .* - overlay ' /proc/self/mountinfo && echo root overlay || echo root not-overlay; echo x > /written && echo written";
    let out = run_ok(&sh(script))?;
    print!("{out}");
    whiteouts_hide_lower_files()?;
    println!("whiteouts applied");
    Ok(())
}

fn scenario_single() -> Result<()> {
    let out = run_ok(&sh("cat /proc/self/uid_map; id -u"))?;
    let mut lines = out.lines();
    let map = lines
        .next()
        .context("no map")?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    println!("map {map}");
    println!("uid {}", lines.next().context("no uid")?);

    let mut spec = sh("true");
    let user = oci_spec::runtime::UserBuilder::default()
        .uid(1000u32)
        .gid(1000u32)
        .build()?;
    spec.oci
        .process_mut()
        .as_mut()
        .context("process")?
        .set_user(user);
    match runtime::spawn(&spec) {
        Err(RuntimeError::IdNotMapped { value: 1000, .. }) => println!("user 1000 refused"),
        Err(other) => bail!("unexpected error {other}"),
        Ok(_) => bail!("user 1000 was accepted with a single-ID map"),
    }
    Ok(())
}

fn scenario_victim() -> Result<()> {
    let marker = std::env::var("MAYFLY_TEST_MARKER")?;
    let mut spec = spec(&["sleep", &marker]);
    spec.stdout = Stdio::Inherit;
    let mut process = runtime::spawn(&spec)?;
    process.start()?;
    println!("{}", std::process::id());
    println!("{}", process.state_dir().context("state dir")?.display());
    std::io::stdout().flush()?;
    process.wait_blocking()?;
    bail!("the container exited although nobody killed it")
}

// ----- commands inside a running container, and health checks -----

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Runs `args` in the container behind `handle` from a fresh tokio runtime.
fn exec_in(handle: &ProcessHandle, args: &[&str], timeout: Duration) -> Result<ExecOutcome> {
    Ok(tokio_runtime()?.block_on(handle.exec(strings(args), timeout))?)
}

const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns a container spec that sleeps until the test removes it.
fn sleeper() -> ContainerSpec {
    sh("echo ready; exec sleep 100")
}

fn exec_sees_container() -> Result<()> {
    let mut spec = sh("echo inside > /tmp/marker; echo ready; exec sleep 100");
    spec.oci.set_hostname(Some("box7".to_owned()));
    let process = spec.oci.process_mut().as_mut().context("process")?;
    process.set_env(Some(vec!["PATH=/bin".into(), "FOO=bar baz".into()]));
    process.set_cwd("/srv".into());
    let (mut container, _stdout) = start_until_ready(&spec)?;

    let script = "hostname; cat /tmp/marker; id -u; pwd; echo \"$FOO\"; \
                  tr '\\0' ' ' < /proc/1/cmdline; echo; \
                  grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
                  echo to-stderr >&2";
    let outcome = exec_in(&container.handle(), &["sh", "-c", script], EXEC_TIMEOUT)?;
    assert_eq!(outcome.code, Some(0), "output: {}", outcome.output);
    let lines: Vec<&str> = outcome.output.lines().map(str::trim_end).collect();
    assert_eq!(lines.first(), Some(&"box7"), "hostname");
    assert_eq!(lines.get(1), Some(&"inside"), "root file system");
    assert_eq!(lines.get(2), Some(&"0"), "uid");
    assert_eq!(lines.get(3), Some(&"/srv"), "working directory");
    assert_eq!(lines.get(4), Some(&"bar baz"), "environment");
    assert_eq!(lines.get(5), Some(&"mayfly-init"), "PID namespace");
    let status = outcome.output.as_str();
    assert_eq!(status_field(status, "CapEff").as_deref(), Some(DOCKER_CAPS));
    assert_eq!(status_field(status, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status_field(status, "Seccomp").as_deref(), Some("2"));
    assert_eq!(lines.last(), Some(&"to-stderr"), "stderr captured");
    assert!(!outcome.truncated);
    assert_eq!(container.try_wait()?, None, "the container stopped");
    container.remove()?;
    Ok(())
}

fn exec_as_container_user() -> Result<()> {
    if engine().bootstrap.id_mapping().contiguous_uids() < 1001 {
        println!("skipped: the engine has a single-ID map");
        return Ok(());
    }
    let mut spec = sleeper();
    let user = oci_spec::runtime::UserBuilder::default()
        .uid(1000u32)
        .gid(1000u32)
        .additional_gids(vec![1000u32, 5])
        .build()?;
    spec.oci
        .process_mut()
        .as_mut()
        .context("process")?
        .set_user(user);
    let (container, _stdout) = start_until_ready(&spec)?;
    let outcome = exec_in(
        &container.handle(),
        &[
            "sh",
            "-c",
            "id -u; id -g; id -G; grep CapEff /proc/self/status",
        ],
        EXEC_TIMEOUT,
    )?;
    assert_eq!(outcome.code, Some(0));
    assert_eq!(
        outcome.output,
        "1000\n1000\n1000 5\nCapEff:\t0000000000000000\n"
    );
    container.remove()?;
    Ok(())
}

fn exec_exit_codes() -> Result<()> {
    let (mut container, _stdout) = start_until_ready(&sleeper())?;
    let handle = container.handle();
    let cases: [(&[&str], i32); 5] = [
        (&["true"], 0),
        (&["sh", "-c", "exit 3"], 3),
        (&["/etc/passwd"], 126),
        (&["no-such-command"], 127),
        (&["sh", "-c", "kill -9 $$"], 137),
    ];
    for (args, expected) in cases {
        let outcome = exec_in(&handle, args, EXEC_TIMEOUT)?;
        ensure!(
            outcome.code == Some(expected),
            "{args:?}: expected {expected}, got {:?} ({})",
            outcome.code,
            outcome.output
        );
    }
    let missing = exec_in(&handle, &["no-such-command"], EXEC_TIMEOUT)?;
    assert!(
        missing.output.contains("executable file not found"),
        "output: {}",
        missing.output
    );

    let long = exec_in(&handle, &["sh", "-c", "seq 1 2000"], EXEC_TIMEOUT)?;
    assert!(long.truncated);
    assert_eq!(long.output.len(), 4096);
    assert!(long.output.ends_with("1999\n2000\n"), "{}", long.output);

    let empty = tokio_runtime()?.block_on(handle.exec(Vec::new(), EXEC_TIMEOUT));
    assert!(
        matches!(empty, Err(RuntimeError::ExecEmpty { .. })),
        "{empty:?}"
    );
    assert_eq!(container.try_wait()?, None, "the container stopped");
    container.remove()?;
    Ok(())
}

fn exec_timeout_kills_group() -> Result<()> {
    let (mut container, _stdout) = start_until_ready(&sleeper())?;
    let handle = container.handle();
    let started = Instant::now();
    let outcome = exec_in(
        &handle,
        &["sh", "-c", "echo started; sleep 30 & sleep 31; echo never"],
        Duration::from_millis(300),
    )?;
    let elapsed = started.elapsed();
    assert_eq!(outcome.code, None, "output: {}", outcome.output);
    assert_eq!(outcome.output, "started\n");
    ensure!(
        elapsed >= Duration::from_millis(300),
        "returned after {elapsed:?}"
    );
    ensure!(
        elapsed < Duration::from_secs(5),
        "returned after {elapsed:?}"
    );

    // SIGKILL went to the whole process group, the background sleep included.
    let list = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done";
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let processes = exec_in(&handle, &["sh", "-c", list], EXEC_TIMEOUT)?.output;
        let left = processes
            .lines()
            .any(|line| line.starts_with("sleep 30") || line.starts_with("sleep 31"));
        if !left {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "a timed-out process survived:\n{processes}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(container.try_wait()?, None, "the container stopped");
    let after = exec_in(&handle, &["true"], EXEC_TIMEOUT)?;
    assert_eq!(after.code, Some(0));
    container.remove()?;
    Ok(())
}

fn exec_status_apart_from_main() -> Result<()> {
    let mut spec = sh("echo ready; read line; exit 5");
    spec.stdin = Stdio::Piped;
    let (mut container, _stdout) = start_until_ready(&spec)?;
    let mut stdin = container.take_stdin().context("stdin")?;
    let handle = container.handle();
    for _ in 0..3 {
        let outcome = exec_in(&handle, &["sh", "-c", "exit 7"], EXEC_TIMEOUT)?;
        assert_eq!(outcome.code, Some(7));
    }
    assert_eq!(container.try_wait()?, None, "an exec ended the container");

    stdin.write_all(b"go\n")?;
    drop(stdin);
    assert_eq!(container.wait_blocking()?, ExitStatus::Exited(5));
    Ok(())
}

fn exec_ends_when_container_exits() -> Result<()> {
    let (mut container, _stdout) = start_until_ready(&sh("echo ready; sleep 1; exit 4"))?;
    let handle = container.handle();
    let started = Instant::now();
    let (exec, status) = tokio_runtime()?.block_on(async move {
        // The handle runs the command while another task waits for the container.
        let waiter = tokio::spawn(async move { container.wait().await });
        let exec = handle
            .exec(strings(&["sleep", "30"]), Duration::from_secs(20))
            .await;
        let status = waiter.await.expect("wait task");
        let later = handle.exec(strings(&["true"]), EXEC_TIMEOUT).await;
        assert!(
            matches!(later, Err(RuntimeError::ExecClosed { .. })),
            "{later:?}"
        );
        (exec, status)
    });
    assert!(
        matches!(exec, Err(RuntimeError::ExecContainerExited { .. })),
        "{exec:?}"
    );
    assert_eq!(status?, ExitStatus::Exited(4));
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "the exec held the container for {:?}",
        started.elapsed()
    );
    Ok(())
}

fn exec_needs_started_init() -> Result<()> {
    let mut spec = sleeper();
    spec.no_init = true;
    let mut container = runtime::spawn(&spec)?;
    let handle = container.handle();
    let early = tokio_runtime()?.block_on(handle.exec(strings(&["true"]), EXEC_TIMEOUT));
    assert!(
        matches!(early, Err(RuntimeError::NotStarted { .. })),
        "{early:?}"
    );

    container.start()?;
    let error = tokio_runtime()?
        .block_on(handle.exec(strings(&["true"]), EXEC_TIMEOUT))
        .expect_err("exec without an init");
    assert!(
        matches!(error, RuntimeError::ExecWithoutInit { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("--no-init"), "{error}");
    container.remove()?;
    Ok(())
}

fn health_check_turns_healthy() -> Result<()> {
    let mut container = runtime::spawn(&sh("sleep 1; touch /tmp/ready; exec sleep 100"))?;
    container.start()?;
    let started = Instant::now();
    // Docker's defaults: a 30 s interval and no start period.
    let check = HealthCheck::new(HealthTest::Exec(strings(&["test", "-f", "/tmp/ready"])));
    tokio_runtime()?.block_on(wait_until_healthy(
        &container.handle(),
        &check,
        started + Duration::from_secs(20),
    ))?;
    let elapsed = started.elapsed();
    ensure!(
        elapsed >= Duration::from_millis(900),
        "healthy after {elapsed:?}, before the file existed"
    );
    ensure!(
        elapsed < Duration::from_secs(5),
        "healthy only after {elapsed:?}"
    );
    container.remove()?;
    Ok(())
}

fn health_check_fails_after_retries() -> Result<()> {
    let (container, _stdout) = start_until_ready(&sleeper())?;
    let mut check = HealthCheck::new(HealthTest::Shell(
        "echo database not ready; exit 1".to_owned(),
    ));
    check.interval = Duration::from_millis(200);
    check.start_interval = Duration::from_millis(50);
    check.retries = 3;

    let started = Instant::now();
    let result = tokio_runtime()?.block_on(wait_until_healthy(
        &container.handle(),
        &check,
        started + Duration::from_secs(20),
    ));
    let error = result.err().context("the failing check passed")?;

    match &error {
        CommandHealthError::Unhealthy {
            command,
            failing_streak,
            last_output,
        } => {
            assert_eq!(command, "echo database not ready; exit 1");
            assert_eq!(*failing_streak, 3);
            assert_eq!(last_output, "database not ready\n");
        }
        other => bail!("expected Unhealthy, got {other}"),
    }

    let message = error.to_string();
    assert!(message.contains("3 times"), "{message}");
    assert!(message.contains("database not ready"), "{message}");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "unhealthy only after {:?}",
        started.elapsed()
    );
    container.remove()?;
    Ok(())
}

fn health_check_probe_timeout() -> Result<()> {
    let (mut container, _stdout) = start_until_ready(&sleeper())?;
    let mut check = HealthCheck::new(HealthTest::Shell("echo probing; sleep 10".to_owned()));
    check.interval = Duration::from_millis(100);
    check.timeout = Duration::from_millis(200);
    check.retries = 2;

    let started = Instant::now();
    let result = tokio_runtime()?.block_on(wait_until_healthy(
        &container.handle(),
        &check,
        started + Duration::from_secs(20),
    ));
    match result {
        Err(CommandHealthError::Unhealthy { last_output, .. }) => {
            assert!(last_output.contains("timed out"), "{last_output}");
            assert!(last_output.contains("probing"), "{last_output}");
        }
        other => bail!("expected Unhealthy, got {other:?}"),
    }
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "the timed-out checks took {:?}",
        started.elapsed()
    );
    assert_eq!(container.try_wait()?, None, "the container stopped");
    container.remove()?;
    Ok(())
}

fn health_check_deadline() -> Result<()> {
    let (container, _stdout) = start_until_ready(&sleeper())?;
    let mut check = HealthCheck::new(HealthTest::Shell("echo still starting; exit 1".to_owned()));
    check.start_period = Duration::from_secs(60);
    check.start_interval = Duration::from_millis(100);

    let started = Instant::now();
    let result = tokio_runtime()?.block_on(wait_until_healthy(
        &container.handle(),
        &check,
        started + Duration::from_secs(1),
    ));
    let elapsed = started.elapsed();

    match result {
        Err(CommandHealthError::DeadlineExceeded {
            last_output,
            checks,
            ..
        }) => {
            assert_eq!(last_output.as_deref(), Some("still starting\n"));
            ensure!(checks >= 2, "only {checks} checks ran");
        }
        other => bail!("expected DeadlineExceeded, got {other:?}"),
    }
    ensure!(
        elapsed >= Duration::from_secs(1),
        "gave up after {elapsed:?}"
    );
    ensure!(
        elapsed < Duration::from_secs(3),
        "gave up after {elapsed:?}"
    );
    container.remove()?;
    Ok(())
}
