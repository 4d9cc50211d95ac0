//! `mqnet-bench produce`: the Kafka producer workload.
//!
//! N records (key = the record's index in decimal, so a consumer can check completeness; value =
//! S bytes) to one topic, through mqnet's [`Producer`] and through librdkafka's `BaseProducer`
//! (the `rdkafka` crate, cargo feature `rdkafka-peer`), one after another, against the same
//! cluster in the same run: the one at `--bootstrap-servers`, or an in-process librdkafka mock
//! cluster with 3 brokers, where each implementation gets a fresh topic of its own.
//!
//! Both peers get the same settings: `acks`, `linger.ms`, `batch.size`, `enable.idempotence`
//! (true only with `acks=all`, Kafka's rule), the same bound on the bytes of records a producer
//! holds (`--buffer-memory`, default Kafka's 32 MiB: mqnet's `buffer.memory`, librdkafka's
//! `queue.buffering.max.kbytes`; librdkafka's `queue.buffering.max.messages` is set large enough
//! for the run so that only the byte bound applies), and the Java-compatible murmur2 partitioner
//! (librdkafka: `partitioner=murmur2_random`), so every key lands on the same partition with
//! both. Everything else is each library's default.
//!
//! Measurement, the same for both:
//! - record 0 is sent alone and awaited first: it makes the connection and fetches metadata;
//! - the clock runs from the send of record 1 to the delivery of the last record, and records/s
//!   counts the records delivered without error in that time;
//! - delivery latency is send → delivery callback, per record, in an HDR histogram.
//!
//! All of it runs in this process (the mock cluster too), one implementation after the other.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use mqnet::producer::{Acks, DeliveryResult, Producer, ProducerConfig, ProducerRecord};

use crate::report;
use crate::sys;

/// Brokers of the in-process mock cluster.
#[cfg(feature = "rdkafka-peer")]
pub const MOCK_BROKERS: i32 = 3;
/// Replication factor of the mock's topics: the mock does not replicate data, so 1 costs least
/// and changes nothing for `acks=1`.
#[cfg(feature = "rdkafka-peer")]
pub const MOCK_REPLICATION: i32 = 1;
/// How long record 0 (connection, metadata) may take.
const WARMUP_LIMIT: Duration = Duration::from_secs(30);
/// librdkafka: `poll` after this many sends (delivery callbacks are served in `poll`).
#[cfg(feature = "rdkafka-peer")]
const RDKAFKA_POLL_EVERY: u64 = 1024;

/// `--acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcksArg {
    /// `acks=0`.
    Zero,
    /// `acks=1`.
    One,
    /// `acks=all`.
    All,
}

impl AcksArg {
    /// The value as Kafka's configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            AcksArg::Zero => "0",
            AcksArg::One => "1",
            AcksArg::All => "all",
        }
    }

    fn mqnet(self) -> Acks {
        match self {
            AcksArg::Zero => Acks::None,
            AcksArg::One => Acks::Leader,
            AcksArg::All => Acks::All,
        }
    }

    /// `enable.idempotence` for both peers: Kafka allows it only with `acks=all`, and it is the
    /// default there.
    fn idempotence(self) -> bool {
        self == AcksArg::All
    }
}

fn parse_acks(s: &str) -> Result<AcksArg, String> {
    match s.trim() {
        "0" => Ok(AcksArg::Zero),
        "1" => Ok(AcksArg::One),
        "all" | "-1" => Ok(AcksArg::All),
        other => Err(format!("{other:?}: expected 0, 1 or all")),
    }
}

/// An implementation of the producer workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceImpl {
    /// `mqnet::producer::Producer`.
    Mqnet,
    /// librdkafka's `BaseProducer` through the `rdkafka` crate.
    Rdkafka,
}

impl ProduceImpl {
    /// Its name in the table and the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            ProduceImpl::Mqnet => "mqnet",
            ProduceImpl::Rdkafka => "rdkafka",
        }
    }
}

/// `--peer` of `produce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProducePeer {
    /// mqnet's producer only.
    Mqnet,
    /// librdkafka's BaseProducer only (needs the `rdkafka-peer` feature).
    Rdkafka,
    /// Both, librdkafka first.
    All,
}

