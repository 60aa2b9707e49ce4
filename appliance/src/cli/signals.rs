//! Signal names as the CLI accepts them (`kill -s`, `--stop-signal`):
//! `TERM`, `SIGTERM`, `term` or a number. Numbers are Linux's (the guest's),
//! whatever the host is.

/// Linux signal numbers by name (without the `SIG` prefix).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// The real-time signals, numbered as glibc and docker do (the kernel's
/// first two are reserved by glibc).
const RTMIN: i32 = 34;
const RTMAX: i32 = 64;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("Invalid signal {0:?}: give a name such as TERM, KILL or USR1, or a number from 1 to 64")]
pub struct BadSignal(pub String);

/// Parses `TERM`, `SIGTERM`, `term`, `15`, `RTMIN+2` or `SIGRTMAX-1`.
pub fn parse(s: &str) -> Result<i32, BadSignal> {
    let bad = || BadSignal(s.to_string());
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=RTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
        return Ok(n);
    }
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let n = match rest.as_bytes().first() {
            None => base,
            Some(b'+') => base + rest[1..].parse::<i32>().ok()?,
            Some(b'-') => base - rest[1..].parse::<i32>().ok()?,
            Some(_) => return None,
        };
        (RTMIN..=RTMAX).contains(&n).then_some(n)
    };
    let n = if let Some(rest) = name.strip_prefix("RTMIN") {
        rt(RTMIN, rest)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        rt(RTMAX, rest)
    } else {
        None
    };
    n.ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefixes_case_and_numbers() {
        assert_eq!(parse("TERM"), Ok(15));
        assert_eq!(parse("SIGKILL"), Ok(9));
        assert_eq!(parse("usr1"), Ok(10));
        assert_eq!(parse("SigHup"), Ok(1));
        assert_eq!(parse("2"), Ok(2));
        assert_eq!(parse(" 64 "), Ok(64));
        assert_eq!(parse("RTMIN"), Ok(34));
        assert_eq!(parse("SIGRTMIN+3"), Ok(37));
        assert_eq!(parse("RTMAX-1"), Ok(63));
    }

    #[test]
    fn rejects_unknown_and_out_of_range() {
        for bad in [
            "", "0", "65", "-9", "FOO", "SIG", "RTMIN+40", "RTMINX", "9x",
        ] {
            assert_eq!(parse(bad), Err(BadSignal(bad.to_string())), "{bad}");
        }
    }
}
