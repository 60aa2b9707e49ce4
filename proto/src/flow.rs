//! Flow control on attach and archive channels, above SSH's own.
//!
//! SSH windows cannot hold a stream back here: the SSH library re-opens a
//! channel's window as soon as bytes arrive, not when they are consumed, and
//! a channel whose consumer is slow then blocks the whole connection (every
//! other session, the RPC channel, the acknowledgements that would unblock
//! it). So each side of an attach channel grants its peer credit in bytes
//! consumed, and a sender never has more than a window's worth of bytes
//! beyond the credit it was given:
//!
//! - output (tether to host): the host sends extended data of type
//!   [`EXT_CREDIT`] holding the total stdout + stderr bytes it has consumed
//!   since the attach opened; the tether keeps at most [`OUTPUT_WINDOW`]
//!   bytes sent beyond that;
//! - stdin (host to tether): the tether sends [`EXT_CREDIT`] with the total
//!   stdin bytes the process has taken; the host keeps at most
//!   [`STDIN_WINDOW`] bytes sent beyond that.
//!
//! Archive channels (`archive.proto`) take the same credit:
//!
//! - copy out (GET, tether to host): the host's credit counts the tar bytes
//!   its reader has taken; the tether keeps at most [`OUTPUT_WINDOW`]
//!   beyond it;
//! - copy in (PUT, host to tether): the tether's credit counts the tar bytes
//!   its unpacking has taken; the host keeps at most [`UPLOAD_WINDOW`]
//!   beyond it, once the tether's reply has said it grants credit.
//!
//! Each side drains its channel promptly into its own queue, bounded by the
//! window, so a connection never waits on one slow consumer.

/// Extended-data type of stderr (RFC 4254's `SSH_EXTENDED_DATA_STDERR`).
pub const EXT_STDERR: u32 = 1;
/// Extended-data type of a credit: 8 bytes, a big-endian running total.
pub const EXT_CREDIT: u32 = 2;
/// Output bytes the tether may send beyond the host's credit, per attach.
pub const OUTPUT_WINDOW: u64 = 4 << 20;
/// Stdin bytes the host may send beyond the tether's credit, per attach.
pub const STDIN_WINDOW: u64 = 1 << 20;
/// Tar bytes the host may send beyond the tether's credit, per copy in.
pub const UPLOAD_WINDOW: u64 = 4 << 20;
/// A consumer grants credit once it has consumed this much since the last.
pub const CREDIT_EVERY: u64 = 256 << 10;

/// The payload of a credit message.
pub fn encode_credit(total: u64) -> [u8; 8] {
    total.to_be_bytes()
}

/// Reads a credit message; `None` if it is not 8 bytes.
pub fn decode_credit(data: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(data).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_round_trip_and_reject_other_lengths() {
        for v in [0, 1, CREDIT_EVERY, u64::MAX] {
            assert_eq!(decode_credit(&encode_credit(v)), Some(v));
        }
        assert_eq!(decode_credit(&[0; 7]), None);
        assert_eq!(decode_credit(&[0; 9]), None);
        // Windows must leave room for credit to come back before a sender
        // stalls.
        const { assert!(CREDIT_EVERY * 4 <= STDIN_WINDOW) };
        const { assert!(STDIN_WINDOW <= OUTPUT_WINDOW) };
        const { assert!(CREDIT_EVERY * 4 <= UPLOAD_WINDOW) };
    }
}
