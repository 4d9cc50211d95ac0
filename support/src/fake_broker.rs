//! A scripted fake Kafka broker over [`mqnet::server::Server`], on its own thread, 127.0.0.1 only.
//!
//! It decodes every request with the `kafka-protocol` crate (the test oracle), answers with
//! `kafka-protocol`-encoded responses, keeps a per-partition log with Kafka's idempotent-producer
//! rules (sequences start at 0 and are contiguous; a resent batch among the last five is a
//! duplicate answered with its original offset), checks every record batch's CRC32C twice
//! (independently with the `crc32c` crate, and through `kafka-protocol`'s `RecordBatchDecoder`),
//! and plays scripted faults: error codes for the next produce requests of a partition, a
//! connection dropped instead of an answer, produce requests never answered. Anything it finds
//! wrong is recorded as a violation for the test to assert on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProducerId, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder, TimestampType};
use mqnet::net::{ChannelId, DisconnectReason, SelectorWaker};
use mqnet::server::{DeferredHandler, Handler, Mode, Responder, Server, ServerStats};

/// Kafka api keys.
pub mod api {
    pub const PRODUCE: i16 = 0;
    pub const METADATA: i16 = 3;
    pub const API_VERSIONS: i16 = 18;
    pub const INIT_PRODUCER_ID: i16 = 22;
}

pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
pub const NOT_ENOUGH_REPLICAS: i16 = 19;

/// Size of the record batch v2 header (base offset through record count).
pub const BATCH_HEADER: usize = 61;
/// The hard bound on a broker thread's life, whatever the test does.
const MAX_LIFE: Duration = Duration::from_secs(600);

/// What the broker advertises and how it behaves.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// ApiVersions range; a request above it gets `UNSUPPORTED_VERSION` in a v0 body that
    /// lists this range (as Kafka brokers answer).
    pub api_versions: (i16, i16),
    pub metadata: (i16, i16),
    pub produce: (i16, i16),
    pub init_producer_id: (i16, i16),
    /// Partitions of every topic asked for; this broker leads them all.
    pub partitions: i32,
    pub node_id: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Never answer produce requests (they are recorded and appended, then held).
    pub hold_produce: bool,
    /// Run the server in deferred mode, whose `Responder` can close a connection (needed
    /// for [`DropMode`] faults); inline mode otherwise.
    pub deferred: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            api_versions: (0, 3),
            metadata: (1, 12),
            produce: (3, 12),
            init_producer_id: (0, 4),
            partitions: 4,
            node_id: 1,
            producer_id: 4242,
            producer_epoch: 7,
            hold_produce: false,
            deferred: false,
        }
    }
}

/// One record of a decoded batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Rec {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub timestamp: i64,
}

/// One record batch (v2) of a produce request, parsed by hand and checked against
/// `kafka-protocol`'s decoding of the same bytes.
#[derive(Debug, Clone)]
pub struct Batch {
    pub topic: String,
    pub partition: i32,
    /// The whole batch as it came on the wire.
    pub raw: Bytes,
    pub base_offset: i64,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records: Vec<Rec>,
}

/// What the broker did with a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Responded,
    /// `acks=0`: no response, as Kafka.
    NoResponse,
    /// Scripted: never answered.
    Held,
    /// Scripted: the connection was closed instead.
    Closed,
    /// The request was invalid (a violation was recorded).
    Rejected,
}

/// A produce request as the broker received it.
#[derive(Debug, Clone)]
pub struct ProduceCall {
    pub conn: ChannelId,
    pub header: RequestHeader,
    /// The frame, without its length prefix.
    pub raw: Bytes,
    /// The request as `kafka-protocol` decoded it.
    pub request: ProduceRequest,
    /// Every batch of every partition, in request order.
    pub batches: Vec<Batch>,
    /// Per partition: `(topic, partition, error code, base offset)` answered (or that would
    /// have been answered, for unanswered requests).
    pub outcome: Vec<(String, i32, i16, i64)>,
    pub answer: Answer,
}

impl ProduceCall {
    /// The error code given to `topic`-`partition` in this request, if it was in it.
    pub fn code_for(&self, topic: &str, partition: i32) -> Option<i16> {
        self.outcome
            .iter()
            .find(|(t, p, _, _)| t == topic && *p == partition)
            .map(|o| o.2)
    }
}

