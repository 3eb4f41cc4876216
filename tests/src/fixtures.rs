//! The summary of fixture images that tests/fixtures/build-images writes to the state directory.

use serde_json::Value;

/// Loads `fixtures.json`; panics with the command that creates it when it is missing.
pub fn load() -> Value {
    let path = crate::state_dir().join("fixtures.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "failed to read {}: {error}; build the fixtures with `python3 tests/fixtures/build-images` as root",
            path.display()
        )
    });
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("invalid JSON in {}: {error}", path.display()))
}
