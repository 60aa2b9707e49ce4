//! The VM console: where the tether tells a human what it is doing.
//!
//! Owns writing to `/dev/console` (or stderr before it exists). Every line is
//! prefixed with `tether: ` except the two landmark lines the host waits for
//! (`tether <version> starting`, `tether ready`). It must not buffer: a line
//! written here is on the serial port before the call returns.

use std::fmt;
use std::io::Write;

/// Writes one line to the console.
pub fn line(args: fmt::Arguments<'_>) {
    let mut out = std::io::stderr().lock();
    let _ = writeln!(out, "{args}");
    let _ = out.flush();
}

/// `info!("...")`: a progress line on the console.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::console::line(format_args!("tether: {}", format_args!($($arg)*))) };
}

/// `error!("...")`: an error line on the console, marked so that the host
/// can find it in the console log.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::console::line(format_args!("tether: error: {}", format_args!($($arg)*))) };
}
