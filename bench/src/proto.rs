//! The echo workload's wire format (Kafka-shaped), shared by every implementation.
//!
//! - request  = `u32 BE length S | i16 api_key = 0 | i16 api_version = 0 | i32 correlation_id |
//!   S − 8 bytes of padding`
//! - response = `u32 BE length R | i32 correlation_id | R − 4 bytes of padding`
//!
//! The length prefixes are written by the framing layer (the Selector, or `LengthDelimitedCodec`);
//! the functions here build and check payloads only.

use bytes::{Bytes, BytesMut};

/// Smallest request payload: api_key, api_version, correlation_id.
pub const MIN_REQUEST: usize = 8;
/// Smallest response payload: correlation_id.
pub const MIN_RESPONSE: usize = 4;
/// Largest request or response payload the harness accepts on the command line.
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
/// Bytes on the wire per frame besides its payload.
pub const PREFIX: usize = 4;
/// Requests with more padding than this are sent as their fixed fields plus one shared padding
/// buffer, by a vectored write (no copy of the padding per request); smaller ones are written
/// whole, since one more `iovec` costs more than copying a few hundred bytes. The padding stands
/// in for a request's bulk — a record batch a producer already holds in memory. The reference
/// peer `mio-floor` does the same above its `--vectored-above`, default 2048.
pub const VECTORED_PADDING_ABOVE: usize = 2048;

/// Builds payloads into a shared arena: each payload is split off one large buffer, so building a
/// frame does not allocate once the arena's earlier frames have been sent and dropped.
#[derive(Debug)]
pub struct Encoder {
    arena: BytesMut,
    zeros: Vec<u8>,
}

impl Encoder {
    /// An encoder for payloads of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Encoder {
            arena: BytesMut::with_capacity((max * 64).clamp(64 * 1024, 4 * 1024 * 1024)),
            zeros: vec![0; max + PREFIX],
        }
    }

    fn room(&mut self, len: usize) {
        if self.arena.capacity() - self.arena.len() < len {
            let chunk = (len * 64).clamp(64 * 1024, 4 * 1024 * 1024).max(len);
            self.arena.reserve(chunk);
        }
    }

    /// A request payload of `size` bytes (at least [`MIN_REQUEST`]) with `correlation_id`.
    pub fn request(&mut self, size: usize, correlation_id: i32) -> Bytes {
        self.build(false, size.max(MIN_REQUEST), Some(0), correlation_id)
    }

    /// As [`request`](Encoder::request), preceded by its 4-byte length prefix (for
    /// `Selector::send_prefixed`: one buffer per frame instead of prefix + payload).
    pub fn request_prefixed(&mut self, size: usize, correlation_id: i32) -> Bytes {
        self.build(true, size.max(MIN_REQUEST), Some(0), correlation_id)
    }

    /// A response payload of `size` bytes (at least [`MIN_RESPONSE`]) with `correlation_id`.
    pub fn response(&mut self, size: usize, correlation_id: i32) -> Bytes {
        self.build(false, size.max(MIN_RESPONSE), None, correlation_id)
    }

    /// `[len]` (if `prefixed`) `[api_key api_version]` (if `header` is given) `corr` padding, with
    /// a payload of `size` bytes: one copy of zeros, then the fixed fields written over its front.
    #[inline]
    fn build(&mut self, prefixed: bool, size: usize, header: Option<i32>, corr: i32) -> Bytes {
        let total = size + if prefixed { PREFIX } else { 0 };
        self.room(total);
        let start = self.arena.len();
        self.arena.extend_from_slice(&self.zeros[..total]);
        let frame = &mut self.arena[start..];
        let mut at = 0;
        if prefixed {
            frame[..PREFIX].copy_from_slice(&(size as u32).to_be_bytes());
            at = PREFIX;
        }
        if let Some(h) = header {
            frame[at..at + 4].copy_from_slice(&h.to_be_bytes());
            at += 4;
        }
        frame[at..at + 4].copy_from_slice(&corr.to_be_bytes());
        self.arena.split().freeze()
    }
}

/// The correlation id of a request payload, if it is a well-formed echo request (api_key 0,
/// api_version 0, long enough).
pub fn request_correlation(payload: &[u8]) -> Option<i32> {
    let h = payload.get(..MIN_REQUEST)?;
    if h[..4] != [0, 0, 0, 0] {
        return None;
    }
    Some(i32::from_be_bytes([h[4], h[5], h[6], h[7]]))
}

/// Why a response did not match its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The payload had the wrong length.
    Size { got: usize, want: usize },
    /// The correlation id was not the one expected next on the connection.
    Correlation { got: i32, want: i32 },
}

/// Checks a response payload against the expected size and correlation id.
pub fn check_response(payload: &[u8], want_size: usize, want_corr: i32) -> Result<(), Mismatch> {
    let want = want_size.max(MIN_RESPONSE);
    if payload.len() != want {
        return Err(Mismatch::Size {
            got: payload.len(),
            want,
        });
    }
    let got = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    if got != want_corr {
        return Err(Mismatch::Correlation {
            got,
            want: want_corr,
        });
    }
    Ok(())
}

/// Per-connection correlation ids: distinct across connections so a crossed wire shows up.
#[derive(Debug, Clone, Copy)]
pub struct CorrelationSeq {
    next: i32,
}

impl CorrelationSeq {
    /// Ids of connection `conn` start at `conn * 2^20` and wrap within non-negative values.
    pub fn for_conn(conn: usize) -> Self {
        CorrelationSeq {
            next: ((conn as i64 * (1 << 20)) % i64::from(i32::MAX)) as i32,
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> i32 {
        let id = self.next;
        self.next = if id == i32::MAX { 0 } else { id + 1 };
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_round_trip() {
        let mut e = Encoder::new(1024);
        let r = e.request(100, 42);
        assert_eq!(r.len(), 100);
        assert_eq!(request_correlation(&r), Some(42));
        let resp = e.response(16, 42);
        assert_eq!(check_response(&resp, 16, 42), Ok(()));
        assert_eq!(
            check_response(&resp, 16, 43),
            Err(Mismatch::Correlation { got: 42, want: 43 })
        );
        assert_eq!(
            check_response(&resp, 20, 42),
            Err(Mismatch::Size { got: 16, want: 20 })
        );
        assert_eq!(request_correlation(&[0, 1, 0, 0, 0, 0, 0, 1]), None);
        let p = e.request_prefixed(100, 7);
        assert_eq!(p.len(), 104);
        assert_eq!(&p[..4], &100u32.to_be_bytes());
        assert_eq!(&p[4..], &e.request(100, 7)[..]);
        assert_eq!(request_correlation(&[0, 0, 0]), None);
    }

    #[test]
    fn many_frames_from_one_arena() {
        let mut e = Encoder::new(16 * 1024);
        let frames: Vec<Bytes> = (0..1000).map(|i| e.request(16 * 1024, i)).collect();
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(request_correlation(f), Some(i as i32));
        }
    }
}
