//! Services through the Rust API, in a process that enters the engine's namespaces first.
//! The trials cover a client reaching a service by alias and by hostname, one start for many
//! concurrent clients, the grace period, failures at start and while a client runs, stop, and
//! hostnames.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use mayfly_engine::bootstrap::{self, Bootstrap, BootstrapOptions};
use mayfly_engine::config::Config;
use mayfly_engine::definition::Protocol;
use mayfly_engine::runtime::ExitStatus;
use mayfly_engine::service::{HealthSettings, PortForward, Service, ServiceCommand};
use mayfly_engine::Engine;

/// The grace period of this process's engine: long enough that a client binding again right
/// after the last one left still finds the service, short enough to wait out in a test.
const GRACE_PERIOD: &str = "2s";
const GRACE: Duration = Duration::from_secs(2);

/// The stop timeout of this process's engine: a service that ignores SIGTERM takes this long
/// to stop gracefully.
const STOP_TIMEOUT: &str = "3s";
const STOP: Duration = Duration::from_secs(3);

/// What every trial gets: the engine, and what a second engine session needs.
struct Shared {
    runtime: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    config: Config,
    bootstrap: Bootstrap,
    scratch: PathBuf,
}

fn main() {
    mayfly_engine::runtime::init_if_requested();
    let arguments = Arguments::from_args();

    if !mayfly_tests::registry_available(mayfly_tests::REGISTRY_PLAIN) {
        let trials = trial_names()
            .into_iter()
            .map(|name| Trial::test(name, || Ok(())).with_ignored_flag(true))
            .collect();
        libtest_mimic::run(&arguments, trials).exit();
    }

    let scratch = tempfile::Builder::new()
        .prefix("mayfly-services-api-")
        .tempdir()
        .expect("failed to create a scratch directory");
    let data_dir = scratch.path().join("data");
    // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("MAYFLY_DATA_DIR", &data_dir);
        std::env::set_var("MAYFLY_RUNTIME_DIR", scratch.path().join("runtime"));
        std::env::set_var("MAYFLY_GRACE_PERIOD", GRACE_PERIOD);
        std::env::set_var("MAYFLY_STOP_TIMEOUT", STOP_TIMEOUT);
        std::env::set_var("MAYFLY_HEALTH_DEADLINE", "10s");
    }
    let config = Config::load().expect("invalid configuration");
    let options = BootstrapOptions {
        runtime_dir: Some(config.runtime_dir.clone()),
        data_dir: Some(config.data_dir.clone()),
        ..BootstrapOptions::default()
    };
    let bootstrap = bootstrap::enter(&options).expect("the engine bootstrap failed");

    let runtime = tokio::runtime::Runtime::new().expect("failed to start tokio");
    let engine = Engine::new(config.clone(), bootstrap.clone()).expect("failed to open the stores");
    let shared = Arc::new(Shared {
        runtime,
        engine,
        config,
        bootstrap,
        scratch: scratch.path().to_owned(),
    });
    let trials = trial_names()
        .into_iter()
        .map(|name| {
            let shared = shared.clone();
            Trial::test(name, move || {
                let shared = &*shared;
                shared.runtime.block_on(run_trial(name, shared))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&arguments, trials);

    if let Ok(shared) = Arc::try_unwrap(shared) {
        shared.runtime.block_on(shared.engine.stop_services());
    }
    // The stores go first, from inside the user namespace, because they can hold files of
    // subordinate IDs. `exit` runs no destructors, so the scratch directory is removed here.
    for dir in ["data", "data-second-session"] {
        let _ = mayfly_engine::state::remove_tree(&scratch.path().join(dir));
    }
    drop(scratch);
    conclusion.exit();
}

/// The trial that checks the root cause of a broken service chain.
const CHAINED_ROOT_CAUSE: &str = "api_chained_death_names_root_cause";

fn trial_names() -> Vec<&'static str> {
    vec![
        "api_client_reaches_service",
        "api_concurrent_clients_start_once",
        "api_service_exit_fails_clients",
        "api_bound_service_death_fails_client",
        "api_stop_kill_and_graceful",
        "api_hostname_follows_service_args",
        "api_service_binds_service",
        "api_chained_service_death_fails_client",
        CHAINED_ROOT_CAUSE,
    ]
}

async fn run_trial(name: &str, shared: &Shared) -> Result<(), Failed> {
    match name {
        "api_client_reaches_service" => client_reaches_service(&shared.engine).await,
        "api_concurrent_clients_start_once" => {
            concurrent_clients_start_once(&shared.engine, &shared.scratch).await
        }
        "api_service_exit_fails_clients" => service_exit_fails_clients(&shared.engine).await,
        "api_bound_service_death_fails_client" => {
            bound_service_death_fails_client(&shared.engine).await
        }
        "api_stop_kill_and_graceful" => stop_kill_and_graceful(&shared.engine).await,
        "api_hostname_follows_service_args" => hostname_follows_service_args(shared).await,
        "api_service_binds_service" => service_binds_service(&shared.engine).await,
        "api_chained_service_death_fails_client" => {
            chained_service_death_fails_client(&shared.engine).await
        }
        CHAINED_ROOT_CAUSE => chained_death_names_root_cause(&shared.engine).await,
        other => Err(format!("unknown trial {other}").into()),
    }
}

/// Builds a busybox service on port 8080 that runs the shell `script`, with `page` as
/// `/srv/index.html`.
fn httpd_service(engine: &Arc<Engine>, page: &str, script: &str) -> Service {
    engine
        .container()
        .from("busybox:latest")
        .with_new_file("/srv/index.html", page)
        .with_exposed_port(8080, Protocol::Tcp, Some("http"), false)
        .as_service(ServiceCommand {
            args: vec!["sh".into(), "-c".into(), script.to_owned()],
            ..ServiceCommand::default()
        })
}

/// Returns a shell command for busybox that fetches `/index.html` from `host` port 8080.
fn fetch_page(host: &str) -> String {
    format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc {host} 8080")
}

async fn client_reaches_service(engine: &Arc<Engine>) -> Result<(), Failed> {
    let web = httpd_service(engine, "page from web", "httpd -f -p 8080 -h /srv");
    let hostname = web.hostname().await.map_err(failure)?;
    // Held for the whole trial, so that the service runs between the clients.
    let keep_running = web.acquire().await.map_err(failure)?;

    let client = engine
        .container()
        .from("busybox:latest")
        .with_service_binding("web", &web)
        .map_err(failure)?;
    let by_alias = client
        .with_exec(["sh", "-c", &fetch_page("web")])
        .stdout()
        .await
        .map_err(failure)?;
    expect_eq(by_alias.lines().next().unwrap_or(""), "HTTP/1.1 200 OK")?;
    expect_eq(body_of(&by_alias), "page from web")?;

    let by_hostname = client
        .with_exec([
            "sh",
            "-c",
            &fetch_page(&format!("{hostname}.mayfly.internal")),
        ])
        .stdout()
        .await
        .map_err(failure)?;
    expect_eq(body_of(&by_hostname), "page from web")?;

    // The DNS responder resolves an alias only for the client that bound it. This client
    // bound a host service as "other", so "web" does not resolve for it.
    let other = engine.host().service(
        vec![PortForward {
            frontend: None,
            backend: 9,
            protocol: Protocol::Tcp,
        }],
        "127.0.0.1",
    );
    let stranger = engine
        .container()
        .from("busybox:latest")
        .with_service_binding("other", &other)
        .map_err(failure)?
        .with_exec([
            "sh",
            "-c",
            &format!(
                "nslookup web >/dev/null 2>&1 && echo web-resolves; \
                 nslookup {hostname}.mayfly.internal >/dev/null 2>&1 && echo hostname-resolves; \
                 echo done"
            ),
        ])
        .stdout()
        .await
        .map_err(failure)?;
    expect_eq(&stranger, "hostname-resolves\ndone\n")?;
    drop(keep_running);
    Ok(())
}

async fn concurrent_clients_start_once(engine: &Arc<Engine>, scratch: &Path) -> Result<(), Failed> {
    let starts = scratch.join("starts");
    std::fs::create_dir(&starts).map_err(failure)?;
    let log = starts.join("log");
    let marker = format!("start-once-{}", std::process::id());
    let web = engine
        .container()
        .from("busybox:latest")
        .with_mounted_directory("/starts", &starts)
        .with_new_file("/srv/index.html", "shared page")
        .with_exposed_port(8080, Protocol::Tcp, None, false)
        .as_service(ServiceCommand {
            args: vec![
                "sh".into(),
                "-c".into(),
                format!("echo {marker} >> /starts/log; httpd -f -p 8080 -h /srv; echo ended"),
            ],
            ..ServiceCommand::default()
        });

    // 50 references and 3 real clients, all at once.
    let mut acquiring = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let web = web.clone();
        acquiring.spawn(async move { web.acquire().await });
    }
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..3 {
        let container = engine
            .container()
            .from("busybox:latest")
            .with_service_binding("web", &web)
            .map_err(failure)?
            .with_exec([
                "sh",
                "-c",
                &format!("echo client {client}; {}", fetch_page("web")),
            ]);
        clients.spawn(async move { container.stdout().await });
    }
    let mut references = Vec::new();
    while let Some(reference) = acquiring.join_next().await {
        references.push(reference.map_err(failure)?.map_err(failure)?);
    }
    while let Some(output) = clients.join_next().await {
        let output = output.map_err(failure)?.map_err(failure)?;
        expect_eq(body_of(&output), "shared page")?;
    }
    let first = references[0].instance().clone();
    if !references
        .iter()
        .all(|reference| Arc::ptr_eq(reference.instance(), &first))
    {
        return Err("the 50 references hold more than one instance".into());
    }
    expect_eq(&read_lines(&log), &format!("{marker}\n"))?;
    check(
        !processes_with(&marker).is_empty(),
        "the service's shell runs",
    )?;

    // Within the grace period a new reference gets the same instance.
    drop(references);
    tokio::time::sleep(GRACE / 10).await;
    let again = web.acquire().await.map_err(failure)?;
    check(
        Arc::ptr_eq(again.instance(), &first),
        "a reference taken during the grace period gets the running instance",
    )?;
    expect_eq(&read_lines(&log), &format!("{marker}\n"))?;

    // After the grace period the service stops, and its processes are gone.
    drop(again);
    let released = Instant::now();
    tokio::time::sleep(GRACE / 2).await;
    check(
        first.exit_status().is_none(),
        "the service runs on during the grace period",
    )?;
    let status = tokio::time::timeout(GRACE + STOP + Duration::from_secs(5), first.exited())
        .await
        .map_err(|_| failure("the service did not stop after the grace period"))?;
    check(
        released.elapsed() >= GRACE,
        &format!(
            "the service stopped before the grace period: {:?}",
            released.elapsed()
        ),
    )?;
    println!(
        "service stopped after {:?} with {status}",
        released.elapsed()
    );
    let left = processes_with(&marker);
    check(
        left.is_empty(),
        &format!("service processes outlived its stop: {left:?}"),
    )?;

    // The next client starts a new instance.
    let renewed = web.acquire().await.map_err(failure)?;
    check(
        !Arc::ptr_eq(renewed.instance(), &first),
        "a stopped instance is not handed out again",
    )?;
    expect_eq(&read_lines(&log), &format!("{marker}\n{marker}\n"))?;
    drop(renewed);
    Ok(())
}

