//! Per-node request metrics, their windowed rates, and the client's snapshot
//! ([`ClientMetrics`], from [`NetworkClient::metrics`](super::NetworkClient::metrics)).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::connection_states::ConnectionState;
use super::node::NodeId;
use crate::metrics::{CounterWindows, Kind, MetricConfig, Sampled};
use crate::net::SelectorMetrics;

/// Request and connection counters of one node, with a latency histogram (microseconds, 1 µs to
/// 60 s, two significant digits). Recording allocates nothing.
///
/// Latencies are recorded in runs: consecutive equal latencies (requests sent in the same poll
/// and answered in the same poll) are counted and folded into the histogram, sum and maximum once
/// per run. The client folds every run in before its `poll` returns, so between polls the fields
/// are exact.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    since: Instant,
    /// Requests handed to the Selector.
    pub requests_sent: u64,
    /// Requests completed with a response (or `Sent`).
    pub responses: u64,
    /// Requests completed as `TimedOut`.
    pub timeouts: u64,
    /// Requests completed as `Disconnected`.
    pub disconnects: u64,
    /// Responses with an unknown correlation id, dropped (unordered mode).
    pub unknown_correlation_ids: u64,
    /// Connection attempts started.
    pub connect_attempts: u64,
    /// Connections that reached Ready.
    pub connections_created: u64,
    /// Connections closed after the TCP connection was established (Handshaking or Ready). Failed
    /// and aborted attempts are not counted here: they are `connect_attempts - connections_created`
    /// less any attempt still in progress.
    pub connections_closed: u64,
    /// Why the last connection attempt failed authentication (a rejected handshake, a failed TLS
    /// handshake); cleared when the node becomes Ready. Kafka reports this to callers as an
    /// `AuthenticationException` rather than retrying silently.
    pub authentication_failure: Option<super::DisconnectCause>,
    /// In-band re-authentications that succeeded (KIP-368: the session renewed on the same
    /// connection).
    pub reauthentications: u64,
    /// Sum of the latencies recorded, in nanoseconds.
    latency_sum_ns: u128,
    /// Largest request latency recorded.
    pub latency_max: Duration,
    /// Latency histogram in microseconds.
    pub latency_us: Histogram<u64>,
    /// Bytes of requests handed to the transport, length prefixes included (Kafka's
    /// `outgoing-byte-total` of the node).
    pub bytes_sent: u64,
    /// Bytes of responses received, length prefixes included (`incoming-byte-total`).
    pub bytes_received: u64,
    /// The run of equal latencies not yet folded in: its latency and length.
    run_latency: Duration,
    run_len: u32,
    /// Latencies folded in since the last [`observe`](Self::observe): sum and max (µs), count.
    pending: (f64, u64, f64),
    window: NodeWindow,
}

/// The counters a poll moved, summed into the client's window.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Delta {
    requests: u64,
    responses: u64,
    bytes_out: u64,
    bytes_in: u64,
    created: u64,
    closed: u64,
}

/// A node's windowed stats and the totals at the last observation.
#[derive(Debug, Clone)]
struct NodeWindow {
    /// Fed from `requests_sent`, `responses`, `bytes_sent`, `bytes_received`, in that order.
    counters: CounterWindows<4>,
    latency_us: Sampled,
    last: (u64, u64, u64, u64, u64, u64),
}

/// The node window's counters, in [`NodeWindow::counters`]' order.
const NODE_REQUESTS: usize = 0;
const NODE_RESPONSES: usize = 1;
const NODE_BYTES_OUT: usize = 2;
const NODE_BYTES_IN: usize = 3;

impl NodeWindow {
    fn new(cfg: MetricConfig) -> Self {
        NodeWindow {
            counters: CounterWindows::new(
                cfg,
                [Kind::Events, Kind::Events, Kind::Amount, Kind::Amount],
            ),
            latency_us: Sampled::new(cfg),
            last: (0, 0, 0, 0, 0, 0),
        }
    }
}

impl NodeMetrics {
    #[cfg(test)]
    pub(crate) fn new(now: Instant) -> Self {
        Self::with_config(now, MetricConfig::default())
    }

