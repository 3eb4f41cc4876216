//! `mayfly up` and the service flags of `mayfly run`, as the unprivileged test user: a service
//! published on the host, its failures at start, UDP ports, host services reached from a
//! container, and what is left after Ctrl-C or `kill -9`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mayfly_tests::home::MayflyHome;
use mayfly_tests::{registry_available, REGISTRY_PLAIN};
use nix::sys::signal::Signal;

/// How long a busybox or python service may take from `mayfly up` to its "is up" line.
const UP_LIMIT: Duration = Duration::from_secs(30);

/// How long a `mayfly run` or a failing `mayfly up` may take before the test gives up.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Settings that keep failures and stops short.
const SHORT_TIMEOUTS: &[(&str, &str)] = &[
    ("MAYFLY_HEALTH_DEADLINE", "10s"),
    ("MAYFLY_GRACE_PERIOD", "200ms"),
    ("MAYFLY_STOP_TIMEOUT", "2s"),
];

/// A UDP echo server for python:3.11 on port 5353 that sends each datagram back, prefixed
/// with `echo:`.
const PYTHON_UDP_ECHO: &str = "import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 5353))
print('listening', flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b'echo:' + data, peer)
";

/// Returns a home with busybox pulled, or `None` (after a skip line) without the registry.
fn busybox_home() -> Option<MayflyHome> {
    if !registry_available(REGISTRY_PLAIN) {
        return None;
    }
    let home = MayflyHome::new();
    home.run_ok(&["pull", "--quiet", "busybox:latest"]);
    Some(home)
}

/// The home the python tests share, so that the 50 MB image is pulled and unpacked once per
/// test binary. It is removed when the binary exits.
static PYTHON_HOME: Mutex<Option<Arc<MayflyHome>>> = Mutex::new(None);

extern "C" fn remove_python_home() {
    let home = PYTHON_HOME.lock().map(|mut home| home.take());
    drop(home);
}

/// Returns the shared home with python:3.11 and busybox pulled, or `None` (after a skip line)
/// without the registry.
fn python_home() -> Option<Arc<MayflyHome>> {
    if !registry_available(REGISTRY_PLAIN) {
        return None;
    }
    let mut shared = PYTHON_HOME
        .lock()
        .unwrap_or_else(|error| error.into_inner());
    if let Some(home) = &*shared {
        return Some(home.clone());
    }
    let home = Arc::new(MayflyHome::new());
    home.run_ok(&["pull", "--quiet", "python:3.11"]);
    home.run_ok(&["pull", "--quiet", "busybox:latest"]);
    // SAFETY: `remove_python_home` is an `extern "C" fn` with no arguments. It only takes the
    // home out of a static mutex and drops it, and it does not unwind across the C boundary
    // because a poisoned lock is ignored and the drop only runs a command.
    let registered = unsafe { libc::atexit(remove_python_home) };
    assert_eq!(
        registered, 0,
        "atexit failed to register the home's removal"
    );
    *shared = Some(home.clone());
    Some(home)
}

