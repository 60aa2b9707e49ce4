//! Connection handshake on the raw byte stream, before SSH starts.
//!
//! A virtio-serial or serial port is not a socket: when the host reconnects
//! (an appliance restart), bytes of the previous connection may still be in
//! flight in either direction. So each connection starts with a fresh
//! nonce: the host sends `\r\nTETHER-HELLO <nonce>\r\n` (again every second
//! until answered); the tether starts a new SSH session for it and answers
//! `\r\nTETHER-OK <nonce>\r\n`. Each side discards everything before the
//! line it waits for, then speaks SSH.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const HELLO: &str = "TETHER-HELLO ";
pub const OK: &str = "TETHER-OK ";
/// Longest line either side keeps while scanning; longer ones are dropped.
const MAX_LINE: usize = 256;

/// A nonce is 1 to 64 ASCII alphanumerics.
pub fn valid_nonce(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Reads one line (through `\n`, without it and without a trailing `\r`),
/// byte by byte so that nothing after it is consumed. `Ok(None)` at end of
/// stream. Over-long lines are returned cut to `MAX_LINE` bytes.
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return Ok(None);
        }
        if b[0] == b'\n' {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
        if line.len() < MAX_LINE {
            line.push(b[0]);
        }
    }
}

/// Skips lines until one starts with `prefix` and carries a valid nonce;
/// returns the nonce.
pub async fn wait_for<R: AsyncRead + Unpin>(
    r: &mut R,
    prefix: &str,
) -> std::io::Result<Option<String>> {
    while let Some(line) = read_line(r).await? {
        if let Some(nonce) = nonce_in(&line, prefix) {
            return Ok(Some(nonce));
        }
    }
    Ok(None)
}

/// The valid nonce after `prefix` in `line`, if the line carries one.
/// Stale binary data may run into the line: the prefix is looked for
/// anywhere in it.
pub fn nonce_in(line: &[u8], prefix: &str) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let i = text.find(prefix)?;
    let nonce = text[i + prefix.len()..].trim();
    valid_nonce(nonce).then(|| nonce.to_string())
}

pub fn hello_line(nonce: &str) -> String {
    format!("\r\n{HELLO}{nonce}\r\n")
}

pub fn ok_line(nonce: &str) -> String {
    format!("\r\n{OK}{nonce}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_the_line_among_stale_bytes_and_stops_after_it() {
        let mut input: &[u8] =
            b"\x00\x07garbage\xff\r\nstale TETHER-OK old1\r\nxxTETHER-HELLO abc123\r\nSSH-2.0-next\r\n";
        assert_eq!(
            wait_for(&mut input, HELLO).await.unwrap().as_deref(),
            Some("abc123")
        );
        // Nothing after the line was consumed.
        assert_eq!(input, b"SSH-2.0-next\r\n");
    }

    #[tokio::test]
    async fn bad_nonces_are_skipped_and_eof_is_none() {
        let mut input: &[u8] = b"TETHER-HELLO bad nonce!\r\nTETHER-HELLO \r\n";
        assert_eq!(wait_for(&mut input, HELLO).await.unwrap(), None);
        assert!(valid_nonce("a1B2"));
        assert!(!valid_nonce(&"a".repeat(65)));
    }
}