async fn service_exit_fails_clients(engine: &Arc<Engine>) -> Result<(), Failed> {
    let failing = engine
        .container()
        .from("busybox:latest")
        .with_exposed_port(8080, Protocol::Tcp, None, false)
        .as_service(ServiceCommand {
            args: vec!["sh".into(), "-c".into(), "echo boom; exit 42".into()],
            ..ServiceCommand::default()
        });
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..2 {
        let container = engine
            .container()
            .from("busybox:latest")
            .with_service_binding("failing", &failing)
            .map_err(failure)?
            .with_exec(["echo", &format!("client {client} ran")]);
        clients.spawn(async move { container.stdout().await });
    }
    while let Some(result) = clients.join_next().await {
        let error = match result.map_err(failure)? {
            Ok(output) => {
                return Err(format!("a client of a failed service ran: {output:?}").into())
            }
            Err(error) => error.to_string(),
        };
        check(
            error.contains("service busybox:latest (")
                && error.contains(") exited with exit status 42"),
            &format!("the error names the service and the status: {error}"),
        )?;
        check(
            error.ends_with("its output ends with:\nboom"),
            &format!("the error ends with the service's output: {error}"),
        )?;
    }
    Ok(())
}

async fn bound_service_death_fails_client(engine: &Arc<Engine>) -> Result<(), Failed> {
    // httpd (without -f it goes to the background) makes the service healthy; the shell
    // exits with 7 two seconds later.
    let mortal = httpd_service(
        engine,
        "short-lived",
        "httpd -p 8080 -h /srv; sleep 2; echo dying; exit 7",
    );
    let started = Instant::now();
    let client = engine
        .container()
        .from("busybox:latest")
        .with_service_binding("dep", &mortal)
        .map_err(failure)?
        .with_exec(["sleep", "30"]);
    let error = match client.stdout().await {
        Ok(output) => return Err(format!("the client outlived its service: {output:?}").into()),
        Err(error) => error.to_string(),
    };
    let elapsed = started.elapsed();
    println!("client failed after {elapsed:?}: {error}");
    check(
        elapsed < Duration::from_secs(20),
        &format!("the client was stopped when its service died, not at its end: {elapsed:?}"),
    )?;
    check(
        error.contains("), bound as \"dep\", exited with exit status 7"),
        &format!("the error names the service, its alias and its status: {error}"),
    )?;
    check(
        error.contains("dying"),
        &format!("the error shows the output: {error}"),
    )
}