/// A `mayfly` process whose standard output and error are collected line by line.
struct Mayfly {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Mayfly {
    fn spawn(home: &MayflyHome, env: &[(&str, &str)], args: &[&str]) -> Self {
        println!("$ mayfly {}", args.join(" "));
        let mut child = home
            .mayfly()
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start mayfly {args:?}: {error}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sender, stderr_lines) = mpsc::channel();
        let readers = vec![
            collect_lines(child.stdout.take().unwrap(), stdout.clone(), None),
            collect_lines(child.stderr.take().unwrap(), stderr.clone(), Some(sender)),
        ];
        Self {
            child,
            stderr_lines,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for `mayfly up` to print "press Ctrl-C to stop" and returns the addresses of its
    /// "NAME is up: ADDR/PROTOCOL -> ..." lines.
    fn wait_until_up(&mut self) -> Vec<(SocketAddr, String)> {
        let deadline = Instant::now() + UP_LIMIT;
        let mut published = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.stderr_lines.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("mayfly up printed no \"press Ctrl-C\" line within {UP_LIMIT:?}; standard error:\n{}", self.stderr())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait(RUN_LIMIT);
                    panic!(
                        "mayfly up ended ({status}) before the service was up; standard error:\n{}",
                        self.stderr()
                    )
                }
            };
            if line == "mayfly: press Ctrl-C to stop" {
                return published;
            }
            if let Some(address) = line.split(" is up: ").nth(1) {
                let (address, rest) = address
                    .split_once('/')
                    .unwrap_or_else(|| panic!("no /PROTOCOL in {line:?}"));
                let protocol = rest.split_whitespace().next().unwrap_or("").to_owned();
                let address: SocketAddr = address
                    .parse()
                    .unwrap_or_else(|error| panic!("bad address in {line:?}: {error}"));
                published.push((address, protocol));
            }
        }
    }

    fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .unwrap_or_else(|error| panic!("failed to send {signal} to mayfly: {error}"));
    }

    /// Waits for the process to exit and for its output to end; kills it and fails the test
    /// when that takes longer than `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "mayfly did not exit within {limit:?}; standard error:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.status = Some(status);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        println!("status: {status}");
        println!("stdout:\n{}", self.stdout());
        println!("stderr:\n{}", self.stderr());
        status
    }

    /// Runs `mayfly ARGS` to its end, within `limit`.
    fn output(home: &MayflyHome, env: &[(&str, &str)], args: &[&str], limit: Duration) -> Output {
        let mut mayfly = Self::spawn(home, env, args);
        let status = mayfly.wait(limit);
        Output {
            status,
            stdout: mayfly.stdout().into_bytes(),
            stderr: mayfly.stderr().into_bytes(),
        }
    }
}

impl Drop for Mayfly {
    /// Kills a mayfly that a failed assertion left running, so it does not outlive the test.
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Appends each line of `pipe` to `text`, and sends it to `lines` when given.
fn collect_lines(
    pipe: impl Read + Send + 'static,
    text: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut collected = text.lock().unwrap();
            collected.push_str(&line);
            collected.push('\n');
            drop(collected);
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    })
}

/// A process as /proc shows it. The start time distinguishes it from a later process that
/// reuses its PID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProcessId {
    pid: i32,
    start_time: u64,
    name: String,
}

fn process_id(pid: i32) -> Option<ProcessId> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may contain spaces; the fields after it are plain.
    let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
    // `rest` starts at field 3 (state); the start time is field 22.
    let start_time = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(ProcessId {
        pid,
        start_time,
        name: name.to_owned(),
    })
}

/// Returns every process below `pid`, read from the `children` files of its threads.
fn descendants(pid: i32) -> HashSet<ProcessId> {
    let mut found = HashSet::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
            {
                if let Some(id) = process_id(child) {
                    if found.insert(id) {
                        queue.push(child);
                    }
                }
            }
        }
    }
    found
}

/// Returns the processes of `recorded` that still exist, zombies included.
fn still_running(recorded: &HashSet<ProcessId>) -> Vec<ProcessId> {
    recorded
        .iter()
        .filter(|process| {
            process_id(process.pid).is_some_and(|now| now.start_time == process.start_time)
        })
        .cloned()
        .collect()
}

