//! Compose services as mayfly services: each Compose service becomes a container definition,
//! its `depends_on` and `links` become bindings under the dependency's name and aliases, and
//! a dependency with `service_completed_successfully` runs as a job to completion first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::error::{OutputTail, ServiceError};
use super::{HealthSettings, Instance, Service, ServiceCommand};
use crate::compose::{ComposeProject, ComposeService, DependencyCondition, Mount};
use crate::container::Container;
use crate::definition::{Change, Definition, ExposedPort};
use crate::session::Engine;

/// The services of one Compose project in one engine session.
pub struct ComposeServices {
    engine: Arc<Engine>,
    project: ComposeProject,
    /// Services already built, so that every client binds the same one.
    built: Mutex<HashMap<String, Service>>,
}

impl ComposeServices {
    pub fn new(engine: Arc<Engine>, project: ComposeProject) -> Self {
        Self {
            engine,
            project,
            built: Mutex::default(),
        }
    }

    pub fn project(&self) -> &ComposeProject {
        &self.project
    }

    /// Returns the container of service `name`, bound to the services it depends on and links to.
    pub fn container(&self, name: &str) -> Result<Container, ServiceError> {
        let compose = self.project.service(name)?;
        create_bind_sources(name, compose)?;
        let mut container = Container::from_definition(self.engine.clone(), definition_of(compose));

        let mut aliases: Vec<(String, String)> = Vec::new();
        for dependency in &compose.depends_on {
            if dependency.condition != DependencyCondition::CompletedSuccessfully {
                aliases.push((dependency.service.clone(), dependency.service.clone()));
            }
        }
        for (service, alias) in &compose.links {
            aliases.push((service.clone(), service.clone()));
            aliases.push((service.clone(), alias.clone()));
        }
        let mut bound = std::collections::HashSet::new();
        for (service, alias) in aliases {
            if !bound.insert(alias.clone()) {
                continue;
            }
            let dependency = self.service(&service)?;
            container = container.with_service_binding(&alias, &dependency)?;
        }
        Ok(container)
    }

    /// Returns service `name` running its default command, with the health check of the file.
    pub fn service(&self, name: &str) -> Result<Service, ServiceError> {
        if let Some(service) = self.built.lock().expect("compose lock poisoned").get(name) {
            return Ok(service.clone());
        }
        let compose = self.project.service(name)?;
        let service = self
            .container(name)?
            .as_service(ServiceCommand::default())
            .with_health(HealthSettings {
                check: compose.healthcheck.clone(),
                deadline: None,
                required_by: self.waits_healthy_for(name),
            })
            // Messages put "service" before the label themselves.
            .with_label(name);
        self.built
            .lock()
            .expect("compose lock poisoned")
            .insert(name.to_owned(), service.clone());
        Ok(service)
    }

    /// Returns the first service (by name) that depends on `name` with condition
    /// `service_healthy`.
    fn waits_healthy_for(&self, name: &str) -> Option<String> {
        let mut dependents = self.project.services.iter().filter(|(_, service)| {
            service.depends_on.iter().any(|dependency| {
                dependency.service == name && dependency.condition == DependencyCondition::Healthy
            })
        });
        dependents
            .next()
            .map(|(dependent, _)| format!("service {dependent}"))
    }

    /// Returns, in the order they run, the services that `roots` (or a service they depend
    /// on) need completed successfully.
    pub fn jobs(&self, roots: &[&str]) -> Result<Vec<String>, ServiceError> {
        let order = self.project.dependency_order(roots)?;
        let mut jobs: Vec<String> = Vec::new();
        for name in &order {
            for dependency in &self.project.service(name)?.depends_on {
                let is_job = dependency.condition == DependencyCondition::CompletedSuccessfully;
                if is_job && !jobs.contains(&dependency.service) {
                    jobs.push(dependency.service.clone());
                }
            }
        }
        // Jobs run in the order of the whole graph, so a job's own jobs come first.
        jobs.sort_by_key(|job| order.iter().position(|name| name == job));
        Ok(jobs)
    }

