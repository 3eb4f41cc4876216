//! Pulls from the real local registries (scripts/registries): plain HTTP, basic auth, TLS
//! with a private CA, and bearer tokens.

mod common;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use common::*;
use mayfly_image::auth::{AuthFiles, Credentials};
use mayfly_image::client::{ClientError, ClientOptions, RegistryClient};
use mayfly_image::digest::Digest;
use mayfly_image::manifest::Descriptor;
use mayfly_image::platform::Platform;
use mayfly_image::pull::{
    pull, LayerSink, LayerWriter, NoProgress, PullError, PullEvent, PullOptions, PulledImage,
};
use mayfly_image::reference::Reference;
use mayfly_image::registry_config::RegistriesConfig;
use mayfly_image::store::{Store, StoreError};

fn reference(text: &str) -> Reference {
    Reference::parse(text).unwrap()
}

async fn pull_into(
    store: &Store,
    client: &RegistryClient,
    text: &str,
    options: &PullOptions,
) -> Result<PulledImage, PullError> {
    pull(store, client, &reference(text), options, &NoProgress).await
}

fn assert_matches_fixture(pulled: &PulledImage, fixture: &FixtureImage, store: &Store) {
    assert_eq!(pulled.manifest_digest, fixture.manifest_digest);
    assert_eq!(pulled.config_digest, fixture.config_digest);
    let layers: Vec<(Digest, u64)> = pulled
        .layers
        .iter()
        .map(|layer| (layer.digest.clone(), layer.size))
        .collect();
    assert_eq!(layers, fixture.layers);
    assert_eq!(pulled.diff_ids, fixture.diff_ids);
    for digest in pulled.record().blobs() {
        assert!(
            store.has_blob(digest),
            "blob {digest} missing from the store"
        );
    }
}

#[tokio::test]
async fn pull_busybox_stores_everything() {
    if !registry_available(PLAIN) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let client = plain_client();
    let fixture = fixture("library/busybox:latest");
    let progress = RecordingProgress::default();

    let pulled = pull(
        &store,
        &client,
        &reference("127.0.0.1:5000/library/busybox:latest"),
        &PullOptions::default(),
        &progress,
    )
    .await
    .unwrap();

    assert_matches_fixture(&pulled, &fixture, &store);
    assert_eq!(pulled.platform, Platform::new("linux", "amd64", None));
    assert_eq!(pulled.index_digest, None);
    assert_eq!(
        pulled.config.config.as_ref().unwrap().cmd.as_deref(),
        Some(&["sh".to_owned()][..])
    );
    let layer = &fixture.layers[0];
    assert!(pulled.downloaded.contains(&layer.0));
    assert!(pulled.downloaded.contains(&fixture.config_digest));
    assert!(pulled.downloaded.contains(&fixture.manifest_digest));
    assert_eq!(progress.bytes_for(&layer.0), layer.1);

    let record = store.image(&pulled.reference).unwrap().unwrap();
    assert_eq!(record.manifest_digest, fixture.manifest_digest);
    assert_eq!(record.diff_ids, fixture.diff_ids);
    assert!(files_in(&store.root().join("tmp")).is_empty());
    assert_blobs_verify(store.root());

    // A second pull finds every blob present and downloads nothing.
    let progress = RecordingProgress::default();
    let again = pull(
        &store,
        &client,
        &pulled.reference,
        &PullOptions::default(),
        &progress,
    )
    .await
    .unwrap();
    assert!(again.downloaded.is_empty(), "{:?}", again.downloaded);
    let events = progress.events.lock().unwrap();
    assert!(events.contains(&PullEvent::LayerPresent {
        digest: layer.0.clone(),
        size: layer.1,
    }));
}

#[tokio::test]
async fn pull_every_fixture() {
    if !registry_available(PLAIN) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = plain_client();
    let fixtures = fixtures();

    for (name, value) in fixtures["images"].as_object().unwrap() {
        let text = format!("{PLAIN}/{name}");
        let result = pull_into(&store, &client, &text, &PullOptions::default()).await;
        if name.starts_with("library/corrupt") {
            assert!(result.is_err(), "{name} must fail its digest check");
            continue;
        }
        let pulled = result.unwrap_or_else(|error| panic!("pull of {name} failed: {error:?}"));
        let expected = match value.get("manifests") {
            Some(manifests) => {
                let amd64 = manifests
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["platform"]["architecture"] == "amd64")
                    .expect("multi-platform fixtures include amd64");
                fixture_from(amd64)
            }
            None => fixture_from(value),
        };
        assert_matches_fixture(&pulled, &expected, &store);
    }
    assert_blobs_verify(store.root());
    assert!(files_in(&store.root().join("tmp")).is_empty());
}