async fn stop_kill_and_graceful(engine: &Arc<Engine>) -> Result<(), Failed> {
    // Both services ignore SIGTERM, so a graceful stop has to wait for the stop timeout.
    let stubborn = |marker: &str| {
        engine
            .container()
            .from("busybox:latest")
            .as_service(ServiceCommand {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("trap '' TERM; echo {marker}; while true; do sleep 0.1; done"),
                ],
                ..ServiceCommand::default()
            })
    };

    let kill_marker = format!("stop-kill-{}", std::process::id());
    let killed = stubborn(&kill_marker);
    let instance = killed.start().await.map_err(failure)?;
    // With no port to check, start() returns before the shell may have started.
    check(
        wait_for_process(&kill_marker, Duration::from_secs(5)).await,
        &format!(
            "the killed service runs (exit status {:?}, output {:?})",
            instance.exit_status(),
            instance.output.tail()
        ),
    )?;
    let requested = Instant::now();
    killed.stop(true).await.map_err(failure)?;
    let took = requested.elapsed();
    check(
        took < STOP / 2,
        &format!("stop(kill) does not wait for the stop timeout: {took:?}"),
    )?;
    expect_eq(
        &format!("{:?}", instance.exit_status()),
        &format!("{:?}", Some(ExitStatus::Signaled(libc::SIGKILL))),
    )?;
    let left = processes_with(&kill_marker);
    check(
        left.is_empty(),
        &format!("killed service processes remain: {left:?}"),
    )?;

    let term_marker = format!("stop-term-{}", std::process::id());
    let terminated = stubborn(&term_marker);
    terminated.start().await.map_err(failure)?;
    check(
        wait_for_process(&term_marker, Duration::from_secs(5)).await,
        "the stopped service runs",
    )?;
    let requested = Instant::now();
    terminated.stop(false).await.map_err(failure)?;
    let took = requested.elapsed();
    check(
        took >= STOP,
        &format!(
            "a graceful stop of a service that ignores SIGTERM waits the stop timeout: {took:?}"
        ),
    )?;
    check(
        took < STOP + Duration::from_secs(5),
        &format!("SIGKILL follows the stop timeout: {took:?}"),
    )?;
    let left = processes_with(&term_marker);
    check(
        left.is_empty(),
        &format!("stopped service processes remain: {left:?}"),
    )
}

