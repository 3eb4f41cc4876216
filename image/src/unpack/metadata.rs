//! Metadata of one tar entry: mode, owner, modification time and extended attributes.

use std::ffi::CString;
use std::io::{self, Read};

use nix::sys::time::TimeSpec;

/// Set-user-ID, set-group-ID and sticky bits plus the permission bits.
const MODE_MASK: u32 = 0o7777;
const SET_UID: u32 = 0o4000;
const SET_GID: u32 = 0o2000;
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Mode, owner, time and xattrs to give a created entry.
#[derive(Debug, Clone)]
pub(crate) struct EntryMetadata {
    /// Permission bits with set-user-ID (and, on non-directories, set-group-ID) cleared.
    pub(crate) mode: u32,
    /// Whether the header asked for a set-ID bit that `mode` no longer has.
    pub(crate) cleared_setid: bool,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: TimeSpec,
    /// `user.*` xattrs to set, in header order.
    pub(crate) xattrs: Vec<(CString, Vec<u8>)>,
    /// Xattrs left out because of their namespace.
    pub(crate) skipped_xattrs: u64,
}

impl EntryMetadata {
    pub(crate) fn from_entry<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        is_directory: bool,
    ) -> io::Result<Self> {
        let header = entry.header();
        let requested = header.mode()? & MODE_MASK;
        let cleared = if is_directory {
            SET_UID
        } else {
            SET_UID | SET_GID
        };
        let mode = requested & !cleared;
        let uid = header.uid()?;
        let gid = header.gid()?;
        let mut mtime = TimeSpec::new(i64::try_from(header.mtime()?).unwrap_or(i64::MAX), 0);

        let mut xattrs = Vec::new();
        let mut skipped_xattrs = 0;
        if let Some(extensions) = entry.pax_extensions()? {
            for extension in extensions {
                let extension = extension?;
                let key = extension.key_bytes();
                if key == b"mtime" {
                    if let Some(time) = parse_pax_time(extension.value_bytes()) {
                        mtime = time;
                    }
                } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    match kept_xattr_name(name) {
                        Some(name) => xattrs.push((name, extension.value_bytes().to_vec())),
                        None => skipped_xattrs += 1,
                    }
                }
            }
        }

        Ok(Self {
            mode,
            cleared_setid: mode != requested,
            uid,
            gid,
            mtime,
            xattrs,
            skipped_xattrs,
        })
    }
}

/// Returns the xattr name if the unpacker keeps it: `user.*` but not `user.overlay.*`.
fn kept_xattr_name(name: &[u8]) -> Option<CString> {
    if !name.starts_with(b"user.") || name.starts_with(b"user.overlay.") {
        return None;
    }
    CString::new(name).ok()
}

/// Parses a PAX time such as `1700000000.25` or `-1.5` into seconds and nanoseconds.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = seconds.parse().ok()?;
    let digits: String = fraction.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    let (seconds, nanos) = match (negative, nanos) {
        (false, _) => (seconds, nanos),
        (true, 0) => (-seconds, 0),
        (true, _) => (-seconds - 1, 1_000_000_000 - nanos),
    };
    Some(TimeSpec::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_time_parses_fractions() {
        let time = parse_pax_time(b"1700000000.25").unwrap();
        assert_eq!(
            (time.tv_sec(), time.tv_nsec()),
            (1_700_000_000, 250_000_000)
        );
        let time = parse_pax_time(b"12").unwrap();
        assert_eq!((time.tv_sec(), time.tv_nsec()), (12, 0));
        let time = parse_pax_time(b"-1.5").unwrap();
        assert_eq!((time.tv_sec(), time.tv_nsec()), (-2, 500_000_000));
        assert!(parse_pax_time(b"x").is_none());
        assert!(parse_pax_time(b"1.2x").is_none());
    }

    #[test]
    fn only_user_xattrs_are_kept() {
        assert!(kept_xattr_name(b"user.mime_type").is_some());
        assert!(kept_xattr_name(b"user.overlay.opaque").is_none());
        assert!(kept_xattr_name(b"user.overlay.redirect").is_none());
        assert!(kept_xattr_name(b"trusted.overlay.opaque").is_none());
        assert!(kept_xattr_name(b"security.capability").is_none());
        assert!(kept_xattr_name(b"system.posix_acl_access").is_none());
    }
}
