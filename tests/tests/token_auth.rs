//! The bearer-token flow against the token-auth registry on 127.0.0.1:5003, with a token
//! issuer that each test starts on 127.0.0.1:5004, and `RegistryClient::check_login` against
//! the basic-auth and token-auth registries.
//!
//! Only one issuer can listen on 127.0.0.1:5004 at a time, so the tests that start one take
//! `ISSUER_LOCK` first and hold it until their issuer stops.

use std::future::Future;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mayfly_image::auth::{AuthFiles, Credentials};
use mayfly_image::client::{ClientError, ClientOptions, RegistryClient, RetryPolicy};
use mayfly_image::digest::Digest;
use mayfly_image::pull::{pull, NoProgress, PullError, PullOptions, PulledImage};
use mayfly_image::reference::Reference;
use mayfly_image::registry_config::RegistriesConfig;
use mayfly_image::store::Store;
use mayfly_tests::token_issuer::TokenIssuer;
use mayfly_tests::{
    registry_available, BASIC_PASSWORD, BASIC_USER, REGISTRY_BASIC, REGISTRY_PLAIN, REGISTRY_TOKEN,
    TOKEN_ISSUER,
};

static ISSUER_LOCK: Mutex<()> = Mutex::new(());

const IMAGE: &str = "library/busybox:latest";
const WRONG_PASSWORD: &str = "not-the-mayfly-password";

/// Takes the issuer lock. A test that panicked while holding it leaves nothing to repair,
/// so a poisoned lock is taken as it is.
fn issuer_lock() -> MutexGuard<'static, ()> {
    ISSUER_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a token issuer, waiting up to 30 s while another process (a parallel test binary)
