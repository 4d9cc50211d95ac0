//! Property tests of the frame codec: any stream of encoded frames, cut into any chunks, decodes back
//! to the same frames; any stream that starts with an invalid header fails with the matching error.

use bytes::BytesMut;
use mqnet::net::frame::{encode_header, FrameDecoder, FrameError, HEADER_LEN};
use proptest::prelude::*;

const MAX: usize = 4096;

/// Feeds `stream` to a decoder in chunks of the given sizes (cycled; a size of 0 is read as 1), and
/// decodes after every chunk. Returns the frames decoded, the first error, and what was left buffered.
fn decode_chunked(
    dec: FrameDecoder,
    stream: &[u8],
    chunks: &[usize],
) -> (Vec<Vec<u8>>, Option<FrameError>, usize) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().copied().cycle();
    while pos < stream.len() {
        let n = sizes.next().unwrap_or(1).max(1).min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => break,
                Err(e) => return (frames, Some(e), buf.len()),
            }
        }
    }
    (frames, None, buf.len())
}

fn encode(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut stream = Vec::new();
    for f in frames {
        stream.extend_from_slice(&encode_header(f.len(), MAX).unwrap());
        stream.extend_from_slice(f);
    }
    stream
}

/// Frame payloads: mostly small, some empty, some up to ~2000 bytes.
fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let payload = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..16),
        2 => prop::collection::vec(any::<u8>(), 0..2_000),
        1 => Just(Vec::new()),
    ];
    prop::collection::vec(payload, 0..24)
}

/// Chunk sizes: one-byte chunks, a few bytes (splitting headers), and large chunks.
fn chunk_plan() -> impl Strategy<Value = Vec<usize>> {
    let size = prop_oneof![
        2 => Just(1usize),
        2 => 1usize..8,
        2 => 1usize..600,
        1 => 1usize..10_000,
    ];
    prop::collection::vec(size, 1..32)
}

/// A header that the decoder must reject with `MAX` as the limit, and the error it must give.
fn bad_header() -> impl Strategy<Value = (i32, FrameError)> {
    prop_oneof![
        (i32::MIN..0).prop_map(|n| (n, FrameError::NegativeLength(n))),
        ((MAX as i32 + 1)..=i32::MAX).prop_map(|n| (
            n,
            FrameError::TooLarge {
                len: n as usize,
                max: MAX
            }
        )),
        Just((
            MAX as i32 + 1,
            FrameError::TooLarge {
                len: MAX + 1,
                max: MAX
            }
        )),
        Just((-1, FrameError::NegativeLength(-1))),
        Just((i32::MIN, FrameError::NegativeLength(i32::MIN))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip_over_any_chunking(frames in payloads(), chunks in chunk_plan()) {
        let stream = encode(&frames);
        let dec = FrameDecoder::new(MAX);
        let (decoded, err, left) = decode_chunked(dec, &stream, &chunks);
        prop_assert_eq!(err, None);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn round_trip_one_byte_at_a_time(frames in payloads()) {
        let stream = encode(&frames);
        let (decoded, err, left) = decode_chunked(FrameDecoder::new(MAX), &stream, &[1]);
        prop_assert_eq!(err, None);
        prop_assert_eq!(left, 0);
        prop_assert_eq!(decoded, frames);
    }

    /// A truncated stream yields the whole frames before the cut, no error, and keeps the rest
    /// buffered.
    #[test]
    fn truncated_stream_keeps_the_partial_frame(
        frames in payloads().prop_filter("need a frame", |f| !f.is_empty()),
        cut in any::<prop::sample::Index>(),
        chunks in chunk_plan(),
    ) {
        let stream = encode(&frames);
        let cut = cut.index(stream.len());
        let (decoded, err, left) = decode_chunked(FrameDecoder::new(MAX), &stream[..cut], &chunks);
        prop_assert_eq!(err, None);
        // The frames whose last byte is before the cut.
        let mut whole = Vec::new();
        let mut end = 0;
        for f in &frames {
            end += HEADER_LEN + f.len();
            if end > cut {
                break;
            }
            whole.push(f.clone());
        }
        let consumed: usize = whole.iter().map(|f| HEADER_LEN + f.len()).sum();
        prop_assert_eq!(left, cut - consumed);
        prop_assert_eq!(decoded, whole);
    }

    /// A stream whose first header is negative or over the maximum fails with the matching error,
    /// whatever follows and however it is chunked, and never yields a frame.
    #[test]
    fn invalid_first_header_is_rejected(
        (n, expected) in bad_header(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
        chunks in chunk_plan(),
    ) {
        let mut stream = n.to_be_bytes().to_vec();
        stream.extend_from_slice(&tail);
        let (decoded, err, _) = decode_chunked(FrameDecoder::new(MAX), &stream, &chunks);
        prop_assert!(decoded.is_empty());
        prop_assert_eq!(err, Some(expected));
    }

    /// Valid frames followed by an invalid header: the valid frames come out, then the error.
    #[test]
    fn invalid_header_after_valid_frames(
        frames in payloads(),
        (n, expected) in bad_header(),
        chunks in chunk_plan(),
    ) {
        let mut stream = encode(&frames);
        stream.extend_from_slice(&n.to_be_bytes());
        let (decoded, err, left) = decode_chunked(FrameDecoder::new(MAX), &stream, &chunks);
        prop_assert_eq!(err, Some(expected));
        prop_assert_eq!(left, HEADER_LEN);
        prop_assert_eq!(decoded, frames);
    }

    /// Arbitrary bytes never panic the decoder, and chunking never changes the outcome.
    #[test]
    fn arbitrary_bytes_decode_the_same_over_any_chunking(
        stream in prop::collection::vec(any::<u8>(), 0..512),
        chunks in chunk_plan(),
        max in 0usize..64,
    ) {
        let dec = FrameDecoder::new(max);
        let whole = decode_chunked(dec, &stream, &[usize::MAX]);
        let chunked = decode_chunked(dec, &stream, &chunks);
        prop_assert_eq!(chunked.0, whole.0);
        prop_assert_eq!(chunked.1, whole.1);
    }
}
