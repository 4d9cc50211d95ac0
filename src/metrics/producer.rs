//! The producer's metrics: the state the network thread records into ([`ProducerStats`], no lock,
//! no allocation per record or batch once a topic is known) and the snapshot it hands out
//! ([`ProducerMetrics`]), with Kafka's `producer-metrics` and `producer-topic-metrics` names.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::latency::micros_histogram;
use super::{Metric, MetricConfig, Sampled};
use crate::client::ClientMetrics;

/// Partitions past this index get no per-partition totals (the engine refuses such metadata
/// anyway: the same bound).
const MAX_PARTITIONS: usize = 1 << 16;

/// One topic's windows and per-partition totals.
#[derive(Debug, Clone)]
pub(crate) struct TopicStats {
    pub(crate) send: Sampled,
    pub(crate) bytes: Sampled,
    pub(crate) error: Sampled,
    pub(crate) retry: Sampled,
    /// Per partition: records and bytes sent (librdkafka's `txmsgs`, `txbytes`).
    pub(crate) partitions: Vec<(u64, u64)>,
}

impl TopicStats {
    fn new(cfg: MetricConfig) -> Self {
        TopicStats {
            send: Sampled::new(cfg),
            bytes: Sampled::new(cfg),
            error: Sampled::new(cfg),
            retry: Sampled::new(cfg),
            partitions: Vec::new(),
        }
    }
}

/// A batch going out in a Produce request.
pub(crate) struct SentBatch<'a> {
    /// The broker it goes to.
    pub(crate) leader: i32,
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    /// Its records still pending.
    pub(crate) records: i32,
    /// Its size in bytes.
    pub(crate) bytes: usize,
    /// How long it waited since it was opened, on its first send only.
    pub(crate) queued: Option<Duration>,
}

/// What the producer's network thread records. Owned by that thread alone.
#[derive(Debug, Clone)]
pub(crate) struct ProducerStats {
    cfg: MetricConfig,
    pub(crate) created: Instant,
    record_send: Sampled,
    record_error: Sampled,
    record_retry: Sampled,
    bytes: Sampled,
    batch_size: Sampled,
    records_per_request: Sampled,
    queue_time_ms: Sampled,
    request_latency_ms: Sampled,
    queue_time_us: Histogram<u64>,
    request_latency_us: Histogram<u64>,
    pub(crate) topics: HashMap<String, TopicStats>,
    /// Per broker (leader id): how long its batches waited before their first send, µs
    /// (librdkafka's `int_latency`).
    pub(crate) int_latency: HashMap<i32, Histogram<u64>>,
    /// Produce requests sent and their bytes.
    pub(crate) requests: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

impl ProducerStats {
    pub(crate) fn new(cfg: MetricConfig, now: Instant) -> Self {
        ProducerStats {
            cfg,
            created: now,
            record_send: Sampled::new(cfg),
            record_error: Sampled::new(cfg),
            record_retry: Sampled::new(cfg),
            bytes: Sampled::new(cfg),
            batch_size: Sampled::new(cfg),
            records_per_request: Sampled::new(cfg),
            queue_time_ms: Sampled::new(cfg),
            request_latency_ms: Sampled::new(cfg),
            queue_time_us: micros_histogram(),
            request_latency_us: micros_histogram(),
            topics: HashMap::new(),
            int_latency: HashMap::new(),
            requests: 0,
        }
    }

    fn topic(&mut self, topic: &str) -> &mut TopicStats {
        if !self.topics.contains_key(topic) {
            self.topics
                .insert(topic.to_string(), TopicStats::new(self.cfg));
        }
        self.topics
            .get_mut(topic)
            .expect("inserted just above when missing")
    }

