//! Produce, hand-written: the request (header and body) is written straight into the caller's send
//! buffer around the record batches, and the response is decoded without `kafka-protocol`.

use bytes::{BufMut, BytesMut};

use super::api;
use super::error::{KafkaError, ProtocolError};
use super::metadata::BrokerMeta;
use super::wire::{put_uvarint, uvarint_size, Reader};
use super::PRODUCE_VERSIONS;

/// The topic-partition batches of one produce request: `(topic, [(partition, batch bytes)])`.
pub type ProduceTopics<'a> = [(&'a str, &'a [(i32, &'a [u8])])];

/// The request header fields a hand-written request writer puts first (request header v1, or v2
/// for flexible versions; the API key comes from the writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader<'a> {
    /// The negotiated version of the request.
    pub api_version: i16,
    /// The correlation id the response will carry.
    pub correlation_id: i32,
    /// The client id (never longer than `i16::MAX` bytes).
    pub client_id: &'a str,
}

/// Everything of a Produce request ahead of its topics: the request header, `acks` (0, 1 or -1)
/// and the broker-side `timeout_ms`. The transactional id is always null.
///
/// # Example
///
/// ```
/// use mqnet::protocol::{ProduceHeader, RequestHeader};
///
/// let header = ProduceHeader {
///     request: RequestHeader { api_version: 9, correlation_id: 1, client_id: "client" },
///     acks: -1,
///     timeout_ms: 30_000,
/// };
/// assert_eq!(header.request.api_version, 9);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceHeader<'a> {
    /// The request header.
    pub request: RequestHeader<'a>,
    /// The acknowledgements the broker waits for: 0, 1 or -1 (all in-sync replicas).
    pub acks: i16,
    /// How long the broker may wait for the acknowledgements, ms.
    pub timeout_ms: i32,
}

fn check_version(version: i16) {
    assert!(
        (PRODUCE_VERSIONS.0..=PRODUCE_VERSIONS.1).contains(&version),
        "produce request version {version} is outside the supported {}..={}",
        PRODUCE_VERSIONS.0,
        PRODUCE_VERSIONS.1
    );
}

fn check_i16_len(what: &str, len: usize) {
    assert!(len <= i16::MAX as usize, "{what} is too long ({len} bytes)");
}

/// Size of a string field: `i16` length, or (flexible) varint length + 1.
#[inline]
fn string_size(flexible: bool, len: usize) -> usize {
    if flexible {
        uvarint_size(len as u32 + 1) + len
    } else {
        2 + len
    }
}

#[inline]
fn array_header_size(flexible: bool, n: usize) -> usize {
    if flexible {
        uvarint_size(n as u32 + 1)
    } else {
        4
    }
}

#[inline]
fn put_string(buf: &mut BytesMut, flexible: bool, s: &[u8]) {
    if flexible {
        put_uvarint(buf, s.len() as u32 + 1);
    } else {
        buf.put_i16(s.len() as i16);
    }
    buf.put_slice(s);
}

#[inline]
fn put_array_header(buf: &mut BytesMut, flexible: bool, n: usize) {
    if flexible {
        put_uvarint(buf, n as u32 + 1);
    } else {
        buf.put_i32(n as i32);
    }
}

/// The size of a produce request as [`write_produce_request_unprefixed`] writes it (request header
/// and body, without the 4-byte length prefix).
///
/// # Panics
///
/// As [`write_produce_request`].
pub fn produce_request_size(header: &ProduceHeader<'_>, topics: &ProduceTopics<'_>) -> usize {
    let version = header.request.api_version;
    let client_id = header.request.client_id;
    check_version(version);
    check_i16_len("client id", client_id.len());
    let flexible = version >= 9;
    // Header: api key, api version, correlation id, client id (never compact), tagged fields (v2).
    let mut n = 2 + 2 + 4 + 2 + client_id.len() + usize::from(flexible);
    // transactional_id (null), acks, timeout_ms.
    n += if flexible { 1 } else { 2 } + 2 + 4;
    n += array_header_size(flexible, topics.len());
    for (topic, partitions) in topics {
        check_i16_len("topic name", topic.len());
        n += string_size(flexible, topic.len());
        n += array_header_size(flexible, partitions.len());
        for (_, batch) in partitions.iter() {
            n += 4; // partition index
            n += if flexible {
                uvarint_size(batch.len() as u32 + 1)
            } else {
                4
            } + batch.len();
            n += usize::from(flexible); // partition tagged fields
        }
        n += usize::from(flexible); // topic tagged fields
    }
    n + usize::from(flexible) // request tagged fields
}