/// A record in a partition's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub offset: i64,
    pub rec: Rec,
}

/// One partition's log and its idempotent-producer state.
#[derive(Debug, Default)]
pub struct PartitionLog {
    pub records: Vec<Stored>,
    producer: Option<(i64, i16)>,
    next_sequence: i32,
    /// The last five batches: `(base sequence, record count, base offset)`.
    recent: VecDeque<(i32, i32, i64)>,
}

/// How a scripted connection drop treats the request it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropMode {
    /// The request is lost: nothing is appended.
    BeforeAppend,
    /// The request is appended, only the response is lost: the resend is a duplicate.
    AfterAppend,
}

/// One request: `(connection, api key, api version)`.
pub type RequestLine = (ChannelId, i16, i16);

/// Everything the broker saw and did.
#[derive(Debug)]
pub struct State {
    cfg: BrokerConfig,
    host: String,
    port: i32,
    pub requests: Vec<RequestLine>,
    pub produce: Vec<ProduceCall>,
    pub logs: HashMap<(String, i32), PartitionLog>,
    pub violations: Vec<String>,
    pub connections: Vec<ChannelId>,
    pub disconnections: Vec<(ChannelId, DisconnectReason)>,
    /// Batches recognised as resends of already appended ones.
    pub duplicates: usize,
    faults: HashMap<(String, i32), VecDeque<i16>>,
    drops: VecDeque<DropMode>,
    topics: Vec<String>,
    /// InitProducerId requests answered so far: each one gets the next epoch, as a real
    /// broker hands a new producer id/epoch to every InitProducerId without one.
    pub inits: i16,
    /// Partitions that had a scripted fault (error or drop): an OUT_OF_ORDER_SEQUENCE_NUMBER
    /// there is the expected answer to batches that were in flight behind the fault.
    faulted: HashSet<(String, i32)>,
    /// OUT_OF_ORDER_SEQUENCE_NUMBER answers on faulted partitions (elsewhere each is a
    /// violation).
    pub out_of_order: usize,
    /// Metadata answers every topic with LEADER_NOT_AVAILABLE while set (records wait in the
    /// producer for the topic's partitions).
    pub hide_topics: bool,
    /// Scripted error codes for the batch of `(topic, partition, base sequence)`.
    sequence_faults: HashMap<(String, i32, i32), VecDeque<i16>>,
    /// The code answered for a batch recognised as a resend of an appended one (0, as Kafka
    /// for the last five batches; DUPLICATE_SEQUENCE_NUMBER as older brokers).
    pub duplicate_code: i16,
    /// Never answer produce requests while set (switchable; see `BrokerConfig::hold_produce`).
    pub hold: bool,
    /// Metadata lists one partition with this index for every topic while set.
    pub partition_index: Option<i32>,
    /// Error codes for the next InitProducerId answers, in order.
    pub init_errors: VecDeque<i16>,
    /// When each InitProducerId request arrived.
    pub init_times: Vec<Instant>,
}

/// What to do with a request.
enum Action {
    Respond(Bytes),
    NoResponse,
    Hold,
    Close,
}

fn kp_err(e: impl std::fmt::Display) -> String {
    format!("{e:#}")
}

/// Decodes a request frame (no length prefix): the request header at the version the api
/// version implies, then the body; nothing may be left over.
fn decode_request<R: Decodable + HeaderVersion>(
    frame: &Bytes,
    version: i16,
) -> Result<(RequestHeader, R), String> {
    let mut buf = frame.clone();
    let header = RequestHeader::decode(&mut buf, R::header_version(version))
        .map_err(|e| format!("request header: {}", kp_err(e)))?;
    let body = R::decode(&mut buf, version).map_err(|e| format!("body: {}", kp_err(e)))?;
    if !buf.is_empty() {
        return Err(format!("{} bytes after the request body", buf.len()));
    }
    Ok((header, body))
}

