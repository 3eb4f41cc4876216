//! Blob downloads that stream into a receiver and survive dropped connections: a download
//! resumes with `Range: bytes=N-` when the registry supports ranges, and starts again from
//! byte 0 otherwise.

use std::future::Future;
use std::io;

use bytes::Bytes;
use reqwest::header;
use reqwest::{Response, StatusCode};

use super::{error_chain, ApiRequest, ClientError, Failure, RegistryClient};
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::registry_config::Endpoint;

/// Destination of a blob download, such as a temporary file in the content store.
///
/// The client calls `write` with the blob's bytes in order. After a dropped connection it
/// either continues with the next bytes (resumed) or calls `restart`, after which the bytes
/// come again from the start.
pub trait BlobReceiver: Send {
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;

    fn restart(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// Statistics of a finished blob download.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobTransfer {
    /// Bytes of the blob delivered to the receiver, equal to the descriptor's size.
    pub bytes: u64,
    /// Times a dropped download continued with a range request.
    pub resumed: u32,
    /// Times a dropped download started again from byte 0.
    pub restarted: u32,
}

/// A receiver that collects the blob in memory, for configs.
struct VecReceiver(Vec<u8>);

impl BlobReceiver for VecReceiver {
    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        self.0.extend_from_slice(&chunk);
        Ok(())
    }

    async fn restart(&mut self) -> io::Result<()> {
        self.0.clear();
        Ok(())
    }
}

impl RegistryClient {
    /// Downloads the blob `descriptor` names from `endpoint` into `receiver`.
    ///
    /// The client checks the size: a registry that sends more bytes than the descriptor
    /// states is stopped at once. Checking the digest is the receiver's job, because it receives
    /// the bytes anyway (the store's blob writer hashes them while writing).
    pub async fn fetch_blob<R: BlobReceiver>(
        &self,
        endpoint: &Endpoint,
        descriptor: &Descriptor,
        receiver: &mut R,
    ) -> Result<BlobTransfer, ClientError> {
        let path = format!("/v2/{}/blobs/{}", endpoint.repository, descriptor.digest);
        let policy = &self.options.retry;
        let mut transfer = BlobTransfer::default();
        let mut resumable = false;
        let mut failures_without_progress = 0;

        loop {
            // After a drop, continue where the bytes stopped if the registry allows ranges.
            let range_from = (transfer.bytes > 0 && resumable).then_some(transfer.bytes);
            if transfer.bytes > 0 && range_from.is_none() {
                restart(receiver, descriptor, &mut transfer).await?;
            }
            let request = ApiRequest {
                endpoint,
                path: path.clone(),
                accept: None,
                range_from,
            };
            let response = self.with_retries(&request, || self.attempt(&request)).await;
            let mut response = match response {
                Ok(response) => response,
                Err(error) if transfer.bytes == 0 => return Err(error),
                Err(error) => return Err(interrupted(endpoint, descriptor, &transfer, error)),
            };

            if let Some(from) = range_from {
                if continues_at(&response, from) {
                    transfer.resumed += 1;
                    tracing::info!(digest = %descriptor.digest, offset = from, "resuming blob download");
                } else {
                    restart(receiver, descriptor, &mut transfer).await?;
                }
            }
            resumable =
                response.status() == StatusCode::PARTIAL_CONTENT || accepts_ranges(&response);

            let before = transfer.bytes;
            let error =
                match stream_body(&mut response, endpoint, descriptor, receiver, &mut transfer)
                    .await
                {
                    Ok(()) => return Ok(transfer),
                    Err(Failure::Fatal(error)) => return Err(error),
                    Err(Failure::Transient { error, .. }) => error,
                };

            failures_without_progress = if transfer.bytes > before {
                1
            } else {
                failures_without_progress + 1
            };
            if failures_without_progress >= policy.max_attempts {
                return Err(interrupted(endpoint, descriptor, &transfer, error));
            }
            let delay = policy.delay(failures_without_progress);
            tracing::warn!(
                digest = %descriptor.digest,
                endpoint = %endpoint,
                received = transfer.bytes,
                size = descriptor.size,
                attempt = failures_without_progress,
                max_attempts = policy.max_attempts,
                delay_ms = delay.as_millis() as u64,
                error = %error_chain(&error),
                "blob download dropped, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Downloads a small blob (at most `limit` bytes) into memory and verifies its digest.
    pub async fn fetch_blob_bytes(
        &self,
        endpoint: &Endpoint,
        descriptor: &Descriptor,
        limit: u64,
    ) -> Result<Vec<u8>, ClientError> {
        if descriptor.size > limit {
            return Err(ClientError::TooLarge {
                url: format!("{endpoint}@{}", descriptor.digest),
                limit,
            });
        }
        let mut receiver = VecReceiver(Vec::with_capacity(descriptor.size as usize));
        self.fetch_blob(endpoint, descriptor, &mut receiver).await?;

        let actual = Digest::of_bytes(&receiver.0);
        if actual != descriptor.digest {
            return Err(ClientError::BlobDigestMismatch {
                digest: descriptor.digest.clone(),
                location: endpoint.to_string(),
                actual,
            });
        }
        Ok(receiver.0)
    }
}

async fn restart<R: BlobReceiver>(
    receiver: &mut R,
    descriptor: &Descriptor,
    transfer: &mut BlobTransfer,
) -> Result<(), ClientError> {
    tracing::info!(digest = %descriptor.digest, discarded = transfer.bytes, "restarting blob download from the start");
    receiver
        .restart()
        .await
        .map_err(|source| ClientError::Receiver {
            digest: descriptor.digest.clone(),
            source,
        })?;
    transfer.bytes = 0;
    transfer.restarted += 1;
    Ok(())
}

/// Returns whether a response to `Range: bytes=from-` starts at `from`.
fn continues_at(response: &Response, from: u64) -> bool {
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return false;
    }
    // Content-Range: bytes <first>-<last>/<total>
    response
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("bytes "))
        .and_then(|range| range.split('-').next())
        .and_then(|first| first.trim().parse::<u64>().ok())
        == Some(from)
}

fn accepts_ranges(response: &Response) -> bool {
    response
        .headers()
        .get(header::ACCEPT_RANGES)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|unit| unit.trim() == "bytes"))
}

