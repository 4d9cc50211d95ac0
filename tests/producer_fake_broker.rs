//! The producer against a scripted fake Kafka broker on 127.0.0.1.
//!
//! librdkafka's mock cluster (tests/producer_mock.rs) checks neither CRCs nor idempotent sequence
//! numbers. The broker here does: it is an [`mqnet::server::Server`] on its own thread that decodes
//! every request with the `kafka-protocol` crate (the test oracle), answers with
//! `kafka-protocol`-encoded responses, keeps a per-partition log with Kafka's idempotent-producer
//! rules (sequences start at 0 and are contiguous; a resent batch among the last five is a
//! duplicate answered with its original offset), checks every record batch's CRC32C twice
//! (independently with the `crc32c` crate, and through `kafka-protocol`'s `RecordBatchDecoder`),
//! and plays scripted faults: error codes for the next produce requests of a partition, a
//! connection dropped instead of an answer, produce requests never answered.
//!
//! Anything the broker finds wrong is recorded as a violation; every test ends by asserting there
//! were none.
#![cfg(feature = "kafka")]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mqnet::client::ClientConfig;
use mqnet::producer::{
    Acks, DeliveryFuture, DeliveryResult, ProduceError, Producer, ProducerConfig, ProducerRecord,
    RecordMetadata,
};
use mqnet::protocol::{partition_for_key, KafkaError, ProtocolError};

use fake::{
    api, decode_produce_frame, Answer, BrokerConfig, DropMode, FakeBroker, State,
    CLUSTER_AUTHORIZATION_FAILED, COORDINATOR_NOT_AVAILABLE, DUPLICATE_SEQUENCE_NUMBER,
    MESSAGE_TOO_LARGE, NOT_ENOUGH_REPLICAS, NOT_LEADER_OR_FOLLOWER, OUT_OF_ORDER_SEQUENCE_NUMBER,
};

/// A scripted fake Kafka broker over `mqnet::server::Server`.
mod fake {
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
    use kafka_protocol::messages::{
        BrokerId, ProducerId, RequestHeader, ResponseHeader, TopicName,
    };
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
    pub fn decode_batches(
        topic: &str,
        partition: i32,
        records: &Bytes,
    ) -> Result<Vec<Batch>, String> {
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

        fn produce(
            &mut self,
            conn: ChannelId,
            frame: Bytes,
            version: i16,
        ) -> Result<Action, String> {
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
}

// ----- test helpers ------------------------------------------------------------------------------

/// Bound on every wait for a future or a broker condition.
const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "events";
/// The producer id and epoch the broker hands out.
const PID: (i64, i16) = (4242, 7);

fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Fast retries and reconnects, a bounded request timeout, and a delivery timeout that bounds a
/// failing test (a dropped producer waits up to it for its records).
fn config(addr: &str) -> ProducerConfig {
    ProducerConfig::new(addr)
        .delivery_timeout(WAIT)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .client(
            ClientConfig::default()
                .reconnect_backoff(Duration::from_millis(20))
                .reconnect_backoff_max(Duration::from_millis(200))
                .request_timeout(Duration::from_secs(10)),
        )
}

/// Every future's result, each within what is left of one overall bound.
fn results(futures: &[DeliveryFuture], bound: Duration) -> Vec<DeliveryResult> {
    let deadline = Instant::now() + bound;
    futures
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let left = deadline.saturating_duration_since(Instant::now());
            f.wait_timeout(left)
                .unwrap_or_else(|| panic!("record {i} did not complete within {bound:?}"))
        })
        .collect()
}

fn all_ok(futures: &[DeliveryFuture]) -> Vec<RecordMetadata> {
    results(futures, WAIT)
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("record {i} failed: {e}")))
        .collect()
}

/// Closes a producer whose records have all completed: their memory is back in the pool.
fn close(producer: Producer) {
    assert_eq!(
        producer.buffered_bytes(),
        0,
        "memory of completed records is released"
    );
    let t = Instant::now();
    producer.close(Duration::from_secs(10));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "close took {:?}",
        t.elapsed()
    );
}

/// The record index a value `v-<i>-...` belongs to.
fn index_of(value: &Option<Bytes>) -> Option<usize> {
    let v = value.as_ref()?;
    let s = std::str::from_utf8(v).ok()?;
    s.strip_prefix("v-")?.split('-').next()?.parse().ok()
}

/// What was sent, and when (for records timestamped by the producer).
struct Sent {
    records: Vec<ProducerRecord>,
    from_ms: i64,
    to_ms: i64,
}

impl Sent {
    fn new() -> Self {
        Sent {
            records: Vec::new(),
            from_ms: now_ms(),
            to_ms: i64::MAX,
        }
    }

    fn send(&mut self, p: &Producer, r: ProducerRecord) -> DeliveryFuture {
        self.records.push(r.clone());
        p.send(r)
    }

    fn done(&mut self) {
        self.to_ms = now_ms();
    }
}

/// The broker's log of `topic` holds exactly the records of `sent` not in `skip`, each once, on
/// the partition and (when `check_offsets`) at the offset its future gave, in send order within
/// each partition; keys, values, headers and timestamps are the ones sent.
fn check_delivered(
    st: &State,
    topic: &str,
    sent: &Sent,
    metas: &[RecordMetadata],
    skip: &HashSet<usize>,
    check_offsets: bool,
) {
    assert_eq!(sent.records.len(), metas.len());
    let mut per_partition: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, m) in metas.iter().enumerate() {
        if !skip.contains(&i) {
            per_partition.entry(m.partition).or_default().push(i);
        }
    }
    let mut total = 0;
    for (&p, idx) in &per_partition {
        let log = st.log(topic, p);
        assert_eq!(
            log.len(),
            idx.len(),
            "partition {p}: {} records stored, {} sent to it",
            log.len(),
            idx.len()
        );
        for (k, (&i, stored)) in idx.iter().zip(log).enumerate() {
            let r = &sent.records[i];
            assert_eq!(stored.offset, k as i64);
            if check_offsets {
                assert_eq!(metas[i].offset, stored.offset, "record {i}: offset");
            }
            assert_eq!(
                stored.rec.key, r.key,
                "record {i} (partition {p} offset {k}): key"
            );
            assert_eq!(
                stored.rec.value, r.value,
                "record {i} (partition {p} offset {k}): value"
            );
            assert_eq!(stored.rec.headers, r.headers, "record {i}: headers");
            match r.timestamp_ms {
                Some(ts) => assert_eq!(stored.rec.timestamp, ts, "record {i}: timestamp"),
                None => assert!(
                    (sent.from_ms - 1000..=sent.to_ms.saturating_add(1000))
                        .contains(&stored.rec.timestamp),
                    "record {i}: timestamp {} outside the send window {}..={}",
                    stored.rec.timestamp,
                    sent.from_ms,
                    sent.to_ms
                ),
            }
        }
        total += log.len();
    }
    assert_eq!(
        st.total(topic),
        total,
        "records stored on partitions nothing was sent to"
    );
}

