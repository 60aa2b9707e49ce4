//! Decompression of image layers by content sniffing (feature `compression`, the appliance
//! only): gzip via flate2 on miniz_oxide, zstd via ruzstd, plain tar passed through. Pure Rust,
//! so the default build stays free of C. Owns only the choice of decoder; it knows nothing of
//! tar.

use std::io::{self, BufRead, BufReader, Cursor, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const BUFFER: usize = 1 << 20;

/// Wraps `r` in the decoder its first bytes call for: gzip (1f 8b, several members allowed),
/// zstd (28 b5 2f fd, several frames and skippable frames allowed), or none.
pub fn decompressed<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(BUFFER, r);
    let mut head = [0u8; 4];
    let mut len = 0;
    while len < head.len() {
        match r.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let sniffed = &head[..len];
    let stream = Cursor::new(sniffed.to_vec()).chain(r);
    Ok(if sniffed.starts_with(&GZIP_MAGIC) {
        Box::new(flate2::bufread::MultiGzDecoder::new(stream))
    } else if sniffed == ZSTD_MAGIC {
        Box::new(Zstd {
            source: stream,
            decoder: FrameDecoder::new(),
            in_frame: false,
        })
    } else {
        Box::new(stream)
    })
}

/// A zstd stream of one or more frames. ruzstd's `StreamingDecoder` stops after one frame.
struct Zstd<R: BufRead> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

fn invalid(error: FrameDecoderError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.reset(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.source).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped != u64::from(length) {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        continue;
                    }
                    Err(error) => return Err(invalid(error)),
                }
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() {
                if self.decoder.can_collect() == 0 {
                    self.in_frame = false;
                }
                continue;
            }
            self.decoder
                .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(BUFFER))
                .map_err(invalid)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{CompressionLevel, compress_to_vec};
    use std::io::Write;

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn read_all(mut r: Box<dyn Read + '_>) -> Vec<u8> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn plain_passes_through() {
        let data = sample();
        assert_eq!(read_all(decompressed(&data[..]).unwrap()), data);
        assert_eq!(read_all(decompressed(&b"ab"[..]).unwrap()), b"ab");
        assert!(read_all(decompressed(&b""[..]).unwrap()).is_empty());
    }

    #[test]
    fn gzip_is_sniffed_with_several_members() {
        let data = sample();
        let mut gz = Vec::new();
        for half in data.chunks(data.len() / 2) {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(half).unwrap();
            gz.extend(encoder.finish().unwrap());
        }
        assert_eq!(read_all(decompressed(&gz[..]).unwrap()), data);
    }

    #[test]
    fn zstd_is_sniffed_with_several_and_skippable_frames() {
        let data = sample();
        let mut zst = Vec::new();
        let (first, second) = data.split_at(data.len() / 3);
        zst.extend(compress_to_vec(first, CompressionLevel::Fastest));
        // A skippable frame (magic 0x184D2A50, little endian, then a 32-bit length).
        zst.extend([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]);
        zst.extend(compress_to_vec(second, CompressionLevel::Fastest));
        assert_eq!(read_all(decompressed(&zst[..]).unwrap()), data);
    }

    #[test]
    fn corrupt_zstd_is_an_error() {
        let mut zst = compress_to_vec(&sample()[..], CompressionLevel::Fastest);
        zst.truncate(zst.len() / 2);
        let mut out = Vec::new();
        assert!(
            decompressed(&zst[..])
                .unwrap()
                .read_to_end(&mut out)
                .is_err()
        );
    }
}