    /// A batch of `records` records, `bytes` long, goes out in a Produce request to `leader`;
    /// `queued` is how long it waited since it was opened, on its first send only.
    pub(crate) fn batch_sent(&mut self, now: Instant, b: SentBatch<'_>) {
        let SentBatch {
            leader,
            topic,
            partition,
            records,
            bytes,
            queued,
        } = b;
        let n = u64::try_from(records).unwrap_or(0);
        let b = bytes as f64;
        self.record_send.record_n(now, n as f64, n, 1.0);
        self.bytes.record(now, b);
        self.batch_size.record(now, b);
        if let Some(q) = queued {
            self.queue_time_ms.record(now, ms(q));
            self.queue_time_us.saturating_record(us(q));
            self.int_latency
                .entry(leader)
                .or_insert_with(micros_histogram)
                .saturating_record(us(q));
        }
        let t = self.topic(topic);
        t.send.record_n(now, n as f64, n, 1.0);
        t.bytes.record(now, b);
        if let Ok(i) = usize::try_from(partition) {
            if i >= t.partitions.len() && i < MAX_PARTITIONS {
                t.partitions.resize(i + 1, (0, 0));
            }
            if let Some(p) = t.partitions.get_mut(i) {
                p.0 += n;
                p.1 += bytes as u64;
            }
        }
    }

    /// A Produce request with `records` records went out.
    pub(crate) fn request_sent(&mut self, now: Instant, records: u64) {
        self.requests += 1;
        self.records_per_request.record(now, records as f64);
    }

    /// A Produce request was answered after `latency`.
    pub(crate) fn response(&mut self, now: Instant, latency: Duration) {
        self.request_latency_ms.record(now, ms(latency));
        self.request_latency_us.saturating_record(us(latency));
    }

    /// `n` records of `topic` failed for good.
    pub(crate) fn records_failed(&mut self, now: Instant, topic: Option<&str>, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        self.record_error.record_n(now, n as f64, n, 1.0);
        if let Some(topic) = topic {
            self.topic(topic).error.record_n(now, n as f64, n, 1.0);
        }
    }

    /// `n` records of `topic` will be sent again.
    pub(crate) fn records_retried(&mut self, now: Instant, topic: &str, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        self.record_retry.record_n(now, n as f64, n, 1.0);
        self.topic(topic).retry.record_n(now, n as f64, n, 1.0);
    }

    /// The snapshot at `now`.
    pub(crate) fn snapshot(
        &self,
        now: Instant,
        client: ClientMetrics,
        buffer_total: usize,
        buffer_used: usize,
        requests_in_flight: usize,
    ) -> ProducerMetrics {
        let q = |h: &Histogram<u64>, p: f64| {
            if h.is_empty() {
                f64::NAN
            } else {
                h.value_at_quantile(p) as f64 / 1000.0
            }
        };
        let mut topics: Vec<TopicMetrics> = self
            .topics
            .iter()
            .map(|(name, t)| TopicMetrics {
                topic: name.clone(),
                record_send_total: t.send.total() as u64,
                record_send_rate: t.send.rate(now),
                byte_total: t.bytes.total() as u64,
                byte_rate: t.bytes.rate(now),
                record_error_total: t.error.total() as u64,
                record_error_rate: t.error.rate(now),
                record_retry_total: t.retry.total() as u64,
                record_retry_rate: t.retry.rate(now),
            })
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        ProducerMetrics {
            record_send_total: self.record_send.total() as u64,
            record_send_rate: self.record_send.rate(now),
            record_error_total: self.record_error.total() as u64,
            record_error_rate: self.record_error.rate(now),
            record_retry_total: self.record_retry.total() as u64,
            record_retry_rate: self.record_retry.rate(now),
            byte_total: self.bytes.total() as u64,
            byte_rate: self.bytes.rate(now),
            batch_size_avg: self.batch_size.avg(now),
            batch_size_max: self.batch_size.max(now),
            records_per_request_avg: self.records_per_request.avg(now),
            produce_request_total: self.requests,
            record_queue_time_avg: self.queue_time_ms.avg(now),
            record_queue_time_max: self.queue_time_ms.max(now),
            record_queue_time_p50: q(&self.queue_time_us, 0.50),
            record_queue_time_p95: q(&self.queue_time_us, 0.95),
            record_queue_time_p99: q(&self.queue_time_us, 0.99),
            request_latency_avg: self.request_latency_ms.avg(now),
            request_latency_max: self.request_latency_ms.max(now),
            request_latency_p50: q(&self.request_latency_us, 0.50),
            request_latency_p95: q(&self.request_latency_us, 0.95),
            request_latency_p99: q(&self.request_latency_us, 0.99),
            buffer_total_bytes: buffer_total as u64,
            buffer_available_bytes: buffer_total.saturating_sub(buffer_used) as u64,
            requests_in_flight: requests_in_flight as u64,
            uptime: now.saturating_duration_since(self.created),
            topics,
            network: client,
        }
    }
}

/// One topic's metrics (Kafka's `producer-topic-metrics` group, tag `topic`). Rates per second
/// over the sample window.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicMetrics {
    /// The topic.
    pub topic: String,
    /// `record-send-total`: records sent in Produce requests (each resend counts again).
    pub record_send_total: u64,
    /// `record-send-rate`: records sent per second.
    pub record_send_rate: f64,
    /// `byte-total`: record batch bytes sent.
    pub byte_total: u64,
    /// `byte-rate`: record batch bytes sent per second.
    pub byte_rate: f64,
    /// `record-error-total`: records that failed for good.
    pub record_error_total: u64,
    /// `record-error-rate`: records failed per second.
    pub record_error_rate: f64,
    /// `record-retry-total`: records queued again for a resend.
    pub record_retry_total: u64,
    /// `record-retry-rate`: records retried per second.
    pub record_retry_rate: f64,
}

