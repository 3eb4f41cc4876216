//! The state shared while one file is read: its path, the variables for interpolation and
//! the warnings so far, plus typed readers that interpolate a value and name its location
//! when it has the wrong type.

use std::collections::HashMap;
use std::path::Path;

use super::error::{ComposeError, Location};
use super::interpolate::{interpolate, Problem};
use super::known_keys;
use super::model::ComposeWarning;
use super::yaml::{join_key, Node, Value};

pub(super) struct Context<'a> {
    pub file: &'a Path,
    /// The absolute directory of the file.
    pub dir: &'a Path,
    /// Variables for interpolation: the environment, then `.env`, then the project name as
    /// `COMPOSE_PROJECT_NAME`.
    pub env: HashMap<String, String>,
    pub warnings: Vec<ComposeWarning>,
}

impl Context<'_> {
    pub fn at(&self, node: &Node, key: &str) -> Location {
        Location {
            file: self.file.to_owned(),
            line: node.line,
            key: key.to_owned(),
        }
    }

    /// Records a warning unless the same one is already recorded.
    pub fn warn(&mut self, warning: ComposeWarning) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// Records that the key `name` under `parent` (such as `restart` under `services.db`)
    /// is not acted on. `x-` extension keys are skipped silently, as the specification requires.
    pub fn ignore_key(&mut self, parent: &str, name: &str, known: &[&str]) {
        if known_keys::is_extension(name) {
            return;
        }
        let key = join_key(parent, name);
        if known.contains(&name) {
            self.warn(ComposeWarning::Ignored { key, reason: None });
        } else {
            let suggestion = nearest_key(name, known).map(str::to_owned);
            self.warn(ComposeWarning::UnknownKey { key, suggestion });
        }
    }

    pub fn ignore_with_reason(&mut self, key: &str, reason: &'static str) {
        self.warn(ComposeWarning::Ignored {
            key: key.to_owned(),
            reason: Some(reason),
        });
    }

    pub fn wrong_type(&self, node: &Node, key: &str, expected: &'static str) -> ComposeError {
        ComposeError::WrongType {
            at: self.at(node, key),
            expected,
            found: node.value.kind(),
        }
    }

    pub fn invalid(
        &self,
        node: &Node,
        key: &str,
        value: &str,
        expected: &'static str,
    ) -> ComposeError {
        ComposeError::InvalidValue {
            at: self.at(node, key),
            value: value.to_owned(),
            expected,
        }
    }

    /// Returns a scalar's interpolated text, or `None` for null.
    pub fn optional_text(
        &mut self,
        node: &Node,
        key: &str,
    ) -> Result<Option<String>, ComposeError> {
        match &node.value {
            Value::Null => Ok(None),
            Value::Scalar { text, .. } => self.interpolate(node, key, text).map(Some),
            _ => Err(self.wrong_type(node, key, "a string")),
        }
    }

    /// Returns a scalar's interpolated text. Null is a type error.
    pub fn text(&mut self, node: &Node, key: &str) -> Result<String, ComposeError> {
        match &node.value {
            Value::Scalar { text, .. } => self.interpolate(node, key, text),
            _ => Err(self.wrong_type(node, key, "a string")),
        }
    }

    /// Returns a string, or each string of a sequence, interpolated.
    pub fn text_or_list(&mut self, node: &Node, key: &str) -> Result<Vec<String>, ComposeError> {
        match &node.value {
            Value::Null => Ok(Vec::new()),
            Value::Scalar { .. } => Ok(vec![self.text(node, key)?]),
            Value::Sequence(items) => {
                let mut texts = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    texts.push(self.text(item, &format!("{key}[{index}]"))?);
                }
                Ok(texts)
            }
            Value::Mapping(_) => Err(self.wrong_type(node, key, "a string or a list of strings")),
        }
    }

    /// Returns a boolean. Like Compose, this accepts the YAML 1.1 spellings `yes`, `no`,
    /// `on`, `off`, `y` and `n` in any case besides `true` and `false`.
    pub fn boolean(&mut self, node: &Node, key: &str) -> Result<bool, ComposeError> {
        let text = self.text(node, key)?;
        match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" => Ok(true),
            "false" | "no" | "n" | "off" => Ok(false),
            _ => Err(self.invalid(node, key, &text, "true or false")),
        }
    }

    pub fn unsigned(&mut self, node: &Node, key: &str) -> Result<u32, ComposeError> {
        let text = self.text(node, key)?;
        text.parse()
            .map_err(|_| self.invalid(node, key, &text, "a non-negative integer"))
    }

    pub fn mapping<'n>(
        &self,
        node: &'n Node,
        key: &str,
    ) -> Result<&'n [(String, Node)], ComposeError> {
        match &node.value {
            Value::Mapping(entries) => Ok(entries),
            Value::Null => Ok(&[]),
            _ => Err(self.wrong_type(node, key, "a mapping")),
        }
    }

    pub fn sequence<'n>(&self, node: &'n Node, key: &str) -> Result<&'n [Node], ComposeError> {
        match &node.value {
            Value::Sequence(items) => Ok(items),
            Value::Null => Ok(&[]),
            _ => Err(self.wrong_type(node, key, "a list")),
        }
    }

    fn interpolate(&mut self, node: &Node, key: &str, text: &str) -> Result<String, ComposeError> {
        if !text.contains('$') {
            return Ok(text.to_owned());
        }
        match interpolate(text, &self.env) {
            Ok(result) => {
                for variable in result.unset {
                    self.warn(ComposeWarning::UnsetVariable {
                        key: key.to_owned(),
                        variable,
                    });
                }
                Ok(result.text)
            }
            Err(Problem::Syntax(reason)) => Err(ComposeError::InvalidInterpolation {
                at: self.at(node, key),
                value: text.to_owned(),
                reason,
            }),
            Err(Problem::Required {
                variable,
                empty,
                message,
            }) => Err(ComposeError::RequiredVariable {
                at: self.at(node, key),
                variable,
                state: if empty { "empty" } else { "not set" },
                message: if message.is_empty() {
                    "set it before running mayfly".to_owned()
                } else {
                    message
                },
            }),
        }
    }
}

/// Returns the key of `known` nearest to `name` when at most two edits apart, the distance
/// of most misspellings (`imgae`, `servics`, `portss`).
fn nearest_key<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|key| (strsim::levenshtein(name, key), *key))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, key)| key)
}
