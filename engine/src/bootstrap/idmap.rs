//! User and group ID maps of the engine's user namespace: reading `/etc/subuid` and
//! `/etc/subgid`, choosing a map, and writing it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// One line of a `uid_map` or `gid_map`: `size` IDs from `container` up map to `host` up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// First ID inside the user namespace.
    pub container: u32,
    /// First ID in the parent (host) user namespace.
    pub host: u32,
    /// Number of consecutive IDs.
    pub size: u32,
}

/// How the engine's IDs were mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdMapKind {
    /// Container ID 0 is the user, 1..=N the user's subordinate range (written by
    /// `newuidmap`/`newgidmap`, or directly when the engine was started by root).
    Subordinate,
    /// Only container ID 0 exists, and it is the user. Files of other owners are squashed.
    SingleId,
    /// Started by root without subordinate ranges: IDs 0..65536 map to themselves.
    Identity,
}

/// The ID maps of the engine's user namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    /// Which kind of map this is.
    pub kind: IdMapKind,
    /// Lines of `/proc/<pid>/uid_map`.
    pub uids: Vec<IdRange>,
    /// Lines of `/proc/<pid>/gid_map`.
    pub gids: Vec<IdRange>,
}

impl IdMapping {
    /// Builds the map for a user with an optional subordinate range for UIDs and for GIDs.
    pub fn subordinate(
        uid: u32,
        gid: u32,
        subuid: SubordinateRange,
        subgid: SubordinateRange,
    ) -> Self {
        Self {
            kind: IdMapKind::Subordinate,
            uids: vec![
                IdRange {
                    container: 0,
                    host: uid,
                    size: 1,
                },
                IdRange {
                    container: 1,
                    host: subuid.start,
                    size: subuid.count,
                },
            ],
            gids: vec![
                IdRange {
                    container: 0,
                    host: gid,
                    size: 1,
                },
                IdRange {
                    container: 1,
                    host: subgid.start,
                    size: subgid.count,
                },
            ],
        }
    }

    /// Builds the single-ID map: container root is the user, nothing else is mapped.
    pub fn single(uid: u32, gid: u32) -> Self {
        Self {
            kind: IdMapKind::SingleId,
            uids: vec![IdRange {
                container: 0,
                host: uid,
                size: 1,
            }],
            gids: vec![IdRange {
                container: 0,
                host: gid,
                size: 1,
            }],
        }
    }

    /// Builds the identity map of the first 65536 IDs, used when root starts the engine without
    /// subordinate ranges. Container root is then host root, as with a rootful engine.
    pub fn identity() -> Self {
        let range = IdRange {
            container: 0,
            host: 0,
            size: 65536,
        };
        Self {
            kind: IdMapKind::Identity,
            uids: vec![range],
            gids: vec![range],
        }
    }

    /// Returns whether `uid` exists inside the namespace.
    pub fn maps_uid(&self, uid: u32) -> bool {
        maps(&self.uids, uid)
    }

    /// Returns whether `gid` exists inside the namespace.
    pub fn maps_gid(&self, gid: u32) -> bool {
        maps(&self.gids, gid)
    }

    /// Returns the number of UIDs mapped from 0 up without a gap (65537 for the usual
    /// subordinate range of 65536, 1 for the single-ID map).
    pub fn contiguous_uids(&self) -> u64 {
        contiguous(&self.uids)
    }

    /// Returns the number of GIDs mapped from 0 up without a gap.
    pub fn contiguous_gids(&self) -> u64 {
        contiguous(&self.gids)
    }
}

fn maps(ranges: &[IdRange], id: u32) -> bool {
    ranges
        .iter()
        .any(|r| id >= r.container && u64::from(id) < u64::from(r.container) + u64::from(r.size))
}

fn contiguous(ranges: &[IdRange]) -> u64 {
    let mut end: u64 = 0;
    loop {
        let next = ranges
            .iter()
            .find(|r| u64::from(r.container) == end)
            .map(|r| end + u64::from(r.size));
        match next {
            Some(new_end) if new_end > end => end = new_end,
            _ => return end,
        }
    }
}

/// Formats ranges the way `uid_map` and `gid_map` expect them, one range per line.
pub fn format_map(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
        .collect()
}

/// A subordinate ID range from `/etc/subuid` or `/etc/subgid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubordinateRange {
    /// First host ID of the range.
    pub start: u32,
    /// Number of IDs.
    pub count: u32,
}

impl fmt::Display for SubordinateRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start,
            u64::from(self.start) + u64::from(self.count) - 1
        )
    }
}

/// Finds the first range of `user` (by name or by numeric ID) in a `subuid(5)`-format text.
pub fn parse_subordinate(text: &str, user_name: Option<&str>, id: u32) -> Option<SubordinateRange> {
    let id_text = id.to_string();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            let owner = fields.next()?;
            let start = fields.next()?.trim().parse().ok()?;
            let count = fields.next()?.trim().parse().ok()?;
            Some((owner, SubordinateRange { start, count }))
        })
        .find(|(owner, range)| range.count > 0 && (Some(*owner) == user_name || *owner == id_text))
        .map(|(_, range)| range)
}

