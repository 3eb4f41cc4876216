//! Forwarding queries to upstream resolvers from the host namespace.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::DnsError;
use crate::in_namespace::NetnsThread;
use crate::log_limit::LogLimiter;

/// Largest DNS message over TCP (two-byte length prefix).
const MAX_MESSAGE: usize = 65_535;

/// Sends queries to the upstream resolvers in order until one answers.
#[derive(Debug)]
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    /// Creates the sockets, in the host namespace, where the upstreams are.
    host: NetnsThread,
    ids: IdSource,
    log: Arc<LogLimiter>,
}

impl Forwarder {
    pub fn new(
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
        host: NetnsThread,
        log: Arc<LogLimiter>,
    ) -> Self {
        Self {
            upstreams,
            timeout,
            host,
            ids: IdSource::new(),
            log,
        }
    }

    /// Returns the first upstream answer to `query` as wire bytes carrying
    /// the query's own ID. Each upstream gets the query over UDP, and over
    /// TCP when the UDP answer is truncated, each attempt within the
    /// timeout; the error of the last upstream is returned when none
    /// answers.
    pub async fn forward(&self, query: &Message) -> Result<Vec<u8>, DnsError> {
        // A fresh random ID per upstream query, so an answer to an earlier
        // query, or a guessed one, does not match.
        let id = self.ids.next();
        let mut upstream_query = query.clone();
        upstream_query.set_id(id);
        let bytes = upstream_query.to_vec().map_err(DnsError::Encode)?;

        let mut last_error = DnsError::NoUpstream;
        for &upstream in &self.upstreams {
            match self.exchange(upstream, &bytes, id, query.queries()).await {
                Ok(mut answer) => {
                    answer[..2].copy_from_slice(&query.id().to_be_bytes());
                    return Ok(answer);
                }
                Err(error) => {
                    if let Some(suppressed) = self.log.allow() {
                        tracing::debug!(%upstream, %error, suppressed, "upstream resolver failed; trying the next one");
                    }
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }

    async fn exchange(
        &self,
        upstream: SocketAddr,
        bytes: &[u8],
        id: u16,
        questions: &[Query],
    ) -> Result<Vec<u8>, DnsError> {
        let deadline = |_| DnsError::UpstreamTimeout {
            upstream,
            timeout: self.timeout,
        };
        let answer = timeout(
            self.timeout,
            self.exchange_udp(upstream, bytes, id, questions),
        )
        .await
        .map_err(deadline)??;
        if let Some(answer) = answer {
            return Ok(answer);
        }
        timeout(
            self.timeout,
            self.exchange_tcp(upstream, bytes, id, questions),
        )
        .await
        .map_err(deadline)?
    }

    /// Returns `None` when the answer is truncated and TCP is needed.
    async fn exchange_udp(
        &self,
        upstream: SocketAddr,
        bytes: &[u8],
        id: u16,
        questions: &[Query],
    ) -> Result<Option<Vec<u8>>, DnsError> {
        let failed = |source| DnsError::Upstream {
            upstream,
            transport: "UDP",
            source,
        };
        let any: IpAddr = match upstream {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = self.host.udp_bind_async(SocketAddr::new(any, 0)).await?;
        socket.set_nonblocking(true).map_err(failed)?;
        let socket = UdpSocket::from_std(socket).map_err(failed)?;
        socket.connect(upstream).await.map_err(failed)?;
        socket.send(bytes).await.map_err(failed)?;

        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let len = socket.recv(&mut buf).await.map_err(failed)?;
            let answer = &buf[..len];
            // Datagrams for other IDs are late answers to earlier queries
            // or forgeries; keep waiting for ours.
            if header_id(answer) != Some(id) {
                continue;
            }
            if is_truncated(answer) {
                return Ok(None);
            }
            match check_answer(answer, id, questions) {
                Ok(()) => return Ok(Some(answer.to_vec())),
                Err(reason) => {
                    if let Some(suppressed) = self.log.allow() {
                        tracing::debug!(%upstream, reason, suppressed, "ignoring an invalid upstream response");
                    }
                }
            }
        }
    }

    async fn exchange_tcp(
        &self,
        upstream: SocketAddr,
        bytes: &[u8],
        id: u16,
        questions: &[Query],
    ) -> Result<Vec<u8>, DnsError> {
        let failed = |source| DnsError::Upstream {
            upstream,
            transport: "TCP",
            source,
        };
        let mut stream = self.host.tcp_connect(upstream).await?;
        let len = u16::try_from(bytes.len()).map_err(|_| DnsError::BadUpstreamReply {
            upstream,
            reason: "query longer than 65535 bytes".to_owned(),
        })?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream.write_all(&framed).await.map_err(failed)?;

        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.map_err(failed)?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await.map_err(failed)?;
        check_answer(&answer, id, questions)
            .map_err(|reason| DnsError::BadUpstreamReply { upstream, reason })?;
        Ok(answer)
    }
}

fn header_id(message: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*message.first()?, *message.get(1)?]))
}