/// A batch as the broker saw it over all its attempts.
#[derive(Debug)]
struct Attempts {
    base_sequence: i32,
    records: i32,
    /// Indexes of the produce calls that carried it (answers OUT_OF_ORDER_SEQUENCE_NUMBER left
    /// out: those attempts were in flight behind a failed batch and never reached the log).
    calls: Vec<usize>,
    /// CRC and size of its first attempt.
    crc: u32,
    size: usize,
}

/// The batches of `topic`-`partition` in order of their first attempt the broker took up (answered
/// other than OUT_OF_ORDER_SEQUENCE_NUMBER). Checks that every resend is byte-for-byte the batch
/// first sent (same base sequence, same CRC), that the sequences the broker accepted, in arrival
/// order, start at 0 and are contiguous (a resend of an accepted one aside), and the producer id
/// and epoch. Batches of the produce calls in `refused` (refused for good, their sequence numbers
/// given back) are left out.
fn sequences(
    st: &State,
    topic: &str,
    partition: i32,
    (pid, epoch): (i64, i16),
    refused: &HashSet<usize>,
) -> Vec<Attempts> {
    let mut out: Vec<Attempts> = Vec::new();
    let mut accepted: Vec<(i32, i32)> = Vec::new();
    for (call, b) in st.batches(topic, partition) {
        if refused.contains(&call) {
            continue;
        }
        assert_eq!(
            (b.producer_id, b.producer_epoch),
            (pid, epoch),
            "{topic}-{partition}: producer id and epoch"
        );
        assert_eq!(b.base_offset, 0, "a producer writes base offset 0");
        let code = st.produce[call].code_for(topic, partition);
        if code == Some(OUT_OF_ORDER_SEQUENCE_NUMBER) {
            continue;
        }
        match out.iter_mut().find(|a| a.base_sequence == b.base_sequence) {
            Some(prev) => {
                assert_eq!(
                    (b.crc, b.raw.len()),
                    (prev.crc, prev.size),
                    "{topic}-{partition}: a resend of sequence {} differs from its first attempt",
                    b.base_sequence
                );
                prev.calls.push(call);
            }
            None => out.push(Attempts {
                base_sequence: b.base_sequence,
                records: b.records.len() as i32,
                calls: vec![call],
                crc: b.crc,
                size: b.raw.len(),
            }),
        }
        if matches!(code, Some(0) | Some(DUPLICATE_SEQUENCE_NUMBER))
            && !accepted.iter().any(|&(s, _)| s == b.base_sequence)
        {
            let expected = accepted.last().map_or(0, |&(s, n)| s + n);
            assert_eq!(
                b.base_sequence, expected,
                "{topic}-{partition}: accepted base sequences must start at 0 and be contiguous"
            );
            accepted.push((b.base_sequence, b.records.len() as i32));
        }
    }
    out
}

/// A mixed record: keyed or keyless, null values, 0-2 headers (one with a null value), explicit
/// or producer-assigned timestamps, a few explicit partitions.
fn mixed_record(i: usize, partitions: i32) -> ProducerRecord {
    let mut r = ProducerRecord::new(TOPIC, format!("v-{i}-{}", "x".repeat(i % 50)));
    if i % 9 == 4 {
        r.value = None;
    }
    if i % 5 != 3 {
        r = r.key(format!("key-{}", i % 300));
    }
    if i % 11 == 6 {
        r = r.partition((i % partitions as usize) as i32);
    }
    if i % 3 >= 1 {
        r = r.header("idx", Some(Bytes::from(i.to_string())));
    }
    if i % 3 == 2 {
        r = r.header("nothing", None);
    }
    if i % 2 == 0 {
        r = r.timestamp_ms(1_700_000_000_000 + i as i64);
    }
    r
}

// ----- 1. CRC32C and sequences -------------------------------------------------------------------

#[test]
fn every_batch_has_a_valid_crc_and_contiguous_sequences() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let producer = Producer::new(config(&broker.addr()).batch_size(1024)).unwrap();
    let n = 2_000;
    let mut sent = Sent::new();
    let futures: Vec<DeliveryFuture> = (0..n)
        .map(|i| sent.send(&producer, mixed_record(i, 4)))
        .collect();
    let metas = all_ok(&futures);
    sent.done();
    assert!(producer.flush(WAIT));
    close(producer);

    let st = broker.state();
    // Where each record went.
    for (i, (r, m)) in sent.records.iter().zip(&metas).enumerate() {
        match (r.partition, &r.key) {
            (Some(p), _) => assert_eq!(m.partition, p, "record {i}: explicit partition"),
            (None, Some(k)) => {
                assert_eq!(m.partition, partition_for_key(k, 4), "record {i}: murmur2")
            }
            (None, None) => assert!((0..4).contains(&m.partition)),
        }
    }
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);

    // Every recorded request decoded again from its raw bytes: header, body, batches (CRC32C by
    // hand and by kafka-protocol).
    let mut batches = 0;
    let mut last_corr: HashMap<_, i32> = HashMap::new();
    for call in &st.produce {
        assert_eq!(call.answer, Answer::Responded);
        assert_eq!(call.request.timeout_ms, 10_000, "request.timeout.ms");
        let d = decode_produce_frame(&call.raw).expect("a produce request kafka-protocol decodes");
        assert_eq!(d.header.request_api_key, api::PRODUCE);
        assert_eq!(
            d.header.request_api_version, 12,
            "the highest common version"
        );
        assert_eq!(d.header.client_id.as_deref(), Some("mqnet-producer"));
        assert_eq!(d.request.acks, -1);
        assert!(d.request.transactional_id.is_none());
        let prev = last_corr.insert(call.conn, d.header.correlation_id);
        assert!(
            prev.is_none_or(|p| d.header.correlation_id > p),
            "correlation ids increase on a connection"
        );
        for (topic, partition, r) in &d.partitions {
            assert_eq!(topic, TOPIC);
            let bs = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(bs.len(), 1, "one batch per partition per request");
            for b in bs {
                assert_eq!(b.crc, crc32c::crc32c(&b.raw[21..]));
                assert!(
                    b.raw.len() <= 1024,
                    "batch.size respected ({} bytes)",
                    b.raw.len()
                );
                assert_eq!((b.producer_id, b.producer_epoch), PID);
                assert_eq!(*partition, b.partition);
                batches += 1;
            }
        }
    }
    assert!(batches > 40, "small batches: {batches} of them");
    let mut stored = 0;
    for p in 0..4 {
        let attempts = sequences(&st, TOPIC, p, PID, &HashSet::new());
        assert!(
            attempts.iter().all(|a| a.calls.len() == 1),
            "no retries expected"
        );
        let records: i32 = attempts.iter().map(|a| a.records).sum();
        assert_eq!(records as usize, st.log(TOPIC, p).len());
        stored += records as usize;
    }
    assert_eq!(stored, n);
    assert_eq!(st.count(api::INIT_PRODUCER_ID), 1);
    assert_eq!(st.versions(api::METADATA).first(), Some(&12));
    assert_eq!(st.versions(api::INIT_PRODUCER_ID), vec![4]);
    assert_eq!(st.duplicates, 0);

    // The oracle itself: one flipped bit anywhere after the CRC field is caught.
    let b = &st.produce[0].batches[0];
    for at in [21, b.raw.len() / 2, b.raw.len() - 1] {
        let mut bad = b.raw.to_vec();
        bad[at] ^= 0x10;
        let e = fake::decode_batches(TOPIC, 0, &Bytes::from(bad)).unwrap_err();
        assert!(e.contains("CRC32C"), "{e}");
    }
    drop(st);
    broker.assert_clean();
}

