//! A service's `volumes` and `tmpfs`: bind mounts (short `HOST:CONTAINER[:ro|rw]` and long
//! `type: bind`) and tmpfs mounts. Named and anonymous volumes are not supported: they are
//! skipped with a warning, so the service still starts but keeps that data only as long as
//! the container lives.

use std::path::{Component, Path, PathBuf};

use super::context::Context;
use super::error::ComposeError;
use super::known_keys;
use super::model::{ComposeWarning, Mount};
use super::units::{parse_bytes, parse_mode};
use super::yaml::{join_key, Node, Value};

const VOLUME_REASON: &str =
    "named and anonymous volumes are not supported, so this data lasts only as long as the \
     container; use a bind mount (./dir:/path) to keep it";

/// Short-syntax options that only matter to Docker's volume drivers, SELinux or macOS file
/// sharing.
const IGNORED_OPTIONS: &[&str] = &[
    "z",
    "Z",
    "cached",
    "delegated",
    "consistent",
    "nocopy",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
];

/// Reads `volumes`.
pub(super) fn volumes(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<Vec<Mount>, ComposeError> {
    let mut mounts = Vec::new();
    for (index, item) in context.sequence(node, key)?.iter().enumerate() {
        let item_key = format!("{key}[{index}]");
        let mount = match &item.value {
            Value::Scalar { .. } => {
                let text = context.text(item, &item_key)?;
                short_syntax(context, item, &item_key, &text)?
            }
            Value::Mapping(entries) => long_syntax(context, item, entries, &item_key)?,
            _ => {
                return Err(context.wrong_type(
                    item,
                    &item_key,
                    "a string such as \"./data:/data:ro\" or a mapping with type and target",
                ))
            }
        };
        mounts.extend(mount);
    }
    Ok(mounts)
}

/// Reads the service's `tmpfs`: `PATH` or `PATH:OPTIONS`, one or a list.
pub(super) fn tmpfs(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<Vec<Mount>, ComposeError> {
    let mut mounts = Vec::new();
    for text in context.text_or_list(node, key)? {
        let (target, options) = match text.split_once(':') {
            Some((target, options)) => (target, options.split(',').map(str::to_owned).collect()),
            None => (text.as_str(), Vec::new()),
        };
        check_target(context, node, key, target)?;
        mounts.push(Mount::Tmpfs {
            target: target.to_owned(),
            options,
        });
    }
    Ok(mounts)
}

fn short_syntax(
    context: &mut Context,
    node: &Node,
    key: &str,
    text: &str,
) -> Result<Option<Mount>, ComposeError> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [_anonymous] => {
            context.ignore_with_reason(key, VOLUME_REASON);
            return Ok(None);
        }
        [source, target] => (*source, *target, ""),
        [source, target, options] => (*source, *target, *options),
        _ => {
            return Err(context.invalid(
                node,
                key,
                text,
                "SOURCE:TARGET or SOURCE:TARGET:OPTIONS, such as ./data:/data:ro",
            ))
        }
    };
    check_target(context, node, key, target)?;

    let mut read_only = false;
    if !options.is_empty() {
        for option in options.split(',') {
            match option {
                "rw" => read_only = false,
                "ro" => read_only = true,
                _ if IGNORED_OPTIONS.contains(&option) => context.warn(ComposeWarning::Ignored {
                    key: format!("{key} option {option}"),
                    reason: None,
                }),
                _ => {
                    return Err(context.invalid(
                        node,
                        key,
                        option,
                        "mount options ro or rw, separated by commas",
                    ))
                }
            }
        }
    }

    let Some(source) = host_path(context, node, key, source)? else {
        context.ignore_with_reason(key, VOLUME_REASON);
        return Ok(None);
    };
    Ok(Some(Mount::Bind {
        source,
        target: target.to_owned(),
        read_only,
        create_host_path: true,
    }))
}

