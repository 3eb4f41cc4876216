//! One service definition: each supported key read into `ComposeService`, every other key
//! recorded as a warning.

use std::collections::BTreeMap;

use super::configs::{self, ConfigDefinition};
use super::context::Context;
use super::dotenv;
use super::error::ComposeError;
use super::health::healthcheck;
use super::known_keys;
use super::model::{ComposeService, ComposeWarning, Dependency, DependencyCondition};
use super::mounts;
use super::ports;
use super::yaml::{join_key, Node, Value};

/// The service names and top-level configs that a service may refer to.
pub(super) struct Scope<'a> {
    pub services: &'a [String],
    pub configs: &'a BTreeMap<String, ConfigDefinition>,
}

/// Reads the service `name` from `node`, found at `key` (`services.<name>`).
pub(super) fn service(
    context: &mut Context,
    name: &str,
    node: &Node,
    key: &str,
    scope: &Scope,
) -> Result<ComposeService, ComposeError> {
    let mut service = ComposeService {
        name: name.to_owned(),
        image: String::new(),
        platform: None,
        command: None,
        entrypoint: None,
        environment: Vec::new(),
        working_dir: None,
        user: None,
        expose: Vec::new(),
        ports: Vec::new(),
        healthcheck: None,
        depends_on: Vec::new(),
        links: Vec::new(),
        mounts: Vec::new(),
        files: Vec::new(),
    };
    let mut image = None;
    let mut has_build = false;
    let mut env_file_variables = Vec::new();

    for (entry, value) in context.mapping(node, key)? {
        let entry_key = join_key(key, entry);
        match entry.as_str() {
            "image" => image = context.optional_text(value, &entry_key)?,
            "build" => has_build = true,
            "platform" => service.platform = context.optional_text(value, &entry_key)?,
            "command" => service.command = command_line(context, value, &entry_key)?,
            "entrypoint" => service.entrypoint = command_line(context, value, &entry_key)?,
            "environment" => service.environment = environment(context, value, &entry_key)?,
            "env_file" => env_file_variables = env_files(context, value, &entry_key)?,
            "working_dir" => service.working_dir = context.optional_text(value, &entry_key)?,
            "user" => service.user = context.optional_text(value, &entry_key)?,
            "expose" => service.expose = ports::expose(context, value, &entry_key)?,
            "ports" => service.ports = ports::ports(context, value, &entry_key)?,
            "healthcheck" => service.healthcheck = healthcheck(context, value, &entry_key)?,
            "depends_on" => {
                service.depends_on = depends_on(context, value, &entry_key, scope.services)?
            }
            "links" => service.links = links(context, value, &entry_key, scope.services)?,
            "volumes" => service
                .mounts
                .extend(mounts::volumes(context, value, &entry_key)?),
            "tmpfs" => service
                .mounts
                .extend(mounts::tmpfs(context, value, &entry_key)?),
            "configs" => {
                service.files = configs::service_files(context, value, &entry_key, scope.configs)?
            }
            "extends" => {
                return Err(ComposeError::Unsupported {
                    at: context.at(value, &entry_key),
                    what: "extends".to_owned(),
                    hint: "copy the settings of the extended service into this one",
                })
            }
            _ => context.ignore_key(key, entry, known_keys::SERVICE),
        }
    }

    // `environment` overrides `env_file`, wherever each appears in the service.
    for (name, value) in std::mem::take(&mut service.environment) {
        set_variable(&mut env_file_variables, name, value);
    }
    service.environment = env_file_variables;

    match image.filter(|image| !image.is_empty()) {
        Some(image) => {
            if has_build {
                context.ignore_with_reason(
                    &join_key(key, "build"),
                    "mayfly does not build images and runs the image named by image",
                );
            }
            service.image = image;
            Ok(service)
        }
        None if has_build => Err(ComposeError::BuildNotSupported {
            at: context.at(node, key),
            service: name.to_owned(),
        }),
        None => Err(ComposeError::MissingImage {
            at: context.at(node, key),
            service: name.to_owned(),
        }),
    }
}

