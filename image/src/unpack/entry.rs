//! Creating one tar entry inside the layer root.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, Gid, Uid};
use tar::EntryType;

use super::creation::CreationMode;
use super::metadata::EntryMetadata;
use super::owner::IdMaps;
use super::remove::remove_at;
use super::resolve::{NameProblem, Root, RootPath};
use super::whiteout::{self, WhiteoutForm, WhiteoutName};
use super::{display_name, sys, Compression, EntryCounts, UnpackError, UnpackWarnings};
use crate::digest::Digest;

/// Previous occupant of the path where an entry is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Nothing,
    /// A directory, kept because the new entry is a directory too.
    Directory,
    /// A whiteout, removed; a directory created in its place must hide the lower layers.
    Whiteout,
    /// Anything else, removed.
    Other,
}

/// Mode and time of a directory entry, and the inode they belong to: if a later entry
/// replaced the directory, the inode differs and they are dropped.
#[derive(Debug, Clone, Copy)]
struct DeferredDirectory {
    mode: u32,
    mtime: TimeSpec,
    device: u64,
    inode: u64,
}

/// Target of an owner or time change: an open descriptor, or a name in a directory that is
/// never followed if it is a symlink.
#[derive(Clone, Copy)]
enum Target<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a CStr),
}

/// Bytes copied per read from a file entry into its file.
const COPY_BUFFER_SIZE: usize = 128 * 1024;

/// The directory that the previous entry went into, kept open because a tar stream lists the
/// entries of one directory together. Every removal of a path drops it, because a removed
/// component could make the same path resolve to another directory.
struct CachedParent {
    path: RootPath,
    dir: Rc<OwnedFd>,
    /// Owner that the kernel gives new entries here, learned from the first one created.
    new_owner: Option<(u32, u32)>,
}

/// State of one layer being unpacked.
pub(crate) struct Unpacker {
    root: Root,
    layer: Digest,
    compression: Compression,
    id_maps: IdMaps,
    counts: EntryCounts,
    warnings: UnpackWarnings,
    /// Directory modes and times, applied after the last entry, by entry path.
    deferred_directories: BTreeMap<RootPath, DeferredDirectory>,
    /// Device entries that were skipped, so hardlinks to them are skipped too.
    skipped_paths: HashSet<RootPath>,
    /// Xattr whiteouts created so far, by entry path.
    xattr_whiteouts: HashSet<RootPath>,
    parent: Option<CachedParent>,
    copy_buffer: Vec<u8>,
    creation_mode: CreationMode,
}

impl Unpacker {
    pub(crate) fn new(
        root: Root,
        layer: Digest,
        compression: Compression,
        id_maps: IdMaps,
    ) -> Self {
        let creation_mode = CreationMode::for_root(root.fd());
        Self {
            root,
            layer,
            compression,
            id_maps,
            counts: EntryCounts::default(),
            warnings: UnpackWarnings::default(),
            deferred_directories: BTreeMap::new(),
            skipped_paths: HashSet::new(),
            xattr_whiteouts: HashSet::new(),
            parent: None,
            copy_buffer: Vec::new(),
            creation_mode,
        }
    }

