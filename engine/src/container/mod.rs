//! From a container definition and its image to a runtime spec: Docker's image-config rules,
//! users from the image's own files, new files as a layer, bind and tmpfs mounts.

pub mod builder;
pub mod exec;
mod files;
mod settings;
mod user;

use std::path::{Path, PathBuf};

use oci_spec::runtime::{MountBuilder, RootBuilder, UserBuilder};

pub use builder::Container;
pub use exec::{ExecError, ExecOutcome};
pub use files::{file_layer, read_through_layers};
pub use settings::{FileRequest, MountRequest, Settings};
pub use user::{resolve_user, ResolvedUser};

use crate::bootstrap::Bootstrap;
use crate::definition::Definition;
use crate::images::LocalImage;
use crate::runtime::{default_spec, ContainerSpec, Stdio};

/// Errors from turning a definition into a runnable container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("unable to find user {user}: no matching entry in the image's /etc/passwd")]
    UserNotFound { user: String },
    #[error("unable to find group {group}: no matching entry in the image's /etc/group")]
    GroupNotFound { group: String },
    #[error(
        "no command to run: the image has no Entrypoint or Cmd; give a command after the image name"
    )]
    NoCommand,
    #[error("invalid container path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("bind mount source {path} does not exist or cannot be read; create it or fix the mount (-v, or the volume in a Compose file)")]
    MissingBindSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write the new-file layer at {path}")]
    FileLayer {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to build the runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// Process settings beyond the definition: the command, the terminal and the streams.
#[derive(Debug, Clone, Default)]
pub struct ProcessRequest {
    /// Arguments after the entrypoint; `None` uses the image's (or definition's) defaults.
    pub args: Option<Vec<String>>,
    pub tty: bool,
    pub no_init: bool,
    pub hostname: Option<String>,
    /// Content of `/etc/resolv.conf`; `None` keeps the image's file.
    pub resolv_conf: Option<String>,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

/// Builds the runtime spec for running `request` in `definition` on `image`.
///
/// `extra_layers` are snapshots of earlier exec steps, stacked on the image's layers.
pub fn prepare(
    bootstrap: &Bootstrap,
    files_dir: &Path,
    definition: &Definition,
    image: &LocalImage,
    extra_layers: &[PathBuf],
    request: ProcessRequest,
) -> Result<ContainerSpec, ContainerError> {
    let mut settings = Settings::from_image(&image.config);
    settings.apply_all(definition)?;

    let mut layers = image.layer_dirs.clone();
    layers.extend_from_slice(extra_layers);
    if !settings.files.is_empty() {
        layers.push(file_layer(files_dir, &settings.files)?);
    }

    let passwd = read_through_layers(&layers, "/etc/passwd").unwrap_or_default();
    let group = read_through_layers(&layers, "/etc/group").unwrap_or_default();
    let user = resolve_user(&settings.user, &passwd, &group)?;

    let id = new_container_id();
    let hostname = request
        .hostname
        .clone()
        .unwrap_or_else(|| id[..12].to_owned());
    if settings.env_value("HOME").is_none() {
        let home = user.home.clone().unwrap_or_else(|| "/".to_owned());
        settings.set_env("HOME", &home);
    }
    if settings.env_value("HOSTNAME").is_none() {
        settings.set_env("HOSTNAME", &hostname);
    }
    if request.tty && settings.env_value("TERM").is_none() {
        settings.set_env("TERM", "xterm");
    }

    let mut oci = default_spec();
    let process = oci
        .process_mut()
        .as_mut()
        .expect("the default spec has a process");
    process.set_args(Some(settings.command(request.args.as_deref())?));
    process.set_env(Some(settings.env_list()));
    process.set_cwd(PathBuf::from(&settings.workdir));
    process.set_terminal(Some(request.tty));
    let mut oci_user = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        oci_user = oci_user.additional_gids(user.additional_gids.clone());
    }
    process.set_user(oci_user.build()?);
    oci.set_hostname(Some(hostname.clone()));
    // oci-spec's default root is read-only; a container's root is writable, as in Docker.
    oci.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()?,
    ));
    oci.set_mounts(Some(mounts(&settings.mounts)?));

    Ok(ContainerSpec {
        id,
        oci,
        layers,
        storage: bootstrap.storage(),
        containers_dir: bootstrap.state_dirs().containers.clone(),
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
        no_init: request.no_init,
        hosts: Some(hosts_file(&hostname)),
        resolv_conf: request.resolv_conf,
    })
}

fn mounts(requests: &[MountRequest]) -> Result<Vec<oci_spec::runtime::Mount>, ContainerError> {
    let mut mounts = Vec::new();
    for request in requests {
        let mount = match request {
            MountRequest::Bind {
                source,
                destination,
                read_only,
            } => {
                let source = std::fs::canonicalize(source).map_err(|error| {
                    ContainerError::MissingBindSource {
                        path: source.clone(),
                        source: error,
                    }
                })?;
                let mut options = vec!["rbind".to_owned()];
                if *read_only {
                    options.push("ro".to_owned());
                }
                MountBuilder::default()
                    .destination(destination)
                    .typ("bind")
                    .source(source)
                    .options(options)
                    .build()?
            }
            MountRequest::Tmpfs {
                destination,
                options,
            } => {
                let mut all = vec!["nosuid".to_owned(), "nodev".to_owned()];
                if !options.iter().any(|option| option.starts_with("mode=")) {
                    all.push("mode=1777".to_owned());
                }
                all.extend(options.iter().cloned());
                MountBuilder::default()
                    .destination(destination)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(all)
                    .build()?
            }
        };
        mounts.push(mount);
    }
    Ok(mounts)
}

fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
}

/// Makes a 64-hex-digit container ID from the clock, the process and a counter. It is unique
/// within and across the engines of one user, which is all the state directories need.
fn new_container_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let seed = format!(
        "{nanos}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    mayfly_image::digest::Digest::of_bytes(seed.as_bytes())
        .hex()
        .to_owned()
}
