//! Helpers shared by the broker's integration tests: a blocking raw Kafka client for hand-built
//! requests, kcat, librdkafka's consumer, and the exactly-once check.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqnet::broker::{Broker, BrokerConfig};
use mqnet::protocol::{partition_for_key, RecordBatchWriter};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Generous bound for real-socket waits on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// An embedded broker on a fresh temp dir with `nodes` nodes and `topic` of `partitions`.
pub fn broker(nodes: usize, topic: &str, partitions: i32) -> Broker {
    init_log();
    let b = Broker::start(BrokerConfig {
        nodes,
        ..BrokerConfig::default()
    })
    .expect("broker");
    b.create_topic(topic, partitions).expect("topic");
    b
}

/// A blocking connection for hand-built requests.
pub struct Raw {
    s: TcpStream,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { s }
    }

    /// Sends one request frame (without its length prefix).
    pub fn send(&mut self, frame: &[u8]) {
        let mut out = Vec::with_capacity(frame.len() + 4);
        out.extend_from_slice(&(frame.len() as i32).to_be_bytes());
        out.extend_from_slice(frame);
        self.s.write_all(&out).expect("write");
    }

    /// Reads one response frame; `None` when the broker closed the connection.
    pub fn recv(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let n = i32::from_be_bytes(len);
        assert!((0..=64 << 20).contains(&n), "response length {n}");
        let mut buf = vec![0u8; n as usize];
        self.s.read_exact(&mut buf).ok()?;
        Some(Bytes::from(buf))
    }

    pub fn call(&mut self, frame: &[u8]) -> Option<Bytes> {
        self.send(frame);
        self.recv()
    }
}

/// A record batch of `n` records `key-i`/`value-i` (uncompressed).
pub fn batch(n: usize, pid: i64, epoch: i16, seq: i32) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let ts = 1_700_000_000_000;
    let mut w = RecordBatchWriter::begin(&mut buf, ts);
    for i in 0..n {
        let k = format!("key-{i}");
        let v = format!("value-{i}");
        w.append(
            &mut buf,
            ts + i as i64,
            Some(k.as_bytes()),
            Some(v.as_bytes()),
            &[],
        );
    }
    w.finish(&mut buf, pid, epoch, seq);
    buf.to_vec()
}

/// A record batch of records `start..start + n`, keyed `i` with value `value-i`.
pub fn numbered_batch(start: usize, n: usize, pid: i64, epoch: i16, seq: i32) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let ts = 1_700_000_000_000;
    let mut w = RecordBatchWriter::begin(&mut buf, ts);
    for i in start..start + n {
        let k = i.to_string();
        let v = format!("value-{i}");
        w.append(&mut buf, ts, Some(k.as_bytes()), Some(v.as_bytes()), &[]);
    }
    w.finish(&mut buf, pid, epoch, seq);
    buf.to_vec()
}

/// A Produce v7 request (acks=-1) of one batch for `topic`/`partition`.
pub fn produce_frame(corr: i32, topic: &str, partition: i32, batch: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    let parts = [(partition, batch)];
    let topics = [(topic, &parts[..])];
    let header = mqnet::protocol::ProduceHeader {
        request: mqnet::protocol::RequestHeader {
            api_version: 7,
            correlation_id: corr,
            client_id: "raw",
        },
        acks: -1,
        timeout_ms: 10_000,
    };
    mqnet::protocol::write_produce_request_unprefixed(&mut buf, &header, &topics);
    buf.freeze()
}

/// Produces one batch and returns (error code, base offset).
pub fn produce(raw: &mut Raw, topic: &str, partition: i32, batch: &[u8]) -> (i16, i64) {
    let resp = raw
        .call(&produce_frame(1, topic, partition, batch))
        .expect("produce response");
    let r = mqnet::protocol::decode_produce_response(7, &resp).expect("decode");
    let p = &r.topics[0].1[0];
    (p.error.map_or(0, |e| e.code()), p.base_offset)
}

/// InitProducerId v4 (bumping `current` when it is not (-1, -1)): (error code, id, epoch).
pub fn init_producer_id(raw: &mut Raw, current: (i64, i16)) -> (i16, i64, i16) {
    use kafka_protocol_frame as k;
    let frame = k::init_producer_id(current);
    let resp = raw.call(&frame).expect("init producer id response");
    let r = mqnet::protocol::decode_init_producer_id_response(4, &resp).expect("decode");
    (
        r.error.map_or(0, |e| e.code()),
        r.producer_id,
        r.producer_epoch,
    )
}

