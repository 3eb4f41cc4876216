//! Loads YAML text into a small tree that keeps what Compose needs: each scalar's text as
//! written (so interpolation runs before typing, as in Compose) and the line of every node for messages. Merge keys (`<<`) are applied here, and aliases are
//! already expanded by the loader.

use std::path::Path;

use saphyr::{MarkedYamlOwned, ScalarOwned, ScalarStyle, Tag, YamlDataOwned, YamlLoader};
use saphyr_parser::Parser;

use super::error::{ComposeError, Location};

/// One YAML node and the 1-based line where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    /// `~`, `null`, an empty value or `!reset`.
    Null,
    /// Any other scalar, as its text before interpolation. Typed readers parse numbers and
    /// booleans from it, so `8080` and `"8080"` mean the same, as in Compose.
    Scalar {
        text: String,
    },
    Sequence(Vec<Node>),
    /// Entries in file order. Keys are the scalar text; merge keys are already applied.
    Mapping(Vec<(String, Node)>),
}

impl Value {
    /// Returns the YAML kind, for messages such as "expected a string, found a mapping".
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Sequence(_) => "a sequence",
            Value::Mapping(_) => "a mapping",
        }
    }
}

const MERGE_KEY: &str = "<<";

/// The core schema's tag prefix, as in `!!str` (`tag:yaml.org,2002:str`).
const CORE_SCHEMA_HANDLE: &str = "tag:yaml.org,2002:";

/// Parses `source` and returns its one document, or `None` for an empty file.
pub(super) fn load(source: &str, file: &Path) -> Result<Option<Node>, ComposeError> {
    // Keep scalars unparsed so that `1.10` stays "1.10" and a quoted "null" stays a string.
    let mut parser = Parser::new_from_str(source);
    let mut loader: YamlLoader<MarkedYamlOwned> = YamlLoader::default();
    loader.early_parse(false);
    let yaml_error = |source| ComposeError::Yaml {
        file: file.to_owned(),
        source,
    };
    parser.load(&mut loader, true).map_err(yaml_error)?;
    if let Some(error) = loader.error() {
        return Err(yaml_error(error.clone()));
    }

    let mut documents = loader.into_documents();
    if documents.len() > 1 {
        return Err(ComposeError::MultipleDocuments {
            file: file.to_owned(),
            count: documents.len(),
        });
    }
    match documents.pop() {
        Some(document) => convert(document, file, "").map(Some),
        None => Ok(None),
    }
}

fn convert(node: MarkedYamlOwned, file: &Path, key: &str) -> Result<Node, ComposeError> {
    let line = node.span.start.line();
    let at = || Location {
        file: file.to_owned(),
        line,
        key: display_key(key),
    };
    let value = match node.data {
        YamlDataOwned::Representation(text, style, tag) => scalar(text, style, tag, at)?,
        YamlDataOwned::Value(scalar) => parsed_scalar(scalar),
        YamlDataOwned::Sequence(items) => {
            let mut nodes = Vec::with_capacity(items.len());
            for (index, item) in items.into_iter().enumerate() {
                nodes.push(convert(item, file, &format!("{key}[{index}]"))?);
            }
            Value::Sequence(nodes)
        }
        YamlDataOwned::Mapping(entries) => {
            let mut converted = Vec::with_capacity(entries.len());
            for (entry_key, entry_value) in entries {
                let entry_line = entry_key.span.start.line();
                let name = mapping_key(entry_key, file, key)?;
                let child = convert(entry_value, file, &join_key(key, &name.0))?;
                converted.push((name, entry_line, child));
            }
            Value::Mapping(apply_merge_keys(converted, file, key)?)
        }
        YamlDataOwned::Tagged(tag, inner) => return tagged(&tag, *inner, file, key, at),
        YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => {
            return Err(ComposeError::InvalidValue {
                at: at(),
                value: String::new(),
                expected: "a YAML value (an alias points to an unknown anchor)",
            })
        }
    };
    Ok(Node { line, value })
}

/// Resolves a scalar from its text, style and tag the way Compose's YAML reader does.
fn scalar(
    text: String,
    style: ScalarStyle,
    tag: Option<Tag>,
    at: impl Fn() -> Location,
) -> Result<Value, ComposeError> {
    let plain = style == ScalarStyle::Plain;
    let Some(tag) = tag else {
        if plain && is_null(&text) {
            return Ok(Value::Null);
        }
        return Ok(Value::Scalar { text });
    };

    if tag.handle == CORE_SCHEMA_HANDLE {
        return Ok(match tag.suffix.as_str() {
            "null" => Value::Null,
            _ => Value::Scalar { text },
        });
    }
    match (tag.handle.as_str(), tag.suffix.as_str()) {
        // Compose's `!reset` and `!override` only matter when several files are merged; in a
        // single file `!reset` clears the value and `!override` is the value itself.
        ("!", "reset") => Ok(Value::Null),
        ("!", "override") if plain && is_null(&text) => Ok(Value::Null),
        ("!", "override") => Ok(Value::Scalar { text }),
        _ => Err(unsupported_tag(&tag, at())),
    }
}

