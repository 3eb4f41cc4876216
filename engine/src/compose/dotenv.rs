//! The env file format of the Compose Specification, used by the project's `.env` file and
//! by a service's `env_file`. Each line is `NAME=VALUE` or `NAME`, with `#` comments. An
//! `export ` prefix, common in files also sourced by shells, is accepted and dropped.
//! Single quotes keep text literal. Double quotes allow escapes
//! (`\n`, `\r`, `\t`, `\\`, `\"`) and interpolation, and may span lines. Unquoted values
//! are interpolated and end at a ` #` comment.

use std::collections::HashMap;

use super::interpolate::{interpolate, Problem};

/// One line of an env file that does not parse, with the reason.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Invalid {
    pub line: usize,
    pub reason: &'static str,
}

/// The variables of an env file in order. A name without `=` has no value.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct EnvFile {
    pub variables: Vec<(String, Option<String>)>,
    /// Variables used in values that were not set, so an empty string replaced them.
    pub unset: Vec<String>,
}

/// Parses `text`. Values are interpolated with `env` plus the file's own earlier variables,
/// unless `raw`, which keeps every value exactly as written after the `=`.
pub(super) fn parse(
    text: &str,
    env: &HashMap<String, String>,
    raw: bool,
) -> Result<EnvFile, Invalid> {
    let mut scope = env.clone();
    let mut parsed = EnvFile::default();
    let mut rest = text;
    let mut line = 1;

    while !rest.is_empty() {
        let line_end = rest.find('\n').map_or(rest.len(), |index| index + 1);
        let current = rest[..line_end].trim();
        if current.is_empty() || current.starts_with('#') {
            rest = &rest[line_end..];
            line += 1;
            continue;
        }

        let start_line = line;
        let invalid = |reason| Invalid {
            line: start_line,
            reason,
        };
        let entry = rest.trim_start();
        let entry = entry.strip_prefix("export ").unwrap_or(entry);
        let name_end = entry
            .find(|c: char| c == '=' || c == '\n' || c.is_whitespace())
            .unwrap_or(entry.len());
        let name = &entry[..name_end];
        if name.is_empty() {
            return Err(invalid("a line must start with a variable name"));
        }
        let after_name = entry[name_end..].trim_start_matches([' ', '\t']);

        let Some(after_equals) = after_name.strip_prefix('=') else {
            if !after_name.is_empty() && !after_name.starts_with(['\n', '\r', '#']) {
                return Err(invalid(
                    "a variable name must be followed by `=` or the line end",
                ));
            }
            parsed.variables.push((name.to_owned(), None));
            rest = &after_name[after_name.find('\n').map_or(after_name.len(), |i| i + 1)..];
            line += 1;
            continue;
        };

        let value_text = after_equals.trim_start_matches([' ', '\t']);
        let (value, consumed) = if raw {
            let end = value_text.find('\n').unwrap_or(value_text.len());
            (value_text[..end].trim_end_matches('\r').to_owned(), end)
        } else {
            read_value(value_text, &scope, &mut parsed.unset).map_err(invalid)?
        };
        line += value_text[..consumed].matches('\n').count();

        let remaining = &value_text[consumed..];
        let end_of_line = remaining.find('\n').map_or(remaining.len(), |i| i + 1);
        let trailing = remaining[..end_of_line].trim();
        if !trailing.is_empty() && !trailing.starts_with('#') {
            return Err(invalid("unexpected text after the closing quote"));
        }
        rest = &remaining[end_of_line..];
        line += 1;

        scope.insert(name.to_owned(), value.clone());
        parsed.variables.push((name.to_owned(), Some(value)));
    }
    Ok(parsed)
}

/// Reads one value at the start of `text` and returns it with the number of bytes it took.
fn read_value(
    text: &str,
    scope: &HashMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<(String, usize), &'static str> {
    if let Some(quoted) = text.strip_prefix('\'') {
        let (inner, length) = closing_quote(quoted, '\'')?;
        return Ok((inner.replace("\\'", "'"), length + 2));
    }
    if let Some(quoted) = text.strip_prefix('"') {
        let (inner, length) = closing_quote(quoted, '"')?;
        let unescaped = unescape(inner);
        return Ok((expand(&unescaped, scope, unset)?, length + 2));
    }

    let end = text.find('\n').unwrap_or(text.len());
    let mut value = text[..end].trim_end_matches('\r');
    if let Some(comment) = value.find(" #").or_else(|| value.find("\t#")) {
        value = &value[..comment];
    }
    Ok((expand(value.trim_end(), scope, unset)?, end))
}

