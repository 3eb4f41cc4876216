//! Helpers for the unpack tests: tar streams built in memory, scratch directories laid out as
//! `outer/dest`, and re-running a test in a child process inside a user namespace.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tar::{EntryType, Header};

use crate::digest::Digest;
use crate::unpack::{unpack_layer, Compression, UnpackError, UnpackOptions, UnpackReport};

/// Returns the layer digest that test errors name.
pub(crate) fn layer_digest() -> Digest {
    Digest::of_bytes(b"test layer")
}

/// Builds a tar stream entry by entry. Names and link targets travel in PAX records, so they
/// can hold anything, including `..` components and absolute paths that `tar::Builder`'s
/// checked API refuses to write.
pub(crate) struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

/// One entry for [`Layer::entry`].
pub(crate) struct Spec<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) entry_type: EntryType,
    pub(crate) data: &'a [u8],
    pub(crate) link: Option<&'a [u8]>,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: u64,
    pub(crate) device: (u32, u32),
    pub(crate) xattrs: &'a [(&'a str, &'a [u8])],
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Self {
            name: b"",
            entry_type: EntryType::Regular,
            data: b"",
            link: None,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            device: (0, 0),
            xattrs: &[],
        }
    }
}

impl Layer {
    pub(crate) fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    pub(crate) fn entry(mut self, spec: Spec<'_>) -> Self {
        let mut records: Vec<(String, Vec<u8>)> = vec![("path".into(), spec.name.to_vec())];
        if let Some(link) = spec.link {
            records.push(("linkpath".into(), link.to_vec()));
        }
        for (key, value) in spec.xattrs {
            records.push((format!("SCHILY.xattr.{key}"), value.to_vec()));
        }
        self.builder
            .append_pax_extensions(
                records
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_slice())),
            )
            .unwrap();

        let mut header = Header::new_ustar();
        header.set_path("pax-named").unwrap();
        header.set_entry_type(spec.entry_type);
        header.set_size(spec.data.len() as u64);
        header.set_mode(spec.mode);
        header.set_uid(spec.uid);
        header.set_gid(spec.gid);
        header.set_mtime(spec.mtime);
        header.set_device_major(spec.device.0).unwrap();
        header.set_device_minor(spec.device.1).unwrap();
        header.set_cksum();
        self.builder.append(&header, spec.data).unwrap();
        self
    }

    pub(crate) fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(Spec {
            name: name.as_bytes(),
            data,
            ..Spec::default()
        })
    }

    pub(crate) fn dir(self, name: &str, mode: u32) -> Self {
        self.entry(Spec {
            name: name.as_bytes(),
            entry_type: EntryType::Directory,
            mode,
            ..Spec::default()
        })
    }

    pub(crate) fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(Spec {
            name: name.as_bytes(),
            entry_type: EntryType::Symlink,
            link: Some(target.as_bytes()),
            mode: 0o777,
            ..Spec::default()
        })
    }

    pub(crate) fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(Spec {
            name: name.as_bytes(),
            entry_type: EntryType::Link,
            link: Some(target.as_bytes()),
            ..Spec::default()
        })
    }

    /// Returns the tar stream with its end-of-archive blocks.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

/// A scratch directory `outer` holding the unpack destination `outer/dest`, so tests can check
/// that nothing appeared beside `dest`.
pub(crate) struct Scratch {
    _dir: tempfile::TempDir,
    pub(crate) outer: PathBuf,
    pub(crate) dest: PathBuf,
}

impl Scratch {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().join("outer");
        let dest = outer.join("dest");
        fs::create_dir_all(&dest).unwrap();
        Self {
            _dir: dir,
            outer,
            dest,
        }
    }

    pub(crate) fn unpack(&self, tar: &[u8]) -> Result<UnpackReport, UnpackError> {
        self.unpack_with(tar, Compression::None, &options())
    }

    pub(crate) fn unpack_with(
        &self,
        bytes: &[u8],
        compression: Compression,
        options: &UnpackOptions,
    ) -> Result<UnpackReport, UnpackError> {
        unpack_layer(bytes, compression, &self.dest, options)
    }

    /// Asserts that `outer` contains `dest` and nothing else, and that `dest` is a directory,
    /// not a symlink.
    pub(crate) fn assert_nothing_escaped(&self) {
        let names: Vec<_> = fs::read_dir(&self.outer)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec!["dest"],
            "entries beside dest in {:?}",
            self.outer
        );
        assert!(fs::symlink_metadata(&self.dest).unwrap().is_dir());
    }

    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.dest.join(relative)
    }
}

