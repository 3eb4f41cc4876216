//! Safe layer unpacking into overlay-format directories, and flattening of such directories.
//!
//! [`unpack_layer`] turns one layer's tar stream into a directory that overlayfs can use as a
//! lower layer when mounted with `userxattr`: OCI whiteouts (`.wh.NAME`) become 0:0 character
//! devices and opaque markers (`.wh..wh..opq`) become the `user.overlay.opaque=y` xattr.
//! [`flatten_layers`] merges such directories into one plain tree for hosts without
//! unprivileged overlayfs.
//!
//! Nothing is ever written outside the destination. Every directory lookup goes through
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` on the destination, so symlinks and `..`
//! met on the way resolve as after `chroot(dest)`. Entries are created relative to their
//! parent directory's descriptor, without following a symlink in the last component. Beyond
//! that, the unpacker applies these rules, which the tests check one by one:
//!
//! - A name whose `..` components climb above the root is rejected, naming the layer and the
//!   entry. A leading `/` is dropped, so `/etc/x` lands at `dest/etc/x`, as Docker and
//!   containerd place it. A hardlink whose target climbs out is rejected naming both.
//! - Character and block devices are skipped with a warning, including 0:0 character devices
//!   from the input: those are whiteouts only when this unpacker made them.
//! - Set-user-ID bits are cleared everywhere, set-group-ID bits on everything but directories
//!   (where the bit only makes new files inherit the group), each counted as a warning.
//! - Owners from the tar header are kept when the ID exists in the current user namespace
//!   (`/proc/self/uid_map`, `gid_map`) and `chown` succeeds. Otherwise the entry keeps the
//!   unpacking user as owner, which is root in a user namespace that maps the user to 0, and
//!   counts as a squashed owner.
//! - Extended attributes from PAX `SCHILY.xattr.*` records are kept in the `user.*` namespace,
//!   except `user.overlay.*`, which would let a layer forge overlayfs whiteouts, opaque markers
//!   or redirects. `trusted.*` and `security.*` (file capabilities, SELinux labels) need
//!   privileges on the host and `system.*` holds ACLs that do not survive ID mapping, so they
//!   are skipped and counted.
//! - Directory modes and times are applied after the last entry, so a read-only directory in
//!   a layer does not stop later entries from being created inside it.

mod compression;
mod creation;
mod decoder_thread;
mod entry;
mod flatten;
mod metadata;
mod owner;
mod remove;
mod resolve;
mod sys;
mod whiteout;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader};

pub use compression::Compression;
pub use flatten::{flatten_layers, FlattenError, FlattenReport};
pub use owner::{IdMapError, IdMaps, IdRange};
pub use remove::{remove_tree, RemoveTreeError};
pub use whiteout::{OPAQUE_XATTR, WHITEOUT_XATTR};

use compression::Decoder;
use entry::Unpacker;
use resolve::Root;

/// Settings for one [`unpack_layer`] call.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Digest of the (compressed) layer blob, named in every error.
    pub layer_digest: Digest,
    /// ID maps that decide which owners can be kept; `None` reads those of the current user
    /// namespace from `/proc/self`.
    pub id_maps: Option<IdMaps>,
}

impl UnpackOptions {
    pub fn new(layer_digest: Digest) -> Self {
        Self {
            layer_digest,
            id_maps: None,
        }
    }
}

/// Result of one [`unpack_layer`] call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackReport {
    /// SHA-256 of the whole uncompressed tar stream, as image configs list it in `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// Length of the uncompressed tar stream in bytes.
    pub uncompressed_size: u64,
    /// The compression actually decoded, which the stream's magic bytes may have corrected.
    pub compression: Compression,
    pub counts: EntryCounts,
    pub warnings: UnpackWarnings,
}

/// Entries created, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryCounts {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub fifos: u64,
    /// `.wh.NAME` entries turned into overlay whiteouts.
    pub whiteouts: u64,
    /// Directories marked opaque, by `.wh..wh..opq` or by a whiteout of a directory that the
    /// same layer recreates.
    pub opaque_directories: u64,
}

