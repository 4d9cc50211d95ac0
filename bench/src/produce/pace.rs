//! Pacing of the send loop to an offered load (`--rate`), the same for both peers.

use std::time::{Duration, Instant};

/// How often the send loop asks whether it is ahead of its schedule (records).
const CHECK_EVERY: u64 = 32;

/// The schedule of a paced run: record `i` (counting from 1) is due at `start + (i - 1) / rate`.
pub(crate) struct Pacer {
    start: Instant,
    rate: Option<u64>,
}

impl Pacer {
    /// A schedule from `start` at `rate` records/s (`None`: every record is due at once).
    pub(crate) fn new(start: Instant, rate: Option<u64>) -> Self {
        Pacer { start, rate }
    }

    /// How long to wait before sending record `i`, checked every [`CHECK_EVERY`] records (the
    /// records in between go out back to back): `None` when it is due.
    pub(crate) fn ahead(&self, i: u64, now: Instant) -> Option<Duration> {
        let rate = self.rate?;
        if i % CHECK_EVERY != 0 {
            return None;
        }
        let due_ns = u128::from(i.saturating_sub(1)) * 1_000_000_000 / u128::from(rate);
        let due = self.start + Duration::from_nanos(u64::try_from(due_ns).unwrap_or(u64::MAX));
        due.checked_duration_since(now).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpaced_never_waits_and_paced_waits_for_the_schedule() {
        let t0 = Instant::now();
        assert_eq!(Pacer::new(t0, None).ahead(64, t0), None);
        let p = Pacer::new(t0, Some(1_000));
        // Record 33 is due 32 ms after the start; record 31 is not a check point.
        assert_eq!(p.ahead(31, t0), None);
        assert_eq!(p.ahead(32, t0), Some(Duration::from_millis(31)));
        assert_eq!(p.ahead(32, t0 + Duration::from_millis(31)), None);
        assert_eq!(
            p.ahead(64, t0 + Duration::from_millis(40)),
            Some(Duration::from_millis(23))
        );
    }
}
