//! Layer compression: media types, magic-byte sniffing and the matching decoder.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

use serde::{Deserialize, Serialize};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Compression of a layer's tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    /// Maps an OCI or Docker layer media type to its compression, or `None` for a media type
    /// that is not a layer this crate can unpack (an encrypted layer, for example).
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// Recognises gzip and zstd by their magic bytes; anything else is taken as a plain tar.
    pub fn sniff(prefix: &[u8]) -> Self {
        if prefix.starts_with(GZIP_MAGIC) {
            Self::Gzip
        } else if prefix.starts_with(ZSTD_MAGIC) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::None => "uncompressed",
        })
    }
}

/// A decompressing reader. Reading it to its end reads the compressed stream to its end too,
/// because both decoders go on to look for a further gzip member or zstd frame.
pub(crate) enum Decoder<R: Read> {
    Gzip(flate2::bufread::MultiGzDecoder<BufReader<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
    None(BufReader<R>),
}

impl<R: Read> Decoder<R> {
    /// Chooses the decoder from the stream's first bytes when they are clearly gzip or zstd,
    /// and from `declared` otherwise. Registries mislabel layers often enough (a gzip layer
    /// under a `tar` media type) that the magic bytes are the better witness.
    pub(crate) fn new(reader: R, declared: Compression) -> io::Result<(Self, Compression)> {
        let mut buffered = BufReader::with_capacity(64 * 1024, reader);
        let sniffed = Compression::sniff(buffered.fill_buf()?);
        let chosen = if sniffed == Compression::None {
            declared
        } else {
            sniffed
        };
        if chosen != declared {
            tracing::warn!(%declared, detected = %chosen, "layer compression differs from its media type; using the detected one");
        }

        let decoder = match chosen {
            Compression::Gzip => Self::Gzip(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Self::Zstd(zstd::stream::read::Decoder::with_buffer(buffered)?),
            Compression::None => Self::None(buffered),
        };
        Ok((decoder, chosen))
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(decoder) => decoder.read(buf),
            Self::Zstd(decoder) => decoder.read(buf),
            Self::None(reader) => reader.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_map_to_compression() {
        let cases = [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
                None,
            ),
            ("application/json", None),
        ];
        for (media_type, expected) in cases {
            assert_eq!(
                Compression::from_media_type(media_type),
                expected,
                "{media_type}"
            );
        }
    }

    #[test]
    fn sniff_recognises_magic_bytes() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/passwd\0"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }
}