/// Writes a Produce request — the 4-byte length prefix, the request header (v1, or v2 from
/// produce v9) and the body — at the end of `buf`, for `Selector::send_prefixed`-style sending
/// (`buf.split().freeze()`).
///
/// The header's `api_version` is the negotiated version (3..=12; flexible from v9: compact strings
/// and arrays, tagged fields). `topics` gives each topic's
/// `(partition, record batch)` pairs, the batches as [`RecordBatchWriter`](super::RecordBatchWriter)
/// finished them. Reserves the exact size first: nothing is allocated if `buf` has the capacity.
///
/// # Panics
///
/// If the version is outside [`PRODUCE_VERSIONS`], or the client id or a topic name is longer than
/// `i16::MAX` bytes (both are programming errors: versions come from
/// [`ApiVersions::negotiate`](super::ApiVersions::negotiate)).
pub fn write_produce_request(
    buf: &mut BytesMut,
    header: &ProduceHeader<'_>,
    topics: &ProduceTopics<'_>,
) {
    write_request(buf, true, header, topics);
}

/// As [`write_produce_request`], without the length prefix: the frame `Transport::send` and
/// [`NetworkClient::send`](crate::client::NetworkClient::send) take.
///
/// # Panics
///
/// As [`write_produce_request`].
pub fn write_produce_request_unprefixed(
    buf: &mut BytesMut,
    header: &ProduceHeader<'_>,
    topics: &ProduceTopics<'_>,
) {
    write_request(buf, false, header, topics);
}

/// A Produce request written incrementally, for a caller that does not want to build the
/// `topics` slice of [`write_produce_request`]: [`begin`](Self::begin) with the number of topics,
/// then for each topic [`topic`](Self::topic) with its number of partitions followed by that many
/// [`partition`](Self::partition) calls, then [`finish`](Self::finish). Writes the same bytes as
/// [`write_produce_request`] (or its unprefixed variant) for the same input; nothing is allocated
/// unless `buf` must grow (reserve [`produce_request_size`] bytes, plus 4 if prefixed, first).
///
/// The same buffer must be passed to every call, with no bytes removed from it until `finish`.
///
/// # Example
///
/// ```
/// use bytes::BytesMut;
/// use mqnet::protocol::{ProduceHeader, ProduceRequestWriter, RecordBatchWriter, RequestHeader};
///
/// let mut batch = BytesMut::new();
/// let mut w = RecordBatchWriter::begin(&mut batch, 0);
/// w.append(&mut batch, 0, None, Some(b"v"), &[]);
/// w.finish(&mut batch, -1, -1, -1);
///
/// let mut buf = BytesMut::with_capacity(1024);
/// let header = ProduceHeader {
///     request: RequestHeader { api_version: 9, correlation_id: 1, client_id: "client" },
///     acks: -1,
///     timeout_ms: 30_000,
/// };
/// let mut req = ProduceRequestWriter::begin(&mut buf, true, &header, 1);
/// req.topic(&mut buf, "events", 1);
/// req.partition(&mut buf, 0, &batch);
/// req.finish(&mut buf);
/// let frame = buf.split().freeze(); // length prefix included
/// assert_eq!(u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize, frame.len() - 4);
/// ```
#[derive(Debug)]
pub struct ProduceRequestWriter {
    /// Where the length prefix is, if any.
    prefix_at: Option<usize>,
    flexible: bool,
    topics_left: usize,
    partitions_left: usize,
    in_topic: bool,
}