    pub(crate) fn with_config(now: Instant, cfg: MetricConfig) -> Self {
        NodeMetrics {
            since: now,
            requests_sent: 0,
            responses: 0,
            timeouts: 0,
            disconnects: 0,
            unknown_correlation_ids: 0,
            connect_attempts: 0,
            connections_created: 0,
            connections_closed: 0,
            authentication_failure: None,
            reauthentications: 0,
            latency_sum_ns: 0,
            latency_max: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)
                .unwrap_or_else(|_| Histogram::new(2).expect("2 significant digits are valid")),
            bytes_sent: 0,
            bytes_received: 0,
            run_latency: Duration::ZERO,
            run_len: 0,
            pending: (0.0, 0, 0.0),
            window: NodeWindow::new(cfg),
        }
    }

    /// Folds pending latencies in and moves the windows to the counters' values at `now` (once
    /// per poll); returns what changed since the last call. Allocates nothing.
    #[inline]
    pub(crate) fn observe(&mut self, now: Instant) -> Delta {
        self.flush_latencies();
        let w = &mut self.window;
        let (sum, n, max) = std::mem::replace(&mut self.pending, (0.0, 0, 0.0));
        w.latency_us.record_n(now, sum, n, max);
        let cur = (
            self.requests_sent,
            self.responses,
            self.bytes_sent,
            self.bytes_received,
            self.connections_created,
            self.connections_closed,
        );
        if cur == w.last {
            return Delta::default();
        }
        let d = Delta {
            requests: cur.0 - w.last.0,
            responses: cur.1 - w.last.1,
            bytes_out: cur.2 - w.last.2,
            bytes_in: cur.3 - w.last.3,
            created: cur.4 - w.last.4,
            closed: cur.5 - w.last.5,
        };
        w.last = cur;
        w.counters.observe(now, [cur.0, cur.1, cur.2, cur.3]);
        d
    }

    /// The node's snapshot at `now` (see [`NodeSnapshot`]).
    pub(crate) fn snapshot(
        &self,
        node: NodeId,
        state: ConnectionState,
        in_flight: usize,
        waiting: usize,
        now: Instant,
    ) -> NodeSnapshot {
        let w = &self.window;
        NodeSnapshot {
            node,
            state,
            requests_in_flight: in_flight,
            requests_waiting: waiting,
            request_total: self.requests_sent,
            response_total: self.responses,
            request_rate: w.counters.event_rate(NODE_REQUESTS, now),
            response_rate: w.counters.event_rate(NODE_RESPONSES, now),
            outgoing_byte_total: self.bytes_sent,
            incoming_byte_total: self.bytes_received,
            outgoing_byte_rate: w.counters.rate(NODE_BYTES_OUT, now),
            incoming_byte_rate: w.counters.rate(NODE_BYTES_IN, now),
            request_latency_avg_ms: w.latency_us.avg(now) / 1000.0,
            request_latency_max_ms: w.latency_us.max(now) / 1000.0,
            request_latency_p50_ms: quantile_ms(&self.latency_us, 0.50),
            request_latency_p95_ms: quantile_ms(&self.latency_us, 0.95),
            request_latency_p99_ms: quantile_ms(&self.latency_us, 0.99),
            timeouts: self.timeouts,
            connects: self.connect_attempts,
            connections_created: self.connections_created,
            disconnects: self.connections_closed,
            reauthentications: self.reauthentications,
        }
    }

    /// Records one latency: extends the current run when it is equal to the run's, else folds the
    /// run in and starts a new one. [`flush_latencies`](Self::flush_latencies) folds in the last.
    #[inline]
    pub(crate) fn record_latency(&mut self, latency: Duration) {
        if self.run_len > 0 && latency == self.run_latency && self.run_len < u32::MAX {
            self.run_len += 1;
            return;
        }
        self.flush_latencies();
        self.run_latency = latency;
        self.run_len = 1;
    }

    /// Folds the pending run of equal latencies into the histogram, sum and maximum.
    #[inline]
    pub(crate) fn flush_latencies(&mut self) {
        let n = std::mem::take(&mut self.run_len);
        if n == 0 {
            return;
        }
        let latency = self.run_latency;
        if latency > self.latency_max {
            self.latency_max = latency;
        }
        // Nanoseconds in a u64 cover 584 years; integer arithmetic keeps the fold cheap.
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_ns += u128::from(ns) * u128::from(n);
        self.latency_us
            .saturating_record_n((ns / 1000).max(1), u64::from(n));
        let exact_us = ns as f64 / 1e3;
        let p = &mut self.pending;
        p.0 += exact_us * f64::from(n);
        p.1 += u64::from(n);
        if exact_us > p.2 {
            p.2 = exact_us;
        }
    }

    /// Average latency of responses so far.
    pub fn latency_avg(&self) -> Duration {
        if self.responses == 0 {
            Duration::ZERO
        } else {
            let avg = self.latency_sum_ns / u128::from(self.responses);
            Duration::from_nanos(u64::try_from(avg).unwrap_or(u64::MAX))
        }
    }

    /// Requests sent per second since the node was added.
    pub fn request_rate(&self, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.since).as_secs_f64();
        if secs == 0.0 {
            0.0
        } else {
            self.requests_sent as f64 / secs
        }
    }
}

