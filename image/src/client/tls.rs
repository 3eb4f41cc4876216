//! HTTP clients per registry, trusting the system roots plus the extra CA certificates that
//! `$MAYFLY_EXTRA_CA` and containers-certs.d(5) directories name.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{ClientError, ClientOptions};

/// Builds the HTTP client for `registry`. With `insecure`, certificates are not verified.
pub(super) fn build_http_client(
    registry: &str,
    insecure: bool,
    options: &ClientOptions,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(options.user_agent.clone())
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout);
    if insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }

    for path in ca_files_for(registry, options)? {
        let pem = fs::read(&path).map_err(|source| ClientError::CaFile {
            path: path.clone(),
            source,
        })?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| ClientError::CaParse {
                path: path.clone(),
                source,
            })?;
        if certificates.is_empty() {
            return Err(ClientError::CaEmpty { path });
        }
        tracing::debug!(registry, path = %path.display(), count = certificates.len(), "trusting extra CA certificates");
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }

    // TODO: client certificates (`*.cert` and `*.key` in certs.d) are not loaded.
    builder.build().map_err(|source| ClientError::Build {
        registry: registry.to_owned(),
        source,
    })
}

/// Returns the CA files for `registry`: every extra CA file, then the `*.crt` files in
/// `<certs dir>/<registry>/` of each certs directory, in name order.
fn ca_files_for(registry: &str, options: &ClientOptions) -> Result<Vec<PathBuf>, ClientError> {
    let mut files = options.extra_ca_files.clone();
    for dir in &options.certs_dirs {
        files.extend(crt_files(&dir.join(registry))?);
    }
    Ok(files)
}

fn crt_files(dir: &Path) -> Result<Vec<PathBuf>, ClientError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ClientError::CaFile {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| ClientError::CaFile {
                path: dir.to_owned(),
                source,
            })?
            .path();
        if path.extension().is_some_and(|ext| ext == "crt") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