/// Waits up to `limit` for every process of `recorded` to be gone; returns those left.
fn wait_until_gone(recorded: &HashSet<ProcessId>, limit: Duration) -> Vec<ProcessId> {
    let deadline = Instant::now() + limit;
    loop {
        let left = still_running(recorded);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns whether a TCP connection to `address` (on loopback) is refused.
fn tcp_refused(address: SocketAddr) -> bool {
    assert!(
        address.ip().is_loopback(),
        "tests only dial loopback, not {address}"
    );
    match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
        Ok(_) => false,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

/// Sends `GET PATH HTTP/1.0` to `address` (on loopback) and returns the whole response.
fn http_get(address: SocketAddr, path: &str) -> String {
    assert!(
        address.ip().is_loopback(),
        "tests only dial loopback, not {address}"
    );
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .unwrap_or_else(|error| panic!("failed to connect to {address}: {error}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|error| panic!("failed to read the response from {address}: {error}"));
    response
}

/// Splits an HTTP response into its status line and its body.
fn status_and_body(response: &str) -> (&str, &str) {
    let status = response.lines().next().unwrap_or("");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body)
}

/// Sends `message` to `address` (on loopback) until a reply arrives, because a UDP service
/// gets no health check and may bind its port after `mayfly up` reports it up.
fn udp_exchange(address: SocketAddr, message: &[u8], limit: Duration) -> Vec<u8> {
    assert!(
        address.ip().is_loopback(),
        "tests only send to loopback, not {address}"
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buffer = [0u8; 2048];
    loop {
        socket.send_to(message, address).unwrap();
        match socket.recv_from(&mut buffer) {
            Ok((length, from)) => {
                assert_eq!(from, address, "the reply comes from the published address");
                return buffer[..length].to_vec();
            }
            Err(error) if Instant::now() >= deadline => {
                panic!("no UDP reply from {address} within {limit:?}: {error}")
            }
            Err(_) => {}
        }
    }
}

/// Returns the TCP address that `mayfly up` published, checking that it is the only one and
/// on loopback.
fn single_tcp(published: &[(SocketAddr, String)]) -> SocketAddr {
    assert_eq!(published.len(), 1, "one published port: {published:?}");
    assert_eq!(published[0].1, "tcp", "{published:?}");
    assert!(
        published[0].0.ip().is_loopback(),
        "published on loopback: {published:?}"
    );
    published[0].0
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Returns a UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn up_busybox_httpd_and_interrupt() {
    let Some(home) = busybox_home() else { return };
    let mut up = Mayfly::spawn(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "-p",
            "127.0.0.1:0:8080",
            "--expose",
            "8080",
            "--new-file",
            "/srv/index.html=served by busybox httpd",
            "busybox:latest",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/srv",
        ],
    );
    let address = single_tcp(&up.wait_until_up());
    assert_ne!(address.port(), 0, "the line shows the port that was picked");

    let response = http_get(address, "/index.html");
    let (status, body) = status_and_body(&response);
    assert_eq!(status, "HTTP/1.1 200 OK", "{response}");
    assert_eq!(body, "served by busybox httpd", "{response}");

    let processes = descendants(up.pid());
    assert!(
        processes.iter().any(|process| process.name == "httpd"),
        "httpd runs below mayfly: {processes:?}"
    );

    up.signal(Signal::SIGINT);
    let status = up.wait(RUN_LIMIT);
    assert_eq!(status.code(), Some(0), "Ctrl-C is a normal stop");
    assert!(
        up.stderr()
            .contains("mayfly: SIGINT received; stopping busybox"),
        "{}",
        up.stderr()
    );
    assert!(tcp_refused(address), "the published port {address} closed");
    let left = wait_until_gone(&processes, Duration::from_secs(1));
    assert!(left.is_empty(), "processes outlived mayfly up: {left:?}");
}

#[test]
fn up_python_http_server_example() {
    let Some(home) = python_home() else { return };
    // The README's example, with a free host port in place of 8080 so that it cannot collide
    // with anything else on the machine.
    let port = free_tcp_port();
    let publish = format!("{port}:8080");
    let mut up = Mayfly::spawn(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "-p",
            &publish,
            "--expose",
            "8080",
            "-w",
            "/srv",
            "--new-file",
            "index.html=Hello, world!",
            "python:3.11",
            "python",
            "-m",
            "http.server",
            "8080",
        ],
    );
    let address = single_tcp(&up.wait_until_up());
    assert_eq!(
        address,
        SocketAddr::from(([127, 0, 0, 1], port)),
        "-p without an address publishes on 127.0.0.1"
    );

    let response = http_get(address, "/");
    let (status, body) = status_and_body(&response);
    assert_eq!(status, "HTTP/1.0 200 OK", "{response}");
    assert_eq!(body, "Hello, world!", "{response}");

    up.signal(Signal::SIGINT);
    assert_eq!(up.wait(RUN_LIMIT).code(), Some(0));
    // http.server logs each request on standard error, which `up` prefixes with the name.
    assert!(
        up.stdout()
            .lines()
            .any(|line| line.starts_with("python | ") && line.contains("\"GET / HTTP/1.0\" 200")),
        "the request shows in the service's output: {}",
        up.stdout()
    );
    assert!(tcp_refused(address), "the published port {address} closed");
}

#[test]
fn up_service_exit_fails_at_once() {
    let Some(home) = busybox_home() else { return };
    let started = Instant::now();
    let output = Mayfly::output(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "--expose",
            "8080",
            "busybox:latest",
            "sh",
            "-c",
            "echo boom; exit 42",
        ],
        RUN_LIMIT,
    );
    assert_eq!(
        output.status.code(),
        Some(125),
        "a service that never got up is mayfly's failure"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the exit is reported at once, not at the 10 s health deadline: {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr
        .lines()
        .position(|line| line.starts_with("mayfly: service busybox:latest"))
        .map(|start| stderr.lines().skip(start).collect::<Vec<_>>().join("\n"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains("exit status 42"),
        "the error names the status: {error}"
    );
    assert!(error.contains("before it was ready"), "{error}");
    assert!(
        error.ends_with("\nboom"),
        "the error ends with the service's output: {error}"
    );
}

#[test]
fn up_exit_during_health_command() {
    let Some(home) = busybox_home() else { return };
    // The service exits while its health command runs, so the command cannot finish. The
    // error must name the exit, which is the cause, and not the health check.
    let output = Mayfly::output(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "--expose",
            "8080",
            "--health-cmd",
            "sleep 5",
            "--health-interval",
            "1s",
            "busybox:latest",
            "sh",
            "-c",
            "sleep 0.5; echo bye; exit 4",
        ],
        RUN_LIMIT,
    );
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("exited with exit status 4 before it was ready"),
        "the error names the exit, not the check: {stderr}"
    );
    assert!(
        stderr.trim_end().ends_with("\nbye"),
        "the error ends with the service's output: {stderr}"
    );
    assert!(!stderr.contains("unhealthy"), "{stderr}");
    let long_hex = stderr
        .split(|c: char| !c.is_ascii_hexdigit())
        .any(|word| word.len() >= 64);
    assert!(!long_hex, "no container id in the message: {stderr}");
}

#[test]
fn up_failing_health_command_message() {
    let Some(home) = busybox_home() else { return };
    let output = Mayfly::output(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "--expose",
            "8080",
            "--health-cmd",
            "false",
            "--health-interval",
            "100ms",
            "--health-retries",
            "1",
            "busybox:latest",
            "sleep",
            "1000",
        ],
        RUN_LIMIT,
    );
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr
        .lines()
        .find(|line| line.starts_with("mayfly: service busybox:latest"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains("is unhealthy: health check `false` failed 1 time in a row"),
        "the reason comes first: {error}"
    );
    assert_eq!(error.matches("unhealthy").count(), 1, "{error}");
    assert!(
        error.ends_with("The service printed nothing."),
        "the service's output comes last: {error}"
    );
}

#[test]
fn zero_health_durations_rejected() {
    // The flags are checked before anything is pulled, so no registry is needed.
    let home = MayflyHome::new();
    for flag in ["--health-deadline", "--health-interval", "--health-timeout"] {
        let output = home.run(&[
            "up",
            "--expose",
            "8080",
            "--health-cmd",
            "true",
            flag,
            "0s",
            "busybox:latest",
            "sleep",
            "1000",
        ]);
        assert_eq!(output.status.code(), Some(125), "{flag}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("invalid {flag} \"0s\": it must be more than zero")),
            "the error names the flag and the value: {stderr}"
        );
    }
}

#[test]
fn up_without_ports_fails_before_start() {
    let Some(home) = busybox_home() else { return };
    let output = Mayfly::output(
        &home,
        SHORT_TIMEOUTS,
        &["up", "busybox:latest", "sleep", "1000"],
        RUN_LIMIT,
    );
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("image busybox:latest exposes no port"),
        "{stderr}"
    );
    assert!(
        stderr.contains("give one with --expose PORT"),
        "the error names the CLI flag: {stderr}"
    );
    assert!(
        !stderr.contains("with_exposed_port"),
        "no Rust method name: {stderr}"
    );
    assert!(
        !stderr.contains("mayfly: starting"),
        "nothing was started: {stderr}"
    );
}

#[test]
fn up_never_listening_hits_deadline() {
    let Some(home) = busybox_home() else { return };
    let started = Instant::now();
    let output = Mayfly::output(
        &home,
        &[
            ("MAYFLY_HEALTH_DEADLINE", "4s"),
            ("MAYFLY_STOP_TIMEOUT", "1s"),
        ],
        &["up", "--expose", "8080", "busybox:latest", "sleep", "1000"],
        RUN_LIMIT,
    );
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(125));
    assert!(
        elapsed >= Duration::from_secs(4),
        "mayfly waited the whole deadline: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(12),
        "mayfly stopped soon after the deadline: {elapsed:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("did not accept connections on port 8080 within 4s"),
        "the error names the port and the deadline: {stderr}"
    );
    assert!(
        stderr.contains("waiting for busybox:latest to become healthy (up to 4s in all)"),
        "a long wait is announced, so it does not look like a hang: {stderr}"
    );
}