/// A producer's metrics at one instant, from `Producer::metrics`: Kafka's `producer-metrics`
/// group, the topics' `producer-topic-metrics`, and the network client's metrics (Kafka's
/// client-wide selector names and `producer-node-metrics`). Rates per second over the sample
/// window (`metrics.sample.window.ms` × `metrics.num.samples`); times in milliseconds;
/// averages and maxima NaN over an empty window (as in Kafka); percentiles (HDR, since the
/// producer started) where Kafka has only avg and max.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerMetrics {
    /// `record-send-total`: records sent in Produce requests (each resend counts again).
    pub record_send_total: u64,
    /// `record-send-rate`: records sent per second.
    pub record_send_rate: f64,
    /// `record-error-total`: records that failed for good (their callback got an error).
    pub record_error_total: u64,
    /// `record-error-rate`: records failed per second.
    pub record_error_rate: f64,
    /// `record-retry-total`: records queued again for a resend.
    pub record_retry_total: u64,
    /// `record-retry-rate`: records retried per second.
    pub record_retry_rate: f64,
    /// `byte-total` (topic-level in Kafka, summed here): record batch bytes sent.
    pub byte_total: u64,
    /// `byte-rate`: record batch bytes sent per second.
    pub byte_rate: f64,
    /// `batch-size-avg`: mean bytes per batch sent.
    pub batch_size_avg: f64,
    /// `batch-size-max`: largest batch sent, bytes.
    pub batch_size_max: f64,
    /// `records-per-request-avg`: mean records per Produce request.
    pub records_per_request_avg: f64,
    /// `produce-request-total` (mqnet): Produce requests sent.
    pub produce_request_total: u64,
    /// `record-queue-time-avg`: mean time a batch waited from its first record to its first send,
    /// ms.
    pub record_queue_time_avg: f64,
    /// `record-queue-time-max`: longest such wait, ms.
    pub record_queue_time_max: f64,
    /// Median queue time, ms (HDR).
    pub record_queue_time_p50: f64,
    /// 95th percentile of queue time, ms (HDR).
    pub record_queue_time_p95: f64,
    /// 99th percentile of queue time, ms (HDR).
    pub record_queue_time_p99: f64,
    /// `request-latency-avg`: mean Produce request latency (send to answer), ms.
    pub request_latency_avg: f64,
    /// `request-latency-max`: largest Produce request latency, ms.
    pub request_latency_max: f64,
    /// Median Produce request latency, ms (HDR).
    pub request_latency_p50: f64,
    /// 95th percentile of Produce request latency, ms (HDR).
    pub request_latency_p95: f64,
    /// 99th percentile of Produce request latency, ms (HDR).
    pub request_latency_p99: f64,
    /// `buffer-total-bytes`: `buffer.memory`.
    pub buffer_total_bytes: u64,
    /// `buffer-available-bytes`: `buffer.memory` less the bytes of records not yet completed.
    pub buffer_available_bytes: u64,
    /// `requests-in-flight`: Produce requests sent and not yet answered.
    pub requests_in_flight: u64,
    /// How long the producer has run.
    pub uptime: Duration,
    /// Per topic, sorted by name.
    pub topics: Vec<TopicMetrics>,
    /// The network client's metrics (connections, requests of every kind, bytes, io-wait-ratio,
    /// and each broker's node metrics).
    pub network: ClientMetrics,
}

