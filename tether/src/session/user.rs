//! Resolving a session's user from the container's own `/etc/passwd` and
//! `/etc/group`, as a container runtime does (never through NSS).
//!
//! Owns parsing of those files and the "name", "uid", "name:group",
//! "uid:gid" user syntax. Must not change credentials itself.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, including `gid`.
    pub groups: Vec<u32>,
    pub home: String,
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("User {0:?} not found in the container's /etc/passwd")]
    NoSuchUser(String),
    #[error("Group {0:?} not found in the container's /etc/group")]
    NoSuchGroup(String),
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

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Resolves `spec` ("" means root) against the given file contents.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => passwd_entries(passwd).find(|e| e.name == user),
    };
    let (uid, mut gid, home, name) = match (entry, user.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_string(), Some(e.name.to_string())),
        // A numeric uid with no passwd entry runs with gid 0 and home "/".
        (None, Ok(uid)) => (uid, 0, "/".to_string(), None),
        (None, Err(_)) => return Err(UserError::NoSuchUser(user.to_string())),
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::NoSuchGroup(g.to_string()))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(n) = &name {
        for e in group_entries(group) {
            if e.members.contains(&n.as_str()) && !groups.contains(&e.gid) {
                groups.push(e.gid);
            }
        }
    }
    let home = if home.is_empty() {
        "/".to_string()
    } else {
        home
    };
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
        name,
    })
}

/// Resolves `spec` against the files under `root` (missing files count as
/// empty).
pub fn resolve_in(root: &Path, spec: &str) -> Result<Identity, UserError> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    resolve(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nohome:x:1001:100:::/bin/sh\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:app\napp:x:1000:\nwheel:x:10:app,other\n";

    #[test]
    fn empty_is_root() {
        let id = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn by_name_with_supplementary_groups() {
        let id = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 1000));
        assert_eq!(id.home, "/home/app");
        assert_eq!(id.groups, vec![1000, 100, 10]);
    }

    #[test]
    fn by_uid_and_group_override() {
        let id = resolve("1000:wheel", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 10));
        let id = resolve("app:55", PASSWD, GROUP).unwrap();
        assert_eq!(id.gid, 55);
    }

    #[test]
    fn unknown_numeric_uid_runs_with_gid_zero() {
        let id = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (4242, 0, "/"));
        assert_eq!(id.name, None);
    }

    #[test]
    fn empty_home_becomes_root_dir() {
        assert_eq!(resolve("nohome", PASSWD, GROUP).unwrap().home, "/");
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        assert_eq!(
            resolve("ghost", PASSWD, GROUP),
            Err(UserError::NoSuchUser("ghost".into()))
        );
        assert_eq!(
            resolve("app:nogroup", PASSWD, GROUP),
            Err(UserError::NoSuchGroup("nogroup".into()))
        );
    }
}
