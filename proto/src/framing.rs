//! Length-delimited framing of protobuf messages over a byte stream: a varint
//! length, then the encoded message.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Errors reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("Reading frame")]
    Io(#[from] std::io::Error),
    #[error("Frame length prefix is not a valid varint")]
    BadLength,
    #[error("Frame of {0} bytes exceeds the {max} byte limit", max = crate::MAX_FRAME)]
    TooLarge(u64),
    #[error("Stream ended inside a frame")]
    Truncated,
    #[error("Decoding message")]
    Decode(#[from] prost::DecodeError),
}

/// Reads one message. `Ok(None)` means the stream ended cleanly between frames.
pub async fn read_message<M, R>(r: &mut R) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let mut len: u64 = 0;
    let mut i = 0;
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        i += 1;
        if b[0] & 0x80 == 0 {
            break;
        }
        if i == 10 {
            return Err(FrameError::BadLength);
        }
    }
    if len > crate::MAX_FRAME as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(M::decode(body.as_slice())?))
}

/// Decodes one message from the front of `buf`, for callers that receive
/// the bytes in chunks (SSH channel messages) rather than as a stream.
/// `Ok(None)`: `buf` does not hold a whole frame yet. Otherwise the message
/// and how many bytes of `buf` it took.
pub fn decode_frame<M: Message + Default>(buf: &[u8]) -> Result<Option<(M, usize)>, FrameError> {
    let mut len: u64 = 0;
    let mut i = 0;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= u64::from(b & 0x7f) << (7 * i);
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i == 10 {
            return Err(FrameError::BadLength);
        }
    }
    if len > crate::MAX_FRAME as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let end = i + len as usize;
    match buf.get(i..end) {
        Some(body) => Ok(Some((M::decode(body)?, end))),
        None => Ok(None),
    }
}

/// Writes one message and flushes.
pub async fn write_message<M, W>(w: &mut W, msg: &M) -> std::io::Result<()>
where
    M: Message,
    W: AsyncWrite + Unpin,
{
    let buf = msg.encode_length_delimited_to_vec();
    w.write_all(&buf).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Ping, Request, request::Body};

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        for id in 0..3u64 {
            let req = Request {
                id,
                body: Some(Body::Ping(Ping {
                    payload: vec![7; 300],
                })),
            };
            write_message(&mut buf, &req).await.unwrap();
        }
        let mut r = buf.as_slice();
        for id in 0..3u64 {
            let got: Request = read_message(&mut r).await.unwrap().unwrap();
            assert_eq!(got.id, id);
        }
        assert!(read_message::<Request, _>(&mut r).await.unwrap().is_none());
    }

    #[test]
    fn frames_decode_from_chunks() {
        let ping = Ping {
            payload: vec![9; 200],
        };
        let mut buf = ping.encode_length_delimited_to_vec();
        let whole = buf.len();
        buf.extend_from_slice(b"tar bytes");
        for cut in [0, 1, 2, whole - 1] {
            assert!(decode_frame::<Ping>(&buf[..cut]).unwrap().is_none());
        }
        let (got, used) = decode_frame::<Ping>(&buf).unwrap().unwrap();
        assert_eq!((got, used), (ping, whole));
        assert_eq!(&buf[used..], b"tar bytes");
        assert!(matches!(
            decode_frame::<Ping>(&[0xff; 11]),
            Err(FrameError::BadLength)
        ));
        let mut huge = Vec::new();
        prost::encoding::encode_varint((crate::MAX_FRAME + 1) as u64, &mut huge);
        assert!(matches!(
            decode_frame::<Ping>(&huge),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn truncated_and_oversized_frames_are_errors() {
        let mut buf = Vec::new();
        write_message(
            &mut buf,
            &Ping {
                payload: vec![1; 50],
            },
        )
        .await
        .unwrap();
        let mut r = &buf[..buf.len() - 1];
        assert!(matches!(
            read_message::<Ping, _>(&mut r).await,
            Err(FrameError::Truncated)
        ));
        let huge = prost::encoding::encode_varint;
        let mut hdr = Vec::new();
        huge((crate::MAX_FRAME + 1) as u64, &mut hdr);
        let mut r = hdr.as_slice();
        assert!(matches!(
            read_message::<Ping, _>(&mut r).await,
            Err(FrameError::TooLarge(_))
        ));
    }
}