#[test]
fn up_deadline_hint_flag_works() {
    let Some(home) = busybox_home() else { return };
    // The not-listening error suggests --health-deadline; the flag must exist on `up` and
    // win over the environment's 20 s.
    let started = Instant::now();
    let output = Mayfly::output(
        &home,
        &[
            ("MAYFLY_HEALTH_DEADLINE", "20s"),
            ("MAYFLY_STOP_TIMEOUT", "1s"),
        ],
        &[
            "up",
            "--health-deadline",
            "1s",
            "--expose",
            "8080",
            "busybox:latest",
            "sleep",
            "1000",
        ],
        RUN_LIMIT,
    );
    let elapsed = started.elapsed();

    assert_eq!(output.status.code(), Some(125));
    assert!(
        elapsed < Duration::from_secs(10),
        "the flag's 1 s deadline applied, not the environment's 20 s: {elapsed:?}"
    );

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("did not accept connections on port 8080 within 1s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--health-deadline"),
        "the error names the flag that raises the deadline: {stderr}"
    );
    assert!(
        !stderr.contains("waiting for"),
        "a wait shorter than the notice's delay is not announced: {stderr}"
    );
}

#[test]
fn up_loopback_only_service_hint() {
    let Some(home) = busybox_home() else { return };
    let output = Mayfly::output(
        &home,
        &[
            ("MAYFLY_HEALTH_DEADLINE", "2s"),
            ("MAYFLY_STOP_TIMEOUT", "1s"),
        ],
        &[
            "up",
            "-p",
            "127.0.0.1:0:8080",
            "--expose",
            "8080",
            "busybox:latest",
            "httpd",
            "-f",
            "-p",
            "127.0.0.1:8080",
        ],
        RUN_LIMIT,
    );
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("listens on port 8080 only on its loopback address"),
        "the error distinguishes loopback-only from not listening: {stderr}"
    );
    assert!(
        stderr.contains("0.0.0.0"),
        "the error gives the fix: {stderr}"
    );
    assert!(
        !stderr.contains("is up:"),
        "nothing was published: {stderr}"
    );
}

