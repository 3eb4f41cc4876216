//! The top level of a Compose file: `name`, `services`, `configs`, and `version`, which is
//! obsolete but common and so accepted without a word.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::configs;
use super::context::Context;
use super::dotenv::{self, EnvFile};
use super::error::ComposeError;
use super::graph::start_order;
use super::known_keys;
use super::model::{ComposeProject, ComposeWarning};
use super::service::{service, Scope};
use super::yaml::{self, Node};

/// The file next to the Compose file that adds variables for interpolation.
const DOTENV: &str = ".env";

/// Parses `source`, the text of `file`, whose directory is `dir` (absolute).
pub(super) fn parse(
    source: &str,
    file: &Path,
    dir: &Path,
    env: &HashMap<String, String>,
) -> Result<ComposeProject, ComposeError> {
    let root = yaml::load(source, file)?.ok_or_else(|| ComposeError::NoServices {
        file: file.to_owned(),
        misspelt: None,
    })?;

    // Compose reads `.env` next to the file for interpolation, and the environment wins.
    let dotenv_path = dir.join(DOTENV);
    let dotenv = read_dotenv(&dotenv_path, env)?;
    let mut env = env.clone();
    for (name, value) in dotenv.variables {
        if let Some(value) = value {
            env.entry(name).or_insert(value);
        }
    }
    let mut context = Context {
        file,
        dir,
        env,
        warnings: Vec::new(),
    };
    for variable in dotenv.unset {
        context.warn(ComposeWarning::UnsetVariable {
            key: dotenv_path.display().to_string(),
            variable,
        });
    }

    // Sort the top level first, because services refer to configs and to each other.
    let mut name = None;
    let mut services_node = None;
    let mut configs_node = None;
    for (key, value) in context.mapping(&root, "(top level)")? {
        match key.as_str() {
            "version" => {}
            "name" => name = Some(value),
            "services" => services_node = Some(value),
            "configs" => configs_node = Some(value),
            "include" => {
                return Err(ComposeError::Unsupported {
                    at: context.at(value, key),
                    what: "include".to_owned(),
                    hint: "copy the included services into this file",
                })
            }
            _ => context.ignore_key("", key, known_keys::TOP_LEVEL),
        }
    }

    // Compose offers the project name to interpolation, whichever way it was chosen.
    let name = project_name(&mut context, name)?;
    context
        .env
        .insert("COMPOSE_PROJECT_NAME".to_owned(), name.clone());
    let configs = match configs_node {
        Some(node) => configs::definitions(&mut context, node, "configs")?,
        None => BTreeMap::new(),
    };

    let no_services = || ComposeError::NoServices {
        file: file.to_owned(),
        misspelt: context.warnings.iter().find_map(|warning| match warning {
            ComposeWarning::UnknownKey {
                key,
                suggestion: Some(suggestion),
            } if suggestion == "services" => Some(key.clone()),
            _ => None,
        }),
    };
    let services_node = services_node.ok_or_else(no_services)?;
    let entries = context.mapping(services_node, "services")?;
    let names: Vec<String> = entries
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| !known_keys::is_extension(name))
        .collect();
    if names.is_empty() {
        return Err(no_services());
    }

    let scope = Scope {
        services: &names,
        configs: &configs,
    };
    let mut services = BTreeMap::new();
    for (service_name, node) in entries {
        if known_keys::is_extension(service_name) {
            continue;
        }
        let key = format!("services.{service_name}");
        if !is_valid_service_name(service_name) {
            return Err(ComposeError::InvalidServiceName {
                at: context.at(node, &key),
                name: service_name.clone(),
            });
        }
        let parsed = service(&mut context, service_name, node, &key, &scope)?;
        services.insert(service_name.clone(), parsed);
    }

    // A start order over all services finds any dependency cycle.
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    start_order(file, &services, &all)?;

    Ok(ComposeProject {
        name,
        file: file.to_owned(),
        dir: dir.to_owned(),
        services,
        warnings: context.warnings,
    })
}

/// Reads the project's `.env` file, or returns no variables when there is none.
fn read_dotenv(path: &Path, env: &HashMap<String, String>) -> Result<EnvFile, ComposeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(EnvFile::default()),
        Err(source) => {
            return Err(ComposeError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    dotenv::parse(&text, env, false).map_err(|invalid| ComposeError::InvalidEnvFile {
        path: path.to_owned(),
        line: invalid.line,
        reason: invalid.reason,
    })
}

/// Returns the project name: `COMPOSE_PROJECT_NAME`, else the file's `name`, else the
/// directory name reduced to the characters Compose allows. This is Compose's order.
fn project_name(context: &mut Context, node: Option<&Node>) -> Result<String, ComposeError> {
    if let Some(name) = context.env.get("COMPOSE_PROJECT_NAME") {
        if !is_valid_project_name(name) {
            return Err(ComposeError::InvalidProjectName {
                origin: "the variable COMPOSE_PROJECT_NAME".to_owned(),
                name: name.clone(),
            });
        }
        return Ok(name.clone());
    }
    if let Some(node) = node {
        if let Some(name) = context.optional_text(node, "name")? {
            if !is_valid_project_name(&name) {
                return Err(ComposeError::InvalidProjectName {
                    origin: context.at(node, "name").to_string(),
                    name,
                });
            }
            return Ok(name);
        }
    }

    let directory = context
        .dir
        .file_name()
        .map(|name| name.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let reduced: String = directory
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let reduced = reduced.trim_start_matches(['_', '-']);
    // NOTE: Compose rejects a directory whose name reduces to nothing; mayfly names the
    // project "default" instead, because the name only labels what it starts.
    Ok(if reduced.is_empty() {
        "default".to_owned()
    } else {
        reduced.to_owned()
    })
}

fn is_valid_project_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Checks Compose's rule for service names: `[a-zA-Z0-9._-]+`.
fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