impl ProducePeer {
    /// The implementations to run, in run order.
    ///
    /// # Errors
    /// When the librdkafka peer is asked for by name and this build lacks it.
    pub fn impls(self) -> Result<Vec<ProduceImpl>, String> {
        match self {
            ProducePeer::Mqnet => Ok(vec![ProduceImpl::Mqnet]),
            ProducePeer::Rdkafka if RDKAFKA_PEER => Ok(vec![ProduceImpl::Rdkafka]),
            ProducePeer::Rdkafka => Err(NO_PEER.into()),
            ProducePeer::All if RDKAFKA_PEER => Ok(vec![ProduceImpl::Rdkafka, ProduceImpl::Mqnet]),
            ProducePeer::All => Ok(vec![ProduceImpl::Mqnet]),
        }
    }
}

/// Whether this build has the librdkafka peer (and the mock cluster).
pub const RDKAFKA_PEER: bool = cfg!(feature = "rdkafka-peer");
const NO_PEER: &str = "this mqnet-bench was built without the `rdkafka-peer` feature \
    (librdkafka peer and mock cluster); rebuild with default features, or pass \
    --bootstrap-servers and --peer mqnet";

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Records to produce (per implementation); record i has key "i" (decimal).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// acks: 0, 1 or all (enable.idempotence is on only with all, for both peers).
    #[arg(long, value_parser = parse_acks, default_value = "1")]
    pub acks: AcksArg,
    /// linger.ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// batch.size in bytes.
    #[arg(long, default_value_t = 16_384)]
    pub batch_size: usize,
    /// Topic. With the mock cluster each implementation gets a fresh topic TOPIC-IMPL.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the mock cluster's topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Bytes of records a producer may hold, for both peers: mqnet's buffer.memory and
    /// librdkafka's queue.buffering.max.kbytes (÷ 1024; its queue.buffering.max.messages is set
    /// large enough for the run, so only this bound applies). Default: Kafka's buffer.memory.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER_MEMORY)]
    pub buffer_memory: usize,
    /// A Kafka cluster to produce to (the topic must exist or be auto-created); without it, an
    /// in-process librdkafka mock cluster with 3 brokers.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub bootstrap_servers: Option<String>,
    /// Print one JSON line per run (impl, records, size, acks, linger_ms, batch_size,
    /// records_per_s, mbps, p50_us, p99_us, errors, ...) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Implementations to run.
    #[arg(long, value_enum, default_value_t = ProducePeer::All)]
    pub peer: ProducePeer,
    /// The cluster when --bootstrap-servers is not given: librdkafka's mock, or mqnet's strict
    /// broker in-process (see produce_broker.rs).
    #[arg(long, value_enum, default_value_t = crate::produce_broker::BrokerKind::Mock)]
    pub broker: crate::produce_broker::BrokerKind,
    /// Response delay of every broker of the in-process mock cluster, in milliseconds
    /// (`rd_kafka_mock_broker_set_rtt`): a real cluster's round trip. Both peers produce to the
    /// same cluster. Only with the mock.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub broker_rtt_ms: u64,
    /// `max.in.flight.requests.per.connection` for mqnet and `max.in.flight` for librdkafka (the
    /// same value for both); default: each one's own default (5, and librdkafka's 1,000,000).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// compression.type for both producers: none, gzip, snappy, lz4 or zstd.
    #[arg(long, value_name = "TYPE", value_parser = parse_compression, default_value = "none")]
    pub compression_type: mqnet::protocol::Compression,
}

fn parse_compression(s: &str) -> Result<mqnet::protocol::Compression, String> {
    mqnet::protocol::Compression::from_name(s)
        .ok_or_else(|| format!("{s:?}: expected none, gzip, snappy, lz4 or zstd"))
}

/// Kafka's default `buffer.memory` (32 MiB).
pub const DEFAULT_BUFFER_MEMORY: usize = 32 * 1024 * 1024;

/// What one produce run does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Records, including the warm-up record 0.
    pub records: u64,
    /// Value size.
    pub size: usize,
    /// acks.
    pub acks: AcksArg,
    /// linger.ms.
    pub linger_ms: u64,
    /// batch.size.
    pub batch_size: usize,
    /// Partitions of the mock's topics.
    pub partitions: i32,
    /// buffer.memory / queue.buffering.max.kbytes × 1024.
    pub buffer_memory: usize,
    /// The mock brokers' response delay (ms).
    pub broker_rtt_ms: u64,
    /// Requests in flight per connection for both peers (`None`: each one's default).
    pub max_in_flight: Option<usize>,
    /// compression.type of both peers.
    pub compression: mqnet::protocol::Compression,
}

