//! The rules for what callers name and ask for, checked where requests
//! enter the port layer (container create, rename and task join, volume
//! joins, storage stores, volumes and image names, network scopes and
//! endpoints), so that every transport (REST, the CLI through it, tests
//! calling the port layer) gets them.
//!
//! | what | rule |
//! | --- | --- |
//! | container, task, volume names; store and scope names; aliases | docker's container-name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, bounded |
//! | hostname | RFC 1123: dot-separated labels of 1-63 letters, digits and `-`, not starting or ending with `-`; 253 at most |
//! | label keys | `/`-separated parts, each by the name rule; 256 at most |
//! | label values, args, env, user, working dir | no NUL (the guest passes them to `execve` and C strings) |
//! | env entries | `KEY=VALUE` with a non-empty `KEY` |
//! | memory | 0 (the default) or 64 MiB to 1 TiB |
//! | CPUs | 0 (the default) or 1 to 128 |
//! | signals | 1 to 64 (0: the default, where one applies) |
//! | a task's terminal size | rows and cols 1 to 10000, only with a terminal |
//! | store paths | absolute, no `.`, `..` or empty parts, no NUL |
//! | image references | what `docker pull` accepts |
//! | filters of policies | known fields of what they select, valid label keys |
//!
//! Owns the rules and their messages: an error names the field and shows
//! the value, escaped and shortened (`name: "../../etc" is not a valid
//! container name: ...`). Must not look anything up: whether a name is
//! taken or an image exists is for the components and the store.

use std::collections::BTreeMap;

use super::filter::{Filter, Key};
use super::model::TtySize;

/// A value a caller gave that breaks a rule, and which field it was in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The request field (`name`, `task.env[1]`, `labels`, ...).
    pub field: String,
    /// What is wrong, showing the value.
    pub message: String,
}

