//! Delivery results of one run (latency histogram, counts) and the record contents both peers
//! send, and the summary of a run as a [`ProduceResult`].

use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::settings::{ProduceResult, Settings};
use super::ProduceImpl;
use crate::sys;

/// Delivery results of one run: latencies and counts.
pub(crate) struct Tally {
    pub(crate) hist: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) last: Option<Instant>,
}

impl Tally {
    pub(crate) fn new() -> Self {
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
    pub(crate) fn delivered(&mut self, sent: Instant, now: Instant) {
        let ns = now.saturating_duration_since(sent).as_nanos();
        self.hist
            .saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
        self.ok += 1;
        self.last = Some(now);
    }

    pub(crate) fn failed(&mut self, now: Instant, e: &dyn std::fmt::Display) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
        self.last = Some(now);
    }
}

/// The value of every record up to this size: a static buffer, so that mqnet's records share it
/// with no reference count (as Kafka's Java `ProducerPerformance` reuses one payload array), and
/// librdkafka copies it.
static VALUE: [u8; 64 * 1024] = [b'v'; 64 * 1024];

/// The value of every record for mqnet: [`VALUE`] when it is large enough, else one shared buffer
/// (a reference count per record).
pub(crate) fn value_bytes(size: usize) -> Bytes {
    match VALUE.get(..size) {
        Some(v) => Bytes::from_static(v),
        None => Bytes::from(vec![b'v'; size]),
    }
}

/// Writes `i` in decimal into the end of `buf`.
pub(crate) fn decimal(mut i: u64, buf: &mut [u8; 20]) -> &[u8] {
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
pub(crate) struct Measured {
    pub(crate) tally: Tally,
    pub(crate) start: Instant,
    /// Records rejected at send (never handed to the producer).
    pub(crate) rejected: u64,
    pub(crate) first_error: Option<String>,
    /// mqnet's producer metrics at the end (`--stats`).
    pub(crate) metrics: Option<std::collections::BTreeMap<String, f64>>,
    /// Bytes sent to the brokers (see [`ProduceResult::wire_bytes`]).
    pub(crate) wire_bytes: u64,
}

pub(crate) fn summarize(
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
        rate: s.rate,
        first_error: m.first_error.or_else(|| t.first_error.clone()),
        metrics: m.metrics,
        compression: s.compression.name().to_string(),
        wire_bytes: m.wire_bytes,
    }
}
