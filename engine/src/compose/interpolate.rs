//! Variable interpolation in Compose values: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+replacement}`,
//! `${VAR+replacement}` and `$$` for a literal `$`, as the Compose Specification's
//! interpolation section defines them. Defaults and messages may hold further variables.

use std::collections::HashMap;

/// The reason a value could not be interpolated. The caller adds the location.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Problem {
    /// The text breaks the syntax, for the reason given.
    Syntax(&'static str),
    /// `${VAR:?message}` or `${VAR?message}` with the variable not set (or empty).
    Required {
        variable: String,
        empty: bool,
        message: String,
    },
}

/// The interpolated text, plus the variables that were unset and had no default (Compose
/// substitutes an empty string for them and warns).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Interpolated {
    pub text: String,
    pub unset: Vec<String>,
}

/// Interpolates `text` with variables from `env`.
pub(super) fn interpolate(
    text: &str,
    env: &HashMap<String, String>,
) -> Result<Interpolated, Problem> {
    let mut unset = Vec::new();
    let text = expand(text, env, &mut unset)?;
    Ok(Interpolated { text, unset })
}

fn expand(
    text: &str,
    env: &HashMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<String, Problem> {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        output.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];

        if let Some(remaining) = after.strip_prefix('$') {
            output.push('$');
            rest = remaining;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = closing_brace(braced).ok_or(Problem::Syntax("`${` has no closing `}`"))?;
            output.push_str(&expand_braced(&braced[..end], env, unset)?);
            rest = &braced[end + 1..];
        } else {
            let name_length = variable_name_length(after);
            if name_length == 0 {
                return Err(Problem::Syntax(
                    "`$` must be followed by a variable name, `{` or another `$`",
                ));
            }
            let name = &after[..name_length];
            output.push_str(&lookup(name, env, unset));
            rest = &after[name_length..];
        }
    }
    output.push_str(rest);
    Ok(output)
}

/// Returns the byte offset of the `}` that closes a `${`, counting nested `${ … }` pairs.
fn closing_brace(braced: &str) -> Option<usize> {
    let bytes = braced.as_bytes();
    let mut depth = 1;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'$' if bytes.get(index + 1) == Some(&b'$') => index += 1,
            b'$' if bytes.get(index + 1) == Some(&b'{') => {
                depth += 1;
                index += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(index);
                }
            }
            _ => {}
        }
        index += 1;
    }
    None
}

