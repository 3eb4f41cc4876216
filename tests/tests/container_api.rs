//! The Rust container API, in a process that enters the engine's namespaces first, as every
//! front-end must: `main` runs the bootstrap before any thread exists, then the trials.

use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};
use mayfly_engine::bootstrap::{self, BootstrapOptions};
use mayfly_engine::config::Config;
use mayfly_engine::container::ExecError;
use mayfly_engine::Engine;

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
        .prefix("mayfly-api-")
        .tempdir()
        .expect("failed to create a scratch directory");
    let data_dir = scratch.path().join("data");
    // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("MAYFLY_DATA_DIR", &data_dir);
        std::env::set_var("MAYFLY_RUNTIME_DIR", scratch.path().join("runtime"));
    }
    let config = Config::load().expect("invalid configuration");
    let options = BootstrapOptions {
        runtime_dir: Some(config.runtime_dir.clone()),
        data_dir: Some(config.data_dir.clone()),
        ..BootstrapOptions::default()
    };
    let bootstrap = bootstrap::enter(&options).expect("the engine bootstrap failed");

    let runtime = tokio::runtime::Runtime::new().expect("failed to start tokio");
    let engine = Engine::new(config, bootstrap).expect("failed to open the stores");
    let host_dir = scratch.path().join("host");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("greeting"), "from the host\n").unwrap();

    let shared = Arc::new((runtime, engine, host_dir));
    let trials = trial_names()
        .into_iter()
        .map(|name| {
            let shared = shared.clone();
            Trial::test(name, move || {
                let (runtime, engine, host_dir) = &*shared;
                runtime.block_on(run_trial(name, engine, host_dir))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&arguments, trials);

    drop(shared);
    let _ = mayfly_engine::state::remove_tree(&data_dir);
    conclusion.exit();
}

fn trial_names() -> Vec<&'static str> {
    vec![
        "api_exec_sees_definition",
        "api_exec_changes_carry_forward",
        "api_exit_code_and_failure",
        "api_mounted_directory",
        "api_hostname_is_stable",
    ]
}

async fn run_trial(
    name: &str,
    engine: &Arc<Engine>,
    host_dir: &std::path::Path,
) -> Result<(), Failed> {
    match name {
        "api_exec_sees_definition" => {
            let output = engine
                .container()
                .from("python:3.11")
                .with_workdir("/srv")
                .with_new_file("index.html", "Hello, world!")
                .with_env_variable("GREETING", "hi")
                .with_exec([
                    "python",
                    "-c",
                    "import os; print(open('index.html').read(), os.environ['GREETING'], os.getcwd())",
                ])
                .stdout()
                .await
                .map_err(failure)?;
            expect_eq(&output, "Hello, world! hi /srv\n")
        }
        "api_exec_changes_carry_forward" => {
            let base =
                engine
                    .container()
                    .from("busybox")
                    .with_exec(["sh", "-c", "echo one > /state.txt"]);
            let second = base.with_exec(["sh", "-c", "echo two >> /state.txt; cat /state.txt"]);
            expect_eq(&second.stdout().await.map_err(failure)?, "one\ntwo\n")?;
            // The first step's layer is shared, and a sibling branch does not see the other's
            // changes.
            let sibling = base.with_exec(["cat", "/state.txt"]);
            expect_eq(&sibling.stdout().await.map_err(failure)?, "one\n")
        }
        "api_exit_code_and_failure" => {
            let failing =
                engine
                    .container()
                    .from("busybox")
                    .with_exec(["sh", "-c", "echo oops >&2; exit 3"]);
            expect_eq(
                &failing.exit_code().await.map_err(failure)?.to_string(),
                "3",
            )?;
            match failing.stdout().await {
                Err(ExecError::ExecFailed {
                    code, stderr_tail, ..
                }) => {
                    expect_eq(&code.to_string(), "3")?;
                    expect_eq(&stderr_tail, "oops")
                }
                other => Err(format!("expected ExecFailed, got {other:?}").into()),
            }
        }
        "api_mounted_directory" => {
            let output = engine
                .container()
                .from("busybox")
                .with_mounted_directory("/src", host_dir)
                .with_exec(["cat", "/src/greeting"])
                .stdout()
                .await
                .map_err(failure)?;
            expect_eq(&output, "from the host\n")
        }
        "api_hostname_is_stable" => {
            let container = engine
                .container()
                .from("busybox")
                .with_env_variable("K", "V");
            let first = container.sync().await.map_err(failure)?;
            let again = container.sync().await.map_err(failure)?;
            let name = first.definition().hostname().map_err(failure)?;
            expect_eq(&name, &again.definition().hostname().map_err(failure)?)?;
            if name.len() != 13 {
                return Err(format!("hostname {name:?} is not 13 characters").into());
            }
            let changed = container
                .with_env_variable("K", "W")
                .sync()
                .await
                .map_err(failure)?;
            if changed.definition().hostname().map_err(failure)? == name {
                return Err("changing an env variable kept the hostname".into());
            }
            Ok(())
        }
        other => Err(format!("unknown trial {other}").into()),
    }
}

fn failure(error: impl std::fmt::Display) -> Failed {
    Failed::from(error.to_string())
}

fn expect_eq(actual: &str, expected: &str) -> Result<(), Failed> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!("expected {expected:?}, got {actual:?}").into())
    }
}
