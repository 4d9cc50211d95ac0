//! One metrics model for every layer, with Kafka's metric names and groups.
//!
//! - [`Sampled`]: a windowed statistic with Kafka's sampling rules (`metrics.sample.window.ms` ×
//!   `metrics.num.samples`): rate, avg, max, plus all-time total and count. Recording is O(1) and
//!   allocation-free; only the owner of the state records, on its own thread, so no lock is held
//!   on any hot path.
//! - Snapshots: [`crate::client::ClientMetrics`] and its
//!   [`crate::client::NodeSnapshot`]s from
//!   [`NetworkClient::metrics`](crate::client::NetworkClient::metrics) (Kafka's client-wide and
//!   `node` groups, the Selector's names), and, with the `kafka` feature, `ProducerMetrics` from
//!   `Producer::metrics` (the `producer-metrics` and `producer-topic-metrics` groups).
//! - [`Metric`]: a snapshot flattened to `(group, name, tags, value)` rows, for printing or
//!   exporting; with the `metrics-facade` feature, the rows are published through the `metrics`
//!   crate (so any of its exporters, e.g. Prometheus, can serve them).
//! - The producer's `statistics.interval.ms` callback receives a JSON document shaped like
//!   librdkafka's `STATISTICS.md` (the fields that apply).
//!
//! Where Kafka offers only avg and max, HDR percentiles (p50, p95, p99) are given as well. The
//! list of every metric with its Kafka name and meaning is `docs/METRICS.md`.

mod counters;
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
mod json;
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
mod latency;
#[cfg(feature = "kafka")]
mod producer;
#[cfg(feature = "kafka")]
pub(crate) mod stats;
mod window;

#[cfg(feature = "metrics-facade")]
mod facade;

pub(crate) use counters::{CounterWindows, Kind};
pub(crate) use json::JsonWriter;
#[cfg(feature = "kafka")]
pub(crate) use latency::IntervalHistogram;
pub use latency::LatencyWindow;
#[cfg(feature = "kafka")]
pub use producer::{ProducerMetrics, TopicMetrics};
#[cfg(feature = "kafka")]
pub(crate) use producer::{ProducerStats, SentBatch};
#[cfg(feature = "kafka")]
pub use stats::StatsCallback;
#[cfg(feature = "kafka")]
pub(crate) use stats::StatsTimer;
pub use window::{MetricConfig, Sampled};

#[cfg(feature = "metrics-facade")]
pub use facade::{facade_name, publish};

use crate::client::{ClientMetrics, NodeSnapshot};

/// One metric value with Kafka's group and name and its tags (e.g. `node-id`, `topic`).
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Kafka's group: `producer-metrics`, `producer-node-metrics`, `producer-topic-metrics`,
    /// `selector-metrics` (the client-wide group of a bare NetworkClient).
    pub group: &'static str,
    /// Kafka's metric name, e.g. `record-send-rate`.
    pub name: &'static str,
    /// Tags: `("node-id", "node-1")`, `("topic", "events")`.
    pub tags: Vec<(&'static str, String)>,
    /// The value (NaN for an average or maximum over an empty window, as in Kafka).
    pub value: f64,
}

impl Metric {
    fn new(group: &'static str, name: &'static str, value: f64) -> Self {
        Metric {
            group,
            name,
            tags: Vec::new(),
            value,
        }
    }

    fn tagged(mut self, key: &'static str, value: String) -> Self {
        self.tags.push((key, value));
        self
    }
}

impl std::fmt::Display for Metric {
    /// `group:name{tag=value,...} value`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.group, self.name)?;
        if !self.tags.is_empty() {
            f.write_str("{")?;
            for (i, (k, v)) in self.tags.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{k}={v}")?;
            }
            f.write_str("}")?;
        }
        write!(f, " {}", self.value)
    }
}

/// Kafka's `node-id` tag value for a node: `node-N` (bootstrap nodes, negative here, as Kafka
/// names them: `node--1`).
fn node_tag(n: &NodeSnapshot) -> String {
    format!("node-{}", n.node.0)
}

impl ClientMetrics {
    /// The snapshot as [`Metric`] rows: the client-wide metrics in `group`, each node's in
    /// `node_group` tagged `node-id`.
    pub fn to_metrics(&self, group: &'static str, node_group: &'static str) -> Vec<Metric> {
        let mut v = vec![
            Metric::new(group, "connection-count", self.connection_count as f64),
            Metric::new(
                group,
                "connection-creation-total",
                self.connection_creation_total as f64,
            ),
            Metric::new(
                group,
                "connection-creation-rate",
                self.connection_creation_rate,
            ),
            Metric::new(
                group,
                "connection-close-total",
                self.connection_close_total as f64,
            ),
            Metric::new(group, "connection-close-rate", self.connection_close_rate),
            Metric::new(group, "request-total", self.request_total as f64),
            Metric::new(group, "request-rate", self.request_rate),
            Metric::new(group, "response-total", self.response_total as f64),
            Metric::new(group, "response-rate", self.response_rate),
            Metric::new(
                group,
                "outgoing-byte-total",
                self.outgoing_byte_total as f64,
            ),
            Metric::new(group, "outgoing-byte-rate", self.outgoing_byte_rate),
            Metric::new(
                group,
                "incoming-byte-total",
                self.incoming_byte_total as f64,
            ),
            Metric::new(group, "incoming-byte-rate", self.incoming_byte_rate),
            Metric::new(group, "requests-in-flight", self.requests_in_flight as f64),
        ];
        if let Some(r) = self.io_wait_ratio {
            v.push(Metric::new(group, "io-wait-ratio", r));
        }
        if let Some(r) = self.io_ratio {
            v.push(Metric::new(group, "io-ratio", r));
        }
        if let Some(s) = &self.selector {
            v.push(Metric::new(group, "select-total", s.selects as f64));
            v.push(Metric::new(
                group,
                "io-wait-time-ns-total",
                s.select_time.as_nanos() as f64,
            ));
            v.push(Metric::new(
                group,
                "io-time-ns-total",
                s.io_time.as_nanos() as f64,
            ));
        }
        for n in &self.nodes {
            let tag = node_tag(n);
            let m = |name: &'static str, value: f64| {
                Metric::new(node_group, name, value).tagged("node-id", tag.clone())
            };
            v.extend([
                m("request-total", n.request_total as f64),
                m("request-rate", n.request_rate),
                m("response-total", n.response_total as f64),
                m("response-rate", n.response_rate),
                m("outgoing-byte-total", n.outgoing_byte_total as f64),
                m("outgoing-byte-rate", n.outgoing_byte_rate),
                m("incoming-byte-total", n.incoming_byte_total as f64),
                m("incoming-byte-rate", n.incoming_byte_rate),
                m("request-latency-avg", n.request_latency_avg_ms),
                m("request-latency-max", n.request_latency_max_ms),
                m("request-latency-p50", n.request_latency_p50_ms),
                m("request-latency-p95", n.request_latency_p95_ms),
                m("request-latency-p99", n.request_latency_p99_ms),
                m("requests-in-flight", n.requests_in_flight as f64),
            ]);
        }
        v
    }
}
