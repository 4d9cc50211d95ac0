//! The producer against librdkafka's mock cluster (a real Kafka protocol implementation on
//! 127.0.0.1), consumed back with librdkafka's consumer with `check.crcs=true`.
#![cfg(feature = "kafka")]

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use mqnet::client::ClientConfig;
use mqnet::producer::{
    DeliveryFuture, ProduceError, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
use mqnet::protocol::partition_for_key;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Message, Offset, TopicPartitionList};

type Mock = MockCluster<'static, DefaultProducerContext>;

const WAIT: Duration = Duration::from_secs(60);

fn cluster(topic: &str, partitions: i32) -> Mock {
    let _ = env_logger::builder().is_test(true).try_init();
    let c = MockCluster::new(3).expect("mock cluster");
    c.create_topic(topic, partitions, 3).expect("topic");
    c
}

fn config(bootstrap: &str) -> ProducerConfig {
    ProducerConfig::new(bootstrap)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .client(
            ClientConfig::default()
                .reconnect_backoff(Duration::from_millis(20))
                .reconnect_backoff_max(Duration::from_millis(200))
                .request_timeout(Duration::from_secs(5)),
        )
}

/// A consumed record: partition, offset, key, value.
type Consumed = (i32, i64, String, String);

/// Reads every partition of `topic` from the beginning until `expected` records have arrived or
/// the deadline passes; CRCs are checked by librdkafka.
fn consume(bootstrap: &str, topic: &str, partitions: i32, expected: usize) -> Vec<Consumed> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "mqnet-test")
        .set("enable.auto.commit", "false")
        .set("check.crcs", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::with_capacity(expected);
    let deadline = Instant::now() + WAIT;
    while out.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                out.push((m.partition(), m.offset(), key, value));
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    // Anything more than expected would be a duplicate: give it a moment to show up.
    let extra_deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < extra_deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            out.push((m.partition(), m.offset(), key, value));
        }
    }
    out
}

/// Every index `0..n` exactly once, in increasing index order within each partition, on the
/// partition murmur2 gives its key.
fn check_exactly_once_in_order(consumed: &[Consumed], n: usize, partitions: i32) {
    check_exactly_once_in_stream_order(consumed, n, partitions, 1);
}

/// As [`check_exactly_once_in_order`], for indices sent by `streams` threads (thread `t` sent the
/// indices `i` with `i % streams == t`, in increasing order): the order is checked per partition
/// and thread.
fn check_exactly_once_in_stream_order(
    consumed: &[Consumed],
    n: usize,
    partitions: i32,
    streams: usize,
) {
    check_exactly_once(consumed, n, partitions, Some(streams));
}

/// Every index `0..n` exactly once, on the partition murmur2 gives its key; with `order`, in
/// increasing index order per partition and stream (see [`check_exactly_once_in_stream_order`]).
fn check_exactly_once(consumed: &[Consumed], n: usize, partitions: i32, order: Option<usize>) {
    let streams = order.unwrap_or(1);
    let mut seen = vec![0u32; n];
    let mut last: HashMap<(i32, usize), i64> = HashMap::new();
    let mut sorted: Vec<&Consumed> = consumed.iter().collect();
    sorted.sort_by_key(|(p, off, _, _)| (*p, *off));
    for (p, _off, key, value) in sorted {
        let i: usize = key.parse().expect("numeric key");
        assert!(i < n, "unexpected key {key}");
        assert_eq!(value, &format!("value-{i}"), "value of {key}");
        seen[i] += 1;
        assert_eq!(
            *p,
            partition_for_key(key.as_bytes(), partitions),
            "key {key} on the murmur2 partition"
        );
        let prev = last.insert((*p, i % streams), i as i64).unwrap_or(-1);
        assert!(
            order.is_none() || (i as i64) > prev,
            "partition {p}: index {i} after {prev} (send order broken)"
        );
    }
    let missing: Vec<usize> = (0..n).filter(|i| seen[*i] == 0).take(10).collect();
    let dups: Vec<usize> = (0..n).filter(|i| seen[*i] > 1).take(10).collect();
    assert!(missing.is_empty(), "missing records, e.g. {missing:?}");
    assert!(dups.is_empty(), "duplicated records, e.g. {dups:?}");
}