/// Reads the first range of the user from a file such as `/etc/subuid`; a missing file is no
/// range.
pub fn read_subordinate(
    path: &Path,
    user_name: Option<&str>,
    id: u32,
) -> io::Result<Option<SubordinateRange>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_subordinate(&text, user_name, id)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Failure to apply an ID map to the engine process.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    /// `newuidmap`/`newgidmap` could not be started.
    #[error("failed to run {tool}: {source}; install it with `apt-get install uidmap`")]
    HelperSpawn {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    /// `newuidmap`/`newgidmap` ran and failed.
    #[error(
        "{tool} {args} failed with {status}: {stderr}; check the ranges of this user in \
         /etc/subuid and /etc/subgid, or set MAYFLY_ID_MAP=single"
    )]
    HelperFailed {
        tool: &'static str,
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// Writing a map file failed.
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Applies `mapping` to process `pid` with the setuid helpers `newuidmap` and `newgidmap`.
/// The two are independent, so they run at the same time.
pub fn apply_with_helpers(
    pid: libc::pid_t,
    mapping: &IdMapping,
    newuidmap: &Path,
    newgidmap: &Path,
) -> Result<(), IdMapError> {
    let uid_helper = Helper::start("newuidmap", newuidmap, pid, &mapping.uids)?;
    let gid_helper = Helper::start("newgidmap", newgidmap, pid, &mapping.gids);
    let uid_result = uid_helper.finish();
    let gid_result = gid_helper.and_then(Helper::finish);
    uid_result.and(gid_result)
}

/// A running `newuidmap` or `newgidmap`.
struct Helper {
    tool: &'static str,
    args: Vec<String>,
    child: std::process::Child,
}

impl Helper {
    fn start(
        tool: &'static str,
        path: &Path,
        pid: libc::pid_t,
        ranges: &[IdRange],
    ) -> Result<Self, IdMapError> {
        let mut args = vec![pid.to_string()];
        for r in ranges {
            args.extend([
                r.container.to_string(),
                r.host.to_string(),
                r.size.to_string(),
            ]);
        }
        let child = Command::new(path)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| IdMapError::HelperSpawn { tool, source })?;
        Ok(Self { tool, args, child })
    }

    fn finish(self) -> Result<(), IdMapError> {
        let Self { tool, args, child } = self;
        let output = child
            .wait_with_output()
            .map_err(|source| IdMapError::HelperSpawn { tool, source })?;
        if output.status.success() {
            return Ok(());
        }
        Err(IdMapError::HelperFailed {
            tool,
            args: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Writes the maps of process `pid` directly. This works for a single-ID map of the writer's
/// own IDs (after `setgroups` is set to `deny`), and for any map when the writer is root in the
/// parent namespace.
pub fn apply_directly(
    pid: &str,
    mapping: &IdMapping,
    deny_setgroups: bool,
) -> Result<(), IdMapError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if deny_setgroups {
        write_proc(&proc_dir.join("setgroups"), "deny")?;
    }
    write_proc(&proc_dir.join("uid_map"), &format_map(&mapping.uids))?;
    write_proc(&proc_dir.join("gid_map"), &format_map(&mapping.gids))
}

fn write_proc(path: &Path, text: &str) -> Result<(), IdMapError> {
    std::fs::write(path, text).map_err(|source| IdMapError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_by_name_and_id() {
        let text = "# comment\nalice:100000:65536\n1001:200000:1000\nbob:0:0\n";
        assert_eq!(
            parse_subordinate(text, Some("alice"), 1000),
            Some(SubordinateRange {
                start: 100000,
                count: 65536
            })
        );
        assert_eq!(
            parse_subordinate(text, Some("carol"), 1001),
            Some(SubordinateRange {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(parse_subordinate(text, Some("bob"), 1002), None);
        assert_eq!(parse_subordinate("garbage\n", Some("alice"), 1), None);
    }

    #[test]
    fn map_lookup_and_contiguity() {
        let map = IdMapping::subordinate(
            1000,
            1000,
            SubordinateRange {
                start: 100000,
                count: 65536,
            },
            SubordinateRange {
                start: 100000,
                count: 65536,
            },
        );
        assert!(map.maps_uid(0));
        assert!(map.maps_uid(65536));
        assert!(!map.maps_uid(65537));
        assert_eq!(map.contiguous_uids(), 65537);
        assert_eq!(format_map(&map.uids), "0 1000 1\n1 100000 65536\n");

        let single = IdMapping::single(1000, 1000);
        assert!(!single.maps_gid(5));
        assert_eq!(single.contiguous_gids(), 1);
    }
}
