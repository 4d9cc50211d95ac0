//! The glue to `kafka-protocol`, used for control-plane requests.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::RequestHeader;
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

use super::error::ProtocolError;

fn encode_error(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Encode(format!("{e:#}"))
}

/// Encodes request header + `req` at `version` into one frame (no length prefix), sized exactly.
pub(crate) fn encode_request<R: Encodable + HeaderVersion>(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    req: &R,
) -> Result<Bytes, ProtocolError> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let header_version = R::header_version(version);
    let size = header.compute_size(header_version).map_err(encode_error)?
        + req.compute_size(version).map_err(encode_error)?;
    let mut buf = BytesMut::with_capacity(size);
    header
        .encode(&mut buf, header_version)
        .map_err(encode_error)?;
    req.encode(&mut buf, version).map_err(encode_error)?;
    Ok(buf.freeze())
}
