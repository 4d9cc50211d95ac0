//! Broker-side request decoders (feature `broker`): the requests the embedded broker serves,
//! decoded by hand with every length checked against the frame, like the response decoders.
//!
//! `kafka-protocol`'s request decoders size their collections from counts read off the wire before
//! checking them, so a hostile 4-byte frame could make them allocate gigabytes; these never
//! allocate more than the frame could hold (each element is at least `min_element` bytes).
//! Record data is not copied: it is a [`Bytes`] slice of the request frame.

use bytes::Bytes;

use super::error::ProtocolError;
use super::wire::Reader;

/// A request header (v0–v2): the API, its version, the correlation id, the client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// The API key.
    pub api_key: i16,
    /// The API version.
    pub api_version: i16,
    /// The correlation id, echoed in the response.
    pub correlation_id: i32,
    /// The client id, if any.
    pub client_id: Option<String>,
}

fn malformed(why: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed(why.into())
}

/// Whether `api_key` at `version` uses the flexible (compact, tagged-field) encoding for its
/// request body and header v2. Unknown APIs are treated as non-flexible.
pub const fn request_is_flexible(api_key: i16, version: i16) -> bool {
    match api_key {
        0 => version >= 9,  // Produce
        1 => version >= 12, // Fetch
        2 => version >= 6,  // ListOffsets
        3 => version >= 9,  // Metadata
        18 => version >= 3, // ApiVersions
        22 => version >= 2, // InitProducerId
        36 => version >= 2, // SaslAuthenticate
        _ => false,
    }
}

/// Decodes the first 8 bytes of a request (api key, version, correlation id) without the client
/// id: enough to answer or close a request whose body we will not read.
///
/// # Errors
/// [`ProtocolError::Truncated`] when the frame is shorter than 8 bytes.
pub fn peek_request_header(frame: &[u8]) -> Result<(i16, i16, i32), ProtocolError> {
    let mut r = Reader::new(frame);
    Ok((r.i16()?, r.i16()?, r.i32()?))
}

/// Decodes a request header; returns it and the offset of the body in `frame`. The client id is a
/// classic (`i16`-length) string in every header version; header v2 (flexible requests, see
/// [`request_is_flexible`]) adds a tagged-field section.
///
/// # Errors
/// [`ProtocolError`] when the header is truncated or malformed.
pub fn decode_request_header(frame: &[u8]) -> Result<(RequestHeader, usize), ProtocolError> {
    let mut r = Reader::new(frame);
    let api_key = r.i16()?;
    let api_version = r.i16()?;
    let correlation_id = r.i32()?;
    let client_id = r.nullable_string(false)?.map(str::to_owned);
    if request_is_flexible(api_key, api_version) {
        r.skip_tagged_fields()?;
    }
    let body = frame.len() - r.remaining();
    Ok((
        RequestHeader {
            api_key,
            api_version,
            correlation_id,
            client_id,
        },
        body,
    ))
}

fn end(r: &mut Reader<'_>, flexible: bool) -> Result<(), ProtocolError> {
    if flexible {
        r.skip_tagged_fields()?;
    }
    if r.remaining() != 0 {
        return Err(malformed(format!(
            "{} bytes after the end of the request",
            r.remaining()
        )));
    }
    Ok(())
}

/// An ApiVersions request (v0–v3; v3 adds the client software name and version).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiVersionsRequest {
    /// The client's software name (v3+).
    pub client_software_name: Option<String>,
    /// The client's software version (v3+).
    pub client_software_version: Option<String>,
}

/// Decodes an ApiVersions request body at `version` (0..=3).
///
/// # Errors
/// [`ProtocolError`] on a truncated or malformed body, or an unimplemented version.
pub fn decode_api_versions_request(
    body: &[u8],
    version: i16,
) -> Result<ApiVersionsRequest, ProtocolError> {
    if !(0..=3).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: 18,
            version,
        });
    }
    let mut r = Reader::new(body);
    let mut req = ApiVersionsRequest::default();
    if version >= 3 {
        req.client_software_name = Some(r.string(true)?.to_owned());
        req.client_software_version = Some(r.string(true)?.to_owned());
    }
    end(&mut r, version >= 3)?;
    Ok(req)
}

/// A Metadata request (v1–v12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRequest {
    /// The topics asked for; `None` = every topic.
    pub topics: Option<Vec<String>>,
    /// Whether unknown topics may be created (v4+; `true` before).
    pub allow_auto_topic_creation: bool,
}