/// Response header (v0, or v1 for flexible versions — v0 always for ApiVersions, which
/// `kafka-protocol`'s `header_version` knows) and body.
fn encode_response<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    body: &R,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, R::header_version(version))
        .map_err(kp_err)?;
    body.encode(&mut buf, version).map_err(kp_err)?;
    Ok(buf.freeze())
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Splits a partition's `records` into record batches and checks each one: CRC32C computed
/// here over bytes 21.. against bytes 17..21, then the whole batch decoded by
/// `kafka-protocol` (which checks the CRC again) and compared field by field with the
/// hand-parsed header.
pub fn decode_batches(topic: &str, partition: i32, records: &Bytes) -> Result<Vec<Batch>, String> {
    let what = format!("{topic}-{partition}");
    let mut rest = records.clone();
    let mut out = Vec::new();
    // Bounded: every round consumes at least BATCH_HEADER bytes.
    for _ in 0..=records.len() / BATCH_HEADER {
        if rest.is_empty() {
            return Ok(out);
        }
        if rest.len() < BATCH_HEADER {
            return Err(format!("{what}: {} bytes left, not a batch", rest.len()));
        }
        let len = be_i32(&rest, 8);
        if len < (BATCH_HEADER - 12) as i32 || 12 + len as usize > rest.len() {
            return Err(format!(
                "{what}: batch length {len} with {} bytes left",
                rest.len()
            ));
        }
        let raw = rest.split_to(12 + len as usize);
        let magic = raw[16] as i8;
        if magic != 2 {
            return Err(format!("{what}: magic {magic}"));
        }
        let crc = u32::from_be_bytes([raw[17], raw[18], raw[19], raw[20]]);
        let actual = crc32c::crc32c(&raw[21..]);
        if crc != actual {
            return Err(format!("{what}: CRC32C {crc:#x}, computed {actual:#x}"));
        }
        let b = Batch {
            topic: topic.to_string(),
            partition,
            base_offset: be_i64(&raw, 0),
            crc,
            attributes: be_i16(&raw, 21),
            last_offset_delta: be_i32(&raw, 23),
            base_timestamp: be_i64(&raw, 27),
            max_timestamp: be_i64(&raw, 35),
            producer_id: be_i64(&raw, 43),
            producer_epoch: be_i16(&raw, 51),
            base_sequence: be_i32(&raw, 53),
            records: Vec::new(),
            raw,
        };
        let count = be_i32(&b.raw, 57);
        let info = RecordBatchDecoder::decode_batch_info(&mut b.raw.clone())
            .map_err(|e| format!("{what}: kafka-protocol batch header: {}", kp_err(e)))?;
        let [info] = info.as_slice() else {
            return Err(format!("{what}: {} batch headers in one batch", info.len()));
        };
        let set = RecordBatchDecoder::decode(&mut b.raw.clone())
            .map_err(|e| format!("{what}: kafka-protocol decode: {}", kp_err(e)))?;
        let same = info.record_count == count
            && info.base_sequence == b.base_sequence
            && info.producer_id == b.producer_id
            && info.producer_epoch == b.producer_epoch
            && info.min_offset == b.base_offset
            && info.min_timestamp == b.base_timestamp
            && info.version == 2
            && info.compression == Compression::None
            && info.timestamp_type == TimestampType::Creation
            && !info.transactional
            && !info.control
            && set.compression == Compression::None
            && set.records.len() == count.max(0) as usize;
        if !same {
            return Err(format!(
                "{what}: kafka-protocol reads {info:?} ({} records), by hand count {count} \
                 seq {} pid {} epoch {}",
                set.records.len(),
                b.base_sequence,
                b.producer_id,
                b.producer_epoch
            ));
        }
        if count < 1 || b.last_offset_delta != count - 1 || b.attributes != 0 {
            return Err(format!(
                "{what}: count {count}, last offset delta {}, attributes {}",
                b.last_offset_delta, b.attributes
            ));
        }
        let mut b = b;
        let mut max_ts = i64::MIN;
        for (i, r) in set.records.iter().enumerate() {
            if r.offset != b.base_offset + i as i64 {
                return Err(format!("{what}: record {i} has offset {}", r.offset));
            }
            max_ts = max_ts.max(r.timestamp);
            b.records.push(Rec {
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                    .collect(),
                timestamp: r.timestamp,
            });
        }
        if max_ts != b.max_timestamp {
            return Err(format!(
                "{what}: max timestamp {} but records reach {max_ts}",
                b.max_timestamp
            ));
        }
        out.push(b);
    }
    Err(format!("{what}: too many batches"))
}