// ----- 2. retries keep order and sequence --------------------------------------------------------

#[test]
fn not_leader_errors_are_retried_with_the_same_sequence_and_order() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let producer = Producer::new(config(&broker.addr()).batch_size(1024)).unwrap();
    let mut sent = Sent::new();
    let key = |i: usize| format!("k-{i}");
    let record =
        |i: usize| ProducerRecord::new(TOPIC, format!("v-{i}-{}", "y".repeat(40))).key(key(i));
    // Warm up: metadata, producer id, connections.
    let warm: Vec<DeliveryFuture> = (0..20).map(|i| sent.send(&producer, record(i))).collect();
    let mut metas = all_ok(&warm);
    let metadata_before = broker.state().count(api::METADATA);
    let produce_before = broker.state().produce.len();

    // The next batch of partition 0 starts at the sequence after the records it holds; it is
    // refused twice (the batches in flight behind it come back out of order and follow it).
    let next = broker.state().log(TOPIC, 0).len() as i32;
    broker.fail_sequence(TOPIC, 0, next, NOT_LEADER_OR_FOLLOWER, 2);
    let futures: Vec<DeliveryFuture> = (20..1_000)
        .map(|i| sent.send(&producer, record(i)))
        .collect();
    metas.extend(all_ok(&futures));
    sent.done();
    close(producer);

    let st = broker.state();
    for (i, m) in metas.iter().enumerate() {
        assert_eq!(m.partition, partition_for_key(key(i).as_bytes(), 4));
    }
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
    // Partition 0: the first batch after the fault was refused twice, then taken; all three
    // attempts carry the same bytes (checked by `sequences`), so the same base sequence.
    let attempts = sequences(&st, TOPIC, 0, PID, &HashSet::new());
    let refused: Vec<usize> = st
        .produce
        .iter()
        .enumerate()
        .filter(|(_, c)| c.code_for(TOPIC, 0) == Some(NOT_LEADER_OR_FOLLOWER))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(refused.len(), 2, "both scripted errors were used");
    assert!(refused.iter().all(|&i| i >= produce_before));
    let retried: Vec<&Attempts> = attempts.iter().filter(|a| a.calls.len() > 1).collect();
    assert_eq!(retried.len(), 1, "one batch was retried: {attempts:?}");
    assert_eq!(retried[0].calls.len(), 3, "two refusals and one success");
    assert_eq!(retried[0].calls[..2], refused[..]);
    assert_eq!(
        st.produce[retried[0].calls[2]].code_for(TOPIC, 0),
        Some(0),
        "the third attempt succeeded"
    );
    for p in 1..4 {
        let a = sequences(&st, TOPIC, p, PID, &HashSet::new());
        assert!(
            a.iter().all(|a| a.calls.len() == 1),
            "partition {p} was never refused"
        );
    }
    assert!(
        st.count(api::METADATA) > metadata_before,
        "NOT_LEADER_OR_FOLLOWER refreshes metadata ({} requests, {metadata_before} before)",
        st.count(api::METADATA)
    );
    drop(st);
    broker.assert_clean();
}

// ----- 3. DUPLICATE_SEQUENCE_NUMBER is success ---------------------------------------------------

#[test]
fn duplicate_sequence_number_counts_as_success() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let producer = Producer::new(config(&broker.addr()).batch_size(1024)).unwrap();
    let mut sent = Sent::new();
    let record =
        |i: usize| ProducerRecord::new(TOPIC, format!("v-{i}-{}", "z".repeat(60))).partition(1);
    let warm: Vec<DeliveryFuture> = (0..5).map(|i| sent.send(&producer, record(i))).collect();
    let mut metas = all_ok(&warm);

    broker.fail_produce(TOPIC, 1, DUPLICATE_SEQUENCE_NUMBER, 1);
    let futures: Vec<DeliveryFuture> = (5..200).map(|i| sent.send(&producer, record(i))).collect();
    let results = results(&futures, WAIT);
    sent.done();
    close(producer);

    let st = broker.state();
    let dup_calls: Vec<&fake::ProduceCall> = st
        .produce
        .iter()
        .filter(|c| c.code_for(TOPIC, 1) == Some(DUPLICATE_SEQUENCE_NUMBER))
        .collect();
    assert_eq!(dup_calls.len(), 1);
    let dup: HashSet<usize> = dup_calls[0]
        .batches
        .iter()
        .flat_map(|b| {
            b.records
                .iter()
                .map(|r| index_of(&r.value).expect("indexed value"))
        })
        .collect();
    assert!(!dup.is_empty());
    for (k, r) in results.into_iter().enumerate() {
        let i = k + 5;
        let m = r.unwrap_or_else(|e| panic!("record {i} failed: {e}"));
        assert_eq!(m.partition, 1);
        if dup.contains(&i) {
            assert_eq!(
                m.offset, -1,
                "record {i}: the duplicate answer carries no offset"
            );
        }
        metas.push(m);
    }
    // Everything else is in the log once, in order; the "duplicate" batch was not stored, and no
    // later batch was sent again (sequences stay contiguous across the 46).
    check_delivered(&st, TOPIC, &sent, &metas, &dup, true);
    let attempts = sequences(&st, TOPIC, 1, PID, &HashSet::new());
    assert!(attempts.iter().all(|a| a.calls.len() == 1), "{attempts:?}");
    drop(st);
    broker.assert_clean();
}

