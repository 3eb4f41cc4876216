//! The container API front-ends build on, in the spirit of Dagger's: each step returns a new
//! definition, and nothing runs until a result such as [`Container::stdout`] is asked for.
//!
//! ```no_run
//! # async fn example(engine: std::sync::Arc<mayfly_engine::Engine>) -> Result<(), mayfly_engine::container::ExecError> {
//! let output = engine
//!     .container()
//!     .from("python:3.11")
//!     .with_workdir("/srv")
//!     .with_new_file("index.html", "Hello, world!")
//!     .with_env_variable("GREETING", "hi")
//!     .with_exec(["python", "-c", "print(open('index.html').read())"])
//!     .stdout()
//!     .await?;
//! assert_eq!(output, "Hello, world!\n");
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::sync::Arc;

use mayfly_image::reference::Reference;

use super::exec::{run_exec, tail, ExecError, ExecOutcome, ExecStep};
use crate::definition::{Change, Definition, ExecOptions, ExposedPort, Protocol};
use crate::images::LocalImage;
use crate::service::{Service, ServiceBinding, ServiceCommand, ServiceError};
use crate::session::Engine;

/// A container definition bound to the engine that evaluates it.
#[derive(Clone)]
pub struct Container {
    engine: Arc<Engine>,
    definition: Definition,
    /// The services of the definition's `ServiceBinding` changes, in the same order.
    bindings: Vec<ServiceBinding>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("definition", &self.definition)
            .finish()
    }
}

