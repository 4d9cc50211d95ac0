//! Measurement: the latency histogram, the run window, and the result of one run.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::proto::PREFIX;

/// What one client run does: the closed-loop shape and its timing.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Active connections (C).
    pub conns: usize,
    /// Requests kept in flight on each connection (W).
    pub inflight: usize,
    /// Request payload size S.
    pub size: usize,
    /// Response payload size R.
    pub resp_size: usize,
    /// Time before measuring.
    pub warmup: Duration,
    /// Measuring time (an upper bound when `count` is set).
    pub duration: Duration,
    /// Stop after this many measured responses.
    pub count: Option<u64>,
    /// Idle connections held open besides the active ones.
    pub idle: usize,
}

/// The time window of a run: warm-up from `start`, measurement from `warm_end` to `end`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// When the closed loop started (all connections up).
    pub start: Instant,
    /// When measurement begins.
    pub warm_end: Instant,
    /// When measurement ends (and no more requests are sent).
    pub end: Instant,
}

impl Window {
    /// The window of `w` starting now.
    pub fn starting_now(w: &Workload) -> Self {
        let start = Instant::now();
        let warm_end = start + w.warmup;
        Window {
            start,
            warm_end,
            end: warm_end + w.duration,
        }
    }
}

/// Latencies and counters of (part of) a run.
///
/// Consecutive responses with the same send and arrival instants (a batch sent together and
/// answered in one poll) have the same latency: they are counted as a run and recorded into the
/// histogram once per run (`record_n`), so the histogram holds exactly what one record per
/// response would give. Summarising and merging fold in the pending run.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latencies in nanoseconds, except the pending run.
    hist: Histogram<u64>,
    /// The pending run: what its responses share, their latency in ns, and its length.
    run: Option<(RunKey, u64)>,
    run_len: u64,
    /// Responses measured inside the window.
    pub measured: u64,
    /// Errors: bad or mismatched responses, failed requests, lost connections, connect failures.
    pub errors: u64,
    /// When the last measured response arrived.
    pub last: Option<Instant>,
}

/// What the responses of a pending run share: the same send and arrival instants, or the same
/// latency as their request layer measured it.
#[derive(Debug, Clone, Copy)]
enum RunKey {
    Instants(Instant, Instant),
    Latency(Duration),
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder (1 ns .. 120 s, 3 significant digits).
    pub fn new() -> Self {
        Recorder {
            hist: Histogram::new_with_bounds(1, 120_000_000_000, 3)
                .expect("valid histogram bounds"),
            run: None,
            run_len: 0,
            measured: 0,
            errors: 0,
            last: None,
        }
    }

    /// Records one response that arrived at `now` for a request sent at `sent`. Inlined into the
    /// closed loop's per-response path, where it is mostly a comparison and two increments.
    #[inline(always)]
    pub fn record(&mut self, sent: Instant, now: Instant) {
        match self.run {
            Some((RunKey::Instants(s, n), _)) if s == sent && n == now => self.run_len += 1,
            _ => self.start_run(
                RunKey::Instants(sent, now),
                now.saturating_duration_since(sent),
            ),
        }
        self.measured += 1;
        self.last = Some(now);
    }

    /// Records one response that arrived at `now` with the `latency` its request layer measured
    /// (from the send to `now`); as [`record`](Self::record) otherwise.
    #[inline(always)]
    pub fn record_latency(&mut self, latency: Duration, now: Instant) {
        match self.run {
            Some((RunKey::Latency(l), _)) if l == latency => self.run_len += 1,
            _ => self.start_run(RunKey::Latency(latency), latency),
        }
        self.measured += 1;
        self.last = Some(now);
    }

    /// Records the pending run and starts a new one of `latency`.
    fn start_run(&mut self, key: RunKey, latency: Duration) {
        self.flush();
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.run = Some((key, ns));
        self.run_len = 1;
    }

    /// Records the pending run into the histogram.
    fn flush(&mut self) {
        if let Some((_, ns)) = self.run.take() {
            self.hist
                .saturating_record_n(ns, std::mem::take(&mut self.run_len));
        }
    }