// ----- 4. a dropped connection -------------------------------------------------------------------

#[test]
fn a_dropped_connection_mid_produce_is_retried_with_the_same_sequence() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig {
        deferred: true,
        ..BrokerConfig::default()
    });
    let producer = Producer::new(config(&broker.addr()).batch_size(2048)).unwrap();
    let mut sent = Sent::new();
    let key = |i: usize| format!("key-{i}");
    let record =
        |i: usize| ProducerRecord::new(TOPIC, format!("v-{i}-{}", "w".repeat(30))).key(key(i));
    let mut metas = Vec::new();
    let mut next = 0;
    // Rounds: plain, then a drop after the append (the resend is a duplicate), then a drop before
    // it (the request is lost).
    for drop_mode in [
        None,
        Some(DropMode::AfterAppend),
        Some(DropMode::BeforeAppend),
    ] {
        if let Some(m) = drop_mode {
            broker.drop_next_produce(m);
        }
        let futures: Vec<DeliveryFuture> = (next..next + 400)
            .map(|i| sent.send(&producer, record(i)))
            .collect();
        next += 400;
        metas.extend(all_ok(&futures));
    }
    sent.done();
    close(producer);

    let st = broker.state();
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
    let closed: Vec<usize> = st
        .produce
        .iter()
        .enumerate()
        .filter(|(_, c)| c.answer == Answer::Closed)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(closed.len(), 2, "both scripted drops happened");
    let mut resent = 0;
    for p in 0..4 {
        for a in sequences(&st, TOPIC, p, PID, &HashSet::new()) {
            let Some(pos) = a.calls.iter().position(|c| closed.contains(c)) else {
                continue;
            };
            // The batch of a dropped request went again, later, on another connection.
            let dropped = &st.produce[a.calls[pos]];
            let again = a.calls.get(pos + 1).map(|&c| &st.produce[c]);
            let again = again.unwrap_or_else(|| panic!("partition {p}: {a:?} never resent"));
            assert_ne!(again.conn, dropped.conn, "resent on a new connection");
            resent += 1;
        }
    }
    assert!(
        resent >= 2,
        "each dropped request had a batch to resend ({resent})"
    );
    assert!(
        st.duplicates >= 1,
        "the resend after a drop-after-append was deduplicated"
    );
    assert!(st.disconnections.len() >= 2, "{:?}", st.disconnections);
    drop(st);
    broker.assert_clean();
}

// ----- 5. version negotiation --------------------------------------------------------------------

#[test]
fn no_common_produce_version_fails_locally() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig {
        produce: (0, 2),
        ..BrokerConfig::default()
    });
    let producer = Producer::new(config(&broker.addr())).unwrap();
    let futures: Vec<DeliveryFuture> = (0..10)
        .map(|i| producer.send(ProducerRecord::new(TOPIC, format!("v-{i}")).key(format!("{i}"))))
        .collect();
    for (i, r) in results(&futures, WAIT).into_iter().enumerate() {
        assert_eq!(
            r,
            Err(ProduceError::Protocol(ProtocolError::NoCommonVersion {
                api_key: api::PRODUCE,
                ours: (3, 12),
                theirs: Some((0, 2)),
            })),
            "record {i}"
        );
    }
    close(producer);
    let st = broker.state();
    assert_eq!(
        st.count(api::PRODUCE),
        0,
        "no produce request reached the broker"
    );
    assert!(st.count(api::METADATA) >= 1);
    drop(st);
    broker.assert_clean();
}

#[test]
fn requests_use_the_highest_common_version() {
    init_log();
    // (Produce max, Metadata max, InitProducerId max): non-flexible, mixed, and flexible ones
    // (Produce and Metadata are flexible from v9, InitProducerId from v2).
    for (produce, metadata, init) in [(3, 1, 0), (7, 5, 2), (8, 8, 1), (9, 9, 3)] {
        let broker = FakeBroker::start(BrokerConfig {
            produce: (3, produce),
            metadata: (1, metadata),
            init_producer_id: (0, init),
            ..BrokerConfig::default()
        });
        let producer = Producer::new(config(&broker.addr()).batch_size(1024)).unwrap();
        let mut sent = Sent::new();
        let futures: Vec<DeliveryFuture> = (0..300)
            .map(|i| sent.send(&producer, mixed_record(i, 4)))
            .collect();
        let metas = all_ok(&futures);
        sent.done();
        close(producer);
        let st = broker.state();
        assert!(!st.produce.is_empty());
        assert_eq!(
            st.versions(api::PRODUCE),
            vec![produce; st.produce.len()],
            "Produce at v{produce}"
        );
        let md = st.versions(api::METADATA);
        assert!(
            !md.is_empty() && md.iter().all(|&v| v == metadata),
            "{md:?}"
        );
        assert_eq!(st.versions(api::INIT_PRODUCER_ID), vec![init]);
        check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
        for p in 0..4 {
            sequences(&st, TOPIC, p, PID, &HashSet::new());
        }
        drop(st);
        broker.assert_clean();
    }
}

#[test]
fn unsupported_api_versions_is_retried_at_the_brokers_maximum() {
    init_log();
    for max in [2, 1, 0] {
        let broker = FakeBroker::start(BrokerConfig {
            api_versions: (0, max),
            ..BrokerConfig::default()
        });
        let producer = Producer::new(config(&broker.addr())).unwrap();
        let mut sent = Sent::new();
        let futures: Vec<DeliveryFuture> = (0..50)
            .map(|i| sent.send(&producer, mixed_record(i, 4)))
            .collect();
        let metas = all_ok(&futures);
        sent.done();
        close(producer);
        let st = broker.state();
        // Per connection: v3 refused (UNSUPPORTED_VERSION in a v0 body naming the broker's
        // maximum), then that maximum.
        let mut per_conn: HashMap<_, Vec<i16>> = HashMap::new();
        for &(conn, api_key, version) in &st.requests {
            if api_key == api::API_VERSIONS {
                per_conn.entry(conn).or_default().push(version);
            }
        }
        assert!(!per_conn.is_empty());
        for (conn, versions) in &per_conn {
            assert_eq!(versions, &vec![3, max], "ApiVersions on {conn}");
        }
        check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
        drop(st);
        broker.assert_clean();
    }
}

// ----- 6. acks=0 ---------------------------------------------------------------------------------