impl ProduceRequestWriter {
    /// Writes the length prefix placeholder (if `prefixed`), the request header (v1, or v2 from
    /// produce v9) and the body up to the topic array's length, at the end of `buf`.
    ///
    /// # Panics
    ///
    /// As [`write_produce_request`].
    pub fn begin(
        buf: &mut BytesMut,
        prefixed: bool,
        header: &ProduceHeader<'_>,
        topic_count: usize,
    ) -> Self {
        let RequestHeader {
            api_version: version,
            correlation_id,
            client_id,
        } = header.request;
        check_version(version);
        check_i16_len("client id", client_id.len());
        let flexible = version >= 9;
        let prefix_at = prefixed.then(|| {
            let at = buf.len();
            buf.put_i32(0);
            at
        });
        buf.put_i16(api::PRODUCE);
        buf.put_i16(version);
        buf.put_i32(correlation_id);
        buf.put_i16(client_id.len() as i16);
        buf.put_slice(client_id.as_bytes());
        if flexible {
            buf.put_u8(0); // header tagged fields
            buf.put_u8(0); // transactional_id: null compact string
        } else {
            buf.put_i16(-1); // transactional_id: null
        }
        buf.put_i16(header.acks);
        buf.put_i32(header.timeout_ms);
        put_array_header(buf, flexible, topic_count);
        ProduceRequestWriter {
            prefix_at,
            flexible,
            topics_left: topic_count,
            partitions_left: 0,
            in_topic: false,
        }
    }

    fn end_topic(&mut self, buf: &mut BytesMut) {
        if self.in_topic {
            assert_eq!(
                self.partitions_left, 0,
                "ProduceRequestWriter: a topic got fewer partitions than announced"
            );
            if self.flexible {
                buf.put_u8(0); // topic tagged fields
            }
            self.in_topic = false;
        }
    }

    /// Starts the next topic, which will have `partition_count` partitions.
    ///
    /// # Panics
    ///
    /// If more topics are written than announced to `begin`, the previous topic got fewer
    /// partitions than announced, or `name` is longer than `i16::MAX` bytes.
    pub fn topic(&mut self, buf: &mut BytesMut, name: &str, partition_count: usize) {
        self.end_topic(buf);
        assert!(
            self.topics_left > 0,
            "ProduceRequestWriter: more topics than announced"
        );
        check_i16_len("topic name", name.len());
        self.topics_left -= 1;
        put_string(buf, self.flexible, name.as_bytes());
        put_array_header(buf, self.flexible, partition_count);
        self.partitions_left = partition_count;
        self.in_topic = true;
    }

    /// Adds a partition's record batch to the current topic.
    ///
    /// # Panics
    ///
    /// If there is no current topic or it already has all its announced partitions.
    pub fn partition(&mut self, buf: &mut BytesMut, partition: i32, records: &[u8]) {
        assert!(
            self.in_topic && self.partitions_left > 0,
            "ProduceRequestWriter: more partitions than announced"
        );
        self.partitions_left -= 1;
        buf.put_i32(partition);
        if self.flexible {
            put_uvarint(buf, records.len() as u32 + 1);
        } else {
            buf.put_i32(records.len() as i32);
        }
        buf.put_slice(records);
        if self.flexible {
            buf.put_u8(0); // partition tagged fields
        }
    }

