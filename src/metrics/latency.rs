//! Latency windows for the statistics document: librdkafka's `rtt` / `int_latency` objects
//! (microseconds: min, max, avg, p50, p95, p99, cnt) over the interval since the last report,
//! taken from an HDR histogram that grows for the node's life.

use hdrhistogram::Histogram;

/// librdkafka's window statistics (microseconds) over one statistics interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencyWindow {
    /// Smallest value.
    pub min: u64,
    /// Largest value.
    pub max: u64,
    /// Mean value.
    pub avg: u64,
    /// Sum of the values.
    pub sum: u64,
    /// 50th percentile.
    pub p50: u64,
    /// 75th percentile.
    pub p75: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.99th percentile.
    pub p99_99: u64,
    /// Number of values.
    pub cnt: u64,
}

impl LatencyWindow {
    /// The statistics of `h` (all zero for an empty histogram).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencyWindow::default();
        }
        LatencyWindow {
            min: h.min(),
            max: h.max(),
            avg: h.mean().round() as u64,
            sum: (h.mean() * h.len() as f64).round() as u64,
            p50: h.value_at_quantile(0.50),
            p75: h.value_at_quantile(0.75),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p99_99: h.value_at_quantile(0.9999),
            cnt: h.len(),
        }
    }
}

impl LatencyWindow {
    /// Writes the window as librdkafka's window object under `key`.
    pub(crate) fn write(&self, w: &mut super::JsonWriter, key: &str) {
        w.object(key)
            .uint("min", self.min)
            .uint("max", self.max)
            .uint("avg", self.avg)
            .uint("sum", self.sum)
            .uint("p50", self.p50)
            .uint("p75", self.p75)
            .uint("p90", self.p90)
            .uint("p95", self.p95)
            .uint("p99", self.p99)
            .uint("p99_99", self.p99_99)
            .uint("cnt", self.cnt)
            .end_object();
    }
}

/// A histogram that grows for a node's life plus the copy taken at the last report, so one
/// report covers exactly the values recorded since the previous one.
#[derive(Debug, Clone)]
pub(crate) struct IntervalHistogram {
    last: Option<Histogram<u64>>,
}

impl IntervalHistogram {
    pub(crate) fn new() -> Self {
        IntervalHistogram { last: None }
    }

    /// The window of values `total` gained since the last call; remembers `total` for the next.
    pub(crate) fn window(&mut self, total: &Histogram<u64>) -> LatencyWindow {
        let mut delta = total.clone();
        if let Some(last) = &self.last {
            if delta.subtract(last).is_err() {
                // `total` was replaced by a smaller histogram: report it whole.
                delta = total.clone();
            }
        }
        self.last = Some(total.clone());
        LatencyWindow::of(&delta)
    }
}

/// A histogram of microseconds, 1 µs to 60 s, two significant digits (the node latency bounds).
pub(crate) fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2)
        .unwrap_or_else(|_| Histogram::new(2).expect("2 significant digits are valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_windows_cover_only_new_values() {
        let mut h = micros_histogram();
        let mut iv = IntervalHistogram::new();
        h.record(100).unwrap();
        h.record(200).unwrap();
        let w = iv.window(&h);
        assert_eq!((w.cnt, w.min, w.avg), (2, 100, 150));
        h.record(250).unwrap();
        let w = iv.window(&h);
        assert_eq!((w.cnt, w.min, w.max, w.p99), (1, 250, 250, 250));
        assert_eq!(iv.window(&h), LatencyWindow::default());
    }
}
