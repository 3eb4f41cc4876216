//! An async client for the OCI distribution API: manifests and blobs over HTTPS (or plain
//! HTTP for insecure registries), anonymous, basic and bearer-token authentication, and
//! bounded retries of transient failures.
//!
//! The client resolves where to fetch from with [`RegistriesConfig`], reads credentials with
//! [`AuthFiles`] and trusts extra CA certificates from `$MAYFLY_EXTRA_CA` (a colon-separated
//! list of PEM files) and from `certs.d/<host:port>/*.crt` directories as described in
//! containers-certs.d(5).

mod blob;
mod challenge;
mod login;
mod retry;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use crate::auth::{AuthError, AuthFiles};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry_config::{Endpoint, RegistriesConfig, RegistryConfigError};

pub use blob::{BlobReceiver, BlobTransfer};
pub use challenge::{parse_challenges, Challenge};
pub use retry::{is_retryable_status, parse_retry_after, RetryPolicy};

/// Environment variable with extra CA certificate files (PEM), separated by colons.
pub const EXTRA_CA_ENV: &str = "MAYFLY_EXTRA_CA";

/// `Accept` header for manifest requests: OCI and Docker schema 2 manifests and indexes.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Host that serves the registry API for `docker.io` references.
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// Largest token-service response read.
const MAX_TOKEN_RESPONSE_SIZE: u64 = 1 << 20;