/// still listens on its port.
fn start_issuer(credentials: Option<(&str, &str)>) -> TokenIssuer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TokenIssuer::start(credentials) {
            Ok(issuer) => return issuer,
            Err(error) => {
                let in_use = error
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse);
                if !in_use || Instant::now() > deadline {
                    panic!("failed to start the token issuer on {TOKEN_ISSUER}: {error:#}");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn run<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("failed to build a tokio runtime")
        .block_on(future)
}

fn client(registries: RegistriesConfig, auth: AuthFiles) -> RegistryClient {
    RegistryClient::new(
        registries,
        ClientOptions {
            auth,
            retry: RetryPolicy {
                max_attempts: 3,
                initial_delay: Duration::from_millis(50),
                max_delay: Duration::from_millis(200),
                max_retry_after: Duration::from_secs(1),
            },
            ..ClientOptions::default()
        },
    )
}

/// Writes an auth.json with credentials for `registry` into `dir` and returns its files.
fn auth_file(dir: &Path, registry: &str, password: &str) -> AuthFiles {
    let auth = AuthFiles::with_file(dir.join("auth.json"));
    auth.login(registry, &Credentials::new(BASIC_USER, password))
        .expect("failed to write the test auth file");
    auth
}

async fn pull_busybox(store_dir: &Path, auth: AuthFiles) -> Result<PulledImage, PullError> {
    let store = Store::open(store_dir).expect("failed to open the test store");
    let reference = Reference::parse(&format!("{REGISTRY_TOKEN}/{IMAGE}")).unwrap();
    pull(
        &store,
        &client(RegistriesConfig::empty(), auth),
        &reference,
        &PullOptions::default(),
        &NoProgress,
    )
    .await
}

/// Returns the manifest digest that tests/fixtures/build-images recorded for busybox.
fn fixture_manifest_digest() -> Digest {
    let fixtures = mayfly_tests::fixtures::load();
    fixtures["images"][IMAGE]["manifest_digest"]
        .as_str()
        .expect("fixtures.json lists busybox's manifest digest")
        .parse()
        .expect("fixture digests are valid")
}

#[test]
fn anonymous_issuer_serves_pull() {
    if !registry_available(REGISTRY_TOKEN) {
        return;
    }
    let _lock = issuer_lock();
    let issuer = start_issuer(None);
    let dir = tempfile::tempdir().unwrap();

    let pulled = run(pull_busybox(&dir.path().join("store"), AuthFiles::none()))
        .expect("anonymous pull through the token issuer failed");

    assert_eq!(pulled.manifest_digest, fixture_manifest_digest());
    assert!(!pulled.layers.is_empty());
    let store = Store::open(dir.path().join("store")).unwrap();
    for layer in &pulled.layers {
        assert!(
            store.has_blob(&layer.digest),
            "layer {} missing",
            layer.digest
        );
    }
    assert!(
        issuer.requests() >= 1,
        "the pull never asked the issuer for a token"
    );
}

#[test]
fn issuer_requires_credentials_missing() {
    if !registry_available(REGISTRY_TOKEN) {
        return;
    }
    let _lock = issuer_lock();
    let issuer = start_issuer(Some((BASIC_USER, BASIC_PASSWORD)));
    let dir = tempfile::tempdir().unwrap();

    let error = run(pull_busybox(&dir.path().join("store"), AuthFiles::none()))
        .expect_err("a pull without credentials succeeded against an issuer that requires them");

    let Some(ClientError::AuthenticationRequired {
        registry,
        repository,
    }) = error.client_error()
    else {
        panic!("expected AuthenticationRequired, got {error:?}");
    };
    assert_eq!(registry, REGISTRY_TOKEN);
    assert_eq!(repository, "library/busybox");
    let message = error.client_error().unwrap().to_string();
    assert!(
        message.contains(&format!("mayfly login {REGISTRY_TOKEN}")),
        "{message}"
    );
    assert!(issuer.requests() >= 1, "the issuer saw no token request");
}

#[test]
fn issuer_accepts_auth_file_credentials() {
    if !registry_available(REGISTRY_TOKEN) {
        return;
    }
    let _lock = issuer_lock();
    let issuer = start_issuer(Some((BASIC_USER, BASIC_PASSWORD)));
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_file(dir.path(), REGISTRY_TOKEN, BASIC_PASSWORD);

    let pulled = run(pull_busybox(&dir.path().join("store"), auth))
        .expect("pull with credentials from auth.json failed");

    assert_eq!(pulled.manifest_digest, fixture_manifest_digest());
    assert!(issuer.requests() >= 1, "the issuer saw no token request");
}

#[test]
fn issuer_rejects_wrong_auth_file_password() {
    if !registry_available(REGISTRY_TOKEN) {
        return;
    }
    let _lock = issuer_lock();
    let _issuer = start_issuer(Some((BASIC_USER, BASIC_PASSWORD)));
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_file(dir.path(), REGISTRY_TOKEN, WRONG_PASSWORD);

    let error = run(pull_busybox(&dir.path().join("store"), auth))
        .expect_err("a pull with a wrong password succeeded");

    assert!(
        matches!(
            error.client_error(),
            Some(ClientError::CredentialsRejected { registry, .. }) if registry == REGISTRY_TOKEN
        ),
        "{error:?}"
    );
    assert!(!format!("{error:?}").contains(WRONG_PASSWORD));
}

#[test]
fn check_login_token_registry() {
    if !registry_available(REGISTRY_TOKEN) {
        return;
    }
    let _lock = issuer_lock();
    let issuer = start_issuer(Some((BASIC_USER, BASIC_PASSWORD)));
    let client = client(RegistriesConfig::empty(), AuthFiles::none());

    run(client.check_login(
        REGISTRY_TOKEN,
        &Credentials::new(BASIC_USER, BASIC_PASSWORD),
    ))
    .expect("check_login rejected the right credentials");
    let accepted_requests = issuer.requests();
    assert!(
        accepted_requests >= 1,
        "check_login never asked for a token"
    );

    let error = run(client.check_login(
        REGISTRY_TOKEN,
        &Credentials::new(BASIC_USER, WRONG_PASSWORD),
    ))
    .expect_err("check_login accepted a wrong password");
    assert_rejected(&error, REGISTRY_TOKEN);
    assert!(issuer.requests() > accepted_requests);
}

#[test]
fn check_login_basic_registry() {
    if !registry_available(REGISTRY_BASIC) {
        return;
    }
    let client = client(RegistriesConfig::empty(), AuthFiles::none());

    run(client.check_login(
        REGISTRY_BASIC,
        &Credentials::new(BASIC_USER, BASIC_PASSWORD),
    ))
    .expect("check_login rejected the right credentials");

    let error = run(client.check_login(
        REGISTRY_BASIC,
        &Credentials::new(BASIC_USER, WRONG_PASSWORD),
    ))
    .expect_err("check_login accepted a wrong password");
    assert_rejected(&error, REGISTRY_BASIC);
}

#[test]
fn check_login_follows_location() {
    if !registry_available(REGISTRY_BASIC) {
        return;
    }
    // Nothing listens on localhost:5999: a check that ignored the location would fail to
    // connect instead of reaching the basic-auth registry.
    let conf = format!(
        "[[registry]]\nprefix = \"localhost:5999\"\nlocation = \"{REGISTRY_BASIC}\"\ninsecure = true\n"
    );
    let registries = RegistriesConfig::from_toml(&conf, Path::new("token_auth.conf")).unwrap();
    let client = client(registries, AuthFiles::none());

    run(client.check_login(
        "localhost:5999",
        &Credentials::new(BASIC_USER, BASIC_PASSWORD),
    ))
    .expect("check_login did not reach the registry that location names");

    let error = run(client.check_login(
        "localhost:5999",
        &Credentials::new(BASIC_USER, WRONG_PASSWORD),
    ))
    .expect_err("check_login accepted a wrong password");
    assert_rejected(&error, "localhost:5999");
}

#[test]
fn check_login_anonymous_registry() {
    if !registry_available(REGISTRY_PLAIN) {
        return;
    }
    // Like `docker login`, a registry that returns no challenge passes unchecked.
    let client = client(RegistriesConfig::empty(), AuthFiles::none());
    run(client.check_login(
        REGISTRY_PLAIN,
        &Credentials::new(BASIC_USER, WRONG_PASSWORD),
    ))
    .expect("check_login failed on a registry without authentication");
}

fn assert_rejected(error: &ClientError, expected_registry: &str) {
    let ClientError::LoginRejected { registry, .. } = error else {
        panic!("expected LoginRejected, got {error:?}");
    };
    assert_eq!(registry, expected_registry);
    let message = error.to_string();
    assert!(message.contains(BASIC_USER), "{message}");
    assert!(!message.contains(WRONG_PASSWORD), "{message}");
    assert!(!format!("{error:?}").contains(WRONG_PASSWORD));
}
