//! Content digests (`sha256:<64 hex digits>`) and a hashing reader that checks them.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Errors from parsing a digest string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {value:?}: expected sha256:<64 lowercase hex digits>")]
    Invalid { value: String },
    #[error("unsupported digest algorithm {algorithm:?} in {value:?}: only sha256 is supported")]
    UnsupportedAlgorithm { value: String, algorithm: String },
}

/// A SHA-256 content digest, the only algorithm registries use in practice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Computes the digest of a byte slice.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm name, always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, hex)) = value.split_once(':') else {
            return Err(DigestError::Invalid {
                value: value.to_owned(),
            });
        };
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm {
                value: value.to_owned(),
                algorithm: algorithm.to_owned(),
            });
        }
        let well_formed = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(DigestError::Invalid {
                value: value.to_owned(),
            });
        }
        Ok(Self {
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 over a stream, for checking a blob while it is written or read.
#[derive(Default, Clone)]
pub struct DigestHasher {
    hasher: Sha256,
    length: u64,
}

impl DigestHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.length += bytes.len() as u64;
    }

    /// Number of bytes hashed so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn finish(self) -> Digest {
        Digest::from_hasher(self.hasher)
    }
}

impl fmt::Debug for DigestHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestHasher")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// A reader that hashes every byte it passes on; `finish` yields the digest of all of them.
pub struct HashingReader<R> {
    inner: R,
    hasher: DigestHasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: DigestHasher::new(),
        }
    }

    /// Returns the digest and length of everything read so far.
    pub fn finish(self) -> (Digest, u64) {
        let length = self.hasher.length();
        (self.hasher.finish(), length)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buf)?;
        self.hasher.update(&buf[..count]);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input() {
        let digest = Digest::of_bytes(b"");
        assert_eq!(
            digest.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn digest_parse_rejects_bad_input() {
        assert!(matches!(
            "sha512:00".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert!(matches!(
            "sha256:ABC".parse::<Digest>(),
            Err(DigestError::Invalid { .. })
        ));
        assert!(matches!(
            "nocolon".parse::<Digest>(),
            Err(DigestError::Invalid { .. })
        ));
    }

    #[test]
    fn hashing_reader_matches_digest() {
        let data = b"hello world".repeat(1000);
        let mut reader = HashingReader::new(&data[..]);
        let mut sink = Vec::new();
        reader.read_to_end(&mut sink).unwrap();
        let (digest, length) = reader.finish();
        assert_eq!(digest, Digest::of_bytes(&data));
        assert_eq!(length, data.len() as u64);
    }
}