fn record(topic: &str, i: usize) -> ProducerRecord {
    ProducerRecord::new(topic, format!("value-{i}")).key(i.to_string())
}

fn wait_all(futures: Vec<DeliveryFuture>) -> Vec<RecordMetadata> {
    futures
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            f.wait_timeout(WAIT * 2)
                .unwrap_or_else(|| panic!("record {i} never completed"))
                .unwrap_or_else(|e| panic!("record {i} failed: {e}"))
        })
        .collect()
}

#[test]
fn hundred_thousand_keyed_records_arrive_exactly_once_in_order() {
    let topic = "keyed";
    let c = cluster(topic, 4);
    let bootstrap = c.bootstrap_servers();
    let producer = Producer::new(config(&bootstrap)).unwrap();
    let n = 100_000;
    let futures: Vec<DeliveryFuture> = (0..n).map(|i| producer.send(record(topic, i))).collect();
    let metas = wait_all(futures);
    // Offsets increase with send order within each partition.
    let mut last: HashMap<i32, i64> = HashMap::new();
    for (i, m) in metas.iter().enumerate() {
        assert_eq!(m.partition, partition_for_key(i.to_string().as_bytes(), 4));
        let prev = last.insert(m.partition, m.offset).unwrap_or(-1);
        assert!(m.offset > prev, "offsets in send order");
    }
    producer.close(Duration::from_secs(10));
    let consumed = consume(&bootstrap, topic, 4, n);
    check_exactly_once_in_order(&consumed, n, 4);
}

#[test]
fn four_threads_sharing_one_producer_lose_duplicate_and_reorder_nothing() {
    let topic = "threads";
    let threads = 4;
    let c = cluster(topic, 4);
    let bootstrap = c.bootstrap_servers();
    let producer = Producer::new(config(&bootstrap)).unwrap();
    let n = 40_000;
    // Thread t sends the indices t, t + 4, t + 8, ... in that order, all at once, on one producer.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let producer = producer.clone();
                s.spawn(move || {
                    let futures: Vec<DeliveryFuture> = (t..n)
                        .step_by(threads)
                        .map(|i| producer.send(record(topic, i)))
                        .collect();
                    wait_all(futures)
                })
            })
            .collect();
        for h in handles {
            let metas = h.join().expect("sending thread");
            assert_eq!(metas.len(), n / threads);
        }
    });
    producer.close(Duration::from_secs(10));
    let consumed = consume(&bootstrap, topic, 4, n);
    check_exactly_once_in_stream_order(&consumed, n, 4, threads);
}

