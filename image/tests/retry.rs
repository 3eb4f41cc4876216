//! Retries of HTTP 429 and 5xx responses, against a scripted HTTP server on a loopback port
//! that serves a real manifest from the plain registry after its scripted failures.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use mayfly_image::client::{ClientError, ClientOptions, RegistryClient, RetryPolicy};
use mayfly_image::registry_config::{Endpoint, RegistriesConfig};

/// One scripted response: status line, extra header lines, and whether the body is the
/// manifest (otherwise it is empty).
struct Answer {
    status: &'static str,
    headers: String,
    manifest: bool,
}

fn failure(status: &'static str, headers: &str) -> Answer {
    Answer {
        status,
        headers: headers.to_owned(),
        manifest: false,
    }
}

fn manifest_answer(headers: &str) -> Answer {
    Answer {
        status: "200 OK",
        headers: headers.to_owned(),
        manifest: true,
    }
}

/// A server that responds to manifest requests from `script` in order, records when each
/// request arrived, and returns 200 for the `/v2/` probe.
struct ScriptedServer {
    address: String,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl ScriptedServer {
    fn start(script: Vec<Answer>, manifest: Vec<u8>, content_type: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let recorded = arrivals.clone();
        thread::spawn(move || {
            let mut script = script.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let Some(path) = read_request_path(&stream) else {
                    continue;
                };
                if path == "/v2/" {
                    respond(stream, "200 OK", "", b"{}", "application/json");
                    continue;
                }
                recorded.lock().unwrap().push(Instant::now());
                let answer = script.next().unwrap_or_else(|| manifest_answer(""));
                if answer.manifest {
                    respond(
                        stream,
                        answer.status,
                        &answer.headers,
                        &manifest,
                        &content_type,
                    );
                } else {
                    respond(stream, answer.status, &answer.headers, b"", "text/plain");
                }
            }
        });
        Self { address, arrivals }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            registry: self.address.clone(),
            repository: "library/busybox".to_owned(),
            insecure: true,
            mirror: false,
        }
    }
}

/// Reads one request and returns its path; `None` for a TLS handshake (the client's HTTPS
/// probe), which the server drops.
fn read_request_path(stream: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let first = reader.fill_buf().ok()?.first().copied()?;
    if first == 0x16 {
        return None;
    }
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
    }
    request_line.split_whitespace().nth(1).map(str::to_owned)
}

fn respond(mut stream: TcpStream, status: &str, headers: &str, body: &[u8], content_type: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
    let mut rest = Vec::new();
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = stream.read_to_end(&mut rest);
}

fn client(max_attempts: u32) -> RegistryClient {
    RegistryClient::new(
        RegistriesConfig::empty(),
        ClientOptions {
            retry: RetryPolicy {
                max_attempts,
                initial_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(100),
                max_retry_after: Duration::from_secs(5),
            },
            ..ClientOptions::default()
        },
    )
}

/// Fetches the real busybox manifest from the plain registry.
async fn real_manifest() -> (Vec<u8>, String) {
    let endpoint = Endpoint {
        registry: PLAIN.to_owned(),
        repository: "library/busybox".to_owned(),
        insecure: true,
        mirror: false,
    };
    let fetched = plain_client()
        .fetch_manifest(&endpoint, "latest", None)
        .await
        .unwrap();
    (fetched.bytes, fetched.content_type.unwrap())
}

#[tokio::test]
async fn server_errors_are_retried_with_retry_after() {
    if !registry_available(PLAIN) {
        return;
    }
    let (manifest, content_type) = real_manifest().await;
    let script = vec![
        failure("429 Too Many Requests", "Retry-After: 1\r\n"),
        failure("503 Service Unavailable", ""),
        manifest_answer(""),
    ];
    let server = ScriptedServer::start(script, manifest.clone(), content_type);

    let fetched = client(5)
        .fetch_manifest(&server.endpoint(), "latest", None)
        .await
        .unwrap();

    assert_eq!(fetched.bytes, manifest);
    assert_eq!(
        fetched.digest,
        fixture("library/busybox:latest").manifest_digest
    );
    let arrivals = server.arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 3);
    let waited = arrivals[1] - arrivals[0];
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured, the retry came after {waited:?}"
    );
}

#[tokio::test]
async fn retries_stop_after_max_attempts() {
    if !registry_available(PLAIN) {
        return;
    }
    let (manifest, content_type) = real_manifest().await;
    let script = vec![
        failure("502 Bad Gateway", ""),
        failure("502 Bad Gateway", ""),
        failure("502 Bad Gateway", ""),
        manifest_answer(""),
    ];
    let server = ScriptedServer::start(script, manifest, content_type);

    let error = client(3)
        .fetch_manifest(&server.endpoint(), "latest", None)
        .await
        .unwrap_err();

    let ClientError::RetriesExhausted {
        attempts, source, ..
    } = &error
    else {
        panic!("expected exhausted retries, got {error:?}");
    };
    assert_eq!(*attempts, 3);
    assert!(
        matches!(**source, ClientError::ServerStatus { status: 502, .. }),
        "{source:?}"
    );
    assert_eq!(server.arrivals.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    if !registry_available(PLAIN) {
        return;
    }
    let (manifest, content_type) = real_manifest().await;
    let script = vec![failure("400 Bad Request", ""), manifest_answer("")];
    let server = ScriptedServer::start(script, manifest, content_type);

    let error = client(5)
        .fetch_manifest(&server.endpoint(), "latest", None)
        .await
        .unwrap_err();

    assert!(
        matches!(error, ClientError::Status { status: 400, .. }),
        "{error:?}"
    );
    assert_eq!(server.arrivals.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn altered_manifest_fails_digest_checks() {
    if !registry_available(PLAIN) {
        return;
    }
    let (manifest, content_type) = real_manifest().await;
    let mut altered = manifest.clone();
    altered.push(b' ');
    let expected = fixture("library/busybox:latest").manifest_digest;
    let header = format!("Docker-Content-Digest: {expected}\r\n");
    let script = vec![manifest_answer(""), manifest_answer(&header)];
    let server = ScriptedServer::start(script, altered, content_type);

    // Checked against the digest the caller expects, as for a digest reference.
    let error = client(2)
        .fetch_manifest(&server.endpoint(), "latest", Some(&expected))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::ManifestDigestMismatch { expected: e, .. } if *e == expected),
        "{error:?}"
    );

    // Checked against the registry's Docker-Content-Digest header, for a tag.
    let error = client(2)
        .fetch_manifest(&server.endpoint(), "latest", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::ManifestDigestMismatch { expected: e, .. } if *e == expected),
        "{error:?}"
    );
}