/// The TC bit: the second bit from the right of the third header byte.
pub(crate) fn is_truncated(message: &[u8]) -> bool {
    message.get(2).is_some_and(|flags| flags & 0x02 != 0)
}

/// Checks that `answer` is a response to our query: same ID, same question.
fn check_answer(answer: &[u8], id: u16, questions: &[Query]) -> Result<(), String> {
    let message = Message::from_vec(answer).map_err(|e| format!("unparsable response: {e}"))?;
    if message.id() != id {
        return Err(format!("answer has ID {}, expected {id}", message.id()));
    }
    if message.message_type() != MessageType::Response {
        return Err("message is a query, not a response".to_owned());
    }
    let same_questions = message.queries().len() == questions.len()
        && message.queries().iter().zip(questions).all(|(a, q)| {
            a.query_type() == q.query_type()
                && a.query_class() == q.query_class()
                && a.name().to_lowercase() == q.name().to_lowercase()
        });
    if !same_questions {
        return Err("answer is for a different question".to_owned());
    }
    Ok(())
}

/// Query IDs from SipHash with std's per-process random keys over a
/// counter. Not a CSPRNG, but unpredictable without the keys; the random
/// source port of each query adds 16 more bits.
#[derive(Debug)]
struct IdSource {
    keys: RandomState,
    counter: AtomicU64,
}

impl IdSource {
    fn new() -> Self {
        Self {
            keys: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> u16 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Truncating the 64-bit hash to 16 bits is intended.
        self.keys.hash_one(n) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;

    fn message(id: u16, kind: MessageType, name: &str) -> Message {
        let mut message = Message::new();
        message.set_id(id).set_message_type(kind);
        message.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        message
    }

    #[test]
    fn accepts_matching_answer_any_case() {
        let query = message(7, MessageType::Query, "Example.COM.");
        let answer = message(7, MessageType::Response, "example.com.")
            .to_vec()
            .unwrap();
        assert_eq!(check_answer(&answer, 7, query.queries()), Ok(()));
    }

    #[test]
    fn rejects_wrong_id_or_question() {
        let query = message(7, MessageType::Query, "example.com.");
        let wrong_id = message(8, MessageType::Response, "example.com.")
            .to_vec()
            .unwrap();
        assert!(check_answer(&wrong_id, 7, query.queries()).is_err());
        let wrong_name = message(7, MessageType::Response, "example.org.")
            .to_vec()
            .unwrap();
        assert!(check_answer(&wrong_name, 7, query.queries()).is_err());
        let not_response = message(7, MessageType::Query, "example.com.")
            .to_vec()
            .unwrap();
        assert!(check_answer(&not_response, 7, query.queries()).is_err());
    }

    #[test]
    fn truncation_bit() {
        let mut answer = message(7, MessageType::Response, "example.com.");
        assert!(!is_truncated(&answer.to_vec().unwrap()));
        answer.set_truncated(true);
        assert!(is_truncated(&answer.to_vec().unwrap()));
    }

    #[test]
    fn ids_vary() {
        let ids = IdSource::new();
        let drawn: std::collections::HashSet<u16> = (0..100).map(|_| ids.next()).collect();
        assert!(drawn.len() > 90, "only {} distinct IDs in 100", drawn.len());
    }
}