impl Settings {
    /// The settings of `produce` with its defaults (the default matrix's produce row).
    pub fn target() -> Self {
        Settings {
            records: 1_000_000,
            size: 100,
            acks: AcksArg::One,
            linger_ms: 5,
            batch_size: 16_384,
            partitions: 4,
            buffer_memory: DEFAULT_BUFFER_MEMORY,
            broker_rtt_ms: 0,
            max_in_flight: None,
            compression: mqnet::protocol::Compression::None,
        }
    }

    fn from_args(a: &ProduceArgs) -> Result<Self, String> {
        if a.records < 2 {
            return Err("--records must be at least 2 (record 0 is the warm-up)".into());
        }
        if a.records > 1_000_000_000 {
            return Err("--records must be at most 1,000,000,000".into());
        }
        if a.size > 16 * 1024 * 1024 {
            return Err("--size must be at most 16 MiB".into());
        }
        if a.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        if a.linger_ms > 900_000 {
            return Err("--linger-ms must be at most 900000".into());
        }
        if !(1..=10_000).contains(&a.partitions) {
            return Err("--partitions must be in 1..=10000".into());
        }
        if !(1024..=(1usize << 40)).contains(&a.buffer_memory) {
            return Err("--buffer-memory must be between 1 KiB and 1 TiB".into());
        }
        if a.max_in_flight
            .is_some_and(|n| !(1..=1_000_000).contains(&n))
        {
            return Err("--max-in-flight must be in 1..=1000000".into());
        }
        if a.broker_rtt_ms > 10_000 {
            return Err("--broker-rtt-ms must be at most 10000".into());
        }
        if a.broker_rtt_ms > 0 && a.bootstrap_servers.is_some() {
            return Err("--broker-rtt-ms applies to the mock cluster only".into());
        }
        Ok(Settings {
            records: a.records,
            size: a.size,
            acks: a.acks,
            linger_ms: a.linger_ms,
            batch_size: a.batch_size,
            partitions: a.partitions,
            buffer_memory: a.buffer_memory,
            broker_rtt_ms: a.broker_rtt_ms,
            max_in_flight: a.max_in_flight,
            compression: a.compression_type,
        })
    }

    /// The workload label of the table.
    pub fn label(&self) -> String {
        let mut rtt = if self.broker_rtt_ms > 0 {
            format!(" broker RTT {} ms", self.broker_rtt_ms)
        } else {
            String::new()
        };
        if let Some(n) = self.max_in_flight {
            rtt.push_str(&format!(" max.in.flight {n}"));
        }
        if self.compression != mqnet::protocol::Compression::None {
            rtt.push_str(&format!(" compression.type={}", self.compression));
        }
        format!(
            "{} × {} acks={} linger.ms={} batch.size={} buffer {}{rtt}",
            report::thousands(self.records as f64),
            report::size_label(self.size),
            self.acks.name(),
            self.linger_ms,
            self.batch_size,
            report::size_label(self.buffer_memory)
        )
    }

    /// The longest a run may take, all told.
    fn budget(&self) -> Duration {
        let per_record = 20_000 + self.size as u64 * 20;
        Duration::from_secs(30) + Duration::from_nanos(self.records.saturating_mul(per_record))
    }
}

/// The result of one produce run of one implementation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProduceResult {
    /// `mqnet` or `rdkafka`.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Records sent, the warm-up record 0 included.
    pub records: u64,
    /// Value size.
    pub size: usize,
    /// acks: "0", "1" or "all".
    pub acks: String,
    /// linger.ms.
    pub linger_ms: u64,
    /// batch.size.
    pub batch_size: usize,
    /// Records delivered without error per second (records 1.. over the timed window).
    pub records_per_s: f64,
    /// Value bytes delivered per second, in MB (10^6 bytes).
    pub mbps: f64,
    /// Delivery latency (send → callback) percentiles and maximum, in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Records not delivered: failed, rejected, or not completed in time.
    pub errors: u64,
    /// Records delivered without error, record 0 included.
    pub delivered: u64,
    /// The timed window in seconds.
    pub seconds: f64,
    /// Topic produced to.
    pub topic: String,
    /// Partitions of the topic (as created in the mock; as asked for otherwise).
    pub partitions: i32,
    /// The cluster: "mock" or the bootstrap servers.
    pub cluster: String,
    /// CPUs the harness could use.
    pub cores: usize,
    /// The mock brokers' response delay (ms).
    #[serde(default)]
    pub broker_rtt_ms: u64,
    /// The first error seen, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// compression.type.
    #[serde(default)]
    pub compression: String,
    /// Bytes the producer sent to the brokers: mqnet's Produce requests (length prefixes
    /// included); librdkafka's `txbytes` over all brokers (its few Metadata and ApiVersions
    /// requests included).
    #[serde(default)]
    pub wire_bytes: u64,
}