async fn hostname_follows_service_args(shared: &Shared) -> Result<(), Failed> {
    let service_on = |engine: &Arc<Engine>, args: &[&str], use_entrypoint: bool| {
        engine
            .container()
            .from("busybox:latest")
            .with_exposed_port(8080, Protocol::Tcp, None, false)
            .as_service(ServiceCommand {
                args: args.iter().map(|arg| arg.to_string()).collect(),
                use_entrypoint,
                no_init: false,
            })
    };
    let engine = &shared.engine;
    let hostname = |service: Service| async move { service.hostname().await.map_err(failure) };

    let first = hostname(service_on(engine, &["httpd", "-f"], false)).await?;
    check(
        first.len() == 13
            && first
                .chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)),
        &format!("a hostname is 13 characters of lowercase base32: {first:?}"),
    )?;
    expect_eq(
        &hostname(service_on(engine, &["httpd", "-f"], false)).await?,
        &first,
    )?;
    let other_args = hostname(service_on(engine, &["httpd", "-f", "-v"], false)).await?;
    check(other_args != first, "other arguments give another hostname")?;
    let with_entrypoint = hostname(service_on(engine, &["httpd", "-f"], true)).await?;
    check(
        with_entrypoint != first,
        "use_entrypoint changes the hostname",
    )?;
    let with_health = service_on(engine, &["httpd", "-f"], false).with_health(HealthSettings {
        deadline: Some(Duration::from_secs(1)),
        ..HealthSettings::default()
    });
    expect_eq(&hostname(with_health).await?, &first)?;

    // A second engine session, with a store of its own, gives the same name.
    let second_config = Config {
        data_dir: shared.scratch.join("data-second-session"),
        ..shared.config.clone()
    };
    let second = Engine::new(second_config, shared.bootstrap.clone()).map_err(failure)?;
    let in_second = hostname(service_on(&second, &["httpd", "-f"], false)).await?;
    expect_eq(&in_second, &first)
}