    /// Adds `other` into this recorder.
    pub fn merge(&mut self, other: &Recorder) {
        self.flush();
        // Same bounds on both sides: addition cannot fail.
        let _ = self.hist.add(&other.hist);
        if let Some((_, ns)) = other.run {
            self.hist.saturating_record_n(ns, other.run_len);
        }
        self.measured += other.measured;
        self.errors += other.errors;
        self.last = match (self.last, other.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// The result of one run of one implementation. The client prints it as one JSON line; `cdf` is
/// dropped from the lines printed for `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Implementation name: tokio-mt, tokio-ct, mqnet.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Active connections.
    pub conns: usize,
    /// Requests in flight per connection.
    pub inflight: usize,
    /// Request payload size.
    pub size: usize,
    /// Response payload size.
    pub resp_size: usize,
    /// Idle connections held open.
    pub idle: usize,
    /// CPU both processes were pinned to, if any.
    #[serde(default)]
    pub pinned_cpu: Option<usize>,
    /// CPUs the harness could use.
    #[serde(default)]
    pub cores: usize,
    /// Responses per second in the measurement window.
    pub rps: f64,
    /// Wire bytes per second, both directions, in MB (10^6 bytes).
    pub mbps: f64,
    /// Latency percentiles and maximum, in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Errors counted during the run.
    pub errors: u64,
    /// Responses measured.
    pub requests: u64,
    /// Length of the measurement window in seconds.
    pub seconds: f64,
    /// For mqnet: the request layer its client ran on (`selector` or `network-client`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqnet_client: Option<String>,
    /// Latency CDF points: (latency in µs, fraction of responses at or below it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdf: Vec<(f64, f64)>,
}

/// Quantiles sampled for the CDF plot.
fn cdf_quantiles() -> impl Iterator<Item = f64> {
    (0..=98)
        .map(|i| f64::from(i) / 100.0)
        .chain([0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0])
}

/// The value at each of [`cdf_quantiles`] (ascending), in one pass over the recorded buckets
/// (a `value_at_quantile` per point would walk the histogram once per point): for quantile `q`,
/// the value of the first bucket where the running count reaches `q` of the total (at least one
/// value). Empty for an empty histogram.
fn cdf_points(h: &Histogram<u64>) -> Vec<(u64, f64)> {
    let total = h.len();
    let mut points = Vec::new();
    if total == 0 {
        return points;
    }
    let mut quantiles = cdf_quantiles().peekable();
    let mut seen = 0u64;
    for v in h.iter_recorded() {
        seen += v.count_since_last_iteration();
        while let Some(&q) = quantiles.peek() {
            let needed = ((q * total as f64).ceil() as u64).max(1);
            if seen < needed {
                break;
            }
            points.push((v.value_iterated_to(), q));
            quantiles.next();
        }
    }
    // Rounding can leave the top quantiles unreached by a hair: they are the maximum.
    points.extend(quantiles.map(|q| (h.max(), q)));
    points
}

impl RunResult {
    /// Summarises `rec`, measured over `window`, for implementation `name` and workload `w`.
    pub fn from_recorder(name: &str, w: &Workload, rec: &mut Recorder, window: &Window) -> Self {
        // In count mode the window closes at the last measured response.
        let end = match (w.count, rec.last) {
            (Some(_), Some(last)) => last.min(window.end),
            _ => window.end,
        };
        let seconds = end.saturating_duration_since(window.warm_end).as_secs_f64();
        let rps = if seconds > 0.0 {
            rec.measured as f64 / seconds
        } else {
            0.0
        };
        let per_request = (w.size + PREFIX + w.resp_size + PREFIX) as f64;
        let us = |ns: u64| ns as f64 / 1000.0;
        rec.flush();
        let h = &rec.hist;
        let (p50, p99, p999, max) = if h.is_empty() {
            (0.0, 0.0, 0.0, 0.0)
        } else {
            (
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                us(h.value_at_quantile(0.999)),
                us(h.max()),
            )
        };
        let cdf = cdf_points(h).into_iter().map(|(v, q)| (us(v), q)).collect();
        RunResult {
            implementation: name.to_string(),
            conns: w.conns,
            inflight: w.inflight,
            size: w.size,
            resp_size: w.resp_size,
            idle: w.idle,
            pinned_cpu: None,
            cores: 0,
            rps,
            mbps: rps * per_request / 1e6,
            p50_us: p50,
            p99_us: p99,
            p999_us: p999,
            max_us: max,
            errors: rec.errors,
            requests: rec.measured,
            seconds,
            mqnet_client: None,
            cdf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_pass_cdf_agrees_with_value_at_quantile_on_skewed_data() {
        for (n, spread) in [(1u64, 1u64), (7, 3), (10_000, 997), (100_003, 1_000_003)] {
            let mut h = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3).expect("bounds");
            for i in 1..=n {
                // A long tail: most values small, a few large.
                let v = 1 + (i * i) % spread + if i % 101 == 0 { i * 1000 } else { 0 };
                h.record(v).expect("in bounds");
            }
            let points = cdf_points(&h);
            assert_eq!(points.len(), cdf_quantiles().count());
            for (v, q) in points {
                assert_eq!(v, h.value_at_quantile(q), "n = {n}, q = {q}");
            }
        }
    }

    #[test]
    fn summary_of_a_known_histogram() {
        let w = Workload {
            conns: 1,
            inflight: 1,
            size: 100,
            resp_size: 16,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
            count: None,
            idle: 0,
        };
        let window = Window::starting_now(&w);
        let mut rec = Recorder::new();
        for i in 1..=1000u64 {
            let sent = window.start;
            rec.record(sent, sent + Duration::from_micros(i));
        }
        let r = RunResult::from_recorder("x", &w, &mut rec, &window);
        assert_eq!(r.requests, 1000);
        assert!((r.rps - 500.0).abs() < 1e-9);
        assert!((r.p50_us - 500.0).abs() < 1.0, "{}", r.p50_us);
        assert!((r.max_us - 1000.0).abs() < 1.0);
        assert!((r.mbps - 500.0 * 124.0 / 1e6).abs() < 1e-9);
        assert_eq!(r.cdf.last().map(|p| p.1), Some(1.0));
        // The one-pass CDF agrees with the histogram's own quantiles.
        let h = &rec.hist;
        assert_eq!(r.cdf.len(), cdf_quantiles().count());
        for (v, q) in cdf_points(h) {
            assert_eq!(v, h.value_at_quantile(q), "q = {q}");
        }
        let mut other = Recorder::new();
        other.errors = 3;
        rec.merge(&other);
        assert_eq!(rec.errors, 3);
    }
}
