//! Windowed statistics with Kafka's sampling rules (`org.apache.kafka.common.metrics.stats`).
//!
//! A [`Sampled`] stat keeps at most `metrics.num.samples` samples, each covering
//! `metrics.sample.window.ms`. An event goes into the current sample unless that sample is
//! complete (its window has passed), in which case the next sample (the oldest, reset) starts at
//! the event's time. A sample older than `num.samples × window` is ignored when measuring.
//!
//! - rate = sum of the live samples' values / the window size in seconds, where the window size
//!   is `now − start of the oldest live sample`, padded up to `(num.samples − 1) × window` while
//!   fewer full windows have passed (Kafka's `Rate.windowSize`);
//! - avg = sum of values / number of events over the live samples (NaN when there is none);
//! - max = the largest value over the live samples (NaN when there is none).
//!
//! Recording is O(1) and allocates nothing: the samples are allocated once, in [`Sampled::new`].

use std::time::{Duration, Instant};

/// How windowed statistics sample: Kafka's `metrics.sample.window.ms` (30000) and
/// `metrics.num.samples` (2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricConfig {
    /// `metrics.sample.window.ms`: the span of one sample.
    pub sample_window: Duration,
    /// `metrics.num.samples`: how many samples a stat keeps (at least 1).
    pub num_samples: usize,
}

impl Default for MetricConfig {
    fn default() -> Self {
        MetricConfig {
            sample_window: Duration::from_millis(30_000),
            num_samples: 2,
        }
    }
}

impl MetricConfig {
    /// A configuration with `num_samples` samples of `sample_window` each (`num_samples` is
    /// raised to 1, a zero window to 1 ms).
    pub fn new(sample_window: Duration, num_samples: usize) -> Self {
        MetricConfig {
            sample_window: sample_window.max(Duration::from_millis(1)),
            num_samples: num_samples.max(1),
        }
    }
}

/// Where a stat's current sample ends ([`Sampled::bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// No event yet: the first one starts a sample.
    NoSample,
    /// Events from this instant on start the next sample.
    Until(Instant),
    /// The sample's end lies past the clock's range: it never completes.
    Never,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    start: Instant,
    /// `start + sample_window` (`None` past the clock's range: the sample never completes), so
    /// that recording compares two instants instead of subtracting them.
    end: Option<Instant>,
    sum: f64,
    max: f64,
    count: u64,
}

impl Sample {
    /// Adds `count` events whose values sum to `sum` and whose largest is `max`.
    fn add(&mut self, sum: f64, count: u64, max: f64) {
        self.sum += sum;
        self.count += count;
        if max > self.max {
            self.max = max;
        }
    }

    fn new(start: Instant, window: Duration) -> Self {
        Sample {
            start,
            end: start.checked_add(window),
            sum: 0.0,
            max: f64::NEG_INFINITY,
            count: 0,
        }
    }
}

/// One windowed statistic: rate, average and maximum of the values recorded, over the live
/// samples, plus an all-time total and count. See the `metrics::window` module docs for the arithmetic.
#[derive(Debug, Clone)]
pub struct Sampled {
    cfg: MetricConfig,
    samples: Vec<Sample>,
    current: usize,
    /// Events before this instant go into the current sample (`None`: there is no current sample
    /// yet, or it never completes; the slow path decides).
    open_until: Option<Instant>,
    /// The current sample's events since it was last folded into `samples[current]` and the
    /// totals: recording touches only these fields, [`fold`](Self::fold) moves them over.
    open: Acc,
    /// The totals of the folded events.
    total: f64,
    count: u64,
}

/// Events recorded into the current sample and not yet folded into it.
#[derive(Debug, Clone, Copy)]
struct Acc {
    sum: f64,
    count: u64,
    max: f64,
}

impl Acc {
    const EMPTY: Acc = Acc {
        sum: 0.0,
        count: 0,
        max: f64::NEG_INFINITY,
    };
}

impl Sampled {
    /// An empty stat sampling as `cfg` says.
    pub fn new(cfg: MetricConfig) -> Self {
        let cfg = MetricConfig::new(cfg.sample_window, cfg.num_samples);
        Sampled {
            samples: Vec::with_capacity(cfg.num_samples),
            cfg,
            current: 0,
            open_until: None,
            open: Acc::EMPTY,
            total: 0.0,
            count: 0,
        }
    }

    /// The sampling configuration.
    pub fn config(&self) -> MetricConfig {
        self.cfg
    }

