//! The engine's reporting part: the metrics it records ([`ProducerStats`]), the snapshots it hands
//! to `Producer::metrics`, and the `statistics.interval.ms` JSON for the stats callback. Runs on
//! the network thread between turns' work; the accumulator's lock is taken only to count what
//! waits in it, once per report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::*;
use crate::client::ConnectionState;
use crate::metrics::stats::{BrokerRow, PartitionRow, StatsDoc, TopicRow};
use crate::metrics::{
    IntervalHistogram, LatencyWindow, MetricConfig, ProducerMetrics, ProducerStats, StatsTimer,
};

/// The last snapshot the engine built, shared with the producer handles (read when the network
/// thread is gone or does not answer).
pub(crate) type MetricsSlot = Arc<Mutex<Option<ProducerMetrics>>>;

/// What the engine keeps for reporting.
pub(crate) struct Reporting {
    pub(crate) stats: ProducerStats,
    timer: StatsTimer,
    /// When the metrics are next published to the `metrics` facade.
    #[cfg(feature = "metrics-facade")]
    facade: StatsTimer,
    pub(crate) waiters: Vec<Sender<ProducerMetrics>>,
    pub(crate) slot: MetricsSlot,
    rtt: HashMap<i32, IntervalHistogram>,
    int_latency: HashMap<i32, IntervalHistogram>,
}

impl Reporting {
    pub(crate) fn new(cfg: &ProducerConfig, now: Instant) -> Self {
        let mcfg: MetricConfig = cfg.metrics;
        Reporting {
            stats: ProducerStats::new(mcfg, now),
            timer: StatsTimer::new(
                if cfg.stats_callback.is_some() {
                    cfg.statistics_interval
                } else {
                    Duration::ZERO
                },
                now,
            ),
            #[cfg(feature = "metrics-facade")]
            facade: StatsTimer::new(
                if cfg.statistics_interval.is_zero() {
                    mcfg.sample_window
                } else {
                    cfg.statistics_interval
                },
                now,
            ),
            waiters: Vec::new(),
            slot: Arc::new(Mutex::new(None)),
            rtt: HashMap::new(),
            int_latency: HashMap::new(),
        }
    }

    /// When the engine must wake for the next report.
    pub(crate) fn next(&self) -> Option<Instant> {
        let t = self.timer.next();
        #[cfg(feature = "metrics-facade")]
        let t = match (t, self.facade.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        t
    }
}

fn state_name(s: ConnectionState) -> &'static str {
    match s {
        ConnectionState::Disconnected | ConnectionState::HandshakeFailed => "DOWN",
        ConnectionState::Connecting => "CONNECT",
        ConnectionState::Handshaking => "APIVERSION_QUERY",
        ConnectionState::Ready => "UP",
    }
}

impl<T: Transport> Engine<T> {
    /// The producer's metrics at `now`.
    pub(crate) fn metrics_snapshot(&self, now: Instant) -> ProducerMetrics {
        self.report.stats.snapshot(
            now,
            self.client.metrics(),
            self.cfg.buffer_memory,
            self.pool.used(),
            self.produce_in_flight.len(),
        )
    }

    /// Answers `Producer::metrics` calls, and runs the statistics callback (and the facade) when
    /// due. Called once per turn.
    pub(super) fn report(&mut self, now: Instant) {
        if !self.report.waiters.is_empty() {
            let snap = self.metrics_snapshot(now);
            #[cfg(feature = "metrics-facade")]
            crate::metrics::publish(&snap.to_metrics());
            for w in self.report.waiters.drain(..) {
                let _ = w.send(snap.clone());
            }
            *self
                .report
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(snap);
        }
        #[cfg(feature = "metrics-facade")]
        if self.report.facade.due(now) {
            crate::metrics::publish(&self.metrics_snapshot(now).to_metrics());
        }
        if self.report.timer.due(now) {
            if let Some(cb) = self.cfg.stats_callback.clone() {
                let json = self.stats_json(now);
                cb.call(&json);
            }
        }
    }

    /// Keeps the final snapshot for the handles (after the network thread has stopped).
    pub(super) fn final_report(&mut self) {
        let now = self.client.transport().now();
        let snap = self.metrics_snapshot(now);
        for w in self.report.waiters.drain(..) {
            let _ = w.send(snap.clone());
        }
        *self
            .report
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(snap);
    }

    /// The statistics document at `now` (librdkafka's fields that apply; see `docs/METRICS.md`).
    /// Latency windows (`rtt`, `int_latency`) cover the time since the previous document.
    pub(crate) fn stats_json(&mut self, now: Instant) -> String {
        self.stats_doc(now).to_json()
    }