impl Container {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self::from_definition(engine, Definition::from_reference(""))
    }

    /// A container for a plain definition that binds no service, such as one built from
    /// command-line flags.
    pub fn from_definition(engine: Arc<Engine>, definition: Definition) -> Self {
        Self {
            engine,
            definition,
            bindings: Vec::new(),
        }
    }

    /// The plain definition, with its canonical serialisation and digest.
    pub fn definition(&self) -> &Definition {
        &self.definition
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The bound services, in binding order.
    pub fn bindings(&self) -> &[ServiceBinding] {
        &self.bindings
    }

    fn with(&self, change: Change) -> Self {
        Self {
            engine: self.engine.clone(),
            definition: self.definition.with(change),
            bindings: self.bindings.clone(),
        }
    }

    /// Starts from an image, dropping every earlier step.
    pub fn from(&self, reference: &str) -> Self {
        Self::from_definition(self.engine.clone(), Definition::from_reference(reference))
    }

    /// Offers `port` to clients. Unless `skip_health_check`, a TCP port must accept
    /// connections before any client of the service runs.
    pub fn with_exposed_port(
        &self,
        port: u16,
        protocol: Protocol,
        description: Option<&str>,
        skip_health_check: bool,
    ) -> Self {
        self.with(Change::ExposedPort(ExposedPort {
            port,
            protocol,
            description: description.map(str::to_owned),
            skip_health_check,
        }))
    }

    /// Removes a port that the image or an earlier step exposed.
    pub fn without_exposed_port(&self, port: u16, protocol: Protocol) -> Self {
        self.with(Change::WithoutExposedPort { port, protocol })
    }

    /// Makes `service` reachable as `alias` from the exec steps that follow and from this
    /// container when it runs as a service. The service starts when a step needs it.
    pub fn with_service_binding(
        &self,
        alias: &str,
        service: &Service,
    ) -> Result<Self, ServiceError> {
        let binding = ServiceBinding::new(alias, service.clone())?;
        let mut next = self.with(Change::ServiceBinding {
            alias: alias.to_owned(),
            service: String::new(),
        });
        next.bindings.push(binding);
        Ok(next)
    }

    /// Turns the container into a service that runs `command`.
    pub fn as_service(&self, command: ServiceCommand) -> Service {
        Service::from_container(self.clone(), command)
    }

    /// Selects the platform to pull, as OS/ARCH[/VARIANT].
    pub fn with_platform(&self, platform: &str) -> Self {
        let mut next = self.clone();
        next.definition.base.platform = Some(platform.to_owned());
        next
    }

    pub fn with_workdir(&self, path: &str) -> Self {
        self.with(Change::Workdir {
            path: path.to_owned(),
        })
    }

    pub fn with_env_variable(&self, name: &str, value: &str) -> Self {
        self.with(Change::Env {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }

    pub fn without_env_variable(&self, name: &str) -> Self {
        self.with(Change::WithoutEnv {
            name: name.to_owned(),
        })
    }

    /// Writes a file with mode 0644; a relative path is taken from the working directory.
    pub fn with_new_file(&self, path: &str, contents: &str) -> Self {
        self.with_new_file_mode(path, contents, 0o644)
    }

    pub fn with_new_file_mode(&self, path: &str, contents: &str, permissions: u32) -> Self {
        self.with(Change::NewFile {
            path: path.to_owned(),
            contents: contents.to_owned(),
            permissions,
        })
    }

    /// Bind-mounts a host directory (read-write) at `path`.
    pub fn with_mounted_directory(&self, path: &str, host_dir: impl AsRef<Path>) -> Self {
        self.with(Change::MountedDirectory {
            path: path.to_owned(),
            source: host_dir.as_ref().to_string_lossy().into_owned(),
            read_only: false,
        })
    }

    pub fn with_mounted_tmpfs(&self, path: &str) -> Self {
        self.with(Change::Tmpfs {
            path: path.to_owned(),
            options: Vec::new(),
        })
    }

    /// Sets the user, as NAME, UID, NAME:GROUP or UID:GID.
    pub fn with_user(&self, user: &str) -> Self {
        self.with(Change::User {
            user: user.to_owned(),
        })
    }

    pub fn with_entrypoint<S: AsRef<str>>(&self, args: impl IntoIterator<Item = S>) -> Self {
        self.with(Change::Entrypoint {
            args: args
                .into_iter()
                .map(|arg| arg.as_ref().to_owned())
                .collect(),
        })
    }

    pub fn with_default_args<S: AsRef<str>>(&self, args: impl IntoIterator<Item = S>) -> Self {
        self.with(Change::DefaultArgs {
            args: args
                .into_iter()
                .map(|arg| arg.as_ref().to_owned())
                .collect(),
        })
    }

    /// Runs a command on the file system the earlier steps left; its file changes carry into
    /// later steps.
    pub fn with_exec<S: AsRef<str>>(&self, args: impl IntoIterator<Item = S>) -> Self {
        self.with_exec_options(args, ExecOptions::default())
    }

    pub fn with_exec_options<S: AsRef<str>>(
        &self,
        args: impl IntoIterator<Item = S>,
        options: ExecOptions,
    ) -> Self {
        self.with(Change::Exec {
            args: args
                .into_iter()
                .map(|arg| arg.as_ref().to_owned())
                .collect(),
            options,
        })
    }

    /// Resolves the image (pulling it when missing) and runs every exec step, reusing steps
    /// this session already ran. Returns the container with its resolved image digest.
    pub async fn sync(&self) -> Result<Container, ExecError> {
        self.evaluate().await.map(|(container, _, _)| container)
    }

    /// Standard output of the last exec step; an error when it exited with a non-zero status.
    pub async fn stdout(&self) -> Result<String, ExecError> {
        let outcome = self.last_successful_exec().await?;
        Ok(outcome.stdout.clone())
    }

    /// Standard error of the last exec step; an error when it exited with a non-zero status.
    pub async fn stderr(&self) -> Result<String, ExecError> {
        let outcome = self.last_successful_exec().await?;
        Ok(outcome.stderr.clone())
    }

    /// Exit status of the last exec step, whatever it was.
    pub async fn exit_code(&self) -> Result<i32, ExecError> {
        let (_, _, last) = self.evaluate().await?;
        Ok(last.ok_or(ExecError::NoExec)?.exit_code)
    }

    async fn last_successful_exec(&self) -> Result<Arc<ExecOutcome>, ExecError> {
        let (_, _, last) = self.evaluate().await?;
        let outcome = last.ok_or(ExecError::NoExec)?;
        if outcome.exit_code != 0 {
            return Err(failed(&outcome));
        }
        Ok(outcome)
    }

    /// Returns the definition with its image digest and the hostnames of its bound services
    /// filled in, without running any exec step, and the image.
    pub(crate) async fn resolved_definition(&self) -> Result<(Definition, LocalImage), ExecError> {
        let image = self.resolve_image().await?;
        let mut resolved = self.definition.clone();
        resolved.base.manifest = Some(image.record.manifest_digest.clone());

        let mut bindings = self.bindings.iter();
        for change in &mut resolved.changes {
            let Change::ServiceBinding { service, .. } = change else {
                continue;
            };
            let binding = bindings
                .next()
                .expect("one binding per service-binding change");
            *service = binding
                .service
                .hostname()
                .await
                .map_err(|error| ExecError::Service(Box::new(error)))?;
        }
        Ok((resolved, image))
    }

    /// Returns the resolved container, its image and the outcome of its last exec step.
    pub(crate) async fn evaluate(
        &self,
    ) -> Result<(Container, LocalImage, Option<Arc<ExecOutcome>>), ExecError> {
        let (resolved, image) = self.resolved_definition().await?;

        let mut last: Option<Arc<ExecOutcome>> = None;
        for (index, change) in resolved.changes.iter().enumerate() {
            let Change::Exec { args, options } = change else {
                continue;
            };
            // Earlier steps must have succeeded for a later one to run on their files.
            if let Some(previous) = &last {
                if previous.exit_code != 0 {
                    return Err(failed(previous));
                }
            }
            let prefix = Definition {
                base: resolved.base.clone(),
                changes: resolved.changes[..=index].to_vec(),
            };
            let key = prefix.digest()?;
            let cached = self
                .engine
                .execs
                .lock()
                .expect("exec cache poisoned")
                .get(&key)
                .cloned();
            let outcome = match cached {
                Some(outcome) => outcome,
                None => {
                    let bound_before = resolved.changes[..index]
                        .iter()
                        .filter(|change| matches!(change, Change::ServiceBinding { .. }))
                        .count();
                    let step = ExecStep {
                        args: args.clone(),
                        stdin: options.stdin.clone(),
                        no_init: options.no_init,
                        bindings: self.bindings[..bound_before].to_vec(),
                    };
                    let outcome = Arc::new(
                        run_exec(&self.engine, &prefix, &image, last.as_deref(), step).await?,
                    );
                    self.engine
                        .execs
                        .lock()
                        .expect("exec cache poisoned")
                        .insert(key, outcome.clone());
                    outcome
                }
            };
            last = Some(outcome);
        }

        let container = Container {
            engine: self.engine.clone(),
            definition: resolved,
            bindings: self.bindings.clone(),
        };
        Ok((container, image, last))
    }

    async fn resolve_image(&self) -> Result<LocalImage, ExecError> {
        let base = &self.definition.base;
        if base.reference.is_empty() {
            return Err(ExecError::NoImage);
        }
        let reference =
            Reference::parse(&base.reference).map_err(|source| ExecError::Reference {
                reference: base.reference.clone(),
                source,
            })?;
        let platform = base
            .platform
            .as_deref()
            .map(|text| {
                text.parse().map_err(|source| ExecError::Platform {
                    platform: text.to_owned(),
                    source,
                })
            })
            .transpose()?;
        Ok(self
            .engine
            .images()
            .ensure(&reference, platform, self.engine.progress.as_ref())
            .await?)
    }
}

fn failed(outcome: &ExecOutcome) -> ExecError {
    ExecError::ExecFailed {
        command: outcome.command.clone(),
        code: outcome.exit_code,
        stderr_tail: tail(&outcome.stderr, 20),
    }
}