#[test]
fn acks_zero_gets_no_response_and_offset_minus_one() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let producer = Producer::new(config(&broker.addr()).acks(Acks::None).batch_size(1024)).unwrap();
    let n = 500;
    let mut sent = Sent::new();
    let futures: Vec<DeliveryFuture> = (0..n)
        .map(|i| sent.send(&producer, mixed_record(i, 4)))
        .collect();
    let metas = all_ok(&futures);
    sent.done();
    for (i, m) in metas.iter().enumerate() {
        assert_eq!(m.offset, -1, "record {i}");
    }
    // The futures resolved when the requests left; wait for the broker to have read them all.
    let st = broker.wait_until("all acks=0 records at the broker", WAIT, |s| {
        s.total(TOPIC) == n
    });
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), false);
    assert!(!st.produce.is_empty());
    for call in &st.produce {
        assert_eq!(call.request.acks, 0);
        assert_eq!(call.answer, Answer::NoResponse);
        for b in &call.batches {
            assert_eq!(
                (b.producer_id, b.producer_epoch, b.base_sequence),
                (-1, -1, -1)
            );
        }
    }
    assert_eq!(
        st.count(api::INIT_PRODUCER_ID),
        0,
        "no idempotence with acks=0"
    );
    let produce_requests = st.count(api::PRODUCE) as u64;
    drop(st);
    close(producer);
    broker.assert_clean();
    let stats = broker.stop();
    assert_eq!(stats.no_responses, produce_requests, "{stats:?}");
}

// ----- 7. sticky partitioning of keyless records -------------------------------------------------

#[test]
fn keyless_records_stick_to_a_partition_for_a_batch() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let cfg = config(&broker.addr()).batch_size(1024).linger_ms(10_000);
    let producer = Producer::new(cfg).unwrap();
    let n: usize = 400;
    let mut sent = Sent::new();
    // Same-sized records with a fixed timestamp: each takes 108 bytes in a batch (length 1,
    // attributes 1, timestamp delta 1, offset delta 1, null key 1, value length 2 + 100,
    // header count 1), so 8 fit in 1024 bytes with the 61-byte batch header.
    let per_batch = (1024 - 61) / 108;
    let futures: Vec<DeliveryFuture> = (0..n)
        .map(|i| {
            let value = format!("v-{i}-");
            let value = format!("{value}{}", "s".repeat(100 - value.len()));
            sent.send(
                &producer,
                ProducerRecord::new(TOPIC, value).timestamp_ms(1_700_000_000_000),
            )
        })
        .collect();
    assert!(producer.flush(WAIT));
    let metas = all_ok(&futures);
    sent.done();
    close(producer);

    let mut runs: Vec<(i32, usize)> = Vec::new();
    for m in &metas {
        match runs.last_mut() {
            Some((p, len)) if *p == m.partition => *len += 1,
            _ => runs.push((m.partition, 1)),
        }
    }
    let used: HashSet<i32> = metas.iter().map(|m| m.partition).collect();
    assert!(used.len() > 1, "keyless records all went to {used:?}");
    for (k, (p, len)) in runs.iter().enumerate().take(runs.len() - 1) {
        assert!(
            *len == per_batch,
            "run {k} on partition {p} has {len} records, not one batch ({per_batch}): {runs:?}"
        );
    }
    let st = broker.state();
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
    let batches: Vec<usize> = (0..4)
        .flat_map(|p| st.batches(TOPIC, p))
        .map(|(_, b)| b.records.len())
        .collect();
    assert!(batches.iter().all(|&c| c <= per_batch), "{batches:?}");
    assert!(
        batches.len() <= n.div_ceil(per_batch) + 2 * 4,
        "batches are filled: {} batches for {n} records",
        batches.len()
    );
    drop(st);
    broker.assert_clean();
}

// ----- 8. buffer.memory back-pressure ------------------------------------------------------------

#[test]
fn a_full_buffer_blocks_send_for_max_block_then_fails() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig {
        hold_produce: true,
        ..BrokerConfig::default()
    });
    let delivery_timeout = Duration::from_secs(2);
    let max_block = Duration::from_millis(300);
    let mut cfg = config(&broker.addr())
        .buffer_memory(4096)
        .max_block(max_block)
        .delivery_timeout(delivery_timeout);
    // Kafka requires delivery.timeout.ms >= linger.ms + request.timeout.ms.
    cfg.client = cfg
        .client
        .clone()
        .request_timeout(Duration::from_millis(1500));
    let producer = Producer::new(cfg).unwrap();
    let start = Instant::now();
    let mut futures = Vec::new();
    let mut exhausted = None;
    for i in 0..1_000 {
        let t = Instant::now();
        let f = producer.send(ProducerRecord::new(
            TOPIC,
            format!("v-{i}-{}", "b".repeat(100)),
        ));
        let took = t.elapsed();
        if let Some(Err(e)) = f.wait_timeout(Duration::ZERO) {
            exhausted = Some((i, e, took));
            break;
        }
        futures.push(f);
    }
    let (i, e, took) = exhausted.expect("the buffer filled up");
    assert_eq!(e, ProduceError::BufferExhausted, "record {i}");
    assert!(i >= 20, "{i} records of ~130 bytes fit in 4096");
    assert!(
        took >= max_block,
        "send blocked {took:?}, less than max.block.ms"
    );
    assert!(
        took < max_block + Duration::from_secs(3),
        "send blocked {took:?}, far more than max.block.ms"
    );
    // Nothing was dropped silently: every accepted record fails at delivery.timeout.ms.
    for (k, r) in results(&futures, delivery_timeout + Duration::from_secs(20))
        .into_iter()
        .enumerate()
    {
        assert!(
            matches!(r, Err(ProduceError::DeliveryTimeout { .. })),
            "record {k}: {r:?}"
        );
    }
    assert!(start.elapsed() >= delivery_timeout);
    assert_eq!(producer.buffered_bytes(), 0, "all memory returned");
    close(producer);
    let st = broker.state();
    assert!(!st.produce.is_empty());
    assert!(st.produce.iter().all(|c| c.answer == Answer::Held));
    drop(st);
    broker.assert_clean();
}

// ----- 9. max.request.size -----------------------------------------------------------------------