/// Passes the response body to the receiver until the blob is complete or the connection
/// drops (a transient failure).
async fn stream_body<R: BlobReceiver>(
    response: &mut Response,
    endpoint: &Endpoint,
    descriptor: &Descriptor,
    receiver: &mut R,
    transfer: &mut BlobTransfer,
) -> Result<(), Failure> {
    let url = response.url().to_string();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(source) => return Err(Failure::transient(ClientError::Body { url, source })),
        };
        if transfer.bytes + chunk.len() as u64 > descriptor.size {
            return Err(Failure::Fatal(ClientError::BlobTooLarge {
                digest: descriptor.digest.clone(),
                location: endpoint.to_string(),
                size: descriptor.size,
            }));
        }

        let length = chunk.len() as u64;
        receiver.write(chunk).await.map_err(|source| {
            Failure::Fatal(ClientError::Receiver {
                digest: descriptor.digest.clone(),
                source,
            })
        })?;
        transfer.bytes += length;
    }

    if transfer.bytes < descriptor.size {
        return Err(Failure::transient(ClientError::ShortBody {
            url,
            received: transfer.bytes,
            expected: descriptor.size,
        }));
    }
    Ok(())
}

fn interrupted(
    endpoint: &Endpoint,
    descriptor: &Descriptor,
    transfer: &BlobTransfer,
    error: ClientError,
) -> ClientError {
    ClientError::BlobInterrupted {
        digest: descriptor.digest.clone(),
        location: endpoint.to_string(),
        received: transfer.bytes,
        size: descriptor.size,
        source: Box::new(error),
    }
}
