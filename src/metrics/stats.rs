//! The `statistics.interval.ms` callback: a JSON document shaped like librdkafka's
//! `STATISTICS.md`, with the fields that apply to mqnet's producer.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{JsonWriter, LatencyWindow};

/// The statistics callback: called on the producer's network thread every
/// `statistics.interval.ms` with the JSON document (librdkafka's `stats_cb`). Keep it short: it
/// runs on the thread that drives the network.
#[derive(Clone)]
pub struct StatsCallback(pub Arc<dyn Fn(&str) + Send + Sync>);

impl StatsCallback {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        StatsCallback(Arc::new(f))
    }

    pub(crate) fn call(&self, json: &str) {
        (self.0)(json)
    }
}

impl fmt::Debug for StatsCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatsCallback")
    }
}

impl PartialEq for StatsCallback {
    /// The same callback (the same `Arc`).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// When the next statistics report is due.
#[derive(Debug, Clone)]
pub(crate) struct StatsTimer {
    interval: Duration,
    next: Option<Instant>,
}

impl StatsTimer {
    /// Reports every `interval` from `now` (never for a zero interval).
    pub(crate) fn new(interval: Duration, now: Instant) -> Self {
        StatsTimer {
            interval,
            next: (!interval.is_zero()).then(|| now + interval),
        }
    }

    /// When the next report is due.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a report is due at `now`; if so the next is scheduled one interval later (past
    /// `now`, skipping missed ones).
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        let Some(t) = self.next else { return false };
        if now < t {
            return false;
        }
        let mut n = t + self.interval;
        if n <= now {
            n = now + self.interval;
        }
        self.next = Some(n);
        true
    }
}

/// One broker's row (librdkafka's `brokers.<name>`).
#[derive(Debug, Clone, Default)]
pub(crate) struct BrokerRow {
    pub(crate) name: String,
    pub(crate) nodeid: i32,
    pub(crate) nodename: String,
    pub(crate) source: &'static str,
    pub(crate) state: &'static str,
    pub(crate) outbuf_cnt: u64,
    pub(crate) waitresp_cnt: u64,
    pub(crate) tx: u64,
    pub(crate) txbytes: u64,
    pub(crate) req_timeouts: u64,
    pub(crate) rx: u64,
    pub(crate) rxbytes: u64,
    pub(crate) connects: u64,
    pub(crate) disconnects: u64,
    pub(crate) int_latency: LatencyWindow,
    pub(crate) rtt: LatencyWindow,
}

/// One partition's row (librdkafka's `topics.<t>.partitions.<p>`).
#[derive(Debug, Clone, Default)]
pub(crate) struct PartitionRow {
    pub(crate) partition: i32,
    pub(crate) leader: i32,
    pub(crate) msgq_cnt: u64,
    pub(crate) msgq_bytes: u64,
    pub(crate) xmit_msgq_cnt: u64,
    pub(crate) xmit_msgq_bytes: u64,
    pub(crate) msgs_inflight: u64,
    pub(crate) txmsgs: u64,
    pub(crate) txbytes: u64,
}

/// One topic's row.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopicRow {
    pub(crate) topic: String,
    pub(crate) partitions: Vec<PartitionRow>,
}

/// The whole document.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatsDoc {
    pub(crate) name: String,
    pub(crate) client_id: String,
    pub(crate) age: Duration,
    pub(crate) msg_cnt: u64,
    pub(crate) msg_size: u64,
    pub(crate) msg_size_max: u64,
    pub(crate) tx: u64,
    pub(crate) tx_bytes: u64,
    pub(crate) rx: u64,
    pub(crate) rx_bytes: u64,
    pub(crate) txmsgs: u64,
    pub(crate) txmsg_bytes: u64,
    pub(crate) brokers: Vec<BrokerRow>,
    pub(crate) topics: Vec<TopicRow>,
}

impl StatsDoc {
    /// The JSON text. `ts` is microseconds on a monotonic clock (the producer's age, as
    /// librdkafka's `ts` is an arbitrary monotonic origin), `time` wall-clock seconds.
    pub(crate) fn to_json(&self) -> String {
        let age_us = u64::try_from(self.age.as_micros()).unwrap_or(u64::MAX);
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut w = JsonWriter::new();
        w.begin_object()
            .str("name", &self.name)
            .str("client_id", &self.client_id)
            .str("type", "producer")
            .uint("ts", age_us)
            .uint("time", time)
            .uint("age", age_us)
            .uint("replyq", 0)
            .uint("msg_cnt", self.msg_cnt)
            .uint("msg_size", self.msg_size)
            .uint("msg_size_max", self.msg_size_max)
            .uint("tx", self.tx)
            .uint("tx_bytes", self.tx_bytes)
            .uint("rx", self.rx)
            .uint("rx_bytes", self.rx_bytes)
            .uint("txmsgs", self.txmsgs)
            .uint("txmsg_bytes", self.txmsg_bytes)
            .object("brokers");
        for b in &self.brokers {
            w.object(&b.name)
                .str("name", &b.name)
                .int("nodeid", i64::from(b.nodeid))
                .str("nodename", &b.nodename)
                .str("source", b.source)
                .str("state", b.state)
                .uint("outbuf_cnt", b.outbuf_cnt)
                .uint("waitresp_cnt", b.waitresp_cnt)
                .uint("tx", b.tx)
                .uint("txbytes", b.txbytes)
                .uint("req_timeouts", b.req_timeouts)
                .uint("rx", b.rx)
                .uint("rxbytes", b.rxbytes)
                .uint("connects", b.connects)
                .uint("disconnects", b.disconnects);
            b.int_latency.write(&mut w, "int_latency");
            b.rtt.write(&mut w, "rtt");
            w.end_object();
        }
        w.end_object().object("topics");
        for t in &self.topics {
            w.object(&t.topic)
                .str("topic", &t.topic)
                .object("partitions");
            for p in &t.partitions {
                w.object(&p.partition.to_string())
                    .int("partition", i64::from(p.partition))
                    .int("broker", i64::from(p.leader))
                    .int("leader", i64::from(p.leader))
                    .uint("msgq_cnt", p.msgq_cnt)
                    .uint("msgq_bytes", p.msgq_bytes)
                    .uint("xmit_msgq_cnt", p.xmit_msgq_cnt)
                    .uint("xmit_msgq_bytes", p.xmit_msgq_bytes)
                    .uint("msgs_inflight", p.msgs_inflight)
                    .uint("txmsgs", p.txmsgs)
                    .uint("txbytes", p.txbytes)
                    .end_object();
            }
            w.end_object().end_object();
        }
        w.end_object().end_object();
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_skips_missed_reports() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = StatsTimer::new(s, t0);
        assert!(!t.due(t0));
        assert!(t.due(t0 + s));
        assert_eq!(t.next(), Some(t0 + 2 * s));
        assert!(t.due(t0 + 5 * s));
        assert_eq!(t.next(), Some(t0 + 6 * s));
        let mut off = StatsTimer::new(Duration::ZERO, t0);
        assert!(!off.due(t0 + 100 * s));
        assert_eq!(off.next(), None);
    }
}