/// Token lifetime when the token service does not state one, as the Docker token authentication specification sets.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Errors from talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to read CA certificate file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid CA certificate file {path}: expected PEM certificates")]
    CaParse {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },

    #[error("invalid CA certificate file {path}: it contains no PEM certificate")]
    CaEmpty { path: PathBuf },

    #[error("failed to set up the HTTP client for registry {registry}")]
    Build {
        registry: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("failed to read registry credentials")]
    Credentials(#[from] AuthError),

    #[error(transparent)]
    Config(#[from] RegistryConfigError),

    #[error("request to {url} failed")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("cannot resolve the registry host {host}; check its name and this machine's network and DNS, or name a registry you can reach as its mirror or location in registries.conf (see containers-registries.conf(5))")]
    NameResolution {
        host: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("TLS connection to {registry} failed: if the registry uses a private CA, put it in ~/.config/containers/certs.d/{registry}/ca.crt or list it in $MAYFLY_EXTRA_CA; if it serves plain HTTP, set insecure = true for it in registries.conf")]
    Tls {
        registry: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("connection dropped while reading the response from {url}")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{url} ended the response after {received} of {expected} bytes")]
    ShortBody {
        url: String,
        received: u64,
        expected: u64,
    },

    #[error("{url} returned HTTP {status}")]
    ServerStatus { url: String, status: u16 },

    #[error("request to {url} failed {attempts} times, giving up")]
    RetriesExhausted {
        url: String,
        attempts: u32,
        #[source]
        source: Box<ClientError>,
    },

    #[error("not found: {url} returned HTTP 404; check the repository name and tag")]
    NotFound { url: String },

    #[error("{url} returned HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },

    #[error("registry {registry} denied access to {repository}: the repository does not exist or needs credentials; run `mayfly login {registry}`")]
    AuthenticationRequired {
        registry: String,
        repository: String,
    },

    #[error("registry {registry} rejected the stored credentials for {repository}; run `mayfly login {registry}` again")]
    CredentialsRejected {
        registry: String,
        repository: String,
    },

    #[error("registry {registry} rejected the user name {username:?} or its password; check both and log in again")]
    LoginRejected { registry: String, username: String },

    #[error("registry {registry} asks for authentication with {schemes:?}, but mayfly supports only Basic and Bearer")]
    UnsupportedChallenge { registry: String, schemes: String },

    #[error("registry {registry} sent an invalid token realm {realm:?}")]
    InvalidRealm { registry: String, realm: String },

    #[error("invalid response from token service {realm}: expected JSON with \"token\" or \"access_token\"")]
    TokenResponse {
        realm: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{url} sent more than {limit} bytes, the maximum for this kind of content")]
    TooLarge { url: String, limit: u64 },

    #[error("manifest {reference} from {location} has digest {actual}, expected {expected}; the registry or something between it and mayfly altered it")]
    ManifestDigestMismatch {
        location: String,
        reference: String,
        expected: Digest,
        actual: Digest,
    },

    #[error("blob {digest} from {location} is larger than the {size} bytes its descriptor states")]
    BlobTooLarge {
        digest: Digest,
        location: String,
        size: u64,
    },

    #[error("blob {digest} from {location} has digest {actual}")]
    BlobDigestMismatch {
        digest: Digest,
        location: String,
        actual: Digest,
    },

    #[error("failed to store the downloaded bytes of {digest}")]
    Receiver {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },

    #[error("download of {digest} from {location} stopped after {received} of {size} bytes")]
    BlobInterrupted {
        digest: Digest,
        location: String,
        received: u64,
        size: u64,
        #[source]
        source: Box<ClientError>,
    },
}

/// A failed attempt: worth retrying, or final.
pub(crate) enum Failure {
    Transient {
        error: ClientError,
        retry_after: Option<Duration>,
    },
    Fatal(ClientError),
}

impl Failure {
    fn transient(error: ClientError) -> Self {
        Self::Transient {
            error,
            retry_after: None,
        }
    }
}

/// Settings of a [`RegistryClient`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub auth: AuthFiles,
    /// PEM files with CA certificates trusted for every registry.
    pub extra_ca_files: Vec<PathBuf>,
    /// containers-certs.d(5) directories; `<dir>/<host:port>/*.crt` are trusted for that host.
    pub certs_dirs: Vec<PathBuf>,
    pub retry: RetryPolicy,
    pub user_agent: String,
    pub connect_timeout: Duration,
    /// Maximum wait for the next bytes of a response before the connection counts as dropped.
    pub read_timeout: Duration,
}

impl Default for ClientOptions {
    /// Anonymous access, system CA roots only, default retries.
    fn default() -> Self {
        Self {
            auth: AuthFiles::none(),
            extra_ca_files: Vec::new(),
            certs_dirs: Vec::new(),
            retry: RetryPolicy::default(),
            user_agent: format!("mayfly/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
        }
    }
}

impl ClientOptions {
    /// Reads credentials files, `$MAYFLY_EXTRA_CA` and the certs.d directories
    /// (`$XDG_CONFIG_HOME/containers/certs.d`, then `/etc/containers/certs.d`) from the
    /// environment.
    pub fn from_env() -> Self {
        let extra_ca_files = std::env::var_os(EXTRA_CA_ENV)
            .map(|value| {
                std::env::split_paths(&value)
                    .filter(|path| !path.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();

        let mut certs_dirs = Vec::new();
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")));
        if let Some(config_home) = config_home {
            certs_dirs.push(config_home.join("containers/certs.d"));
        }
        certs_dirs.push(PathBuf::from("/etc/containers/certs.d"));

        Self {
            auth: AuthFiles::from_env(),
            extra_ca_files,
            certs_dirs,
            ..Self::default()
        }
    }
}

/// Manifest bytes as the registry sent them, with their verified digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub digest: Digest,
}

struct CachedToken {
    header: HeaderValue,
    expires: Instant,
}

/// One request to a registry's API.
pub(crate) struct ApiRequest<'a> {
    endpoint: &'a Endpoint,
    path: String,
    accept: Option<&'static str>,
    range_from: Option<u64>,
}

/// Client for the registries one pull or one process talks to. It caches HTTP connections,
/// the scheme each insecure registry responded on, and authorization per repository.
pub struct RegistryClient {
    registries: RegistriesConfig,
    options: ClientOptions,
    http: Mutex<HashMap<(String, bool), reqwest::Client>>,
    schemes: Mutex<HashMap<String, &'static str>>,
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
    basic: Mutex<HashMap<String, HeaderValue>>,
}

impl RegistryClient {
    pub fn new(registries: RegistriesConfig, options: ClientOptions) -> Self {
        Self {
            registries,
            options,
            http: Mutex::new(HashMap::new()),
            schemes: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(HashMap::new()),
        }
    }

    /// Creates a client configured from the environment: registries.conf files as
    /// [`RegistriesConfig::load`] finds them, and [`ClientOptions::from_env`].
    pub fn from_env() -> Result<Self, RegistryConfigError> {
        Ok(Self::new(
            RegistriesConfig::load()?,
            ClientOptions::from_env(),
        ))
    }

    pub fn registries(&self) -> &RegistriesConfig {
        &self.registries
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Returns the endpoints to try for `reference`, mirrors first.
    pub fn endpoints(&self, reference: &Reference) -> Result<Vec<Endpoint>, ClientError> {
        Ok(self.registries.endpoints(reference)?)
    }

    /// Fetches the manifest `reference` (a tag or a digest) from `endpoint` and verifies its
    /// digest against `expected`, or else against the `Docker-Content-Digest` header.
    pub async fn fetch_manifest(
        &self,
        endpoint: &Endpoint,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest, ClientError> {
        let request = ApiRequest {
            endpoint,
            path: format!("/v2/{}/manifests/{reference}", endpoint.repository),
            accept: Some(MANIFEST_ACCEPT),
            range_from: None,
        };
        let (bytes, content_type, header_digest) = self
            .with_retries(&request, || self.manifest_attempt(&request))
            .await?;

        let actual = Digest::of_bytes(&bytes);
        let expected = expected.cloned().or(header_digest);
        if let Some(expected) = expected {
            if expected != actual {
                return Err(ClientError::ManifestDigestMismatch {
                    location: endpoint.to_string(),
                    reference: reference.to_owned(),
                    expected,
                    actual,
                });
            }
        }
        tracing::debug!(endpoint = %endpoint, reference, digest = %actual, "fetched manifest");
        Ok(FetchedManifest {
            bytes,
            content_type,
            digest: actual,
        })
    }

    async fn manifest_attempt(
        &self,
        request: &ApiRequest<'_>,
    ) -> Result<(Vec<u8>, Option<String>, Option<Digest>), Failure> {
        let response = self.attempt(request).await?;
        let content_type = header_text(response.headers(), header::CONTENT_TYPE);
        let header_digest = header_text(response.headers(), "docker-content-digest")
            .and_then(|value| value.parse::<Digest>().ok());
        let bytes = read_limited(response, crate::manifest::MAX_MANIFEST_SIZE).await?;
        Ok((bytes, content_type, header_digest))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry policy is exhausted.
    async fn with_retries<'r, T, F, Fut>(
        &self,
        request: &ApiRequest<'r>,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = &self.options.retry;
        let mut number = 1;
        loop {
            let (error, retry_after) = match attempt().await {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Transient { error, retry_after }) => (error, retry_after),
            };
            if number >= policy.max_attempts {
                return Err(ClientError::RetriesExhausted {
                    url: request.display_url(),
                    attempts: number,
                    source: Box::new(error),
                });
            }

            let delay = retry_after.unwrap_or_else(|| policy.delay(number));
            tracing::warn!(
                url = %request.display_url(),
                attempt = number,
                max_attempts = policy.max_attempts,
                delay_ms = delay.as_millis() as u64,
                error = %error_chain(&error),
                "registry request failed, retrying"
            );
            tokio::time::sleep(delay).await;
            number += 1;
        }
    }

    /// Sends one request, authenticating once if the registry returns 401, and sorts the
    /// outcome into success, transient failure and final failure.
    async fn attempt(&self, request: &ApiRequest<'_>) -> Result<Response, Failure> {
        let endpoint = request.endpoint;
        let base = self.base_url(endpoint).await?;
        let url = format!("{base}{}", request.path);

        let mut response = self.execute(request, &url).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            self.authenticate(endpoint, response.headers()).await?;
            response = self.execute(request, &url).await?;
            if response.status() == StatusCode::UNAUTHORIZED {
                return Err(Failure::Fatal(self.denied(endpoint)?));
            }
        }

        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if is_retryable_status(status) {
            let retry_after = header_text(response.headers(), header::RETRY_AFTER)
                .and_then(|value| self.options.retry.retry_after(&value));
            return Err(Failure::Transient {
                error: ClientError::ServerStatus {
                    url,
                    status: status.as_u16(),
                },
                retry_after,
            });
        }
        if status == StatusCode::NOT_FOUND {
            return Err(Failure::Fatal(ClientError::NotFound { url }));
        }
        if status == StatusCode::FORBIDDEN {
            return Err(Failure::Fatal(self.denied(endpoint)?));
        }
        let message = error_message(response).await;
        Err(Failure::Fatal(ClientError::Status {
            url,
            status: status.as_u16(),
            message,
        }))
    }

    /// Returns the error for a registry that refused access after authentication.
    fn denied(&self, endpoint: &Endpoint) -> Result<ClientError, Failure> {
        let has_credentials = self
            .options
            .auth
            .credentials(&endpoint.registry, &endpoint.repository)
            .map_err(|error| Failure::Fatal(error.into()))?
            .is_some();
        let registry = endpoint.registry.clone();
        let repository = endpoint.repository.clone();
        Ok(if has_credentials {
            ClientError::CredentialsRejected {
                registry,
                repository,
            }
        } else {
            ClientError::AuthenticationRequired {
                registry,
                repository,
            }
        })
    }

    async fn execute(&self, request: &ApiRequest<'_>, url: &str) -> Result<Response, Failure> {
        let endpoint = request.endpoint;
        let client = self
            .http_client(&endpoint.registry, endpoint.insecure)
            .map_err(Failure::Fatal)?;

        let mut builder = client.get(url);
        if let Some(accept) = request.accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        if let Some(from) = request.range_from {
            builder = builder.header(header::RANGE, format!("bytes={from}-"));
        }
        if let Some(authorization) = self.cached_authorization(endpoint) {
            builder = builder.header(header::AUTHORIZATION, authorization);
        }
        builder
            .send()
            .await
            .map_err(|source| classify_send_error(&endpoint.registry, url, source))
    }

    /// Returns the URL prefix for `endpoint`. An insecure endpoint is tried with HTTPS first
    /// (without certificate checks) and then plain HTTP, as Docker does. The scheme that worked is cached.
    async fn base_url(&self, endpoint: &Endpoint) -> Result<String, Failure> {
        let host = api_host(&endpoint.registry);
        if !endpoint.insecure {
            return Ok(format!("https://{host}"));
        }
        let cached = self
            .schemes
            .lock()
            .unwrap()
            .get(&endpoint.registry)
            .copied();
        if let Some(scheme) = cached {
            return Ok(format!("{scheme}://{host}"));
        }

        let client = self
            .http_client(&endpoint.registry, true)
            .map_err(Failure::Fatal)?;
        let mut chosen = None;
        let mut last_error = None;
        for scheme in ["https", "http"] {
            let url = format!("{scheme}://{host}/v2/");
            match client.get(&url).send().await {
                Ok(_) => {
                    chosen = Some(scheme);
                    break;
                }
                Err(source) => last_error = Some(ClientError::Connect { url, source }),
            }
        }
        let Some(scheme) = chosen else {
            return Err(Failure::transient(
                last_error.expect("the loop tried at least one scheme"),
            ));
        };

        tracing::debug!(registry = %endpoint.registry, scheme, "insecure registry responded");
        self.schemes
            .lock()
            .unwrap()
            .insert(endpoint.registry.clone(), scheme);
        Ok(format!("{scheme}://{host}"))
    }

    fn http_client(&self, registry: &str, insecure: bool) -> Result<reqwest::Client, ClientError> {
        let key = (registry.to_owned(), insecure);
        if let Some(client) = self.http.lock().unwrap().get(&key) {
            return Ok(client.clone());
        }
        let client = tls::build_http_client(registry, insecure, &self.options)?;
        self.http.lock().unwrap().insert(key, client.clone());
        Ok(client)
    }

    fn cached_authorization(&self, endpoint: &Endpoint) -> Option<HeaderValue> {
        let key = (endpoint.registry.clone(), pull_scope(&endpoint.repository));
        let mut tokens = self.tokens.lock().unwrap();
        match tokens.get(&key) {
            Some(token) if token.expires > Instant::now() => return Some(token.header.clone()),
            Some(_) => {
                tokens.remove(&key);
            }
            None => {}
        }
        drop(tokens);
        self.basic.lock().unwrap().get(&endpoint.registry).cloned()
    }

    /// Answers a 401: fetches a bearer token or prepares basic credentials, as the
    /// `WWW-Authenticate` challenges ask, and caches the result.
    async fn authenticate(&self, endpoint: &Endpoint, headers: &HeaderMap) -> Result<(), Failure> {
        let challenges: Vec<Challenge> = headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let credentials = self
            .options
            .auth
            .credentials(&endpoint.registry, &endpoint.repository)
            .map_err(|error| Failure::Fatal(error.into()))?;

        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let token = self
                .fetch_token(endpoint, bearer, credentials.as_ref())
                .await?;
            self.tokens.lock().unwrap().insert(
                (endpoint.registry.clone(), pull_scope(&endpoint.repository)),
                token,
            );
            return Ok(());
        }

        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(credentials) = credentials else {
                return Err(Failure::Fatal(ClientError::AuthenticationRequired {
                    registry: endpoint.registry.clone(),
                    repository: endpoint.repository.clone(),
                }));
            };
            let header = basic_header(&credentials.username, &credentials.password);
            self.basic
                .lock()
                .unwrap()
                .insert(endpoint.registry.clone(), header);
            return Ok(());
        }

        let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        Err(Failure::Fatal(ClientError::UnsupportedChallenge {
            registry: endpoint.registry.clone(),
            schemes: schemes.join(", "),
        }))
    }

    /// Requests a token from the challenge's realm, with basic credentials when there are
    /// some, as the Docker token authentication spec describes.
    async fn fetch_token(
        &self,
        endpoint: &Endpoint,
        challenge: &Challenge,
        credentials: Option<&crate::auth::Credentials>,
    ) -> Result<CachedToken, Failure> {
        let invalid_realm = || {
            Failure::Fatal(ClientError::InvalidRealm {
                registry: endpoint.registry.clone(),
                realm: challenge.param("realm").unwrap_or_default().to_owned(),
            })
        };
        let realm = challenge.param("realm").ok_or_else(invalid_realm)?;
        let mut url = url::Url::parse(realm).map_err(|_| invalid_realm())?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid_realm());
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                query.append_pair("service", service);
            }
            let scope = challenge
                .param("scope")
                .map(str::to_owned)
                .unwrap_or_else(|| pull_scope(&endpoint.repository));
            query.append_pair("scope", &scope);
        }

        // The realm host gets its own TLS settings: its certs.d directory, and certificate
        // checks off only when the registry is insecure and the realm is on the same host.
        let realm_host = realm_authority(&url);
        let insecure = endpoint.insecure && realm_host_matches(&realm_host, &endpoint.registry);
        let client = self
            .http_client(&realm_host, insecure)
            .map_err(Failure::Fatal)?;
        let mut builder = client.get(url.as_str());
        if let Some(credentials) = credentials {
            builder = builder.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = builder
            .send()
            .await
            .map_err(|source| classify_send_error(&realm_host, realm, source))?;

        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Failure::Fatal(self.denied(endpoint)?));
        }
        if is_retryable_status(status) {
            return Err(Failure::transient(ClientError::ServerStatus {
                url: realm.to_owned(),
                status: status.as_u16(),
            }));
        }
        if !status.is_success() {
            let message = error_message(response).await;
            return Err(Failure::Fatal(ClientError::Status {
                url: realm.to_owned(),
                status: status.as_u16(),
                message,
            }));
        }

        let body = read_limited(response, MAX_TOKEN_RESPONSE_SIZE).await?;
        let token: TokenResponse = serde_json::from_slice(&body).map_err(|source| {
            Failure::Fatal(ClientError::TokenResponse {
                realm: realm.to_owned(),
                source,
            })
        })?;
        let Some(value) = token.token.or(token.access_token).filter(|t| !t.is_empty()) else {
            return Err(Failure::Fatal(ClientError::TokenResponse {
                realm: realm.to_owned(),
                source: serde::de::Error::missing_field("token"),
            }));
        };
        let mut header = HeaderValue::from_str(&format!("Bearer {value}")).map_err(|_| {
            Failure::Fatal(ClientError::TokenResponse {
                realm: realm.to_owned(),
                source: serde::de::Error::custom(
                    "the token contains characters not allowed in an HTTP header",
                ),
            })
        })?;
        header.set_sensitive(true);

        // Renew a little early so that a token does not expire between check and use.
        let lifetime = token
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME)
            .max(DEFAULT_TOKEN_LIFETIME);
        tracing::debug!(registry = %endpoint.registry, realm, "received bearer token");
        Ok(CachedToken {
            header,
            expires: Instant::now() + lifetime - Duration::from_secs(10),
        })
    }
}