#[test]
fn up_udp_port_echo() {
    let Some(home) = python_home() else { return };
    let port = free_udp_port();
    let publish = format!("127.0.0.1:{port}:5353/udp");
    let mut up = Mayfly::spawn(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "-p",
            &publish,
            "--expose",
            "5353/udp",
            "python:3.11",
            "python",
            "-c",
            PYTHON_UDP_ECHO,
        ],
    );
    let published = up.wait_until_up();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(published, vec![(address, "udp".to_owned())]);
    assert!(
        up.stderr()
            .contains("mayfly: port 5353/udp has no health check"),
        "up says the UDP port was not checked: {}",
        up.stderr()
    );

    assert_eq!(
        udp_exchange(address, b"first", Duration::from_secs(10)),
        b"echo:first"
    );
    assert_eq!(
        udp_exchange(address, b"second", Duration::from_secs(2)),
        b"echo:second"
    );

    up.signal(Signal::SIGINT);
    assert_eq!(up.wait(RUN_LIMIT).code(), Some(0));
    assert!(
        up.stdout().contains("python | listening"),
        "{}",
        up.stdout()
    );
}

#[test]
fn run_privileged_port_hint() {
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    if start <= 80 || nix::unistd::geteuid().is_root() {
        println!("skipped: this user may bind port 80 (ip_unprivileged_port_start is {start})");
        return;
    }
    let Some(home) = busybox_home() else { return };
    let output = Mayfly::output(
        &home,
        SHORT_TIMEOUTS,
        &["run", "-p", "127.0.0.1:80:8080", "busybox:latest", "true"],
        RUN_LIMIT,
    );
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("failed to bind 127.0.0.1:80: "), "{stderr}");
    assert!(
        stderr.contains(&format!("ports below {start} need privileges")),
        "the error explains the privileged range: {stderr}"
    );
    assert!(
        stderr.contains("sysctl net.ipv4.ip_unprivileged_port_start=80"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("network namespace"),
        "the host's namespace is not named: {stderr}"
    );
}

