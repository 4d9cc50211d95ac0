//! Length-prefixed framing: a 4-byte big-endian signed length `N`, then `N` bytes.
//!
//! Rules:
//! - `N < 0` is an error ([`FrameError::NegativeLength`]).
//! - `N > max_frame_size` is an error ([`FrameError::TooLarge`]); the check happens before any buffer
//!   is sized from `N`.
//! - `N == 0` is a valid, empty frame.
//!
//! The decoder keeps no state of its own beyond the limit: everything it needs is in the buffer, so it
//! works over any chunking of the stream, down to one byte at a time. A decoded frame is split off the
//! front of the buffer with [`BytesMut::split_to`] and frozen, so the payload is never copied.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// Size of the length prefix in bytes.
pub const HEADER_LEN: usize = 4;

/// Default maximum frame size: 100 MiB.
///
/// Kafka's clients have no cap at all (KAFKA-4090: a client pointed at a TLS port reads the TLS record
/// header as a length and tries to allocate 336 MiB); mqnet always has one.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 100 * 1024 * 1024;

/// Largest frame size the 4-byte signed header can describe.
pub const MAX_REPRESENTABLE_FRAME_SIZE: usize = i32::MAX as usize;

/// Why a frame could not be decoded or encoded. Every variant is fatal for the channel it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The peer announced a negative length.
    NegativeLength(i32),
    /// The announced (or offered) length exceeds the configured maximum frame size.
    TooLarge {
        /// Length announced by the header (or of the frame offered for sending).
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::NegativeLength(n) => write!(f, "negative frame length {n}"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame length {len} exceeds maximum frame size {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Encodes the 4-byte big-endian length prefix for a payload of `len` bytes.
///
/// # Errors
/// [`FrameError::TooLarge`] when `len` exceeds `max_frame_size` (or `i32::MAX`).
///
/// ```
/// use mqnet::net::frame::encode_header;
/// assert_eq!(encode_header(258, 1024).unwrap(), [0, 0, 1, 2]);
/// assert!(encode_header(2048, 1024).is_err());
/// ```
#[inline]
pub fn encode_header(len: usize, max_frame_size: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    let max = max_frame_size.min(MAX_REPRESENTABLE_FRAME_SIZE);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    // `len <= i32::MAX` was checked above, so the cast is lossless.
    Ok((len as u32).to_be_bytes())
}

/// Stateless frame decoder with a maximum frame size.
///
/// Call [`FrameDecoder::decode`] after appending bytes to a buffer, repeatedly, until it returns
/// `Ok(None)`.
///
/// ```
/// use bytes::BytesMut;
/// use mqnet::net::frame::FrameDecoder;
///
/// let dec = FrameDecoder::new(1024);
/// let mut buf = BytesMut::from(&[0u8, 0, 0, 3, b'a', b'b'][..]);
/// assert_eq!(dec.decode(&mut buf).unwrap(), None); // one byte short
/// buf.extend_from_slice(b"c");
/// assert_eq!(&dec.decode(&mut buf).unwrap().unwrap()[..], b"abc");
/// assert!(buf.is_empty());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame_size: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max_frame_size` (clamped to `i32::MAX`).
    pub fn new(max_frame_size: usize) -> Self {
        FrameDecoder {
            max_frame_size: max_frame_size.min(MAX_REPRESENTABLE_FRAME_SIZE),
        }
    }

    /// The configured maximum frame size.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Reads and checks the length prefix at the front of `buf`, if four bytes are there.
    ///
    /// # Errors
    /// [`FrameError`] when the length is negative or larger than the maximum.
    #[inline]
    pub fn peek_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let n = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if n < 0 {
            return Err(FrameError::NegativeLength(n));
        }
        let len = n as usize;
        if len > self.max_frame_size {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        Ok(Some(len))
    }

    /// How many more bytes `buf` needs before the frame at its front is complete.
    ///
    /// Returns the bytes missing from the header when fewer than four are buffered; `0` when a whole
    /// frame is already buffered.
    ///
    /// # Errors
    /// As [`FrameDecoder::peek_len`].
    pub fn bytes_needed(&self, buf: &[u8]) -> Result<usize, FrameError> {
        match self.peek_len(buf)? {
            None => Ok(HEADER_LEN - buf.len()),
            Some(len) => Ok((HEADER_LEN + len).saturating_sub(buf.len())),
        }
    }

    /// Splits one complete frame off the front of `buf`, without copying its payload.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame; `buf` is then left untouched.
    ///
    /// # Errors
    /// [`FrameError`] when the header at the front of `buf` is invalid. The stream cannot be resynchronised
    /// after that: close the channel.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(len) = self.peek_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        // One split of prefix and payload, then the prefix skipped on the frozen handle (a pointer
        // bump): cheaper than advancing the shared read buffer twice.
        let mut frame = buf.split_to(HEADER_LEN + len).freeze();
        frame.advance(HEADER_LEN);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn empty_frame_is_valid() {
        let dec = FrameDecoder::new(10);
        let mut buf = BytesMut::from(&frame(b"")[..]);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap().len(), 0);
        assert!(buf.is_empty());
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn negative_length_is_rejected() {
        let dec = FrameDecoder::new(10);
        let mut buf = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert_eq!(dec.decode(&mut buf), Err(FrameError::NegativeLength(-1)));
        let mut buf = BytesMut::from(&i32::MIN.to_be_bytes()[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::NegativeLength(i32::MIN))
        );
    }

    #[test]
    fn oversize_length_is_rejected_before_payload_arrives() {
        let dec = FrameDecoder::new(10);
        let mut buf = BytesMut::from(&11u32.to_be_bytes()[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        // A TLS record header read as a length (KAFKA-4090): 0x16030100 = 369295616.
        let mut buf = BytesMut::from(&[0x16u8, 0x03, 0x01, 0x00][..]);
        let dec = FrameDecoder::default();
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: 369_295_616,
                ..
            })
        ));
    }

    #[test]
    fn max_length_exactly_is_accepted() {
        let dec = FrameDecoder::new(3);
        let mut buf = BytesMut::from(&frame(b"xyz")[..]);
        assert_eq!(&dec.decode(&mut buf).unwrap().unwrap()[..], b"xyz");
    }

    #[test]
    fn one_byte_at_a_time() {
        let dec = FrameDecoder::new(1024);
        let mut stream = frame(b"hello");
        stream.extend(frame(b""));
        stream.extend(frame(b"world!"));
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in stream {
            buf.extend_from_slice(&[b]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, vec![&b"hello"[..], &b""[..], &b"world!"[..]]);
        assert!(buf.is_empty());
    }

    #[test]
    fn bytes_needed_counts_header_then_body() {
        let dec = FrameDecoder::new(1024);
        assert_eq!(dec.bytes_needed(&[]).unwrap(), 4);
        assert_eq!(dec.bytes_needed(&[0, 0]).unwrap(), 2);
        assert_eq!(dec.bytes_needed(&[0, 0, 0, 5, 1]).unwrap(), 4);
        assert_eq!(dec.bytes_needed(&frame(b"ab")).unwrap(), 0);
    }

    #[test]
    fn encode_header_round_trips() {
        let h = encode_header(300, 1000).unwrap();
        let dec = FrameDecoder::new(1000);
        assert_eq!(dec.peek_len(&h).unwrap(), Some(300));
        assert_eq!(
            encode_header(1001, 1000),
            Err(FrameError::TooLarge {
                len: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn decoded_frame_shares_the_read_buffer() {
        let dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&frame(b"zero-copy"));
        let base = buf.as_ptr() as usize;
        let f = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f.as_ptr() as usize, base + HEADER_LEN);
    }
}
