//! Windowed rates fed from monotonic counters, folded into their samples only when it matters.
//!
//! A client observes its counters once per poll. Recording every counter's growth into its
//! [`Sampled`] stat each poll costs a time comparison and a few float operations per stat;
//! [`CounterWindows`] instead remembers the counters and folds their growth into the samples
//! only when a sample may complete (the earliest open sample end over the group has come) or a
//! stat whose next growth starts a sample grows. The result is exact:
//!
//! - growth seen before the fold happened at times before every sampled stat's current sample
//!   ends, so it belongs to those current samples; it is recorded there at the time of the last
//!   observation that saw it;
//! - a stat without a sample, or whose current sample had completed when the group last folded,
//!   is folded on the very observation that sees its next growth, so the sample that growth
//!   starts begins at that observation's time, as it would with eager recording (and a stat that
//!   stays idle after its sample completed does not make every later observation fold);
//! - reading a rate adds the growth not yet folded to the current sample.
//!
//! Rules: counters only grow; the stats are read only as rates ([`rate`](CounterWindows::rate)
//! for amounts, [`event_rate`](CounterWindows::event_rate) for events), since an amount's growth
//! over several observations is folded as one event (its sum, and so its rate, is unchanged; its
//! count and maximum are not meaningful).

use std::time::Instant;

use super::window::{Bound, MetricConfig, Sampled};

/// How a counter's growth is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Growth `n` is `n` events of value 1 (request counts: read as an event rate).
    Events,
    /// Growth `n` is one event of value `n` (byte counts, nanoseconds: read as a rate).
    Amount,
}

/// `N` windowed stats, each fed from one monotonic counter (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct CounterWindows<const N: usize> {
    stats: [Sampled; N],
    kinds: [Kind; N],
    /// The counters when their growth was last folded into the stats.
    folded: [u64; N],
    /// The counters at the last observation, and its time.
    seen: [u64; N],
    seen_at: Option<Instant>,
    /// Observations before this instant need no fold unless a stat in `unsampled` grows (`None`:
    /// no time forces a fold; no stat outside `unsampled` has a sample that completes).
    fold_before: Option<Instant>,
    /// The stats whose next growth starts a sample (bit `i` for stat `i`): none yet, or the
    /// current one had completed at the last fold.
    unsampled: u32,
}

impl<const N: usize> CounterWindows<N> {
    /// Stats sampling as `cfg` says, recording growth as `kinds` say; every counter starts at 0.
    pub(crate) fn new(cfg: MetricConfig, kinds: [Kind; N]) -> Self {
        const {
            assert!(
                N >= 1 && N <= 32,
                "one to 32 counters: the unsampled set is a u32"
            )
        };
        CounterWindows {
            stats: std::array::from_fn(|_| Sampled::new(cfg)),
            kinds,
            folded: [0; N],
            seen: [0; N],
            seen_at: None,
            fold_before: None,
            unsampled: if N == 32 { u32::MAX } else { (1u32 << N) - 1 },
        }
    }

    /// Observes the counters at `now` (not earlier than the last observation). Allocates nothing.
    #[inline]
    pub(crate) fn observe(&mut self, now: Instant, counters: [u64; N]) {
        if self.fold_before.is_none_or(|t| now < t) && !self.unsampled_grew(&counters) {
            self.seen = counters;
            self.seen_at = Some(now);
            return;
        }
        self.fold(now, counters);
    }

    /// Whether a stat whose next growth starts a sample has grown since the last observation.
    #[inline]
    fn unsampled_grew(&self, counters: &[u64; N]) -> bool {
        let mut set = self.unsampled;
        while set != 0 {
            let i = set.trailing_zeros() as usize;
            if counters[i] != self.seen[i] {
                return true;
            }
            set &= set - 1;
        }
        false
    }

    /// Records the growth up to the last observation at its time, the growth since at `now`,
    /// and works out when the next fold is due.
    #[cold]
    #[inline(never)]
    fn fold(&mut self, now: Instant, counters: [u64; N]) {
        let mut fold_before: Option<Instant> = None;
        let mut unsampled = 0u32;
        for (i, counter) in counters.into_iter().enumerate() {
            let older = self.seen[i].saturating_sub(self.folded[i]);
            if let Some(at) = self.seen_at {
                self.record(i, at, older);
            }
            let newer = counter.saturating_sub(self.seen[i]);
            self.record(i, now, newer);
            match self.stats[i].bound() {
                Bound::Until(end) if now < end => {
                    fold_before = Some(fold_before.map_or(end, |t| t.min(end)));
                }
                // No sample, or it has completed: the next growth starts one.
                Bound::NoSample | Bound::Until(_) => unsampled |= 1 << i,
                Bound::Never => {}
            }
        }
        self.folded = counters;
        self.seen = counters;
        self.seen_at = Some(now);
        self.fold_before = fold_before;
        self.unsampled = unsampled;
    }