    /// Ends the request and fills in the length prefix, if any.
    ///
    /// # Panics
    ///
    /// If fewer topics or partitions were written than announced.
    pub fn finish(mut self, buf: &mut BytesMut) {
        self.end_topic(buf);
        assert_eq!(
            self.topics_left, 0,
            "ProduceRequestWriter: fewer topics than announced"
        );
        if self.flexible {
            buf.put_u8(0); // request tagged fields
        }
        if let Some(at) = self.prefix_at {
            let len = (buf.len() - at - 4) as i32;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
}

fn write_request(
    buf: &mut BytesMut,
    prefixed: bool,
    header: &ProduceHeader<'_>,
    topics: &ProduceTopics<'_>,
) {
    let size = produce_request_size(header, topics);
    buf.reserve(size + if prefixed { 4 } else { 0 });
    let mut w = ProduceRequestWriter::begin(buf, prefixed, header, topics.len());
    for (topic, partitions) in topics {
        w.topic(buf, topic, partitions.len());
        for (partition, batch) in partitions.iter() {
            w.partition(buf, *partition, batch);
        }
    }
    w.finish(buf);
}

/// One partition's result in a [`ProduceResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionProduceResult {
    /// The partition.
    pub partition: i32,
    /// The error, if the batch was not written.
    pub error: Option<KafkaError>,
    /// The offset of the batch's first record (-1 on error, or with acks=0).
    pub base_offset: i64,
    /// The broker's append time with `LogAppendTime` topics, else -1.
    pub log_append_time_ms: i64,
    /// The partition's log start offset (v5+, else -1).
    pub log_start_offset: i64,
    /// Per-record errors (v8+): `(batch index, message)` — the records that made the broker
    /// reject the batch with `INVALID_RECORD`.
    pub record_errors: Vec<(i32, Option<String>)>,
    /// The error message (v8+).
    pub error_message: Option<String>,
    /// The new leader `(leader id, leader epoch)` the broker suggests on `NOT_LEADER_OR_FOLLOWER`
    /// (v10+, KIP-951).
    pub current_leader: Option<(i32, i32)>,
}

/// A decoded Produce response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProduceResponse {
    /// Results per topic, in the broker's order.
    pub topics: Vec<(String, Vec<PartitionProduceResult>)>,
    /// How long the broker throttled the request, ms.
    pub throttle_time_ms: i32,
    /// Endpoints of the leaders named in `current_leader` (v10+, KIP-951).
    pub node_endpoints: Vec<BrokerMeta>,
}

/// Decodes a Produce response at `version` (3..=12) from a frame without the length prefix
/// (response header v0, or v1 from v9).
///
/// # Errors
///
/// [`ProtocolError::UnsupportedVersion`] for a version outside [`PRODUCE_VERSIONS`];
/// [`ProtocolError::Truncated`] or [`ProtocolError::Malformed`] if the frame is not a valid
/// response at that version. Partition errors are in the result, not an `Err`.
pub fn decode_produce_response(
    version: i16,
    frame: &[u8],
) -> Result<ProduceResponse, ProtocolError> {
    if !(PRODUCE_VERSIONS.0..=PRODUCE_VERSIONS.1).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: api::PRODUCE,
            version,
        });
    }
    let flexible = version >= 9;
    let mut r = Reader::new(frame);
    r.response_header(flexible)?;
    // A topic is at least a name length and an array length.
    let n_topics = r.array_len(flexible, 2)?;
    let mut topics = Vec::with_capacity(n_topics);
    for _ in 0..n_topics {
        let name = r.string(flexible)?.to_owned();
        // A partition is at least 4 + 2 + 8 + 8 bytes.
        let n_parts = r.array_len(flexible, 22)?;
        let mut parts = Vec::with_capacity(n_parts);
        for _ in 0..n_parts {
            parts.push(decode_partition(&mut r, version)?);
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        topics.push((name, parts));
    }
    let throttle_time_ms = r.i32()?;
    let mut node_endpoints = Vec::new();
    if flexible {
        r.tagged_fields(|tag, data| {
            if tag == 0 && version >= 10 {
                node_endpoints = decode_node_endpoints(data)?;
            }
            Ok(())
        })?;
    }
    Ok(ProduceResponse {
        topics,
        throttle_time_ms,
        node_endpoints,
    })
}