#[test]
fn a_record_over_max_request_size_fails_at_once() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let mut cfg = config(&broker.addr());
    cfg.set("max.request.size", "2048").unwrap();
    let producer = Producer::new(cfg).unwrap();
    let mut sent = Sent::new();
    // Warm up so the topic's metadata is known.
    let warm = vec![sent.send(&producer, ProducerRecord::new(TOPIC, "v-0-").partition(0))];
    let mut metas = all_ok(&warm);

    let t = Instant::now();
    let big = producer.send(ProducerRecord::new(TOPIC, vec![b'B'; 4000]).partition(0));
    let r = big.wait_timeout(WAIT).expect("completes");
    assert!(
        matches!(r, Err(ProduceError::RecordTooLarge { size, limit: 2048 }) if size > 2048),
        "{r:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // A record that fits still goes.
    let fits = vec![sent.send(
        &producer,
        ProducerRecord::new(TOPIC, format!("v-1-{}", "f".repeat(1500))).partition(0),
    )];
    metas.extend(all_ok(&fits));
    sent.done();
    assert_eq!(producer.buffered_bytes(), 0);
    close(producer);
    let st = broker.state();
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
    for call in &st.produce {
        assert!(
            call.raw.len() + 4 <= 2048,
            "request of {} bytes",
            call.raw.len() + 4
        );
    }
    drop(st);
    broker.assert_clean();
}

// ----- a batch refused for good ------------------------------------------------------------------

#[test]
fn a_batch_refused_for_good_does_not_break_the_partitions_sequence() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let producer = Producer::new(config(&broker.addr())).unwrap();
    let mut sent = Sent::new();
    let record = |i: usize| ProducerRecord::new(TOPIC, format!("v-{i}-")).partition(0);
    let warm: Vec<DeliveryFuture> = (0..5).map(|i| sent.send(&producer, record(i))).collect();
    let mut metas = all_ok(&warm);

    // MESSAGE_TOO_LARGE is not retriable: the batch fails, the broker never appended it, and the
    // partition's next batch must start at the sequence the broker still expects.
    broker.fail_produce(TOPIC, 0, MESSAGE_TOO_LARGE, 1);
    let first: Vec<DeliveryFuture> = (5..10).map(|i| sent.send(&producer, record(i))).collect();
    let first = results(&first, WAIT);
    let later: Vec<DeliveryFuture> = (10..60).map(|i| sent.send(&producer, record(i))).collect();
    let later = all_ok(&later);
    sent.done();
    close(producer);

    let st = broker.state();
    let refused_calls: HashSet<usize> = st
        .produce
        .iter()
        .enumerate()
        .filter(|(_, c)| c.code_for(TOPIC, 0) == Some(MESSAGE_TOO_LARGE))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(refused_calls.len(), 1);
    let refused: HashSet<usize> = refused_calls
        .iter()
        .flat_map(|&c| &st.produce[c].batches)
        .flat_map(|b| {
            b.records
                .iter()
                .map(|r| index_of(&r.value).expect("indexed value"))
        })
        .collect();
    assert!(!refused.is_empty());
    for (k, r) in first.into_iter().enumerate() {
        let i = k + 5;
        if refused.contains(&i) {
            assert_eq!(
                r,
                Err(ProduceError::Broker(KafkaError::MessageTooLarge)),
                "record {i}"
            );
            metas.push(RecordMetadata {
                partition: 0,
                offset: -1,
            });
        } else {
            metas.push(r.unwrap_or_else(|e| panic!("record {i} failed: {e}")));
        }
    }
    metas.extend(later);
    check_delivered(&st, TOPIC, &sent, &metas, &refused, true);
    // Without the refused batch, sequences are contiguous: its numbers were reused.
    let attempts = sequences(&st, TOPIC, 0, PID, &refused_calls);
    assert!(attempts.iter().all(|a| a.calls.len() == 1), "{attempts:?}");
    drop(st);
    broker.assert_clean();
}

// ----- delivery.timeout.ms bounds records in flight -------------------------------------------

/// `DeliveryFuture` promises a result "at the latest when delivery.timeout.ms has passed since
/// send", records in flight included. As in Kafka's Java client, a `delivery.timeout.ms` shorter
/// than `linger.ms + request.timeout.ms` is refused, and batches in flight past their deadline fail
/// without waiting for their request.
#[test]
fn delivery_timeout_bounds_records_in_flight() {
    init_log();
    // Too short for the request timeout: refused, naming the key.
    let err = Producer::new(config("127.0.0.1:9").delivery_timeout(Duration::from_secs(2)))
        .err()
        .expect("delivery.timeout.ms < linger.ms + request.timeout.ms is refused");
    assert!(err.to_string().contains("delivery.timeout.ms"), "{err}");

    let broker = FakeBroker::start(BrokerConfig {
        hold_produce: true,
        ..BrokerConfig::default()
    });
    let timeout = Duration::from_secs(2);
    let cfg = config(&broker.addr()).delivery_timeout(timeout);
    let cfg = ProducerConfig {
        client: cfg
            .client
            .clone()
            .request_timeout(Duration::from_millis(1900)),
        ..cfg
    };
    let producer = Producer::new(cfg).unwrap();
    let start = Instant::now();
    let futures: Vec<DeliveryFuture> = (0..5)
        .map(|i| producer.send(ProducerRecord::new(TOPIC, format!("v-{i}-")).partition(0)))
        .collect();
    for (i, r) in results(&futures, WAIT).into_iter().enumerate() {
        assert!(
            matches!(r, Err(ProduceError::DeliveryTimeout { .. })),
            "record {i}: {r:?}"
        );
    }
    let took = start.elapsed();
    assert!(took >= timeout, "failed early, after {took:?}");
    assert!(
        took < timeout + Duration::from_secs(3),
        "delivery.timeout.ms is {timeout:?}, the records failed after {took:?}"
    );
    close(producer);
    broker.assert_clean();
}

/// A batch that fails after retries (here `retries=1` and two NOT_LEADER_OR_FOLLOWER answers; the
/// same happens when it expires at `delivery.timeout.ms`) keeps the sequence numbers it consumed and
/// its outcome is unknown, so the partition's sequence has a gap the broker would never accept. As
/// Kafka's client does (KIP-360), the producer pauses, lets requests in flight drain, takes a new
/// producer id/epoch and restarts every partition at sequence 0: later records are delivered.
#[test]
fn a_batch_failed_after_retries_does_not_break_the_partitions_sequence() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let mut cfg = config(&broker.addr());
    cfg.retries = 1;
    let producer = Producer::new(cfg).unwrap();
    let record = |i: usize| ProducerRecord::new(TOPIC, format!("v-{i}-")).partition(0);
    let warm: Vec<DeliveryFuture> = (0..5).map(|i| producer.send(record(i))).collect();
    all_ok(&warm);
    broker.fail_produce(TOPIC, 0, NOT_LEADER_OR_FOLLOWER, 2);
    let failing: Vec<DeliveryFuture> = (5..10).map(|i| producer.send(record(i))).collect();
    for (i, r) in results(&failing, WAIT).into_iter().enumerate() {
        assert!(
            matches!(r, Err(ProduceError::RetriesExhausted { .. })),
            "record {i}: {r:?}"
        );
    }
    let later: Vec<DeliveryFuture> = (10..20).map(|i| producer.send(record(i))).collect();
    all_ok(&later);
    {
        // The mechanism: a second InitProducerId, and the later batches under the new epoch with
        // sequences restarting at 0.
        let st = broker.state();
        assert_eq!(st.inits, 2, "a new producer id/epoch was requested once");
        let after: Vec<(i16, i32)> = st
            .produce
            .iter()
            .flat_map(|c| c.batches.iter())
            .filter(|b| b.producer_epoch == 8)
            .map(|b| (b.producer_epoch, b.base_sequence))
            .collect();
        assert!(!after.is_empty(), "batches were sent under the new epoch");
        assert_eq!(after[0].1, 0, "sequences restart at 0 under the new epoch");
    }
    close(producer);
    broker.assert_clean();
}