async fn service_binds_service(engine: &Arc<Engine>) -> Result<(), Failed> {
    let backend = httpd_service(engine, "from the backend", "httpd -f -p 8080 -h /srv");
    // The front end fetches the backend's page once at start and serves what it got.
    let frontend = engine
        .container()
        .from("busybox:latest")
        .with_service_binding("backend", &backend)
        .map_err(failure)?
        .with_exposed_port(8080, Protocol::Tcp, None, false)
        .as_service(ServiceCommand {
            args: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "mkdir -p /srv; {} > /srv/index.html; httpd -f -p 8080 -h /srv",
                    fetch_page("backend")
                ),
            ],
            ..ServiceCommand::default()
        });
    let backend_hostname = backend.hostname().await.map_err(failure)?;
    let frontend_hostname = frontend.hostname().await.map_err(failure)?;
    check(
        backend_hostname != frontend_hostname,
        "the two services have their own hostnames",
    )?;

    let response = engine
        .container()
        .from("busybox:latest")
        .with_service_binding("front", &frontend)
        .map_err(failure)?
        .with_exec(["sh", "-c", &fetch_page("front")])
        .stdout()
        .await
        .map_err(failure)?;
    // The front end's page is the backend's whole response, headers included.
    let page = body_of(&response);
    check(
        page.starts_with("HTTP/1.1 200 OK\r\n"),
        &format!("the front end served the backend's response: {response:?}"),
    )?;
    expect_eq(body_of(page), "from the backend")
}

/// Binds a client as "front" to a front end that binds a backend as "backend". The backend
/// exits with 5 two seconds after it became healthy. Returns the client's error and how long
/// the client ran. `tag` keeps the definitions apart from those of other trials.
async fn break_service_chain(
    engine: &Arc<Engine>,
    tag: &str,
) -> Result<(String, Duration), Failed> {
    let backend = httpd_service(
        engine,
        &format!("{tag} backend"),
        "httpd -p 8080 -h /srv; sleep 2; echo backend dying; exit 5",
    );
    let frontend = engine
        .container()
        .from("busybox:latest")
        .with_new_file("/srv/index.html", &format!("{tag} front end"))
        .with_service_binding("backend", &backend)
        .map_err(failure)?
        .with_exposed_port(8080, Protocol::Tcp, None, false)
        .as_service(ServiceCommand {
            args: ["httpd", "-f", "-p", "8080", "-h", "/srv"]
                .map(String::from)
                .to_vec(),
            ..ServiceCommand::default()
        });
    let started = Instant::now();
    let client = engine
        .container()
        .from("busybox:latest")
        .with_service_binding("front", &frontend)
        .map_err(failure)?
        .with_exec(["sleep", "30"]);
    match client.stdout().await {
        Ok(output) => Err(format!("the client outlived the service chain: {output:?}").into()),
        Err(error) => Ok((with_causes(&error), started.elapsed())),
    }
}

/// Returns the error's message followed by each of its causes.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

async fn chained_service_death_fails_client(engine: &Arc<Engine>) -> Result<(), Failed> {
    let (error, elapsed) = break_service_chain(engine, "chained").await?;
    println!("client failed after {elapsed:?}: {error}");
    check(
        elapsed < Duration::from_secs(20),
        &format!("the client was stopped when the chain broke, not at its end: {elapsed:?}"),
    )?;
    check(
        error.contains("bound as \"front\""),
        &format!("the error names the client's own binding: {error}"),
    )
}

/// The client's error reports that the front end stopped, and why: its backend exited with 5
/// first.
async fn chained_death_names_root_cause(engine: &Arc<Engine>) -> Result<(), Failed> {
    let (error, _) = break_service_chain(engine, "root cause").await?;
    check(
        error.contains("exit status 5"),
        &format!("the error gives the backend's status: {error}"),
    )?;
    check(
        error.contains("backend dying"),
        &format!("the error gives the backend's output: {error}"),
    )
}

/// Returns the body of an HTTP response.
fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn read_lines(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Returns the PIDs of the processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// Waits up to `limit` for a process whose command line contains `marker`.
async fn wait_for_process(marker: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while processes_with(marker).is_empty() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn failure(error: impl std::fmt::Display) -> Failed {
    Failed::from(error.to_string())
}

fn check(condition: bool, message: &str) -> Result<(), Failed> {
    if condition {
        Ok(())
    } else {
        Err(message.into())
    }
}

fn expect_eq(actual: &str, expected: &str) -> Result<(), Failed> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!("expected {expected:?}, got {actual:?}").into())
    }
}