fn decode_partition(
    r: &mut Reader<'_>,
    version: i16,
) -> Result<PartitionProduceResult, ProtocolError> {
    let flexible = version >= 9;
    let partition = r.i32()?;
    let error = KafkaError::from_code(r.i16()?);
    let base_offset = r.i64()?;
    let log_append_time_ms = r.i64()?;
    let log_start_offset = if version >= 5 { r.i64()? } else { -1 };
    let mut record_errors = Vec::new();
    let mut error_message = None;
    if version >= 8 {
        let n = r.array_len(flexible, 5)?;
        record_errors.reserve(n);
        for _ in 0..n {
            let index = r.i32()?;
            let msg = r.nullable_string(flexible)?.map(str::to_owned);
            if flexible {
                r.skip_tagged_fields()?;
            }
            record_errors.push((index, msg));
        }
        error_message = r.nullable_string(flexible)?.map(str::to_owned);
    }
    let mut current_leader = None;
    if flexible {
        r.tagged_fields(|tag, data| {
            if tag == 0 && version >= 10 {
                let mut t = Reader::new(data);
                let leader_id = t.i32()?;
                let leader_epoch = t.i32()?;
                t.skip_tagged_fields()?;
                current_leader = Some((leader_id, leader_epoch));
            }
            Ok(())
        })?;
    }
    Ok(PartitionProduceResult {
        partition,
        error,
        base_offset,
        log_append_time_ms,
        log_start_offset,
        record_errors,
        error_message,
        current_leader,
    })
}

