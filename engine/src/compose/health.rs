//! A service's `healthcheck`, with the defaults of [`HealthCheck::new`] for the timings it
//! leaves out.

use super::context::Context;
use super::error::ComposeError;
use super::known_keys;
use super::yaml::{join_key, Node, Value};
use crate::health_check::{parse_duration, HealthCheck, HealthTest};

/// Reads `healthcheck`. Returns `None` when it gives no test, because then Compose keeps
/// the image's check.
pub(super) fn healthcheck(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<Option<HealthCheck>, ComposeError> {
    let mut check = HealthCheck::new(HealthTest::None);
    let mut has_test = false;
    let mut disabled = false;
    let mut timing_keys = Vec::new();

    for (name, value) in context.mapping(node, key)? {
        let value_key = join_key(key, name);
        match name.as_str() {
            "test" => {
                if let Some(parsed) = test(context, value, &value_key)? {
                    check.test = parsed;
                    has_test = true;
                }
            }
            "disable" => disabled = context.boolean(value, &value_key)?,
            "interval" => check.interval = duration(context, value, &value_key)?,
            "timeout" => check.timeout = duration(context, value, &value_key)?,
            "start_period" => check.start_period = duration(context, value, &value_key)?,
            "start_interval" => check.start_interval = duration(context, value, &value_key)?,
            "retries" => check.retries = context.unsigned(value, &value_key)?,
            _ => {
                context.ignore_key(key, name, known_keys::HEALTHCHECK);
                continue;
            }
        }
        if name != "test" && name != "disable" {
            timing_keys.push(value_key);
        }
    }

    if disabled {
        return Ok(Some(HealthCheck::new(HealthTest::None)));
    }
    if !has_test {
        // NOTE: Docker would apply these timings to the image's HEALTHCHECK. mayfly keeps the
        // image's check as it is and warns.
        for timing_key in timing_keys {
            context.ignore_with_reason(
                &timing_key,
                "the healthcheck has no test, so the image's health check applies unchanged",
            );
        }
        return Ok(None);
    }
    Ok(Some(check))
}

/// `["CMD", args…]`, `["CMD-SHELL", "command"]`, `["NONE"]`, or a string for CMD-SHELL.
/// Returns `None` for an empty list, which Docker reads as "keep the image's test".
fn test(context: &mut Context, node: &Node, key: &str) -> Result<Option<HealthTest>, ComposeError> {
    if let Value::Scalar { .. } = node.value {
        let command = context.text(node, key)?;
        if command.trim().is_empty() {
            return Err(context.invalid(node, key, &command, "a command to run"));
        }
        return Ok(Some(HealthTest::Shell(command)));
    }

    let words = match node.value {
        Value::Sequence(_) => context.text_or_list(node, key)?,
        _ => {
            return Err(context.wrong_type(
                node,
                key,
                "a command string, or a list starting with CMD, CMD-SHELL or NONE",
            ))
        }
    };
    HealthTest::from_docker(&words).map_err(|source| ComposeError::InvalidHealthTest {
        at: context.at(node, key),
        source,
    })
}

fn duration(
    context: &mut Context,
    node: &Node,
    key: &str,
) -> Result<std::time::Duration, ComposeError> {
    let text = context.text(node, key)?;
    parse_duration(&text).map_err(|source| ComposeError::InvalidDuration {
        at: context.at(node, key),
        source,
    })
}