fn expand_braced(
    body: &str,
    env: &HashMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<String, Problem> {
    let name_length = variable_name_length(body);
    if name_length == 0 {
        return Err(Problem::Syntax("`${` must start with a variable name"));
    }
    let (name, modifier) = body.split_at(name_length);
    let value = env.get(name);
    let non_empty = value.filter(|value| !value.is_empty());

    if modifier.is_empty() {
        return Ok(lookup(name, env, unset));
    }
    if let Some(default) = modifier.strip_prefix(":-") {
        return match non_empty {
            Some(value) => Ok(value.clone()),
            None => expand(default, env, unset),
        };
    }
    if let Some(default) = modifier.strip_prefix('-') {
        return match value {
            Some(value) => Ok(value.clone()),
            None => expand(default, env, unset),
        };
    }
    if let Some(message) = modifier.strip_prefix(":?") {
        return match non_empty {
            Some(value) => Ok(value.clone()),
            None => Err(required(name, value.is_some(), message, env, unset)?),
        };
    }
    if let Some(message) = modifier.strip_prefix('?') {
        return match value {
            Some(value) => Ok(value.clone()),
            None => Err(required(name, false, message, env, unset)?),
        };
    }
    if let Some(replacement) = modifier.strip_prefix(":+") {
        return match non_empty {
            Some(_) => expand(replacement, env, unset),
            None => Ok(String::new()),
        };
    }
    if let Some(replacement) = modifier.strip_prefix('+') {
        return match value {
            Some(_) => expand(replacement, env, unset),
            None => Ok(String::new()),
        };
    }
    Err(Problem::Syntax(
        "after the variable name `${` allows only `}`, `:-`, `-`, `:?`, `?`, `:+` or `+`",
    ))
}

fn required(
    name: &str,
    empty: bool,
    message: &str,
    env: &HashMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<Problem, Problem> {
    Ok(Problem::Required {
        variable: name.to_owned(),
        empty,
        message: expand(message, env, unset)?,
    })
}

fn lookup(name: &str, env: &HashMap<String, String>, unset: &mut Vec<String>) -> String {
    match env.get(name) {
        Some(value) => value.clone(),
        None => {
            if !unset.iter().any(|known| known == name) {
                unset.push(name.to_owned());
            }
            String::new()
        }
    }
}

/// Returns the length of the variable name at the start of `text`: `[A-Za-z_][A-Za-z0-9_]*`.
fn variable_name_length(text: &str) -> usize {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_alphabetic() || *first == b'_' => bytes
            .iter()
            .position(|byte| !byte.is_ascii_alphanumeric() && *byte != b'_')
            .unwrap_or(bytes.len()),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        [("TAG", "1.25"), ("EMPTY", ""), ("HOST", "db")]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    fn text(input: &str) -> String {
        interpolate(input, &env()).unwrap().text
    }

    #[test]
    fn plain_and_braced_variables() {
        assert_eq!(text("nginx:${TAG}"), "nginx:1.25");
        assert_eq!(text("$HOST:3306"), "db:3306");
        assert_eq!(text("no variables"), "no variables");
    }

    #[test]
    fn double_dollar_is_literal() {
        assert_eq!(text("echo $$HOME"), "echo $HOME");
        assert_eq!(text("$${TAG}"), "${TAG}");
    }

    #[test]
    fn defaults_distinguish_unset_and_empty() {
        assert_eq!(text("${EMPTY:-fallback}"), "fallback");
        assert_eq!(text("${EMPTY-fallback}"), "");
        assert_eq!(text("${MISSING-fallback}"), "fallback");
        assert_eq!(text("${TAG:-fallback}"), "1.25");
    }

    #[test]
    fn nested_defaults() {
        assert_eq!(text("${MISSING:-${HOST}}"), "db");
        assert_eq!(text("${MISSING:-${ALSO_MISSING:-x}}"), "x");
        assert_eq!(text("${MISSING:-a}-${TAG}"), "a-1.25");
    }

    #[test]
    fn alternative_values() {
        assert_eq!(text("${TAG:+set}"), "set");
        assert_eq!(text("${EMPTY:+set}"), "");
        assert_eq!(text("${EMPTY+set}"), "set");
        assert_eq!(text("${MISSING+set}"), "");
    }

    #[test]
    fn unset_variables_are_reported() {
        let result = interpolate("${MISSING}/$MISSING/$OTHER", &env()).unwrap();
        assert_eq!(result.text, "//");
        assert_eq!(result.unset, ["MISSING", "OTHER"]);
    }

    #[test]
    fn required_variables() {
        assert_eq!(
            interpolate("${MISSING:?set the password}", &env()),
            Err(Problem::Required {
                variable: "MISSING".to_owned(),
                empty: false,
                message: "set the password".to_owned(),
            })
        );
        assert_eq!(
            interpolate("${EMPTY:?needs $HOST}", &env()),
            Err(Problem::Required {
                variable: "EMPTY".to_owned(),
                empty: true,
                message: "needs db".to_owned(),
            })
        );
        assert_eq!(text("${EMPTY?unused}"), "");
        assert_eq!(text("${TAG:?unused}"), "1.25");
    }

    #[test]
    fn syntax_errors() {
        for input in ["${TAG", "$1", "cost: 5$", "${}", "${TAG/a/b}", "${9X}"] {
            assert!(
                matches!(interpolate(input, &env()), Err(Problem::Syntax(_))),
                "{input:?} should be rejected"
            );
        }
    }
}