/// A produce request decoded from its raw frame.
pub struct DecodedProduce {
    pub header: RequestHeader,
    pub request: ProduceRequest,
    /// `(topic, partition, batches)` in request order.
    pub partitions: Vec<(String, i32, Result<Vec<Batch>, String>)>,
}

/// Decodes a raw produce frame with `kafka-protocol`'s `RequestHeader` and `ProduceRequest`,
/// and each partition's records with [`decode_batches`].
pub fn decode_produce_frame(frame: &Bytes) -> Result<DecodedProduce, String> {
    if frame.len() < 4 {
        return Err("short frame".into());
    }
    let version = be_i16(frame, 2);
    let (header, request) = decode_request::<ProduceRequest>(frame, version)?;
    let mut partitions = Vec::new();
    for td in &request.topic_data {
        let topic = td.name.0.as_str().to_string();
        for pd in &td.partition_data {
            let batches = match &pd.records {
                Some(r) => decode_batches(&topic, pd.index, r),
                None => Err(format!("{topic}-{}: null records", pd.index)),
            };
            partitions.push((topic.clone(), pd.index, batches));
        }
    }
    Ok(DecodedProduce {
        header,
        request,
        partitions,
    })
}

impl State {
    fn new(cfg: BrokerConfig) -> Self {
        State {
            cfg,
            host: String::new(),
            port: 0,
            requests: Vec::new(),
            produce: Vec::new(),
            logs: HashMap::new(),
            violations: Vec::new(),
            connections: Vec::new(),
            disconnections: Vec::new(),
            duplicates: 0,
            faults: HashMap::new(),
            drops: VecDeque::new(),
            topics: Vec::new(),
            inits: 0,
            faulted: HashSet::new(),
            out_of_order: 0,
            hide_topics: false,
            sequence_faults: HashMap::new(),
            duplicate_code: 0,
            hold: false,
            partition_index: None,
            init_errors: VecDeque::new(),
            init_times: Vec::new(),
        }
    }

    /// Requests of `api_key` received so far.
    pub fn count(&self, api_key: i16) -> usize {
        self.requests.iter().filter(|r| r.1 == api_key).count()
    }

    /// The versions of the `api_key` requests, in arrival order.
    pub fn versions(&self, api_key: i16) -> Vec<i16> {
        self.requests
            .iter()
            .filter(|r| r.1 == api_key)
            .map(|r| r.2)
            .collect()
    }

    /// The log of `topic`-`partition` (empty if nothing was appended).
    pub fn log(&self, topic: &str, partition: i32) -> &[Stored] {
        self.logs
            .get(&(topic.to_string(), partition))
            .map_or(&[], |l| l.records.as_slice())
    }