#[test]
fn run_publishes_udp_port() {
    let Some(home) = python_home() else { return };
    let port = free_udp_port();
    let publish = format!("127.0.0.1:{port}:5353/udp");
    let mut run = Mayfly::spawn(
        &home,
        SHORT_TIMEOUTS,
        &[
            "run",
            "-p",
            &publish,
            "python:3.11",
            "python",
            "-c",
            PYTHON_UDP_ECHO,
        ],
    );
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(
        udp_exchange(address, b"through run", Duration::from_secs(20)),
        b"echo:through run"
    );
    assert!(
        run.stderr().contains(&format!(
            "publishing 127.0.0.1:{port} -> container port 5353/udp"
        )),
        "{}",
        run.stderr()
    );

    run.signal(Signal::SIGTERM);
    run.wait(RUN_LIMIT);
    assert!(run.stdout().contains("listening"), "{}", run.stdout());
}

/// Accepts one connection on a loopback listener, reads a line and replies `pong:LINE`.
/// Returns the port and a handle whose result is the line and the peer address.
fn tcp_pong_server() -> (u16, JoinHandle<(String, SocketAddr)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (stream, peer) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream)
            .write_all(format!("pong:{line}").as_bytes())
            .unwrap();
        (line, peer)
    });
    (port, server)
}

#[test]
fn run_reaches_tcp_host_service() {
    let Some(home) = busybox_home() else { return };
    let (port, server) = tcp_pong_server();
    let host_service = format!("db=tcp://127.0.0.1:{port}");
    let script = format!("echo ping | nc db {port}");
    let output = Mayfly::output(
        &home,
        SHORT_TIMEOUTS,
        &[
            "run",
            "--host-service",
            &host_service,
            "busybox:latest",
            "sh",
            "-c",
            &script,
        ],
        RUN_LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "pong:ping\n");
    let (line, peer) = server.join().unwrap();
    assert_eq!(line, "ping\n", "the server got the container's line");
    assert!(
        peer.ip().is_loopback(),
        "the tunnel dials from the host namespace: {peer}"
    );
}

#[test]
fn run_reaches_udp_host_service() {
    let Some(home) = python_home() else { return };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let mut buffer = [0u8; 2048];
        let (length, peer) = socket.recv_from(&mut buffer).unwrap();
        let mut answer = b"echo:".to_vec();
        answer.extend_from_slice(&buffer[..length]);
        socket.send_to(&answer, peer).unwrap();
        (buffer[..length].to_vec(), peer)
    });
    let host_service = format!("echo=udp://127.0.0.1:{port}");
    let client = format!(
        "import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b'hi', ('echo', {port}))
print(s.recvfrom(2048)[0].decode())
"
    );
    let output = Mayfly::output(
        &home,
        SHORT_TIMEOUTS,
        &[
            "run",
            "--host-service",
            &host_service,
            "python:3.11",
            "python",
            "-c",
            &client,
        ],
        RUN_LIMIT,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "echo:hi\n");
    let (datagram, peer) = server.join().unwrap();
    assert_eq!(datagram, b"hi");
    assert!(
        peer.ip().is_loopback(),
        "the tunnel sends from the host namespace: {peer}"
    );
}

