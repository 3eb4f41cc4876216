//! Credential checks for `mayfly login`: one authenticated `GET /v2/`, the request that
//! `docker login` and `podman login` send before they store credentials.

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};

use super::{
    basic_header, classify_send_error, error_message, header_text, parse_challenges, ApiRequest,
    Challenge, ClientError, Failure, RegistryClient,
};
use crate::auth::{AuthError, Credentials};
use crate::reference::Reference;
use crate::registry_config::{Endpoint, RegistryConfigError};

/// Token scope requested on login when the `/v2/` challenge names none. `fetch_token` always
/// sends a scope, and `/v2/` accepts any valid token. The Docker token authentication spec
/// tells token services to grant a subset of the requested access rather than fail, so a
/// user without catalog access still gets a token.
const LOGIN_SCOPE: &str = "registry:catalog:*";

/// Repository name used to look up a registry's registries.conf entry when the login names
/// only a host. It only selects the entry and is never requested.
const PLACEHOLDER_REPOSITORY: &str = "mayfly-login-check";

impl RegistryClient {
    /// Checks that `registry` accepts `credentials` with one `GET /v2/`, as `docker login`
    /// does: basic auth when the registry's challenge is Basic, or for a Bearer challenge a
    /// token that the realm issues for the credentials.
    ///
    /// `registry` is `host[:port]`, optionally followed by `/namespace`. Its registries.conf
    /// entry decides the host to contact (`location`) and whether plain HTTP and unverified
    /// TLS are allowed (`insecure`). Mirrors are not checked. A registry that answers `/v2/`
    /// without asking for credentials passes without checking them, as with Docker.
    /// Transient failures are retried with the client's retry policy.
    pub async fn check_login(
        &self,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<(), ClientError> {
        let endpoint = login_endpoint(self, registry)?;
        let request = ApiRequest {
            endpoint: &endpoint,
            path: "/v2/".to_owned(),
            accept: None,
            range_from: None,
        };
        self.with_retries(&request, || {
            self.login_attempt(&request, registry, credentials)
        })
        .await
    }

    async fn login_attempt(
        &self,
        request: &ApiRequest<'_>,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<(), Failure> {
        let endpoint = request.endpoint;
        let base = self.base_url(endpoint).await?;
        let url = format!("{base}{}", request.path);

        // Like `docker login`, send credentials only after the registry returns a challenge.
        let mut response = self.send_login_request(endpoint, &url, None).await?;
        let mut challenged = false;
        if response.status() == StatusCode::UNAUTHORIZED {
            challenged = true;
            let authorization = self
                .login_authorization(endpoint, response.headers(), registry, credentials)
                .await?;
            response = self
                .send_login_request(endpoint, &url, Some(authorization))
                .await?;
        }

        let status = response.status();
        if status.is_success() {
            if challenged {
                tracing::info!(registry, username = %credentials.username, "registry accepted the credentials");
            } else {
                tracing::info!(
                    registry,
                    "registry answers /v2/ without authentication, so the credentials were not checked"
                );
            }
            return Ok(());
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Failure::Fatal(rejected(registry, credentials)));
        }
        if super::is_retryable_status(status) {
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
        let message = error_message(response).await;
        Err(Failure::Fatal(ClientError::Status {
            url,
            status: status.as_u16(),
            message,
        }))
    }

    async fn send_login_request(
        &self,
        endpoint: &Endpoint,
        url: &str,
        authorization: Option<HeaderValue>,
    ) -> Result<Response, Failure> {
        let client = self
            .http_client(&endpoint.registry, endpoint.insecure)
            .map_err(Failure::Fatal)?;
        let mut builder = client.get(url);
        if let Some(authorization) = authorization {
            builder = builder.header(header::AUTHORIZATION, authorization);
        }
        builder
            .send()
            .await
            .map_err(|source| classify_send_error(&endpoint.registry, url, source))
    }

    /// Returns the `Authorization` value for the `/v2/` challenges and `credentials`: a
    /// bearer token fetched from the realm, or basic auth.
    async fn login_authorization(
        &self,
        endpoint: &Endpoint,
        headers: &HeaderMap,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<HeaderValue, Failure> {
        let challenges: Vec<Challenge> = headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(parse_challenges)
            .collect();

        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let challenge = login_challenge(bearer);
            return match self
                .fetch_token(endpoint, &challenge, Some(credentials))
                .await
            {
                Ok(token) => Ok(token.header),
                Err(Failure::Fatal(error)) if is_token_denial(&error) => {
                    Err(Failure::Fatal(rejected(registry, credentials)))
                }
                Err(failure) => Err(failure),
            };
        }

        if challenges.iter().any(|c| c.scheme == "basic") {
            return Ok(basic_header(&credentials.username, &credentials.password));
        }

        let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        Err(Failure::Fatal(ClientError::UnsupportedChallenge {
            registry: endpoint.registry.clone(),
            schemes: schemes.join(", "),
        }))
    }
}

/// Resolves `registry` (`host[:port][/namespace]`) to the endpoint that registries.conf
/// selects for it: the registry itself after any `location` rewrite, never a mirror.
fn login_endpoint(client: &RegistryClient, registry: &str) -> Result<Endpoint, ClientError> {
    let invalid = || {
        ClientError::Credentials(AuthError::InvalidKey {
            key: registry.to_owned(),
        })
    };
    let valid = !registry.contains("://")
        && !registry
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        && !registry.ends_with('/');
    let (host, namespace) = match registry.split_once('/') {
        Some((host, namespace)) => (host, Some(namespace)),
        None => (registry, None),
    };
    if !valid || host.is_empty() || namespace.is_some_and(|n| n.split('/').any(str::is_empty)) {
        return Err(invalid());
    }

    let reference = Reference {
        registry: host.to_owned(),
        repository: namespace.unwrap_or(PLACEHOLDER_REPOSITORY).to_owned(),
        tag: None,
        digest: None,
    };
    let mut endpoints = match client.registries().endpoints(&reference) {
        Ok(endpoints) => endpoints,
        Err(RegistryConfigError::Blocked { prefix, path, .. }) => {
            return Err(ClientError::Config(RegistryConfigError::Blocked {
                reference: registry.to_owned(),
                prefix,
                path,
            }))
        }
        Err(error) => return Err(error.into()),
    };
    Ok(endpoints
        .pop()
        .expect("RegistriesConfig::endpoints always lists the registry itself last"))
}

/// Returns the Bearer challenge to fetch a login token with: the registry's challenge, with
/// [`LOGIN_SCOPE`] when it names no scope.
fn login_challenge(bearer: &Challenge) -> Challenge {
    let mut challenge = bearer.clone();
    challenge
        .params
        .entry("scope".to_owned())
        .or_insert_with(|| LOGIN_SCOPE.to_owned());
    challenge
}

/// Returns whether `error` from `fetch_token` means that the token service returned 401 or
/// 403. `fetch_token` reports that as the error for a pull denied with or without stored
/// credentials, and reads the auth files only on that path.
fn is_token_denial(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::AuthenticationRequired { .. }
            | ClientError::CredentialsRejected { .. }
            | ClientError::Credentials(_)
    )
}

