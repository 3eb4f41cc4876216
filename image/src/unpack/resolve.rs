//! Path handling inside a layer root: lexical normalisation of tar names and resolution of
//! directories with `openat2(RESOLVE_IN_ROOT)`, so that every symlink and `..` met on the way
//! stays inside the root, exactly as after `chroot(root)`.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{fchmodat, mkdirat, FchmodatFlags, Mode};

use super::sys;

/// Maximum length of a file name component on Linux (`NAME_MAX`).
pub(crate) const NAME_MAX: usize = 255;
/// Maximum length of a path in one Linux system call, including the terminating NUL (`PATH_MAX`).
/// Longer paths are resolved in pieces.
pub(crate) const PATH_MAX: usize = 4096;
/// Maximum number of components in an entry name. Unpacking, flattening and removal keep one
/// or two descriptors open per level, so this keeps a hostile layer far below the usual limit
/// of 1024 open files. Image trees are usually much shallower.
pub(crate) const MAX_DEPTH: usize = 256;
/// Symlinks followed while creating missing parents before giving up with `ELOOP`, the same
/// limit the kernel applies to one lookup.
const MAX_SYMLINK_HOPS: u32 = 40;

/// A normalised path inside a layer root: no empty, `.` or `..` components. The empty path is
/// the root itself.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RootPath(Vec<Vec<u8>>);

/// Reason a tar name could not be turned into a [`RootPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameProblem {
    /// A `..` component climbs above the root.
    EscapesRoot,
    /// A NUL byte, which no Linux path may contain.
    ContainsNul,
    /// A component longer than `NAME_MAX`, or more than `MAX_DEPTH` components.
    TooLong,
}

impl RootPath {
    /// Normalises a tar entry name. A leading `/` is dropped, so absolute names land inside the
    /// root as Docker and containerd place them. A `..` that would climb above the root is
    /// rejected rather than clamped, because no honest layer contains one.
    pub(crate) fn from_tar_name(name: &[u8]) -> Result<Self, NameProblem> {
        let path = Self::normalise(name, false)?;
        path.check_length()?;
        Ok(path)
    }

    /// Normalises a symlink target seen from `base`, clamping `..` at the root like the kernel
    /// does for `RESOLVE_IN_ROOT`.
    fn from_symlink_target(base: &RootPath, target: &[u8]) -> Result<Self, NameProblem> {
        let mut joined = Vec::new();
        if !target.starts_with(b"/") {
            joined = base.to_bytes();
            joined.push(b'/');
        }
        joined.extend_from_slice(target);
        Self::normalise(&joined, true)
    }

    fn normalise(name: &[u8], clamp_at_root: bool) -> Result<Self, NameProblem> {
        if name.contains(&0) {
            return Err(NameProblem::ContainsNul);
        }
        let mut components: Vec<Vec<u8>> = Vec::new();
        for component in name.split(|&byte| byte == b'/') {
            match component {
                b"" | b"." => {}
                b".." => {
                    if components.pop().is_none() && !clamp_at_root {
                        return Err(NameProblem::EscapesRoot);
                    }
                }
                _ => components.push(component.to_vec()),
            }
        }
        Ok(Self(components))
    }

    fn check_length(&self) -> Result<(), NameProblem> {
        if self.0.iter().any(|component| component.len() > NAME_MAX) || self.0.len() > MAX_DEPTH {
            return Err(NameProblem::TooLong);
        }
        Ok(())
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn depth(&self) -> usize {
        self.0.len()
    }

    /// Returns the last component, or `None` for the root.
    pub(crate) fn file_name(&self) -> Option<&[u8]> {
        self.0.last().map(Vec::as_slice)
    }

    /// Returns the path without its last component. The root is its own parent.
    pub(crate) fn parent(&self) -> RootPath {
        let mut parent = self.clone();
        parent.0.pop();
        parent
    }

    /// Returns the first `depth` components.
    pub(crate) fn prefix(&self, depth: usize) -> RootPath {
        RootPath(self.0[..depth].to_vec())
    }

    /// This path with the last component replaced by `name`.
    pub(crate) fn with_file_name(&self, name: &[u8]) -> RootPath {
        self.parent().join(name)
    }

    /// This path with `name`, a single component, appended.
    pub(crate) fn join(&self, name: &[u8]) -> RootPath {
        let mut child = self.clone();
        child.0.push(name.to_vec());
        child
    }

    /// Joins the components with `/`, without a leading slash; the root gives an empty string.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.0.join(&b'/')
    }

