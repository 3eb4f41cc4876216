//! The mode that a newly created file gets from the kernel, so that the unpacker can create a
//! file with its final mode and skip the `fchmod` that would change nothing.

use std::fs;
use std::os::fd::BorrowedFd;

use super::sys;

/// Permission bits that `open(2)` applies as given, apart from the umask.
const PERMISSION_BITS: u32 = 0o777;

/// The rule by which the kernel derives the mode of a file created below the layer root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CreationMode {
    /// The process umask, or `None` when the mode of a new file cannot be predicted: the umask
    /// is unknown, or the root carries a default ACL, which replaces the umask for files
    /// created below it.
    umask: Option<u32>,
}

impl CreationMode {
    /// Learns the rule for files created below `root`: the process umask from
    /// `/proc/self/status` (Linux 4.7+), unless `root` has a default ACL. Directories inside the
    /// tree inherit a default ACL only from `root`, because the unpacker never sets `system.*`
    /// attributes.
    pub(crate) fn for_root(root: BorrowedFd<'_>) -> Self {
        let umask = read_umask().filter(|_| !has_default_acl(root));
        Self { umask }
    }

    /// Returns `mode` when a file created with it gets exactly that mode, so no `fchmod` is
    /// needed, or `None` when the umask would clear some of its bits or the mode has bits
    /// beyond the permission bits.
    pub(crate) fn exact(&self, mode: u32) -> Option<u32> {
        let umask = self.umask?;
        (mode & !PERMISSION_BITS == 0 && mode & umask == 0).then_some(mode)
    }
}

/// Reads the `Umask:` line of `/proc/self/status`. Unlike `umask(2)`, reading it does not
/// change the umask of every thread for a moment.
fn read_umask() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_umask(&status)
}

fn parse_umask(status: &str) -> Option<u32> {
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))?
        .trim();
    u32::from_str_radix(value, 8).ok()
}

/// Reports whether `dir` has a default ACL. A failure to read it counts as having one, so that
/// the unpacker then sets every mode explicitly.
fn has_default_acl(dir: BorrowedFd<'_>) -> bool {
    match sys::fgetxattr(dir, c"system.posix_acl_default") {
        Ok(value) => value.is_some(),
        Err(error) => !matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umask_parses_from_status() {
        let status = "Name:\tmayfly\nUmask:\t0022\nState:\tR (running)\n";
        assert_eq!(parse_umask(status), Some(0o022));
        assert_eq!(parse_umask("Name:\tmayfly\n"), None);
        assert_eq!(parse_umask("Umask:\tzz\n"), None);
    }

    #[test]
    fn exact_mode_needs_bits_the_umask_keeps() {
        let rule = CreationMode { umask: Some(0o022) };
        assert_eq!(rule.exact(0o644), Some(0o644));
        assert_eq!(rule.exact(0o755), Some(0o755));
        assert_eq!(rule.exact(0o000), Some(0o000));
        assert_eq!(rule.exact(0o664), None);
        assert_eq!(rule.exact(0o1755), None);
        assert_eq!(rule.exact(0o2755), None);
    }

    #[test]
    fn unknown_umask_predicts_nothing() {
        let rule = CreationMode { umask: None };
        assert_eq!(rule.exact(0o644), None);
    }
}