    /// Runs the [`ComposeServices::jobs`] of `roots` one after another, and fails on the
    /// first one that exits with a status other than 0. Returns each job's name and its
    /// finished instance, which keeps its output.
    pub async fn run_jobs(
        &self,
        roots: &[&str],
    ) -> Result<Vec<(String, Arc<Instance>)>, ServiceError> {
        let jobs = self.jobs(roots)?;
        let mut completed = Vec::new();
        for job in &jobs {
            tracing::info!(service = %job, "running a compose job to completion");
            let service = self.service(job)?;
            let reference = service.acquire().await?;
            let instance = reference.instance().clone();
            let status = instance.exited().await;
            if !status.success() {
                return Err(ServiceError::JobFailed {
                    service: job.to_owned(),
                    status,
                    output: OutputTail(instance.output.tail()),
                });
            }
            tracing::info!(service = %job, "compose job completed");
            completed.push((job.clone(), instance));
        }
        Ok(completed)
    }
}

/// Creates the missing source directories of bind mounts that ask for it, as Compose does
/// for the short syntax.
fn create_bind_sources(name: &str, compose: &ComposeService) -> Result<(), ServiceError> {
    for mount in &compose.mounts {
        let Mount::Bind {
            source,
            create_host_path: true,
            ..
        } = mount
        else {
            continue;
        };
        if source.exists() {
            continue;
        }
        std::fs::create_dir_all(source).map_err(|error| ServiceError::BindSource {
            service: name.to_owned(),
            path: source.clone(),
            source: error,
        })?;
        tracing::info!(service = %name, path = %source.display(), "created a missing bind mount source");
    }
    Ok(())
}

/// Turns a Compose service into a definition, in the order Docker applies the settings.
pub fn definition_of(compose: &ComposeService) -> Definition {
    let mut definition = Definition::from_reference(&compose.image);
    definition.base.platform = compose.platform.clone();

    if let Some(workdir) = &compose.working_dir {
        definition = definition.with(Change::Workdir {
            path: workdir.clone(),
        });
    }
    for (name, value) in &compose.environment {
        definition = definition.with(Change::Env {
            name: name.clone(),
            value: value.clone(),
        });
    }
    if let Some(user) = &compose.user {
        definition = definition.with(Change::User { user: user.clone() });
    }
    // A new entrypoint drops the image's command, so the command comes after it.
    if let Some(entrypoint) = &compose.entrypoint {
        definition = definition.with(Change::Entrypoint {
            args: entrypoint.clone(),
        });
    }
    if let Some(command) = &compose.command {
        definition = definition.with(Change::DefaultArgs {
            args: command.clone(),
        });
    }
    for mount in &compose.mounts {
        definition = definition.with(match mount {
            Mount::Bind {
                source,
                target,
                read_only,
                ..
            } => Change::MountedDirectory {
                path: target.clone(),
                source: source.to_string_lossy().into_owned(),
                read_only: *read_only,
            },
            Mount::Tmpfs { target, options } => Change::Tmpfs {
                path: target.clone(),
                options: options.clone(),
            },
        });
    }
    for file in &compose.files {
        definition = definition.with(Change::NewFile {
            path: file.target.clone(),
            contents: file.content.clone(),
            permissions: file.mode,
        });
    }

    // Published ports are offered to clients too, so they are health-checked like `expose`.
    let mut exposed: Vec<(u16, crate::definition::Protocol)> = compose.expose.clone();
    exposed.extend(
        compose
            .ports
            .iter()
            .map(|port| (port.target, port.protocol)),
    );
    exposed.sort();
    exposed.dedup();
    for (port, protocol) in exposed {
        definition = definition.with(Change::ExposedPort(ExposedPort {
            port,
            protocol,
            description: None,
            skip_health_check: false,
        }));
    }
    definition
}