impl ApiRequest<'_> {
    /// Returns the URL for messages (the scheme may not be known yet).
    fn display_url(&self) -> String {
        format!("{}{}", api_host(&self.endpoint.registry), self.path)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

fn api_host(registry: &str) -> &str {
    if registry == crate::reference::DEFAULT_REGISTRY {
        DOCKER_HUB_API_HOST
    } else {
        registry
    }
}

fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut header = HeaderValue::from_str(&format!("Basic {encoded}"))
        .expect("base64 text is a valid header value");
    header.set_sensitive(true);
    header
}

/// Returns `host[:port]` of a realm URL, the form certs.d directories are named with.
fn realm_authority(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn realm_host_matches(realm_authority: &str, registry: &str) -> bool {
    let host = |authority: &str| -> String {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
            _ => authority.to_owned(),
        }
    };
    host(realm_authority) == host(registry)
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// Sorts a failed send into a TLS failure (final: retrying does not fix a certificate) or a
/// connection failure (transient).
fn classify_send_error(registry: &str, url: &str, source: reqwest::Error) -> Failure {
    if is_tls_failure(&source) {
        return Failure::Fatal(ClientError::Tls {
            registry: registry.to_owned(),
            source,
        });
    }
    // A name that does not resolve now will not resolve in a few seconds either, and a
    // machine without network access would otherwise wait through every retry.
    if is_name_resolution_failure(&source) {
        let host = source
            .url()
            .and_then(|url| url.host_str())
            .unwrap_or_else(|| host_of(registry))
            .to_owned();
        return Failure::Fatal(ClientError::NameResolution { host, source });
    }
    Failure::transient(ClientError::Connect {
        url: url.to_owned(),
        source,
    })
}

/// Returns whether a connection failed because the host name did not resolve. The HTTP
/// client reports resolver failures only as text ("dns error: ..."), not as a type.
fn is_name_resolution_failure(error: &reqwest::Error) -> bool {
    error.is_connect() && error_chain(error).contains("dns error")
}

/// Returns the host of `registry` (`host[:port]` or `[v6]:port`), without the port.
fn host_of(registry: &str) -> &str {
    match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    }
}