fn decode_node_endpoints(data: &[u8]) -> Result<Vec<BrokerMeta>, ProtocolError> {
    let mut r = Reader::new(data);
    let n = r.array_len(true, 11)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let node_id = r.i32()?;
        let host = r.string(true)?.to_owned();
        let port = r.i32()?;
        let _rack = r.nullable_string(true)?;
        r.skip_tagged_fields()?;
        out.push(BrokerMeta {
            node_id,
            host,
            port,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(
        version: i16,
        corr: i32,
        client_id: &str,
        acks: i16,
        timeout_ms: i32,
    ) -> ProduceHeader<'_> {
        ProduceHeader {
            request: super::RequestHeader {
                api_version: version,
                correlation_id: corr,
                client_id,
            },
            acks,
            timeout_ms,
        }
    }
    use crate::protocol::RecordBatchWriter;
    use bytes::Bytes;
    use kafka_protocol::messages::produce_response::{
        BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
        TopicProduceResponse,
    };
    use kafka_protocol::messages::{
        BrokerId, ProduceRequest, ProduceResponse as KpResponse, RequestHeader, ResponseHeader,
        TopicName,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
    use kafka_protocol::records::RecordBatchDecoder;

    fn batch(n: usize, tag: &str) -> Bytes {
        let mut buf = BytesMut::new();
        let mut w = RecordBatchWriter::begin(&mut buf, 1_000);
        for i in 0..n {
            let k = format!("{tag}-k{i}");
            let v = format!("{tag}-v{i}");
            w.append(
                &mut buf,
                1_000 + i as i64,
                Some(k.as_bytes()),
                Some(v.as_bytes()),
                &[],
            );
        }
        w.finish(&mut buf, 11, 2, 100);
        buf.freeze()
    }

    /// Our request, decoded by kafka-protocol's broker side.
    #[test]
    fn produce_request_decoded_by_kafka_protocol() {
        let a0 = batch(3, "a0");
        let a1 = batch(1, "a1");
        let b5 = batch(2, "b5");
        let a_parts = [(0, &a0[..]), (1, &a1[..])];
        let b_parts = [(5, &b5[..])];
        let topics = [("topic-a", &a_parts[..]), ("b", &b_parts[..])];
        for version in PRODUCE_VERSIONS.0..=PRODUCE_VERSIONS.1 {
            let mut buf = BytesMut::with_capacity(8192);
            let cap = buf.capacity();
            buf.put_slice(b"xx");
            write_produce_request(
                &mut buf,
                &hdr(version, 77, "mqnet-test", -1, 30_000),
                &topics,
            );
            assert_eq!(buf.capacity(), cap, "v{version}: no reallocation");
            let mut frame = buf.freeze().slice(2..);
            let len = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            assert_eq!(len, frame.len() - 4, "v{version}: length prefix");
            assert_eq!(
                len,
                produce_request_size(&hdr(version, 77, "mqnet-test", -1, 30_000), &topics)
            );
            let mut body = frame.split_off(4);

            let hv = ProduceRequest::header_version(version);
            let header = RequestHeader::decode(&mut body, hv).expect("header");
            assert_eq!(header.request_api_key, api::PRODUCE);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, 77);
            assert_eq!(header.client_id.as_deref(), Some("mqnet-test"));
            let req = ProduceRequest::decode(&mut body, version).expect("body");
            assert!(
                body.is_empty(),
                "v{version}: {} bytes left over",
                body.len()
            );
            assert_eq!(req.transactional_id, None);
            assert_eq!(req.acks, -1);
            assert_eq!(req.timeout_ms, 30_000);
            assert_eq!(req.topic_data.len(), 2);
            let names: Vec<&str> = req.topic_data.iter().map(|t| &*t.name.0).collect();
            assert_eq!(names, ["topic-a", "b"]);
            let a = &req.topic_data[0].partition_data;
            assert_eq!(a.len(), 2);
            assert_eq!((a[0].index, a[1].index), (0, 1));
            assert_eq!(a[0].records.as_ref(), Some(&a0));
            assert_eq!(a[1].records.as_ref(), Some(&a1));
            let b = &req.topic_data[1].partition_data;
            assert_eq!(b[0].index, 5);
            // The batch inside the request decodes, CRC checked.
            let mut records = b[0].records.clone().unwrap();
            let set = RecordBatchDecoder::decode(&mut records).expect("batch");
            assert_eq!(set.records.len(), 2);
            assert_eq!(set.records[1].key.as_deref(), Some(&b"b5-k1"[..]));
            assert_eq!(set.records[1].sequence, 101);
        }
    }

    #[test]
    fn unprefixed_matches_prefixed() {
        let b = batch(2, "x");
        let parts = [(3, &b[..])];
        let topics = [("t", &parts[..])];
        for version in [3, 7, 9, 12] {
            let mut p = BytesMut::new();
            write_produce_request(&mut p, &hdr(version, 1, "c", 1, 100), &topics);
            let mut u = BytesMut::new();
            write_produce_request_unprefixed(&mut u, &hdr(version, 1, "c", 1, 100), &topics);
            assert_eq!(&p[4..], &u[..]);
        }
    }

    #[test]
    fn streaming_writer_matches_slice_writer() {
        let a = batch(2, "a");
        let b = batch(1, "b");
        let a_parts = [(0, &a[..]), (2, &b[..])];
        let b_parts = [(1, &b[..])];
        let topics = [("ta", &a_parts[..]), ("tb", &b_parts[..])];
        for version in PRODUCE_VERSIONS.0..=PRODUCE_VERSIONS.1 {
            for prefixed in [false, true] {
                let mut expect = BytesMut::new();
                if prefixed {
                    write_produce_request(&mut expect, &hdr(version, 4, "c", 1, 9), &topics);
                } else {
                    write_produce_request_unprefixed(
                        &mut expect,
                        &hdr(version, 4, "c", 1, 9),
                        &topics,
                    );
                }
                let mut buf = BytesMut::new();
                buf.put_slice(b"junk");
                let mut w =
                    ProduceRequestWriter::begin(&mut buf, prefixed, &hdr(version, 4, "c", 1, 9), 2);
                for (t, parts) in &topics {
                    w.topic(&mut buf, t, parts.len());
                    for (p, records) in parts.iter() {
                        w.partition(&mut buf, *p, records);
                    }
                }
                w.finish(&mut buf);
                assert_eq!(&buf[4..], &expect[..], "v{version} prefixed={prefixed}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "fewer partitions than announced")]
    fn streaming_writer_checks_counts() {
        let mut buf = BytesMut::new();
        let mut w = ProduceRequestWriter::begin(&mut buf, true, &hdr(9, 1, "c", 1, 1), 2);
        w.topic(&mut buf, "a", 2);
        w.partition(&mut buf, 0, b"");
        w.topic(&mut buf, "b", 0);
    }

    #[test]
    fn empty_request_and_empty_client_id() {
        for version in [3, 9] {
            let mut buf = BytesMut::new();
            write_produce_request_unprefixed(&mut buf, &hdr(version, 5, "", 0, 1), &[]);
            let mut body = buf.freeze();
            let header =
                RequestHeader::decode(&mut body, ProduceRequest::header_version(version)).unwrap();
            assert_eq!(header.client_id.as_deref(), Some(""));
            let req = ProduceRequest::decode(&mut body, version).unwrap();
            assert!(req.topic_data.is_empty() && body.is_empty());
        }
    }

    #[test]
    #[should_panic(expected = "outside the supported")]
    fn version_13_panics() {
        write_produce_request(&mut BytesMut::new(), &hdr(13, 0, "c", 1, 1), &[]);
    }

    fn kp_response(version: i16) -> KpResponse {
        let ok = PartitionProduceResponse::default()
            .with_index(0)
            .with_error_code(0)
            .with_base_offset(12_345)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(if version >= 5 { 7 } else { -1 });
        let mut err = PartitionProduceResponse::default()
            .with_index(3)
            .with_error_code(6)
            .with_base_offset(-1)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(-1);
        if version >= 8 {
            err = err
                .with_error_message(Some(StrBytes::from_static_str("not the leader")))
                .with_record_errors(vec![BatchIndexAndErrorMessage::default()
                    .with_batch_index(2)
                    .with_batch_index_error_message(Some(StrBytes::from_static_str("bad")))]);
        }
        if version >= 10 {
            err = err.with_current_leader(
                LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(4))
                    .with_leader_epoch(9),
            );
        }
        let mut resp = KpResponse::default()
            .with_responses(vec![
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_responses(vec![ok, err]),
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_static_str("empty")))
                    .with_partition_responses(vec![]),
            ])
            .with_throttle_time_ms(15);
        if version >= 10 {
            resp = resp.with_node_endpoints(vec![NodeEndpoint::default()
                .with_node_id(BrokerId(4))
                .with_host(StrBytes::from_static_str("b4.example"))
                .with_port(9093)
                .with_rack(Some(StrBytes::from_static_str("r1")))]);
        }
        resp
    }

    fn encode_response<R: Encodable + HeaderVersion>(resp: &R, version: i16, corr: i32) -> Bytes {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(corr)
            .encode(&mut buf, R::header_version(version))
            .unwrap();
        resp.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    /// kafka-protocol's response, decoded by ours.
    #[test]
    fn produce_response_from_kafka_protocol() {
        for version in PRODUCE_VERSIONS.0..=PRODUCE_VERSIONS.1 {
            let frame = encode_response(&kp_response(version), version, 9);
            let resp = decode_produce_response(version, &frame).expect("decodes");
            assert_eq!(resp.throttle_time_ms, 15);
            assert_eq!(resp.topics.len(), 2);
            assert_eq!(resp.topics[0].0, "orders");
            assert!(resp.topics[1].1.is_empty());
            let ok = &resp.topics[0].1[0];
            assert_eq!((ok.partition, ok.error, ok.base_offset), (0, None, 12_345));
            assert_eq!(ok.log_start_offset, if version >= 5 { 7 } else { -1 });
            let err = &resp.topics[0].1[1];
            assert_eq!(err.partition, 3);
            assert_eq!(err.error, Some(KafkaError::NotLeaderOrFollower));
            if version >= 8 {
                assert_eq!(err.error_message.as_deref(), Some("not the leader"));
                assert_eq!(err.record_errors, vec![(2, Some("bad".to_owned()))]);
            } else {
                assert!(err.error_message.is_none() && err.record_errors.is_empty());
            }
            if version >= 10 {
                assert_eq!(err.current_leader, Some((4, 9)));
                assert_eq!(resp.node_endpoints.len(), 1);
                assert_eq!(resp.node_endpoints[0].host, "b4.example");
                assert_eq!(resp.node_endpoints[0].port, 9093);
            } else {
                assert_eq!(err.current_leader, None);
                assert!(resp.node_endpoints.is_empty());
            }
            // Every strict prefix is an error, never a panic.
            for cut in 0..frame.len() {
                assert!(
                    decode_produce_response(version, &frame[..cut]).is_err(),
                    "v{version} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn produce_response_version_checked() {
        assert!(matches!(
            decode_produce_response(2, &[0; 16]),
            Err(ProtocolError::UnsupportedVersion {
                api_key: 0,
                version: 2
            })
        ));
    }
}
