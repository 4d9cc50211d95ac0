//! Compressed record batches (`compression.type` gzip, snappy, lz4, zstd) between mqnet and
//! librdkafka, every codec:
//! - mqnet's producer to the embedded broker, read back by kcat with `check.crcs=true`; the
//!   batches are served as written (a raw Fetch shows the producer's codec);
//! - mqnet's producer to librdkafka's mock cluster, read back by kcat (librdkafka decodes mqnet's
//!   framing);
//! - librdkafka's producer to the mock cluster, its batches fetched raw and put through the
//!   broker's strict validation (mqnet decodes librdkafka's framing);
//! - kcat producing zstd to the embedded broker and reading it back. librdkafka 2.0.2 sends gzip,
//!   snappy and lz4 only to a broker that advertises Produce v0 (its capability check asks for
//!   Produce in 0..=0 for them); the embedded broker, like Kafka 4.0, serves Produce from v3, so
//!   kcat sends those three uncompressed to it, and the mock-cluster test above covers them.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{check_exactly_once_in_order, kcat, Raw, WAIT};
use mqnet::client::ClientConfig;
use mqnet::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use mqnet::protocol::Compression;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};

const CODECS: [Compression; 4] = [
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

fn mqnet_config(bootstrap: &str, codec: Compression) -> ProducerConfig {
    ProducerConfig::new(bootstrap)
        .compression(codec, None)
        .linger_ms(20)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .client(
            ClientConfig::default()
                .reconnect_backoff(Duration::from_millis(20))
                .reconnect_backoff_max(Duration::from_millis(200))
                .request_timeout(Duration::from_secs(5)),
        )
}

/// The attributes of the first batch of `topic`/`partition` at offset 0, by a raw Fetch v4.
fn first_batch_attributes(bootstrap: &str, topic: &str, partition: i32) -> i16 {
    let records = fetch_records(bootstrap, topic, partition);
    i16::from_be_bytes([records[21], records[22]])
}

/// The record batches of `topic`/`partition` from offset 0 (at most 1 MiB), by a raw Fetch v4.
fn fetch_records(bootstrap: &str, topic: &str, partition: i32) -> Vec<u8> {
    fetch_records_at(bootstrap, topic, partition, 0)
}

/// As [`fetch_records`], from `offset`.
fn fetch_records_at(bootstrap: &str, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut raw = Raw::connect(bootstrap);
    let resp = raw
        .call(&common::kafka_protocol_frame::fetch(
            topic, partition, offset, 100, 1,
        ))
        .expect("fetch response");
    // correlation id, throttle, topics [1], name, partitions [1], partition, error, high
    // watermark, last stable offset, aborted transactions (null or empty), records.
    let mut at = 4 + 4 + 4 + 2 + topic.len() + 4 + 4;
    let error = i16::from_be_bytes([resp[at], resp[at + 1]]);
    assert_eq!(error, 0, "fetch error");
    at += 2 + 8 + 8;
    let aborted = i32::from_be_bytes(resp[at..at + 4].try_into().unwrap());
    at += 4 + aborted.max(0) as usize * 16;
    let len = i32::from_be_bytes(resp[at..at + 4].try_into().unwrap());
    assert!(len > 61, "records of {len} bytes");
    at += 4;
    resp[at..at + len as usize].to_vec()
}

/// Splits fetched records into whole batches (a partial batch at the end is dropped, as a
/// consumer does).
fn batches(records: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = records;
    while rest.len() >= 12 {
        let len = i32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize + 12;
        if len > rest.len() {
            break;
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
    out
}

type Mock = MockCluster<'static, DefaultProducerContext>;

fn mock(topic: &str, partitions: i32) -> Mock {
    common::init_log();
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic(topic, partitions, 1).expect("topic");
    c
}

#[test]
fn mqnet_producer_writes_every_codec_to_the_mock_cluster_and_kcat_reads_it_back() {
    let n = 3_000;
    for codec in CODECS {
        let topic = format!("mqnet-mock-{codec}");
        let cluster = mock(&topic, 2);
        let bootstrap = cluster.bootstrap_servers();
        let producer = Producer::new(mqnet_config(&bootstrap, codec)).expect("producer");
        let futures: Vec<DeliveryFuture> = (0..n)
            .map(|i| {
                producer.send(ProducerRecord::new(&topic, format!("value-{i}")).key(i.to_string()))
            })
            .collect();
        for (i, f) in futures.into_iter().enumerate() {
            f.wait_timeout(WAIT)
                .unwrap_or_else(|| panic!("{codec}: record {i} never completed"))
                .unwrap_or_else(|e| panic!("{codec}: record {i} failed: {e}"));
        }
        producer.close(Duration::from_secs(10));
        for p in 0..2 {
            let records = fetch_records(&bootstrap, &topic, p);
            for b in batches(&records) {
                assert_eq!(
                    i16::from_be_bytes([b[21], b[22]]) & 7,
                    codec.id(),
                    "{codec}"
                );
            }
        }
        check_exactly_once_in_order(&kcat(&bootstrap, &topic), n, 2, true);
    }
}

#[test]
fn librdkafka_batches_of_every_codec_pass_the_brokers_strict_validation() {
    let n = 2_000;
    for codec in CODECS {
        let topic = format!("rdkafka-{codec}");
        let cluster = mock(&topic, 1);
        let bootstrap = cluster.bootstrap_servers();
        let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("compression.codec", codec.name())
            .set("linger.ms", "20")
            .create()
            .expect("rdkafka producer");
        for i in 0..n {
            let key = i.to_string();
            let value = format!("value-{i}");
            producer
                .send(
                    BaseRecord::to(&topic)
                        .key(&key)
                        .payload(&value)
                        .partition(0),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue");
        }
        producer.flush(WAIT).expect("flush");
        // The mock may answer a fetch with fewer batches than it holds: fetch on from the next
        // offset (bounded) until every record was seen.
        let mut count = 0;
        let mut compressed = 0;
        let mut offset = 0i64;
        for _ in 0..n {
            if count >= n {
                break;
            }
            let records = fetch_records_at(&bootstrap, &topic, 0, offset);
            let all = batches(&records);
            assert!(
                !all.is_empty(),
                "{codec}: no batch fetched at offset {offset}"
            );
            for b in all {
                // librdkafka sends a batch uncompressed when compressing would not make it smaller
                // (a batch of one or two small records): either is valid, and both must validate.
                let attr = i16::from_be_bytes([b[21], b[22]]) & 7;
                assert!(
                    attr == codec.id() || attr == 0,
                    "{codec}: codec bits {attr}"
                );
                compressed += usize::from(attr == codec.id());
                let h = mqnet::broker::batch::validate(b, 1 << 20)
                    .unwrap_or_else(|r| panic!("{codec}: librdkafka's batch refused: {}", r.why));
                let base = i64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                if base < offset {
                    continue;
                }
                count += h.record_count as usize;
                offset = base + i64::from(h.record_count);
            }
        }
        assert_eq!(count, n, "{codec}: records in the fetched batches");
        assert!(compressed > 0, "{codec}: no batch was compressed");
    }
}

#[test]
fn mqnet_producer_writes_every_codec_and_kcat_reads_it_back_with_crc_checks() {
    let n = 3_000;
    for codec in CODECS {
        let topic = format!("mqnet-{codec}");
        let broker = common::broker(1, &topic, 2);
        let bootstrap = broker.bootstrap_servers();
        let producer = Producer::new(mqnet_config(&bootstrap, codec)).expect("producer");
        let futures: Vec<DeliveryFuture> = (0..n)
            .map(|i| {
                producer.send(ProducerRecord::new(&topic, format!("value-{i}")).key(i.to_string()))
            })
            .collect();
        for (i, f) in futures.into_iter().enumerate() {
            f.wait_timeout(WAIT)
                .unwrap_or_else(|| panic!("{codec}: record {i} never completed"))
                .unwrap_or_else(|e| panic!("{codec}: record {i} failed: {e}"));
        }
        producer.close(Duration::from_secs(10));
        for p in 0..2 {
            let attributes = first_batch_attributes(&bootstrap, &topic, p);
            assert_eq!(
                attributes & 7,
                codec.id(),
                "{codec}: partition {p} served as"
            );
        }
        check_exactly_once_in_order(&kcat(&bootstrap, &topic), n, 2, true);
    }
}

#[test]
fn kcat_produces_zstd_and_the_broker_validates_and_serves_it() {
    let n = 2_000;
    for codec in [Compression::Zstd] {
        let topic = format!("kcat-{codec}");
        let broker = common::broker(1, &topic, 2);
        let bootstrap = broker.bootstrap_servers();
        let mut child = Command::new("kcat")
            .args([
                "-P",
                "-b",
                &bootstrap,
                "-t",
                &topic,
                "-K",
                ":",
                "-X",
                "acks=all",
                "-X",
                &format!("compression.codec={codec}"),
                "-X",
                "linger.ms=20",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("kcat");
        {
            let mut stdin = child.stdin.take().unwrap();
            for i in 0..n {
                writeln!(stdin, "{i}:value-{i}").unwrap();
            }
        }
        assert!(child.wait().expect("kcat -P").success(), "{codec}");
        let total: i64 = (0..2)
            .map(|p| broker.high_watermark(&topic, p).unwrap())
            .sum();
        assert_eq!(total, n as i64, "{codec}: records in the logs");
        for p in (0..2).filter(|&p| broker.high_watermark(&topic, p).unwrap() > 0) {
            let attributes = first_batch_attributes(&bootstrap, &topic, p);
            assert_eq!(
                attributes & 7,
                codec.id(),
                "{codec}: kcat's batch served as"
            );
        }
        check_exactly_once_in_order(&kcat(&bootstrap, &topic), n, 2, false);
    }
}
