//! `mayfly compose run`, `mayfly compose up` and `mayfly run --service` as the unprivileged
//! test user, each test on a Compose file in its own directory. The tests cover dependencies
//! reached under their names and link aliases, jobs run to completion first, health checks,
//! shared dependencies, published ports, warnings, and that nothing outlives a killed engine.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use mayfly_tests::home::MayflyHome;
use mayfly_tests::{registry_available, REGISTRY_PLAIN};

/// Engine settings that keep each test short: unused services stop at once, a stopped
/// container gets SIGKILL after a second, and a service that never becomes healthy fails
/// the test within 15 s.
const FAST_SETTINGS: [(&str, &str); 3] = [
    ("MAYFLY_GRACE_PERIOD", "100ms"),
    ("MAYFLY_STOP_TIMEOUT", "1s"),
    ("MAYFLY_HEALTH_DEADLINE", "15s"),
];

/// The page that the `web` services of these tests serve, from a top-level config.
const PAGE: &str = "hello from the web service";

fn ready() -> Option<MayflyHome> {
    if !registry_available(REGISTRY_PLAIN) {
        return None;
    }
    let home = MayflyHome::new();
    home.run_ok(&["pull", "--quiet", "busybox"]);
    Some(home)
}

/// Writes `yaml` as `project/compose.yaml` in the test's home and returns the file's path.
fn write_project(home: &MayflyHome, yaml: &str) -> PathBuf {
    let dir = home.path().join("project");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("compose.yaml");
    std::fs::write(&file, yaml).unwrap();
    println!("compose.yaml:\n{yaml}");
    file
}

/// Returns a `mayfly` command with [`FAST_SETTINGS`].
fn mayfly(home: &MayflyHome) -> Command {
    let mut command = home.mayfly();
    command.envs(FAST_SETTINGS);
    command
}

