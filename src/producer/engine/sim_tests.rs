//! The engine on simulated time (`mqnet::sim`) against a fake Kafka broker (a
//! [`SimServer`](crate::sim::SimServer)) that keeps Kafka's idempotence rules: five batches of a
//! partition in flight, a retriable error on the first of them, NOT_LEADER_OR_FOLLOWER, a
//! disconnect with five in flight, DUPLICATE_SEQUENCE_NUMBER on a resent batch. Deterministic and
//! fast: no sockets, no sleeping.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use crossbeam_channel::unbounded;
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
use kafka_protocol::records::RecordBatchDecoder;

use super::*;
use crate::client::ClientConfig;
use crate::net::ChannelId;
use crate::producer::delivery::DeliveryFuture;
use crate::producer::ProducerRecord;
use crate::sim::{SimNetwork, SimServer};

// The metrics tests reuse this file's fake broker and drivers (a child module sees them).
#[path = "metrics_tests.rs"]
mod metrics_tests;

const ADDR: &str = "127.0.0.1:9092";
const TOPIC: &str = "t";
const PID: i64 = 77;
const EPOCH: i16 = 3;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const NOT_ENOUGH_REPLICAS: i16 = 19;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;

/// One partition's log and the producer's sequence there.
#[derive(Default)]
struct Log {
    next_seq: i32,
    values: Vec<Bytes>,
    /// The last five appended batches: (base sequence, record count).
    recent: VecDeque<(i32, i32)>,
}

/// What the broker did with one batch of a produce request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    partition: i32,
    seq: i32,
    code: i16,
}

#[derive(Default)]
struct BrokerState {
    partitions: i32,
    logs: HashMap<i32, Log>,
    /// Scripted codes for the batch with (partition, base sequence).
    faults: HashMap<(i32, i32), VecDeque<i16>>,
    /// The code for a resend of one of the last five batches (0 as Kafka, or 46).
    duplicate_code: i16,
    /// Hold produce answers (appended all the same) instead of sending them.
    hold: bool,
    held: Vec<(ChannelId, Bytes)>,
    produce: Vec<(ChannelId, Vec<Seen>)>,
    metadata_requests: usize,
    duplicates: usize,
    out_of_order: usize,
}

#[derive(Clone, Default)]
struct Broker(Arc<Mutex<BrokerState>>);

impl Broker {
    fn lock(&self) -> MutexGuard<'_, BrokerState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn decode<R: Decodable + HeaderVersion>(frame: &Bytes, version: i16) -> (RequestHeader, R) {
    let mut buf = frame.clone();
    let header = RequestHeader::decode(&mut buf, R::header_version(version)).expect("header");
    let body = R::decode(&mut buf, version).expect("body");
    assert!(buf.is_empty(), "bytes after the request body");
    (header, body)
}

fn encode<R: Encodable + HeaderVersion>(corr: i32, version: i16, body: &R) -> Bytes {
    let mut buf = bytes::BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(corr)
        .encode(&mut buf, R::header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    buf.freeze()
}

impl SimServer for Broker {
    fn request(&mut self, channel: ChannelId, frame: Bytes) -> Vec<Bytes> {
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let mut st = self.lock();
        match key {
            18 => {
                let (h, _) = decode::<ApiVersionsRequest>(&frame, version);
                let e = |k: i16, lo: i16, hi: i16| {
                    ApiVersion::default()
                        .with_api_key(k)
                        .with_min_version(lo)
                        .with_max_version(hi)
                };
                let body = ApiVersionsResponse::default().with_api_keys(vec![
                    e(0, 3, 9),
                    e(3, 1, 9),
                    e(18, 0, 3),
                    e(22, 0, 4),
                ]);
                vec![encode(h.correlation_id, version, &body)]
            }
            3 => {
                st.metadata_requests += 1;
                let (h, _) = decode::<MetadataRequest>(&frame, version);
                let partitions = (0..st.partitions)
                    .map(|i| {
                        MetadataResponsePartition::default()
                            .with_partition_index(i)
                            .with_leader_id(BrokerId(1))
                            .with_replica_nodes(vec![BrokerId(1)])
                            .with_isr_nodes(vec![BrokerId(1)])
                    })
                    .collect();
                let body = MetadataResponse::default()
                    .with_brokers(vec![MetadataResponseBroker::default()
                        .with_node_id(BrokerId(1))
                        .with_host(StrBytes::from_static_str("127.0.0.1"))
                        .with_port(9092)])
                    .with_topics(vec![MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC))))
                        .with_partitions(partitions)]);
                vec![encode(h.correlation_id, version, &body)]
            }
            22 => {
                let (h, _) = decode::<InitProducerIdRequest>(&frame, version);
                let body = InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(PID))
                    .with_producer_epoch(EPOCH);
                vec![encode(h.correlation_id, version, &body)]
            }
            0 => {
                let answer = st.produce(channel, &frame, version);
                if st.hold {
                    st.held.push((channel, answer));
                    Vec::new()
                } else {
                    vec![answer]
                }
            }
            _ => panic!("api key {key}"),
        }
    }
}