/// Delivery results of one run: latencies and counts.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
    last: Option<Instant>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            hist: Histogram::new_with_bounds(1, 600_000_000_000, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            failed: 0,
            first_error: None,
            last: None,
        }
    }

    #[inline]
    fn delivered(&mut self, sent: Instant, now: Instant) {
        let ns = now.saturating_duration_since(sent).as_nanos();
        self.hist
            .saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
        self.ok += 1;
        self.last = Some(now);
    }

    fn failed(&mut self, now: Instant, e: &dyn std::fmt::Display) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
        self.last = Some(now);
    }

    #[cfg(feature = "rdkafka-peer")]
    fn completed(&self) -> u64 {
        self.ok + self.failed
    }
}

/// The value of every record up to this size: a static buffer, so that mqnet's records share it
/// with no reference count (as Kafka's Java `ProducerPerformance` reuses one payload array), and
/// librdkafka copies it.
static VALUE: [u8; 64 * 1024] = [b'v'; 64 * 1024];

/// The value of every record for mqnet: [`VALUE`] when it is large enough, else one shared buffer
/// (a reference count per record).
fn value_bytes(size: usize) -> Bytes {
    match VALUE.get(..size) {
        Some(v) => Bytes::from_static(v),
        None => Bytes::from(vec![b'v'; size]),
    }
}

/// Writes `i` in decimal into the end of `buf`.
fn decimal(mut i: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut p = buf.len();
    loop {
        p -= 1;
        buf[p] = b'0' + (i % 10) as u8;
        i /= 10;
        if i == 0 {
            break;
        }
    }
    &buf[p..]
}

/// What a run measured, before it becomes a [`ProduceResult`].
struct Measured {
    tally: Tally,
    start: Instant,
    /// Records rejected at send (never handed to the producer).
    rejected: u64,
    first_error: Option<String>,
    /// Bytes sent to the brokers (see [`ProduceResult::wire_bytes`]).
    wire_bytes: u64,
}

fn summarize(
    imp: ProduceImpl,
    s: &Settings,
    m: Measured,
    topic: &str,
    cluster: &str,
) -> ProduceResult {
    let timed = s.records - 1;
    let t = &m.tally;
    let end = t.last.unwrap_or_else(Instant::now);
    let seconds = end.saturating_duration_since(m.start).as_secs_f64();
    let records_per_s = if seconds > 0.0 {
        t.ok as f64 / seconds
    } else {
        0.0
    };
    let us = |ns: u64| ns as f64 / 1000.0;
    let h = &t.hist;
    let q = |v: f64| {
        if h.is_empty() {
            0.0
        } else {
            us(h.value_at_quantile(v))
        }
    };
    ProduceResult {
        implementation: imp.name().to_string(),
        records: s.records,
        size: s.size,
        acks: s.acks.name().to_string(),
        linger_ms: s.linger_ms,
        batch_size: s.batch_size,
        records_per_s,
        mbps: records_per_s * s.size as f64 / 1e6,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if h.is_empty() { 0.0 } else { us(h.max()) },
        errors: timed.saturating_sub(t.ok),
        delivered: t.ok + 1,
        seconds,
        topic: topic.to_string(),
        partitions: s.partitions,
        cluster: cluster.to_string(),
        cores: sys::cores(),
        broker_rtt_ms: s.broker_rtt_ms,
        first_error: m.first_error.or_else(|| t.first_error.clone()),
        compression: s.compression.name().to_string(),
        wire_bytes: m.wire_bytes,
    }
}

// ----- mqnet -------------------------------------------------------------------------------------

/// The tally the mqnet delivery callbacks write to (one mqnet run at a time in this process). A
/// static rather than an `Arc` in every callback, so the callbacks carry nothing but their send
/// time — librdkafka's carry a `usize`.
static MQNET_TALLY: Mutex<Option<Tally>> = Mutex::new(None);