#[test]
fn a_broker_down_and_up_while_producing_loses_and_duplicates_nothing() {
    let topic = "bounce";
    let c = cluster(topic, 4);
    let bootstrap = c.bootstrap_servers();
    let producer = Producer::new(config(&bootstrap)).unwrap();
    // Produce in rounds of 500 records; take broker 1 down after 10 rounds, keep producing through
    // a two-second outage, bring it back, and produce 10 more rounds. Every loop is bounded.
    let mut futures: Vec<DeliveryFuture> = Vec::new();
    let mut down_at: Option<Instant> = None;
    let mut up_round: Option<usize> = None;
    let test_deadline = Instant::now() + WAIT;
    for round in 0..1_000 {
        assert!(Instant::now() < test_deadline, "outage test ran too long");
        for _ in 0..500 {
            let i = futures.len();
            futures.push(producer.send(record(topic, i)));
        }
        // Pace the producer: a bounded wait on the newest record.
        if let Some(last) = futures.last() {
            let _ = last.wait_timeout(Duration::from_millis(100));
        }
        if round == 10 {
            // Quiesce first: the mock keeps no idempotent producer state (it neither dedupes nor
            // orders by sequence), so a request it appended whose answer the outage cut off would
            // come back as a duplicate on retry, which a real broker would drop. With nothing in
            // flight at the cut, every record produced during and after the outage still goes
            // through failed connections, retries and the broker's return.
            for (i, f) in futures.iter().enumerate() {
                assert!(
                    f.wait_timeout(WAIT).is_some(),
                    "record {i} not answered before the outage"
                );
            }
            c.broker_down(1).unwrap();
            down_at = Some(Instant::now());
        }
        if up_round.is_none() && down_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(2)) {
            c.broker_up(1).unwrap();
            up_round = Some(round);
        }
        if up_round.is_some_and(|r| round >= r + 10) {
            break;
        }
    }
    let up_round = up_round.expect("the broker came back");
    assert!(up_round > 12, "records were produced during the outage");
    let n = futures.len();
    wait_all(futures);
    producer.close(Duration::from_secs(10));
    let consumed = consume(&bootstrap, topic, 4, n);
    check_exactly_once_in_order(&consumed, n, 4);
}

#[test]
fn not_leader_errors_then_a_leader_move_are_retried_and_delivered() {
    let topic = "moved";
    let c = cluster(topic, 4);
    let bootstrap = c.bootstrap_servers();
    // One request in flight per connection: the mock does not check idempotent sequences, so
    // with several batches of a partition in flight it appends the ones behind a refused batch
    // (a real broker answers them OUT_OF_ORDER_SEQUENCE_NUMBER, see tests/producer_fake_broker.rs)
    // and only one in flight keeps its log in send order.
    let cfg = config(&bootstrap);
    let cfg = ProducerConfig {
        client: cfg.client.clone().max_in_flight(1),
        ..cfg
    };
    let producer = Producer::new(cfg).unwrap();
    // Warm up: metadata and connections are in place.
    wait_all(vec![producer.send(record(topic, 0))]);
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 6],
    );
    for p in 0..4 {
        c.partition_leader(topic, p, Some((p + 1) % 3 + 1)).unwrap();
    }
    let n = 5_000;
    let futures: Vec<DeliveryFuture> = (1..n).map(|i| producer.send(record(topic, i))).collect();
    wait_all(futures);
    producer.close(Duration::from_secs(10));
    let consumed = consume(&bootstrap, topic, 4, n);
    check_exactly_once_in_order(&consumed, n, 4);
}

#[test]
fn dead_brokers_fail_futures_at_the_delivery_timeout() {
    // A port that is bound but never listens: every connect is refused.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port();
    // And a listener that accepts nothing (its backlog answers the handshake, then silence).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    for bootstrap in [format!("127.0.0.1:{port}"), silent_addr.to_string()] {
        let timeout = Duration::from_millis(1500);
        let cfg = config(&bootstrap).delivery_timeout(timeout);
        let cfg = ProducerConfig {
            client: cfg
                .client
                .clone()
                .request_timeout(Duration::from_millis(500))
                .connection_setup_timeout(Duration::from_millis(500)),
            ..cfg
        };
        let producer = Producer::new(cfg).unwrap();
        let start = Instant::now();
        let futures: Vec<DeliveryFuture> = (0..10)
            .map(|i| producer.send(record("nowhere", i)))
            .collect();
        for f in futures {
            let r = f
                .wait_timeout(Duration::from_secs(30))
                .expect("completes; nothing hangs");
            assert!(
                matches!(r, Err(ProduceError::DeliveryTimeout { .. })),
                "{bootstrap}: {r:?}"
            );
        }
        let took = start.elapsed();
        assert!(took >= timeout, "{bootstrap}: failed early after {took:?}");
        assert!(
            took < timeout + Duration::from_secs(10),
            "{bootstrap}: took {took:?}"
        );
        let t = Instant::now();
        producer.close(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    drop(silent);
}

/// Sends `1..n` (record 0 warmed up), injecting retriable errors on the next Produce requests at
/// a quarter of the way and NOT_LEADER errors plus a leader move half way.
fn send_through_faults(c: &Mock, producer: &Producer, topic: &str, n: usize) {
    wait_all(vec![producer.send(record(topic, 0))]);
    let mut futures = Vec::with_capacity(n);
    for i in 1..n {
        futures.push(producer.send(record(topic, i)));
        if i == n / 4 {
            c.request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
            );
        }
        if i == n / 2 {
            c.request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
            );
            for p in 0..4 {
                c.partition_leader(topic, p, Some((p + 2) % 3 + 1)).unwrap();
            }
        }
    }
    wait_all(futures);
}