impl BrokerState {
    /// Appends with Kafka's idempotence rules (scripted faults first); answers per partition.
    fn produce(&mut self, channel: ChannelId, frame: &Bytes, version: i16) -> Bytes {
        let (h, req) = decode::<ProduceRequest>(frame, version);
        let mut seen = Vec::new();
        let mut topics = Vec::new();
        for t in &req.topic_data {
            let mut parts = Vec::new();
            for pd in &t.partition_data {
                let mut raw = pd.records.clone().expect("records");
                let pid = i64::from_be_bytes(raw[43..51].try_into().expect("pid"));
                let epoch = i16::from_be_bytes([raw[51], raw[52]]);
                assert_eq!((pid, epoch), (PID, EPOCH));
                let seq = i32::from_be_bytes(raw[53..57].try_into().expect("seq"));
                let set = RecordBatchDecoder::decode(&mut raw).expect("a record batch");
                let n = set.records.len() as i32;
                let p = pd.index;
                let fault = self.faults.get_mut(&(p, seq)).and_then(VecDeque::pop_front);
                let log = self.logs.entry(p).or_default();
                let code = if let Some(code) = fault {
                    code
                } else if log.recent.contains(&(seq, n)) {
                    self.duplicates += 1;
                    self.duplicate_code
                } else if seq != log.next_seq {
                    self.out_of_order += 1;
                    OUT_OF_ORDER_SEQUENCE_NUMBER
                } else {
                    log.next_seq = seq + n;
                    log.values
                        .extend(set.records.iter().map(|r| r.value.clone().expect("value")));
                    log.recent.push_back((seq, n));
                    if log.recent.len() > 5 {
                        log.recent.pop_front();
                    }
                    0
                };
                seen.push(Seen {
                    partition: p,
                    seq,
                    code,
                });
                parts.push(
                    PartitionProduceResponse::default()
                        .with_index(p)
                        .with_error_code(code)
                        .with_base_offset(if code == 0 { 0 } else { -1 }),
                );
            }
            topics.push(
                TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(parts),
            );
        }
        self.produce.push((channel, seen));
        encode(
            h.correlation_id,
            version,
            &ProduceResponse::default().with_responses(topics),
        )
    }

    /// Partition `p`'s batches as answered, in arrival order.
    fn seen(&self, p: i32) -> Vec<Seen> {
        self.produce
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .filter(|s| s.partition == p)
            .collect()
    }
}

/// An engine on a simulated network whose broker at `ADDR` is `broker` (one partition), with
/// `n` records for partition 0 appended before its first turn: the sender has several batches of
/// the partition ready at once.
fn setup(broker: &Broker, n: usize) -> (Engine<SimNetwork>, Vec<DeliveryFuture>) {
    setup_with_bootstrap(broker, n, ADDR)
}

/// [`setup`] with `bootstrap` as `bootstrap.servers` (the broker is at `ADDR`; any other address
/// refuses connections).
fn setup_with_bootstrap(
    broker: &Broker,
    n: usize,
    bootstrap: &str,
) -> (Engine<SimNetwork>, Vec<DeliveryFuture>) {
    broker.lock().partitions = 1;
    let mut net = SimNetwork::new();
    net.set_server(ADDR.parse().expect("addr"), Box::new(broker.clone()));
    let cfg = ProducerConfig::new(bootstrap)
        .linger_ms(0)
        .batch_size(1024)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .client(ClientConfig::default().request_timeout(Duration::from_secs(10)));
    let (tx, rx) = unbounded();
    let acc = Arc::new(Accumulator::new(
        cfg.batch_size,
        cfg.max_request_size,
        cfg.delivery_timeout,
        tx,
    ));
    let pool = Arc::new(BufferPool::new(cfg.buffer_memory));
    let now = net.now();
    let e = Engine::new(
        cfg,
        rx,
        acc.clone(),
        pool,
        Arc::new(AtomicBool::new(false)),
        net,
    )
    .expect("engine");
    let futures = (0..n)
        .map(|i| {
            let (future, completion) = DeliveryFuture::new();
            let record =
                ProducerRecord::new(TOPIC, format!("v-{i:04}-{}", "x".repeat(60))).partition(0);
            let reserved = record.size_estimate();
            let _ = acc.append(Pending {
                record,
                completion,
                reserved,
                enqueued: now,
            });
            future
        })
        .collect();
    (e, futures)
}