impl Invalid {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The longest container, task and volume name.
pub const NAME_MAX: usize = 128;
/// The longest store, scope name and alias.
pub const SHORT_NAME_MAX: usize = 64;
/// The longest hostname (RFC 1123) and the longest label of one.
pub const HOSTNAME_MAX: usize = 253;
const HOSTNAME_LABEL_MAX: usize = 63;
/// The longest label key and label value.
pub const LABEL_KEY_MAX: usize = 256;
pub const LABEL_VALUE_MAX: usize = 4096;
/// A container VM's memory, MiB.
pub const MEMORY_MIB_MIN: u32 = 64;
pub const MEMORY_MIB_MAX: u32 = 1 << 20;
/// A container VM's virtual CPUs.
pub const CPUS_MAX: u32 = 128;
/// The longest grace period a single stop may ask for (a day).
pub const MAX_STOP_TIMEOUT_SECONDS: u32 = 86_400;
/// Linux signal numbers, real-time ones included.
pub const SIGNAL_MAX: i32 = 64;
/// The longest store path (PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// The most rows or columns of a task's terminal (well past any screen,
/// well inside the kernel's 16 bits).
pub const TTY_CELLS_MAX: u32 = 10_000;

/// The value as an error shows it: quoted with control characters
/// escaped, cut after 64 characters.
pub fn shown(value: &str) -> String {
    const SHOWN: usize = 64;
    let n = value.chars().count();
    if n <= SHOWN {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(SHOWN).collect();
        format!("{head:?}… ({n} characters)")
    }
}

/// Why `value` breaks the name rule, if it does.
fn name_problem(value: &str, max: usize) -> Option<String> {
    let n = value.chars().count();
    let Some(first) = value.chars().next() else {
        return Some("it is empty".into());
    };
    if n > max {
        return Some(format!("it is {n} characters long, more than {max}"));
    }
    if !first.is_ascii_alphanumeric() {
        return Some("it must start with a letter or a digit".into());
    }
    value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .map(|c| {
            format!(
                "{} is not allowed: only letters, digits, '_', '.' and '-'",
                shown(&c.to_string())
            )
        })
}

fn name_rule(field: &str, value: &str, what: &str, max: usize) -> Result<(), Invalid> {
    match name_problem(value, max) {
        None => Ok(()),
        Some(p) => Err(Invalid::new(
            field,
            format!(
                "{} is not a valid {what}: {p} (1 to {max} of [a-zA-Z0-9_.-], starting with a letter or digit)",
                shown(value)
            ),
        )),
    }
}

/// A container name, docker's rule.
pub fn container_name(field: &str, name: &str) -> Result<(), Invalid> {
    name_rule(field, name, "container name", NAME_MAX)
}

/// A task (exec session) id: it names the task's element and its log.
pub fn task_id(field: &str, id: &str) -> Result<(), Invalid> {
    name_rule(field, id, "task id", NAME_MAX)
}

/// A volume name, as docker's.
pub fn volume_name(field: &str, name: &str) -> Result<(), Invalid> {
    name_rule(field, name, "volume name", NAME_MAX)
}

/// An image or volume store's name.
pub fn store_name(field: &str, name: &str) -> Result<(), Invalid> {
    name_rule(field, name, "store name", SHORT_NAME_MAX)
}

/// A network scope's name.
pub fn scope_name(field: &str, name: &str) -> Result<(), Invalid> {
    name_rule(field, name, "scope name", SHORT_NAME_MAX)
}

/// A network alias: a name other members resolve.
pub fn alias(field: &str, alias: &str) -> Result<(), Invalid> {
    name_rule(field, alias, "network alias", SHORT_NAME_MAX)
}

/// Why `name` is not an RFC 1123 host name, if it is not.
pub fn hostname_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > HOSTNAME_MAX {
        return Some(format!(
            "it is {} bytes long, more than {HOSTNAME_MAX}",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("it has an empty label (two dots, or a dot at an end)".into());
        }
        if label.len() > HOSTNAME_LABEL_MAX {
            return Some(format!(
                "label {} is longer than {HOSTNAME_LABEL_MAX}",
                shown(label)
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Some(format!(
                "{} is not allowed: only letters, digits, '-' and '.'",
                shown(&c.to_string())
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("label {} starts or ends with '-'", shown(label)));
        }
    }
    None
}

/// A hostname, RFC 1123.
pub fn hostname(field: &str, name: &str) -> Result<(), Invalid> {
    match hostname_problem(name) {
        None => Ok(()),
        Some(p) => Err(Invalid::new(
            field,
            format!("{} is not a valid hostname (RFC 1123): {p}", shown(name)),
        )),
    }
}

/// A label key: `/`-separated parts, each by the name rule.
pub fn label_key(field: &str, key: &str) -> Result<(), Invalid> {
    let problem = if key.is_empty() {
        Some("it is empty".to_string())
    } else if key.chars().count() > LABEL_KEY_MAX {
        Some(format!("it is longer than {LABEL_KEY_MAX} characters"))
    } else {
        key.split('/').find_map(|part| {
            if part.is_empty() {
                Some("it has an empty part between '/'".to_string())
            } else {
                name_problem(part, LABEL_KEY_MAX)
            }
        })
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Invalid::new(
            field,
            format!(
                "{} is not a valid label key: {p} ('/'-separated parts of [a-zA-Z0-9_.-], each starting with a letter or digit)",
                shown(key)
            ),
        )),
    }
}

fn no_nul(field: &str, value: &str) -> Result<(), Invalid> {
    if value.contains('\0') {
        return Err(Invalid::new(
            field,
            format!("{} contains a NUL character", shown(value)),
        ));
    }
    Ok(())
}

/// Labels: valid keys, values without NUL and of bounded length.
pub fn labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), Invalid> {
    for (k, v) in labels {
        label_key(field, k)?;
        let at = format!("{field}.{k}");
        no_nul(&at, v)?;
        if v.chars().count() > LABEL_VALUE_MAX {
            return Err(Invalid::new(
                &at,
                format!("A label value is at most {LABEL_VALUE_MAX} characters"),
            ));
        }
    }
    Ok(())
}

/// Environment entries: `KEY=VALUE`, `KEY` non-empty, no NUL.
pub fn env(field: &str, entries: &[String]) -> Result<(), Invalid> {
    for (i, e) in entries.iter().enumerate() {
        let at = format!("{field}[{i}]");
        no_nul(&at, e)?;
        match e.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => {
                return Err(Invalid::new(
                    &at,
                    format!(
                        "{} is not an environment entry: expected KEY=VALUE with a non-empty KEY",
                        shown(e)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A command line: no NUL in any argument.
pub fn args(field: &str, args: &[String]) -> Result<(), Invalid> {
    for (i, a) in args.iter().enumerate() {
        no_nul(&format!("{field}[{i}]"), a)?;
    }
    Ok(())
}

/// A text passed to the guest as a C string (user, working directory).
pub fn text(field: &str, value: &str) -> Result<(), Invalid> {
    no_nul(field, value)
}

/// A container VM's memory: 0 for the default, else within bounds.
pub fn memory_mib(field: &str, mib: u32) -> Result<(), Invalid> {
    if mib == 0 || (MEMORY_MIB_MIN..=MEMORY_MIB_MAX).contains(&mib) {
        return Ok(());
    }
    Err(Invalid::new(
        field,
        format!(
            "{mib} MiB is not between {MEMORY_MIB_MIN} MiB and {MEMORY_MIB_MAX} MiB (1 TiB); 0 takes the default"
        ),
    ))
}

/// A container VM's virtual CPUs: 0 for the default, else within bounds.
pub fn cpus(field: &str, cpus: u32) -> Result<(), Invalid> {
    if cpus <= CPUS_MAX {
        return Ok(());
    }
    Err(Invalid::new(
        field,
        format!("{cpus} CPUs is more than {CPUS_MAX}; 0 takes the default"),
    ))
}

/// A signal number, 1 to 64.
pub fn signal(field: &str, signal: i32) -> Result<(), Invalid> {
    if (1..=SIGNAL_MAX).contains(&signal) {
        return Ok(());
    }
    Err(Invalid::new(
        field,
        format!("Signal {signal} is not between 1 and {SIGNAL_MAX}"),
    ))
}

/// A task's initial terminal size: each side 1 to [`TTY_CELLS_MAX`], and
/// only for a task with a terminal (`tty`), whose size it is.
pub fn tty_size(field: &str, size: Option<&TtySize>, tty: bool) -> Result<(), Invalid> {
    let Some(size) = size else {
        return Ok(());
    };
    if !tty {
        return Err(Invalid::new(
            field,
            "A terminal size is given but the task has no terminal (tty is false)",
        ));
    }
    for (side, n) in [("rows", size.rows), ("cols", size.cols)] {
        if !(1..=TTY_CELLS_MAX).contains(&n) {
            return Err(Invalid::new(
                &format!("{field}.{side}"),
                format!("{n} {side} is not between 1 and {TTY_CELLS_MAX}"),
            ));
        }
    }
    Ok(())
}

/// A store's directory on the appliance's host: an absolute, plain path.
pub fn store_path(field: &str, path: &str) -> Result<(), Invalid> {
    let problem = if !path.starts_with('/') {
        Some("it is not absolute")
    } else if path.len() > PATH_MAX {
        Some("it is longer than PATH_MAX")
    } else if path.contains('\0') {
        Some("it contains a NUL character")
    } else if path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        Some("it has an empty, '.' or '..' part")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Invalid::new(
            field,
            format!("{} is not a valid store path: {p}", shown(path)),
        )),
    }
}

/// A host network interface name (an external scope's bridge): what the
/// kernel takes, 1 to 15 bytes, no '/', ':' or white space.
pub fn interface_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        return Ok(());
    }
    Err(Invalid::new(
        field,
        format!(
            "{} is not a network interface name: 1 to 15 of [a-zA-Z0-9_.-]",
            shown(name)
        ),
    ))
}

/// An image reference, normalized (`busybox` is
/// `docker.io/library/busybox:latest`).
pub fn image_reference(field: &str, reference: &str) -> Result<String, Invalid> {
    use std::error::Error as _;
    if reference.is_empty() {
        return Err(Invalid::new(field, "An image reference is required"));
    }
    crate::storage::oci::normalize_reference(reference).map_err(|e| {
        let why = e
            .source()
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        Invalid::new(
            field,
            format!(
                "{} is not a valid image reference{why} (expected [HOST[:PORT]/]NAME[:TAG][@DIGEST], lowercase)",
                shown(reference)
            ),
        )
    })
}

/// A policy's filter: only fields of what it selects (`known`), and label
/// keys by the label-key rule.
pub fn filter_keys(field: &str, filter: &Filter, known: &[&str]) -> Result<(), Invalid> {
    filter
        .check_fields(known)
        .map_err(|e| Invalid::new(field, format!("Invalid filter: {e}")))?;
    for term in filter.terms() {
        if let Key::Label(k) = term.key() {
            label_key(field, k)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<(), Invalid>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn container_names_follow_dockers_rule() {
        for ok in ["web", "a", "W3b_1.x-y", "0abc", &"a".repeat(NAME_MAX)] {
            assert_eq!(container_name("name", ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(5000);
        for bad in [
            "../../etc",
            "a/b",
            "..",
            ".",
            "",
            "-x",
            "_x",
            "a b",
            "a\nb",
            "a\0b",
            "a\u{1b}[2Jb",
            "é",
            long.as_str(),
        ] {
            let e = container_name("name", bad).expect_err(bad);
            assert_eq!(e.field, "name");
            assert!(
                e.message.contains("is not a valid container name"),
                "{bad:?}: {e}"
            );
            // Control characters are shown escaped, never raw.
            assert!(!e.message.contains(['\n', '\0', '\u{1b}']), "{e}");
        }
        assert_eq!(
            msg(container_name("name", "../../etc")),
            "name: \"../../etc\" is not a valid container name: it must start with a letter or a digit \
             (1 to 128 of [a-zA-Z0-9_.-], starting with a letter or digit)"
        );
        assert!(
            msg(container_name("name", "a/b")).contains("\"/\" is not allowed"),
            "{}",
            msg(container_name("name", "a/b"))
        );
        let e = msg(container_name("name", &long));
        assert!(e.contains("5000 characters"), "{e}");
        assert!(e.len() < 400, "the value is shortened: {e}");
    }

    #[test]
    fn hostnames_are_rfc_1123() {
        for ok in ["h1", "web.example.com", "0abc", "a-b", &"a".repeat(63)] {
            assert_eq!(hostname("hostname", ok), Ok(()), "{ok}");
        }
        for bad in [
            "h1\n6.6.6.6 evil.example",
            "",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            &"a".repeat(64),
            &format!("{}.", "a.".repeat(127)),
        ] {
            let e = hostname("hostname", bad).expect_err(bad);
            assert!(e.message.contains("RFC 1123"), "{bad:?}: {e}");
            assert!(!e.message.contains('\n'), "{e}");
        }
    }

    #[test]
    fn numbers_have_bounds() {
        assert_eq!(memory_mib("memory_mib", 0), Ok(()));
        assert_eq!(memory_mib("memory_mib", 256), Ok(()));
        assert_eq!(memory_mib("memory_mib", MEMORY_MIB_MAX), Ok(()));
        for bad in [1, 63, MEMORY_MIB_MAX + 1, 2147483647] {
            let e = memory_mib("memory_mib", bad).expect_err("refused");
            assert_eq!(e.field, "memory_mib");
            assert!(e.message.starts_with(&format!("{bad} MiB")), "{e}");
        }
        assert_eq!(cpus("cpus", 0), Ok(()));
        assert_eq!(cpus("cpus", CPUS_MAX), Ok(()));
        assert!(msg(cpus("cpus", 100000)).starts_with("cpus: 100000 CPUs is more than 128"));
        for ok in [1, 9, 15, 64] {
            assert_eq!(signal("stop_signal", ok), Ok(()));
        }
        for bad in [0, -1, 65, 999] {
            assert_eq!(
                msg(signal("stop_signal", bad)),
                format!("stop_signal: Signal {bad} is not between 1 and 64")
            );
        }
    }

    #[test]
    fn terminal_sizes_have_bounds_and_need_a_terminal() {
        let size = |rows, cols| TtySize { rows, cols };
        assert_eq!(tty_size("task.tty_size", None, false), Ok(()));
        assert_eq!(tty_size("task.tty_size", None, true), Ok(()));
        for ok in [
            size(1, 1),
            size(30, 100),
            size(TTY_CELLS_MAX, TTY_CELLS_MAX),
        ] {
            assert_eq!(tty_size("task.tty_size", Some(&ok), true), Ok(()), "{ok:?}");
        }
        let e = tty_size("task.tty_size", Some(&size(30, 100)), false).expect_err("no tty");
        assert_eq!(e.field, "task.tty_size");
        assert!(e.message.contains("tty is false"), "{e}");
        assert_eq!(
            msg(tty_size("task.tty_size", Some(&size(0, 80)), true)),
            "task.tty_size.rows: 0 rows is not between 1 and 10000"
        );
        assert_eq!(
            msg(tty_size("task.tty_size", Some(&size(24, 10_001)), true)),
            "task.tty_size.cols: 10001 cols is not between 1 and 10000"
        );
        let e = tty_size("task.tty_size", Some(&size(u32::MAX, 0)), true).expect_err("big");
        assert_eq!(e.field, "task.tty_size.rows");
    }

    #[test]
    fn env_and_args() {
        assert_eq!(
            env("task.env", &["A=1".into(), "B=".into(), "C==x".into()]),
            Ok(())
        );
        let e = env("task.env", &["A=1".into(), "=x".into()]).expect_err("empty key");
        assert_eq!(e.field, "task.env[1]");
        assert!(e.message.contains("KEY=VALUE"), "{e}");
        let e = env("task.env", &["\0".into()]).expect_err("NUL");
        assert_eq!(e.field, "task.env[0]");
        assert!(e.message.contains("NUL"), "{e}");
        assert!(env("task.env", &["NOEQUALS".into()]).is_err());
        assert_eq!(args("task.args", &["sh".into(), "-c".into()]), Ok(()));
        let e = args("task.args", &["sh".into(), "a\0b".into()]).expect_err("NUL");
        assert_eq!(e.field, "task.args[1]");
    }

    #[test]
    fn label_keys() {
        for ok in ["app", "system.hidden", "com.example/tier", "a_b-c.d"] {
            assert_eq!(label_key("labels", ok), Ok(()), "{ok}");
        }
        for bad in [
            "../../x", "a\nb", "", "a//b", "/a", "a/", ".a", "a b", "a=b",
        ] {
            let e = label_key("labels", bad).expect_err(bad);
            assert!(e.message.contains("is not a valid label key"), "{e}");
        }
        let mut m = BTreeMap::new();
        m.insert("app".to_string(), "x\0".to_string());
        let e = labels("labels", &m).expect_err("NUL value");
        assert_eq!(e.field, "labels.app");
    }

    #[test]
    fn store_paths_are_absolute_and_plain() {
        for ok in ["/srv/images", "/srv/images/", "/"] {
            assert_eq!(store_path("path", ok), Ok(()), "{ok}");
        }
        for bad in ["rel", "/a/../etc", "/a/./b", "/a//b", "", "/a\0"] {
            let e = store_path("path", bad).expect_err(bad);
            assert!(e.message.contains("is not a valid store path"), "{e}");
        }
    }

    #[test]
    fn image_references() {
        assert_eq!(
            image_reference("name", "busybox").as_deref(),
            Ok("docker.io/library/busybox:latest")
        );
        for bad in ["../../etc", "../../etc:x", "UPPER", "a b", ""] {
            let e = image_reference("name", bad).expect_err(bad);
            assert_eq!(e.field, "name");
        }
        let e = image_reference("name", "../../etc:x").expect_err("bad");
        assert!(
            e.message
                .contains("\"../../etc:x\" is not a valid image reference"),
            "{e}"
        );
    }

    #[test]
    fn policy_filters_name_known_fields_and_valid_labels() {
        let known = ["id", "name"];
        let ok = Filter::parse("name=web,label.tier=db").expect("filter");
        assert_eq!(filter_keys("policies[0]", &ok, &known), Ok(()));
        let parens = Filter::parse("((((").expect("parses as a presence term");
        let e = filter_keys("policies[0]", &parens, &known).expect_err("unknown field");
        assert_eq!(e.field, "policies[0]");
        assert!(e.message.contains("unknown field \"((((\""), "{e}");
        let label = Filter::parse("label.((((").expect("filter");
        assert!(filter_keys("policies[0]", &label, &known).is_err());
    }

    #[test]
    fn interface_names() {
        assert_eq!(interface_name("bridge", "br0"), Ok(()));
        for bad in ["", "a/b", "a b", "..", "sixteen-chars-xx"] {
            assert!(interface_name("bridge", bad).is_err(), "{bad}");
        }
    }
}