    /// Splits the path into relative pieces that each fit in one system call (`PATH_MAX`).
    fn pieces(&self) -> io::Result<Vec<CString>> {
        let mut pieces = Vec::new();
        let mut piece: Vec<u8> = Vec::new();
        for component in &self.0 {
            if !piece.is_empty() && piece.len() + 1 + component.len() >= PATH_MAX {
                pieces.push(sys::c_string(&piece)?);
                piece.clear();
            }
            if !piece.is_empty() {
                piece.push(b'/');
            }
            piece.extend_from_slice(component);
        }
        if !piece.is_empty() || pieces.is_empty() {
            let last = if piece.is_empty() {
                b".".to_vec()
            } else {
                piece
            };
            pieces.push(sys::c_string(&last)?);
        }
        Ok(pieces)
    }
}

impl fmt::Debug for RootPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// An open layer root directory. All lookups below it go through `openat2(RESOLVE_IN_ROOT)`.
pub(crate) struct Root {
    fd: OwnedFd,
    /// Host path of the root as the kernel reports it, used to translate descriptors back to
    /// paths inside the root.
    host_path: PathBuf,
}

impl Root {
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)?;
        let fd = OwnedFd::from(file);
        let host_path = PathBuf::from(sys::fd_path(fd.as_fd())?);
        Ok(Self { fd, host_path })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory at `path` (following symlinks inside the root) with `flags` added to
    /// `O_DIRECTORY`.
    ///
    /// A path too long for one system call is opened piece by piece. Only the first piece
    /// follows symlinks (inside the root); a symlink in a later piece fails with `ELOOP`.
    pub(crate) fn open_dir(&self, path: &RootPath, flags: i32) -> io::Result<OwnedFd> {
        let pieces = path.pieces()?;
        let (last, leading) = pieces
            .split_last()
            .expect("pieces() returns at least one piece");
        if leading.is_empty() {
            return sys::open_in_root(self.fd(), last, libc::O_DIRECTORY | flags);
        }
        let mut current =
            sys::open_in_root(self.fd(), &leading[0], libc::O_DIRECTORY | libc::O_PATH)?;
        for piece in &leading[1..] {
            current =
                sys::open_beneath(current.as_fd(), piece, libc::O_DIRECTORY | libc::O_PATH, 0)?;
        }
        sys::open_beneath(current.as_fd(), last, libc::O_DIRECTORY | flags, 0)
    }

    /// Opens the directory at `path` without following any symlink, piece by piece when the path
    /// is too long for one system call.
    pub(crate) fn open_real_dir(&self, path: &RootPath, flags: i32) -> io::Result<OwnedFd> {
        let pieces = path.pieces()?;
        let (last, leading) = pieces
            .split_last()
            .expect("pieces() returns at least one piece");
        let mut current: Option<OwnedFd> = None;
        for piece in leading {
            let dir = current.as_ref().map_or(self.fd(), |fd| fd.as_fd());
            current = Some(sys::open_beneath(
                dir,
                piece,
                libc::O_DIRECTORY | libc::O_PATH,
                0,
            )?);
        }
        let dir = current.as_ref().map_or(self.fd(), |fd| fd.as_fd());
        sys::open_beneath(dir, last, libc::O_DIRECTORY | libc::O_NOFOLLOW | flags, 0)
    }

    /// Returns the path inside the root of a directory open at `fd`.
    pub(crate) fn path_of(&self, fd: BorrowedFd<'_>) -> io::Result<RootPath> {
        let host = PathBuf::from(sys::fd_path(fd)?);
        let inside = host
            .strip_prefix(&self.host_path)
            .map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))?;
        RootPath::normalise(inside.as_os_str().as_bytes(), false)
            .map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))
    }

    /// Opens the directory at `path` with `O_PATH`, creating missing directories (mode 0755,
    /// owned by the unpacking user) like `mkdir -p` inside a chroot: a dangling symlink on the
    /// way has its target created inside the root.
    pub(crate) fn ensure_dir(&self, path: &RootPath) -> io::Result<OwnedFd> {
        let mut hops = 0;
        self.ensure_dir_counting(path, &mut hops)
    }

    fn ensure_dir_counting(&self, path: &RootPath, hops: &mut u32) -> io::Result<OwnedFd> {
        match self.open_dir(path, libc::O_PATH) {
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
            result => return result,
        }

        let mut current = self.fd.try_clone()?;
        for depth in 1..=path.depth() {
            let prefix = RootPath(path.0[..depth].to_vec());
            match self.open_dir(&prefix, libc::O_PATH) {
                Ok(fd) => {
                    current = fd;
                    continue;
                }
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) => return Err(error),
            }

            let name = sys::c_string(&path.0[depth - 1])?;
            match mkdirat(
                Some(raw(&current)),
                name.as_c_str(),
                Mode::from_bits_truncate(0o755),
            ) {
                // Set the mode explicitly so the umask does not decide it.
                Ok(()) => fchmodat(
                    Some(raw(&current)),
                    name.as_c_str(),
                    Mode::from_bits_truncate(0o755),
                    FchmodatFlags::NoFollowSymlink,
                )?,
                Err(Errno::EEXIST) => self.create_symlink_target(&current, &name, hops)?,
                Err(errno) => return Err(errno.into()),
            }
            current = self.open_dir(&prefix, libc::O_PATH)?;
        }
        Ok(current)
    }

    /// `name` in `dir` exists but did not resolve to a directory: it is a dangling symlink.
    /// Creates the directory it points to, inside the root.
    fn create_symlink_target(
        &self,
        dir: &OwnedFd,
        name: &CString,
        hops: &mut u32,
    ) -> io::Result<()> {
        *hops += 1;
        if *hops > MAX_SYMLINK_HOPS {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let target = nix::fcntl::readlinkat(Some(raw(dir)), name.as_c_str())?;
        let base = self.path_of(dir.as_fd())?;
        let resolved = RootPath::from_symlink_target(&base, target.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.ensure_dir_counting(&resolved, hops).map(drop)
    }
}

fn raw(fd: &OwnedFd) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> Result<String, NameProblem> {
        RootPath::from_tar_name(name.as_bytes())
            .map(|path| String::from_utf8(path.to_bytes()).unwrap())
    }

    #[test]
    fn tar_names_normalise_inside_root() {
        assert_eq!(path("etc/passwd"), Ok("etc/passwd".into()));
        assert_eq!(path("./etc//passwd"), Ok("etc/passwd".into()));
        assert_eq!(path("/etc/passwd"), Ok("etc/passwd".into()));
        assert_eq!(path("a/../b"), Ok("b".into()));
        assert_eq!(path("./"), Ok("".into()));
        assert_eq!(path("dir/"), Ok("dir".into()));
    }

    #[test]
    fn tar_names_climbing_out_are_rejected() {
        assert_eq!(path("../x"), Err(NameProblem::EscapesRoot));
        assert_eq!(path("a/../../x"), Err(NameProblem::EscapesRoot));
        assert_eq!(path("/../x"), Err(NameProblem::EscapesRoot));
        assert_eq!(path(".."), Err(NameProblem::EscapesRoot));
    }

    #[test]
    fn tar_names_over_kernel_limits_are_rejected() {
        assert_eq!(path(&"a".repeat(256)), Err(NameProblem::TooLong));
        assert!(path(&"a".repeat(255)).is_ok());
        let deep = vec!["b"; MAX_DEPTH + 1].join("/");
        assert_eq!(path(&deep), Err(NameProblem::TooLong));
        let long = vec!["b".repeat(200); 21].join("/");
        assert!(
            path(&long).is_ok(),
            "paths over PATH_MAX are resolved in pieces"
        );
        assert_eq!(
            RootPath::from_tar_name(b"a\0b"),
            Err(NameProblem::ContainsNul)
        );
    }

    #[test]
    fn pieces_fit_in_path_max() {
        let long = RootPath::from_tar_name(vec!["c".repeat(250); 40].join("/").as_bytes()).unwrap();
        let pieces = long.pieces().unwrap();
        assert!(pieces.iter().all(|piece| piece.as_bytes().len() < PATH_MAX));
        let rejoined: Vec<&[u8]> = pieces.iter().map(|piece| piece.as_bytes()).collect();
        assert_eq!(rejoined.join(&b'/'), long.to_bytes());
        assert_eq!(
            RootPath::default().pieces().unwrap(),
            vec![CString::from(c".")]
        );
    }

    #[test]
    fn symlink_targets_clamp_at_root() {
        let base = RootPath::from_tar_name(b"usr/lib").unwrap();
        let target = RootPath::from_symlink_target(&base, b"../../../../etc").unwrap();
        assert_eq!(target.to_bytes(), b"etc");
        let absolute = RootPath::from_symlink_target(&base, b"/opt/x").unwrap();
        assert_eq!(absolute.to_bytes(), b"opt/x");
        let relative = RootPath::from_symlink_target(&base, b"x86_64").unwrap();
        assert_eq!(relative.to_bytes(), b"usr/lib/x86_64");
    }
}