/// Returns the text before the unescaped `quote` that closes a value, and its length.
fn closing_quote(text: &str, quote: char) -> Result<(&str, usize), &'static str> {
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Ok((&text[..index], index));
        }
    }
    Err("a quoted value has no closing quote")
}

fn unescape(text: &str) -> String {
    let mut output = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            output.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => output.push('\n'),
            Some('r') => output.push('\r'),
            Some('t') => output.push('\t'),
            Some('\\') => output.push('\\'),
            Some('"') => output.push('"'),
            Some(other) => {
                output.push('\\');
                output.push(other);
            }
            None => output.push('\\'),
        }
    }
    output
}

fn expand(
    text: &str,
    scope: &HashMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<String, &'static str> {
    match interpolate(text, scope) {
        Ok(result) => {
            for variable in result.unset {
                if !unset.contains(&variable) {
                    unset.push(variable);
                }
            }
            Ok(result.text)
        }
        Err(Problem::Syntax(reason)) => Err(reason),
        Err(Problem::Required { .. }) => Err("a required variable (`${VAR:?…}`) is not set"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables(text: &str) -> Vec<(String, Option<String>)> {
        let env = HashMap::from([("HOST_USER".to_owned(), "ann".to_owned())]);
        parse(text, &env, false).unwrap().variables
    }

    fn pairs(items: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        items
            .iter()
            .map(|(name, value)| (name.to_string(), value.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn env_file_forms() {
        let text = "# settings\n\nPLAIN=value\nexport EXPORTED=yes\nSPACED = padded  \n\
                    COMMENT=val # note\nHASH=val#kept\nDOUBLE=\"a # b\\tc\" # note\n\
                    SINGLE='$HOST_USER \\'x\\''\nINTERPOLATED=${HOST_USER}-$PLAIN\nEMPTY=\nBARE\n";
        assert_eq!(
            variables(text),
            pairs(&[
                ("PLAIN", Some("value")),
                ("EXPORTED", Some("yes")),
                ("SPACED", Some("padded")),
                ("COMMENT", Some("val")),
                ("HASH", Some("val#kept")),
                ("DOUBLE", Some("a # b\tc")),
                ("SINGLE", Some("$HOST_USER 'x'")),
                ("INTERPOLATED", Some("ann-value")),
                ("EMPTY", Some("")),
                ("BARE", None),
            ])
        );
    }

    #[test]
    fn multiline_values() {
        assert_eq!(
            variables("KEY=\"line one\nline two\"\nNEXT=1\n"),
            pairs(&[("KEY", Some("line one\nline two")), ("NEXT", Some("1"))])
        );
    }

    #[test]
    fn raw_values_stay_as_written() {
        let parsed = parse("A=\"$HOME\" # x\nB\n", &HashMap::new(), true).unwrap();
        assert_eq!(
            parsed.variables,
            pairs(&[("A", Some("\"$HOME\" # x")), ("B", None)])
        );
    }

    #[test]
    fn unset_variables_are_collected() {
        let parsed = parse("A=${MISSING}\n", &HashMap::new(), false).unwrap();
        assert_eq!(parsed.unset, ["MISSING"]);
    }

    #[test]
    fn errors_name_the_line() {
        let env = HashMap::new();
        assert_eq!(
            parse("A=1\nB=\"open\n", &env, false),
            Err(Invalid {
                line: 2,
                reason: "a quoted value has no closing quote"
            })
        );
        assert_eq!(
            parse("A=1\n\nC='x' y\n", &env, false),
            Err(Invalid {
                line: 3,
                reason: "unexpected text after the closing quote"
            })
        );
        assert_eq!(
            parse("=1\n", &env, false),
            Err(Invalid {
                line: 1,
                reason: "a line must start with a variable name"
            })
        );
        assert_eq!(
            parse("A B=1\n", &env, false),
            Err(Invalid {
                line: 1,
                reason: "a variable name must be followed by `=` or the line end"
            })
        );
    }
}
