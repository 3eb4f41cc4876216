//! Running one exec step of a definition: the command runs on the root file system that the
//! earlier steps left, its output is captured, and the files it changed become a layer that
//! later steps build on.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{prepare, ContainerError, ProcessRequest};
use crate::bootstrap::Storage;
use crate::definition::Definition;
use crate::images::LocalImage;
use crate::runtime::{self, RuntimeError, Stdio};
use crate::service::{BoundServices, ServiceBinding};
use crate::session::Engine;

/// Errors from evaluating a definition.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Images(#[from] crate::images::ImagesError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Definition(#[from] crate::definition::DefinitionError),
    #[error(transparent)]
    Service(Box<crate::service::ServiceError>),
    #[error("invalid image reference {reference:?}")]
    Reference {
        reference: String,
        #[source]
        source: mayfly_image::reference::ReferenceError,
    },
    #[error("invalid platform {platform:?}")]
    Platform {
        platform: String,
        #[source]
        source: mayfly_image::platform::PlatformError,
    },
    #[error("the container has no image: call from() before anything that runs it")]
    NoImage,
    #[error(
        "the container has no exec step, so it has no output or exit code: call with_exec() first"
    )]
    NoExec,
    #[error("{command:?} exited with status {code}; its standard error ends with:\n{stderr_tail}")]
    ExecFailed {
        command: Vec<String>,
        code: i32,
        stderr_tail: String,
    },
    #[error("failed to keep the files that {command:?} changed, at {path}")]
    Snapshot {
        command: Vec<String>,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read the output of {command:?}")]
    Output {
        command: Vec<String>,
        #[source]
        source: std::io::Error,
    },
}

/// Outcome of one exec step: its output, its status and the layers after it.
#[derive(Debug)]
pub struct ExecOutcome {
    pub command: Vec<String>,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    /// Layers on top of the image after this step, lowest first.
    pub layers: Vec<PathBuf>,
    /// Whether `layers` replaces the image's layers (the copied fallback keeps one whole tree).
    pub replaces_image: bool,
}

/// One exec step's command and what it runs with.
pub(crate) struct ExecStep {
    pub args: Vec<String>,
    pub stdin: Option<String>,
    pub no_init: bool,
    /// Services bound before the step; with any, the step joins the network sandbox.
    pub bindings: Vec<ServiceBinding>,
}