/// Decodes a Metadata request body at `version` (1..=12).
///
/// # Errors
/// [`ProtocolError`] on a truncated or malformed body (a null topic name where only topic ids
/// could name it counts as malformed: topic ids are not served), or an unimplemented version.
pub fn decode_metadata_request(
    body: &[u8],
    version: i16,
) -> Result<MetadataRequest, ProtocolError> {
    if !(1..=12).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: 3,
            version,
        });
    }
    let flexible = version >= 9;
    let mut r = Reader::new(body);
    let min_topic = if version >= 10 { 17 } else { 2 };
    let topics = match r.nullable_array_len(flexible, min_topic)? {
        None => None,
        Some(n) => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                if version >= 10 {
                    r.take(16)?; // topic id
                }
                let name = r
                    .nullable_string(flexible)?
                    .ok_or_else(|| malformed("a topic by id only (topic ids are not served)"))?;
                v.push(name.to_owned());
                if flexible {
                    r.skip_tagged_fields()?;
                }
            }
            Some(v)
        }
    };
    let allow_auto_topic_creation = if version >= 4 { r.bool()? } else { true };
    if (8..=10).contains(&version) {
        r.bool()?; // include_cluster_authorized_operations
    }
    if version >= 8 {
        r.bool()?; // include_topic_authorized_operations
    }
    end(&mut r, flexible)?;
    Ok(MetadataRequest {
        topics,
        allow_auto_topic_creation,
    })
}

/// One partition's data of a Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartition {
    /// The partition index.
    pub partition: i32,
    /// The record batches, a slice of the request frame (`None`: null records).
    pub records: Option<Bytes>,
}

/// One topic's data of a Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceTopic {
    /// The topic name.
    pub name: String,
    /// Its partitions, in request order.
    pub partitions: Vec<ProducePartition>,
}

/// A Produce request (v3–v11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequest {
    /// The transactional id, if any.
    pub transactional_id: Option<String>,
    /// Acknowledgements required: 0, 1 or -1.
    pub acks: i16,
    /// The request timeout the client gave.
    pub timeout_ms: i32,
    /// The topics, in request order.
    pub topics: Vec<ProduceTopic>,
}

/// Decodes a Produce request `body` (a slice of `frame`, the whole request) at `version`
/// (3..=11). Record data is sliced out of `frame` without a copy.
///
/// # Errors
/// [`ProtocolError`] on a truncated or malformed body, or an unimplemented version.
pub fn decode_produce_request(
    frame: &Bytes,
    body_offset: usize,
    version: i16,
) -> Result<ProduceRequest, ProtocolError> {
    if !(3..=11).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: 0,
            version,
        });
    }
    let flexible = version >= 9;
    let body = frame.get(body_offset..).ok_or(ProtocolError::Truncated)?;
    let mut r = Reader::new(body);
    let transactional_id = r.nullable_string(flexible)?.map(str::to_owned);
    let acks = r.i16()?;
    let timeout_ms = r.i32()?;
    let nt = r.array_len(flexible, 2)?;
    let mut topics = Vec::with_capacity(nt);
    for _ in 0..nt {
        let name = r.string(flexible)?.to_owned();
        let np = r.array_len(flexible, 5)?;
        let mut partitions = Vec::with_capacity(np);
        for _ in 0..np {
            let partition = r.i32()?;
            let len = if flexible {
                match r.uvarint()? {
                    0 => None,
                    n => Some((n - 1) as usize),
                }
            } else {
                match r.i32()? {
                    -1 => None,
                    n if n < 0 => return Err(malformed(format!("negative records length {n}"))),
                    n => Some(n as usize),
                }
            };
            let records = match len {
                None => None,
                Some(n) => Some(frame.slice_ref(r.take(n)?)),
            };
            if flexible {
                r.skip_tagged_fields()?;
            }
            partitions.push(ProducePartition { partition, records });
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        topics.push(ProduceTopic { name, partitions });
    }
    end(&mut r, flexible)?;
    Ok(ProduceRequest {
        transactional_id,
        acks,
        timeout_ms,
        topics,
    })
}

/// One partition of a Fetch request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPartition {
    /// The partition index.
    pub partition: i32,
    /// The leader epoch the client knows (v9+; -1 otherwise).
    pub current_leader_epoch: i32,
    /// The offset to fetch from.
    pub fetch_offset: i64,
    /// The most bytes to return for this partition (at least one whole batch is returned).
    pub partition_max_bytes: i32,
}

