//! Helpers for the image crate's integration tests: the local test registries, the fixture
//! summary, ready-made clients, and a TCP proxy that drops connections on purpose.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use mayfly_image::client::{ClientOptions, RegistryClient, RetryPolicy};
use mayfly_image::digest::Digest;
use mayfly_image::pull::{ProgressSink, PullEvent};
use mayfly_image::registry_config::RegistriesConfig;

pub const PLAIN: &str = "127.0.0.1:5000";
pub const BASIC: &str = "127.0.0.1:5001";
pub const TLS: &str = "127.0.0.1:5002";
pub const TOKEN: &str = "127.0.0.1:5003";
pub const TOKEN_ISSUER: &str = "127.0.0.1:5004";
pub const BASIC_USER: &str = "mayfly";
pub const BASIC_PASSWORD: &str = "mayfly-secret";

/// Directory that scripts/registries and the fixture builder fill.
pub fn state_dir() -> PathBuf {
    std::env::var_os("MAYFLY_TEST_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/mayfly-ci"))
}

pub fn is_listening(address: &str) -> bool {
    let address: SocketAddr = address.parse().expect("test addresses are literal IP:port");
    assert!(address.ip().is_loopback(), "tests dial only loopback");
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

/// Returns true when the registry at `address` runs; otherwise prints a skip line.
pub fn registry_available(address: &str) -> bool {
    if is_listening(address) && state_dir().join("fixtures.json").is_file() {
        return true;
    }
    println!("skipped: registry at {address} is not running or has no fixtures (start it with scripts/registries start and tests/fixtures/build-images)");
    assert!(
        std::env::var_os("MAYFLY_REQUIRE_REGISTRIES").is_none(),
        "MAYFLY_REQUIRE_REGISTRIES is set but the registry at {address} is not usable"
    );
    false
}

/// Expected digests of one fixture image (single-platform).
#[derive(Debug, Clone)]
pub struct FixtureImage {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: Vec<(Digest, u64)>,
    pub diff_ids: Vec<Digest>,
}

pub fn fixtures() -> serde_json::Value {
    let path = state_dir().join("fixtures.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    serde_json::from_str(&text).expect("fixtures.json is JSON")
}

fn digest(value: &serde_json::Value) -> Digest {
    value
        .as_str()
        .expect("digest is a string")
        .parse()
        .expect("fixture digests are valid")
}

pub fn fixture_from(value: &serde_json::Value) -> FixtureImage {
    let layers = value["layers"].as_array().expect("layers list");
    FixtureImage {
        manifest_digest: digest(&value["manifest_digest"]),
        config_digest: digest(&value["config_digest"]),
        layers: layers
            .iter()
            .map(|layer| (digest(&layer["digest"]), layer["size"].as_u64().unwrap()))
            .collect(),
        diff_ids: layers
            .iter()
            .map(|layer| digest(&layer["diff_id"]))
            .collect(),
    }
}

/// Returns the fixture `name` (`library/busybox:latest`).
pub fn fixture(name: &str) -> FixtureImage {
    fixture_from(&fixtures()["images"][name])
}

/// Short retries so that failure tests finish in seconds.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        max_retry_after: Duration::from_secs(1),
    }
}

/// Returns a client with no registries.conf (loopback registries are insecure by default), no
/// credentials and short retries.
pub fn plain_client() -> RegistryClient {
    RegistryClient::new(
        RegistriesConfig::empty(),
        ClientOptions {
            retry: fast_retry(),
            ..ClientOptions::default()
        },
    )
}

pub fn registries_conf(dir: &Path, text: &str) -> RegistriesConfig {
    let path = dir.join("registries.conf");
    std::fs::write(&path, text).unwrap();
    RegistriesConfig::from_file(&path).unwrap()
}

/// Files directly inside `dir`.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect()
}

/// Checks that every blob in the store has the content its name promises.
pub fn assert_blobs_verify(store_root: &Path) {
    for path in files_in(&store_root.join("blobs/sha256")) {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            Digest::of_bytes(&bytes).hex(),
            name,
            "blob {} does not match its name",
            path.display()
        );
    }
}

/// Collects pull events.
#[derive(Default)]
pub struct RecordingProgress {
    pub events: Mutex<Vec<PullEvent>>,
}

impl ProgressSink for RecordingProgress {
    fn event(&self, event: PullEvent) {
        self.events.lock().unwrap().push(event);
    }
}

