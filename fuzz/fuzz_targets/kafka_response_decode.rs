//! Fuzzes the Kafka response decoders the producer runs on broker answers: ApiVersions, Metadata,
//! Produce and InitProducerId, at every version mqnet speaks and a few it does not.
//!
//! Input layout: byte 0 picks the API (`% 4`: ApiVersions, Metadata, Produce, InitProducerId);
//! byte 1 picks the version (`% 16`, so out-of-range versions are tried too); the rest is the
//! response frame without its length prefix. Every decoder must return `Ok` or a typed error,
//! never panic, and never allocate without bound (libFuzzer's `-malloc_limit_mb` / `-rss_limit_mb`
//! catch an absurd count turned into an allocation). An out-of-range version must be refused with
//! `UnsupportedVersion` whatever the bytes; decoding is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqnet::protocol::{
    decode_api_versions_response, decode_init_producer_id_response, decode_metadata_response,
    decode_produce_response, ProtocolError, API_VERSIONS_VERSIONS, INIT_PRODUCER_ID_VERSIONS,
    METADATA_VERSIONS, PRODUCE_VERSIONS,
};

fn in_range(v: i16, range: (i16, i16)) -> bool {
    (range.0..=range.1).contains(&v)
}

/// Decodes twice and checks the outcomes agree (compared through their `Debug` form) and that an
/// unsupported version is refused as such.
fn check<T: std::fmt::Debug>(
    version: i16,
    range: (i16, i16),
    frame: &[u8],
    decode: fn(i16, &[u8]) -> Result<T, ProtocolError>,
) {
    let first = decode(version, frame);
    if !in_range(version, range) {
        assert!(
            matches!(first, Err(ProtocolError::UnsupportedVersion { .. })),
            "version {version} outside {range:?} was not refused: {first:?}"
        );
        return;
    }
    let second = decode(version, frame);
    assert_eq!(format!("{first:?}"), format!("{second:?}"), "decoding is not deterministic");
}

fuzz_target!(|data: &[u8]| {
    let [api, version, frame @ ..] = data else {
        return;
    };
    let version = i16::from(*version % 16);
    match api % 4 {
        0 => check(version, API_VERSIONS_VERSIONS, frame, decode_api_versions_response),
        1 => check(version, METADATA_VERSIONS, frame, decode_metadata_response),
        2 => check(version, PRODUCE_VERSIONS, frame, decode_produce_response),
        _ => check(
            version,
            INIT_PRODUCER_ID_VERSIONS,
            frame,
            decode_init_producer_id_response,
        ),
    }
});