    /// Records in all logs of `topic`.
    pub fn total(&self, topic: &str) -> usize {
        self.logs
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|(_, l)| l.records.len())
            .sum()
    }

    /// Every batch of `topic`-`partition` the broker received, attempts included, in arrival
    /// order, with the index of its produce call.
    pub fn batches(&self, topic: &str, partition: i32) -> Vec<(usize, &Batch)> {
        let mut out = Vec::new();
        for (i, call) in self.produce.iter().enumerate() {
            for b in &call.batches {
                if b.topic == topic && b.partition == partition {
                    out.push((i, b));
                }
            }
        }
        out
    }

    fn range(&self, api_key: i16) -> (i16, i16) {
        match api_key {
            api::PRODUCE => self.cfg.produce,
            api::METADATA => self.cfg.metadata,
            api::API_VERSIONS => self.cfg.api_versions,
            _ => self.cfg.init_producer_id,
        }
    }

    fn check_version(&self, api_key: i16, version: i16) -> Result<(), String> {
        let (lo, hi) = self.range(api_key);
        if (lo..=hi).contains(&version) {
            Ok(())
        } else {
            Err(format!(
                "api key {api_key} at v{version}, outside the advertised {lo}..={hi}"
            ))
        }
    }

    fn handle(&mut self, conn: ChannelId, frame: Bytes) -> Action {
        if frame.len() < 8 {
            self.violations
                .push(format!("{conn}: {}-byte request frame", frame.len()));
            return Action::Close;
        }
        let api_key = be_i16(&frame, 0);
        let version = be_i16(&frame, 2);
        self.requests.push((conn, api_key, version));
        let result = match api_key {
            api::API_VERSIONS => self.api_versions(&frame, version),
            api::METADATA => self.metadata(&frame, version),
            api::INIT_PRODUCER_ID => self.init_producer_id(&frame, version),
            api::PRODUCE => self.produce(conn, frame, version),
            _ => Err(format!("unexpected api key {api_key} v{version}")),
        };
        match result {
            Ok(a) => a,
            Err(e) => {
                self.violations.push(format!("{conn}: {e}"));
                Action::Close
            }
        }
    }

    fn api_versions(&mut self, frame: &Bytes, version: i16) -> Result<Action, String> {
        let (lo, hi) = self.cfg.api_versions;
        let entry = |k: i16, (lo, hi): (i16, i16)| {
            ApiVersion::default()
                .with_api_key(k)
                .with_min_version(lo)
                .with_max_version(hi)
        };
        if !(lo..=hi).contains(&version) {
            // As Kafka: read the header only, answer UNSUPPORTED_VERSION in a v0 body that
            // lists the broker's own ApiVersions range.
            let mut buf = frame.clone();
            let header =
                RequestHeader::decode(&mut buf, ApiVersionsRequest::header_version(version))
                    .map_err(|e| format!("ApiVersions v{version} header: {}", kp_err(e)))?;
            let body = ApiVersionsResponse::default()
                .with_error_code(UNSUPPORTED_VERSION)
                .with_api_keys(vec![entry(api::API_VERSIONS, (lo, hi))]);
            return Ok(Action::Respond(encode_response(
                header.correlation_id,
                0,
                &body,
            )?));
        }
        let (header, _req) = decode_request::<ApiVersionsRequest>(frame, version)?;
        let body = ApiVersionsResponse::default()
            .with_error_code(0)
            .with_api_keys(vec![
                entry(api::PRODUCE, self.cfg.produce),
                entry(api::METADATA, self.cfg.metadata),
                entry(api::API_VERSIONS, self.cfg.api_versions),
                entry(api::INIT_PRODUCER_ID, self.cfg.init_producer_id),
            ]);
        Ok(Action::Respond(encode_response(
            header.correlation_id,
            version,
            &body,
        )?))
    }

    fn metadata(&mut self, frame: &Bytes, version: i16) -> Result<Action, String> {
        self.check_version(api::METADATA, version)?;
        let (header, req) = decode_request::<MetadataRequest>(frame, version)?;
        let names: Vec<String> = match &req.topics {
            Some(ts) => ts
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str().to_string()))
                .collect(),
            None => self.topics.clone(),
        };
        for n in &names {
            if !self.topics.contains(n) {
                self.topics.push(n.clone());
            }
        }
        let node = BrokerId(self.cfg.node_id);
        let topics = names
            .iter()
            .map(|n| {
                let indexes: Vec<i32> = match self.partition_index {
                    Some(i) => vec![i],
                    None => (0..self.cfg.partitions).collect(),
                };
                let partitions = indexes
                    .into_iter()
                    .map(|i| {
                        let mut p = MetadataResponsePartition::default()
                            .with_error_code(0)
                            .with_partition_index(i)
                            .with_leader_id(node)
                            .with_replica_nodes(vec![node])
                            .with_isr_nodes(vec![node]);
                        if version >= 7 {
                            p.leader_epoch = 0;
                        }
                        p
                    })
                    .collect();
                MetadataResponseTopic::default()
                    .with_error_code(if self.hide_topics {
                        LEADER_NOT_AVAILABLE
                    } else {
                        0
                    })
                    .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                    .with_partitions(partitions)
            })
            .collect();
        let mut body = MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(node)
                .with_host(StrBytes::from_string(self.host.clone()))
                .with_port(self.port)])
            .with_controller_id(node)
            .with_topics(topics);
        if version >= 2 {
            body.cluster_id = Some(StrBytes::from_static_str("fake-cluster"));
        }
        Ok(Action::Respond(encode_response(
            header.correlation_id,
            version,
            &body,
        )?))
    }

    fn init_producer_id(&mut self, frame: &Bytes, version: i16) -> Result<Action, String> {
        self.check_version(api::INIT_PRODUCER_ID, version)?;
        let (header, req) = decode_request::<InitProducerIdRequest>(frame, version)?;
        if req.transactional_id.is_some() {
            return Err("InitProducerId with a transactional id".into());
        }
        self.init_times.push(Instant::now());
        if let Some(code) = self.init_errors.pop_front() {
            let body = InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            return Ok(Action::Respond(encode_response(
                header.correlation_id,
                version,
                &body,
            )?));
        }
        let body = InitProducerIdResponse::default()
            .with_error_code(0)
            .with_producer_id(ProducerId(self.cfg.producer_id))
            .with_producer_epoch(self.cfg.producer_epoch + self.inits);
        self.inits += 1;
        Ok(Action::Respond(encode_response(
            header.correlation_id,
            version,
            &body,
        )?))
    }

    fn produce(&mut self, conn: ChannelId, frame: Bytes, version: i16) -> Result<Action, String> {
        self.check_version(api::PRODUCE, version)?;
        let decoded = decode_produce_frame(&frame)?;
        let acks = decoded.request.acks;
        if ![0, 1, -1].contains(&acks) {
            return Err(format!("produce with acks {acks}"));
        }
        let drop = self.drops.pop_front();
        let mut call = ProduceCall {
            conn,
            header: decoded.header.clone(),
            raw: frame,
            request: decoded.request,
            batches: Vec::new(),
            outcome: Vec::new(),
            answer: Answer::Responded,
        };
        let mut rejected = false;
        for (topic, partition, batches) in decoded.partitions {
            let (code, base) = match batches {
                Err(e) => {
                    self.violations.push(format!("{conn}: {e}"));
                    rejected = true;
                    (CORRUPT_MESSAGE, -1)
                }
                Ok(batches) => {
                    if drop.is_some() {
                        self.faulted.insert((topic.clone(), partition));
                    }
                    let r = if drop == Some(DropMode::BeforeAppend) {
                        (0, -1)
                    } else {
                        self.append(&topic, partition, &batches)
                    };
                    call.batches.extend(batches);
                    r
                }
            };
            call.outcome.push((topic, partition, code, base));
        }
        let mut responses: Vec<TopicProduceResponse> = Vec::new();
        for (topic, partition, code, base) in &call.outcome {
            let p = PartitionProduceResponse::default()
                .with_index(*partition)
                .with_error_code(*code)
                .with_base_offset(*base)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(if version >= 5 { 0 } else { -1 });
            match responses.iter_mut().find(|t| t.name.0.as_str() == topic) {
                Some(t) => t.partition_responses.push(p),
                None => responses.push(
                    TopicProduceResponse::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partition_responses(vec![p]),
                ),
            }
        }
        let body = ProduceResponse::default().with_responses(responses);
        let response = encode_response(call.header.correlation_id, version, &body)?;
        let action = if rejected {
            call.answer = Answer::Rejected;
            Action::Respond(response)
        } else if drop.is_some() {
            call.answer = Answer::Closed;
            Action::Close
        } else if acks == 0 {
            call.answer = Answer::NoResponse;
            Action::NoResponse
        } else if self.cfg.hold_produce || self.hold {
            call.answer = Answer::Held;
            Action::Hold
        } else {
            Action::Respond(response)
        };
        self.produce.push(call);
        Ok(action)
    }

    /// Appends the batches of one partition with Kafka's idempotence rules; scripted error
    /// codes come first. Returns the error code and base offset to answer.
    fn append(&mut self, topic: &str, partition: i32, batches: &[Batch]) -> (i16, i64) {
        if partition < 0 || partition >= self.cfg.partitions {
            return (UNKNOWN_TOPIC_OR_PARTITION, -1);
        }
        let key = (topic.to_string(), partition);
        let mut fault = self.faults.get_mut(&key).and_then(VecDeque::pop_front);
        if fault.is_none() {
            if let Some(b) = batches.first() {
                fault = self
                    .sequence_faults
                    .get_mut(&(topic.to_string(), partition, b.base_sequence))
                    .and_then(VecDeque::pop_front);
            }
        }
        if fault.is_some() {
            self.faulted.insert(key.clone());
        }
        let faulted = self.faulted.contains(&key);
        let log = self.logs.entry(key).or_default();
        match fault {
            Some(DUPLICATE_SEQUENCE_NUMBER) => {
                // Claim to have these already: sequences move on, nothing is stored.
                for b in batches {
                    let n = b.records.len() as i32;
                    if b.producer_id >= 0 {
                        log.producer = Some((b.producer_id, b.producer_epoch));
                        log.next_sequence = b.base_sequence.wrapping_add(n);
                        push_recent(log, (b.base_sequence, n, -1));
                    }
                }
                return (DUPLICATE_SEQUENCE_NUMBER, -1);
            }
            Some(code) => return (code, -1),
            None => {}
        }
        let mut first_offset = None;
        for b in batches {
            let n = b.records.len() as i32;
            let producer = (b.producer_id, b.producer_epoch);
            if b.producer_id >= 0 {
                let same = log.producer == Some(producer);
                if same {
                    if let Some(&(_, _, off)) = log
                        .recent
                        .iter()
                        .find(|(s, c, _)| *s == b.base_sequence && *c == n)
                    {
                        self.duplicates += 1;
                        if self.duplicate_code != 0 {
                            return (self.duplicate_code, -1);
                        }
                        first_offset.get_or_insert(off);
                        continue;
                    }
                }
                let expected = if same { log.next_sequence } else { 0 };
                if b.base_sequence != expected {
                    if faulted {
                        self.out_of_order += 1;
                    } else {
                        self.violations.push(format!(
                            "{topic}-{partition}: base sequence {} where {expected} was due",
                            b.base_sequence
                        ));
                    }
                    return (OUT_OF_ORDER_SEQUENCE_NUMBER, -1);
                }
                log.producer = Some(producer);
                log.next_sequence = b.base_sequence.wrapping_add(n);
            }
            let base = log.records.len() as i64;
            first_offset.get_or_insert(base);
            for (i, r) in b.records.iter().enumerate() {
                log.records.push(Stored {
                    offset: base + i as i64,
                    rec: r.clone(),
                });
            }
            if b.producer_id >= 0 {
                push_recent(log, (b.base_sequence, n, base));
            }
        }
        (0, first_offset.unwrap_or(-1))
    }
}

