//! Decoders never panic: garbage, truncated and mutated frames give `Err` (or, for mutations that
//! happen to stay valid, `Ok`), for every supported version.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// Runs every decoder at every supported version on `frame`; only panics matter.
fn decode_all(frame: &[u8]) {
    for v in PRODUCE_VERSIONS.0..=PRODUCE_VERSIONS.1 {
        let _ = decode_produce_response(v, frame);
    }
    for v in METADATA_VERSIONS.0..=METADATA_VERSIONS.1 {
        let _ = decode_metadata_response(v, frame);
    }
    for v in INIT_PRODUCER_ID_VERSIONS.0..=INIT_PRODUCER_ID_VERSIONS.1 {
        let _ = decode_init_producer_id_response(v, frame);
    }
    for v in API_VERSIONS_VERSIONS.0..=API_VERSIONS_VERSIONS.1 {
        let _ = decode_api_versions_response(v, frame);
        let mut h = ApiVersionsHandshake::new("fuzz").with_max_version(v);
        let node = crate::client::NodeId(1);
        let _ = crate::client::Handshake::start(&mut h, node, 1);
        let _ =
            crate::client::Handshake::on_response(&mut h, node, Bytes::copy_from_slice(frame), 2);
    }
    let _ = BatchHeader::parse(frame);
    let _ = BatchHeader::crc_ok(frame);
}

/// Valid frames of every response type, to mutate.
fn seeds() -> Vec<(Bytes, &'static str)> {
    use super::metadata::tests::{encode_kp, kp_metadata};
    let mut out = Vec::new();
    for v in [1, 2, 7, 9, 12] {
        out.push((encode_kp(&kp_metadata(v), v, 1), "metadata"));
    }
    // A produce response written by hand at v3 and v9 shape.
    let mut b = BytesMut::new();
    {
        use bytes::BufMut;
        b.put_i32(1); // correlation id
        b.put_i32(1); // one topic
        b.put_i16(1);
        b.put_slice(b"t");
        b.put_i32(1); // one partition
        b.put_i32(0);
        b.put_i16(0);
        b.put_i64(5);
        b.put_i64(-1);
        b.put_i32(0); // throttle
    }
    out.push((b.freeze(), "produce"));
    out
}

#[test]
fn empty_and_tiny_frames_are_errors() {
    for len in 0..8 {
        let frame = vec![0u8; len];
        for v in METADATA_VERSIONS.0..=METADATA_VERSIONS.1 {
            assert!(decode_metadata_response(v, &frame).is_err());
        }
        for v in PRODUCE_VERSIONS.0..=PRODUCE_VERSIONS.1 {
            assert!(decode_produce_response(v, &frame).is_err());
        }
    }
}

/// Huge array counts in small frames are rejected before anything is allocated.
#[test]
fn huge_counts_do_not_allocate() {
    let mut frame = vec![0, 0, 0, 1];
    frame.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    for v in 3..=8 {
        assert_eq!(
            decode_produce_response(v, &frame),
            Err(ProtocolError::Truncated)
        );
    }
    // Flexible: header tagged fields 0, then a 5-byte varint count near u32::MAX.
    let frame = [0, 0, 0, 1, 0, 0xfe, 0xff, 0xff, 0xff, 0x0f];
    for v in 9..=12 {
        assert_eq!(
            decode_produce_response(v, &frame),
            Err(ProtocolError::Truncated)
        );
        assert_eq!(
            decode_metadata_response(v, &frame[..]).map(|_| ()),
            Err(ProtocolError::Truncated)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&frame);
    }

    #[test]
    fn mutated_frames_never_panic(
        seed in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let seeds = seeds();
        let (frame, _) = &seeds[seed % seeds.len()];
        let mut m = frame.to_vec();
        for (at, x) in flips {
            let i = at % m.len();
            m[i] ^= x;
        }
        decode_all(&m);
        let cut = cut % (m.len() + 1);
        decode_all(&m[..cut]);
    }
}
