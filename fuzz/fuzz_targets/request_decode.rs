//! Fuzzes the broker's request decoders (`mqnet::protocol::requests`) and its batch validator over
//! arbitrary request frames, dispatched as the broker dispatches them: by the api key and version
//! in the frame's own header.
//!
//! Nothing may panic; a decoded Produce request's record slices must lie within the frame; the
//! batch validator must accept or refuse every slice without panicking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqnet::broker::batch::validate;
use mqnet::protocol::requests::{
    decode_api_versions_request, decode_fetch_request, decode_init_producer_id_request,
    decode_list_offsets_request, decode_metadata_request, decode_produce_request,
    decode_request_header,
};

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let Ok((header, body)) = decode_request_header(&frame) else {
        return;
    };
    assert!(body <= frame.len());
    let v = header.api_version;
    let b = &frame[body..];
    match header.api_key {
        0 => {
            if let Ok(req) = decode_produce_request(&frame, body, v) {
                for t in &req.topics {
                    for p in &t.partitions {
                        if let Some(r) = &p.records {
                            assert!(r.len() <= frame.len());
                            let _ = validate(r, 1 << 20);
                        }
                    }
                }
            }
        }
        1 => {
            let _ = decode_fetch_request(b, v);
        }
        2 => {
            let _ = decode_list_offsets_request(b, v);
        }
        3 => {
            let _ = decode_metadata_request(b, v);
        }
        18 => {
            let _ = decode_api_versions_request(b, v);
        }
        22 => {
            let _ = decode_init_producer_id_request(b, v);
        }
        _ => {
            // Any body as a record batch too.
            let _ = validate(b, 1 << 20);
        }
    }
});
