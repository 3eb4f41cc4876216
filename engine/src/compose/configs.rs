//! Configs: the top-level `configs` definitions (`content`, `file` or `environment`) and a
//! service's `configs`, which turn into files in its container (`/<name>` by default,
//! mode 0444).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::context::Context;
use super::error::{ComposeError, Location};
use super::known_keys;
use super::model::ConfigFile;
use super::units::parse_mode;
use super::yaml::{join_key, Node, Value};

/// The origin of a config's text.
#[derive(Debug)]
pub(super) enum ConfigSource {
    Content(String),
    /// A file, already resolved against the Compose file's directory.
    File(PathBuf),
    /// An environment variable of mayfly's process.
    Environment(String),
}

#[derive(Debug)]
pub(super) struct ConfigDefinition {
    source: ConfigSource,
    at: Location,
}

const DEFAULT_MODE: u32 = 0o444;

/// Reads the top-level `configs`.
pub(super) fn definitions(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<BTreeMap<String, ConfigDefinition>, ComposeError> {
    let mut definitions = BTreeMap::new();
    for (name, definition) in context.mapping(node, key)? {
        if known_keys::is_extension(name) {
            continue;
        }
        let definition_key = join_key(key, name);
        let source = source(context, definition, &definition_key)?;
        let at = context.at(definition, &definition_key);
        definitions.insert(name.clone(), ConfigDefinition { source, at });
    }
    Ok(definitions)
}

fn source(context: &mut Context, node: &Node, key: &str) -> Result<ConfigSource, ComposeError> {
    let mut source: Option<(&str, ConfigSource)> = None;
    for (name, value) in context.mapping(node, key)? {
        let value_key = join_key(key, name);
        let found = match name.as_str() {
            "content" => ConfigSource::Content(context.text(value, &value_key)?),
            "file" => ConfigSource::File(context.dir.join(context.text(value, &value_key)?)),
            "environment" => ConfigSource::Environment(context.text(value, &value_key)?),
            "external" => {
                if context.boolean(value, &value_key)? {
                    return Err(ComposeError::Unsupported {
                        at: context.at(value, &value_key),
                        what: "an external config".to_owned(),
                        hint: "define the config in this file with content: or file:",
                    });
                }
                continue;
            }
            _ => {
                context.ignore_key(key, name, known_keys::CONFIG);
                continue;
            }
        };
        if let Some((first, _)) = source {
            return Err(ComposeError::ConflictingKeys {
                at: context.at(value, &value_key),
                first: first.to_owned(),
                second: name.clone(),
            });
        }
        source = Some((name, found));
    }

    match source {
        Some((_, source)) => Ok(source),
        None => Err(ComposeError::MissingKey {
            at: context.at(node, key),
            key: "content, file or environment",
        }),
    }
}

/// Reads a service's `configs`: names, or mappings with `source`, `target` and `mode`.
pub(super) fn service_files(
    context: &mut Context,
    node: &Node,
    key: &str,
    definitions: &BTreeMap<String, ConfigDefinition>,
) -> Result<Vec<ConfigFile>, ComposeError> {
    let mut files = Vec::new();
    for (index, item) in context.sequence(node, key)?.iter().enumerate() {
        let item_key = format!("{key}[{index}]");
        let (name, target, mode) = match &item.value {
            Value::Scalar { .. } => (context.text(item, &item_key)?, None, DEFAULT_MODE),
            Value::Mapping(entries) => long_syntax(context, item, entries, &item_key)?,
            _ => {
                return Err(context.wrong_type(
                    item,
                    &item_key,
                    "a config name or a mapping with source",
                ))
            }
        };

        let Some(definition) = definitions.get(&name) else {
            return Err(ComposeError::UnknownConfig {
                at: context.at(item, &item_key),
                config: name,
            });
        };
        let target = target.unwrap_or_else(|| name.clone());
        files.push(ConfigFile {
            target: if target.starts_with('/') {
                target
            } else {
                format!("/{target}")
            },
            content: content(context, definition)?,
            mode,
        });
    }
    Ok(files)
}

fn long_syntax(
    context: &mut Context,
    node: &Node,
    entries: &[(String, Node)],
    key: &str,
) -> Result<(String, Option<String>, u32), ComposeError> {
    let mut source = None;
    let mut target = None;
    let mut mode = DEFAULT_MODE;
    for (name, value) in entries {
        let value_key = join_key(key, name);
        match name.as_str() {
            "source" => source = Some(context.text(value, &value_key)?),
            "target" => target = context.optional_text(value, &value_key)?,
            "mode" => {
                let text = context.text(value, &value_key)?;
                mode = parse_mode(&text).ok_or_else(|| {
                    context.invalid(value, &value_key, &text, "an octal mode such as 0440")
                })?;
            }
            _ => context.ignore_key(key, name, known_keys::SERVICE_CONFIG),
        }
    }
    match source {
        Some(source) => Ok((source, target, mode)),
        None => Err(ComposeError::MissingKey {
            at: context.at(node, key),
            key: "source",
        }),
    }
}

fn content(context: &Context, definition: &ConfigDefinition) -> Result<String, ComposeError> {
    match &definition.source {
        ConfigSource::Content(content) => Ok(content.clone()),
        ConfigSource::File(path) => {
            let bytes = std::fs::read(path).map_err(|source| ComposeError::ReadConfigFile {
                at: definition.at.clone(),
                path: path.clone(),
                source,
            })?;
            String::from_utf8(bytes).map_err(|_| ComposeError::BinaryConfigFile {
                at: definition.at.clone(),
                path: path.clone(),
            })
        }
        ConfigSource::Environment(variable) => {
            context
                .env
                .get(variable)
                .cloned()
                .ok_or_else(|| ComposeError::UnsetVariable {
                    at: definition.at.clone(),
                    variable: variable.clone(),
                })
        }
    }
}