impl RecordingProgress {
    /// Sum of `LayerProgress` bytes for `digest` since its last restart.
    pub fn bytes_for(&self, digest: &Digest) -> u64 {
        let mut total = 0;
        for event in self.events.lock().unwrap().iter() {
            match event {
                PullEvent::LayerProgress { digest: d, bytes } if d == digest => total += bytes,
                PullEvent::LayerRestarted { digest: d } if d == digest => total = 0,
                _ => {}
            }
        }
        total
    }
}

/// What the proxy does after it cut the first connection that carried more than
/// `cut_after` response bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterCut {
    /// Close every connection and refuse new ones, as a registry that went away.
    Refuse,
    /// Forward everything.
    Forward,
    /// Forward, but hide `Range` headers from the registry so that it cannot resume.
    ForwardWithoutRanges,
}

/// A TCP proxy on an ephemeral loopback port that forwards to a registry and cuts one
/// connection after a number of response bytes.
pub struct CuttingProxy {
    pub address: String,
    stop: Arc<AtomicBool>,
    pub cuts: Arc<AtomicUsize>,
    pub range_requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    accept_thread: Option<thread::JoinHandle<()>>,
}

impl CuttingProxy {
    pub fn start(upstream: &str, mode: AfterCut, cut_after: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let range_requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));

        let upstream = upstream.to_owned();
        let (stop_flag, cut_count, range_count, connection_count) = (
            stop.clone(),
            cuts.clone(),
            range_requests.clone(),
            connections.clone(),
        );
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accept_thread = thread::spawn(move || {
            let mut listener = Some(listener);
            while !stop_flag.load(Ordering::SeqCst) {
                // After the cut in Refuse mode the listener is closed, so new
                // connections are refused.
                if mode == AfterCut::Refuse && cut_count.load(Ordering::SeqCst) > 0 {
                    listener = None;
                }
                let Some(active) = listener.as_ref() else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                match active.accept() {
                    Ok((client, _)) => {
                        connection_count.fetch_add(1, Ordering::SeqCst);
                        let server = TcpStream::connect(&upstream).unwrap();
                        live.lock().unwrap().push(client.try_clone().unwrap());
                        forward(
                            client,
                            server,
                            mode,
                            cut_after,
                            &cut_count,
                            &range_count,
                            &live,
                        );
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(error) => panic!("proxy accept failed: {error}"),
                }
            }
        });
        Self {
            address,
            stop,
            cuts,
            range_requests,
            connections,
            accept_thread: Some(accept_thread),
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn forward(
    client: TcpStream,
    server: TcpStream,
    mode: AfterCut,
    cut_after: u64,
    cuts: &Arc<AtomicUsize>,
    range_requests: &Arc<AtomicUsize>,
    live: &Arc<Mutex<Vec<TcpStream>>>,
) {
    client.set_nonblocking(false).unwrap();
    let (client_reader, server_writer) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let range_count = range_requests.clone();
    let hide_ranges = mode == AfterCut::ForwardWithoutRanges;

    // Requests: client to registry, noting (and optionally disguising) Range headers.
    thread::spawn(move || {
        let mut reader = client_reader;
        let mut writer = server_writer;
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let count = match reader.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => count,
            };
            let chunk = &mut buffer[..count];
            if let Some(position) = find(chunk, b"\r\nrange: bytes=") {
                range_count.fetch_add(1, Ordering::SeqCst);
                if hide_ranges {
                    chunk[position + 2] = b'x';
                }
            }
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
        let _ = writer.shutdown(Shutdown::Write);
    });

    // Responses: registry to client, cut after `cut_after` bytes while a cut is due.
    let cuts = cuts.clone();
    let live = live.clone();
    let sent = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        let mut reader = server;
        let mut writer = client;
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let count = match reader.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => count,
            };
            let total = sent.fetch_add(count as u64, Ordering::SeqCst) + count as u64;
            let cut_due = cuts.load(Ordering::SeqCst) == 0;
            if cut_due && total > cut_after {
                let keep = count - (total - cut_after) as usize;
                let _ = writer.write_all(&buffer[..keep]);
                cuts.fetch_add(1, Ordering::SeqCst);
                let _ = writer.shutdown(Shutdown::Both);
                let _ = reader.shutdown(Shutdown::Both);
                // Refusing new connections is not enough: pooled ones must go too.
                if mode == AfterCut::Refuse {
                    for stream in live.lock().unwrap().iter() {
                        let _ = stream.shutdown(Shutdown::Both);
                    }
                }
                return;
            }
            if writer.write_all(&buffer[..count]).is_err() {
                break;
            }
        }
        let _ = writer.shutdown(Shutdown::Write);
    });
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window.eq_ignore_ascii_case(needle))
}