pub(crate) fn options() -> UnpackOptions {
    UnpackOptions::new(layer_digest())
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub(crate) fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 1).unwrap()
}

pub(crate) fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Where a test body runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// A new user namespace mapping the current user (and only it) to root.
    UserNamespace,
    /// As [`Isolation::UserNamespace`], plus a new mount namespace owned by it, where
    /// overlayfs can be mounted with `userxattr`.
    UserNamespaceWithMounts,
    /// As the unprivileged user `nobody` (65534), without a user namespace. Needs root.
    Nobody,
    /// As `nobody`, inside a new user namespace that maps it to root: how mayfly runs for an
    /// unprivileged user without subordinate IDs. Needs root to become `nobody`.
    NobodyInUserNamespace,
    /// As `nobody`, inside new user and mount namespaces, where overlayfs can be mounted with
    /// `userxattr`. Needs root to become `nobody`.
    NobodyWithMounts,
}

/// The conventional ID of the `nobody` user and `nogroup` group.
const NOBODY: u32 = 65534;

const CHILD_MARKER: &str = "MAYFLY_UNPACK_TEST_CHILD";

/// Reports whether this process is the child that [`run_isolated`] started.
pub(crate) fn in_isolated_child() -> bool {
    std::env::var_os(CHILD_MARKER).is_some()
}

/// Runs the test `name` (its path below the crate, e.g. `unpack::tests::whiteouts::x`) again
/// in a child process under `isolation`, and panics unless it passed there. Prints
/// `skipped: <reason>` and returns `false` when the isolation cannot be set up here.
pub(crate) fn run_isolated(name: &str, isolation: Isolation) -> bool {
    let as_nobody = matches!(
        isolation,
        Isolation::Nobody | Isolation::NobodyInUserNamespace | Isolation::NobodyWithMounts
    );
    if as_nobody && !nix::unistd::geteuid().is_root() {
        skip(&format!(
            "{name} under {isolation:?} needs root to switch to the nobody user"
        ));
        return false;
    }

    // The test binary may sit below a directory that `nobody` cannot enter (/root, say), so
    // a copy in a world-readable directory is run instead.
    let copy_dir = tempfile::tempdir().unwrap();
    let program = if as_nobody {
        let copy = copy_dir.path().join("unpack-test");
        fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
        fs::set_permissions(copy_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        copy
    } else {
        std::env::current_exe().unwrap()
    };
    let mut command = Command::new(program);
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_MARKER, format!("{isolation:?}"));
    let (mut uid, mut gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if as_nobody {
        (uid, gid) = (NOBODY, NOBODY);
        command.uid(uid).gid(gid).env("TMPDIR", "/tmp");
    }
    if isolation != Isolation::Nobody {
        let mounts = matches!(
            isolation,
            Isolation::UserNamespaceWithMounts | Isolation::NobodyWithMounts
        );
        crate::unpack::sys::enter_user_namespace_before_exec(&mut command, uid, gid, mounts);
    }

    let output = match command.output() {
        Ok(output) => output,
        Err(error) => {
            skip(&format!(
                "{name} under {isolation:?}: cannot start the child: {error}"
            ));
            return false;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed under {isolation:?} ({}):\n{stdout}\n{stderr}",
        output.status
    );
    true
}

/// Prints `skipped: <reason>` on the real standard error, which libtest does not capture, so
/// the line shows even though the test then reports `ok`.
pub(crate) fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr().lock(), "skipped: {reason}");
}

/// The name libtest gives a test function in module `module` (from `module_path!()`).
pub(crate) fn test_name(module: &str, function: &str) -> String {
    let below_crate = module.split_once("::").map_or(module, |(_, rest)| rest);
    format!("{below_crate}::{function}")
}