/// Returns the error for credentials that the registry or its token service refused. It names
/// the user but never the password.
fn rejected(registry: &str, credentials: &Credentials) -> ClientError {
    ClientError::LoginRejected {
        registry: registry.to_owned(),
        username: credentials.username.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::client::ClientOptions;
    use crate::registry_config::RegistriesConfig;

    fn client(conf: &str) -> RegistryClient {
        let registries = RegistriesConfig::from_toml(conf, Path::new("test.conf")).unwrap();
        RegistryClient::new(registries, ClientOptions::default())
    }

    #[test]
    fn login_endpoint_without_config() {
        let endpoint = login_endpoint(&client(""), "127.0.0.1:5001").unwrap();
        assert_eq!(endpoint.registry, "127.0.0.1:5001");
        assert!(
            endpoint.insecure,
            "loopback registries are insecure by default"
        );
        assert!(!endpoint.mirror);

        let endpoint = login_endpoint(&client(""), "registry.example.com").unwrap();
        assert_eq!(endpoint.registry, "registry.example.com");
        assert!(!endpoint.insecure);
    }

    #[test]
    fn login_endpoint_follows_location_and_insecure() {
        let conf = r#"
            [[registry]]
            prefix = "registry.example.com"
            location = "127.0.0.1:5001"
            insecure = false

            [[registry.mirror]]
            location = "mirror.example.com"
        "#;
        let endpoint = login_endpoint(&client(conf), "registry.example.com").unwrap();
        assert_eq!(endpoint.registry, "127.0.0.1:5001");
        assert!(!endpoint.insecure);
        assert!(!endpoint.mirror);
    }

    #[test]
    fn login_endpoint_with_namespace() {
        let conf = r#"
            [[registry]]
            prefix = "registry.example.com/team"
            location = "team.example.com:5000/images"
            insecure = true
        "#;
        let endpoint = login_endpoint(&client(conf), "registry.example.com/team").unwrap();
        assert_eq!(endpoint.registry, "team.example.com:5000");
        assert_eq!(endpoint.repository, "images");
        assert!(endpoint.insecure);

        let host_only = login_endpoint(&client(conf), "registry.example.com").unwrap();
        assert_eq!(host_only.registry, "registry.example.com");
    }

    #[test]
    fn login_endpoint_blocked_names_registry() {
        let conf = r#"
            [[registry]]
            prefix = "blocked.example.com"
            blocked = true
        "#;
        let error = login_endpoint(&client(conf), "blocked.example.com").unwrap_err();
        let ClientError::Config(RegistryConfigError::Blocked { reference, .. }) = &error else {
            panic!("expected a blocked-registry error, got {error:?}");
        };
        assert_eq!(reference, "blocked.example.com");
    }

    #[test]
    fn login_endpoint_rejects_invalid_names() {
        for registry in [
            "",
            "https://registry.example.com",
            "registry.example.com/",
            "/registry.example.com",
            "registry example.com",
            "registry.example.com//team",
            "registry.example.com\n",
        ] {
            let error = login_endpoint(&client(""), registry).unwrap_err();
            assert!(
                matches!(
                    error,
                    ClientError::Credentials(AuthError::InvalidKey { ref key }) if key == registry
                ),
                "{registry:?}: {error:?}"
            );
        }
    }

    #[test]
    fn login_challenge_adds_catalog_scope() {
        let bearer = Challenge {
            scheme: "bearer".to_owned(),
            params: BTreeMap::from([
                ("realm".to_owned(), "http://127.0.0.1:5004/token".to_owned()),
                ("service".to_owned(), "registry".to_owned()),
            ]),
        };
        let challenge = login_challenge(&bearer);
        assert_eq!(challenge.param("scope"), Some(LOGIN_SCOPE));
        assert_eq!(challenge.param("service"), Some("registry"));
        assert_eq!(
            challenge.param("realm"),
            Some("http://127.0.0.1:5004/token")
        );
    }

    #[test]
    fn login_challenge_keeps_registry_scope() {
        let mut bearer = Challenge {
            scheme: "bearer".to_owned(),
            params: BTreeMap::new(),
        };
        bearer
            .params
            .insert("scope".to_owned(), "repository:a:pull".to_owned());
        assert_eq!(
            login_challenge(&bearer).param("scope"),
            Some("repository:a:pull")
        );
    }

    #[test]
    fn token_denials_are_recognised() {
        let denied = ClientError::AuthenticationRequired {
            registry: "r".to_owned(),
            repository: "p".to_owned(),
        };
        assert!(is_token_denial(&denied));
        let other = ClientError::ServerStatus {
            url: "u".to_owned(),
            status: 503,
        };
        assert!(!is_token_denial(&other));
    }

    #[test]
    fn rejection_names_user_but_not_password() {
        let credentials = Credentials::new("mayfly", "mayfly-secret");
        let error = rejected("127.0.0.1:5001", &credentials);
        let message = error.to_string();
        assert!(message.contains("127.0.0.1:5001"), "{message}");
        assert!(message.contains("user name \"mayfly\""), "{message}");
        assert!(!message.contains("mayfly-secret"), "{message}");
        assert!(!format!("{error:?}").contains("mayfly-secret"));
    }
}