#[test]
fn up_killed_leaves_nothing() {
    let Some(home) = busybox_home() else { return };
    let mut up = Mayfly::spawn(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "-p",
            "127.0.0.1:0:8080",
            "--expose",
            "8080",
            "--new-file",
            "/srv/index.html=about to be killed",
            "busybox:latest",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/srv",
        ],
    );
    let address = single_tcp(&up.wait_until_up());
    let response = http_get(address, "/index.html");
    assert_eq!(
        status_and_body(&response).1,
        "about to be killed",
        "{response}"
    );
    let processes = descendants(up.pid());
    assert!(
        processes.iter().any(|process| process.name == "httpd"),
        "httpd runs below mayfly: {processes:?}"
    );

    up.signal(Signal::SIGKILL);
    let status = up.wait(RUN_LIMIT);
    assert_eq!(status.code(), None, "killed by a signal");
    let left = wait_until_gone(&processes, Duration::from_secs(2));
    assert!(
        left.is_empty(),
        "processes outlived the killed mayfly up by 2 s: {left:?}"
    );
    assert!(tcp_refused(address), "the published port {address} closed");

    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let home_path = home.path().to_string_lossy().into_owned();
    let leaked: Vec<&str> = host_mounts
        .lines()
        .filter(|line| line.contains(&home_path))
        .collect();
    assert!(
        leaked.is_empty(),
        "mounts under the home leaked into the host: {leaked:?}"
    );

    // The next session removes the dead one's container directory and starts normally.
    let containers = home.data_dir().join("mayfly/containers");
    assert!(
        count_dirs(&containers) >= 1,
        "the killed session left its container directory"
    );
    let next = Mayfly::output(
        &home,
        SHORT_TIMEOUTS,
        &["run", "busybox:latest", "echo", "next session"],
        RUN_LIMIT,
    );
    assert_eq!(String::from_utf8_lossy(&next.stdout), "next session\n");
    assert_eq!(
        count_dirs(&containers),
        0,
        "the next session removed the dead one's state"
    );
}

fn count_dirs(path: &std::path::Path) -> usize {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .count()
        })
        .unwrap_or(0)
}

/// Returns the hostname of the "mayfly: starting IMAGE as HOSTNAME.mayfly.internal" line.
fn started_hostname(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|line| line.strip_prefix("mayfly: starting busybox:latest as "))
        .and_then(|name| name.strip_suffix(".mayfly.internal"))
        .unwrap_or_else(|| panic!("no \"starting\" line: {stderr}"))
        .to_owned()
}

#[test]
fn up_hostname_stable_across_sessions() {
    let Some(home) = busybox_home() else { return };
    // Each `mayfly up` is its own engine session; the service fails at once, after it printed
    // its hostname.
    let hostname_of = |script: &str| {
        let output = Mayfly::output(
            &home,
            SHORT_TIMEOUTS,
            &[
                "up",
                "--expose",
                "8080",
                "busybox:latest",
                "sh",
                "-c",
                script,
            ],
            RUN_LIMIT,
        );
        assert_eq!(output.status.code(), Some(125));
        started_hostname(&String::from_utf8_lossy(&output.stderr))
    };
    let first = hostname_of("exit 3");
    let again = hostname_of("exit 3");
    let other = hostname_of("exit 4");
    assert_eq!(first.len(), 13, "{first:?}");
    assert!(
        first
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)),
        "lowercase base32: {first:?}"
    );
    assert_eq!(
        first, again,
        "the same definition has the same hostname in another session"
    );
    assert_ne!(first, other, "other arguments give another hostname");
}

#[test]
fn up_without_publish_uses_exposed_port() {
    let Some(home) = busybox_home() else { return };
    // The container port doubles as the host port, so it must be free on the host.
    let port = free_tcp_port().to_string();
    let mut up = Mayfly::spawn(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "--expose",
            &port,
            "--new-file",
            "/srv/index.html=same number",
            "busybox:latest",
            "httpd",
            "-f",
            "-p",
            &port,
            "-h",
            "/srv",
        ],
    );
    let address = single_tcp(&up.wait_until_up());
    assert_eq!(address.to_string(), format!("127.0.0.1:{port}"));
    let response = http_get(address, "/index.html");
    assert_eq!(status_and_body(&response).1, "same number", "{response}");

    up.signal(Signal::SIGTERM);
    assert_eq!(
        up.wait(RUN_LIMIT).code(),
        Some(0),
        "SIGTERM stops up as Ctrl-C does"
    );
    assert!(tcp_refused(address), "the published port {address} closed");
}

