//! Layer store tests against real directories.

use std::fs;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use super::{LayerError, LayerStore};
use crate::digest::Digest;
use crate::unpack::tests::support::{gzip, layer_digest, options, Layer, Spec};
use crate::unpack::{Compression, UnpackError};

fn sample() -> Vec<u8> {
    Layer::new()
        .dir("etc", 0o755)
        .file("etc/os-release", b"ID=mayfly\n")
        .finish()
}

fn store() -> (tempfile::TempDir, LayerStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LayerStore::open(dir.path().join("layers")).unwrap();
    (dir, store)
}

/// Asserts that the store contains no layer and no temporary tree.
fn assert_empty(store: &LayerStore) {
    assert_eq!(store.list().unwrap(), Vec::<Digest>::new());
    let temporaries: Vec<_> = fs::read_dir(store.root().join("tmp")).unwrap().collect();
    assert!(temporaries.is_empty(), "{temporaries:?}");
    let layers: Vec<_> = fs::read_dir(store.root())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "tmp" && name != "locks")
        .collect();
    assert!(layers.is_empty(), "{layers:?}");
}

/// A reader that counts the bytes it passes on and can be slowed down.
struct CountingReader {
    inner: io::Cursor<Vec<u8>>,
    count: Arc<AtomicU64>,
    delay: Duration,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        thread::sleep(self.delay);
        let limit = buf.len().min(4096);
        let count = self.inner.read(&mut buf[..limit])?;
        self.count.fetch_add(count as u64, Ordering::SeqCst);
        Ok(count)
    }
}

#[test]
fn unpack_stores_tree_and_report() {
    let (_dir, store) = store();
    let tar = sample();
    let diff_id = Digest::of_bytes(&tar);
    assert!(!store.is_unpacked(&diff_id));

    let report = store
        .unpack(
            &layer_digest(),
            &diff_id,
            Compression::Gzip,
            &gzip(&tar)[..],
            &options(),
        )
        .unwrap();
    assert_eq!(report.diff_id, diff_id);
    assert!(store.is_unpacked(&diff_id));
    let os_release = store.path(&diff_id).join("etc/os-release");
    assert_eq!(fs::read(os_release).unwrap(), b"ID=mayfly\n");
    assert_eq!(store.report(&diff_id).unwrap(), Some(report));
    assert_eq!(store.list().unwrap(), vec![diff_id.clone()]);
    assert_eq!(store.relative_path(&diff_id).as_os_str().len(), 69);
    assert_eq!(
        store.path(&diff_id),
        store.root().join(store.relative_path(&diff_id))
    );
}