/// Runs turns on simulated time until `done`, at most `limit` of it.
fn run_until(
    e: &mut Engine<SimNetwork>,
    limit: Duration,
    mut done: impl FnMut(&mut Engine<SimNetwork>) -> bool,
) {
    let start = e.client.transport().now();
    for _ in 0..1_000_000 {
        if done(e) {
            return;
        }
        let now = e.client.transport().now();
        assert!(
            now - start <= limit,
            "not done after {limit:?} of simulated time"
        );
        let timeout = e.turn(now).expect("the engine runs");
        e.poll(timeout, now);
        let now = e.client.transport().now();
        e.handle_responses(now);
    }
    panic!("not done after a million turns");
}

fn all_done(futures: &[DeliveryFuture]) -> bool {
    futures
        .iter()
        .all(|f| f.wait_timeout(Duration::ZERO).is_some())
}

/// Every record delivered, and partition 0's log holds each exactly once, in send order.
fn check_exactly_once_in_order(broker: &Broker, futures: &[DeliveryFuture]) {
    for (i, f) in futures.iter().enumerate() {
        match f.wait_timeout(Duration::ZERO) {
            Some(Ok(_)) => {}
            other => panic!("record {i}: {other:?}"),
        }
    }
    let st = broker.lock();
    let values: Vec<Bytes> = st
        .logs
        .get(&0)
        .map(|l| l.values.clone())
        .unwrap_or_default();
    assert_eq!(values.len(), futures.len(), "records stored");
    for (i, v) in values.iter().enumerate() {
        assert!(
            v.starts_with(format!("v-{i:04}-").as_bytes()),
            "offset {i} holds {:?}",
            String::from_utf8_lossy(&v[..8])
        );
    }
}

/// Base sequences of the first `k` batches of partition 0 that were stored.
fn stored_order(st: &BrokerState) -> Vec<i32> {
    st.seen(0)
        .iter()
        .filter(|s| s.code == 0)
        .map(|s| s.seq)
        .collect()
}

/// Five produce requests in flight on the leader's connection, never a sixth, while the broker
/// holds its answers; a retriable `code` on the first batch: the four behind it come back
/// OUT_OF_ORDER_SEQUENCE_NUMBER, and all five are resent in sequence order, one at a time, each
/// stored exactly once.
fn retriable_error_on_the_first_of_five(code: i16) {
    let broker = Broker::default();
    broker.lock().faults.insert((0, 0), VecDeque::from([code]));
    broker.lock().hold = true;
    let (mut e, futures) = setup(&broker, 100);
    run_until(&mut e, Duration::from_secs(5), |_| {
        broker.lock().held.len() >= 5
    });
    // Quiet for a second of simulated time: still five, the connection's limit.
    let until = e.client.transport().now() + Duration::from_secs(1);
    run_until(&mut e, Duration::from_secs(2), |e| {
        e.client.transport().now() >= until
    });
    let (held, first_seqs) = {
        let mut st = broker.lock();
        st.hold = false;
        let seqs: Vec<i32> = st.seen(0).iter().map(|s| s.seq).collect();
        (std::mem::take(&mut st.held), seqs)
    };
    assert_eq!(held.len(), 5, "max.in.flight.requests.per.connection");
    assert!(held.iter().all(|(c, _)| *c == held[0].0), "one connection");
    assert!(first_seqs.windows(2).all(|w| w[0] < w[1]), "{first_seqs:?}");
    for (ch, answer) in held {
        e.client.transport_mut().deliver(ch, answer);
    }
    run_until(&mut e, Duration::from_secs(10), |_| all_done(&futures));
    check_exactly_once_in_order(&broker, &futures);
    let st = broker.lock();
    assert_eq!(
        st.out_of_order, 4,
        "the four batches behind the refused one"
    );
    let seen = st.seen(0);
    assert_eq!(seen[0].code, code);
    assert!(seen[1..5]
        .iter()
        .all(|s| s.code == OUT_OF_ORDER_SEQUENCE_NUMBER));
    // The resends: the five sequences again, in order, each alone in its request.
    let resent: Vec<i32> = seen[5..10].iter().map(|s| s.seq).collect();
    assert_eq!(resent, first_seqs[..5]);
    assert!(seen[5..10].iter().all(|s| s.code == 0));
    assert_eq!(stored_order(&st)[..5], first_seqs[..5]);
    if code == NOT_LEADER_OR_FOLLOWER {
        assert!(st.metadata_requests >= 2, "NOT_LEADER refreshes metadata");
    }
}

