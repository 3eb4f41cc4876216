//! ID maps of the current user namespace, which decide the owners the unpacker may set.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One line of `/proc/self/uid_map` or `gid_map`: `count` IDs starting at `inside` in this
/// namespace map to IDs starting at `outside` in the parent namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The user and group ID ranges of the current user namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMaps {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// Errors from reading or parsing the ID maps.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error("failed to read {path}; is /proc mounted?")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid line {line:?} in {path}: expected three unsigned integers")]
    Invalid { path: PathBuf, line: String },
}

impl IdMaps {
    /// Reads `/proc/self/uid_map` and `/proc/self/gid_map`.
    pub fn current() -> Result<Self, IdMapError> {
        Ok(Self {
            uids: read_map("/proc/self/uid_map")?,
            gids: read_map("/proc/self/gid_map")?,
        })
    }

    /// Maps that contain exactly one ID, as in a user namespace made without subordinate IDs.
    pub fn single(uid: u32, gid: u32) -> Self {
        let range = |id| IdRange {
            inside: id,
            outside: id,
            count: 1,
        };
        Self {
            uids: vec![range(uid)],
            gids: vec![range(gid)],
        }
    }

    /// Reports whether these are the maps of the initial user namespace, where every ID exists
    /// and whether `chown` succeeds depends only on privileges.
    pub fn is_initial_namespace(&self) -> bool {
        let full = [IdRange {
            inside: 0,
            outside: 0,
            count: u32::MAX,
        }];
        self.uids == full && self.gids == full
    }

    pub fn maps_uid(&self, uid: u64) -> bool {
        contains(&self.uids, uid)
    }

    pub fn maps_gid(&self, gid: u64) -> bool {
        contains(&self.gids, gid)
    }
}

fn contains(ranges: &[IdRange], id: u64) -> bool {
    ranges.iter().any(|range| {
        let start = u64::from(range.inside);
        id >= start && id < start + u64::from(range.count)
    })
}

fn read_map(path: &str) -> Result<Vec<IdRange>, IdMapError> {
    let text = fs::read_to_string(path).map_err(|source| IdMapError::Read {
        path: path.into(),
        source,
    })?;
    parse_map(&text).map_err(|line| IdMapError::Invalid {
        path: path.into(),
        line,
    })
}

/// Parses the text of a uid_map or gid_map file, returning the offending line on error.
pub(crate) fn parse_map(text: &str) -> Result<Vec<IdRange>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let numbers: Vec<u32> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| line.to_owned())?;
            match numbers[..] {
                [inside, outside, count] => Ok(IdRange {
                    inside,
                    outside,
                    count,
                }),
                _ => Err(line.to_owned()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_map_reads_ranges() {
        let ranges =
            parse_map("         0       1000          1\n         1     100000      65536\n")
                .unwrap();
        assert_eq!(
            ranges,
            vec![
                IdRange {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                IdRange {
                    inside: 1,
                    outside: 100000,
                    count: 65536
                },
            ]
        );
    }

    #[test]
    fn parse_map_rejects_garbage() {
        assert_eq!(parse_map("0 0\n"), Err("0 0".to_owned()));
        assert_eq!(parse_map("a b c\n"), Err("a b c".to_owned()));
    }

    #[test]
    fn single_map_contains_only_its_id() {
        let maps = IdMaps::single(0, 0);
        assert!(maps.maps_uid(0));
        assert!(!maps.maps_uid(1));
        assert!(!maps.maps_gid(1000));
        assert!(!maps.is_initial_namespace());
    }

    #[test]
    fn initial_namespace_maps_all_but_the_invalid_id() {
        let text = "0 0 4294967295\n";
        let maps = IdMaps {
            uids: parse_map(text).unwrap(),
            gids: parse_map(text).unwrap(),
        };
        assert!(maps.is_initial_namespace());
        assert!(maps.maps_uid(65534));
        assert!(maps.maps_uid(4_294_967_294));
        assert!(
            !maps.maps_uid(u64::from(u32::MAX)),
            "(uid_t)-1 means 'leave unchanged' to chown"
        );
    }
}