    /// Records one event of `value` at `now`.
    #[inline]
    pub fn record(&mut self, now: Instant, value: f64) {
        self.record_n(now, value, 1, value);
    }

    /// Records `count` events at `now` whose values sum to `sum` and whose largest is `max`
    /// (what `count` calls of [`record`](Self::record) at `now` would do). Nothing happens for a
    /// `count` of 0.
    #[inline]
    pub fn record_n(&mut self, now: Instant, sum: f64, count: u64, max: f64) {
        if count == 0 {
            return;
        }
        // The usual case, inlined: the current sample is still open at `now`.
        if self.open_until.is_some_and(|end| now < end) {
            self.open.sum += sum;
            self.open.count += count;
            if max > self.open.max {
                self.open.max = max;
            }
            return;
        }
        self.record_n_new_sample(now, sum, count, max);
    }

    /// Moves the open events into the current sample and the totals.
    fn fold(&mut self) {
        let acc = std::mem::replace(&mut self.open, Acc::EMPTY);
        if acc.count == 0 {
            return;
        }
        self.total += acc.sum;
        self.count += acc.count;
        if let Some(s) = self.samples.get_mut(self.current) {
            s.add(acc.sum, acc.count, acc.max);
        }
    }

    /// [`record_n`](Self::record_n) when there is no sample yet, the current one is complete,
    /// or it never completes.
    #[cold]
    #[inline(never)]
    fn record_n_new_sample(&mut self, now: Instant, sum: f64, count: u64, max: f64) {
        self.fold();
        self.total += sum;
        self.count += count;
        let window = self.cfg.sample_window;
        let n = self.cfg.num_samples;
        if self.samples.is_empty() {
            self.samples.push(Sample::new(now, window));
            self.current = 0;
        } else if self.samples[self.current].end.is_some_and(|end| now >= end) {
            self.current = (self.current + 1) % n;
            if self.current >= self.samples.len() {
                self.samples.push(Sample::new(now, window));
            } else {
                self.samples[self.current] = Sample::new(now, window);
            }
        }
        let s = &mut self.samples[self.current];
        s.add(sum, count, max);
        self.open_until = s.end;
    }

    /// Where the current sample ends: the first instant an event no longer goes into it.
    pub(crate) fn bound(&self) -> Bound {
        match self.samples.get(self.current) {
            None => Bound::NoSample,
            Some(s) => s.end.map_or(Bound::Never, Bound::Until),
        }
    }