// ----- pipelining: several batches of a partition in flight -------------------------------------

/// Five requests in flight per connection, each staged as soon as the sender has it (so one pass
/// of the sender puts five on the wire at once), small batches.
fn pipelined(addr: &str) -> ProducerConfig {
    let cfg = config(addr).batch_size(1024).linger_ms(0);
    let mut client = cfg.client.clone().max_in_flight(5);
    client.pipeline_unsent = true;
    cfg.client(client)
}

fn p0_record(i: usize) -> ProducerRecord {
    ProducerRecord::new(TOPIC, format!("v-{i}-{}", "z".repeat(60))).partition(0)
}

/// Sends `n` records to partition 0 while the broker answers Metadata with LEADER_NOT_AVAILABLE,
/// then lets the topic appear: the producer has every batch queued when it learns the leader, so
/// its first pass sends five requests (one batch of partition 0 each) back to back.
fn queue_then_reveal(
    broker: &FakeBroker,
    producer: &Producer,
    sent: &mut Sent,
    n: usize,
) -> Vec<DeliveryFuture> {
    broker.state().hide_topics = true;
    let futures = (0..n).map(|i| sent.send(producer, p0_record(i))).collect();
    drop(broker.wait_until("metadata and a producer id", WAIT, |st| {
        st.count(api::METADATA) >= 1 && st.count(api::INIT_PRODUCER_ID) >= 1
    }));
    broker.state().hide_topics = false;
    futures
}

/// Partition 0's produce calls, in arrival order.
fn p0_calls(st: &State) -> Vec<usize> {
    st.produce
        .iter()
        .enumerate()
        .filter(|(_, c)| c.code_for(TOPIC, 0).is_some())
        .map(|(i, _)| i)
        .collect()
}

/// A retriable error on the first of five batches of one partition in flight: the four behind it
/// come back OUT_OF_ORDER_SEQUENCE_NUMBER (the broker never saw the first), and all five are
/// resent in sequence order, the failed one first, each stored exactly once.
fn retriable_error_on_the_first_of_five_in_flight(code: i16) {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    broker.fail_sequence(TOPIC, 0, 0, code, 1);
    let producer = Producer::new(pipelined(&broker.addr())).unwrap();
    let mut sent = Sent::new();
    let futures = queue_then_reveal(&broker, &producer, &mut sent, 100);
    let metas = all_ok(&futures);
    sent.done();
    close(producer);

    let st = broker.state();
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
    assert_eq!(
        st.out_of_order, 4,
        "the four batches in flight behind the failed one were refused as out of order"
    );
    let calls = p0_calls(&st);
    assert_eq!(st.produce[calls[0]].code_for(TOPIC, 0), Some(code));
    for &c in &calls[1..5] {
        assert_eq!(
            st.produce[c].code_for(TOPIC, 0),
            Some(OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
    }
    // Every batch accepted once, in sequence order; the failed one was taken on its second try.
    let attempts = sequences(&st, TOPIC, 0, PID, &HashSet::new());
    assert!(attempts.len() >= 6, "{attempts:?}");
    assert_eq!(attempts[0].base_sequence, 0);
    assert_eq!(attempts[0].calls.len(), 2, "{attempts:?}");
    assert!(attempts[1..].iter().all(|a| a.calls.len() == 1));
    drop(st);
    broker.assert_clean();
}

#[test]
fn a_retriable_error_on_the_first_of_five_in_flight_resends_them_in_order() {
    retriable_error_on_the_first_of_five_in_flight(NOT_ENOUGH_REPLICAS);
}

#[test]
fn not_leader_on_the_first_of_five_in_flight_resends_them_in_order() {
    retriable_error_on_the_first_of_five_in_flight(NOT_LEADER_OR_FOLLOWER);
}

/// Exactly five produce requests in flight on a connection the broker never answers (never a
/// sixth); when they time out the connection is closed and the five batches are resent in order
/// on a new one: the broker recognises each as already appended, nothing is stored twice.
#[test]
fn five_requests_in_flight_per_connection_then_a_timeout_resends_them_in_order() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let mut cfg = pipelined(&broker.addr());
    cfg.client = cfg
        .client
        .clone()
        .request_timeout(Duration::from_millis(1500));
    let producer = Producer::new(cfg).unwrap();
    let mut sent = Sent::new();
    broker.state().hold = true;
    let futures = queue_then_reveal(&broker, &producer, &mut sent, 100);
    let first = {
        let st = broker.wait_until("five produce requests", WAIT, |st| st.produce.len() >= 5);
        let conn = st.produce[0].conn;
        assert!(st.produce.iter().all(|c| c.conn == conn));
        conn
    };
    broker.state().hold = false;
    drop(broker.wait_until("the held connection closed", WAIT, |st| {
        st.disconnections.iter().any(|(c, _)| *c == first)
    }));
    let metas = all_ok(&futures);
    sent.done();
    close(producer);

    let st = broker.state();
    let on_first = st.produce.iter().filter(|c| c.conn == first).count();
    assert_eq!(on_first, 5, "max.in.flight.requests.per.connection is 5");
    let held: Vec<i32> = st.produce[..5]
        .iter()
        .map(|c| c.batches[0].base_sequence)
        .collect();
    assert!(held.windows(2).all(|w| w[0] < w[1]), "{held:?}");
    assert_eq!(st.duplicates, 5, "each held batch was resent once");
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
    let attempts = sequences(&st, TOPIC, 0, PID, &HashSet::new());
    assert!(attempts[..5].iter().all(|a| a.calls.len() == 2));
    assert!(attempts[5..].iter().all(|a| a.calls.len() == 1));
    drop(st);
    broker.assert_clean();
}

/// The connection drops with five batches of one partition in flight, after the broker appended
/// the first: the resent first batch is answered DUPLICATE_SEQUENCE_NUMBER (success), the other
/// four are appended in order, each record stored once.
#[test]
fn duplicate_sequence_number_on_a_resent_batch_with_five_in_flight() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig {
        deferred: true,
        ..BrokerConfig::default()
    });
    broker.state().duplicate_code = DUPLICATE_SEQUENCE_NUMBER;
    broker.drop_next_produce(DropMode::AfterAppend);
    let producer = Producer::new(pipelined(&broker.addr())).unwrap();
    let mut sent = Sent::new();
    let futures = queue_then_reveal(&broker, &producer, &mut sent, 100);
    let metas = all_ok(&futures);
    sent.done();
    close(producer);

    let st = broker.state();
    assert_eq!(st.duplicates, 1);
    let calls = p0_calls(&st);
    assert_eq!(st.produce[calls[0]].answer, Answer::Closed);
    assert_eq!(
        st.produce[calls[1]].code_for(TOPIC, 0),
        Some(DUPLICATE_SEQUENCE_NUMBER)
    );
    assert_eq!(
        st.produce[calls[1]].batches[0].raw,
        st.produce[calls[0]].batches[0].raw
    );
    // A duplicate's offsets are not known to the producer (-1): compare the log only.
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), false);
    sequences(&st, TOPIC, 0, PID, &HashSet::new());
    drop(st);
    broker.assert_clean();
}

