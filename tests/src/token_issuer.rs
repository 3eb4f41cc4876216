//! A bearer-token issuer for the token-auth registry on 127.0.0.1:5003.
//!
//! Docker Hub's token service has no Debian package, so the tests serve the token endpoint
//! themselves. The registry (distribution 2.8) checks that a token is a JWT signed by a key
//! whose certificate chains to its `rootcertbundle`, names its `issuer` and `service`, is
//! within its validity window, and grants the requested repository actions.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;

pub const ISSUER: &str = "mayfly-test-issuer";
pub const SERVICE: &str = "mayfly-test-registry";

#[derive(Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

/// A running issuer; it stops when dropped.
pub struct TokenIssuer {
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenIssuer {
    /// Starts the issuer on [`crate::TOKEN_ISSUER`] with the signing key and certificate that
    /// scripts/registries generated. With `credentials`, requests must carry that basic auth.
    pub fn start(credentials: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let registry_dir = crate::state_dir().join("registry");
        let signer = Signer::load(
            &registry_dir.join("token-key.pem"),
            &registry_dir.join("token-cert.pem"),
        )?;
        let expected_auth = credentials.map(|(user, password)| {
            let pair = format!("{user}:{password}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });

        let listener = TcpListener::bind(crate::TOKEN_ISSUER)?;
        listener.set_nonblocking(true)?;
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let requests = requests.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            requests.fetch_add(1, Ordering::Relaxed);
                            if let Err(error) = serve(stream, &signer, expected_auth.as_deref()) {
                                eprintln!("token issuer: request failed: {error}");
                            }
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(error) => eprintln!("token issuer: accept failed: {error}"),
                    }
                }
            })
        };
        Ok(Self {
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// Number of token requests served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Signer {
    key: jsonwebtoken::EncodingKey,
    algorithm: jsonwebtoken::Algorithm,
    certificate_der_base64: String,
}

impl Signer {
    fn load(key_path: &Path, cert_path: &Path) -> anyhow::Result<Self> {
        let key_pem = std::fs::read(key_path)
            .map_err(|e| anyhow::anyhow!("failed to read {}: {e}", key_path.display()))?;
        let cert_pem = std::fs::read_to_string(cert_path)
            .map_err(|e| anyhow::anyhow!("failed to read {}: {e}", cert_path.display()))?;

        let (key, algorithm) = match jsonwebtoken::EncodingKey::from_rsa_pem(&key_pem) {
            Ok(key) => (key, jsonwebtoken::Algorithm::RS256),
            Err(_) => (
                jsonwebtoken::EncodingKey::from_ec_pem(&key_pem)?,
                jsonwebtoken::Algorithm::ES256,
            ),
        };
        let body: String = cert_pem
            .lines()
            .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE"))
            .skip(1)
            .take_while(|line| !line.starts_with("-----END"))
            .collect();
        anyhow::ensure!(
            !body.is_empty(),
            "{} holds no certificate",
            cert_path.display()
        );
        Ok(Self {
            key,
            algorithm,
            certificate_der_base64: body,
        })
    }

    fn token(&self, scopes: &[String]) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let access = scopes
            .iter()
            .filter_map(|scope| {
                let mut parts = scope.splitn(3, ':');
                let kind = parts.next()?;
                let name = parts.next()?;
                let actions = parts.next()?;
                Some(Access {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    actions: actions.split(',').map(str::to_owned).collect(),
                })
            })
            .collect();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: crate::BASIC_USER.to_owned(),
            aud: SERVICE.to_owned(),
            exp: now + 300,
            nbf: now - 10,
            iat: now,
            jti: format!("mayfly-test-{now}-{}", std::process::id()),
            access,
        };
        let mut header = jsonwebtoken::Header::new(self.algorithm);
        header.x5c = Some(vec![self.certificate_der_base64.clone()]);
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

fn serve(stream: TcpStream, signer: &Signer, expected_auth: Option<&str>) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;

    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }

    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let query = target.split_once('?').map(|(_, query)| query).unwrap_or("");
    let scopes: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == "scope")
        .map(|(_, value)| value.into_owned())
        .collect();

    let mut stream = stream;
    if expected_auth.is_some() && authorization.as_deref() != expected_auth {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }

    let token = signer.token(&scopes)?;
    let body =
        serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 }).to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}