fn tagged(
    tag: &Tag,
    inner: MarkedYamlOwned,
    file: &Path,
    key: &str,
    at: impl Fn() -> Location,
) -> Result<Node, ComposeError> {
    let line = inner.span.start.line();
    match (tag.handle.as_str(), tag.suffix.as_str()) {
        ("!", "reset") => Ok(Node {
            line,
            value: Value::Null,
        }),
        ("!", "override") => convert(inner, file, key),
        _ => Err(unsupported_tag(tag, at())),
    }
}

fn unsupported_tag(tag: &Tag, at: Location) -> ComposeError {
    ComposeError::Unsupported {
        at,
        what: format!("the YAML tag {}{}", tag.handle, tag.suffix),
        hint: "remove the tag (only !reset and !override are understood)",
    }
}

/// Converts a scalar that the loader already typed. Loading with `early_parse(false)` keeps every
/// scalar as text, so this only guards against a loader that types some anyway.
fn parsed_scalar(scalar: ScalarOwned) -> Value {
    let text = match scalar {
        ScalarOwned::Null => return Value::Null,
        ScalarOwned::Boolean(value) => value.to_string(),
        ScalarOwned::Integer(value) => value.to_string(),
        ScalarOwned::FloatingPoint(value) => value.to_string(),
        ScalarOwned::String(value) => value,
    };
    Value::Scalar { text }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// Returns a mapping key's text and whether it is a plain `<<` merge key.
fn mapping_key(
    key_node: MarkedYamlOwned,
    file: &Path,
    parent: &str,
) -> Result<(String, bool), ComposeError> {
    let line = key_node.span.start.line();
    match key_node.data {
        YamlDataOwned::Representation(text, style, _) => {
            let is_merge = style == ScalarStyle::Plain && text == MERGE_KEY;
            Ok((text, is_merge))
        }
        YamlDataOwned::Value(scalar) => match parsed_scalar(scalar) {
            Value::Scalar { text, .. } => Ok((text, false)),
            _ => Ok((String::new(), false)),
        },
        other => Err(ComposeError::WrongType {
            at: Location {
                file: file.to_owned(),
                line,
                key: display_key(parent),
            },
            expected: "a scalar mapping key",
            found: match other {
                YamlDataOwned::Sequence(_) => "a sequence",
                YamlDataOwned::Mapping(_) => "a mapping",
                _ => "a tagged value",
            },
        }),
    }
}

/// Applies YAML merge keys: entries of the merged mappings fill in keys that the mapping
/// does not set itself, and with a list of mappings, earlier ones win.
fn apply_merge_keys(
    entries: Vec<((String, bool), usize, Node)>,
    file: &Path,
    parent: &str,
) -> Result<Vec<(String, Node)>, ComposeError> {
    let explicit: Vec<String> = entries
        .iter()
        .filter(|((_, is_merge), _, _)| !is_merge)
        .map(|((name, _), _, _)| name.clone())
        .collect();

    let mut merged: Vec<(String, Node)> = Vec::with_capacity(entries.len());
    for ((name, is_merge), line, node) in entries {
        if !is_merge {
            merged.push((name, node));
            continue;
        }

        let sources = match node.value {
            Value::Mapping(_) => vec![node],
            Value::Sequence(items) => items,
            other => {
                return Err(ComposeError::WrongType {
                    at: Location {
                        file: file.to_owned(),
                        line,
                        key: join_key(parent, MERGE_KEY),
                    },
                    expected: "a mapping or a list of mappings to merge",
                    found: other.kind(),
                })
            }
        };
        for source in sources {
            let Value::Mapping(source_entries) = source.value else {
                return Err(ComposeError::WrongType {
                    at: Location {
                        file: file.to_owned(),
                        line: source.line,
                        key: join_key(parent, MERGE_KEY),
                    },
                    expected: "a mapping to merge",
                    found: source.value.kind(),
                });
            };
            for (source_key, source_node) in source_entries {
                let taken = explicit.contains(&source_key)
                    || merged.iter().any(|(existing, _)| *existing == source_key);
                if !taken {
                    merged.push((source_key, source_node));
                }
            }
        }
    }
    Ok(merged)
}

/// Returns `parent.child`, or `child` at the top level.
pub(super) fn join_key(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

fn display_key(key: &str) -> String {
    if key.is_empty() {
        "(top level)".to_owned()
    } else {
        key.to_owned()
    }
}