#[test]
fn unpacked_layer_is_not_read_again() {
    let (_dir, store) = store();
    let tar = sample();
    let diff_id = Digest::of_bytes(&tar);
    let first = store
        .unpack(
            &layer_digest(),
            &diff_id,
            Compression::None,
            &tar[..],
            &options(),
        )
        .unwrap();

    let count = Arc::new(AtomicU64::new(0));
    let reader = CountingReader {
        inner: io::Cursor::new(tar),
        count: count.clone(),
        delay: Duration::ZERO,
    };
    let second = store
        .unpack(
            &layer_digest(),
            &diff_id,
            Compression::None,
            reader,
            &options(),
        )
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

#[test]
fn concurrent_unpacks_run_once() {
    let (_dir, store) = store();
    let tar = Layer::new()
        .file("a", &[1; 64 * 1024])
        .file("b", &[2; 64 * 1024])
        .finish();
    let diff_id = Digest::of_bytes(&tar);
    let barrier = Arc::new(Barrier::new(2));
    let counts: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();

    let workers: Vec<_> = counts
        .iter()
        .map(|count| {
            // Each worker opens the store itself, so the flocks are on separate open files,
            // as they are between processes.
            let store = LayerStore::open(store.root()).unwrap();
            let reader = CountingReader {
                inner: io::Cursor::new(tar.clone()),
                count: count.clone(),
                delay: Duration::from_millis(2),
            };
            let (barrier, diff_id) = (barrier.clone(), diff_id.clone());
            thread::spawn(move || {
                barrier.wait();
                store.unpack(
                    &layer_digest(),
                    &diff_id,
                    Compression::None,
                    reader,
                    &options(),
                )
            })
        })
        .collect();
    let reports: Vec<_> = workers
        .into_iter()
        .map(|worker| worker.join().unwrap().unwrap())
        .collect();

    assert_eq!(reports[0], reports[1]);
    let read: Vec<u64> = counts
        .iter()
        .map(|count| count.load(Ordering::SeqCst))
        .collect();
    assert_eq!(
        read.iter().filter(|&&bytes| bytes > 0).count(),
        1,
        "bytes read: {read:?}"
    );
    assert_eq!(store.list().unwrap(), vec![diff_id]);
}

#[test]
fn truncated_layer_leaves_nothing() {
    let (_dir, store) = store();
    let tar = Layer::new()
        .dir("ro", 0o555)
        .file("ro/big", &[9; 8192])
        .finish();
    let compressed = gzip(&tar);
    let diff_id = Digest::of_bytes(&tar);
    let error = store
        .unpack(
            &layer_digest(),
            &diff_id,
            Compression::Gzip,
            &compressed[..compressed.len() - 20],
            &options(),
        )
        .unwrap_err();
    assert!(
        matches!(
            error,
            LayerError::Unpack {
                source: UnpackError::Read { .. } | UnpackError::Truncated { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!store.is_unpacked(&diff_id));
    assert_empty(&store);
}

#[test]
fn diff_id_mismatch_leaves_nothing() {
    let (_dir, store) = store();
    let tar = Layer::new()
        .dir("locked", 0o500)
        .dir("locked/deeper", 0o000)
        .entry(Spec {
            name: b"locked/file",
            mode: 0o000,
            ..Spec::default()
        })
        .finish();
    let wrong = Digest::of_bytes(b"another layer");
    let error = store
        .unpack(
            &layer_digest(),
            &wrong,
            Compression::None,
            &tar[..],
            &options(),
        )
        .unwrap_err();
    match &error {
        LayerError::DiffIdMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, wrong);
            assert_eq!(*actual, Digest::of_bytes(&tar));
        }
        other => panic!("expected DiffIdMismatch, got {other:?}"),
    }
    assert!(error.to_string().contains("pull it again"));
    assert_empty(&store);
}

#[test]
fn hostile_layer_leaves_nothing() {
    let (_dir, store) = store();
    let tar = Layer::new()
        .file("ok", b"x")
        .file("../escaped", b"x")
        .finish();
    let diff_id = Digest::of_bytes(&tar);
    let error = store
        .unpack(
            &layer_digest(),
            &diff_id,
            Compression::None,
            &tar[..],
            &options(),
        )
        .unwrap_err();
    assert!(
        matches!(
            error,
            LayerError::Unpack {
                source: UnpackError::EscapesRoot { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert_empty(&store);
}

#[test]
fn remove_deletes_read_only_trees() {
    let (_dir, store) = store();
    let tar = Layer::new().dir("ro", 0o500).file("ro/f", b"x").finish();
    let diff_id = Digest::of_bytes(&tar);
    store
        .unpack(
            &layer_digest(),
            &diff_id,
            Compression::None,
            &tar[..],
            &options(),
        )
        .unwrap();

    assert!(store.remove(&diff_id).unwrap());
    assert!(!store.is_unpacked(&diff_id));
    assert!(
        !store.remove(&diff_id).unwrap(),
        "second removal finds nothing"
    );
    assert_empty(&store);
}

#[test]
fn open_removes_stale_temporaries() {
    let (dir, store) = store();
    let stale = store
        .root()
        .join("tmp")
        .join(format!("{}.999999.0", "a".repeat(64)));
    fs::create_dir_all(stale.join("root/ro")).unwrap();
    fs::set_permissions(
        stale.join("root/ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o500),
    )
    .unwrap();
    let busy_hex = "b".repeat(64);
    let busy = store.root().join("tmp").join(format!("{busy_hex}.1.0"));
    fs::create_dir_all(&busy).unwrap();
    let busy_digest: Digest = format!("sha256:{busy_hex}").parse().unwrap();
    let _held = store
        .lock(&busy_digest, nix::fcntl::FlockArg::LockExclusive)
        .unwrap();

    LayerStore::open(dir.path().join("layers")).unwrap();
    assert!(!stale.exists(), "stale temporary tree removed");
    assert!(busy.exists(), "a temporary tree whose lock is held stays");
}