/// One topic of a Fetch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTopic {
    /// The topic name.
    pub name: String,
    /// Its partitions, in request order.
    pub partitions: Vec<FetchPartition>,
}

/// A Fetch request (v4–v12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// The longest to wait for `min_bytes`.
    pub max_wait_ms: i32,
    /// The least bytes to answer with before `max_wait_ms`.
    pub min_bytes: i32,
    /// The most bytes for the whole response (at least one whole batch is returned).
    pub max_bytes: i32,
    /// 0 read uncommitted, 1 read committed.
    pub isolation_level: i8,
    /// The fetch session id (v7+; 0 = none).
    pub session_id: i32,
    /// The fetch session epoch (v7+; -1 = a full fetch without a session).
    pub session_epoch: i32,
    /// The topics, in request order.
    pub topics: Vec<FetchTopic>,
}

/// Decodes a Fetch request body at `version` (4..=12).
///
/// # Errors
/// [`ProtocolError`] on a truncated or malformed body, or an unimplemented version.
pub fn decode_fetch_request(body: &[u8], version: i16) -> Result<FetchRequest, ProtocolError> {
    if !(4..=12).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: 1,
            version,
        });
    }
    let flexible = version >= 12;
    let mut r = Reader::new(body);
    let _replica_id = r.i32()?;
    let max_wait_ms = r.i32()?;
    let min_bytes = r.i32()?;
    let max_bytes = r.i32()?;
    let isolation_level = r.i8()?;
    let (session_id, session_epoch) = if version >= 7 {
        (r.i32()?, r.i32()?)
    } else {
        (0, -1)
    };
    let nt = r.array_len(flexible, 2)?;
    let mut topics = Vec::with_capacity(nt);
    for _ in 0..nt {
        let name = r.string(flexible)?.to_owned();
        let np = r.array_len(flexible, 16)?;
        let mut partitions = Vec::with_capacity(np);
        for _ in 0..np {
            let partition = r.i32()?;
            let current_leader_epoch = if version >= 9 { r.i32()? } else { -1 };
            let fetch_offset = r.i64()?;
            if version >= 12 {
                r.i32()?; // last_fetched_epoch
            }
            if version >= 5 {
                r.i64()?; // log_start_offset (followers only)
            }
            let partition_max_bytes = r.i32()?;
            if flexible {
                r.skip_tagged_fields()?;
            }
            partitions.push(FetchPartition {
                partition,
                current_leader_epoch,
                fetch_offset,
                partition_max_bytes,
            });
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        topics.push(FetchTopic { name, partitions });
    }
    if version >= 7 {
        // Forgotten topics (incremental sessions): names and partition lists, ignored because no
        // session is ever created.
        let nf = r.array_len(flexible, 2)?;
        for _ in 0..nf {
            r.string(flexible)?;
            r.skip_i32_array(flexible)?;
            if flexible {
                r.skip_tagged_fields()?;
            }
        }
    }
    if version >= 11 {
        r.string(flexible)?; // rack_id
    }
    end(&mut r, flexible)?;
    Ok(FetchRequest {
        max_wait_ms,
        min_bytes,
        max_bytes,
        isolation_level,
        session_id,
        session_epoch,
        topics,
    })
}

/// One partition of a ListOffsets request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListOffsetsPartition {
    /// The partition index.
    pub partition: i32,
    /// The leader epoch the client knows (v4+; -1 otherwise).
    pub current_leader_epoch: i32,
    /// -2 earliest, -1 latest, otherwise a timestamp (ms).
    pub timestamp: i64,
}

/// One topic of a ListOffsets request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsTopic {
    /// The topic name.
    pub name: String,
    /// Its partitions, in request order.
    pub partitions: Vec<ListOffsetsPartition>,
}

/// A ListOffsets request (v1–v6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsRequest {
    /// 0 read uncommitted, 1 read committed (v2+).
    pub isolation_level: i8,
    /// The topics, in request order.
    pub topics: Vec<ListOffsetsTopic>,
}

