//! Downloads through a proxy that drops the connection in the middle of a layer: the client
//! must resume with a range request, start again when ranges are not available, and fail
//! cleanly when the registry stays away.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use mayfly_image::client::ClientError;
use mayfly_image::pull::{pull, PullEvent, PullOptions};
use mayfly_image::reference::Reference;
use mayfly_image::store::Store;

/// Response bytes after which the proxy cuts: past the manifest and config, inside the
/// busybox layer (about 1 MB).
const CUT_AFTER: u64 = 300_000;

fn busybox_via(proxy: &CuttingProxy) -> Reference {
    Reference::parse(&format!("{}/library/busybox:latest", proxy.address)).unwrap()
}

#[tokio::test]
async fn dropped_download_resumes_with_range() {
    if !registry_available(PLAIN) {
        return;
    }
    let proxy = CuttingProxy::start(PLAIN, AfterCut::Forward, CUT_AFTER);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let progress = RecordingProgress::default();
    let fixture = fixture("library/busybox:latest");

    let pulled = pull(
        &store,
        &plain_client(),
        &busybox_via(&proxy),
        &PullOptions::default(),
        &progress,
    )
    .await
    .unwrap();

    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1);
    assert!(proxy.range_requests.load(Ordering::SeqCst) >= 1);
    assert_eq!(pulled.resumed_downloads, 1);
    assert_eq!(pulled.restarted_downloads, 0);
    assert_eq!(pulled.manifest_digest, fixture.manifest_digest);
    let (layer, size) = &fixture.layers[0];
    assert!(store.has_blob(layer));
    assert_eq!(progress.bytes_for(layer), *size);
    let events = progress.events.lock().unwrap();
    assert!(!events
        .iter()
        .any(|event| matches!(event, PullEvent::LayerRestarted { .. })));
    assert!(files_in(&store.root().join("tmp")).is_empty());
    assert_blobs_verify(store.root());
}

#[tokio::test]
async fn dropped_download_restarts_without_ranges() {
    if !registry_available(PLAIN) {
        return;
    }
    let proxy = CuttingProxy::start(PLAIN, AfterCut::ForwardWithoutRanges, CUT_AFTER);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let progress = RecordingProgress::default();
    let fixture = fixture("library/busybox:latest");

    let pulled = pull(
        &store,
        &plain_client(),
        &busybox_via(&proxy),
        &PullOptions::default(),
        &progress,
    )
    .await
    .unwrap();

    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1);
    assert_eq!(pulled.resumed_downloads, 0);
    assert_eq!(pulled.restarted_downloads, 1);
    let (layer, size) = &fixture.layers[0];
    assert!(store.has_blob(layer));
    assert_eq!(progress.bytes_for(layer), *size);
    assert_blobs_verify(store.root());
}

#[tokio::test]
async fn registry_gone_mid_download_fails_cleanly() {
    if !registry_available(PLAIN) {
        return;
    }
    let proxy = CuttingProxy::start(PLAIN, AfterCut::Refuse, CUT_AFTER);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let fixture = fixture("library/busybox:latest");
    let started = std::time::Instant::now();

    let error = pull(
        &store,
        &plain_client(),
        &busybox_via(&proxy),
        &PullOptions::default(),
        &RecordingProgress::default(),
    )
    .await
    .unwrap_err();

    let Some(ClientError::BlobInterrupted {
        digest,
        received,
        size,
        source,
        ..
    }) = error.client_error()
    else {
        panic!("expected an interrupted download, got {error:?}");
    };
    let (layer, layer_size) = &fixture.layers[0];
    assert_eq!(digest, layer);
    assert_eq!(size, layer_size);
    assert!(*received > 0, "received {received}");
    assert!(received < size, "received {received}");
    assert!(
        matches!(**source, ClientError::RetriesExhausted { attempts: 4, .. }),
        "{source:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    // Nothing partial is stored and no image is recorded.
    assert!(!store.has_blob(layer));
    assert!(files_in(&store.root().join("tmp")).is_empty());
    assert!(store.images().unwrap().is_empty());
    assert_blobs_verify(store.root());
}