impl ProducerMetrics {
    /// The topic's metrics, if the producer has sent to it.
    pub fn topic(&self, topic: &str) -> Option<&TopicMetrics> {
        self.topics.iter().find(|t| t.topic == topic)
    }

    /// The snapshot as [`Metric`] rows with Kafka's groups: `producer-metrics` (the producer's
    /// and the client-wide network metrics), `producer-node-metrics` (tag `node-id`),
    /// `producer-topic-metrics` (tag `topic`).
    pub fn to_metrics(&self) -> Vec<Metric> {
        const G: &str = "producer-metrics";
        let mut v = vec![
            Metric::new(G, "record-send-total", self.record_send_total as f64),
            Metric::new(G, "record-send-rate", self.record_send_rate),
            Metric::new(G, "record-error-total", self.record_error_total as f64),
            Metric::new(G, "record-error-rate", self.record_error_rate),
            Metric::new(G, "record-retry-total", self.record_retry_total as f64),
            Metric::new(G, "record-retry-rate", self.record_retry_rate),
            Metric::new(G, "batch-size-avg", self.batch_size_avg),
            Metric::new(G, "batch-size-max", self.batch_size_max),
            Metric::new(G, "records-per-request-avg", self.records_per_request_avg),
            Metric::new(
                G,
                "produce-request-total",
                self.produce_request_total as f64,
            ),
            Metric::new(G, "record-queue-time-avg", self.record_queue_time_avg),
            Metric::new(G, "record-queue-time-max", self.record_queue_time_max),
            Metric::new(G, "record-queue-time-p50", self.record_queue_time_p50),
            Metric::new(G, "record-queue-time-p95", self.record_queue_time_p95),
            Metric::new(G, "record-queue-time-p99", self.record_queue_time_p99),
            Metric::new(G, "request-latency-avg", self.request_latency_avg),
            Metric::new(G, "request-latency-max", self.request_latency_max),
            Metric::new(G, "request-latency-p50", self.request_latency_p50),
            Metric::new(G, "request-latency-p95", self.request_latency_p95),
            Metric::new(G, "request-latency-p99", self.request_latency_p99),
            Metric::new(G, "buffer-total-bytes", self.buffer_total_bytes as f64),
            Metric::new(
                G,
                "buffer-available-bytes",
                self.buffer_available_bytes as f64,
            ),
            Metric::new(
                G,
                "produce-requests-in-flight",
                self.requests_in_flight as f64,
            ),
        ];
        v.extend(self.network.to_metrics(G, "producer-node-metrics"));
        const T: &str = "producer-topic-metrics";
        for t in &self.topics {
            let m = |name: &'static str, value: f64| {
                Metric::new(T, name, value).tagged("topic", t.topic.clone())
            };
            v.extend([
                m("record-send-total", t.record_send_total as f64),
                m("record-send-rate", t.record_send_rate),
                m("byte-total", t.byte_total as f64),
                m("byte-rate", t.byte_rate),
                m("record-error-total", t.record_error_total as f64),
                m("record-error-rate", t.record_error_rate),
                m("record-retry-total", t.record_retry_total as f64),
                m("record-retry-rate", t.record_retry_rate),
            ]);
        }
        v
    }
}