    fn stats_doc(&mut self, now: Instant) -> StatsDoc {
        let client = self.client.metrics();
        // Records in flight per partition.
        let mut inflight: HashMap<(&str, i32), (u64, u64)> = HashMap::new();
        for f in self.produce_in_flight.values() {
            for (tp, b) in &f.batches {
                let e = inflight
                    .entry((tp.topic.as_str(), tp.partition))
                    .or_default();
                e.0 += b.completions.len() as u64;
                e.1 += b.size() as u64;
            }
        }
        let mut topics: Vec<TopicRow> = Vec::new();
        let mut msg_cnt = 0u64;
        {
            let st = self.acc.lock();
            for (name, t) in self.topics.iter() {
                let acc_topic = st.topics.get(name);
                if let Some(at) = acc_topic {
                    msg_cnt += at.waiting.len() as u64;
                }
                let sent = self.report.stats.topics.get(name);
                let mut row = TopicRow {
                    topic: name.clone(),
                    partitions: Vec::with_capacity(t.partitions.len()),
                };
                for (i, p) in t.partitions.iter().enumerate() {
                    let (q_cnt, q_bytes) = acc_topic
                        .and_then(|at| at.partitions.get(i))
                        .and_then(|ap| ap.open.as_ref())
                        .map_or((0, 0), |b| (b.records.max(0) as u64, b.buf.len() as u64));
                    let (x_cnt, x_bytes) = p.batches.iter().fold((0u64, 0u64), |(c, s), b| {
                        (c + b.completions.len() as u64, s + b.size() as u64)
                    });
                    let fl = inflight.get(&(name.as_str(), i as i32)).copied();
                    let (txmsgs, txbytes) = sent
                        .and_then(|s| s.partitions.get(i))
                        .copied()
                        .unwrap_or((0, 0));
                    let fl_cnt = fl.map_or(0, |f| f.0);
                    msg_cnt += q_cnt + x_cnt + fl_cnt;
                    row.partitions.push(PartitionRow {
                        partition: i as i32,
                        leader: p.leader.unwrap_or(-1),
                        msgq_cnt: q_cnt,
                        msgq_bytes: q_bytes,
                        xmit_msgq_cnt: x_cnt,
                        xmit_msgq_bytes: x_bytes,
                        msgs_inflight: fl_cnt,
                        txmsgs,
                        txbytes,
                    });
                }
                topics.push(row);
            }
        }
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        let mut brokers = Vec::with_capacity(client.nodes.len());
        for n in &client.nodes {
            let id = n.node.0;
            let (addr, source) = if id < 0 {
                let i = usize::try_from(-1 - i64::from(id)).unwrap_or(usize::MAX);
                (
                    self.cfg
                        .bootstrap_servers
                        .get(i)
                        .cloned()
                        .unwrap_or_default(),
                    "configured",
                )
            } else {
                (
                    self.meta.brokers.get(&id).cloned().unwrap_or_default(),
                    "learned",
                )
            };
            let rtt = match self.client.node_metrics(n.node) {
                Some(m) => self
                    .report
                    .rtt
                    .entry(id)
                    .or_insert_with(IntervalHistogram::new)
                    .window(&m.latency_us),
                None => LatencyWindow::default(),
            };
            let int_latency = match self.report.stats.int_latency.get(&id) {
                Some(h) => self
                    .report
                    .int_latency
                    .entry(id)
                    .or_insert_with(IntervalHistogram::new)
                    .window(h),
                None => LatencyWindow::default(),
            };
            let nm = self.client.node_metrics(n.node);
            brokers.push(BrokerRow {
                name: if id < 0 {
                    format!("{addr}/bootstrap")
                } else {
                    format!("{addr}/{id}")
                },
                nodeid: id,
                nodename: addr,
                source,
                state: state_name(n.state),
                outbuf_cnt: n.requests_waiting as u64,
                waitresp_cnt: n.requests_in_flight as u64,
                tx: n.request_total,
                txbytes: n.outgoing_byte_total,
                req_timeouts: nm.map_or(0, |m| m.timeouts),
                rx: n.response_total,
                rxbytes: n.incoming_byte_total,
                connects: n.connects,
                disconnects: n.disconnects,
                int_latency,
                rtt,
            });
        }
        let stats = &self.report.stats;
        StatsDoc {
            name: format!("{}#producer-1", self.cfg.client_id),
            client_id: self.cfg.client_id.clone(),
            age: now.saturating_duration_since(stats.created),
            msg_cnt,
            msg_size: self.pool.used() as u64,
            msg_size_max: self.cfg.buffer_memory as u64,
            tx: client.request_total,
            tx_bytes: client.outgoing_byte_total,
            rx: client.response_total,
            rx_bytes: client.incoming_byte_total,
            txmsgs: stats.topics.values().map(|t| t.send.total() as u64).sum(),
            txmsg_bytes: stats.topics.values().map(|t| t.bytes.total() as u64).sum(),
            brokers,
            topics,
        }
    }
}
