//! Fuzzes `FrameDecoder::decode` over arbitrary chunkings of an arbitrary byte stream.
//!
//! Input layout: byte 0 is `k`; the next `k % 16 + 1` bytes are chunk sizes (each read as `1 + b`
//! bytes, cycled), and the rest is the stream. The stream is fed to the decoder chunk by chunk,
//! decoding after every chunk, and the outcome must equal a one-shot decode of the whole stream: the
//! same frames, the same error (if any), the same bytes left over (buffered, or not yet fed when an
//! error stopped decoding). Nothing may panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqnet::net::frame::{FrameDecoder, FrameError, HEADER_LEN};

const MAX_FRAME: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    error: Option<FrameError>,
    left: Vec<u8>,
}

fn decode_chunked(dec: FrameDecoder, stream: &[u8], chunks: &[usize]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().copied().cycle();
    while pos < stream.len() {
        let n = sizes.next().unwrap_or(1).clamp(1, stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME, "frame over the maximum");
                    frames.push(frame.to_vec());
                }
                Ok(None) => {
                    // Not enough for a frame: the decoder must have left the buffer untouched and
                    // must agree that bytes are still needed.
                    assert!(dec.bytes_needed(&buf).expect("header was accepted") > 0);
                    break;
                }
                Err(e) => {
                    // Decoding stops here; what was not fed yet counts as left over too, so the
                    // outcome does not depend on where the chunk boundary fell.
                    let mut left = buf.to_vec();
                    left.extend_from_slice(&stream[pos..]);
                    return Outcome {
                        frames,
                        error: Some(e),
                        left,
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
        left: buf.to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let plan_len = (usize::from(k) % 16 + 1).min(rest.len());
    let (plan, stream) = rest.split_at(plan_len);
    let chunks: Vec<usize> = plan.iter().map(|&b| usize::from(b) + 1).collect();

    let dec = FrameDecoder::new(MAX_FRAME);
    let whole = decode_chunked(dec, stream, &[usize::MAX]);
    let chunked = decode_chunked(dec, stream, &chunks);
    assert_eq!(chunked, whole, "chunking changed the outcome");

    // The frames and what is left (plus the headers) account for every byte of the stream, in order,
    // unless an error stopped decoding; then the bytes left start with the rejected header.
    let mut rebuilt = Vec::with_capacity(stream.len());
    for f in &whole.frames {
        rebuilt.extend_from_slice(&(f.len() as u32).to_be_bytes());
        rebuilt.extend_from_slice(f);
    }
    rebuilt.extend_from_slice(&whole.left);
    assert_eq!(rebuilt, stream, "decoded frames do not rebuild the stream");
    if let Some(err) = whole.error {
        assert!(whole.left.len() >= HEADER_LEN);
        let n = i32::from_be_bytes([whole.left[0], whole.left[1], whole.left[2], whole.left[3]]);
        let expected = if n < 0 {
            FrameError::NegativeLength(n)
        } else {
            FrameError::TooLarge {
                len: n as usize,
                max: MAX_FRAME,
            }
        };
        assert_eq!(err, expected);
    }
});
