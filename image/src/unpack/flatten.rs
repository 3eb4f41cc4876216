//! Merging overlay-format layer directories into one plain tree, for hosts where overlayfs
//! cannot be mounted unprivileged.
//!
//! The merge follows overlayfs's rules. A name in a higher layer hides the same name below,
//! except that two directories merge. A whiteout (0:0 device, or xattr whiteout) deletes the
//! name below. A directory marked `user.overlay.opaque=y` hides everything below it. Both
//! trees are walked through directory descriptors opened with `RESOLVE_NO_SYMLINKS`, so no
//! symlink in either tree is ever followed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{readlinkat, AtFlags};
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, Gid, Uid};
use serde::{Deserialize, Serialize};

use super::remove::{clear_dir, list_dir, remove_at};
use super::resolve::{Root, RootPath};
use super::{sys, whiteout};

/// Result of one [`flatten_layers`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlattenReport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub fifos: u64,
    /// Names deleted by whiteouts, and directories emptied because a higher one is opaque.
    pub whiteouts_applied: u64,
    /// Entries whose owner could not be copied and is the flattening user instead.
    pub squashed_owners: u64,
    /// Extended attributes that could not be copied.
    pub skipped_xattrs: u64,
    /// Sockets and device nodes other than whiteouts, which layers never contain.
    pub skipped_entries: u64,
}