fn push_recent(log: &mut PartitionLog, entry: (i32, i32, i64)) {
    log.recent.push_back(entry);
    while log.recent.len() > 5 {
        log.recent.pop_front();
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn on_request(&self, conn: ChannelId, frame: Bytes) -> Action {
        let action = self.lock().handle(conn, frame);
        self.changed.notify_all();
        action
    }

    fn connected(&self, conn: ChannelId) {
        self.lock().connections.push(conn);
        self.changed.notify_all();
    }

    fn disconnected(&self, conn: ChannelId, reason: DisconnectReason) {
        self.lock().disconnections.push((conn, reason));
        self.changed.notify_all();
    }
}

struct InlineBroker(Arc<Shared>);

impl Handler for InlineBroker {
    fn handle(&mut self, conn: ChannelId, request: Bytes) -> Option<Bytes> {
        match self.0.on_request(conn, request) {
            Action::Respond(r) => Some(r),
            Action::NoResponse | Action::Hold => None,
            Action::Close => {
                // Inline handlers cannot close; a drop fault needs `deferred: true`.
                self.0
                    .lock()
                    .violations
                    .push(format!("{conn}: close asked of an inline broker"));
                None
            }
        }
    }

    fn connected(&mut self, conn: ChannelId, _peer: SocketAddr) {
        self.0.connected(conn);
    }

    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        self.0.disconnected(conn, reason);
    }
}

