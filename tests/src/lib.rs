//! Shared helpers for the integration tests: where the local registries and fixtures are, a
//! token issuer for the bearer-token registry, and a `mayfly` command with a private home.

pub mod fixtures;
pub mod home;
pub mod token_issuer;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// Plain HTTP registry, anonymous, where the fixture images are pushed.
pub const REGISTRY_PLAIN: &str = "127.0.0.1:5000";
/// Plain HTTP registry with basic auth (`mayfly` / `mayfly-secret`).
pub const REGISTRY_BASIC: &str = "127.0.0.1:5001";
/// HTTPS registry whose certificate is signed by `registry/ca.pem` in the state directory.
pub const REGISTRY_TLS: &str = "127.0.0.1:5002";
/// Plain HTTP registry that accepts bearer tokens from the issuer on [`TOKEN_ISSUER`].
pub const REGISTRY_TOKEN: &str = "127.0.0.1:5003";
/// Address the token realm of [`REGISTRY_TOKEN`] points at.
pub const TOKEN_ISSUER: &str = "127.0.0.1:5004";

pub const BASIC_USER: &str = "mayfly";
pub const BASIC_PASSWORD: &str = "mayfly-secret";

/// Directory that scripts/registries and the fixture builder fill (`/var/lib/mayfly-ci`).
pub fn state_dir() -> PathBuf {
    std::env::var_os("MAYFLY_TEST_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/mayfly-ci"))
}

/// Returns whether something accepts TCP connections on `address` (a loopback address).
pub fn is_listening(address: &str) -> bool {
    let address: SocketAddr = address.parse().expect("test addresses are literal IP:port");
    assert!(
        address.ip().is_loopback(),
        "tests only dial loopback, not {address}"
    );
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

/// Prints a skip line and returns false when the registry at `address` is not running.
///
/// CI always starts the registries, so a skip there means .ci/run is broken; the line makes
/// that visible instead of a silent pass.
pub fn registry_available(address: &str) -> bool {
    if is_listening(address) {
        return true;
    }
    println!(
        "skipped: registry at {address} is not running (start it with scripts/registries start)"
    );
    if std::env::var_os("MAYFLY_REQUIRE_REGISTRIES").is_some() {
        panic!("MAYFLY_REQUIRE_REGISTRIES is set but the registry at {address} is not running");
    }
    false
}