/// Returns whether a connection failed in the TLS handshake. rustls reports handshake
/// failures as `io::ErrorKind::InvalidData`, which refused or reset connections never are.
fn is_tls_failure(error: &reqwest::Error) -> bool {
    if !error.is_connect() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        // `io::Error::source` skips the error an `io::Error` wraps, so descend with `get_ref`.
        source = match current.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::InvalidData => return true,
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    false
}

/// Reads a whole response body of at most `limit` bytes.
async fn read_limited(mut response: Response, limit: u64) -> Result<Vec<u8>, Failure> {
    let url = response.url().to_string();
    let too_large = || {
        Failure::Fatal(ClientError::TooLarge {
            url: url.clone(),
            limit,
        })
    };
    let expected = response.content_length();
    if expected.is_some_and(|length| length > limit) {
        return Err(too_large());
    }

    let mut bytes = Vec::with_capacity(expected.unwrap_or(0) as usize);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() as u64 + chunk.len() as u64 > limit {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(source) => {
                return Err(Failure::transient(ClientError::Body {
                    url: url.clone(),
                    source,
                }))
            }
        }
    }
    if let Some(expected) = expected.filter(|expected| *expected != bytes.len() as u64) {
        return Err(Failure::transient(ClientError::ShortBody {
            url,
            received: bytes.len() as u64,
            expected,
        }));
    }
    Ok(bytes)
}

