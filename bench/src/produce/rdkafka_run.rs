//! The workload through librdkafka's `BaseProducer` (the `rdkafka` crate), and the in-process
//! mock cluster: the `rd_peer` of `mqnet-bench-rdkafka` only (`mqnet-bench` has a stand-in,
//! `no_rdkafka.rs`, so that it never loads librdkafka).

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

use crate::error::{BenchError, Context};
use crate::produce::pace::Pacer;
use crate::produce::settings::Settings;
use crate::produce::tally::{decimal, Measured, Tally};
use crate::produce::WARMUP_LIMIT;

/// Whether this binary has the librdkafka peer and its mock cluster.
pub const AVAILABLE: bool = true;
/// `poll` after this many sends (delivery callbacks are served in `poll`).
const RDKAFKA_POLL_EVERY: u64 = 1024;

/// The in-process mock cluster.
pub type Mock = MockCluster<'static, DefaultProducerContext>;

/// Starts a mock cluster of `brokers` brokers on 127.0.0.1.
pub fn mock(brokers: i32) -> Result<Mock, BenchError> {
    MockCluster::new(brokers).context("librdkafka mock cluster")
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

pub fn run(s: &Settings, bootstrap: &str, topic: &str) -> Result<Measured, BenchError> {
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
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", s.acks.name())
        .set("enable.idempotence", s.acks.idempotence().to_string())
        .set("linger.ms", s.linger_ms.to_string())
        .set("batch.size", s.batch_size.to_string())
        .set("queue.buffering.max.messages", max_messages.to_string())
        .set("queue.buffering.max.kbytes", max_kbytes.to_string())
        .set("partitioner", "murmur2_random")
        .set("compression.type", s.compression.name())
        .set("statistics.interval.ms", STATS_INTERVAL_MS.to_string());
    for (k, v) in &s.extra {
        config.set(k, v);
    }
    let producer: BaseProducer<Ctx> = config
        .create_with_context(ctx)
        .context("rdkafka producer")?;
    let value = crate::produce::tally::value_bytes(s.size);
    let mut key = [0u8; 20];
    let since_base = || Instant::now().saturating_duration_since(base).as_nanos() as usize;

    // Record 0: connection and metadata.
    let rec = BaseRecord::with_opaque_to(topic, since_base())
        .key(decimal(0, &mut key))
        .payload(&value[..]);
    producer
        .send(rec)
        .map_err(|(e, _)| BenchError::wrap("rdkafka: record 0".into(), e))?;
    let warm_deadline = Instant::now() + WARMUP_LIMIT;
    while completed(&producer.context().tally()) == 0 && Instant::now() < warm_deadline {
        producer.poll(Duration::from_millis(1));
    }
    {
        let mut t = producer.context().tally();
        if t.ok != 1 {
            return Err(match &t.first_error {
                Some(e) => BenchError::Run(format!("rdkafka: record 0 failed: {e}")),
                None => BenchError::Run(format!(
                    "rdkafka: record 0 not delivered within {WARMUP_LIMIT:?}"
                )),
            });
        }
        *t = Tally::new();
    }

    let mut rejected = 0u64;
    let mut first_error = None;
    let start = Instant::now();
    let pacer = Pacer::new(start, s.rate);
    'records: for i in 1..s.records {
        if let Some(wait) = pacer.ahead(i, Instant::now()) {
            // Waiting serves delivery callbacks.
            producer.poll(wait);
        }
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
    // Statistics come every interval: poll until two have arrived since the flush, so the last
    // one counts every byte sent.
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
        metrics: None,
        wire_bytes: seen,
    })
}

/// Records delivered or failed so far.
fn completed(t: &Tally) -> u64 {
    t.ok + t.failed
}