fn mqnet_tally() -> std::sync::MutexGuard<'static, Option<Tally>> {
    MQNET_TALLY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run_mqnet(s: &Settings, bootstrap: &str, topic: &str) -> Result<Measured, String> {
    let deadline = Instant::now() + s.budget();
    let cfg = ProducerConfig::new(bootstrap)
        .acks(s.acks.mqnet())
        .idempotence(s.acks.idempotence())
        .linger_ms(s.linger_ms)
        .batch_size(s.batch_size)
        .buffer_memory(s.buffer_memory)
        .compression(s.compression, None);
    let cfg = match s.max_in_flight {
        Some(n) => {
            let client = cfg.client.clone().max_in_flight(n);
            cfg.client(client)
        }
        None => cfg,
    };
    let producer = Producer::new(cfg).map_err(|e| format!("mqnet producer: {e}"))?;
    let value = value_bytes(s.size);
    let mut key = [0u8; 20];
    let record = |i: u64, key: &mut [u8; 20]| {
        ProducerRecord::new(topic, value.clone()).key(Bytes::copy_from_slice(decimal(i, key)))
    };

    // Record 0: connection and metadata.
    let first = producer.send(record(0, &mut key));
    match first.wait_timeout(WARMUP_LIMIT) {
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            producer.close(Duration::ZERO);
            return Err(format!("mqnet: record 0 failed: {e}"));
        }
        None => {
            producer.close(Duration::ZERO);
            return Err(format!(
                "mqnet: record 0 not delivered within {WARMUP_LIMIT:?}"
            ));
        }
    }

    *mqnet_tally() = Some(Tally::new());
    let start = Instant::now();
    for i in 1..s.records {
        if i % 65_536 == 0 && Instant::now() >= deadline {
            break;
        }
        let sent = Instant::now();
        producer.send_with_callback(record(i, &mut key), move |r: DeliveryResult| {
            let now = Instant::now();
            if let Some(t) = mqnet_tally().as_mut() {
                match r {
                    Ok(_) => t.delivered(sent, now),
                    Err(e) => t.failed(now, &e),
                }
            }
        });
    }
    producer.flush(deadline.saturating_duration_since(Instant::now()));
    producer.close(Duration::from_secs(5));
    let tally = mqnet_tally().take().unwrap_or_else(Tally::new);
    Ok(Measured {
        tally,
        start,
        rejected: 0,
        first_error: None,
        wire_bytes: producer.produce_request_bytes(),
    })
}

// ----- librdkafka --------------------------------------------------------------------------------

#[cfg(feature = "rdkafka-peer")]
mod rd {
    use std::sync::{Mutex, PoisonError};
    use std::time::{Duration, Instant};

    use rdkafka::error::KafkaError;
    use rdkafka::message::DeliveryResult;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{
        BaseProducer, BaseRecord, DefaultProducerContext, Producer as _, ProducerContext,
    };
    use rdkafka::types::RDKafkaErrorCode;
    use rdkafka::ClientContext;

    use super::{decimal, Measured, Settings, Tally, RDKAFKA_POLL_EVERY, WARMUP_LIMIT};

    /// The in-process mock cluster.
    pub type Mock = MockCluster<'static, DefaultProducerContext>;

    /// Starts a mock cluster of `brokers` brokers on 127.0.0.1.
    pub fn mock(brokers: i32) -> Result<Mock, String> {
        MockCluster::new(brokers).map_err(|e| format!("librdkafka mock cluster: {e}"))
    }

    /// The producer's context: delivery callbacks (served in `poll`, on this thread) record
    /// send → callback latency; the opaque is the send time in ns since `base`.
    /// `statistics.interval.ms`: how often librdkafka reports its byte counts.
    const STATS_INTERVAL_MS: u64 = 100;

    struct Ctx {
        base: Instant,
        tally: Mutex<Tally>,
        /// The latest statistics' `txbytes` over all brokers.
        txbytes: std::sync::atomic::AtomicU64,
    }