    /// Creates one entry, or converts it if it is a whiteout.
    pub(crate) fn apply<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let raw_name = entry.path_bytes().into_owned();
        let name = display_name(&raw_name);
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            return Ok(());
        }

        let path = RootPath::from_tar_name(&raw_name).map_err(|problem| match problem {
            NameProblem::EscapesRoot => UnpackError::EscapesRoot {
                layer: self.layer.clone(),
                entry: name.clone(),
            },
            NameProblem::TooLong => UnpackError::NameTooLong {
                layer: self.layer.clone(),
                entry: name.clone(),
            },
            NameProblem::ContainsNul => self.invalid_name(&name, "it contains a NUL byte"),
        })?;

        // AUFS bookkeeping directories carry no image content.
        let parent_components = path.parent();
        if parent_components
            .to_bytes()
            .split(|&b| b == b'/')
            .any(whiteout::is_aufs_metadata)
        {
            self.warnings.skipped_entries += 1;
            return Ok(());
        }
        if let Some(kind) = path.file_name().and_then(whiteout::classify) {
            return self.apply_whiteout(&path, kind, &name);
        }

        // Pre-POSIX tar marks directories only with a trailing slash on a regular entry.
        let old_style_directory = entry_type == EntryType::Regular && raw_name.ends_with(b"/");
        let entry_type = if old_style_directory {
            EntryType::Directory
        } else {
            entry_type
        };

        match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let metadata = self.metadata(&mut entry, false, &name)?;
                self.create_file(&path, &mut entry, &metadata, &name)
            }
            EntryType::Directory => {
                let metadata = self.metadata(&mut entry, true, &name)?;
                self.create_directory(&path, &metadata, &name)
            }
            EntryType::Symlink => {
                let metadata = self.metadata(&mut entry, false, &name)?;
                let target = entry.link_name_bytes().map(|target| target.into_owned());
                self.create_symlink(&path, target, &metadata, &name)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(|target| target.into_owned());
                self.create_hardlink(&path, target, &name)
            }
            EntryType::Fifo => {
                let metadata = self.metadata(&mut entry, false, &name)?;
                self.create_fifo(&path, &metadata, &name)
            }
            EntryType::Char | EntryType::Block => {
                tracing::debug!(layer = %self.layer, entry = %name, "skipping device node");
                self.warnings.skipped_devices += 1;
                self.skipped_paths.insert(path);
                Ok(())
            }
            other => {
                tracing::debug!(layer = %self.layer, entry = %name, entry_type = ?other, "skipping unsupported tar entry type");
                self.warnings.skipped_entries += 1;
                Ok(())
            }
        }
    }

    /// Applies the deferred directory modes and times, deepest first, and returns the totals.
    pub(crate) fn finish(mut self) -> Result<(EntryCounts, UnpackWarnings), UnpackError> {
        let mut directories: Vec<_> = std::mem::take(&mut self.deferred_directories)
            .into_iter()
            .collect();
        directories.sort_by_key(|(path, _)| Reverse(path.depth()));

        for (path, deferred) in directories {
            let name = display_name(&path.to_bytes());
            let dir = match self.root.open_dir(&path, libc::O_RDONLY | libc::O_NOFOLLOW) {
                Ok(dir) => dir,
                // A later entry replaced the directory; its metadata went with it.
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    continue
                }
                Err(error) => return Err(self.fs_error(&name, "open the directory", error)),
            };
            let stat = fstat(dir.as_raw_fd())
                .map_err(|errno| self.fs_error(&name, "inspect the directory", errno.into()))?;
            if (stat.st_dev, stat.st_ino) != (deferred.device, deferred.inode) {
                continue;
            }
            fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(deferred.mode))
                .map_err(|errno| self.fs_error(&name, "set the directory mode", errno.into()))?;
            futimens(dir.as_raw_fd(), &deferred.mtime, &deferred.mtime)
                .map_err(|errno| self.fs_error(&name, "set the directory times", errno.into()))?;
        }
        Ok((self.counts, self.warnings))
    }

    fn metadata<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        is_directory: bool,
        name: &str,
    ) -> Result<EntryMetadata, UnpackError> {
        let metadata = EntryMetadata::from_entry(entry, is_directory).map_err(|source| {
            UnpackError::InvalidHeader {
                layer: self.layer.clone(),
                entry: name.to_owned(),
                source,
            }
        })?;
        if metadata.cleared_setid {
            self.warnings.cleared_setid_bits += 1;
        }
        self.warnings.skipped_xattrs += metadata.skipped_xattrs;
        Ok(metadata)
    }

    fn create_file<R: Read>(
        &mut self,
        path: &RootPath,
        entry: &mut tar::Entry<'_, R>,
        metadata: &EntryMetadata,
        name: &str,
    ) -> Result<(), UnpackError> {
        let (parent, file_name) = self.parent_of(path, name)?;
        let exact_mode = self.creation_mode.exact(metadata.mode);
        let create = || {
            sys::open_beneath(
                parent.as_fd(),
                &file_name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                exact_mode.unwrap_or(0o600),
            )
        };
        let fd = match create() {
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => {
                self.clear_slot(&parent, &file_name, path, false, name)?;
                create()
            }
            result => result,
        }
        .map_err(|error| self.fs_error(name, "create the file", error))?;
        let mut file = File::from(fd);

        let expected = entry.size();
        let written = self.copy_contents(entry, &mut file, name)?;
        if written != expected && entry.header().entry_type() != EntryType::GNUSparse {
            return Err(UnpackError::Truncated {
                layer: self.layer.clone(),
                entry: name.to_owned(),
                written,
                size: expected,
            });
        }

        // chown clears set-ID bits, so it comes before chmod. A file created with its final
        // mode has none, and needs no chmod. The time comes last.
        let owner = self.new_entry_owner(&path.parent(), || fstat(file.as_raw_fd()), name)?;
        self.set_owner(Target::Fd(file.as_fd()), metadata, Some(owner), name)?;
        if exact_mode.is_none() {
            fchmod(file.as_raw_fd(), Mode::from_bits_truncate(metadata.mode))
                .map_err(|errno| self.fs_error(name, "set the file mode", errno.into()))?;
        }
        self.set_xattrs(file.as_fd(), metadata, name)?;
        futimens(file.as_raw_fd(), &metadata.mtime, &metadata.mtime)
            .map_err(|errno| self.fs_error(name, "set the file times", errno.into()))?;
        self.counts.files += 1;
        Ok(())
    }

    /// Copies the entry's data into `file` through a buffer that all entries share.
    fn copy_contents<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        name: &str,
    ) -> Result<u64, UnpackError> {
        let mut buffer = std::mem::take(&mut self.copy_buffer);
        buffer.resize(COPY_BUFFER_SIZE, 0);
        let result = self.copy_with(&mut buffer, entry, file, name);
        self.copy_buffer = buffer;
        result
    }

    fn copy_with<R: Read>(
        &self,
        buffer: &mut [u8],
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        name: &str,
    ) -> Result<u64, UnpackError> {
        let mut written = 0u64;
        loop {
            let count = match entry.read(buffer) {
                Ok(0) => return Ok(written),
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::Read {
                        layer: self.layer.clone(),
                        compression: self.compression,
                        source,
                    })
                }
            };
            file.write_all(&buffer[..count])
                .map_err(|error| self.fs_error(name, "write the file contents", error))?;
            written += count as u64;
        }
    }

    fn create_directory(
        &mut self,
        path: &RootPath,
        metadata: &EntryMetadata,
        name: &str,
    ) -> Result<(), UnpackError> {
        let dir = if path.is_root() {
            self.root
                .open_dir(path, libc::O_RDONLY)
                .map_err(|error| self.fs_error(name, "open the layer root", error))?
        } else {
            let (parent, dir_name) = self.parent_of(path, name)?;
            let create = || mkdirat(Some(parent.as_raw_fd()), dir_name.as_c_str(), Mode::S_IRWXU);
            let existing = match create() {
                Ok(()) => Existing::Nothing,
                Err(Errno::EEXIST) => {
                    let existing = self.clear_slot(&parent, &dir_name, path, true, name)?;
                    if existing != Existing::Directory {
                        create().map_err(|errno| {
                            self.fs_error(name, "create the directory", errno.into())
                        })?;
                    }
                    existing
                }
                Err(errno) => {
                    return Err(self.fs_error(name, "create the directory", errno.into()))
                }
            };
            let dir = sys::open_beneath(
                parent.as_fd(),
                &dir_name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(|error| self.fs_error(name, "open the directory", error))?;
            if existing == Existing::Whiteout {
                // The layer deleted the lower path and then recreated it as a directory.
                whiteout::mark_opaque(dir.as_fd())
                    .map_err(|error| self.fs_error(name, "mark the directory opaque", error))?;
                self.counts.opaque_directories += 1;
            }
            dir
        };

        let stat = fstat(dir.as_raw_fd())
            .map_err(|errno| self.fs_error(name, "inspect the directory", errno.into()))?;
        let owner = (stat.st_uid, stat.st_gid);
        self.set_owner(Target::Fd(dir.as_fd()), metadata, Some(owner), name)?;
        self.set_xattrs(dir.as_fd(), metadata, name)?;
        let deferred = DeferredDirectory {
            mode: metadata.mode,
            mtime: metadata.mtime,
            device: stat.st_dev,
            inode: stat.st_ino,
        };
        self.deferred_directories.insert(path.clone(), deferred);
        self.counts.directories += 1;

        // The directory's own entries usually come next.
        self.parent = Some(CachedParent {
            path: path.clone(),
            dir: Rc::new(dir),
            new_owner: None,
        });
        Ok(())
    }

    fn create_symlink(
        &mut self,
        path: &RootPath,
        target: Option<Vec<u8>>,
        metadata: &EntryMetadata,
        name: &str,
    ) -> Result<(), UnpackError> {
        let target = target
            .filter(|target| !target.is_empty())
            .ok_or_else(|| self.invalid_name(name, "the symlink has no target"))?;
        let target = sys::c_string(&target)
            .map_err(|_| self.invalid_name(name, "the symlink target contains a NUL byte"))?;
        let (parent, link_name) = self.parent_of(path, name)?;

        // The target is stored verbatim: it is resolved later, inside the container's root.
        let create = || {
            symlinkat(
                target.as_c_str(),
                Some(parent.as_raw_fd()),
                link_name.as_c_str(),
            )
        };
        match create() {
            Err(Errno::EEXIST) => {
                self.clear_slot(&parent, &link_name, path, false, name)?;
                create()
            }
            result => result,
        }
        .map_err(|errno| self.fs_error(name, "create the symlink", errno.into()))?;
        let at = Target::At(parent.as_fd(), &link_name);
        let lstat = || {
            fstatat(
                Some(parent.as_raw_fd()),
                link_name.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
        };
        let owner = self.new_entry_owner(&path.parent(), lstat, name)?;
        self.set_owner(at, metadata, Some(owner), name)?;
        self.set_times_at(at, metadata, name)?;
        // Linux permits user.* xattrs only on regular files and directories.
        self.warnings.skipped_xattrs += metadata.xattrs.len() as u64;
        self.counts.symlinks += 1;
        Ok(())
    }

    fn create_hardlink(
        &mut self,
        path: &RootPath,
        target: Option<Vec<u8>>,
        name: &str,
    ) -> Result<(), UnpackError> {
        let raw_target =
            target.ok_or_else(|| self.invalid_name(name, "the hardlink has no target"))?;
        let target_name = display_name(&raw_target);
        let target = RootPath::from_tar_name(&raw_target).map_err(|problem| match problem {
            NameProblem::EscapesRoot => UnpackError::HardlinkEscapesRoot {
                layer: self.layer.clone(),
                entry: name.to_owned(),
                target: target_name.clone(),
            },
            NameProblem::TooLong => UnpackError::NameTooLong {
                layer: self.layer.clone(),
                entry: target_name.clone(),
            },
            NameProblem::ContainsNul => {
                self.invalid_name(name, "the hardlink target contains a NUL byte")
            }
        })?;
        if target == *path {
            return Ok(());
        }
        if self.skipped_paths.contains(&target) {
            self.warnings.skipped_devices += 1;
            self.skipped_paths.insert(path.clone());
            return Ok(());
        }
        let Some(target_file) = target.file_name() else {
            return Err(self.invalid_name(name, "the hardlink points to the layer root"));
        };
        let layer = self.layer.clone();
        let missing = || UnpackError::HardlinkTargetMissing {
            layer: layer.clone(),
            entry: name.to_owned(),
            target: target_name.clone(),
        };

        // Resolve the target's directory inside the root; linkat without AT_SYMLINK_FOLLOW
        // links the last component itself, even when it is a symlink.
        let target_dir = match self.root.open_dir(&target.parent(), libc::O_PATH) {
            Ok(dir) => dir,
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Err(missing())
            }
            Err(error) => return Err(self.fs_error(name, "resolve the hardlink target", error)),
        };
        let target_file = sys::c_string(target_file)
            .map_err(|error| self.fs_error(name, "resolve the hardlink target", error))?;
        let (parent, link_name) = self.parent_of(path, name)?;
        let create = || {
            linkat(
                Some(target_dir.as_raw_fd()),
                target_file.as_c_str(),
                Some(parent.as_raw_fd()),
                link_name.as_c_str(),
                AtFlags::empty(),
            )
        };
        let created = match create() {
            Err(Errno::EEXIST) => {
                self.clear_slot(&parent, &link_name, path, false, name)?;
                create()
            }
            result => result,
        };
        match created {
            Ok(()) => {
                self.counts.hardlinks += 1;
                Ok(())
            }
            Err(Errno::ENOENT) => Err(missing()),
            Err(errno) => Err(self.fs_error(name, "create the hardlink", errno.into())),
        }
    }

    fn create_fifo(
        &mut self,
        path: &RootPath,
        metadata: &EntryMetadata,
        name: &str,
    ) -> Result<(), UnpackError> {
        let (parent, fifo_name) = self.parent_of(path, name)?;
        self.clear_slot(&parent, &fifo_name, path, false, name)?;
        mknodat(
            Some(parent.as_raw_fd()),
            fifo_name.as_c_str(),
            SFlag::S_IFIFO,
            Mode::S_IRUSR | Mode::S_IWUSR,
            0,
        )
        .map_err(|errno| self.fs_error(name, "create the FIFO", errno.into()))?;

        let at = Target::At(parent.as_fd(), &fifo_name);
        self.set_owner(at, metadata, None, name)?;
        // Opening a FIFO would block, so its mode is set by name, on the node just created.
        fchmodat(
            Some(parent.as_raw_fd()),
            fifo_name.as_c_str(),
            Mode::from_bits_truncate(metadata.mode),
            FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|errno| self.fs_error(name, "set the FIFO mode", errno.into()))?;
        self.set_times_at(at, metadata, name)?;
        self.warnings.skipped_xattrs += metadata.xattrs.len() as u64;
        self.counts.fifos += 1;
        Ok(())
    }

    fn apply_whiteout(
        &mut self,
        path: &RootPath,
        kind: WhiteoutName<'_>,
        name: &str,
    ) -> Result<(), UnpackError> {
        match kind {
            WhiteoutName::AufsMetadata => {
                self.warnings.skipped_entries += 1;
                Ok(())
            }
            WhiteoutName::Opaque => self.mark_parent_opaque(path, name),
            WhiteoutName::Whiteout(hidden) => {
                if matches!(hidden, b"" | b"." | b"..") {
                    return Err(self.invalid_name(name, "the whiteout names no file"));
                }
                let hidden_path = path.with_file_name(hidden);
                let (parent, hidden_name) = self.parent_of(&hidden_path, name)?;
                self.whiteout(&parent, &hidden_name, &hidden_path, name)
            }
        }
    }

    /// Handles `.wh..wh..opq`: the directory's lower content is hidden, while the entries this
    /// layer puts in it, before or after the marker, stay.
    fn mark_parent_opaque(&mut self, path: &RootPath, name: &str) -> Result<(), UnpackError> {
        let parent_path = path.parent();
        self.ensure_dir(&parent_path, name)?;
        let dir = self
            .root
            .open_dir(&parent_path, libc::O_RDONLY)
            .map_err(|error| self.fs_error(name, "open the opaque directory", error))?;
        whiteout::mark_opaque(dir.as_fd())
            .map_err(|error| self.fs_error(name, "mark the directory opaque", error))?;
        self.counts.opaque_directories += 1;

        // Xattr whiteouts only work in directories marked `x`; an opaque directory hides the
        // lower content anyway, so they go.
        if !self.xattr_whiteouts.is_empty() {
            let inside: Vec<RootPath> = self
                .xattr_whiteouts
                .iter()
                .filter(|whiteout| whiteout.parent() == parent_path)
                .cloned()
                .collect();
            for whiteout_path in inside {
                let file = sys::c_string(whiteout_path.file_name().unwrap_or_default())
                    .map_err(|error| self.fs_error(name, "remove an xattr whiteout", error))?;
                self.parent = None;
                match remove_at(dir.as_fd(), &file) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(errno) => {
                        return Err(self.fs_error(name, "remove an xattr whiteout", errno.into()))
                    }
                }
                self.xattr_whiteouts.remove(&whiteout_path);
            }
        }
        Ok(())
    }

    /// Handles `.wh.NAME` for `NAME` in `parent`, whose entry path is `hidden_path`.
    fn whiteout(
        &mut self,
        parent: &OwnedFd,
        hidden: &CStr,
        hidden_path: &RootPath,
        name: &str,
    ) -> Result<(), UnpackError> {
        match self.stat_at(parent, hidden, name)? {
            None => {}
            Some(stat) if is_directory(&stat) => {
                // This layer made the directory itself: keep its entries, hide the lower ones.
                let dir = sys::open_beneath(
                    parent.as_fd(),
                    hidden,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(|error| self.fs_error(name, "open the whited-out directory", error))?;
                whiteout::mark_opaque(dir.as_fd())
                    .map_err(|error| self.fs_error(name, "mark the directory opaque", error))?;
                self.counts.opaque_directories += 1;
                return Ok(());
            }
            // A whiteout hides only lower layers; this layer's own entry already does.
            Some(_) => return Ok(()),
        }

        let form = whiteout::create(parent.as_fd(), hidden)
            .map_err(|error| self.fs_error(name, "create the whiteout", error))?;
        self.counts.whiteouts += 1;
        if form == WhiteoutForm::Xattr {
            self.warnings.xattr_whiteouts += 1;
            self.xattr_whiteouts.insert(hidden_path.clone());
        }
        Ok(())
    }

    /// Opens the parent directory of `path`, creating missing directories inside the root, and
    /// returns it with the last component.
    fn parent_of(
        &mut self,
        path: &RootPath,
        name: &str,
    ) -> Result<(Rc<OwnedFd>, CString), UnpackError> {
        let Some(file_name) = path.file_name() else {
            return Err(self.invalid_name(name, "only a directory entry may name the layer root"));
        };
        let parent = self.ensure_dir(&path.parent(), name)?;
        let file_name = sys::c_string(file_name)
            .map_err(|_| self.invalid_name(name, "it contains a NUL byte"))?;
        Ok((parent, file_name))
    }

    /// Opens the directory at `path` with `O_PATH`, creating what is missing, or returns the
    /// cached directory when it is the same path. A whiteout of this layer in the way becomes
    /// an opaque directory: the layer deleted the lower path and then put entries below it.
    fn ensure_dir(&mut self, path: &RootPath, name: &str) -> Result<Rc<OwnedFd>, UnpackError> {
        if let Some(cached) = self.parent.as_ref().filter(|cached| cached.path == *path) {
            return Ok(cached.dir.clone());
        }
        loop {
            match self.root.ensure_dir(path) {
                Ok(dir) => {
                    let dir = Rc::new(dir);
                    self.parent = Some(CachedParent {
                        path: path.clone(),
                        dir: dir.clone(),
                        new_owner: None,
                    });
                    return Ok(dir);
                }
                Err(error) if error.raw_os_error() == Some(libc::ENOTDIR) => {
                    if !self.replace_whiteout_on(path, name)? {
                        return Err(self.fs_error(name, "create the parent directory", error));
                    }
                }
                Err(error) => {
                    return Err(self.fs_error(name, "create the parent directory", error))
                }
            }
        }
    }

    /// Finds the first component of `path` that is not a directory and, if it is a whiteout,
    /// replaces it with an opaque directory. Returns whether it did.
    fn replace_whiteout_on(&mut self, path: &RootPath, name: &str) -> Result<bool, UnpackError> {
        for depth in 1..=path.depth() {
            let prefix = path.prefix(depth);
            match self.root.open_dir(&prefix, libc::O_PATH) {
                Ok(_) => continue,
                Err(error) if error.raw_os_error() == Some(libc::ENOTDIR) => {}
                Err(_) => return Ok(false),
            }

            let parent = self
                .root
                .open_dir(&prefix.parent(), libc::O_PATH)
                .map_err(|error| self.fs_error(name, "open the parent directory", error))?;
            let component = sys::c_string(prefix.file_name().unwrap_or_default())
                .map_err(|_| self.invalid_name(name, "it contains a NUL byte"))?;
            let Some(stat) = self.stat_at(&parent, &component, name)? else {
                return Ok(false);
            };
            let was_xattr_whiteout = self.xattr_whiteouts.remove(&prefix);
            if !whiteout::is_whiteout_device(&stat) && !was_xattr_whiteout {
                return Ok(false);
            }

            self.parent = None;
            remove_at(parent.as_fd(), &component)
                .map_err(|errno| self.fs_error(name, "remove the whiteout", errno.into()))?;
            mkdirat(
                Some(parent.as_raw_fd()),
                component.as_c_str(),
                Mode::S_IRWXU,
            )
            .map_err(|errno| self.fs_error(name, "create the directory", errno.into()))?;
            let dir = sys::open_beneath(
                parent.as_fd(),
                &component,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(|error| self.fs_error(name, "open the directory", error))?;
            fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(0o755))
                .map_err(|errno| self.fs_error(name, "set the directory mode", errno.into()))?;
            whiteout::mark_opaque(dir.as_fd())
                .map_err(|error| self.fs_error(name, "mark the directory opaque", error))?;
            self.counts.opaque_directories += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Empties the place where an entry goes: a later entry replaces an earlier one, except
    /// that a directory over a directory keeps the existing one and its content.
    fn clear_slot(
        &mut self,
        parent: &OwnedFd,
        file_name: &CStr,
        path: &RootPath,
        keep_directory: bool,
        name: &str,
    ) -> Result<Existing, UnpackError> {
        let Some(stat) = self.stat_at(parent, file_name, name)? else {
            return Ok(Existing::Nothing);
        };
        if keep_directory && is_directory(&stat) {
            return Ok(Existing::Directory);
        }

        let was_xattr_whiteout = self.xattr_whiteouts.remove(path);
        let existing = if whiteout::is_whiteout_device(&stat) || was_xattr_whiteout {
            Existing::Whiteout
        } else {
            Existing::Other
        };
        self.parent = None;
        remove_at(parent.as_fd(), file_name)
            .map_err(|errno| self.fs_error(name, "remove the existing entry", errno.into()))?;
        Ok(existing)
    }

    fn stat_at(
        &self,
        parent: &OwnedFd,
        file_name: &CStr,
        name: &str,
    ) -> Result<Option<FileStat>, UnpackError> {
        match fstatat(
            Some(parent.as_raw_fd()),
            file_name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(self.fs_error(name, "inspect the existing entry", errno.into())),
        }
    }

    /// Gives the entry its owner from the header when the user namespace maps that ID and
    /// `chown` is permitted. Otherwise the unpacking user stays the owner, counted as squashed.
    /// `current` is the entry's owner when known; when it matches, nothing needs to change.
    fn set_owner(
        &mut self,
        target: Target<'_>,
        metadata: &EntryMetadata,
        current: Option<(u32, u32)>,
        name: &str,
    ) -> Result<(), UnpackError> {
        if current.is_some_and(|(uid, gid)| {
            (u64::from(uid), u64::from(gid)) == (metadata.uid, metadata.gid)
        }) {
            return Ok(());
        }
        let uid = self
            .id_maps
            .maps_uid(metadata.uid)
            .then(|| Uid::from_raw(metadata.uid as u32));
        let gid = self
            .id_maps
            .maps_gid(metadata.gid)
            .then(|| Gid::from_raw(metadata.gid as u32));
        let mut squashed = uid.is_none() || gid.is_none();

        if uid.is_some() || gid.is_some() {
            let result = match target {
                Target::Fd(fd) => {
                    fchownat(Some(fd.as_raw_fd()), c"", uid, gid, AtFlags::AT_EMPTY_PATH)
                }
                Target::At(dir, file_name) => fchownat(
                    Some(dir.as_raw_fd()),
                    file_name,
                    uid,
                    gid,
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ),
            };
            match result {
                Ok(()) => {}
                // Not privileged for this ID (outside a user namespace, or without CAP_CHOWN).
                Err(Errno::EPERM | Errno::EINVAL) => squashed = true,
                Err(errno) => return Err(self.fs_error(name, "set the owner", errno.into())),
            }
        }
        if squashed {
            self.warnings.squashed_owners += 1;
        }
        Ok(())
    }

    /// Returns the owner of an entry just created in the directory `parent_path`. The kernel
    /// gives every new entry of one directory the same owner (the creating user, and the
    /// directory's group where it is set-group-ID or the file system is mounted `grpid`), so
    /// `stat` runs for the first entry of the cached parent directory only.
    fn new_entry_owner(
        &mut self,
        parent_path: &RootPath,
        stat: impl FnOnce() -> nix::Result<FileStat>,
        name: &str,
    ) -> Result<(u32, u32), UnpackError> {
        let cached = self
            .parent
            .as_ref()
            .filter(|cached| cached.path == *parent_path);
        if let Some(owner) = cached.and_then(|cached| cached.new_owner) {
            return Ok(owner);
        }
        let stat =
            stat().map_err(|errno| self.fs_error(name, "inspect the new entry", errno.into()))?;
        let owner = (stat.st_uid, stat.st_gid);
        if let Some(cached) = self
            .parent
            .as_mut()
            .filter(|cached| cached.path == *parent_path)
        {
            cached.new_owner = Some(owner);
        }
        Ok(owner)
    }

    fn set_xattrs(
        &mut self,
        fd: BorrowedFd<'_>,
        metadata: &EntryMetadata,
        name: &str,
    ) -> Result<(), UnpackError> {
        for (key, value) in &metadata.xattrs {
            match sys::fsetxattr(fd, key, value) {
                Ok(()) => {}
                // The file system has no user xattrs, or refuses this one: count, go on.
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EPERM | libc::E2BIG | libc::ENOSPC)
                    ) =>
                {
                    tracing::debug!(layer = %self.layer, entry = %name, xattr = ?key, %error, "skipping xattr");
                    self.warnings.skipped_xattrs += 1;
                }
                Err(error) => return Err(self.fs_error(name, "set an extended attribute", error)),
            }
        }
        Ok(())
    }

    fn set_times_at(
        &self,
        target: Target<'_>,
        metadata: &EntryMetadata,
        name: &str,
    ) -> Result<(), UnpackError> {
        let Target::At(dir, file_name) = target else {
            unreachable!("descriptor targets get their times from futimens");
        };
        utimensat(
            Some(dir.as_raw_fd()),
            file_name,
            &metadata.mtime,
            &metadata.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|errno| self.fs_error(name, "set the times", errno.into()))
    }

    fn invalid_name(&self, name: &str, reason: &'static str) -> UnpackError {
        UnpackError::InvalidName {
            layer: self.layer.clone(),
            entry: name.to_owned(),
            reason,
        }
    }

    /// Maps a system call failure to an error naming the entry. `ELOOP` and `ENAMETOOLONG` get
    /// their own variants because they point at the layer, not at the host.
    fn fs_error(&self, name: &str, operation: &'static str, source: io::Error) -> UnpackError {
        let layer = self.layer.clone();
        let entry = name.to_owned();
        match source.raw_os_error() {
            Some(libc::ELOOP) => UnpackError::SymlinkLoop { layer, entry },
            Some(libc::ENAMETOOLONG) => UnpackError::NameTooLong { layer, entry },
            _ => UnpackError::Filesystem {
                layer,
                entry,
                operation,
                source,
            },
        }
    }
}

fn is_directory(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}