/// Entries that were changed or left out for safety or lack of privilege. Each count is the
/// number of entries affected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackWarnings {
    /// Character and block devices, and hardlinks to them.
    pub skipped_devices: u64,
    /// Entries whose owner could not be kept and is the unpacking user instead.
    pub squashed_owners: u64,
    /// Entries whose set-user-ID or set-group-ID bit was cleared.
    pub cleared_setid_bits: u64,
    /// Extended attributes left out (`trusted.*`, `security.*`, `system.*`, `user.overlay.*`, or
    /// any the file system rejected).
    pub skipped_xattrs: u64,
    /// Whiteouts stored as a zero-size file with the `user.overlay.whiteout` xattr because
    /// `mknod` of a 0:0 device was not permitted. Overlayfs honours them from Linux 6.7 on;
    /// [`flatten_layers`] honours them always.
    pub xattr_whiteouts: u64,
    /// Entries of types that have no meaning in a container image (tape volume headers, AUFS
    /// metadata such as `.wh..wh.plnk`), left out.
    pub skipped_entries: u64,
}

impl UnpackWarnings {
    /// Adds the counts of `other`, for a summary over several layers.
    pub fn add(&mut self, other: &UnpackWarnings) {
        self.skipped_devices += other.skipped_devices;
        self.squashed_owners += other.squashed_owners;
        self.cleared_setid_bits += other.cleared_setid_bits;
        self.skipped_xattrs += other.skipped_xattrs;
        self.xattr_whiteouts += other.xattr_whiteouts;
        self.skipped_entries += other.skipped_entries;
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for UnpackWarnings {
    /// Writes one line such as `skipped 2 device nodes, squashed 5 owners`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.skipped_devices, "skipped device node(s)"),
            (
                self.squashed_owners,
                "owner(s) squashed to the unpacking user",
            ),
            (self.cleared_setid_bits, "setuid/setgid bit(s) cleared"),
            (self.skipped_xattrs, "extended attribute(s) skipped"),
            (
                self.xattr_whiteouts,
                "whiteout(s) stored as xattr whiteouts",
            ),
            (self.skipped_entries, "unsupported entry(ies) skipped"),
        ];
        let mut first = true;
        for (count, what) in parts.into_iter().filter(|(count, _)| *count > 0) {
            if !first {
                f.write_str(", ")?;
            }
            write!(f, "{count} {what}")?;
            first = false;
        }
        Ok(())
    }
}