#[tokio::test]
async fn multi_platform_index_follows_platform() {
    if !registry_available(PLAIN) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = plain_client();
    let multi = &fixtures()["images"]["library/busybox:multi"];
    let index_digest: Digest = multi["manifest_digest"].as_str().unwrap().parse().unwrap();
    let for_arch = |arch: &str| {
        let entry = multi["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap_or_else(|| panic!("busybox:multi has no {arch} manifest"));
        fixture_from(entry)
    };
    let text = format!("{PLAIN}/library/busybox:multi");

    let host = pull_into(&store, &client, &text, &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(host.index_digest.as_ref(), Some(&index_digest));
    if cfg!(target_arch = "x86_64") {
        assert_matches_fixture(&host, &for_arch("amd64"), &store);
        assert_eq!(host.platform.to_string(), "linux/amd64");
    }

    let arm = pull_into(
        &store,
        &client,
        &text,
        &PullOptions {
            platform: Some("linux/arm64".parse().unwrap()),
            ..PullOptions::default()
        },
    )
    .await
    .unwrap();
    assert_matches_fixture(&arm, &for_arch("arm64"), &store);
    assert_eq!(arm.platform.to_string(), "linux/arm64");
    assert_ne!(arm.manifest_digest, host.manifest_digest);

    let error = pull_into(
        &store,
        &client,
        &text,
        &PullOptions {
            platform: Some("linux/s390x".parse().unwrap()),
            ..PullOptions::default()
        },
    )
    .await
    .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, PullError::Platform(_)), "{error:?}");
    assert!(message.contains("linux/amd64"), "{message}");
    assert!(message.contains("linux/arm64"), "{message}");

    let mismatch = pull_into(
        &store,
        &client,
        &format!("{PLAIN}/library/busybox:latest"),
        &PullOptions {
            platform: Some("linux/arm64".parse().unwrap()),
            ..PullOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(mismatch, PullError::PlatformMismatch { .. }),
        "{mismatch:?}"
    );
}

#[tokio::test]
async fn corrupt_layer_is_rejected_and_discarded() {
    if !registry_available(PLAIN) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = plain_client();
    let fixture = fixture("library/corrupt:latest");
    let layer = &fixture.layers[0].0;

    let error = pull_into(
        &store,
        &client,
        &format!("{PLAIN}/library/corrupt:latest"),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();

    let PullError::Store {
        source:
            StoreError::DigestMismatch {
                expected,
                actual,
                origin,
            },
        ..
    } = &error
    else {
        panic!("expected a digest mismatch, got {error:?}");
    };
    assert_eq!(expected, layer);
    assert_ne!(actual, layer);
    assert_eq!(origin, "127.0.0.1:5000/library/corrupt");
    let message = format!("{error}: {}", std::error::Error::source(&error).unwrap());
    assert!(message.contains(&layer.to_string()), "{message}");
    assert!(message.contains(&actual.to_string()), "{message}");

    // Nothing of the corrupt layer remains; the verified manifest and config stay until
    // prune, and no image record points at them.
    assert!(!store.has_blob(layer));
    assert!(files_in(&store.root().join("tmp")).is_empty());
    assert!(store.images().unwrap().is_empty());
    assert_blobs_verify(store.root());
    let report = store.prune(|_| Ok(())).unwrap();
    assert_eq!(report.removed_blobs.len(), 2);
    assert!(files_in(&store.root().join("blobs/sha256")).is_empty());
}

/// A layer sink that keeps each layer's bytes and checks them on finish.
#[derive(Default)]
struct CollectingSink {
    finished: Mutex<Vec<Digest>>,
    aborted: Mutex<Vec<Digest>>,
}

struct CollectingWriter {
    sink: Arc<CollectingSink>,
    digest: Digest,
    bytes: Vec<u8>,
}

/// The sink handle given to the pull; the test keeps another to inspect the results.
struct CollectingHandle(Arc<CollectingSink>);

impl LayerSink for CollectingHandle {
    fn start(&self, layer: &Descriptor, _diff_id: &Digest) -> Option<Box<dyn LayerWriter>> {
        Some(Box::new(CollectingWriter {
            sink: self.0.clone(),
            digest: layer.digest.clone(),
            bytes: Vec::new(),
        }))
    }
}

impl Write for CollectingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LayerWriter for CollectingWriter {
    fn finish(self: Box<Self>) -> io::Result<()> {
        assert_eq!(Digest::of_bytes(&self.bytes), self.digest);
        self.sink.finished.lock().unwrap().push(self.digest.clone());
        Ok(())
    }

    fn abort(self: Box<Self>) {
        self.sink.aborted.lock().unwrap().push(self.digest.clone());
    }
}

#[tokio::test]
async fn layer_sink_receives_verified_layers() {
    if !registry_available(PLAIN) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = plain_client();
    let fixture = fixture("library/python:3.11");
    let sink = Arc::new(CollectingSink::default());
    let options = PullOptions {
        layer_sink: Some(Arc::new(CollectingHandle(sink.clone()))),
        ..PullOptions::default()
    };

    pull_into(
        &store,
        &client,
        &format!("{PLAIN}/library/python:3.11"),
        &options,
    )
    .await
    .unwrap();

    let mut finished = sink.finished.lock().unwrap().clone();
    finished.sort();
    let mut expected: Vec<Digest> = fixture.layers.iter().map(|(d, _)| d.clone()).collect();
    expected.sort();
    assert_eq!(finished, expected);
    assert!(sink.aborted.lock().unwrap().is_empty());
}

/// A layer sink whose writer fails, as an unpacker rejecting a hostile layer would.
struct FailingSink;

struct FailingWriter;

impl LayerSink for FailingSink {
    fn start(&self, _layer: &Descriptor, _diff_id: &Digest) -> Option<Box<dyn LayerWriter>> {
        Some(Box::new(FailingWriter))
    }
}

impl Write for FailingWriter {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("layer rejected by test sink"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LayerWriter for FailingWriter {
    fn finish(self: Box<Self>) -> io::Result<()> {
        panic!("finish must not be called after a write error");
    }

    fn abort(self: Box<Self>) {}
}

#[tokio::test]
async fn layer_sink_error_fails_pull() {
    if !registry_available(PLAIN) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let options = PullOptions {
        layer_sink: Some(Arc::new(FailingSink)),
        ..PullOptions::default()
    };
    let error = pull_into(
        &store,
        &plain_client(),
        &format!("{PLAIN}/library/busybox:latest"),
        &options,
    )
    .await
    .unwrap_err();
    assert!(matches!(error, PullError::LayerSink { .. }), "{error:?}");
    let layer = &fixture("library/busybox:latest").layers[0].0;
    assert!(!store.has_blob(layer));
    assert!(files_in(&store.root().join("tmp")).is_empty());
    assert!(store.images().unwrap().is_empty());
}

fn client_with_auth(auth: AuthFiles) -> RegistryClient {
    RegistryClient::new(
        RegistriesConfig::empty(),
        ClientOptions {
            auth,
            retry: fast_retry(),
            ..ClientOptions::default()
        },
    )
}

#[tokio::test]
async fn basic_auth_uses_auth_file() {
    if !registry_available(BASIC) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let auth_path = dir.path().join("auth.json");
    let text = format!("{BASIC}/library/busybox:latest");

    let anonymous = pull_into(
        &store,
        &client_with_auth(AuthFiles::none()),
        &text,
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            anonymous.client_error(),
            Some(ClientError::AuthenticationRequired { .. })
        ),
        "{anonymous:?}"
    );

    let auth = AuthFiles::with_file(&auth_path);
    auth.login(BASIC, &Credentials::new(BASIC_USER, "wrong-password"))
        .unwrap();
    let rejected = pull_into(
        &store,
        &client_with_auth(auth.clone()),
        &text,
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            rejected.client_error(),
            Some(ClientError::CredentialsRejected { .. })
        ),
        "{rejected:?}"
    );
    assert!(!format!("{rejected:?}").contains("wrong-password"));

    auth.login(BASIC, &Credentials::new(BASIC_USER, BASIC_PASSWORD))
        .unwrap();
    let pulled = pull_into(
        &store,
        &client_with_auth(auth),
        &text,
        &PullOptions::default(),
    )
    .await
    .unwrap();
    assert_matches_fixture(&pulled, &fixture("library/busybox:latest"), &store);
}

#[tokio::test]
async fn tls_registry_needs_its_ca() {
    if !registry_available(TLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let registries = registries_conf(
        dir.path(),
        "[[registry]]\nlocation = \"127.0.0.1:5002\"\ninsecure = false\n",
    );
    let text = format!("{TLS}/library/busybox:latest");
    let client_with = |options: ClientOptions| {
        RegistryClient::new(
            registries.clone(),
            ClientOptions {
                retry: fast_retry(),
                ..options
            },
        )
    };

    let untrusted = pull_into(
        &store,
        &client_with(ClientOptions::default()),
        &text,
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(untrusted.client_error(), Some(ClientError::Tls { .. })),
        "{untrusted:?}"
    );

    let ca_file = state_dir().join("registry/ca.pem");
    let with_extra_ca = client_with(ClientOptions {
        extra_ca_files: vec![ca_file],
        ..ClientOptions::default()
    });
    let pulled = pull_into(&store, &with_extra_ca, &text, &PullOptions::default())
        .await
        .unwrap();
    assert_matches_fixture(&pulled, &fixture("library/busybox:latest"), &store);

    // The same CA found through a containers-certs.d(5) directory.
    let certs_dir = dir.path().join("certs.d");
    std::fs::create_dir_all(certs_dir.join(TLS)).unwrap();
    std::fs::copy(
        state_dir().join("registry/ca.pem"),
        certs_dir.join(TLS).join("ca.crt"),
    )
    .unwrap();
    let with_certs_dir = client_with(ClientOptions {
        certs_dirs: vec![certs_dir],
        ..ClientOptions::default()
    });
    let fresh = Store::open(dir.path().join("store2")).unwrap();
    pull_into(&fresh, &with_certs_dir, &text, &PullOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn mirror_serves_before_registry() {
    if !registry_available(PLAIN) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    // docker.io must never be contacted: the mirror serves the image, so the registry is not tried.
    let registries = registries_conf(
        dir.path(),
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:9\"\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:5000\"\n",
    );
    let client = RegistryClient::new(
        registries,
        ClientOptions {
            retry: fast_retry(),
            ..ClientOptions::default()
        },
    );
    let pulled = pull_into(&store, &client, "busybox", &PullOptions::default())
        .await
        .unwrap();
    assert_eq!(
        pulled.reference.to_string(),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(pulled.endpoint.registry, PLAIN);
    assert!(pulled.endpoint.mirror);
    assert_matches_fixture(&pulled, &fixture("library/busybox:latest"), &store);
    assert!(store.image(&reference("busybox")).unwrap().is_some());
}

#[tokio::test]
async fn missing_tag_is_not_found() {
    if !registry_available(PLAIN) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let error = pull_into(
        &store,
        &plain_client(),
        &format!("{PLAIN}/library/busybox:no-such-tag"),
        &PullOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error.client_error(), Some(ClientError::NotFound { .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn digest_reference_is_verified() {
    if !registry_available(PLAIN) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fixture = fixture("library/busybox:latest");
    let pinned = format!("{PLAIN}/library/busybox@{}", fixture.manifest_digest);
    let pulled = pull_into(&store, &plain_client(), &pinned, &PullOptions::default())
        .await
        .unwrap();
    assert_matches_fixture(&pulled, &fixture, &store);

    // A digest that the tag's manifest does not have fails the check.
    let wrong = format!(
        "{PLAIN}/library/busybox:latest@{}",
        Digest::of_bytes(b"not the manifest")
    );
    let error = pull_into(&store, &plain_client(), &wrong, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, PullError::Registry { .. }), "{error:?}");
}

#[tokio::test]
async fn token_auth_registry() {
    if !registry_available(TOKEN) {
        return;
    }
    if !is_listening(TOKEN_ISSUER) {
        println!("skipped: no token issuer listens on {TOKEN_ISSUER}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let auth = AuthFiles::with_file(dir.path().join("auth.json"));
    auth.login(TOKEN, &Credentials::new(BASIC_USER, BASIC_PASSWORD))
        .unwrap();
    let pulled = pull_into(
        &store,
        &client_with_auth(auth),
        &format!("{TOKEN}/library/busybox:latest"),
        &PullOptions::default(),
    )
    .await
    .unwrap();
    assert_matches_fixture(&pulled, &fixture("library/busybox:latest"), &store);
}

#[test]
fn pull_future_is_send() {
    fn require_send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = plain_client();
    let reference = reference("busybox");
    let options = PullOptions::default();
    let future = pull(&store, &client, &reference, &options, &NoProgress);
    require_send(&future);
}

#[tokio::test]
async fn ci_registries_conf_maps_docker_hub() {
    if !registry_available(PLAIN) {
        return;
    }
    let conf = state_dir().join("registries.conf");
    if !conf.is_file() {
        println!(
            "skipped: {} is missing (scripts/registries start writes it)",
            conf.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let client = RegistryClient::new(
        RegistriesConfig::from_file(&conf).unwrap(),
        ClientOptions {
            retry: fast_retry(),
            ..ClientOptions::default()
        },
    );
    let endpoints = client.endpoints(&reference("python:3.11")).unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].registry, PLAIN);
    assert_eq!(endpoints[0].repository, "library/python");

    let pulled = pull_into(&store, &client, "busybox", &PullOptions::default())
        .await
        .unwrap();
    assert_matches_fixture(&pulled, &fixture("library/busybox:latest"), &store);
}