    impl Ctx {
        fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
            self.tally.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    impl ClientContext for Ctx {
        fn stats(&self, statistics: rdkafka::Statistics) {
            let tx: u64 = statistics.brokers.values().map(|b| b.txbytes).sum();
            self.txbytes
                .fetch_max(tx, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl ProducerContext for Ctx {
        type DeliveryOpaque = usize;

        fn delivery(&self, r: &DeliveryResult<'_>, sent_ns: usize) {
            let now = Instant::now();
            let sent = self.base + Duration::from_nanos(sent_ns as u64);
            let mut t = self.tally();
            match r {
                Ok(_) => t.delivered(sent, now),
                Err((e, _)) => t.failed(now, e),
            }
        }
    }

    pub fn run(s: &Settings, bootstrap: &str, topic: &str) -> Result<Measured, String> {
        let deadline = Instant::now() + s.budget();
        let base = Instant::now();
        let ctx = Ctx {
            base,
            tally: Mutex::new(Tally::new()),
            txbytes: std::sync::atomic::AtomicU64::new(0),
        };
        let max_messages = (s.records + 1000).min(i32::MAX as u64);
        let max_kbytes = (s.buffer_memory / 1024).clamp(1, i32::MAX as usize);
        let mut config = rdkafka::ClientConfig::new();
        if let Some(n) = s.max_in_flight {
            config.set("max.in.flight", n.to_string());
        }
        let producer: BaseProducer<Ctx> = config
            .set("bootstrap.servers", bootstrap)
            .set("acks", s.acks.name())
            .set("enable.idempotence", s.acks.idempotence().to_string())
            .set("linger.ms", s.linger_ms.to_string())
            .set("batch.size", s.batch_size.to_string())
            .set("queue.buffering.max.messages", max_messages.to_string())
            .set("queue.buffering.max.kbytes", max_kbytes.to_string())
            .set("partitioner", "murmur2_random")
            .set("compression.type", s.compression.name())
            .set("statistics.interval.ms", STATS_INTERVAL_MS.to_string())
            .create_with_context(ctx)
            .map_err(|e| format!("rdkafka producer: {e}"))?;
        let value = super::value_bytes(s.size);
        let mut key = [0u8; 20];
        let since_base = || Instant::now().saturating_duration_since(base).as_nanos() as usize;

        // Record 0: connection and metadata.
        let rec = BaseRecord::with_opaque_to(topic, since_base())
            .key(decimal(0, &mut key))
            .payload(&value[..]);
        producer
            .send(rec)
            .map_err(|(e, _)| format!("rdkafka: record 0: {e}"))?;
        let warm_deadline = Instant::now() + WARMUP_LIMIT;
        while producer.context().tally().completed() == 0 && Instant::now() < warm_deadline {
            producer.poll(Duration::from_millis(1));
        }
        {
            let mut t = producer.context().tally();
            if t.ok != 1 {
                return Err(match &t.first_error {
                    Some(e) => format!("rdkafka: record 0 failed: {e}"),
                    None => format!("rdkafka: record 0 not delivered within {WARMUP_LIMIT:?}"),
                });
            }
            *t = Tally::new();
        }

        let mut rejected = 0u64;
        let mut first_error = None;
        let start = Instant::now();
        'records: for i in 1..s.records {
            let mut rec = BaseRecord::with_opaque_to(topic, since_base())
                .key(decimal(i, &mut key))
                .payload(&value[..]);
            // Queue full: serve callbacks and retry, until the deadline.
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        if Instant::now() >= deadline {
                            rejected += s.records - i;
                            first_error.get_or_insert_with(|| "queue full at the deadline".into());
                            break 'records;
                        }
                        rec = r;
                        producer.poll(Duration::from_millis(1));
                    }
                    Err((e, _)) => {
                        rejected += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            if i % RDKAFKA_POLL_EVERY == 0 {
                producer.poll(Duration::ZERO);
                if i % 65_536 == 0 && Instant::now() >= deadline {
                    break;
                }
            }
        }
        if let Err(e) = producer.flush(deadline.saturating_duration_since(Instant::now())) {
            first_error.get_or_insert_with(|| format!("flush: {e}"));
        }
        let tally = std::mem::replace(&mut *producer.context().tally(), Tally::new());
        // Statistics come every interval: poll until two have arrived since the flush, so the
        // last one counts every byte sent.
        let mut seen = producer
            .context()
            .txbytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut steady = 0;
        let stats_deadline = Instant::now() + Duration::from_millis(20 * STATS_INTERVAL_MS);
        while steady < 2 && Instant::now() < stats_deadline {
            producer.poll(Duration::from_millis(STATS_INTERVAL_MS));
            let now_seen = producer
                .context()
                .txbytes
                .load(std::sync::atomic::Ordering::Relaxed);
            if now_seen == seen && now_seen > 0 {
                steady += 1;
            } else {
                steady = 0;
                seen = now_seen;
            }
        }
        drop(producer);
        Ok(Measured {
            tally,
            start,
            rejected,
            first_error,
            wire_bytes: seen,
        })
    }
}

// ----- orchestration -----------------------------------------------------------------------------

/// The cluster a run produces to.
enum Cluster {
    External(String),
    #[cfg(feature = "rdkafka-peer")]
    Mock(rd::Mock),
}

impl Cluster {
    #[cfg_attr(not(feature = "rdkafka-peer"), allow(unused_variables))]
    fn open(bootstrap: Option<&str>, rtt_ms: u64) -> Result<Self, String> {
        match bootstrap {
            Some(b) => Ok(Cluster::External(b.to_string())),
            #[cfg(feature = "rdkafka-peer")]
            None => {
                let m = rd::mock(MOCK_BROKERS)?;
                if rtt_ms > 0 {
                    for b in 1..=MOCK_BROKERS {
                        m.broker_round_trip_time(b, Duration::from_millis(rtt_ms))
                            .map_err(|e| format!("mock broker {b} RTT: {e}"))?;
                    }
                }
                Ok(Cluster::Mock(m))
            }
            #[cfg(not(feature = "rdkafka-peer"))]
            None => Err(NO_PEER.into()),
        }
    }

    fn bootstrap(&self) -> String {
        match self {
            Cluster::External(b) => b.clone(),
            #[cfg(feature = "rdkafka-peer")]
            Cluster::Mock(m) => m.bootstrap_servers(),
        }
    }

    fn is_mock(&self) -> bool {
        !matches!(self, Cluster::External(_))
    }

    fn name(&self) -> String {
        match self {
            Cluster::External(b) => b.clone(),
            #[cfg(feature = "rdkafka-peer")]
            Cluster::Mock(_) => "mock".into(),
        }
    }

    #[cfg_attr(not(feature = "rdkafka-peer"), allow(unused_variables))]
    fn describe(&self, s: &Settings) -> String {
        match self {
            Cluster::External(b) => format!("cluster at {b}, one topic for all implementations"),
            #[cfg(feature = "rdkafka-peer")]
            Cluster::Mock(_) => format!(
                "in-process librdkafka mock cluster, {MOCK_BROKERS} brokers, response delay {} ms; \
                 a fresh topic per implementation, {} partitions, replication factor \
                 {MOCK_REPLICATION}",
                s.broker_rtt_ms, s.partitions
            ),
        }
    }

    /// The topic `imp` produces to (created fresh in the mock).
    #[cfg_attr(not(feature = "rdkafka-peer"), allow(unused_variables))]
    fn topic_for(&self, base: &str, imp: ProduceImpl, s: &Settings) -> Result<String, String> {
        match self {
            Cluster::External(_) => Ok(base.to_string()),
            #[cfg(feature = "rdkafka-peer")]
            Cluster::Mock(m) => {
                let topic = format!("{base}-{}", imp.name());
                m.create_topic(&topic, s.partitions, MOCK_REPLICATION)
                    .map_err(|e| format!("mock topic {topic}: {e}"))?;
                Ok(topic)
            }
        }
    }
}

fn run_impl(
    imp: ProduceImpl,
    s: &Settings,
    cluster: &Cluster,
    base_topic: &str,
) -> Result<ProduceResult, String> {
    let topic = cluster.topic_for(base_topic, imp, s)?;
    let bootstrap = cluster.bootstrap();
    let m = match imp {
        ProduceImpl::Mqnet => run_mqnet(s, &bootstrap, &topic)?,
        #[cfg(feature = "rdkafka-peer")]
        ProduceImpl::Rdkafka => rd::run(s, &bootstrap, &topic)?,
        #[cfg(not(feature = "rdkafka-peer"))]
        ProduceImpl::Rdkafka => return Err(NO_PEER.into()),
    };
    if m.rejected > 0 {
        log::warn!("{}: {} records rejected at send", imp.name(), m.rejected);
    }
    Ok(summarize(imp, s, m, &topic, &cluster.name()))
}

/// Runs `impls` on `s` one after another against one cluster (`bootstrap`, or a fresh mock), then
/// prints the table (or JSON lines). Returns whether every run succeeded without errors.
///
/// # Errors
/// When the cluster cannot be had.
pub fn run_row(
    s: &Settings,
    impls: &[ProduceImpl],
    topic: &str,
    bootstrap: Option<&str>,
    json: bool,
    pb: &ProgressBar,
) -> Result<bool, String> {
    let cluster = Cluster::open(bootstrap, s.broker_rtt_ms)?;
    let header = format!(
        "mqnet-bench produce: {} cores; {}; producers one after another in this process; \
         key = record index, value {} B; record 0 warms up, the clock runs from record 1 to the \
         last delivery",
        sys::cores(),
        cluster.describe(s),
        s.size
    );
    if json {
        pb.suspend(|| eprintln!("{header}"));
    } else {
        pb.suspend(|| println!("{header}"));
    }
    if s.acks == AcksArg::Zero && cluster.is_mock() {
        pb.suspend(|| {
            eprintln!(
                "note: librdkafka's mock answers acks=0 Produce requests (a real broker does not); \
                 mqnet's NetworkClient closes a connection on a response it did not ask for, so \
                 against the mock acks=0 measures reconnects, not mqnet's acks=0 path"
            )
        });
    }
    let label = s.label();
    let mut row = report::ProduceRow {
        label: label.clone(),
        results: Vec::new(),
    };
    let mut ok = true;
    for &imp in impls {
        pb.set_message(format!("produce {label} · {}", imp.name()));
        let r = run_impl(imp, s, &cluster, topic);
        match &r {
            Ok(res) => {
                if res.errors > 0 {
                    ok = false;
                    pb.suspend(|| {
                        eprintln!(
                            "produce {}: {} errors (first: {})",
                            imp.name(),
                            res.errors,
                            res.first_error.as_deref().unwrap_or("-")
                        )
                    });
                }
                if json {
                    let line = serde_json::to_string(res).map_err(|e| e.to_string())?;
                    pb.suspend(|| println!("{line}"));
                }
            }
            Err(e) => {
                ok = false;
                pb.suspend(|| eprintln!("produce {}: FAILED: {e}", imp.name()));
            }
        }
        row.results.push((imp.name().to_string(), r));
        pb.inc(1);
    }
    if !json {
        pb.suspend(|| print!("{}", report::produce_table(&[row])));
    }
    Ok(ok)
}

/// `mqnet-bench produce`.
///
/// # Errors
/// Invalid arguments, or no cluster.
pub fn produce(a: &ProduceArgs) -> Result<bool, String> {
    let s = Settings::from_args(a)?;
    let impls = a.peer.impls()?;
    if a.bootstrap_servers.is_none() && a.broker == crate::produce_broker::BrokerKind::Embedded {
        let embedded = crate::produce_broker::Embedded::start(&a.topic, s.partitions)?;
        let pb = crate::progress(impls.len(), a.json);
        let r = run_row(
            &s,
            &impls,
            &a.topic,
            Some(&embedded.bootstrap()),
            a.json,
            &pb,
        );
        pb.finish_and_clear();
        embedded.finish(a.json);
        return r;
    }
    if a.bootstrap_servers.is_none() && !RDKAFKA_PEER {
        return Err(NO_PEER.into());
    }
    if a.topic.is_empty() || a.topic.len() > 200 {
        return Err("--topic must be 1 to 200 characters".into());
    }
    let pb = crate::progress(impls.len(), a.json);
    let r = run_row(
        &s,
        &impls,
        &a.topic,
        a.bootstrap_servers.as_deref(),
        a.json,
        &pb,
    );
    pb.finish_and_clear();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_keys() {
        let mut b = [0u8; 20];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(1_000_000, &mut b), b"1000000");
        assert_eq!(decimal(u64::MAX, &mut b), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn acks_parse_and_idempotence_follows_kafkas_rule() {
        assert_eq!(parse_acks("0"), Ok(AcksArg::Zero));
        assert_eq!(parse_acks("1"), Ok(AcksArg::One));
        assert_eq!(parse_acks("all"), Ok(AcksArg::All));
        assert_eq!(parse_acks("-1"), Ok(AcksArg::All));
        assert!(parse_acks("2").is_err());
        assert!(!AcksArg::One.idempotence());
        assert!(AcksArg::All.idempotence());
    }

    #[test]
    fn target_settings() {
        let s = Settings::target();
        assert_eq!(s.buffer_memory, 33_554_432);
        assert!(s
            .label()
            .starts_with("1,000,000 × 100 B acks=1 linger.ms=5"));
    }
}