/// Errors from [`unpack_layer`]. Each names the layer; those about one entry name it too.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("failed to open the unpack destination {path}")]
    Destination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: failed to start the decompression thread")]
    Thread {
        layer: Digest,
        #[source]
        source: io::Error,
    },
    #[error("failed to learn which owners the current user namespace maps")]
    IdMaps(#[source] IdMapError),
    #[error("layer {layer}: failed to read the {compression} tar stream; the blob is truncated or corrupt, so pull it again")]
    Read {
        layer: Digest,
        compression: Compression,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: entry {entry:?} ends after {written} of its {size} bytes; the layer is truncated")]
    Truncated {
        layer: Digest,
        entry: String,
        written: u64,
        size: u64,
    },
    #[error("layer {layer}: entry {entry:?} has an invalid tar header")]
    InvalidHeader {
        layer: Digest,
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: entry {entry:?} climbs out of the layer root with '..'; the image is malformed or hostile")]
    EscapesRoot { layer: Digest, entry: String },
    #[error("layer {layer}: hardlink {entry:?} points to {target:?}, outside the layer root; the image is malformed or hostile")]
    HardlinkEscapesRoot {
        layer: Digest,
        entry: String,
        target: String,
    },
    #[error(
        "layer {layer}: hardlink {entry:?} points to {target:?}, which does not exist in the layer"
    )]
    HardlinkTargetMissing {
        layer: Digest,
        entry: String,
        target: String,
    },
    #[error("layer {layer}: resolving entry {entry:?} runs into a symlink loop (ELOOP)")]
    SymlinkLoop { layer: Digest, entry: String },
    #[error("layer {layer}: entry {entry:?} has a name longer than 255 bytes or more than 256 nested components (ENAMETOOLONG)")]
    NameTooLong { layer: Digest, entry: String },
    #[error("layer {layer}: entry {entry:?} has an invalid name: {reason}")]
    InvalidName {
        layer: Digest,
        entry: String,
        reason: &'static str,
    },
    #[error("layer {layer}: failed to {operation} for entry {entry:?}")]
    Filesystem {
        layer: Digest,
        entry: String,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Unpacks one layer's tar stream into `dest`, an empty directory, converting OCI whiteouts to
/// overlayfs's format. The module documentation lists the safety rules.
///
/// The whole stream is read, including anything after the tar end-of-archive blocks, so the
/// returned `diff_id` covers every byte, and so does a blob digest that the caller computes
/// on `reader`.
/// Entries after the end-of-archive blocks are hashed but not unpacked, as Docker does.
/// On error `dest` contains a partial tree, which the caller removes with [`remove_tree`].
pub fn unpack_layer<R: Read + Send>(
    reader: R,
    compression: Compression,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let layer = &options.layer_digest;
    let id_maps = match &options.id_maps {
        Some(maps) => maps.clone(),
        None => IdMaps::current().map_err(UnpackError::IdMaps)?,
    };
    let root = Root::open(dest).map_err(|source| UnpackError::Destination {
        path: dest.to_owned(),
        source,
    })?;

    let read_error = |compression, source| UnpackError::Read {
        layer: layer.clone(),
        compression,
        source,
    };
    let (decoder, compression) =
        Decoder::new(reader, compression).map_err(|source| read_error(compression, source))?;
    tracing::debug!(layer = %layer, dest = %dest.display(), %compression, "unpacking layer");
    let unpacker = Unpacker::new(root, layer.clone(), compression, id_maps);

    // The decoder thread inflates while this thread hashes the tar stream and creates the
    // files. On an error here, dropping the stream stops that thread before the scope ends.
    let (unpacker, stream) = std::thread::scope(|scope| {
        let (decoded, _thread) =
            decoder_thread::spawn(scope, decoder).map_err(|source| UnpackError::Thread {
                layer: layer.clone(),
                source,
            })?;
        unpack_entries(unpacker, HashingReader::new(decoded), layer, compression)
    })?;
    let (counts, warnings) = unpacker.finish()?;
    let (diff_id, uncompressed_size) = stream.finish();

    if !warnings.is_empty() {
        tracing::info!(layer = %layer, %warnings, "unpacked layer with warnings");
    }
    Ok(UnpackReport {
        diff_id,
        uncompressed_size,
        compression,
        counts,
        warnings,
    })
}

/// Creates every entry of the tar `stream`, then reads the rest of the stream, so that the
/// hash covers what follows the end-of-archive blocks too.
fn unpack_entries<R: Read>(
    mut unpacker: Unpacker,
    mut stream: HashingReader<R>,
    layer: &Digest,
    compression: Compression,
) -> Result<(Unpacker, HashingReader<R>), UnpackError> {
    let read_error = |source| UnpackError::Read {
        layer: layer.clone(),
        compression,
        source,
    };
    {
        let mut archive = tar::Archive::new(&mut stream);
        let entries = archive.entries().map_err(read_error)?;
        for entry in entries {
            let entry = entry.map_err(read_error)?;
            unpacker.apply(entry)?;
        }
    }
    io::copy(&mut stream, &mut io::sink()).map_err(read_error)?;
    Ok((unpacker, stream))
}

/// Formats an entry name for messages: lossy UTF-8, cut after 160 bytes.
fn display_name(name: &[u8]) -> String {
    const LIMIT: usize = 160;
    if name.len() <= LIMIT {
        return String::from_utf8_lossy(name).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&name[..LIMIT]),
        name.len()
    )
}

#[cfg(test)]
pub(crate) mod tests;