// ----- InitProducerId errors -----------------------------------------------------------------

/// A retriable InitProducerId error (COORDINATOR_NOT_AVAILABLE) is retried after the retry
/// backoff, growing with each failure, not at round-trip rate; then records are delivered.
#[test]
fn a_retriable_init_producer_id_error_backs_off() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    broker
        .state()
        .init_errors
        .extend([COORDINATOR_NOT_AVAILABLE; 3]);
    let backoff = Duration::from_millis(50);
    let cfg = config(&broker.addr()).retry_backoff(backoff, Duration::from_secs(1));
    let producer = Producer::new(cfg).unwrap();
    let mut sent = Sent::new();
    let futures: Vec<DeliveryFuture> = (0..10)
        .map(|i| sent.send(&producer, p0_record(i)))
        .collect();
    let metas = all_ok(&futures);
    sent.done();
    close(producer);
    let st = broker.state();
    assert_eq!(st.init_times.len(), 4, "three refusals, then a producer id");
    for (k, w) in st.init_times.windows(2).enumerate() {
        // The backoff of the k-th failure in a row is 50 ms × 2^k, jittered by ±20 %.
        let least = backoff.mul_f64(0.8 * f64::from(1u32 << k));
        let gap = w[1] - w[0];
        assert!(
            gap >= least,
            "attempt {}: {gap:?} after the previous, at least {least:?} due",
            k + 1
        );
    }
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
    drop(st);
    broker.assert_clean();
}

/// A non-retriable InitProducerId error (CLUSTER_AUTHORIZATION_FAILED) cannot heal by asking
/// again: it is asked once, every queued record fails with it at once (not at
/// `delivery.timeout.ms`), and later sends fail with it too.
#[test]
fn a_non_retriable_init_producer_id_error_fails_fast() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    broker
        .state()
        .init_errors
        .push_back(CLUSTER_AUTHORIZATION_FAILED);
    let producer = Producer::new(config(&broker.addr())).unwrap();
    let start = Instant::now();
    let futures: Vec<DeliveryFuture> = (0..10).map(|i| producer.send(p0_record(i))).collect();
    let fatal = ProduceError::Broker(KafkaError::ClusterAuthorizationFailed);
    for (i, r) in results(&futures, WAIT).into_iter().enumerate() {
        assert_eq!(r, Err(fatal.clone()), "record {i}");
    }
    assert!(
        start.elapsed() < WAIT / 2,
        "failed after {:?}, not at once",
        start.elapsed()
    );
    assert_eq!(producer.send(p0_record(10)).wait(), Err(fatal));
    assert_eq!(producer.buffered_bytes(), 0);
    producer.close(Duration::from_secs(5));
    let st = broker.state();
    assert_eq!(st.init_times.len(), 1, "asked once");
    assert!(st.produce.is_empty());
    drop(st);
    broker.assert_clean();
}

/// Topic names are checked at `send` with Kafka's rules; a bad one fails at once with a typed
/// error and never reaches a Metadata request, and good topics keep flowing.
#[test]
fn invalid_topic_names_fail_at_send() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    let producer = Producer::new(config(&broker.addr())).unwrap();
    let long = "t".repeat(32_768);
    for bad in ["", ".", "..", "a b", "t/1", "ünï", &long, &"x".repeat(250)] {
        let r = producer.send(ProducerRecord::new(bad, "v")).wait();
        assert!(
            matches!(r, Err(ProduceError::InvalidTopic { .. })),
            "{:?}: {r:?}",
            &bad[..bad.len().min(20)]
        );
    }
    let ok = producer
        .send(ProducerRecord::new(&"x".repeat(249), "v"))
        .wait();
    assert!(ok.is_ok(), "{ok:?}");
    let ok = producer.send(p0_record(0)).wait();
    assert!(ok.is_ok(), "{ok:?}");
    close(producer);
    broker.assert_clean();
}

/// A Metadata answer whose one partition has index 2^31-2 is refused (no allocation for two
/// billion partitions, no overflow): the records wait, metadata is asked again, and once the
/// broker answers sanely they are delivered.
#[test]
fn a_metadata_answer_with_an_absurd_partition_index_is_refused() {
    init_log();
    let broker = FakeBroker::start(BrokerConfig::default());
    broker.state().partition_index = Some(i32::MAX - 1);
    let producer = Producer::new(config(&broker.addr())).unwrap();
    let mut sent = Sent::new();
    let futures: Vec<DeliveryFuture> = (0..10)
        .map(|i| sent.send(&producer, p0_record(i)))
        .collect();
    drop(broker.wait_until("metadata asked again", WAIT, |st| {
        st.count(api::METADATA) >= 3
    }));
    assert!(futures
        .iter()
        .all(|f| f.wait_timeout(Duration::ZERO).is_none()));
    broker.state().partition_index = None;
    let metas = all_ok(&futures);
    sent.done();
    close(producer);
    let st = broker.state();
    assert!(st.produce.iter().all(|c| c.answer == Answer::Responded));
    check_delivered(&st, TOPIC, &sent, &metas, &HashSet::new(), true);
    drop(st);
    broker.assert_clean();
}