/// Decodes a ListOffsets request body at `version` (1..=6).
///
/// # Errors
/// [`ProtocolError`] on a truncated or malformed body, or an unimplemented version.
pub fn decode_list_offsets_request(
    body: &[u8],
    version: i16,
) -> Result<ListOffsetsRequest, ProtocolError> {
    if !(1..=6).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: 2,
            version,
        });
    }
    let flexible = version >= 6;
    let mut r = Reader::new(body);
    let _replica_id = r.i32()?;
    let isolation_level = if version >= 2 { r.i8()? } else { 0 };
    let nt = r.array_len(flexible, 2)?;
    let mut topics = Vec::with_capacity(nt);
    for _ in 0..nt {
        let name = r.string(flexible)?.to_owned();
        let np = r.array_len(flexible, 12)?;
        let mut partitions = Vec::with_capacity(np);
        for _ in 0..np {
            let partition = r.i32()?;
            let current_leader_epoch = if version >= 4 { r.i32()? } else { -1 };
            let timestamp = r.i64()?;
            if flexible {
                r.skip_tagged_fields()?;
            }
            partitions.push(ListOffsetsPartition {
                partition,
                current_leader_epoch,
                timestamp,
            });
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        topics.push(ListOffsetsTopic { name, partitions });
    }
    end(&mut r, flexible)?;
    Ok(ListOffsetsRequest {
        isolation_level,
        topics,
    })
}

/// An InitProducerId request (v0–v4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProducerIdRequest {
    /// The transactional id (`None` for an idempotent-only producer).
    pub transactional_id: Option<String>,
    /// The transaction timeout.
    pub transaction_timeout_ms: i32,
    /// The current producer id when bumping the epoch (v3+; -1 otherwise).
    pub producer_id: i64,
    /// The current epoch when bumping it (v3+; -1 otherwise).
    pub producer_epoch: i16,
}

/// Decodes an InitProducerId request body at `version` (0..=4).
///
/// # Errors
/// [`ProtocolError`] on a truncated or malformed body, or an unimplemented version.
pub fn decode_init_producer_id_request(
    body: &[u8],
    version: i16,
) -> Result<InitProducerIdRequest, ProtocolError> {
    if !(0..=4).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: 22,
            version,
        });
    }
    let flexible = version >= 2;
    let mut r = Reader::new(body);
    let transactional_id = r.nullable_string(flexible)?.map(str::to_owned);
    let transaction_timeout_ms = r.i32()?;
    let (producer_id, producer_epoch) = if version >= 3 {
        (r.i64()?, r.i16()?)
    } else {
        (-1, -1)
    };
    end(&mut r, flexible)?;
    Ok(InitProducerIdRequest {
        transactional_id,
        transaction_timeout_ms,
        producer_id,
        producer_epoch,
    })
}

#[cfg(test)]
mod tests {
    //! Every decoder against `kafka-protocol`'s encoders (the oracle) at every version, and
    //! against truncation at every byte.
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages as km;
    use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

    fn encode<R: Encodable + HeaderVersion>(api_key: i16, version: i16, req: &R) -> Bytes {
        let header = km::RequestHeader::default()
            .with_request_api_key(api_key)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("oracle")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, R::header_version(version))
            .expect("header");
        req.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    fn header_ok(frame: &Bytes, api_key: i16, version: i16) -> usize {
        let (h, body) = decode_request_header(frame).expect("header");
        assert_eq!(h.api_key, api_key);
        assert_eq!(h.api_version, version);
        assert_eq!(h.correlation_id, 7);
        assert_eq!(h.client_id.as_deref(), Some("oracle"));
        body
    }

    fn topic(name: &'static str) -> km::TopicName {
        km::TopicName(StrBytes::from_static_str(name))
    }