#[test]
fn a_retriable_error_on_the_first_of_five_in_flight_is_resent_in_order() {
    retriable_error_on_the_first_of_five(NOT_ENOUGH_REPLICAS);
}

#[test]
fn not_leader_on_the_first_of_five_in_flight_is_resent_in_order() {
    retriable_error_on_the_first_of_five(NOT_LEADER_OR_FOLLOWER);
}

/// The leader's connection drops with five batches in flight that the broker had appended: they
/// are resent in order on a new connection, recognised as duplicates (answered `dup_code`), and
/// every record is stored once.
fn disconnect_with_five_in_flight(dup_code: i16) {
    let broker = Broker::default();
    broker.lock().hold = true;
    broker.lock().duplicate_code = dup_code;
    let (mut e, futures) = setup(&broker, 100);
    run_until(&mut e, Duration::from_secs(5), |_| {
        broker.lock().held.len() >= 5
    });
    let first_seqs: Vec<i32> = {
        let mut st = broker.lock();
        st.hold = false;
        st.held.clear();
        st.seen(0).iter().map(|s| s.seq).collect()
    };
    assert_eq!(first_seqs.len(), 5);
    e.client
        .transport_mut()
        .reset_peer(ADDR.parse().expect("addr"));
    run_until(&mut e, Duration::from_secs(10), |_| all_done(&futures));
    check_exactly_once_in_order(&broker, &futures);
    let st = broker.lock();
    assert_eq!(st.duplicates, 5, "each appended batch resent once");
    assert_eq!(st.out_of_order, 0);
    let seen = st.seen(0);
    let resent: Vec<(i32, i16)> = seen[5..10].iter().map(|s| (s.seq, s.code)).collect();
    let expected: Vec<(i32, i16)> = first_seqs.iter().map(|&s| (s, dup_code)).collect();
    assert_eq!(resent, expected);
}

#[test]
fn a_disconnect_with_five_in_flight_resends_them_in_order() {
    disconnect_with_five_in_flight(0);
}

#[test]
fn duplicate_sequence_number_on_resent_batches_counts_as_delivered() {
    disconnect_with_five_in_flight(DUPLICATE_SEQUENCE_NUMBER);
}

/// The bootstrap servers are tried one at a time (`BootstrapFailover`): each dead one at most
/// once before the live one, whatever the random starting point, and the records are delivered.
#[test]
fn dead_bootstrap_servers_are_failed_over_one_at_a_time() {
    const DEAD: [&str; 2] = ["127.0.0.1:9001", "127.0.0.1:9002"];
    for _ in 0..8 {
        let broker = Broker::default();
        let list = format!("{},{},{ADDR}", DEAD[0], DEAD[1]);
        let (mut e, futures) = setup_with_bootstrap(&broker, 20, &list);
        run_until(&mut e, Duration::from_secs(10), |_| all_done(&futures));
        check_exactly_once_in_order(&broker, &futures);
        let live: std::net::SocketAddr = ADDR.parse().expect("addr");
        let history = e.client.transport().connect_history();
        let first_live = history
            .iter()
            .position(|(_, a)| *a == live)
            .expect("the live bootstrap server was connected");
        let before: Vec<_> = history[..first_live].iter().map(|(_, a)| *a).collect();
        assert!(before.len() <= DEAD.len(), "{before:?}");
        for d in DEAD {
            let d: std::net::SocketAddr = d.parse().expect("addr");
            assert!(
                before.iter().filter(|a| **a == d).count() <= 1,
                "{before:?}"
            );
        }
        assert!(
            history[first_live..].iter().all(|(_, a)| *a == live),
            "no dead bootstrap server is tried once the cluster is known: {history:?}"
        );
    }
}