fn long_syntax(
    context: &mut Context,
    node: &Node,
    entries: &[(String, Node)],
    key: &str,
) -> Result<Option<Mount>, ComposeError> {
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut read_only = false;
    let mut create_host_path = true;
    let mut tmpfs_options = Vec::new();

    for (name, value) in entries {
        let value_key = join_key(key, name);
        match name.as_str() {
            "type" => kind = Some((context.text(value, &value_key)?, value)),
            "source" => source = context.optional_text(value, &value_key)?,
            "target" => target = Some(context.text(value, &value_key)?),
            "read_only" => read_only = context.boolean(value, &value_key)?,
            "bind" => create_host_path = bind_options(context, value, &value_key)?,
            "tmpfs" => tmpfs_options = tmpfs_options_of(context, value, &value_key)?,
            _ => context.ignore_key(key, name, known_keys::VOLUME),
        }
    }

    let Some((kind, kind_node)) = kind else {
        return Err(ComposeError::MissingKey {
            at: context.at(node, key),
            key: "type",
        });
    };
    let Some(target) = target else {
        return Err(ComposeError::MissingKey {
            at: context.at(node, key),
            key: "target",
        });
    };
    check_target(context, node, key, &target)?;

    match kind.as_str() {
        "bind" => {
            let Some(source) = source else {
                return Err(ComposeError::MissingKey {
                    at: context.at(node, key),
                    key: "source",
                });
            };
            let Some(source) = host_path(context, node, key, &source)? else {
                return Err(context.invalid(
                    node,
                    &join_key(key, "source"),
                    &source,
                    "a host path starting with /, ./, ../ or ~/",
                ));
            };
            Ok(Some(Mount::Bind {
                source,
                target,
                read_only,
                create_host_path,
            }))
        }
        "tmpfs" => Ok(Some(Mount::Tmpfs {
            target,
            options: tmpfs_options,
        })),
        "volume" => {
            context.ignore_with_reason(key, VOLUME_REASON);
            Ok(None)
        }
        "image" | "npipe" | "cluster" => Err(ComposeError::Unsupported {
            at: context.at(kind_node, &join_key(key, "type")),
            what: format!("the volume type {kind}"),
            hint: "use type bind or tmpfs",
        }),
        _ => Err(context.invalid(
            kind_node,
            &join_key(key, "type"),
            &kind,
            "bind, tmpfs or volume",
        )),
    }
}

/// Reads the `bind` options and returns `create_host_path`.
fn bind_options(context: &mut Context, node: &Node, key: &str) -> Result<bool, ComposeError> {
    let mut create_host_path = true;
    for (name, value) in context.mapping(node, key)? {
        match name.as_str() {
            "create_host_path" => {
                create_host_path = context.boolean(value, &join_key(key, name))?;
            }
            _ => context.ignore_key(key, name, known_keys::VOLUME_BIND),
        }
    }
    Ok(create_host_path)
}

/// Reads the `tmpfs` options `size` and `mode` as mount options.
fn tmpfs_options_of(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<Vec<String>, ComposeError> {
    let mut options = Vec::new();
    for (name, value) in context.mapping(node, key)? {
        let value_key = join_key(key, name);
        match name.as_str() {
            "size" => {
                let text = context.text(value, &value_key)?;
                let bytes = parse_bytes(&text).ok_or_else(|| {
                    context.invalid(
                        value,
                        &value_key,
                        &text,
                        "a byte size such as 64m or 1048576",
                    )
                })?;
                options.push(format!("size={bytes}"));
            }
            "mode" => {
                let text = context.text(value, &value_key)?;
                let mode = parse_mode(&text).ok_or_else(|| {
                    context.invalid(value, &value_key, &text, "an octal mode such as 1777")
                })?;
                options.push(format!("mode={mode:o}"));
            }
            _ => context.ignore_key(key, name, known_keys::VOLUME_TMPFS),
        }
    }
    Ok(options)
}

fn check_target(
    context: &Context,
    node: &Node,
    key: &str,
    target: &str,
) -> Result<(), ComposeError> {
    if target.starts_with('/') {
        Ok(())
    } else {
        Err(context.invalid(node, key, target, "an absolute path in the container"))
    }
}

/// Resolves a bind source: absolute, relative to the file's directory, or under `~`.
/// Returns `None` for a volume name.
fn host_path(
    context: &Context,
    node: &Node,
    key: &str,
    source: &str,
) -> Result<Option<PathBuf>, ComposeError> {
    if source.starts_with('/') {
        return Ok(Some(normalize(Path::new(source))));
    }
    if source == "." || source == ".." || source.starts_with("./") || source.starts_with("../") {
        return Ok(Some(normalize(&context.dir.join(source))));
    }
    if source == "~" || source.starts_with("~/") {
        let Some(home) = context.env.get("HOME") else {
            return Err(ComposeError::UnsetVariable {
                at: context.at(node, key),
                variable: "HOME".to_owned(),
            });
        };
        let below_home = source.trim_start_matches('~').trim_start_matches('/');
        return Ok(Some(normalize(&Path::new(home).join(below_home))));
    }
    Ok(None)
}

/// Removes `.` and resolves `..` without touching the file system, so that the path the
/// user wrote is the one mounted even where it does not exist yet.
fn normalize(path: &Path) -> PathBuf {
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normalized.pop();
            }
            other => normalized.push(other.as_os_str()),
        }
    }
    normalized
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_dots() {
        assert_eq!(
            normalize(Path::new("/srv/app/./data/../conf")),
            PathBuf::from("/srv/app/conf")
        );
        assert_eq!(normalize(Path::new("/srv/../..")), PathBuf::from("/"));
    }
}