#[test]
fn up_service_exit_after_up() {
    let Some(home) = busybox_home() else { return };
    // httpd without -f goes to the background, so the service is up until the shell exits.
    let mut up = Mayfly::spawn(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "-p",
            "127.0.0.1:0:8080",
            "--expose",
            "8080",
            "busybox:latest",
            "sh",
            "-c",
            "httpd -p 8080 -h /; sleep 1; echo bye; exit 3",
        ],
    );
    let address = single_tcp(&up.wait_until_up());
    let processes = descendants(up.pid());

    let status = up.wait(RUN_LIMIT);
    assert_eq!(
        status.code(),
        Some(125),
        "a service that stops on its own fails up"
    );
    let stderr = up.stderr();
    assert!(
        stderr
            .lines()
            .any(|line| line.starts_with("mayfly: service busybox (")
                && line.ends_with(") exited with exit status 3")),
        "the error names the service and its status: {stderr}"
    );
    assert!(up.stdout().contains("busybox | bye"), "{}", up.stdout());

    assert!(tcp_refused(address), "the published port {address} closed");
    let left = wait_until_gone(&processes, Duration::from_secs(1));
    assert!(left.is_empty(), "processes outlived mayfly up: {left:?}");
}

#[test]
fn up_published_port_in_use() {
    let Some(home) = busybox_home() else { return };
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let publish = format!("127.0.0.1:{port}:8080");
    let output = Mayfly::output(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "-p",
            &publish,
            "--expose",
            "8080",
            "busybox:latest",
            "httpd",
            "-f",
            "-p",
            "8080",
        ],
        RUN_LIMIT,
    );
    assert_eq!(output.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port} is already in use")),
        "the error names the address: {stderr}"
    );
    assert!(!stderr.contains("is up:"), "{stderr}");
}

#[test]
fn up_interrupt_during_start() {
    let Some(home) = busybox_home() else { return };
    let mut up = Mayfly::spawn(
        &home,
        &[
            ("MAYFLY_HEALTH_DEADLINE", "20s"),
            ("MAYFLY_STOP_TIMEOUT", "2s"),
        ],
        &["up", "--expose", "8080", "busybox:latest", "sleep", "1000"],
    );
    // Wait until the service's sleep runs below mayfly, then interrupt the health wait.
    let deadline = Instant::now() + UP_LIMIT;
    let processes = loop {
        let processes = descendants(up.pid());
        if processes.iter().any(|process| process.name == "sleep") {
            break processes;
        }
        assert!(
            Instant::now() < deadline,
            "the service's sleep never started: {}",
            up.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let interrupted = Instant::now();
    up.signal(Signal::SIGINT);
    assert_eq!(
        up.wait(RUN_LIMIT).code(),
        Some(0),
        "Ctrl-C during the start is a normal stop"
    );
    assert!(
        interrupted.elapsed() < Duration::from_secs(10),
        "up stopped without waiting for the 20 s deadline: {:?}",
        interrupted.elapsed()
    );
    assert!(
        up.stderr().contains("mayfly: SIGINT received; stopping"),
        "{}",
        up.stderr()
    );
    let left = wait_until_gone(&processes, Duration::from_secs(1));
    assert!(left.is_empty(), "processes outlived mayfly up: {left:?}");
}

#[test]
fn up_service_uses_host_service() {
    let Some(home) = busybox_home() else { return };
    let (port, server) = tcp_pong_server();
    let host_service = format!("db=tcp://127.0.0.1:{port}");
    // The service sends one line to the host's server at start, then serves the reply.
    let script = format!(
        "mkdir -p /srv; echo ping | nc db {port} > /srv/index.html; httpd -f -p 8080 -h /srv"
    );
    let mut up = Mayfly::spawn(
        &home,
        SHORT_TIMEOUTS,
        &[
            "up",
            "--host-service",
            &host_service,
            "-p",
            "127.0.0.1:0:8080",
            "--expose",
            "8080",
            "busybox:latest",
            "sh",
            "-c",
            &script,
        ],
    );
    let address = single_tcp(&up.wait_until_up());
    let response = http_get(address, "/index.html");
    assert_eq!(status_and_body(&response).1, "pong:ping\n", "{response}");
    let (line, _) = server.join().unwrap();
    assert_eq!(line, "ping\n");

    up.signal(Signal::SIGINT);
    assert_eq!(up.wait(RUN_LIMIT).code(), Some(0));
}