/// Reads `command` or `entrypoint`: a string split into words as a POSIX shell would, or a list.
/// Null keeps the image's value.
fn command_line(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<Option<Vec<String>>, ComposeError> {
    match &node.value {
        Value::Null => Ok(None),
        Value::Scalar { .. } => {
            let text = context.text(node, key)?;
            let words =
                shell_words::split(&text).map_err(|source| ComposeError::InvalidCommand {
                    at: context.at(node, key),
                    value: text.clone(),
                    source,
                })?;
            Ok(Some(words))
        }
        Value::Sequence(_) => context.text_or_list(node, key).map(Some),
        Value::Mapping(_) => Err(context.wrong_type(node, key, "a string or a list of strings")),
    }
}

/// Reads `environment` as a mapping or as a list of `NAME=VALUE` strings. A name without a value
/// takes the value of mayfly's own variable of that name, or is left out when it is unset.
fn environment(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<Vec<(String, String)>, ComposeError> {
    let mut variables: Vec<(String, String)> = Vec::new();
    let mut set = |name: String, value: Option<String>| {
        if let Some(value) = value {
            set_variable(&mut variables, name, value);
        }
    };

    match &node.value {
        Value::Null => {}
        Value::Mapping(entries) => {
            for (name, value) in entries {
                let value = match context.optional_text(value, &join_key(key, name))? {
                    Some(value) => Some(value),
                    None => context.env.get(name).cloned(),
                };
                set(name.clone(), value);
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter().enumerate() {
                let item_key = format!("{key}[{index}]");
                let text = context.text(item, &item_key)?;
                let (name, value) = match text.split_once('=') {
                    Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                    None => (text.clone(), context.env.get(&text).cloned()),
                };
                if name.is_empty() {
                    return Err(context.invalid(item, &item_key, &text, "NAME=VALUE or NAME"));
                }
                set(name, value);
            }
        }
        Value::Scalar { .. } => {
            return Err(context.wrong_type(node, key, "a mapping or a list of NAME=VALUE strings"))
        }
    }
    Ok(variables)
}

/// Reads `env_file`: a path, or a list of paths or of mappings with `path`, `required` and
/// `format`. Relative paths resolve against the Compose file's directory, and later files
/// override earlier ones.
fn env_files(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<Vec<(String, String)>, ComposeError> {
    let items = match &node.value {
        Value::Scalar { .. } => std::slice::from_ref(node),
        _ => context.sequence(node, key)?,
    };

    let mut variables = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let item_key = match node.value {
            Value::Scalar { .. } => key.to_owned(),
            _ => format!("{key}[{index}]"),
        };
        let (path, required, raw) = match &item.value {
            Value::Scalar { .. } => (context.text(item, &item_key)?, true, false),
            Value::Mapping(entries) => env_file_entry(context, item, entries, &item_key)?,
            _ => {
                return Err(context.wrong_type(
                    item,
                    &item_key,
                    "a path or a mapping with path, required and format",
                ))
            }
        };

        let path = context.dir.join(path);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(source) => {
                return Err(ComposeError::ReadEnvFile {
                    at: context.at(item, &item_key),
                    path,
                    source,
                })
            }
        };
        let parsed = dotenv::parse(&text, &context.env, raw).map_err(|invalid| {
            ComposeError::InvalidEnvFile {
                path: path.clone(),
                line: invalid.line,
                reason: invalid.reason,
            }
        })?;

        for variable in parsed.unset {
            context.warn(ComposeWarning::UnsetVariable {
                key: path.display().to_string(),
                variable,
            });
        }
        for (name, value) in parsed.variables {
            let value = value.or_else(|| context.env.get(&name).cloned());
            if let Some(value) = value {
                set_variable(&mut variables, name, value);
            }
        }
    }
    Ok(variables)
}

/// Reads one `env_file` mapping and returns its path, `required` and whether it is raw.
fn env_file_entry(
    context: &mut Context,
    node: &Node,
    entries: &[(String, Node)],
    key: &str,
) -> Result<(String, bool, bool), ComposeError> {
    let mut path = None;
    let mut required = true;
    let mut raw = false;
    for (name, value) in entries {
        let value_key = join_key(key, name);
        match name.as_str() {
            "path" => path = Some(context.text(value, &value_key)?),
            "required" => required = context.boolean(value, &value_key)?,
            "format" => {
                let format = context.text(value, &value_key)?;
                if format != "raw" {
                    return Err(context.invalid(value, &value_key, &format, "raw"));
                }
                raw = true;
            }
            _ => context.ignore_key(key, name, known_keys::ENV_FILE),
        }
    }
    match path {
        Some(path) => Ok((path, required, raw)),
        None => Err(ComposeError::MissingKey {
            at: context.at(node, key),
            key: "path",
        }),
    }
}

/// Sets `name` to `value`, in place when it is already there so the order stays stable.
fn set_variable(variables: &mut Vec<(String, String)>, name: String, value: String) {
    match variables.iter_mut().find(|(existing, _)| *existing == name) {
        Some(entry) => entry.1 = value,
        None => variables.push((name, value)),
    }
}

fn depends_on(
    context: &mut Context,
    node: &Node,
    key: &str,
    services: &[String],
) -> Result<Vec<Dependency>, ComposeError> {
    let mut dependencies = Vec::new();
    match &node.value {
        Value::Null => {}
        Value::Sequence(items) => {
            for (index, item) in items.iter().enumerate() {
                let item_key = format!("{key}[{index}]");
                let service = context.text(item, &item_key)?;
                check_service(context, item, &item_key, &service, services)?;
                dependencies.push(Dependency {
                    service,
                    condition: DependencyCondition::Started,
                    required: true,
                    restart: false,
                });
            }
        }
        Value::Mapping(entries) => {
            for (service, options) in entries {
                let entry_key = join_key(key, service);
                check_service(context, options, &entry_key, service, services)?;
                dependencies.push(dependency(context, service, options, &entry_key)?);
            }
        }
        Value::Scalar { .. } => {
            return Err(context.wrong_type(
                node,
                key,
                "a list of service names or a mapping of service names to conditions",
            ))
        }
    }
    Ok(dependencies)
}

/// Reads one long-syntax `depends_on` entry.
fn dependency(
    context: &mut Context,
    service: &str,
    node: &Node,
    key: &str,
) -> Result<Dependency, ComposeError> {
    let mut dependency = Dependency {
        service: service.to_owned(),
        condition: DependencyCondition::Started,
        required: true,
        restart: false,
    };
    for (name, value) in context.mapping(node, key)? {
        let value_key = join_key(key, name);
        match name.as_str() {
            "condition" => {
                let text = context.text(value, &value_key)?;
                dependency.condition = match text.as_str() {
                    "service_started" => DependencyCondition::Started,
                    "service_healthy" => DependencyCondition::Healthy,
                    "service_completed_successfully" => DependencyCondition::CompletedSuccessfully,
                    _ => {
                        return Err(context.invalid(
                            value,
                            &value_key,
                            &text,
                            "service_started, service_healthy or service_completed_successfully",
                        ))
                    }
                };
            }
            "required" => dependency.required = context.boolean(value, &value_key)?,
            "restart" => dependency.restart = context.boolean(value, &value_key)?,
            _ => context.ignore_key(key, name, known_keys::DEPENDS_ON),
        }
    }
    Ok(dependency)
}

/// Reads `links`: `SERVICE` or `SERVICE:ALIAS`.
fn links(
    context: &mut Context,
    node: &Node,
    key: &str,
    services: &[String],
) -> Result<Vec<(String, String)>, ComposeError> {
    let mut links = Vec::new();
    for (index, item) in context.sequence(node, key)?.iter().enumerate() {
        let item_key = format!("{key}[{index}]");
        let text = context.text(item, &item_key)?;
        let (service, alias) = match text.split_once(':') {
            Some((service, alias)) if !alias.is_empty() => (service.to_owned(), alias.to_owned()),
            Some(_) => {
                return Err(context.invalid(item, &item_key, &text, "SERVICE or SERVICE:ALIAS"))
            }
            None => (text.clone(), text.clone()),
        };
        check_service(context, item, &item_key, &service, services)?;
        links.push((service, alias));
    }
    Ok(links)
}

fn check_service(
    context: &Context,
    node: &Node,
    key: &str,
    service: &str,
    services: &[String],
) -> Result<(), ComposeError> {
    if services.iter().any(|known| known == service) {
        return Ok(());
    }
    Err(ComposeError::UnknownService {
        at: context.at(node, key),
        service: service.to_owned(),
        known: services.to_vec(),
    })
}