/// A quantile of a µs histogram in milliseconds (NaN when empty).
fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// One node's metrics (Kafka's `producer-node-metrics` / `consumer-node-metrics` group, tag
/// `node-id`), from [`NetworkClient::metrics`](super::NetworkClient::metrics). Rates are over the
/// client's sample window (`metrics.sample.window.ms` × `metrics.num.samples`); latencies in
/// milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    /// The node.
    pub node: NodeId,
    /// Its connection state.
    pub state: ConnectionState,
    /// Requests sent and not yet answered (librdkafka's `waitresp_cnt`).
    pub requests_in_flight: usize,
    /// Requests waiting to be handed to the transport (librdkafka's `outbuf_cnt`).
    pub requests_waiting: usize,
    /// `request-total`: requests sent.
    pub request_total: u64,
    /// `response-total`: responses received (or requests completed without one).
    pub response_total: u64,
    /// `request-rate`: requests sent per second.
    pub request_rate: f64,
    /// `response-rate`: responses received per second.
    pub response_rate: f64,
    /// `outgoing-byte-total`: bytes of requests sent.
    pub outgoing_byte_total: u64,
    /// `incoming-byte-total`: bytes of responses received.
    pub incoming_byte_total: u64,
    /// `outgoing-byte-rate`: bytes sent per second.
    pub outgoing_byte_rate: f64,
    /// `incoming-byte-rate`: bytes received per second.
    pub incoming_byte_rate: f64,
    /// `request-latency-avg`: mean request latency in the window, ms (NaN without responses).
    pub request_latency_avg_ms: f64,
    /// `request-latency-max`: largest request latency in the window, ms (NaN without responses).
    pub request_latency_max_ms: f64,
    /// Median request latency since the node was added, ms (HDR; Kafka has only avg/max).
    pub request_latency_p50_ms: f64,
    /// 95th percentile of request latency since the node was added, ms (HDR).
    pub request_latency_p95_ms: f64,
    /// 99th percentile of request latency since the node was added, ms (HDR).
    pub request_latency_p99_ms: f64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Connection attempts started (librdkafka's `connects`).
    pub connects: u64,
    /// Connections that became ready.
    pub connections_created: u64,
    /// Established connections closed (librdkafka's `disconnects`).
    pub disconnects: u64,
    /// In-band SASL re-authentications that succeeded (KIP-368).
    pub reauthentications: u64,
}

/// The client-wide windows, fed once per poll with what the nodes' counters moved.
#[derive(Debug, Clone)]
pub(crate) struct ClientWindow {
    /// Fed from `totals`, in the order of [`ClientWindow::REQUESTS`] and its neighbours.
    counters: CounterWindows<8>,
    /// The client-wide counters: the nodes' deltas summed, then the transport's nanoseconds in
    /// the OS selector and in I/O since the first observation.
    totals: [u64; 8],
    /// The transport's `(select_time, io_time)` in nanoseconds at the first observation.
    io_base: Option<(u64, u64)>,
}

impl ClientWindow {
    const REQUESTS: usize = 0;
    const RESPONSES: usize = 1;
    const BYTES_OUT: usize = 2;
    const BYTES_IN: usize = 3;
    const CREATED: usize = 4;
    const CLOSED: usize = 5;
    const IO_WAIT_NS: usize = 6;
    const IO_NS: usize = 7;

    pub(crate) fn new(cfg: MetricConfig) -> Self {
        use Kind::{Amount, Events};
        ClientWindow {
            counters: CounterWindows::new(
                cfg,
                [
                    Events, Events, Amount, Amount, Events, Events, Amount, Amount,
                ],
            ),
            totals: [0; 8],
            io_base: None,
        }
    }

    /// Adds one node's delta to `acc`.
    #[inline]
    pub(crate) fn add(acc: &mut Delta, d: Delta) {
        acc.requests += d.requests;
        acc.responses += d.responses;
        acc.bytes_out += d.bytes_out;
        acc.bytes_in += d.bytes_in;
        acc.created += d.created;
        acc.closed += d.closed;
    }

    /// Records one poll's movement at `now`; `io` is the transport's own counters, if any.
    #[inline]
    pub(crate) fn observe(&mut self, now: Instant, d: Delta, io: Option<SelectorMetrics>) {
        let t = &mut self.totals;
        t[Self::REQUESTS] += d.requests;
        t[Self::RESPONSES] += d.responses;
        t[Self::BYTES_OUT] += d.bytes_out;
        t[Self::BYTES_IN] += d.bytes_in;
        t[Self::CREATED] += d.created;
        t[Self::CLOSED] += d.closed;
        if let Some(io) = io {
            let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            let (wait, work) = (ns(io.select_time), ns(io.io_time));
            let (wait0, work0) = *self.io_base.get_or_insert((wait, work));
            t[Self::IO_WAIT_NS] = wait.saturating_sub(wait0);
            t[Self::IO_NS] = work.saturating_sub(work0);
        }
        self.counters.observe(now, self.totals);
    }
}

