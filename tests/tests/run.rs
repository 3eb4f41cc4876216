//! `mayfly run` as the unprivileged test user: the container's view from inside, exit
//! statuses, signals, standard input, mounts, the fallbacks, and that nothing outlives a
//! killed engine.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mayfly_tests::home::MayflyHome;
use mayfly_tests::{registry_available, REGISTRY_PLAIN};

/// Docker's default capability set as the kernel prints it in /proc/self/status.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

fn ready() -> Option<MayflyHome> {
    if !registry_available(REGISTRY_PLAIN) {
        return None;
    }
    let home = MayflyHome::new();
    home.run_ok(&["pull", "--quiet", "busybox"]);
    Some(home)
}

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"))
        .trim()
        .to_owned()
}

#[test]
fn run_security_settings() {
    let Some(home) = ready() else { return };
    let status = home.run_ok(&["run", "busybox", "cat", "/proc/self/status"]);
    assert_eq!(status_field(&status, "CapEff"), DOCKER_DEFAULT_CAPS);
    assert_eq!(status_field(&status, "CapBnd"), DOCKER_DEFAULT_CAPS);
    assert_eq!(status_field(&status, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&status, "Seccomp"), "2");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");

    let uid = nix::unistd::getuid().as_raw();
    let uid_map = home.run_ok(&["run", "busybox", "cat", "/proc/self/uid_map"]);
    let first: Vec<&str> = uid_map.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(first, vec!["0", &uid.to_string(), "1"], "{uid_map}");
    let gid_map = home.run_ok(&["run", "busybox", "cat", "/proc/self/gid_map"]);
    assert!(gid_map.lines().count() >= 1, "{gid_map}");

    // A syscall outside the default profile is refused.
    let unshare = home.run(&["run", "busybox", "unshare", "-U", "true"]);
    assert!(
        !unshare.status.success(),
        "unshare must be refused in a container"
    );
}

#[test]
fn run_namespaces_and_mounts() {
    let Some(home) = ready() else { return };
    let hostname = home.run_ok(&["run", "--hostname", "box1", "busybox", "hostname"]);
    assert_eq!(hostname.trim(), "box1");

    let mountinfo = home.run_ok(&["run", "busybox", "cat", "/proc/self/mountinfo"]);
    let mount_of = |point: &str| {
        mountinfo
            .lines()
            .find(|line| line.split_whitespace().nth(4) == Some(point))
            .unwrap_or_else(|| panic!("{point} is not mounted:\n{mountinfo}"))
            .to_owned()
    };
    assert!(mount_of("/").contains(" - overlay "), "root is an overlay");
    assert!(mount_of("/proc").contains(" - proc "));
    assert!(mount_of("/dev/pts").contains(" - devpts "));
    let sys = mount_of("/sys");
    assert!(
        sys.split_whitespace()
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{sys}"
    );

    // The command is not PID 1: mayfly's init is, and reaps it.
    let pids = home.run_ok(&["run", "busybox", "sh", "-c", "echo $$; cat /proc/1/comm"]);
    let mut lines = pids.lines();
    assert_ne!(lines.next(), Some("1"));
    let no_init = home.run_ok(&["run", "--no-init", "busybox", "sh", "-c", "echo $$"]);
    assert_eq!(no_init.trim(), "1");

    let network = home.run_ok(&["run", "busybox", "cat", "/proc/net/dev"]);
    assert!(network.contains("lo:"));
    assert!(
        !network.contains("eth0:"),
        "a plain run keeps loopback only: {network}"
    );
}