/// Runs `mayfly ARGS` with [`FAST_SETTINGS`] and returns its output, echoing it for the test
/// log.
fn run(home: &MayflyHome, args: &[&str]) -> Output {
    let output = mayfly(home)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("failed to start mayfly {args:?}: {error}"));
    println!("$ mayfly {}", args.join(" "));
    println!("status: {}", output.status);
    println!("stdout:\n{}", String::from_utf8_lossy(&output.stdout));
    println!("stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Runs `mayfly compose -f FILE ARGS`.
fn compose(home: &MayflyHome, file: &Path, args: &[&str]) -> Output {
    let mut full = vec!["compose", "-f", file.to_str().unwrap()];
    full.extend_from_slice(args);
    run(home, &full)
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Quotes `text` as a YAML double-quoted scalar (JSON strings are valid YAML).
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// A shell command that fetches `/index.html` from port 8080 of `host` with busybox nc,
/// because busybox wget crashes in the fixture image.
fn fetch(host: &str) -> String {
    format!(r"printf 'GET /index.html HTTP/1.0\r\n\r\n' | nc {host} 8080")
}

/// Returns the Compose text of a busybox httpd service named `name` that serves [`PAGE`] on
/// port 8080 in the foreground and logs each request.
fn web_service(name: &str) -> String {
    format!(
        "  {name}:
    image: busybox:latest
    command: [\"httpd\", \"-f\", \"-vv\", \"-p\", \"8080\", \"-h\", \"/www\"]
    configs:
      - source: page
        target: /www/index.html
    expose: [\"8080\"]
"
    )
}

/// Returns the top-level `configs` section, which contains [`PAGE`].
fn page_config() -> String {
    format!("configs:\n  page:\n    content: {}\n", yaml_string(PAGE))
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Polls `http://127.0.0.1:PORT/index.html` until it returns [`PAGE`], for at most `limit`.
fn wait_for_page(port: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        match http_get(port, "/index.html") {
            Ok(response) if response.contains(PAGE) => return response,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("no page through 127.0.0.1:{port} within {limit:?}: {other:?}"),
        }
    }
}

/// Waits for `child` for at most `limit`, then kills it and fails the test.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mayfly did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a mayfly process when a failed assertion unwinds past it, so that it does not keep
/// running after the test.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn compose_run_reaches_dependency() {
    let Some(home) = ready() else { return };
    let yaml = format!(
        "{}services:\n{}  client:
    image: busybox:latest
    depends_on: [web]
    command: [\"sh\", \"-c\", {}]
",
        page_config(),
        web_service("web"),
        yaml_string(&fetch("web")),
    );
    let file = write_project(&home, &yaml);

    let output = compose(&home, &file, &["run", "client"]);
    assert_eq!(output.status.code(), Some(0), "the client's status is 0");
    let stdout = stdout_of(&output);
    assert!(
        stdout.starts_with("HTTP/1.") && stdout.contains(" 200 OK"),
        "{stdout}"
    );
    assert!(
        stdout.contains(PAGE),
        "the client printed web's page: {stdout}"
    );

    let failing = format!("{}; exit 3", fetch("web"));
    let output = compose(&home, &file, &["run", "client", "sh", "-c", &failing]);
    assert_eq!(
        output.status.code(),
        Some(3),
        "mayfly exits with the client's status"
    );
    assert!(
        stdout_of(&output).contains(PAGE),
        "the command that replaces the client's command ran"
    );
}

#[test]
fn compose_run_links_alias() {
    let Some(home) = ready() else { return };
    let script = format!(
        "{}; echo; echo fetched-frontend; {}; echo; echo fetched-web",
        fetch("frontend"),
        fetch("web")
    );
    let yaml = format!(
        "{}services:\n{}  client:
    image: busybox:latest
    links: [\"web:frontend\"]
    command: [\"sh\", \"-c\", {}]
",
        page_config(),
        web_service("web"),
        yaml_string(&script),
    );
    let file = write_project(&home, &yaml);

    let output = compose(&home, &file, &["run", "client"]);
    assert!(output.status.success(), "{}", output.status);
    let stdout = stdout_of(&output);
    let (via_alias, via_name) = stdout
        .split_once("fetched-frontend")
        .unwrap_or_else(|| panic!("the client did not finish its first fetch: {stdout}"));
    assert!(
        via_alias.contains(PAGE),
        "the link alias frontend reaches web: {stdout}"
    );
    assert!(
        via_name.contains(PAGE),
        "the linked service is reachable under its own name too: {stdout}"
    );
    assert!(via_name.contains("fetched-web"), "{stdout}");
}

/// Returns the Compose file of the job tests. `migrate` runs `migrate_script` with `./data`
/// mounted at /data, and `client` needs it completed successfully.
fn job_project(migrate_script: &str) -> String {
    format!(
        "services:
  migrate:
    image: busybox:latest
    command: [\"sh\", \"-c\", {}]
    volumes: [\"./data:/data\"]
  client:
    image: busybox:latest
    depends_on:
      migrate:
        condition: service_completed_successfully
    volumes: [\"./data:/data\"]
    command: [\"sh\", \"-c\", \"echo client-ran; cat /data/migrated\"]
",
        yaml_string(migrate_script)
    )
}

#[test]
fn compose_run_job_completes_first() {
    let Some(home) = ready() else { return };
    let file = write_project(
        &home,
        &job_project("echo migration-output; sleep 1; echo migrated > /data/migrated"),
    );
    let data = file.parent().unwrap().join("data");
    std::fs::create_dir(&data).unwrap();

    let output = compose(&home, &file, &["run", "client"]);
    assert!(output.status.success(), "{}", output.status);
    assert_eq!(
        std::fs::read_to_string(data.join("migrated")).unwrap(),
        "migrated\n",
        "./data is the data directory next to the Compose file"
    );
    assert_eq!(
        stdout_of(&output),
        "client-ran\nmigrated\n",
        "the client ran after the job had written its file"
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("running migrate to completion first"),
        "the job is announced before it runs: {stderr}"
    );
}

#[test]
fn compose_run_failed_job_stops_client() {
    let Some(home) = ready() else { return };
    let file = write_project(&home, &job_project("echo migration-broke; exit 7"));
    std::fs::create_dir(file.parent().unwrap().join("data")).unwrap();

    let output = compose(&home, &file, &["run", "client"]);
    assert!(!output.status.success(), "a failed job fails the run");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("migrate"),
        "the error names the job: {stderr}"
    );
    assert!(
        stderr.contains('7'),
        "the error gives the job's status: {stderr}"
    );
    assert!(
        stderr.contains("migration-broke"),
        "the error shows the job's output: {stderr}"
    );
    assert!(
        !stdout_of(&output).contains("client-ran"),
        "the client must not run after a failed job"
    );
}

#[test]
fn compose_run_creates_bind_source() {
    let Some(home) = ready() else { return };
    let file = write_project(&home, &job_project("echo migrated > /data/migrated"));
    let data = file.parent().unwrap().join("data");
    assert!(!data.exists());

    // In the Compose Specification (services, volumes, short syntax), a bind mount in the
    // short syntax creates its missing source directory on the host.
    let output = compose(&home, &file, &["run", "client"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(data.is_dir(), "{} was created", data.display());
    assert_eq!(stdout_of(&output), "client-ran\nmigrated\n");
}

#[test]
fn compose_run_waits_for_healthcheck() {
    let Some(home) = ready() else { return };
    let yaml = "services:
  slow:
    image: busybox:latest
    command:
      - sh
      - -c
      - sleep 2; touch /tmp/ready; echo service-ready >> /shared/order; exec sleep 60
    volumes: [\"./shared:/shared\"]
    healthcheck:
      test: [\"CMD-SHELL\", \"test -f /tmp/ready\"]
      interval: 1s
  client:
    image: busybox:latest
    depends_on:
      slow:
        condition: service_healthy
    volumes: [\"./shared:/shared\"]
    command: [\"sh\", \"-c\", \"echo client-ran >> /shared/order\"]
";
    let file = write_project(&home, yaml);
    let shared = file.parent().unwrap().join("shared");
    std::fs::create_dir(&shared).unwrap();

    let started = Instant::now();
    let output = compose(&home, &file, &["run", "client"]);
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", output.status);
    let order = std::fs::read_to_string(shared.join("order")).unwrap();
    assert_eq!(
        order, "service-ready\nclient-ran\n",
        "the client ran only after the health check passed"
    );
    assert!(
        elapsed >= Duration::from_secs(2),
        "the service needs 2 s to become healthy, but the run took {elapsed:?}"
    );
}

#[test]
fn compose_run_healthy_condition_needs_a_check() {
    let Some(home) = ready() else { return };
    let yaml = "services:
  unchecked:
    image: busybox:latest
    command: [\"sleep\", \"60\"]
  client:
    image: busybox:latest
    depends_on:
      unchecked:
        condition: service_healthy
    command: [\"echo\", \"client-ran\"]
";
    let file = write_project(&home, yaml);

    let output = compose(&home, &file, &["run", "client"]);
    assert!(
        !output.status.success(),
        "service_healthy on a service with nothing to check fails, as in Compose"
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("service unchecked") && stderr.contains("no health check"),
        "the error names the service and the missing check: {stderr}"
    );
    assert!(
        stderr.contains("service client"),
        "the error names the service that waits: {stderr}"
    );
    assert!(!stdout_of(&output).contains("client-ran"));

    let started = yaml.replace("service_healthy", "service_started");
    let file = write_project(&home, &started);
    let output = compose(&home, &file, &["run", "client"]);
    assert!(output.status.success(), "{}", output.status);
    assert!(stdout_of(&output).contains("client-ran"));
}

#[test]
fn compose_run_dependency_exits_early() {
    let Some(home) = ready() else { return };
    let yaml = "services:
  broken:
    image: busybox:latest
    command: [\"sh\", \"-c\", \"echo output-before-exit; exit 42\"]
    expose: [\"8080\"]
  client:
    image: busybox:latest
    depends_on: [broken]
    command: [\"echo\", \"client-ran\"]
";
    let file = write_project(&home, yaml);

    let started = Instant::now();
    let output = compose(&home, &file, &["run", "client"]);
    assert!(!output.status.success(), "a dead dependency fails the run");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("service broken"),
        "the error names the Compose service, not only its image: {stderr}"
    );
    assert!(
        stderr.contains("42"),
        "the error gives the exit status: {stderr}"
    );
    assert!(
        stderr.contains("output-before-exit"),
        "the error shows the service's output: {stderr}"
    );
    assert!(!stdout_of(&output).contains("client-ran"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an exited service is reported at once, not after the health deadline"
    );
}

#[test]
fn compose_run_shares_dependency() {
    let Some(home) = ready() else { return };
    let db = "  db:
    image: busybox:latest
    command: [\"sh\", \"-c\", \"echo start >> /shared/starts; exec httpd -f -p 8080 -h /www\"]
    configs:
      - source: page
        target: /www/index.html
    volumes: [\"./shared:/shared\"]
    expose: [\"8080\"]
";
    let api = |name: &str| {
        format!(
            "  {name}:
    image: busybox:latest
    depends_on: [db]
    command: [\"sh\", \"-c\", {}]
    configs:
      - source: page
        target: /www/index.html
    expose: [\"8080\"]
",
            yaml_string(&format!(
                "{} > /tmp/db-page; exec httpd -f -p 8080 -h /www",
                fetch("db")
            ))
        )
    };
    let script = format!(
        "{}; echo; echo fetched-api1; {}; echo; echo fetched-api2",
        fetch("api1"),
        fetch("api2")
    );
    let yaml = format!(
        "{}services:\n{db}{}{}  client:
    image: busybox:latest
    depends_on: [api1, api2]
    command: [\"sh\", \"-c\", {}]
",
        page_config(),
        api("api1"),
        api("api2"),
        yaml_string(&script),
    );
    let file = write_project(&home, &yaml);
    let shared = file.parent().unwrap().join("shared");
    std::fs::create_dir(&shared).unwrap();

    let output = compose(&home, &file, &["run", "client"]);
    assert!(output.status.success(), "{}", output.status);
    let stdout = stdout_of(&output);
    assert_eq!(
        stdout.matches(PAGE).count(),
        2,
        "the client reached api1 and api2: {stdout}"
    );
    let starts = std::fs::read_to_string(shared.join("starts")).unwrap();
    assert_eq!(
        starts, "start\n",
        "db, needed by api1 and api2, started once"
    );
}

#[test]
fn compose_up_publishes_port() {
    let Some(home) = ready() else { return };
    let port = free_port();
    let yaml = format!(
        "{}services:
  web:
    image: busybox:latest
    command: [\"sh\", \"-c\", \"echo web-starting; exec httpd -f -vv -p 8080 -h /www\"]
    configs:
      - source: page
        target: /www/index.html
    ports: [\"127.0.0.1:{port}:8080\"]
  unused:
    image: busybox:latest
    command: [\"sh\", \"-c\", \"echo unused-started; exec sleep 60\"]
",
        page_config()
    );
    let file = write_project(&home, &yaml);
    let stdout_path = home.path().join("up.stdout");
    let stderr_path = home.path().join("up.stderr");
    let mut child = mayfly(&home)
        .args(["compose", "-f", file.to_str().unwrap(), "up", "web"])
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());

    let response = wait_for_page(port, Duration::from_secs(15));
    assert!(
        response.lines().next().unwrap_or("").contains(" 200 "),
        "{response}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_with_deadline(&mut child, Duration::from_secs(10));
    // The process is reaped, so its PID may belong to another process now: no kill on drop.
    std::mem::forget(guard);
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    println!("stdout:\n{stdout}\nstderr:\n{stderr}");

    assert_eq!(status.code(), Some(0), "SIGINT stops compose up cleanly");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the published port closes with mayfly"
    );
    assert!(
        stdout.lines().any(|line| line == "web | web-starting"),
        "the service's output is prefixed with its name: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("web | ") && line.contains("url:/index.html")),
        "httpd's request log (its stderr) is streamed too: {stdout}"
    );
    assert!(
        !stdout.contains("unused-started"),
        "up web starts only web: {stdout}"
    );
}

#[test]
fn run_binds_compose_service() {
    let Some(home) = ready() else { return };
    let yaml = format!("{}services:\n{}", page_config(), web_service("web"));
    let file = write_project(&home, &yaml);

    let output = run(
        &home,
        &[
            "run",
            "--service",
            "api=web",
            "-f",
            file.to_str().unwrap(),
            "busybox:latest",
            "sh",
            "-c",
            &fetch("api"),
        ],
    );
    assert!(output.status.success(), "{}", output.status);
    let stdout = stdout_of(&output);
    assert!(
        stdout.contains(PAGE),
        "the alias api reaches the Compose service web: {stdout}"
    );
}

#[test]
fn compose_warns_once_per_key() {
    let Some(home) = ready() else { return };
    let yaml = "services:
  web:
    image: busybox:latest
    restart: always
    command: [\"sleep\", \"60\"]
  client:
    image: busybox:latest
    command: [\"echo\", \"client-ran\"]
networks:
  backend: {}
";
    let file = write_project(&home, yaml);

    let output = compose(&home, &file, &["run", "client"]);
    assert!(output.status.success(), "{}", output.status);
    assert_eq!(stdout_of(&output), "client-ran\n");
    let stderr = stderr_of(&output);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("warning"))
        .collect();
    assert_eq!(
        warnings
            .iter()
            .filter(|line| line.contains("restart"))
            .count(),
        1,
        "restart is reported once: {stderr}"
    );
    assert_eq!(
        warnings
            .iter()
            .filter(|line| line.contains("networks"))
            .count(),
        1,
        "networks is reported once: {stderr}"
    );
    assert_eq!(warnings.len(), 2, "no other key is reported: {stderr}");

    let output = run(
        &home,
        &[
            "run",
            "--service",
            "w=web",
            "-f",
            file.to_str().unwrap(),
            "busybox:latest",
            "true",
        ],
    );
    assert!(output.status.success(), "{}", output.status);
    let stderr = stderr_of(&output);
    assert_eq!(
        stderr.matches("restart").count(),
        1,
        "run --service reports restart once too: {stderr}"
    );
}

/// A process as /proc lists it. The start time (clock ticks after boot) distinguishes it from
/// a later process that reuses the ID.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcessEntry {
    pid: u32,
    start_time: u64,
    name: String,
}

/// Reads `/proc/PID/stat` and returns the process, its parent's ID and its state letter.
fn read_stat(pid: u32) -> Option<(ProcessEntry, u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name sits in parentheses and may contain spaces, so fields count from the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let state = fields.first()?.to_string();
    let parent = fields.get(1)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((
        ProcessEntry {
            pid,
            start_time,
            name,
        },
        parent,
        state,
    ))
}

/// Returns every process whose chain of parents leads to `root`.
fn descendants(root: u32) -> Vec<ProcessEntry> {
    let all: Vec<(ProcessEntry, u32, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_stat)
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (process, ppid, _) in &all {
            if *ppid == parent && !found.contains(process) {
                frontier.push(process.pid);
                found.push(process.clone());
            }
        }
    }
    found
}

fn is_alive(process: &ProcessEntry) -> bool {
    match read_stat(process.pid) {
        // A zombie has released everything, and only its parent can reap it.
        Some((now, _, state)) => now.start_time == process.start_time && state != "Z",
        None => false,
    }
}

#[test]
fn compose_run_killed_leaves_nothing() {
    let Some(home) = ready() else { return };
    let port = free_port();
    let yaml = format!(
        "{}services:\n{}  client:
    image: busybox:latest
    depends_on: [web]
    configs:
      - source: page
        target: /www/index.html
    ports: [\"127.0.0.1:{port}:8080\"]
    command: [\"sh\", \"-c\", \"httpd -f -p 8080 -h /www & exec sleep 60\"]
",
        page_config(),
        web_service("web"),
    );
    let file = write_project(&home, &yaml);
    let mut child = mayfly(&home)
        .args([
            "compose",
            "-f",
            file.to_str().unwrap(),
            "run",
            "--service-ports",
            "client",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    wait_for_page(port, Duration::from_secs(15));

    let processes = descendants(child.id());
    println!("mayfly's descendants: {processes:?}");
    let httpd_count = processes.iter().filter(|p| p.name == "httpd").count();
    assert_eq!(httpd_count, 2, "web's and the client's httpd are found");
    assert!(
        processes.iter().any(|p| p.name == "sleep"),
        "the client's sleep is found"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    std::mem::forget(guard);
    let killed_at = Instant::now();
    loop {
        let alive: Vec<&ProcessEntry> = processes.iter().filter(|p| is_alive(p)).collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(2),
            "processes outlived the killed mayfly by 2 s: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let home_path = home.path().to_string_lossy().into_owned();
    assert!(
        !mountinfo.contains(&home_path),
        "a mount under the test's data directory leaked into the host namespace"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the published port closed with mayfly"
    );
}

#[test]
fn compose_run_mariadb_client() {
    let Some(home) = ready() else { return };
    let yaml = "services:
  db:
    image: mariadb:10.11
    environment:
      MARIADB_ROOT_PASSWORD: compose-secret
    expose: [\"3306\"]
  client:
    image: mariadb:10.11
    depends_on: [db]
    command:
      - mysql
      - --host=db
      - --user=root
      - --password=compose-secret
      - --batch
      - --skip-column-names
      - -e
      - SELECT 40 + 2
";
    let file = write_project(&home, yaml);

    // The first start of mariadb initialises its data directory, which takes several
    // seconds on top of pulling and unpacking the image.
    let output = mayfly(&home)
        .env("MAYFLY_HEALTH_DEADLINE", "120s")
        .args(["compose", "-f", file.to_str().unwrap(), "run", "client"])
        .output()
        .unwrap();
    println!("stdout:\n{}", stdout_of(&output));
    println!("stderr:\n{}", stderr_of(&output));
    assert!(output.status.success(), "{}", output.status);
    assert_eq!(stdout_of(&output), "42\n", "the client's query returned 42");
}

/// A `mayfly compose up` running in the background, its output going to files.
struct BackgroundUp {
    child: Child,
    guard: Option<KillOnDrop>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl BackgroundUp {
    /// Starts `mayfly compose -f FILE up ARGS` with [`FAST_SETTINGS`].
    fn start(home: &MayflyHome, file: &Path, args: &[&str]) -> Self {
        let stdout = home.path().join("up.stdout");
        let stderr = home.path().join("up.stderr");
        let child = mayfly(home)
            .args(["compose", "-f", file.to_str().unwrap(), "up"])
            .args(args)
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let guard = Some(KillOnDrop(child.id()));
        Self {
            child,
            guard,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }

    /// Waits until stderr contains `text`, for at most `limit`.
    fn wait_for_stderr(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "stderr did not contain {text:?} within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn interrupt(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
    }

    /// Waits for mayfly to exit, for at most `limit`, and returns its status, stdout and
    /// stderr.
    fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let status = wait_with_deadline(&mut self.child, limit);
        // The process is reaped, so its PID may belong to another process now: no kill on
        // drop.
        std::mem::forget(self.guard.take());
        let stdout = std::fs::read_to_string(&self.stdout).unwrap();
        let stderr = self.stderr();
        println!("status: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        (status, stdout, stderr)
    }
}

/// Returns a Compose file with a job `migrate` that appends a line to ./data/runs, a `web`
/// that needs it completed and publishes `port`, and a `client` that fetches web's page once
/// and exits 0.
fn up_project(port: u16) -> String {
    format!(
        "{}services:
  migrate:
    image: busybox:latest
    command: [\"sh\", \"-c\", \"echo migrated; echo run >> /data/runs\"]
    volumes: [\"./data:/data\"]
  web:
    image: busybox:latest
    command: [\"httpd\", \"-f\", \"-vv\", \"-p\", \"8080\", \"-h\", \"/www\"]
    configs:
      - source: page
        target: /www/index.html
    ports: [\"127.0.0.1:{port}:8080\"]
    depends_on:
      migrate:
        condition: service_completed_successfully
  client:
    image: busybox:latest
    depends_on: [web]
    command: [\"sh\", \"-c\", {}]
",
        page_config(),
        yaml_string(&format!("{}; echo; echo client-done", fetch("web"))),
    )
}

#[test]
fn compose_up_survives_exited_services() {
    let Some(home) = ready() else { return };
    let port = free_port();
    let file = write_project(&home, &up_project(port));
    let data = file.parent().unwrap().join("data");
    std::fs::create_dir(&data).unwrap();

    let up = BackgroundUp::start(&home, &file, &[]);
    up.wait_for_stderr(
        "service client exited with exit status 0",
        Duration::from_secs(20),
    );
    let stderr = up.stderr();
    assert!(
        stderr.contains("service migrate exited with exit status 0"),
        "the completed job is reported: {stderr}"
    );
    // A second after the client exited, web still serves its page.
    std::thread::sleep(Duration::from_secs(1));
    let response = wait_for_page(port, Duration::from_secs(5));
    assert!(response.contains(" 200 "), "{response}");

    up.interrupt();
    let (status, stdout, stderr) = up.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "Ctrl-C after exits is a clean stop");
    assert!(
        !stderr.contains("service web exited"),
        "web ran until Ctrl-C: {stderr}"
    );
    assert!(
        stdout.lines().any(|line| line == "migrate | migrated"),
        "the job's output is streamed: {stdout}"
    );
    assert!(
        stdout.lines().any(|line| line == "client | client-done"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("client | {PAGE}")),
        "the client reached web: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("runs")).unwrap(),
        "run\n",
        "the job ran once"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the published port closes with mayfly"
    );
}

#[test]
fn compose_up_named_job_runs_once() {
    let Some(home) = ready() else { return };
    let port = free_port();
    let file = write_project(&home, &up_project(port));
    let data = file.parent().unwrap().join("data");
    std::fs::create_dir(&data).unwrap();

    let up = BackgroundUp::start(&home, &file, &["migrate", "web"]);
    wait_for_page(port, Duration::from_secs(20));
    up.wait_for_stderr(
        "service migrate exited with exit status 0",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_secs(1));
    wait_for_page(port, Duration::from_secs(5));

    up.interrupt();
    let (status, stdout, _) = up.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "SIGINT stops compose up cleanly");
    assert_eq!(
        std::fs::read_to_string(data.join("runs")).unwrap(),
        "run\n",
        "a job named on the command line runs once, before web"
    );
    assert!(
        !stdout.contains("client |"),
        "up migrate web starts no client: {stdout}"
    );
    let job_lines = stdout
        .lines()
        .filter(|line| *line == "migrate | migrated")
        .count();
    assert_eq!(job_lines, 1, "the job's output is printed once: {stdout}");
}

#[test]
fn compose_up_exits_after_every_service() {
    let Some(home) = ready() else { return };
    let yaml = "services:
  first:
    image: busybox:latest
    command: [\"echo\", \"first-done\"]
  second:
    image: busybox:latest
    command: [\"sh\", \"-c\", \"sleep 1; echo second-done\"]
";
    let file = write_project(&home, yaml);

    let up = BackgroundUp::start(&home, &file, &[]);
    let (status, stdout, stderr) = up.finish(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "every service exited 0");
    assert!(stdout.contains("first | first-done"), "{stdout}");
    assert!(stdout.contains("second | second-done"), "{stdout}");
    assert!(
        stderr.contains("service first exited with exit status 0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("service second exited with exit status 0"),
        "{stderr}"
    );

    let file = write_project(&home, &yaml.replace("echo second-done", "exit 3"));
    let up = BackgroundUp::start(&home, &file, &[]);
    let (status, _, stderr) = up.finish(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(3),
        "compose up exits with the status of the service that failed"
    );
    assert!(
        stderr.contains("service second exited with exit status 3"),
        "{stderr}"
    );
}

/// A Compose file whose `db` never accepts connections on the port it exposes, and an `app`
/// that waits for it to be healthy.
const SICK_PROJECT: &str = "services:
  db:
    image: busybox:latest
    command: [\"sleep\", \"1000\"]
    expose: [\"3306\"]
  app:
    image: busybox:latest
    depends_on:
      db:
        condition: service_healthy
    command: [\"echo\", \"app-ran\"]
";

/// Runs `mayfly ARGS` with a 60 s health deadline setting and checks that the 2 s deadline
/// that ARGS give applies to the Compose service db.
fn assert_deadline_applies(home: &MayflyHome, args: &[&str]) {
    println!("$ mayfly {}", args.join(" "));
    let started = Instant::now();
    let output = mayfly(home)
        .env("MAYFLY_HEALTH_DEADLINE", "60s")
        .args(args)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = stderr_of(&output);
    println!("status: {}\nstderr:\n{stderr}", output.status);

    assert_eq!(output.status.code(), Some(125), "the unhealthy db fails");
    assert!(
        elapsed < Duration::from_secs(30),
        "--health-deadline 2s replaced the 60 s setting, but the command took {elapsed:?}"
    );
    assert!(
        stderr.contains("within 2s"),
        "the message gives the deadline: {stderr}"
    );
    assert!(
        stderr.contains("service db ("),
        "the message names the Compose service: {stderr}"
    );
    assert!(
        !stderr.contains("service service"),
        "the message says \"service\" once: {stderr}"
    );
    assert!(!stdout_of(&output).contains("app-ran"));
}

#[test]
fn health_deadline_covers_compose_services() {
    let Some(home) = ready() else { return };
    let file = write_project(&home, SICK_PROJECT);
    let file = file.to_str().unwrap();

    assert_deadline_applies(
        &home,
        &[
            "run",
            "--health-deadline",
            "2s",
            "--service",
            "database=db",
            "-f",
            file,
            "busybox:latest",
            "echo",
            "app-ran",
        ],
    );
    assert_deadline_applies(
        &home,
        &[
            "compose",
            "-f",
            file,
            "run",
            "--health-deadline",
            "2s",
            "app",
        ],
    );
    assert_deadline_applies(
        &home,
        &["compose", "-f", file, "up", "--health-deadline", "2s", "db"],
    );
}

#[test]
fn compose_run_accepts_rm_and_env() {
    let Some(home) = ready() else { return };
    let yaml = "services:
  client:
    image: busybox:latest
    environment:
      FROM_FILE: file-value
    command: [\"echo\", \"default-command\"]
";
    let file = write_project(&home, yaml);
    let file = file.to_str().unwrap();

    for command in ["run", "up"] {
        let output = run(
            &home,
            &[
                "compose",
                "-f",
                file,
                command,
                "--health-deadline",
                "0s",
                "client",
            ],
        );
        assert_eq!(output.status.code(), Some(125), "compose {command}");
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains("--health-deadline \"0s\"") && stderr.contains("more than zero"),
            "compose {command} rejects a zero deadline: {stderr}"
        );
    }

    let script = "echo \"$FROM_FILE $EXTRA $COPIED $UNSET-\"";

    let output = mayfly(&home)
        .env("COPIED", "copied-value")
        .env_remove("UNSET")
        .args([
            "compose",
            "-f",
            file,
            "run",
            "--rm",
            "-e",
            "EXTRA=extra-value",
        ])
        .args([
            "--env", "COPIED", "-e", "UNSET", "client", "sh", "-c", script,
        ])
        .output()
        .unwrap();
    println!("status: {}\nstderr:\n{}", output.status, stderr_of(&output));
    assert!(output.status.success(), "{}", output.status);
    assert_eq!(
        stdout_of(&output),
        "file-value extra-value copied-value -\n",
        "-e adds to the file's environment, and -e NAME copies a set variable"
    );

    let output = compose(
        &home,
        Path::new(file),
        &["run", "client", "echo", "--rm", "-e"],
    );
    assert!(output.status.success(), "{}", output.status);
    assert_eq!(
        stdout_of(&output),
        "--rm -e\n",
        "options after the service belong to the command"
    );

    let output = compose(&home, Path::new(file), &["run", "--no-such-flag", "client"]);
    assert_eq!(output.status.code(), Some(2), "clap's usage error status");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("unexpected argument '--no-such-flag'"),
        "an unknown option is reported as an option: {stderr}"
    );
    assert!(!stderr.contains("is not defined"), "{stderr}");
}
