//! Command-line arguments of `mayfly`.

use clap::{Args, Parser, Subcommand};

/// A rootless, daemon-optional container engine for ephemeral services.
#[derive(Debug, Parser)]
#[command(name = "mayfly", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter, as in RUST_LOG (for example `info` or `mayfly_image=debug`).
    #[arg(long, global = true, env = "MAYFLY_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download an image from its registry into the local store.
    Pull(PullArgs),
    /// List the images in the local store.
    Images(ImagesArgs),
    /// Remove an image reference from the local store.
    Rmi(RmiArgs),
    /// Remove blobs and unpacked layers that no image refers to.
    Prune,
    /// Store credentials for a registry in the auth.json file Podman uses.
    Login(LoginArgs),
    /// Remove stored credentials for a registry.
    Logout(LogoutArgs),
    /// Run a command in a new container.
    Run(Box<RunArgs>),
    /// Run a container as a service: wait until it is healthy, publish its ports on the host
    /// and forward until Ctrl-C.
    Up(Box<UpArgs>),
    /// Run services of a Compose file: one as a job with its dependencies, or several with
    /// their ports published.
    Compose(ComposeArgs),
    /// Manage mayfly's own state.
    #[command(subcommand)]
    System(SystemCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    Auto,
    Sandbox,
    None,
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Delete every image, layer and blob in the local store.
    Reset(ResetArgs),
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Do not ask for confirmation.
    #[arg(long, short)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform to pull from an image index, as OS/ARCH[/VARIANT] (default: this host's).
    #[arg(long)]
    pub platform: Option<String>,
    /// Print no progress, only the manifest digest at the end.
    #[arg(long, short)]
    pub quiet: bool,
    /// Image reference, for example `python:3.11` or `127.0.0.1:5000/library/busybox:latest`.
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Image references to remove.
    #[arg(required = true)]
    pub references: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name; asked for on the terminal when missing.
    #[arg(long, short)]
    pub username: Option<String>,
    /// Read the password from standard input instead of the terminal.
    #[arg(long)]
    pub password_stdin: bool,
    /// Registry host, with port if not 443 (default: docker.io).
    pub registry: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry host, with port if not 443 (default: docker.io).
    pub registry: Option<String>,
}

/// Docker's health-check flags, and the overall wait mayfly adds.
#[derive(Debug, Args)]
pub struct HealthFlags {
    /// Command that checks the container's health, run with /bin/sh -c inside it; it
    /// replaces the port check (exit status 0 means healthy).
    #[arg(long = "health-cmd", value_name = "COMMAND")]
    pub cmd: Option<String>,
    /// Time between checks, such as 2s or 1m30s (default 30s).
    #[arg(long = "health-interval", value_name = "DURATION")]
    pub interval: Option<String>,
    /// Time one check may run before it counts as failed (default 30s).
    #[arg(long = "health-timeout", value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Consecutive failures that make the container unhealthy (default 3).
    #[arg(long = "health-retries", value_name = "N")]
    pub retries: Option<u32>,
    /// Start-up time during which failed checks do not count (default 0s).
    #[arg(long = "health-start-period", value_name = "DURATION")]
    pub start_period: Option<String>,
    /// Disable the image's HEALTHCHECK.
    #[arg(long = "no-healthcheck", conflicts_with = "cmd")]
    pub no_healthcheck: bool,
    /// Overall time each service that the command starts, bound services included, has to
    /// become healthy, such as 10s or 2m (default: the health-deadline setting, 60s).
    #[arg(long = "health-deadline", value_name = "DURATION")]
    pub deadline: Option<String>,
}