/// At a 5 ms broker round trip, with small batches so that up to five requests per connection and
/// several batches of a partition are in flight (idempotent, the default): every record exactly
/// once and in order per partition, consumed back with CRC checks.
#[test]
fn five_in_flight_at_a_5_ms_round_trip_deliver_exactly_once_in_order() {
    let topic = "pipelined";
    let c = cluster(topic, 4);
    for b in 1..=3 {
        c.broker_round_trip_time(b, Duration::from_millis(5))
            .unwrap();
    }
    let bootstrap = c.bootstrap_servers();
    let producer = Producer::new(config(&bootstrap).batch_size(2048)).unwrap();
    let n = 20_000;
    let futures: Vec<DeliveryFuture> = (0..n).map(|i| producer.send(record(topic, i))).collect();
    wait_all(futures);
    producer.close(Duration::from_secs(10));
    let consumed = consume(&bootstrap, topic, 4, n);
    check_exactly_once_in_order(&consumed, n, 4);
}

/// The same through injected retriable errors and a leader move: every record exactly once,
/// consumed back with CRC checks. Order is not checked here: the mock does not check idempotent
/// sequences, so it appends the batches in flight behind a refused one, which a real broker
/// refuses with OUT_OF_ORDER_SEQUENCE_NUMBER (the resend order against a sequence-checking broker
/// is tested in tests/producer_fake_broker.rs).
#[test]
fn five_in_flight_at_a_5_ms_round_trip_through_errors_deliver_exactly_once() {
    let topic = "pipelined-faults";
    let c = cluster(topic, 4);
    for b in 1..=3 {
        c.broker_round_trip_time(b, Duration::from_millis(5))
            .unwrap();
    }
    let bootstrap = c.bootstrap_servers();
    let producer = Producer::new(config(&bootstrap).batch_size(2048)).unwrap();
    let n = 20_000;
    send_through_faults(&c, &producer, topic, n);
    producer.close(Duration::from_secs(10));
    let consumed = consume(&bootstrap, topic, 4, n);
    check_exactly_once(&consumed, n, 4, None);
}

/// Without idempotence, `max.in.flight.requests.per.connection=1` keeps every partition strictly
/// in send order through the same faults (the injected errors append nothing, so nothing is
/// duplicated either).
#[test]
fn one_in_flight_without_idempotence_stays_strictly_ordered_through_errors() {
    let topic = "strict";
    let c = cluster(topic, 4);
    for b in 1..=3 {
        c.broker_round_trip_time(b, Duration::from_millis(2))
            .unwrap();
    }
    let bootstrap = c.bootstrap_servers();
    let cfg = config(&bootstrap)
        .batch_size(2048)
        .acks(mqnet::producer::Acks::Leader);
    let cfg = ProducerConfig {
        client: cfg.client.clone().max_in_flight(1),
        ..cfg
    };
    let producer = Producer::new(cfg).unwrap();
    let n = 10_000;
    send_through_faults(&c, &producer, topic, n);
    producer.close(Duration::from_secs(10));
    let consumed = consume(&bootstrap, topic, 4, n);
    check_exactly_once_in_order(&consumed, n, 4);
}