/// Hand-encoded control requests the tests need (no kafka-protocol dependency here).
pub mod kafka_protocol_frame {
    fn header(out: &mut Vec<u8>, api: i16, version: i16, corr: i32, flexible: bool) {
        out.extend_from_slice(&api.to_be_bytes());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&corr.to_be_bytes());
        out.extend_from_slice(&3i16.to_be_bytes());
        out.extend_from_slice(b"raw");
        if flexible {
            out.push(0);
        }
    }

    /// InitProducerId v4 (flexible): null transactional id, timeout, producer id and epoch.
    pub fn init_producer_id(current: (i64, i16)) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, 22, 4, 2, true);
        out.push(0); // null compact string
        out.extend_from_slice(&60_000i32.to_be_bytes());
        out.extend_from_slice(&current.0.to_be_bytes());
        out.extend_from_slice(&current.1.to_be_bytes());
        out.push(0); // tagged fields
        out
    }

    /// Fetch v4: one partition from `offset`.
    pub fn fetch(
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        min_bytes: i32,
    ) -> Vec<u8> {
        fetch_many(
            topic,
            &[(partition, offset, 1 << 20)],
            1 << 20,
            max_wait_ms,
            min_bytes,
        )
    }

    /// Fetch v4 of several partitions `(partition, offset, partition max bytes)`.
    pub fn fetch_many(
        topic: &str,
        parts: &[(i32, i64, i32)],
        max_bytes: i32,
        max_wait_ms: i32,
        min_bytes: i32,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, 1, 4, 3, false);
        out.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
        out.extend_from_slice(&max_wait_ms.to_be_bytes());
        out.extend_from_slice(&min_bytes.to_be_bytes());
        out.extend_from_slice(&max_bytes.to_be_bytes());
        out.push(0); // isolation level
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&(parts.len() as i32).to_be_bytes());
        for (partition, offset, pmax) in parts {
            out.extend_from_slice(&partition.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&pmax.to_be_bytes());
        }
        out
    }

    /// ListOffsets v1: one partition at `timestamp` (-2 earliest, -1 latest).
    pub fn list_offsets(topic: &str, partition: i32, timestamp: i64) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, 2, 1, 4, false);
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&timestamp.to_be_bytes());
        out
    }

    /// A request header alone for `api`/`version` with an empty body.
    pub fn bare(api: i16, version: i16) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, api, version, 9, false);
        out
    }
}

/// Runs kcat over every partition of `topic` from the beginning to the end, with CRC checks;
/// returns (partition, offset, key, value).
pub fn kcat(bootstrap: &str, topic: &str) -> Vec<(i32, i64, String, String)> {
    kcat_with(bootstrap, topic, &[])
}

/// [`kcat`] with `extra` arguments (security settings: `-X security.protocol=...`, ...).
pub fn kcat_with(
    bootstrap: &str,
    topic: &str,
    extra: &[String],
) -> Vec<(i32, i64, String, String)> {
    let out = Command::new("kcat")
        .args([
            "-C",
            "-b",
            bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-X",
            "check.crcs=true",
            "-f",
            "%p %o %k %s\\n",
        ])
        .args(extra)
        .output()
        .expect("kcat (apt-get install kcat)");
    assert!(
        out.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut w = l.splitn(4, ' ');
            let p = w.next().unwrap().parse().unwrap();
            let o = w.next().unwrap().parse().unwrap();
            let k = w.next().unwrap_or_default().to_owned();
            let v = w.next().unwrap_or_default().to_owned();
            (p, o, k, v)
        })
        .collect()
}

/// librdkafka's consumer over every partition of `topic` from the beginning, CRCs checked, until
/// `expected` records arrived (and a moment more, so a duplicate would show), or `WAIT` passed.
pub fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<(i32, i64, String, String)> {
    consume_until(
        bootstrap,
        topic,
        partitions,
        expected,
        Instant::now() + WAIT,
    )
}

/// [`consume`] with the caller's deadline; returns what arrived by then. Returns
/// (partition, offset, key, value).
pub fn consume_until(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    deadline: Instant,
) -> Vec<(i32, i64, String, String)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "mqnet-broker-test")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("check.crcs", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::with_capacity(expected);
    let mut extra: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || extra.is_some_and(|e| now > e) {
            break;
        }
        if out.len() >= expected && extra.is_none() {
            extra = Some(now + Duration::from_millis(500));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    out
}

/// Every index `0..n` exactly once as key `i` / value `value-i`, on its murmur2 partition, in
/// increasing order within each partition.
pub fn check_exactly_once_in_order(
    consumed: &[(i32, i64, String, String)],
    n: usize,
    partitions: i32,
    murmur: bool,
) {
    let mut seen = vec![0u32; n];
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut sorted: Vec<_> = consumed.iter().collect();
    sorted.sort_by_key(|(p, o, _, _)| (*p, *o));
    for (p, _, key, value) in sorted {
        let i: usize = key.parse().unwrap_or_else(|_| panic!("key {key:?}"));
        assert!(i < n, "unexpected key {key}");
        assert_eq!(value, &format!("value-{i}"));
        if murmur {
            assert_eq!(
                *p,
                partition_for_key(key.as_bytes(), partitions),
                "key {key}"
            );
        }
        seen[i] += 1;
        let prev = last.insert(*p, i as i64).unwrap_or(-1);
        assert!(i as i64 > prev, "partition {p}: {i} after {prev}");
    }
    let missing: Vec<usize> = (0..n).filter(|i| seen[*i] == 0).take(10).collect();
    let dups: Vec<usize> = (0..n).filter(|i| seen[*i] > 1).take(10).collect();
    assert!(missing.is_empty(), "missing, e.g. {missing:?}");
    assert!(dups.is_empty(), "duplicated, e.g. {dups:?}");
}
