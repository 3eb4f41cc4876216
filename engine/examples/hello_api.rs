//! The README's Rust API example: a front-end that embeds the engine.

use mayfly_engine::{bootstrap, config::Config, runtime, Engine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    runtime::init_if_requested();
    let config = Config::load()?;
    let options = bootstrap::BootstrapOptions {
        data_dir: Some(config.data_dir.clone()),
        runtime_dir: Some(config.runtime_dir.clone()),
        ..Default::default()
    };
    let bootstrap = bootstrap::enter(&options)?;
    let engine = Engine::new(config, bootstrap)?;

    let output = tokio::runtime::Runtime::new()?.block_on(
        engine
            .container()
            .from("python:3.11")
            .with_workdir("/srv")
            .with_new_file("index.html", "Hello, world!")
            .with_exec(["python", "-c", "print(open('index.html').read())"])
            .stdout(),
    )?;
    print!("{output}");
    Ok(())
}
