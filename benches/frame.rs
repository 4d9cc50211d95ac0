//! Frame decoding throughput over a pre-built stream, for small (100 B) and large (16 KiB) frames.
//!
//! Decoding never copies a payload (each frame is split off the buffer), so its cost is per frame, not
//! per byte: the 16 KiB figure in bytes/s is large because a 1 MiB stream holds only 63 such frames.
//!
//! Run with `cargo bench --bench frame`.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mqnet::net::frame::{encode_header, FrameDecoder};

/// Bytes of encoded frames per iteration (about 1 MiB, so the stream fits in L2/L3 and the copy into
/// a fresh buffer in the untimed setup stays cheap).
const STREAM_BYTES: usize = 1 << 20;
const MAX_FRAME: usize = 1 << 20;

fn stream_of(payload_len: usize) -> (Vec<u8>, usize) {
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let frames = (STREAM_BYTES / (payload_len + 4)).max(1);
    let mut stream = Vec::with_capacity(frames * (payload_len + 4));
    for _ in 0..frames {
        stream.extend_from_slice(&encode_header(payload_len, MAX_FRAME).unwrap());
        stream.extend_from_slice(&payload);
    }
    (stream, frames)
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_decode");
    let dec = FrameDecoder::new(MAX_FRAME);
    for (name, payload_len) in [("100B", 100usize), ("16KiB", 16 * 1024)] {
        let (stream, frames) = stream_of(payload_len);
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&stream[..]),
                |mut buf| {
                    let mut n = 0usize;
                    while let Some(frame) = dec.decode(&mut buf).expect("valid stream") {
                        black_box(&frame);
                        n += 1;
                    }
                    assert_eq!(n, frames);
                    buf
                },
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decode
}
criterion_main!(benches);
