//! InitProducerId, for an idempotent (non-transactional) producer: the request is encoded with
//! `kafka-protocol`, the response decoded by hand.

use bytes::Bytes;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::ProducerId;

use super::api;
use super::error::{KafkaError, ProtocolError};
use super::kp::encode_request;
use super::wire::Reader;
use super::INIT_PRODUCER_ID_VERSIONS;

/// The transaction timeout sent with InitProducerId: Kafka's `transaction.timeout.ms` default (the
/// broker ignores it without a transactional id).
pub const INIT_PRODUCER_ID_TIMEOUT_MS: i32 = 60_000;

/// A decoded InitProducerId response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitProducerIdResponse {
    /// The error, if no id was allocated (`COORDINATOR_LOAD_IN_PROGRESS`, `NOT_COORDINATOR`, ...
    /// are retriable).
    pub error: Option<KafkaError>,
    /// The producer id (-1 on error).
    pub producer_id: i64,
    /// The producer epoch (-1 on error).
    pub producer_epoch: i16,
}

fn check_version(version: i16) -> Result<(), ProtocolError> {
    if (INIT_PRODUCER_ID_VERSIONS.0..=INIT_PRODUCER_ID_VERSIONS.1).contains(&version) {
        Ok(())
    } else {
        Err(ProtocolError::UnsupportedVersion {
            api_key: api::INIT_PRODUCER_ID,
            version,
        })
    }
}

/// Encodes an InitProducerId request (without the length prefix) at `version` (0..=4) for an
/// idempotent producer: transactional id null, transaction timeout
/// [`INIT_PRODUCER_ID_TIMEOUT_MS`], and from v3 producer id and epoch -1 (a new id, not a bump).
///
/// # Errors
///
/// [`ProtocolError::UnsupportedVersion`] for a version outside [`INIT_PRODUCER_ID_VERSIONS`];
/// [`ProtocolError::Encode`] if `kafka-protocol` refuses the message.
pub fn encode_init_producer_id_request(
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<Bytes, ProtocolError> {
    check_version(version)?;
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(INIT_PRODUCER_ID_TIMEOUT_MS)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    encode_request(
        api::INIT_PRODUCER_ID,
        version,
        correlation_id,
        client_id,
        &req,
    )
}

/// Decodes an InitProducerId response at `version` (0..=4) from a frame without the length
/// prefix (response header v0, or v1 from v2).
///
/// # Errors
///
/// [`ProtocolError::UnsupportedVersion`] for a version outside [`INIT_PRODUCER_ID_VERSIONS`];
/// [`ProtocolError::Truncated`] or [`ProtocolError::Malformed`] if the frame is not a valid
/// response at that version. A broker error is in the result's `error`, not an `Err`.
pub fn decode_init_producer_id_response(
    version: i16,
    frame: &[u8],
) -> Result<InitProducerIdResponse, ProtocolError> {
    check_version(version)?;
    let flexible = version >= 2;
    let mut r = Reader::new(frame);
    r.response_header(flexible)?;
    let _throttle_time_ms = r.i32()?;
    let error = KafkaError::from_code(r.i16()?);
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    if flexible {
        r.skip_tagged_fields()?;
    }
    Ok(InitProducerIdResponse {
        error,
        producer_id,
        producer_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::metadata::tests::encode_kp;
    use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse as KpResponse;
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::{Decodable, HeaderVersion};

    #[test]
    fn request_decoded_by_kafka_protocol() {
        for version in INIT_PRODUCER_ID_VERSIONS.0..=INIT_PRODUCER_ID_VERSIONS.1 {
            let mut b = encode_init_producer_id_request(version, 8, "p").unwrap();
            let h = RequestHeader::decode(&mut b, InitProducerIdRequest::header_version(version))
                .unwrap();
            assert_eq!(
                (h.request_api_key, h.request_api_version),
                (api::INIT_PRODUCER_ID, version)
            );
            assert_eq!(h.correlation_id, 8);
            let req = InitProducerIdRequest::decode(&mut b, version).unwrap();
            assert!(b.is_empty());
            assert_eq!(req.transactional_id, None);
            assert_eq!(req.transaction_timeout_ms, INIT_PRODUCER_ID_TIMEOUT_MS);
            assert_eq!((req.producer_id.0, req.producer_epoch), (-1, -1));
        }
        assert!(encode_init_producer_id_request(5, 1, "p").is_err());
    }

    #[test]
    fn response_from_kafka_protocol() {
        for version in INIT_PRODUCER_ID_VERSIONS.0..=INIT_PRODUCER_ID_VERSIONS.1 {
            let ok = KpResponse::default()
                .with_throttle_time_ms(1)
                .with_producer_id(ProducerId(123_456_789_012))
                .with_producer_epoch(4);
            let frame = encode_kp(&ok, version, 5);
            let r = decode_init_producer_id_response(version, &frame).unwrap();
            assert_eq!(
                r,
                InitProducerIdResponse {
                    error: None,
                    producer_id: 123_456_789_012,
                    producer_epoch: 4
                }
            );
            for cut in 0..frame.len() {
                assert!(decode_init_producer_id_response(version, &frame[..cut]).is_err());
            }
            let err = KpResponse::default()
                .with_error_code(14)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let r =
                decode_init_producer_id_response(version, &encode_kp(&err, version, 6)).unwrap();
            assert_eq!(r.error, Some(KafkaError::CoordinatorLoadInProgress));
            assert!(r.error.unwrap().is_retriable());
        }
    }
}
