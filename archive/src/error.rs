//! The crate's error type. Owns the wording of every failure of `unpack`, `unpack_staged`,
//! `pack` and their helpers; it does no I/O itself.
//!
//! Unpack errors name the stream (`UnpackOptions::source`, capitalised at the start of the
//! message) and the entry as written in the archive, e.g.
//! `Layer sha256:ab12… entry "../etc/passwd": path leaves the target`, with the reason or the
//! `io::Error` as the `source()` so that printing the whole chain says why.

use std::io;

/// Why an entry was refused for reaching outside the target directory.
#[derive(Debug, thiserror::Error)]
pub enum EscapeReason {
    #[error("Path has a \"..\" component")]
    DotDot,
    #[error("Path is absolute")]
    Absolute,
    /// A directory on the way is a symlink; the path is the prefix that is one.
    #[error("Path goes through symlink {0:?}")]
    Symlink(String),
    #[error("Hardlink target {target:?} is refused")]
    LinkTarget {
        target: String,
        #[source]
        reason: Box<EscapeReason>,
    },
    /// `.wh.NAME` where NAME is empty, `.` or `..`.
    #[error("Whiteout names {0:?}")]
    Whiteout(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The entry's path, hardlink target or whiteout would reach outside the target.
    #[error("{} entry {entry:?}: path leaves the target", capitalised(.stream))]
    Escape {
        stream: String,
        entry: String,
        #[source]
        reason: EscapeReason,
    },
    /// A system call on the entry failed (`action` says which, e.g. "write file").
    #[error("{} entry {entry:?}: cannot {action}", capitalised(.stream))]
    Io {
        stream: String,
        entry: String,
        action: &'static str,
        #[source]
        error: io::Error,
    },
    /// The entry is well formed but cannot be applied (e.g. a hardlink to a directory).
    #[error("{} entry {entry:?}: {problem}", capitalised(.stream))]
    Invalid {
        stream: String,
        entry: String,
        problem: &'static str,
    },
    #[error("{} entry {entry:?}: unsupported entry type {kind}", capitalised(.stream))]
    Unsupported {
        stream: String,
        entry: String,
        kind: String,
    },
    /// The tar stream could not be read or parsed; `position` says where
    /// (`at entry "x"`, `after entry "x"`, `before the first entry`).
    #[error("{}: unreadable or malformed tar {position}", capitalised(.stream))]
    Malformed {
        stream: String,
        position: String,
        #[source]
        error: io::Error,
    },
    /// The directory to unpack into cannot be opened.
    #[error("{}: cannot open the target {target:?}", capitalised(.stream))]
    Target {
        stream: String,
        target: String,
        #[source]
        error: io::Error,
    },
    /// `unpack_staged`: the directory to unpack into is a symlink, which is not followed.
    #[error("{}: the target {target:?} is a symlink, which is not followed", capitalised(.stream))]
    TargetSymlink { stream: String, target: String },
    /// `pack`: the path to archive does not resolve inside the root.
    #[error("Cannot resolve {path:?} inside the root")]
    Resolve {
        path: String,
        #[source]
        error: io::Error,
    },
    /// `pack`: a file of the tree cannot be read (`path` is its name in the archive).
    #[error("Cannot read {path:?}")]
    Read {
        path: String,
        #[source]
        error: io::Error,
    },
    /// `pack`: the output refused the archive.
    #[error("Cannot write the archive at {path:?}")]
    Write {
        path: String,
        #[source]
        error: io::Error,
    },
}

impl ArchiveError {
    /// Whether the device or a quota ran out of space (ENOSPC or EDQUOT) anywhere in the chain.
    pub fn is_no_space(&self) -> bool {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = next {
            if let Some(io) = error.downcast_ref::<io::Error>()
                && io_is_no_space(io)
            {
                return true;
            }
            next = error.source();
        }
        false
    }
}

/// `io::Error::source()` skips the error a custom `io::Error` wraps, so look into it too.
fn io_is_no_space(error: &io::Error) -> bool {
    if matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            error.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    {
        return true;
    }
    let mut next = error.get_ref().map(|inner| inner as &dyn std::error::Error);
    while let Some(inner) = next {
        if let Some(io) = inner.downcast_ref::<io::Error>()
            && io_is_no_space(io)
        {
            return true;
        }
        next = inner.source();
    }
    false
}

/// "layer sha256:…" starts a sentence in the messages above.
fn capitalised(stream: &str) -> String {
    let mut chars = stream.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Archive".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut next = error.source();
        while let Some(e) = next {
            text.push_str(": ");
            text.push_str(&e.to_string());
            next = e.source();
        }
        text
    }

    #[test]
    fn messages_name_stream_and_entry() {
        let error = ArchiveError::Escape {
            stream: "layer sha256:ab12".into(),
            entry: "../etc/passwd".into(),
            reason: EscapeReason::DotDot,
        };
        assert_eq!(
            chain(&error),
            "Layer sha256:ab12 entry \"../etc/passwd\": path leaves the target: \
             Path has a \"..\" component"
        );
        assert!(!error.is_no_space());
    }

    #[test]
    fn no_space_is_found_in_the_chain() {
        let error = ArchiveError::Io {
            stream: "archive".into(),
            entry: "big".into(),
            action: "write file",
            error: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(error.is_no_space());
        assert!(
            chain(&error).contains("No space left on device"),
            "{}",
            chain(&error)
        );

        let wrapped = ArchiveError::Malformed {
            stream: "archive".into(),
            position: "at entry \"x\"".into(),
            error: io::Error::other(io::Error::from_raw_os_error(libc::EDQUOT)),
        };
        assert!(wrapped.is_no_space());

        let other = ArchiveError::Io {
            stream: "archive".into(),
            entry: "x".into(),
            action: "write file",
            error: io::Error::from_raw_os_error(libc::EIO),
        };
        assert!(!other.is_no_space());
    }
}
