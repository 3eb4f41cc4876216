//! Times the clients of one service, for `bench/service`: CLIENTS exec steps, each bound to
//! the same busybox httpd service and fetching its page with wget, run at once. The service
//! writes a line to a file in a host directory each time it starts, so the program can check
//! that however many clients there were, the service started exactly once.
//!
//! Usage: `service_clients CLIENTS STARTS_DIR [IMAGE]`, as the user who runs mayfly, with the
//! image already stored. It prints one line, `RESULT clients=N seconds=S starts=K`, and
//! exits with status 1 when a client fails or the service did not start exactly once.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use mayfly_engine::definition::Protocol;
use mayfly_engine::service::{Service, ServiceCommand};
use mayfly_engine::{bootstrap, config::Config, runtime, Engine};

const DEFAULT_IMAGE: &str = "127.0.0.1:5000/library/busybox:latest";
const PAGE: &str = "hi\n";

/// Service command that records its start, then serves the page with the command that the
/// `mayfly up` and `podman run` measurements of `bench/service` run.
const SERVICE_SCRIPT: &str = "echo started >> /starts/log && mkdir -p /srv && \
                              echo hi > /srv/index.html && exec httpd -f -p 8080 -h /srv";

struct Options {
    clients: usize,
    starts_dir: PathBuf,
    image: String,
}

fn main() -> Result<ExitCode, Box<dyn Error>> {
    runtime::init_if_requested();
    let options = parse_args()?;

    let config = Config::load()?;
    let bootstrap_options = bootstrap::BootstrapOptions {
        data_dir: Some(config.data_dir.clone()),
        runtime_dir: Some(config.runtime_dir.clone()),
        ..Default::default()
    };
    let bootstrap = bootstrap::enter(&bootstrap_options)?;
    let engine = Engine::new(config, bootstrap)?;

    // An empty log, so that every line in it after the run is a start of this run.
    let log = options.starts_dir.join("log");
    std::fs::write(&log, "")?;

    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(run_clients(&engine, &options));
    runtime.block_on(engine.stop_services());
    let seconds = outcome?;

    let starts = std::fs::read_to_string(&log)?.lines().count();
    println!(
        "RESULT clients={} seconds={seconds:.4} starts={starts}",
        options.clients
    );
    if starts != 1 {
        eprintln!(
            "service_clients: the service started {starts} times for {} clients; it should start once",
            options.clients
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_args() -> Result<Options, Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: service_clients CLIENTS STARTS_DIR [IMAGE]";
    let (clients, starts_dir) = match args.as_slice() {
        [clients, starts_dir] | [clients, starts_dir, _] => (clients, starts_dir),
        _ => return Err(usage.into()),
    };
    let clients: usize = clients
        .parse()
        .map_err(|_| format!("invalid CLIENTS {clients:?}: write a count from 1 up. {usage}"))?;
    if clients == 0 {
        return Err(format!("invalid CLIENTS 0: write a count from 1 up. {usage}").into());
    }
    Ok(Options {
        clients,
        starts_dir: PathBuf::from(starts_dir),
        image: args.get(2).cloned().unwrap_or(DEFAULT_IMAGE.to_owned()),
    })
}

/// Runs the clients at once and returns the seconds from their start to the last one's end.
async fn run_clients(engine: &Arc<Engine>, options: &Options) -> Result<f64, Box<dyn Error>> {
    let web = web_service(engine, &options.starts_dir, &options.image);

    // Resolve the stored image first, so that the time covers the service and its clients.
    web.hostname().await?;

    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..options.clients {
        // A distinct query string per client, so that the session does not share one exec
        // step among clients with the same command.
        let url = format!("http://web:8080/index.html?client={index}");
        let client = engine
            .container()
            .from(&options.image)
            .with_service_binding("web", &web)?
            .with_exec(["wget", "-q", "-O", "-", &url]);
        clients.spawn(async move { (index, client.stdout().await) });
    }
    while let Some(joined) = clients.join_next().await {
        let (index, page) = joined?;
        let page = page?;
        if page != PAGE {
            return Err(format!("client {index} got {page:?} instead of {PAGE:?}").into());
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

fn web_service(engine: &Arc<Engine>, starts_dir: &Path, image: &str) -> Service {
    engine
        .container()
        .from(image)
        .with_mounted_directory("/starts", starts_dir)
        .with_exposed_port(8080, Protocol::Tcp, Some("http"), false)
        .as_service(ServiceCommand {
            args: vec!["sh".into(), "-c".into(), SERVICE_SCRIPT.into()],
            ..ServiceCommand::default()
        })
}
