//! Layer compression: media types, magic-byte sniffing and the matching decoder.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

use serde::{Deserialize, Serialize};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// Both POSIX (`ustar\0`) and GNU (`ustar `) tar headers start their magic with these bytes.
const USTAR_MAGIC: &[u8] = b"ustar";
const USTAR_OFFSET: usize = 257;

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

    /// Recognises a stream by its first bytes: the gzip and zstd magic numbers, or the
    /// `ustar` magic at offset 257 of a tar header. Returns `None` when none of them matches.
    pub fn sniff(prefix: &[u8]) -> Option<Self> {
        if prefix.starts_with(GZIP_MAGIC) {
            Some(Self::Gzip)
        } else if prefix.starts_with(ZSTD_MAGIC) {
            Some(Self::Zstd)
        } else if prefix.get(USTAR_OFFSET..USTAR_OFFSET + USTAR_MAGIC.len()) == Some(USTAR_MAGIC) {
            Some(Self::None)
        } else {
            None
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
    Gzip(Box<flate2::bufread::MultiGzDecoder<BufReader<R>>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
    None(BufReader<R>),
}

impl<R: Read> Decoder<R> {
    /// Chooses the decoder from the stream's first bytes when they identify it, and from
    /// `declared` otherwise. A layer pushed under the wrong media type (a gzip layer labelled
    /// `tar`, say) still unpacks, because the magic bytes decide.
    pub(crate) fn new(reader: R, declared: Compression) -> io::Result<(Self, Compression)> {
        let mut buffered = BufReader::with_capacity(64 * 1024, reader);
        let chosen = Compression::sniff(buffered.fill_buf()?).unwrap_or(declared);
        if chosen != declared {
            tracing::warn!(%declared, detected = %chosen, "layer compression differs from its media type; using the detected one");
        }

        let decoder = match chosen {
            Compression::Gzip => {
                Self::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
            }
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
        assert_eq!(
            Compression::sniff(&[0x1f, 0x8b, 8, 0]),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        let mut header = [0u8; 512];
        header[257..263].copy_from_slice(b"ustar\0");
        assert_eq!(Compression::sniff(&header), Some(Compression::None));
        assert_eq!(Compression::sniff(b"etc/passwd\0"), None);
        assert_eq!(Compression::sniff(&[]), None);
    }
}