/// Runs the exec step that ends `prefix`, on the layers `before` left.
pub(crate) async fn run_exec(
    engine: &Arc<Engine>,
    prefix: &Definition,
    image: &LocalImage,
    before: Option<&ExecOutcome>,
    step: ExecStep,
) -> Result<ExecOutcome, ExecError> {
    let ExecStep {
        args,
        stdin,
        no_init,
        bindings,
    } = step;
    let key = prefix.digest()?;
    let (effective_image, extra) = layers_after(image, before);

    // A step with bindings joins the sandbox; one without keeps loopback only, like
    // `mayfly run --network none`.
    let bound = BoundServices::acquire(&bindings)
        .await
        .map_err(|error| ExecError::Service(Box::new(error)))?;
    let network = match bound.is_empty() {
        true => None,
        false => Some(engine.network().await?),
    };
    let request = ProcessRequest {
        resolv_conf: network.map(|network| network.resolv_conf()),
        args: Some(args.clone()),
        no_init,
        stdin: if stdin.is_some() {
            Stdio::Piped
        } else {
            Stdio::Null
        },
        stdout: Stdio::Piped,
        stderr: Stdio::Piped,
        ..ProcessRequest::default()
    };
    // The definition's own entrypoint does not apply to exec steps, as in Dagger: the
    // arguments are the whole command line.
    let mut without_entrypoint = prefix.clone();
    without_entrypoint
        .changes
        .push(crate::definition::Change::Entrypoint { args: Vec::new() });
    let _layers_in_use = engine.images().hold(image)?;
    let spec = prepare(
        engine.bootstrap(),
        &engine.files_dir(),
        &without_entrypoint,
        &effective_image,
        &extra,
        request,
    )?;

    tracing::info!(command = ?args, "running exec step");
    let hostname = spec.oci.hostname().clone().unwrap_or_default();
    let mut process = runtime::spawn(&spec)?;
    let link = match network {
        Some(network) => {
            let link = network.attach(process.pid(), &hostname)?;
            bound
                .register_aliases(network.dns().registry(), link.address())
                .map_err(|error| ExecError::Service(Box::new(error)))?;
            Some(link)
        }
        None => None,
    };
    let stdin_pipe = process.take_stdin();
    let stdout_pipe = process.take_stdout();
    let stderr_pipe = process.take_stderr();
    let mut process = tokio::task::spawn_blocking(move || process.start().map(|()| process))
        .await
        .expect("the container start task panicked")?;

    let feeder = stdin.zip(stdin_pipe).map(|(text, mut pipe)| {
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let stdout_reader = std::thread::spawn(move || read_all(stdout_pipe));
    let stderr_reader = std::thread::spawn(move || read_all(stderr_pipe));
    let status = tokio::select! {
        status = process.wait() => status?,
        error = bound.first_exit() => {
            let _ = process.signal(nix::sys::signal::Signal::SIGKILL);
            return Err(ExecError::Service(Box::new(error)));
        }
    };
    drop(link);
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    let output_error = |source| ExecError::Output {
        command: args.clone(),
        source,
    };
    let stdout = stdout_reader
        .join()
        .expect("reader panicked")
        .map_err(output_error)?;
    let stderr = stderr_reader
        .join()
        .expect("reader panicked")
        .map_err(output_error)?;

    let snapshot = engine
        .snapshots_dir()
        .join(format!("{}-{}", &key.hex()[..16], &spec.id[..16]));
    let (layers, replaces_image) = keep_changes(
        process.state_dir(),
        engine.bootstrap().storage(),
        &snapshot,
        &extra,
        before.is_some_and(|outcome| outcome.replaces_image),
    )
    .map_err(|source| ExecError::Snapshot {
        command: args.clone(),
        path: snapshot.clone(),
        source,
    })?;
    if let Err(error) = process.remove() {
        tracing::warn!(%error, "failed to remove an exec step's container");
    }

    tracing::info!(command = ?args, code = status.code(), "exec step finished");
    Ok(ExecOutcome {
        command: args,
        stdout,
        stderr,
        exit_code: status.code(),
        layers,
        replaces_image,
    })
}

/// Returns the image and the extra layers that a container after the exec step `before`
/// starts from.
pub(crate) fn layers_after(
    image: &LocalImage,
    before: Option<&ExecOutcome>,
) -> (LocalImage, Vec<PathBuf>) {
    let (mut effective_image, extra) = match before {
        Some(outcome) if outcome.replaces_image => (
            LocalImage {
                layer_dirs: Vec::new(),
                ..image.clone()
            },
            outcome.layers.clone(),
        ),
        Some(outcome) => (image.clone(), outcome.layers.clone()),
        None => (image.clone(), Vec::new()),
    };
    effective_image.warnings = Default::default();
    (effective_image, extra)
}

fn read_all(pipe: Option<std::fs::File>) -> std::io::Result<String> {
    let mut text = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut text)?;
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Moves what the step changed out of its state directory before the directory goes: the
/// overlay's upper directory becomes one more layer, or with the copied fallback the whole
/// tree replaces every layer.
fn keep_changes(
    state_dir: Option<&Path>,
    storage: Storage,
    snapshot: &Path,
    before: &[PathBuf],
    before_replaces_image: bool,
) -> std::io::Result<(Vec<PathBuf>, bool)> {
    let state_dir =
        state_dir.ok_or_else(|| std::io::Error::other("the container kept no state directory"))?;
    let (source, replaces_image) = match storage {
        Storage::Overlay => (state_dir.join("upper"), before_replaces_image),
        Storage::Copy => (state_dir.join("rootfs"), true),
    };
    std::fs::create_dir_all(snapshot)?;
    let root = snapshot.join("root");
    std::fs::rename(&source, &root)?;

    let layers = match storage {
        Storage::Overlay => {
            let mut layers = before.to_vec();
            layers.push(root);
            layers
        }
        Storage::Copy => vec![root],
    };
    Ok((layers, replaces_image))
}

/// Reads the last lines of `text`, for error messages.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