/// Returns the start of an error response body, for messages: registries send a JSON
/// `errors` list that describes the problem.
async fn error_message(response: Response) -> String {
    const MAX_MESSAGE: usize = 300;
    let body = response.bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_MESSAGE)]);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        "(empty body)".to_owned()
    } else {
        cleaned.to_owned()
    }
}

/// Formats an error with its causes, for log lines.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_uses_its_api_host() {
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn realm_hosts_compare_without_ports() {
        assert!(realm_host_matches("127.0.0.1:5004", "127.0.0.1:5003"));
        assert!(realm_host_matches("localhost", "localhost:5000"));
        assert!(!realm_host_matches(
            "auth.example.com",
            "registry.example.com"
        ));
        let url = url::Url::parse("http://127.0.0.1:5004/token").unwrap();
        assert_eq!(realm_authority(&url), "127.0.0.1:5004");
    }

    #[test]
    fn basic_header_is_sensitive() {
        let header = basic_header("mayfly", "mayfly-secret");
        assert!(header.is_sensitive());
        assert_eq!(
            header.to_str().unwrap(),
            "Basic bWF5Zmx5Om1heWZseS1zZWNyZXQ="
        );
    }

    /// A resolver that fails every lookup, so the test sends nothing anywhere.
    struct NoNames;

    impl reqwest::dns::Resolve for NoNames {
        fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
            let message = format!("no address for {}", name.as_str());
            Box::pin(async move { Err(message.into()) })
        }
    }

    #[tokio::test]
    async fn unresolvable_host_is_final() {
        let client = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(NoNames))
            .build()
            .unwrap();
        let url = "http://registry.invalid:5000/v2/";
        let error = client.get(url).send().await.unwrap_err();
        assert!(
            is_name_resolution_failure(&error),
            "{}",
            error_chain(&error)
        );

        let Failure::Fatal(error) = classify_send_error("registry.invalid:5000", url, error) else {
            panic!("a name that does not resolve is not retried");
        };
        let message = error.to_string();
        assert!(
            message.contains("registry.invalid") && message.contains("registries.conf"),
            "{message}"
        );
    }

    #[test]
    fn error_chain_joins_causes() {
        let error = ClientError::RetriesExhausted {
            url: "u".to_owned(),
            attempts: 3,
            source: Box::new(ClientError::ServerStatus {
                url: "u".to_owned(),
                status: 503,
            }),
        };
        assert_eq!(
            error_chain(&error),
            "request to u failed 3 times, giving up: u returned HTTP 503"
        );
    }
}