#[test]
fn run_image_config_semantics() {
    let Some(home) = ready() else { return };
    let env = home.run_ok(&["run", "-e", "GREETING=hi there", "busybox", "env"]);
    assert!(env.lines().any(|line| line == "GREETING=hi there"), "{env}");
    assert!(
        env.lines()
            .any(|line| line.starts_with("PATH=/usr/local/sbin")),
        "{env}"
    );
    assert!(env.lines().any(|line| line == "HOME=/root"), "{env}");

    let workdir = home.run_ok(&["run", "-w", "/srv/app", "busybox", "sh", "-c", "pwd"]);
    assert_eq!(workdir.trim(), "/srv/app");

    let nobody = home.run_ok(&["run", "-u", "nobody", "busybox", "id"]);
    assert!(
        nobody.starts_with("uid=65534(nobody) gid=65534"),
        "{nobody}"
    );
    let numeric = home.run_ok(&["run", "-u", "1234:2345", "busybox", "id", "-u"]);
    assert_eq!(numeric.trim(), "1234");
    let unknown = home.run(&["run", "-u", "ghost", "busybox", "true"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("ghost"));

    let file = home.run_ok(&[
        "run",
        "-w",
        "/srv",
        "--new-file",
        "index.html=Hello, world!",
        "busybox",
        "cat",
        "/srv/index.html",
    ]);
    assert_eq!(file, "Hello, world!");

    let entrypoint = home.run_ok(&["run", "--entrypoint", "echo", "busybox", "a", "b"]);
    assert_eq!(entrypoint.trim(), "a b");
}

#[test]
fn run_exit_statuses() {
    let Some(home) = ready() else { return };
    let code = |args: &[&str]| home.run(args).status.code();
    assert_eq!(code(&["run", "busybox", "true"]), Some(0));
    assert_eq!(code(&["run", "busybox", "sh", "-c", "exit 42"]), Some(42));
    assert_eq!(
        code(&["run", "--new-file", "/script=echo hi", "busybox", "/script"]),
        Some(126)
    );
    assert_eq!(code(&["run", "busybox", "no-such-command"]), Some(127));
    assert_eq!(
        code(&["run", "busybox", "sh", "-c", "kill -9 $$"]),
        Some(137)
    );
    assert_eq!(
        code(&["run", "--no-init", "busybox", "sh", "-c", "exit 7"]),
        Some(7)
    );
}

#[test]
fn run_pipes_stdin() {
    let Some(home) = ready() else { return };
    let mut child = home
        .mayfly()
        .args(["run", "-i", "busybox", "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped through\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "PIPED THROUGH\n");
}

#[test]
fn run_forwards_sigterm() {
    let Some(home) = ready() else { return };
    let (mut child, mut stdout) = start_until_ready(
        &home,
        "trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("got TERM"), "the trap ran: {rest:?}");
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "mayfly exits with the container's status"
    );
}

/// Starts `mayfly run busybox sh -c SCRIPT` and returns once the script printed `ready`.
fn start_until_ready(
    home: &MayflyHome,
    script: &str,
) -> (std::process::Child, std::process::ChildStdout) {
    let mut child = home
        .mayfly()
        .args(["run", "busybox", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    wait_for_line(&mut stdout, "ready");
    (child, stdout)
}

fn wait_for_line(reader: &mut impl std::io::Read, expected: &str) {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while reader.read(&mut byte).unwrap() == 1 {
        seen.push(byte[0]);
        if seen.ends_with(format!("{expected}\n").as_bytes()) {
            return;
        }
    }
    panic!(
        "the container ended before printing {expected:?}: {}",
        String::from_utf8_lossy(&seen)
    );
}

#[test]
fn run_bind_mounts_and_tmpfs() {
    let Some(home) = ready() else { return };
    let shared = home.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("note"), "from the host").unwrap();
    let volume = format!("{}:/data:ro", shared.display());
    let read = home.run_ok(&["run", "-v", &volume, "busybox", "cat", "/data/note"]);
    assert_eq!(read, "from the host");
    let write = home.run(&["run", "-v", &volume, "busybox", "touch", "/data/new"]);
    assert!(
        !write.status.success(),
        "a read-only bind mount must refuse writes"
    );

    let writable = format!("{}:/data", shared.display());
    home.run_ok(&[
        "run",
        "-v",
        &writable,
        "busybox",
        "sh",
        "-c",
        "echo out > /data/out",
    ]);
    assert_eq!(
        std::fs::read_to_string(shared.join("out")).unwrap(),
        "out\n"
    );

    let missing = home.run(&["run", "-v", "/no/such/dir:/data", "busybox", "true"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/dir"));

    let tmpfs = home.run_ok(&[
        "run",
        "--tmpfs",
        "/scratch",
        "busybox",
        "cat",
        "/proc/self/mountinfo",
    ]);
    assert!(
        tmpfs
            .lines()
            .any(|line| line.contains(" /scratch ") && line.contains(" - tmpfs ")),
        "{tmpfs}"
    );
}

#[test]
fn run_fallbacks_by_configuration() {
    let Some(home) = ready() else { return };
    let single = home
        .mayfly()
        .env("MAYFLY_ID_MAP", "single")
        .args(["run", "busybox", "cat", "/proc/self/uid_map"])
        .output()
        .unwrap();
    assert!(single.status.success(), "{single:?}");
    let map = String::from_utf8_lossy(&single.stdout);
    assert_eq!(
        map.lines().count(),
        1,
        "a single-ID map has one line: {map}"
    );

    let copied = home
        .mayfly()
        .env("MAYFLY_STORAGE", "copy")
        .args(["run", "busybox", "cat", "/proc/self/mountinfo"])
        .output()
        .unwrap();
    assert!(copied.status.success(), "{copied:?}");
    let mountinfo = String::from_utf8_lossy(&copied.stdout);
    let root = mountinfo
        .lines()
        .find(|line| line.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    assert!(
        !root.contains(" - overlay "),
        "the copied fallback is no overlay: {root}"
    );
}

#[test]
fn run_python_and_mariadb() {
    if !registry_available(REGISTRY_PLAIN) {
        return;
    }
    let home = MayflyHome::new();
    let two = home.run_ok(&["run", "python:3.11", "python", "-c", "print(1+1)"]);
    assert_eq!(two, "2\n");
    let version = home.run_ok(&["run", "mariadb:10.11", "mysqld", "--version"]);
    assert!(version.contains("MariaDB"), "{version}");
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn run_killed_engine_leaves_nothing() {
    let Some(home) = ready() else { return };
    let marker = format!("4242.{}", std::process::id());
    let (mut child, _stdout) = start_until_ready(&home, &format!("echo ready; sleep {marker}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the container's sleep never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = Instant::now();
    while !processes_with(&marker).is_empty() {
        assert!(
            killed_at.elapsed() < Duration::from_secs(1),
            "container processes outlived the killed engine by a second"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let home_path = home.path().to_string_lossy().into_owned();
    assert!(
        !host_mounts.contains(&home_path),
        "a container mount leaked into the host namespace"
    );

    // The dead engine's container directory is removed by the next start.
    let containers = home.data_dir().join("mayfly/containers");
    let leftover = count_dirs(&containers);
    assert!(leftover >= 1, "the killed run left its state directory");
    home.run_ok(&["run", "busybox", "true"]);
    assert_eq!(
        count_dirs(&containers),
        0,
        "the next start removed the dead run's state"
    );
}

fn count_dirs(path: &Path) -> usize {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn run_missing_image_is_pulled() {
    if !registry_available(REGISTRY_PLAIN) {
        return;
    }
    let home = MayflyHome::new();
    let output = Command::new(mayfly_tests::home::mayfly_binary())
        .envs(home.mayfly().get_envs().filter_map(|(k, v)| Some((k, v?))))
        .args(["run", "busybox", "echo", "pulled on demand"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "pulled on demand\n"
    );
}

#[test]
fn run_joins_network_sandbox() {
    let Some(home) = ready() else { return };
    let script = "cat /etc/resolv.conf; \
                  busybox nslookup web1 | grep -A1 '^Name:'; \
                  echo x | nc -w 2 127.0.0.1 5000 && echo reached-host-loopback; \
                  echo x | nc -w 2 10.89.0.1 5000 && echo reached-gateway-port; \
                  echo done";
    let output = home.run_ok(&[
        "run",
        "--network",
        "sandbox",
        "--hostname",
        "web1",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert!(output.contains("nameserver 10.89.0.1"), "{output}");
    assert!(output.contains("search mayfly.internal"), "{output}");
    assert!(
        output.contains("Name:\tweb1.mayfly.internal"),
        "the DNS responder answers the container's own name: {output}"
    );
    assert!(output.contains("Address: 10.89.0."), "{output}");
    // The registry listens on the host's 127.0.0.1:5000; the container must not reach it.
    assert!(!output.contains("reached-host-loopback"), "{output}");
    assert!(!output.contains("reached-gateway-port"), "{output}");
    assert!(output.ends_with("done\n"), "{output}");
}

#[test]
fn run_passes_options_after_image() {
    let Some(home) = ready() else { return };
    let echoed = home.run_ok(&["run", "busybox", "echo", "-u", "nobody", "-e", "X"]);
    assert_eq!(echoed, "-u nobody -e X\n");
    let entrypoint = home.run_ok(&["run", "--entrypoint", "id", "busybox", "-u", "nobody"]);
    assert_eq!(entrypoint.trim(), "65534");

    let tty = home.run(&["run", "-t", "busybox", "true"]);
    assert!(
        !tty.status.success(),
        "-t without a terminal must be refused"
    );
    assert!(String::from_utf8_lossy(&tty.stderr).contains("terminal"));
}

#[test]
fn prune_keeps_layers_in_use() {
    let Some(home) = ready() else { return };
    let (mut child, mut stdout) = start_until_ready(&home, "echo ready; sleep 2; ls /bin/sh");

    home.run_ok(&["rmi", "busybox"]);
    let pruned = home.run_ok(&["prune"]);
    assert!(pruned.contains("Kept 1 unreferenced layers"), "{pruned}");

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(
        rest, "/bin/sh\n",
        "the running container still sees its files"
    );
    assert!(child.wait().unwrap().success());

    let after = home.run_ok(&["prune"]);
    assert!(after.contains("and 1 unpacked layers"), "{after}");
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn run_publishes_tcp_port() {
    let Some(home) = ready() else { return };
    let port = free_port();
    let publish = format!("{port}:8080");
    let mut child = home
        .mayfly()
        .args([
            "run",
            "-p",
            &publish,
            "busybox",
            "sh",
            "-c",
            "mkdir /www; echo published > /www/index.html; echo ready; httpd -f -p 8080 -h /www",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let guard = KillOnDrop(child.id());
    wait_for_line(&mut stdout, "ready");

    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        match http_get(port, "/index.html") {
            Ok(response) if response.contains("published") => break response,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("no answer through the published port: {other:?}"),
        }
    };
    assert!(
        response.lines().next().unwrap_or("").contains(" 200 "),
        "{response}"
    );

    // The port is taken now, so a second publish of it fails and names it.
    let taken = home.run(&["run", "-p", &publish, "busybox", "true"]);
    assert!(!taken.status.success());
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains(&port.to_string()),
        "the error names the port"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
    // The process is reaped, so its PID may belong to another process now: no kill on drop.
    std::mem::forget(guard);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the published port closes with mayfly"
    );
}

/// Kills a mayfly process when a failed assertion unwinds past it, so that it does not keep
/// the test's output pipes open.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
