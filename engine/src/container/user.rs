//! Resolving `--user` as Docker does: a name or UID, optionally with a group name or GID,
//! looked up in the image's `/etc/passwd` and `/etc/group`.

use super::ContainerError;

/// The IDs a container process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group in `/etc/group` that lists the user by name.
    pub additional_gids: Vec<u32>,
    /// Home directory from `/etc/passwd`, for `HOME` when the environment lacks it.
    pub home: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn parse_passwd(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

fn parse_group(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || line.starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: fields[0],
            gid: fields[2].parse().ok()?,
            members: fields[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Resolves `spec` (`NAME`, `UID`, `NAME:GROUP`, `UID:GID`, or empty for root) against the
/// contents of the image's passwd and group files (empty when the image has none).
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, ContainerError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let by_name = parse_passwd(passwd).find(|entry| entry.name == user_part);
    let entry = match by_name {
        Some(entry) => Some(entry),
        None => match user_part.parse::<u32>() {
            Ok(uid) => parse_passwd(passwd).find(|entry| entry.uid == uid),
            Err(_) => {
                return Err(ContainerError::UserNotFound {
                    user: user_part.to_owned(),
                })
            }
        },
    };
    let uid = match &entry {
        Some(entry) => entry.uid,
        None => user_part.parse().expect("checked numeric above"),
    };
    let name = entry.as_ref().map(|entry| entry.name);

    let gid = match group_part {
        None | Some("") => entry.as_ref().map_or(0, |entry| entry.gid),
        Some(group_part) => match parse_group(group).find(|g| g.name == group_part) {
            Some(found) => found.gid,
            None => group_part
                .parse()
                .map_err(|_| ContainerError::GroupNotFound {
                    group: group_part.to_owned(),
                })?,
        },
    };

    let mut additional_gids: Vec<u32> = match name {
        Some(name) => parse_group(group)
            .filter(|g| g.members.contains(&name) && g.gid != gid)
            .map(|g| g.gid)
            .collect(),
        None => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry.map(|entry| entry.home.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nstaff:x:50:app\n";

    #[test]
    fn user_by_name_and_uid() {
        let app = resolve_user("app", PASSWD, GROUP).unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.additional_gids, vec![50]);
        assert_eq!(app.home.as_deref(), Some("/home/app"));

        let by_uid = resolve_user("65534", PASSWD, GROUP).unwrap();
        assert_eq!((by_uid.uid, by_uid.gid), (65534, 65534));
    }

    #[test]
    fn user_with_group() {
        let user = resolve_user("app:staff", PASSWD, GROUP).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 50));
        let numeric = resolve_user("4242:4343", PASSWD, GROUP).unwrap();
        assert_eq!((numeric.uid, numeric.gid), (4242, 4343));
        assert_eq!(numeric.home, None);
    }

    #[test]
    fn user_defaults_to_root() {
        let root = resolve_user("", PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(root.home.as_deref(), Some("/root"));
    }

    #[test]
    fn user_unknown_names_fail() {
        assert!(matches!(
            resolve_user("ghost", PASSWD, GROUP),
            Err(ContainerError::UserNotFound { .. })
        ));
        assert!(matches!(
            resolve_user("app:ghosts", PASSWD, GROUP),
            Err(ContainerError::GroupNotFound { .. })
        ));
    }
}