/// Errors from [`flatten_layers`].
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("failed to open the layer directory {path}")]
    Layer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to open the flatten destination {path}")]
    Destination {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to {operation} {entry:?} while merging layer {layer}")]
    Filesystem {
        layer: PathBuf,
        entry: String,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Merges overlay-format layer directories, lowest first, into `dest`, which is usually empty.
/// Modes, owners (where the user namespace permits), times and xattrs are copied, except the
/// `user.overlay.*` and `trusted.overlay.*` markers. File data is copied with
/// `copy_file_range(2)` through [`std::io::copy`], which shares extents on file systems that
/// support reflinks. Files hardlinked inside one layer stay hardlinked.
pub fn flatten_layers(layers: &[&Path], dest: &Path) -> Result<FlattenReport, FlattenError> {
    let root = Root::open(dest).map_err(|source| FlattenError::Destination {
        path: dest.to_owned(),
        source,
    })?;
    let mut flattener = Flattener {
        root,
        layer: PathBuf::new(),
        report: FlattenReport::default(),
        deferred_directories: BTreeMap::new(),
        links: HashMap::new(),
    };

    for layer in layers {
        let source = File::open(layer)
            .and_then(|file| {
                sys::open_beneath(file.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            })
            .map_err(|source| FlattenError::Layer {
                path: layer.to_path_buf(),
                source,
            })?;
        flattener.layer = layer.to_path_buf();
        flattener.links.clear();
        tracing::debug!(layer = %layer.display(), dest = %dest.display(), "merging layer");

        let dest_root = flattener
            .root
            .open_real_dir(&RootPath::default(), libc::O_RDONLY)
            .map_err(|error| flattener.error(&RootPath::default(), "open", error))?;
        flattener.merge_directory_node(source.as_fd(), dest_root.as_fd(), &RootPath::default())?;
        flattener.merge_children(source.as_fd(), dest_root.as_fd(), &RootPath::default())?;
    }
    flattener.finish()
}

struct Flattener {
    root: Root,
    /// The layer being merged, for messages.
    layer: PathBuf,
    report: FlattenReport,
    /// Directory modes and times, applied after the last layer.
    deferred_directories: BTreeMap<RootPath, (u32, TimeSpec)>,
    /// Destination path of the first copy of each multiply-linked file of the current layer.
    links: HashMap<(u64, u64), RootPath>,
}

impl Flattener {
    /// Copies a directory's own metadata and applies its opaque marker.
    fn merge_directory_node(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        if whiteout::opaque_value(source)
            .map_err(|error| self.error(path, "read the opaque marker of", error))?
            .as_deref()
            == Some(b"y")
        {
            clear_dir(dest).map_err(|errno| self.error(path, "empty", errno.into()))?;
            self.report.whiteouts_applied += 1;
        }
        let stat =
            fstat(source.as_raw_fd()).map_err(|errno| self.error(path, "inspect", errno.into()))?;
        self.copy_owner(dest, None, &stat, path)?;
        self.copy_xattrs(source, dest, path)?;
        self.deferred_directories
            .insert(path.clone(), (stat.st_mode & 0o7777, mtime_of(&stat)));
        Ok(())
    }

    fn merge_children(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        let names = list_dir(source).map_err(|errno| self.error(path, "list", errno.into()))?;
        for name in names {
            let child = path.join(name.to_bytes());
            let stat = fstatat(
                Some(source.as_raw_fd()),
                name.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|errno| self.error(&child, "inspect", errno.into()))?;
            self.merge_entry(source, dest, &name, &stat, &child)?;
        }
        Ok(())
    }

    fn merge_entry(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        name: &CStr,
        stat: &FileStat,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        if whiteout::is_whiteout_device(stat) {
            return self.remove(dest, name, path);
        }
        match kind {
            SFlag::S_IFDIR => self.merge_directory(source, dest, name, path),
            SFlag::S_IFREG => self.copy_file(source, dest, name, stat, path),
            SFlag::S_IFLNK => {
                self.clear(dest, name, path)?;
                let target = readlinkat(Some(source.as_raw_fd()), name)
                    .map_err(|errno| self.error(path, "read the symlink", errno.into()))?;
                symlinkat(target.as_os_str(), Some(dest.as_raw_fd()), name)
                    .map_err(|errno| self.error(path, "create the symlink", errno.into()))?;
                self.copy_owner(dest, Some(name), stat, path)?;
                self.set_times_at(dest, name, stat, path)?;
                self.report.symlinks += 1;
                Ok(())
            }
            SFlag::S_IFIFO => {
                self.clear(dest, name, path)?;
                mknodat(
                    Some(dest.as_raw_fd()),
                    name,
                    SFlag::S_IFIFO,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                    0,
                )
                .map_err(|errno| self.error(path, "create the FIFO", errno.into()))?;
                self.copy_owner(dest, Some(name), stat, path)?;
                fchmodat(
                    Some(dest.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(stat.st_mode & 0o7777),
                    FchmodatFlags::NoFollowSymlink,
                )
                .map_err(|errno| self.error(path, "set the mode of", errno.into()))?;
                self.set_times_at(dest, name, stat, path)?;
                self.report.fifos += 1;
                Ok(())
            }
            _ => {
                self.report.skipped_entries += 1;
                Ok(())
            }
        }
    }

    fn merge_directory(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        name: &CStr,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        let keep = matches!(
            fstatat(Some(dest.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW),
            Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
        );
        if !keep {
            self.clear(dest, name, path)?;
            mkdirat(Some(dest.as_raw_fd()), name, Mode::S_IRWXU)
                .map_err(|errno| self.error(path, "create the directory", errno.into()))?;
            self.report.directories += 1;
        }

        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let source_dir = sys::open_beneath(source, name, flags, 0)
            .map_err(|error| self.error(path, "open", error))?;
        let dest_dir = sys::open_beneath(dest, name, flags, 0)
            .map_err(|error| self.error(path, "open", error))?;
        self.merge_directory_node(source_dir.as_fd(), dest_dir.as_fd(), path)?;
        self.merge_children(source_dir.as_fd(), dest_dir.as_fd(), path)
    }

    fn copy_file(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        name: &CStr,
        stat: &FileStat,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        let mut source_file = File::from(
            sys::open_beneath(source, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
                .map_err(|error| self.error(path, "open", error))?,
        );
        if whiteout::is_xattr_whiteout(source_file.as_fd(), stat.st_size)
            .map_err(|error| self.error(path, "read the whiteout marker of", error))?
        {
            return self.remove(dest, name, path);
        }
        self.clear(dest, name, path)?;

        let identity = (stat.st_dev, stat.st_ino);
        if stat.st_nlink > 1 {
            if let Some(first) = self.links.get(&identity).cloned() {
                if self.link_to(&first, dest, name).is_ok() {
                    self.report.hardlinks += 1;
                    return Ok(());
                }
            }
        }

        let mut dest_file = File::from(
            sys::open_beneath(
                dest,
                name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )
            .map_err(|error| self.error(path, "create", error))?,
        );
        io::copy(&mut source_file, &mut dest_file)
            .map_err(|error| self.error(path, "copy the contents of", error))?;
        self.copy_owner(dest_file.as_fd(), None, stat, path)?;
        fchmod(
            dest_file.as_raw_fd(),
            Mode::from_bits_truncate(stat.st_mode & 0o7777),
        )
        .map_err(|errno| self.error(path, "set the mode of", errno.into()))?;
        self.copy_xattrs(source_file.as_fd(), dest_file.as_fd(), path)?;
        let mtime = mtime_of(stat);
        futimens(dest_file.as_raw_fd(), &mtime, &mtime)
            .map_err(|errno| self.error(path, "set the times of", errno.into()))?;

        if stat.st_nlink > 1 {
            self.links.insert(identity, path.clone());
        }
        self.report.files += 1;
        Ok(())
    }

    /// Hardlinks `name` in `dest` to the destination file at `first`.
    fn link_to(&self, first: &RootPath, dest: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        let first_dir = self.root.open_real_dir(&first.parent(), libc::O_PATH)?;
        let first_name = sys::c_string(first.file_name().unwrap_or_default())?;
        linkat(
            Some(first_dir.as_raw_fd()),
            first_name.as_c_str(),
            Some(dest.as_raw_fd()),
            name,
            AtFlags::empty(),
        )?;
        Ok(())
    }

    /// Applies a whiteout: deletes `name` in `dest` if it is there.
    fn remove(
        &mut self,
        dest: BorrowedFd<'_>,
        name: &CStr,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        match remove_at(dest, name) {
            Ok(()) => {
                self.report.whiteouts_applied += 1;
                Ok(())
            }
            Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(self.error(path, "remove", errno.into())),
        }
    }

    /// Deletes whatever is at `name` in `dest`, before a higher layer's entry takes its place.
    fn clear(
        &self,
        dest: BorrowedFd<'_>,
        name: &CStr,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        match remove_at(dest, name) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(self.error(path, "replace", errno.into())),
        }
    }

    /// Copies the owner from `stat` to `dest` (or to `name` in `dest`, not following it).
    fn copy_owner(
        &mut self,
        dest: BorrowedFd<'_>,
        name: Option<&CStr>,
        stat: &FileStat,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        let (file_name, flags) = match name {
            Some(name) => (name, AtFlags::AT_SYMLINK_NOFOLLOW),
            None => (c"", AtFlags::AT_EMPTY_PATH),
        };
        match fchownat(
            Some(dest.as_raw_fd()),
            file_name,
            Some(Uid::from_raw(stat.st_uid)),
            Some(Gid::from_raw(stat.st_gid)),
            flags,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EPERM | Errno::EINVAL) => {
                self.report.squashed_owners += 1;
                Ok(())
            }
            Err(errno) => Err(self.error(path, "set the owner of", errno.into())),
        }
    }

    /// Copies the xattrs of a regular file or directory, leaving out overlayfs's own.
    fn copy_xattrs(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        let names = sys::flistxattr(source)
            .map_err(|error| self.error(path, "list the xattrs of", error))?;
        for key in names {
            let bytes = key.as_bytes();
            if bytes.starts_with(b"user.overlay.") || bytes.starts_with(b"trusted.overlay.") {
                continue;
            }
            let value = match sys::fgetxattr(source, &key) {
                Ok(Some(value)) => value,
                Ok(None) => continue,
                Err(error) => return Err(self.error(path, "read an xattr of", error)),
            };
            match sys::fsetxattr(dest, &key, &value) {
                Ok(()) => {}
                Err(error)
                    if matches!(error.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) =>
                {
                    self.report.skipped_xattrs += 1;
                }
                Err(error) => return Err(self.error(path, "set an xattr of", error)),
            }
        }
        Ok(())
    }

    fn set_times_at(
        &self,
        dest: BorrowedFd<'_>,
        name: &CStr,
        stat: &FileStat,
        path: &RootPath,
    ) -> Result<(), FlattenError> {
        let mtime = mtime_of(stat);
        utimensat(
            Some(dest.as_raw_fd()),
            name,
            &mtime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|errno| self.error(path, "set the times of", errno.into()))
    }

    /// Applies directory modes and times deepest first, once no more entries are added.
    fn finish(mut self) -> Result<FlattenReport, FlattenError> {
        let mut directories: Vec<_> = std::mem::take(&mut self.deferred_directories)
            .into_iter()
            .collect();
        directories.sort_by_key(|(path, _)| Reverse(path.depth()));
        for (path, (mode, mtime)) in directories {
            let dir: OwnedFd = match self.root.open_real_dir(&path, libc::O_RDONLY) {
                Ok(dir) => dir,
                Err(error)
                    if matches!(
                        error.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    continue
                }
                Err(error) => return Err(self.error(&path, "open", error)),
            };
            fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(mode))
                .map_err(|errno| self.error(&path, "set the mode of", errno.into()))?;
            futimens(dir.as_raw_fd(), &mtime, &mtime)
                .map_err(|errno| self.error(&path, "set the times of", errno.into()))?;
        }
        Ok(self.report)
    }

    fn error(&self, path: &RootPath, operation: &'static str, source: io::Error) -> FlattenError {
        FlattenError::Filesystem {
            layer: self.layer.clone(),
            entry: format!("{path:?}"),
            operation,
            source,
        }
    }
}

fn mtime_of(stat: &FileStat) -> TimeSpec {
    TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec)
}
