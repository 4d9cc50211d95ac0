//! The producer against the scripted fake Kafka broker of `mqnet-test-support` on 127.0.0.1.
//!
//! librdkafka's mock cluster (tests/producer_mock.rs) checks neither CRCs nor idempotent sequence
//! numbers; the fake broker does (see `mqnet_test_support::fake_broker`). Anything it finds wrong
//! is recorded as a violation; every test ends by asserting there were none.
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

use mqnet_test_support::fake_broker::{
    self, api, decode_produce_frame, Answer, BrokerConfig, DropMode, FakeBroker, State,
    CLUSTER_AUTHORIZATION_FAILED, COORDINATOR_NOT_AVAILABLE, DUPLICATE_SEQUENCE_NUMBER,
    MESSAGE_TOO_LARGE, NOT_ENOUGH_REPLICAS, NOT_LEADER_OR_FOLLOWER, OUT_OF_ORDER_SEQUENCE_NUMBER,
};

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
        let e = fake_broker::decode_batches(TOPIC, 0, &Bytes::from(bad)).unwrap_err();
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
    let dup_calls: Vec<&fake_broker::ProduceCall> = st
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