struct DeferredBroker {
    shared: Arc<Shared>,
    /// Responders of held requests: kept (unanswered) until the server stops.
    held: Vec<Responder>,
}

impl DeferredHandler for DeferredBroker {
    fn handle(&mut self, conn: ChannelId, request: Bytes, responder: Responder) {
        // The server outlives its handler's responders, so `ServerGone` cannot happen here.
        let _ = match self.shared.on_request(conn, request) {
            Action::Respond(r) => responder.respond(r),
            Action::NoResponse => responder.no_response(),
            Action::Close => responder.close(),
            Action::Hold => {
                self.held.push(responder);
                Ok(())
            }
        };
    }

    fn connected(&mut self, conn: ChannelId, _peer: SocketAddr) {
        self.shared.connected(conn);
    }

    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        self.shared.disconnected(conn, reason);
    }
}

type Started = (SocketAddr, SelectorWaker);

fn serve<M: Mode>(
    mut server: Server<M>,
    shared: &Shared,
    stop: &AtomicBool,
    started: mpsc::Sender<Started>,
) -> ServerStats {
    let addr = server
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("fake broker: bind 127.0.0.1");
    {
        let mut st = shared.lock();
        st.host = addr.ip().to_string();
        st.port = i32::from(addr.port());
    }
    started
        .send((addr, server.waker()))
        .expect("fake broker: report the address");
    server
        .run_until(stop, Some(Instant::now() + MAX_LIFE))
        .expect("fake broker: poll");
    server.stats()
}

