//! Per-node request metrics.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

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
    latency_sum: Duration,
    /// Largest request latency recorded.
    pub latency_max: Duration,
    /// Latency histogram in microseconds.
    pub latency_us: Histogram<u64>,
    /// The run of equal latencies not yet folded in: its latency and length.
    run_latency: Duration,
    run_len: u32,
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
            authentication_failure: None,
            latency_sum: Duration::ZERO,
            latency_max: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)
                .unwrap_or_else(|_| Histogram::new(2).expect("2 significant digits are valid")),
            run_latency: Duration::ZERO,
            run_len: 0,
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
        self.latency_sum = self.latency_sum.saturating_add(latency.saturating_mul(n));
        self.latency_max = self.latency_max.max(latency);
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency_us.saturating_record_n(us, u64::from(n));
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
        assert_eq!(m.latency_sum, us(seq.iter().sum()));
    }
}