/// A [`NetworkClient`](super::NetworkClient)'s metrics at one instant: Kafka's client-wide
/// `*-metrics` group (the Selector's names) plus every node's [`NodeSnapshot`]. Rates are per
/// second over the sample window (`metrics.sample.window.ms` × `metrics.num.samples`, see
/// [`crate::metrics`]). Taking one allocates (the node list); recording does not.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientMetrics {
    /// `connection-count`: connections handshaking or ready.
    pub connection_count: u64,
    /// `connection-creation-total`: connections that became ready.
    pub connection_creation_total: u64,
    /// `connection-creation-rate`: connections made ready per second.
    pub connection_creation_rate: f64,
    /// `connection-close-total`: established connections closed.
    pub connection_close_total: u64,
    /// `connection-close-rate`: established connections closed per second.
    pub connection_close_rate: f64,
    /// `request-total`: requests sent to any node.
    pub request_total: u64,
    /// `request-rate`: requests sent per second.
    pub request_rate: f64,
    /// `response-total`: responses received.
    pub response_total: u64,
    /// `response-rate`: responses received per second.
    pub response_rate: f64,
    /// `outgoing-byte-total`: request bytes sent.
    pub outgoing_byte_total: u64,
    /// `outgoing-byte-rate`: request bytes sent per second.
    pub outgoing_byte_rate: f64,
    /// `incoming-byte-total`: response bytes received.
    pub incoming_byte_total: u64,
    /// `incoming-byte-rate`: response bytes received per second.
    pub incoming_byte_rate: f64,
    /// `io-wait-ratio`: share of time spent blocked in the OS selector, per second of window
    /// (`None` for a transport without I/O counters, e.g. the simulated network).
    pub io_wait_ratio: Option<f64>,
    /// `io-ratio`: share of time spent doing I/O outside the OS selector.
    pub io_ratio: Option<f64>,
    /// `requests-in-flight`: requests sent and not yet answered, over all nodes.
    pub requests_in_flight: usize,
    /// The transport's own counters (`None` for a transport without them).
    pub selector: Option<SelectorMetrics>,
    /// Every node, in the order they were added.
    pub nodes: Vec<NodeSnapshot>,
}

impl ClientMetrics {
    pub(crate) fn new(
        now: Instant,
        nodes: Vec<NodeSnapshot>,
        window: &ClientWindow,
        selector: Option<SelectorMetrics>,
    ) -> Self {
        let sum = |f: fn(&NodeSnapshot) -> u64| nodes.iter().map(f).sum::<u64>();
        let w = &window.counters;
        let ratio = |i: usize| w.rate(i, now) / 1e9;
        ClientMetrics {
            connection_count: nodes
                .iter()
                .filter(|n| {
                    matches!(
                        n.state,
                        ConnectionState::Ready | ConnectionState::Handshaking
                    )
                })
                .count() as u64,
            connection_creation_total: sum(|n| n.connections_created),
            connection_creation_rate: w.event_rate(ClientWindow::CREATED, now),
            connection_close_total: sum(|n| n.disconnects),
            connection_close_rate: w.event_rate(ClientWindow::CLOSED, now),
            request_total: sum(|n| n.request_total),
            request_rate: w.event_rate(ClientWindow::REQUESTS, now),
            response_total: sum(|n| n.response_total),
            response_rate: w.event_rate(ClientWindow::RESPONSES, now),
            outgoing_byte_total: sum(|n| n.outgoing_byte_total),
            outgoing_byte_rate: w.rate(ClientWindow::BYTES_OUT, now),
            incoming_byte_total: sum(|n| n.incoming_byte_total),
            incoming_byte_rate: w.rate(ClientWindow::BYTES_IN, now),
            io_wait_ratio: selector.map(|_| ratio(ClientWindow::IO_WAIT_NS)),
            io_ratio: selector.map(|_| ratio(ClientWindow::IO_NS)),
            requests_in_flight: nodes.iter().map(|n| n.requests_in_flight).sum(),
            selector,
            nodes,
        }
    }

    /// The node's snapshot, if the node is known.
    pub fn node(&self, node: NodeId) -> Option<&NodeSnapshot> {
        self.nodes.iter().find(|n| n.node == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_equal_latencies_fold_in_as_single_records_would() {
        let now = Instant::now();
        let mut m = NodeMetrics::new(now);
        let mut expect = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
        let us = |n: u64| Duration::from_micros(n);
        let seq = [5, 5, 5, 7, 7, 5, 1, 1, 1, 1, 900, 0];
        for &v in &seq {
            m.record_latency(us(v));
            expect.saturating_record(v.max(1));
        }
        m.flush_latencies();
        m.flush_latencies(); // idempotent
        assert_eq!(m.latency_us, expect);
        assert_eq!(m.latency_max, us(900));
        assert_eq!(m.latency_sum_ns, us(seq.iter().sum()).as_nanos());
    }
}