    #[test]
    fn produce_matches_the_oracle_at_every_version_and_rejects_every_truncation() {
        for v in 3..=11 {
            let req = km::ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1234)
                .with_topic_data(vec![km::produce_request::TopicProduceData::default()
                    .with_name(topic("t"))
                    .with_partition_data(vec![
                        km::produce_request::PartitionProduceData::default()
                            .with_index(3)
                            .with_records(Some(Bytes::from_static(b"batch-bytes"))),
                    ])]);
            let frame = encode(0, v, &req);
            let body = header_ok(&frame, 0, v);
            let got = decode_produce_request(&frame, body, v).expect("decode");
            assert_eq!(got.acks, -1);
            assert_eq!(got.timeout_ms, 1234);
            assert_eq!(got.topics.len(), 1);
            assert_eq!(got.topics[0].name, "t");
            assert_eq!(got.topics[0].partitions[0].partition, 3);
            assert_eq!(
                got.topics[0].partitions[0].records.as_deref(),
                Some(&b"batch-bytes"[..])
            );
            for cut in body..frame.len() {
                assert!(decode_produce_request(&frame.slice(..cut), body, v).is_err());
            }
        }
    }

    #[test]
    fn fetch_matches_the_oracle_at_every_version_and_rejects_every_truncation() {
        for v in 4..=12 {
            let req = km::FetchRequest::default()
                .with_max_wait_ms(500)
                .with_min_bytes(10)
                .with_max_bytes(1000)
                .with_topics(vec![km::fetch_request::FetchTopic::default()
                    .with_topic(topic("t"))
                    .with_partitions(vec![km::fetch_request::FetchPartition::default()
                        .with_partition(2)
                        .with_fetch_offset(42)
                        .with_partition_max_bytes(100)])]);
            let frame = encode(1, v, &req);
            let body = header_ok(&frame, 1, v);
            let got = decode_fetch_request(&frame[body..], v).expect("decode");
            assert_eq!(
                (got.max_wait_ms, got.min_bytes, got.max_bytes),
                (500, 10, 1000)
            );
            assert_eq!(got.topics[0].name, "t");
            let p = got.topics[0].partitions[0];
            assert_eq!(
                (p.partition, p.fetch_offset, p.partition_max_bytes),
                (2, 42, 100)
            );
            for cut in body..frame.len() {
                assert!(decode_fetch_request(&frame[body..cut], v).is_err());
            }
        }
    }

    #[test]
    fn list_offsets_metadata_init_and_api_versions_match_the_oracle() {
        for v in 1..=6 {
            let req = km::ListOffsetsRequest::default().with_topics(vec![
                km::list_offsets_request::ListOffsetsTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        km::list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(1)
                            .with_timestamp(-2),
                    ]),
            ]);
            let frame = encode(2, v, &req);
            let body = header_ok(&frame, 2, v);
            let got = decode_list_offsets_request(&frame[body..], v).expect("decode");
            assert_eq!(got.topics[0].partitions[0].timestamp, -2);
            for cut in body..frame.len() {
                assert!(decode_list_offsets_request(&frame[body..cut], v).is_err());
            }
        }
        for v in 1..=12 {
            let req = km::MetadataRequest::default().with_topics(Some(vec![
                km::metadata_request::MetadataRequestTopic::default().with_name(Some(topic("t"))),
            ]));
            let frame = encode(3, v, &req);
            let body = header_ok(&frame, 3, v);
            let got = decode_metadata_request(&frame[body..], v).expect("decode");
            assert_eq!(got.topics, Some(vec!["t".to_owned()]));
            for cut in body..frame.len() {
                assert!(decode_metadata_request(&frame[body..cut], v).is_err());
            }
        }
        for v in 0..=4 {
            let mut req = km::InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000);
            if v >= 3 {
                req = req
                    .with_producer_id(km::ProducerId(9))
                    .with_producer_epoch(2);
            }
            let frame = encode(22, v, &req);
            let body = header_ok(&frame, 22, v);
            let got = decode_init_producer_id_request(&frame[body..], v).expect("decode");
            assert_eq!(got.transactional_id, None);
            assert_eq!(got.transaction_timeout_ms, 60_000);
            if v >= 3 {
                assert_eq!((got.producer_id, got.producer_epoch), (9, 2));
            }
        }
        for v in 0..=3 {
            let req = km::ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("x"))
                .with_client_software_version(StrBytes::from_static_str("1"));
            let frame = encode(18, v, &req);
            let body = header_ok(&frame, 18, v);
            let got = decode_api_versions_request(&frame[body..], v).expect("decode");
            if v >= 3 {
                assert_eq!(got.client_software_name.as_deref(), Some("x"));
            }
        }
    }

    #[test]
    fn absurd_counts_are_refused_before_allocation() {
        // acks, timeout, then 2^31-1 topics in a 10-byte body.
        let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 0];
        body.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        let frame = Bytes::from(body);
        assert_eq!(
            decode_produce_request(&frame, 0, 3),
            Err(ProtocolError::Truncated)
        );
        assert!(decode_fetch_request(&[0xff; 40], 4).is_err());
        assert!(decode_request_header(&[0, 0, 0]).is_err());
    }
}