    /// The samples still live at `now` (younger than `num.samples × window`), the current one
    /// with its open events.
    fn live(&self, now: Instant) -> impl Iterator<Item = Sample> + '_ {
        self.live_with(now, 0.0, 0)
    }

    /// [`live`](Self::live) with `count` more events summing to `sum` in the current sample
    /// (events its owner has seen and not recorded yet; their maximum is not kept).
    fn live_with(&self, now: Instant, sum: f64, count: u64) -> impl Iterator<Item = Sample> + '_ {
        let expire = self.cfg.sample_window * self.cfg.num_samples as u32;
        let (current, mut open) = (self.current, self.open);
        open.sum += sum;
        open.count += count;
        self.samples
            .iter()
            .enumerate()
            .map(move |(i, s)| {
                let mut s = *s;
                if i == current {
                    s.add(open.sum, open.count, open.max);
                }
                s
            })
            .filter(move |s| now.saturating_duration_since(s.start) < expire)
    }

    /// The rate's window at `now` (Kafka's `Rate.windowSize`): from the start of the oldest live
    /// sample (`now` if none) to `now`, at least `(num.samples − 1)` full windows.
    pub fn window_size(&self, now: Instant) -> Duration {
        let oldest = self.live(now).map(|s| s.start).min().unwrap_or(now);
        let window = self.cfg.sample_window;
        let mut elapsed = now.saturating_duration_since(oldest);
        let full = (elapsed.as_nanos() / window.as_nanos()) as u64;
        let min_full = (self.cfg.num_samples - 1) as u64;
        if full < min_full {
            elapsed += window * (min_full - full) as u32;
        }
        elapsed
    }

    /// The sum of the live samples' values per second (Kafka's `Rate` over `WindowedSum`). 0
    /// when the window is empty (one sample, measured at its very start).
    pub fn rate(&self, now: Instant) -> f64 {
        self.rate_with(now, 0.0, 0)
    }

    /// [`rate`](Self::rate) with `count` events summing to `sum` added to the current sample.
    pub(crate) fn rate_with(&self, now: Instant, sum: f64, count: u64) -> f64 {
        let secs = self.window_size(now).as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        self.live_with(now, sum, count).fold(0.0, |a, s| a + s.sum) / secs
    }

    /// The number of events per second in the live samples (Kafka's `Rate` over `WindowedCount`).
    pub fn event_rate(&self, now: Instant) -> f64 {
        self.event_rate_with(now, 0.0, 0)
    }

    /// [`event_rate`](Self::event_rate) with `count` events summing to `sum` added to the
    /// current sample.
    pub(crate) fn event_rate_with(&self, now: Instant, sum: f64, count: u64) -> f64 {
        let secs = self.window_size(now).as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        self.live_with(now, sum, count)
            .fold(0.0, |a, s| a + s.count as f64)
            / secs
    }

    /// The average value of the live samples' events (Kafka's `Avg`); NaN without events.
    pub fn avg(&self, now: Instant) -> f64 {
        let (sum, count) = self
            .live(now)
            .fold((0.0, 0u64), |(s, c), x| (s + x.sum, c + x.count));
        if count == 0 {
            f64::NAN
        } else {
            sum / count as f64
        }
    }

    /// The largest value of the live samples' events (Kafka's `Max`); NaN without events.
    pub fn max(&self, now: Instant) -> f64 {
        let m = self
            .live(now)
            .filter(|s| s.count > 0)
            .map(|s| s.max)
            .fold(f64::NEG_INFINITY, f64::max);
        if m == f64::NEG_INFINITY {
            f64::NAN
        } else {
            m
        }
    }

    /// The sum of every value ever recorded (Kafka's `CumulativeSum`).
    pub fn total(&self) -> f64 {
        self.total + self.open.sum
    }

    /// How many events were ever recorded (Kafka's `CumulativeCount`).
    pub fn count(&self) -> u64 {
        self.count + self.open.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rate_pads_the_window_to_num_samples_minus_one_windows() {
        let t0 = Instant::now();
        let mut s = Sampled::new(MetricConfig::new(ms(1000), 3));
        s.record(t0, 10.0);
        // 0.5 s elapsed, padded by 2 full windows: 2.5 s.
        assert_eq!(s.window_size(t0 + ms(500)), ms(2500));
        assert_eq!(s.rate(t0 + ms(500)), 10.0 / 2.5);
        assert_eq!(s.event_rate(t0 + ms(500)), 1.0 / 2.5);
    }

    #[test]
    fn samples_roll_and_expire() {
        let t0 = Instant::now();
        let mut s = Sampled::new(MetricConfig::new(ms(1000), 2));
        s.record(t0, 4.0);
        s.record(t0 + ms(999), 6.0); // same sample
        s.record(t0 + ms(1000), 1.0); // second sample
        assert_eq!(s.avg(t0 + ms(1500)), 11.0 / 3.0);
        assert_eq!(s.max(t0 + ms(1500)), 6.0);
        // 1.5 s since the oldest; one full window already: no padding.
        assert_eq!(s.rate(t0 + ms(1500)), 11.0 / 1.5);
        // The third sample replaces the first.
        s.record(t0 + ms(2000), 2.0);
        assert_eq!(s.avg(t0 + ms(2000)), 1.5);
        assert_eq!(s.max(t0 + ms(2000)), 2.0);
        assert_eq!(s.rate(t0 + ms(2500)), 3.0 / 1.5);
        // Everything expires after 2 windows without events.
        assert!(s.avg(t0 + ms(4000)).is_nan());
        assert!(s.max(t0 + ms(4000)).is_nan());
        assert_eq!(s.rate(t0 + ms(4000)), 0.0);
        assert!(
            s.rate(t0 + ms(4000)).is_sign_positive(),
            "printed as 0, not -0"
        );
        assert_eq!(s.total(), 13.0);
        assert_eq!(s.count(), 4);
    }

    #[test]
    fn record_n_is_n_records() {
        let t0 = Instant::now();
        let mut a = Sampled::new(MetricConfig::default());
        let mut b = Sampled::new(MetricConfig::default());
        for v in [3.0, 5.0, 1.0] {
            a.record(t0, v);
        }
        b.record_n(t0, 9.0, 3, 5.0);
        let at = t0 + ms(100);
        assert_eq!(a.avg(at), b.avg(at));
        assert_eq!(a.max(at), b.max(at));
        assert_eq!(a.rate(at), b.rate(at));
        assert_eq!(a.event_rate(at), b.event_rate(at));
        b.record_n(t0, 0.0, 0, 0.0);
        assert_eq!(b.count(), 3);
    }

    #[test]
    fn one_sample_measured_at_its_start_has_rate_zero() {
        let t0 = Instant::now();
        let mut s = Sampled::new(MetricConfig::new(ms(1000), 1));
        s.record(t0, 5.0);
        assert_eq!(s.rate(t0), 0.0);
        assert_eq!(s.rate(t0 + ms(500)), 10.0);
    }

    /// Kafka's sampling written the plain way (every event into its sample at once), the
    /// model the folded recording must match.
    struct Model {
        cfg: MetricConfig,
        samples: Vec<(Instant, f64, u64, f64)>,
        current: usize,
    }

    impl Model {
        fn record(&mut self, now: Instant, sum: f64, count: u64, max: f64) {
            if count == 0 {
                return;
            }
            let w = self.cfg.sample_window;
            if self.samples.is_empty() {
                self.samples.push((now, 0.0, 0, f64::NEG_INFINITY));
            } else if now >= self.samples[self.current].0 + w {
                self.current = (self.current + 1) % self.cfg.num_samples;
                let fresh = (now, 0.0, 0, f64::NEG_INFINITY);
                if self.current == self.samples.len() {
                    self.samples.push(fresh);
                } else {
                    self.samples[self.current] = fresh;
                }
            }
            let s = &mut self.samples[self.current];
            s.1 += sum;
            s.2 += count;
            s.3 = s.3.max(max);
        }

        fn live(&self, now: Instant) -> Vec<(Instant, f64, u64, f64)> {
            let expire = self.cfg.sample_window * self.cfg.num_samples as u32;
            let live = self.samples.iter().copied();
            live.filter(|s| now.saturating_duration_since(s.0) < expire)
                .collect()
        }
    }

    proptest::proptest! {
        /// Recording folded lazily gives what recording each event into its sample gives,
        /// read at any time (values are small integers, so the sums are exact either way).
        #[test]
        fn folded_recording_matches_the_plain_model(
            window_ms in 1u64..50,
            num in 1usize..4,
            steps in proptest::collection::vec((0u64..40, 0u64..4, 0u32..100, proptest::bool::ANY), 1..80),
        ) {
            let t0 = Instant::now();
            let cfg = MetricConfig::new(ms(window_ms), num);
            let mut s = Sampled::new(cfg);
            let mut m = Model { cfg, samples: Vec::new(), current: 0 };
            let (mut t, mut total, mut count) = (t0, 0.0, 0u64);
            for (dt, n, v, read) in steps {
                t += ms(dt);
                let v = f64::from(v);
                s.record_n(t, v * n as f64, n, v);
                m.record(t, v * n as f64, n, v);
                total += v * n as f64;
                count += n;
                if read {
                    let at = t + ms(dt / 2);
                    let live = m.live(at);
                    let sum: f64 = live.iter().map(|x| x.1).sum();
                    let events: u64 = live.iter().map(|x| x.2).sum();
                    let max = live.iter().filter(|x| x.2 > 0).map(|x| x.3).fold(f64::NEG_INFINITY, f64::max);
                    let avg = s.avg(at);
                    if events == 0 {
                        proptest::prop_assert!(avg.is_nan() && s.max(at).is_nan());
                    } else {
                        proptest::prop_assert_eq!(avg, sum / events as f64);
                        proptest::prop_assert_eq!(s.max(at), max);
                    }
                    let oldest = live.iter().map(|x| x.0).min().unwrap_or(at);
                    let mut size = at.saturating_duration_since(oldest);
                    let full = (size.as_nanos() / cfg.sample_window.as_nanos()) as u64;
                    if full + 1 < num as u64 {
                        size += cfg.sample_window * (num as u64 - 1 - full) as u32;
                    }
                    proptest::prop_assert_eq!(s.window_size(at), size);
                    if !size.is_zero() {
                        proptest::prop_assert_eq!(s.rate(at), sum / size.as_secs_f64());
                        proptest::prop_assert_eq!(s.event_rate(at), events as f64 / size.as_secs_f64());
                    }
                }
                proptest::prop_assert_eq!(s.total(), total);
                proptest::prop_assert_eq!(s.count(), count);
            }
        }
    }
}