    fn record(&mut self, i: usize, at: Instant, n: u64) {
        if n == 0 {
            return;
        }
        let s = &mut self.stats[i];
        match self.kinds[i] {
            Kind::Events => s.record_n(at, n as f64, n, 1.0),
            Kind::Amount => s.record(at, n as f64),
        }
    }

    /// The growth of counter `i` observed and not yet folded (it belongs to the current sample).
    fn pending(&self, i: usize) -> u64 {
        self.seen[i].saturating_sub(self.folded[i])
    }

    /// Stat `i`'s rate at `now`: the live samples' sum per second (for [`Kind::Amount`]).
    pub(crate) fn rate(&self, i: usize, now: Instant) -> f64 {
        let n = self.pending(i);
        self.stats[i].rate_with(now, n as f64, u64::from(n > 0))
    }

    /// Stat `i`'s event rate at `now`: the live samples' events per second (for
    /// [`Kind::Events`]).
    pub(crate) fn event_rate(&self, i: usize, now: Instant) -> f64 {
        let n = self.pending(i);
        self.stats[i].event_rate_with(now, n as f64, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    proptest::proptest! {
        /// Observing counters lazily reads the same rates as recording each observation's growth
        /// into its stat at once, read at any time.
        #[test]
        fn lazy_folding_matches_eager_recording(
            window_ms in 1u64..50,
            num in 1usize..4,
            steps in proptest::collection::vec(
                (0u64..30, 0u64..4, 0u64..3, 0u64..2, proptest::bool::ANY), 1..120),
        ) {
            let t0 = Instant::now();
            let cfg = MetricConfig::new(ms(window_ms), num);
            let kinds = [Kind::Events, Kind::Amount, Kind::Events];
            let mut lazy = CounterWindows::new(cfg, kinds);
            let mut eager: [Sampled; 3] = std::array::from_fn(|_| Sampled::new(cfg));
            let (mut t, mut c) = (t0, [0u64; 3]);
            for (dt, a, b, d, read) in steps {
                t += ms(dt);
                // The third counter grows rarely: it stays without a sample for a while.
                let growth = [a, b * 100, if a == 3 { d } else { 0 }];
                for i in 0..3 {
                    c[i] += growth[i];
                    let n = growth[i];
                    if n > 0 {
                        match kinds[i] {
                            Kind::Events => eager[i].record_n(t, n as f64, n, 1.0),
                            Kind::Amount => eager[i].record(t, n as f64),
                        }
                    }
                }
                lazy.observe(t, c);
                if read {
                    let at = t + ms(dt / 2);
                    proptest::prop_assert_eq!(lazy.event_rate(0, at), eager[0].event_rate(at));
                    proptest::prop_assert_eq!(lazy.rate(1, at), eager[1].rate(at));
                    proptest::prop_assert_eq!(lazy.event_rate(2, at), eager[2].event_rate(at));
                }
            }
        }
    }

    #[test]
    fn a_stat_idle_after_its_sample_completed_does_not_make_observations_fold() {
        let t0 = Instant::now();
        let kinds = [Kind::Events, Kind::Events];
        let mut w = CounterWindows::new(MetricConfig::new(ms(1000), 2), kinds);
        w.observe(t0, [1, 1]);
        // Past both samples' end: the first counter's growth starts a new sample; the second's
        // sample has completed and it stays idle from now on.
        w.observe(t0 + ms(1500), [2, 1]);
        assert_eq!(w.folded, [2, 1]);
        w.observe(t0 + ms(1600), [3, 1]);
        assert_eq!(
            w.folded,
            [2, 1],
            "inside the first counter's new sample: no fold"
        );
        assert_eq!(w.event_rate(0, t0 + ms(1600)), 3.0 / 1.6);
        // The idle one's next growth starts its sample at once, at this observation's time.
        w.observe(t0 + ms(1700), [4, 2]);
        assert_eq!(w.folded, [4, 2]);
        // At 2.6 s only that sample is live (0.9 s old, padded by one window).
        assert_eq!(w.event_rate(1, t0 + ms(2600)), 1.0 / 1.9);
    }

    #[test]
    fn an_observation_inside_every_open_sample_folds_nothing() {
        let t0 = Instant::now();
        let mut w = CounterWindows::new(MetricConfig::new(ms(1000), 2), [Kind::Events]);
        w.observe(t0, [1]);
        assert_eq!(w.folded, [1], "the first growth starts the sample at once");
        w.observe(t0 + ms(10), [5]);
        assert_eq!(w.folded, [1], "inside the sample: remembered, not folded");
        assert_eq!(w.pending(0), 4);
        // 5 events over the padded window of 1 s + 10 ms.
        assert_eq!(w.event_rate(0, t0 + ms(10)), 5.0 / 1.01);
        w.observe(t0 + ms(1000), [6]);
        assert_eq!(w.folded, [6], "the sample completed: folded");
        assert_eq!(w.event_rate(0, t0 + ms(1000)), 6.0);
    }
}