/// Flags that shape the container, shared by `run` and `up`.
#[derive(Debug, Args)]
pub struct ContainerFlags {
    /// Set an environment variable, as KEY=VALUE, or KEY to copy it from mayfly's environment.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container (created when missing).
    #[arg(long = "workdir", short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: NAME, UID, NAME:GROUP or UID:GID, resolved in the image's /etc/passwd.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Bind-mount a host path, as HOSTPATH:PATH, HOSTPATH:PATH:ro or HOSTPATH:PATH:rw.
    #[arg(long = "volume", short = 'v', value_name = "HOSTPATH:PATH[:ro|:rw]")]
    pub volumes: Vec<String>,
    /// Mount an empty tmpfs at PATH, with mount options such as size=64m,mode=1777.
    #[arg(long, value_name = "PATH[:OPTIONS]")]
    pub tmpfs: Vec<String>,
    /// Replace the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Write a file into the container before it starts, as PATH=CONTENT.
    #[arg(long = "new-file", value_name = "PATH=CONTENT")]
    pub new_files: Vec<String>,
    /// Run the command as PID 1 instead of under mayfly's small init.
    #[arg(long)]
    pub no_init: bool,
    /// Platform to pull when the image is missing, as OS/ARCH[/VARIANT].
    #[arg(long)]
    pub platform: Option<String>,
    /// Publish a container port on the host, as [ADDR:]HOSTPORT:CONTAINERPORT[/udp]. The
    /// address defaults to 127.0.0.1 (Docker's is 0.0.0.0); host port 0 picks a free one.
    #[arg(
        long = "publish",
        short = 'p',
        value_name = "[ADDR:]HOSTPORT:CONTAINERPORT[/udp]"
    )]
    pub publish: Vec<String>,
    /// Make a service on the host reachable from the container as ALIAS.
    #[arg(
        long = "host-service",
        value_name = "ALIAS=tcp://HOST:PORT[,udp://HOST:PORT]"
    )]
    pub host_services: Vec<String>,
    /// Bind a service of the compose file (-f) as ALIAS; it starts before the container runs.
    #[arg(long = "service", value_name = "ALIAS=SERVICE")]
    pub services: Vec<String>,
    /// Compose file that --service names services from (default: compose.yaml and the
    /// other usual names in the current directory).
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    pub compose_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub health: HealthFlags,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Accepted for compatibility with `docker run --rm`: mayfly always removes the container.
    #[arg(long)]
    pub rm: bool,
    #[command(flatten)]
    pub container: ContainerFlags,
    /// Keep standard input open and pass it to the container.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Allocate a pseudo-terminal for the container.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Network: `sandbox` joins the bridge with its DNS responder; `none` keeps loopback only.
    /// `auto` joins the bridge when the container publishes ports or binds services.
    #[arg(long, value_enum, default_value_t = NetworkMode::Auto)]
    pub network: NetworkMode,
    /// Container hostname (default: a name derived from the container).
    #[arg(long)]
    pub hostname: Option<String>,
    /// The image, then the command and its arguments (default: the image's Cmd). Everything
    /// after the image belongs to the container, options included, as with `docker run`.
    #[arg(
        value_name = "IMAGE [COMMAND [ARG...]]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub image_and_command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ComposeArgs {
    /// Compose file (default: compose.yaml, compose.yml, docker-compose.yaml or
    /// docker-compose.yml in the current directory).
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: ComposeCommand,
}

#[derive(Debug, Subcommand)]
pub enum ComposeCommand {
    /// Run SERVICE as a job, with every service it depends on started, shared and checked
    /// healthy first, and stopped afterwards; exits with the job's status.
    Run(ComposeRunArgs),
    /// Start services (default: all) with their dependencies, publish their ports and stream
    /// their output until Ctrl-C.
    Up(ComposeUpArgs),
}

#[derive(Debug, Args)]
pub struct ComposeRunArgs {
    /// Accepted for compatibility with `docker compose run --rm`: mayfly always removes the
    /// container.
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable in this container only, as NAME=VALUE, or NAME to copy it
    /// from mayfly's environment.
    #[arg(long = "env", short = 'e', value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Keep standard input open and pass it to the container.
    #[arg(long, short = 'i')]
    pub interactive: bool,
    /// Allocate a pseudo-terminal for the container.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// Publish the service's `ports` too (`compose run` leaves them out by default).
    #[arg(long)]
    pub service_ports: bool,
    #[command(flatten)]
    pub deadline: HealthDeadlineFlag,
    /// The service to run.
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// A command that replaces the service's `command`. Everything after SERVICE belongs to
    /// the container, options included, as with `docker compose run`.
    #[arg(
        value_name = "COMMAND [ARG...]",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ComposeUpArgs {
    #[command(flatten)]
    pub deadline: HealthDeadlineFlag,
    /// Services to start (default: every service in the file).
    pub services: Vec<String>,
}

/// The overall health wait of every service a Compose command starts.
#[derive(Debug, Args)]
pub struct HealthDeadlineFlag {
    /// Overall time each service has to become healthy, such as 10s or 2m (default: the
    /// health-deadline setting, 60s).
    #[arg(long = "health-deadline", value_name = "DURATION")]
    pub deadline: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub container: ContainerFlags,
    /// Offer a port to clients; a TCP port must accept connections before mayfly reports the
    /// service up. Without -p, every exposed port is published on 127.0.0.1 under its number.
    #[arg(long, value_name = "PORT[/udp]")]
    pub expose: Vec<String>,
    /// The image, then the command and its arguments (default: the image's Cmd).
    #[arg(
        value_name = "IMAGE [COMMAND [ARG...]]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub image_and_command: Vec<String>,
}

impl UpArgs {
    pub fn image(&self) -> &str {
        &self.image_and_command[0]
    }

    pub fn command(&self) -> &[String] {
        &self.image_and_command[1..]
    }
}

impl RunArgs {
    pub fn image(&self) -> &str {
        &self.image_and_command[0]
    }

    pub fn command(&self) -> &[String] {
        &self.image_and_command[1..]
    }
}
