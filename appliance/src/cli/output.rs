//! Everything the CLI prints goes through here: its own results on stdout
//! ([`outln!`], [`out`]), a container's output on stdout or stderr
//! ([`write_to`]), and its messages on stderr ([`errln!`]).
//!
//! Owns what happens when a reader goes away. A reader that closes its end
//! of the pipe early (`appliance inspect web | grep -q x`, `appliance logs
//! web | head`) is normal use: the write fails with EPIPE, the error is
//! marked [`Closed`] and travels up like any other, and `cli::main` ends the
//! command quietly with [`CLOSED_STATUS`] (141, 128 + SIGPIPE: what a shell
//! reports for `cat` ended the same way), printing nothing. A message that
//! cannot be written to stderr is dropped: there is nowhere left to say so.
//!
//! Why SIGPIPE stays ignored (Rust's default) rather than being reset to its
//! default action, as C filters have it: the signal would kill the process
//! in the middle of a write. A foreground `run -it` would die with the local
//! terminal left in raw mode, `run --rm` would not remove its container, and
//! a write to the appliance's unix socket after the server died (a plain
//! `write(2)`, which raises SIGPIPE too) would kill a client that should
//! reconnect; `serve` is the same binary. So EPIPE is an error, handled once.
//!
//! Owns, too, that what the appliance stored never drives the terminal: a
//! name or label holding escape sequences or a newline (from before the port
//! layer refused them, or from an image) is shown escaped. Values go
//! through [`printable`] (every control character escaped, so a newline
//! cannot forge a table row), and [`outln!`] and [`errln!`] escape every
//! control character but the line breaks of their own text.
//!
//! Must not: be bypassed. `println!`, `print!` and `eprintln!` panic when the
//! write fails (exit 101), so the CLI does not use them.

use std::borrow::Cow;
use std::io::{self, Write};

/// The exit status of a command whose stdout (or stderr, for a container's
/// stderr) was closed by its reader.
pub const CLOSED_STATUS: u8 = 141;

/// Marks the EPIPE of one of our outputs (as the inner error of an
/// `io::Error` of kind `BrokenPipe`), so that it is told apart from a
/// broken pipe to the appliance, which is a real failure.
#[derive(Debug, thiserror::Error)]
#[error("The reader of this command's output has gone")]
pub struct Closed;

/// Which of our outputs a container's stream goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, Closed)
    } else {
        e
    }
}

fn write_flush(mut w: impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(data).and_then(|()| w.flush()).map_err(mark)
}

/// Writes to stdout at once (flushed).
pub fn out(data: &[u8]) -> io::Result<()> {
    write_flush(io::stdout().lock(), data)
}

/// Writes a container's output to one of our outputs at once (flushed).
pub fn write_to(target: Target, data: &[u8]) -> io::Result<()> {
    match target {
        Target::Stdout => out(data),
        Target::Stderr => write_flush(io::stderr().lock(), data),
    }
}

/// `text` with its control characters escaped as Rust writes them (`\n`,
/// `\t`, `\u{1b}`), but `\n` itself when `keep_newlines`.
fn escape_controls(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() && !(keep_newlines && c == '\n');
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A value from the appliance (a name, label, command) as a terminal may
/// show it: every control character escaped, newlines included.
pub fn printable(text: &str) -> Cow<'_, str> {
    escape_controls(text, false)
}

/// A whole line of ours, its control characters escaped but its line
/// breaks (pretty JSON has them).
fn line_text(args: std::fmt::Arguments<'_>) -> String {
    let mut text = args.to_string();
    if let Cow::Owned(escaped) = escape_controls(&text, true) {
        text = escaped;
    }
    text.push('\n');
    text
}

/// For [`outln!`].
pub fn out_line(args: std::fmt::Arguments<'_>) -> io::Result<()> {
    write_flush(io::stdout().lock(), line_text(args).as_bytes())
}

/// For [`errln!`]: a message on stderr; if stderr is gone, it is dropped.
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let mut e = io::stderr().lock();
    let _ = e.write_all(line_text(args).as_bytes());
}

/// Whether an error is (or was caused by) one of our outputs closing.
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Closed>()
            || c.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .is_some_and(|inner| inner.is::<Closed>())
    })
}

/// `println!` that returns the write's `io::Result` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::out_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics (a message nobody can read is dropped).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::err_line(format_args!($($arg)*))
    };
}

pub(crate) use {errln, outln};

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone.
    struct Gone;

    impl Write for Gone {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("web"), "web");
        assert_eq!(
            printable("a\u{1b}[2Jb\nc\td\0\u{9b}"),
            "a\\u{1b}[2Jb\\nc\\td\\0\\u{9b}"
        );
        // Lines of our own keep their breaks, and nothing else.
        assert_eq!(
            line_text(format_args!("{{\n  \"name\": \"x\u{1b}\"\n}}")),
            "{\n  \"name\": \"x\\u{1b}\"\n}\n"
        );
    }

    #[test]
    fn a_closed_output_is_told_apart_from_other_broken_pipes() {
        let e = write_flush(Gone, b"x").expect_err("gone");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        let e = anyhow::Error::from(e).context("Writing output");
        assert!(is_closed(&e));
        // Through the client's error, as a streamed log's callback fails.
        let e = write_flush(Gone, b"x").expect_err("gone");
        let e = anyhow::Error::from(crate::client::ClientError::Output(e));
        assert!(is_closed(&e));
        // A broken pipe to the appliance is a failure like any other.
        let e = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_closed(&e));
    }
}
