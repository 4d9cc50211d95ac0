//! Per-node request metrics.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Request and connection counters of one node, with a latency histogram (microseconds, 1 µs to
/// 60 s, two significant digits). Recording allocates nothing.
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
    latency_sum: Duration,
    /// Largest request latency recorded.
    pub latency_max: Duration,
    /// Latency histogram in microseconds.
    pub latency_us: Histogram<u64>,
}

impl NodeMetrics {
    pub(crate) fn new(now: Instant) -> Self {
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
            latency_sum: Duration::ZERO,
            latency_max: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)
                .unwrap_or_else(|_| Histogram::new(2).expect("2 significant digits are valid")),
        }
    }

    pub(crate) fn record_latency(&mut self, latency: Duration) {
        self.latency_sum += latency;
        self.latency_max = self.latency_max.max(latency);
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency_us.saturating_record(us);
    }

    /// Average latency of responses so far.
    pub fn latency_avg(&self) -> Duration {
        if self.responses == 0 {
            Duration::ZERO
        } else {
            self.latency_sum / u32::try_from(self.responses).unwrap_or(u32::MAX)
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