/// A running fake broker; stopped (and its thread joined) on [`stop`](Self::stop) or drop.
pub struct FakeBroker {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: SelectorWaker,
    thread: Option<JoinHandle<ServerStats>>,
}

impl FakeBroker {
    pub fn start(cfg: BrokerConfig) -> FakeBroker {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(cfg.clone())),
            changed: Condvar::new(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (sh, st) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-broker".into())
            .spawn(move || {
                if cfg.deferred {
                    let handler = DeferredBroker {
                        shared: sh.clone(),
                        held: Vec::new(),
                    };
                    let server = Server::deferred(handler).expect("fake broker: server");
                    serve(server, &sh, &st, tx)
                } else {
                    let server =
                        Server::inline(InlineBroker(sh.clone())).expect("fake broker: server");
                    serve(server, &sh, &st, tx)
                }
            })
            .expect("spawn the fake broker");
        let (addr, waker) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the fake broker started");
        FakeBroker {
            shared,
            addr,
            stop,
            waker,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Waits (on a condition variable, woken by every request and connection event) until
    /// `cond` holds; panics after `timeout`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&State) -> bool,
    ) -> MutexGuard<'_, State> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        for _ in 0..1_000_000 {
            if cond(&g) {
                return g;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} waiting for {what}"
            );
            g = self
                .shared
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        panic!("gave up waiting for {what}");
    }

    /// Answers the next `n` produce requests that carry `topic`-`partition` with `code` for
    /// that partition (nothing is appended; for `DUPLICATE_SEQUENCE_NUMBER` the sequence
    /// moves on as if the batch had been appended before).
    pub fn fail_produce(&self, topic: &str, partition: i32, code: i16, n: usize) {
        let mut st = self.shared.lock();
        let q = st.faults.entry((topic.to_string(), partition)).or_default();
        q.extend(std::iter::repeat_n(code, n));
    }

    /// Answers the batch of `topic`-`partition` with base sequence `seq` with `code`, the next
    /// `n` times it arrives (nothing is appended).
    pub fn fail_sequence(&self, topic: &str, partition: i32, seq: i32, code: i16, n: usize) {
        let mut st = self.shared.lock();
        let q = st
            .sequence_faults
            .entry((topic.to_string(), partition, seq))
            .or_default();
        q.extend(std::iter::repeat_n(code, n));
    }

    /// Closes the connection instead of answering the next produce request.
    pub fn drop_next_produce(&self, mode: DropMode) {
        assert!(
            self.shared.lock().cfg.deferred,
            "connection drops need a deferred broker"
        );
        self.shared.lock().drops.push_back(mode);
    }

    /// Stops the server, joins its thread and returns its counters.
    pub fn stop(mut self) -> ServerStats {
        self.shutdown().expect("the fake broker thread ran")
    }

    fn shutdown(&mut self) -> Option<ServerStats> {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        let handle = self.thread.take()?;
        match handle.join() {
            Ok(stats) => Some(stats),
            Err(_) if std::thread::panicking() => None,
            Err(e) => std::panic::resume_unwind(e),
        }
    }

    /// Panics with every violation the broker recorded.
    pub fn assert_clean(&self) {
        let st = self.shared.lock();
        assert!(
            st.violations.is_empty(),
            "the broker saw {} violations: {:#?}",
            st.violations.len(),
            st.violations
        );
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
