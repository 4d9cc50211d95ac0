//! Exponential backoff with jitter, Kafka's `ExponentialBackoff`, and the injectable randomness it
//! uses.

use std::time::Duration;

/// A source of uniform randomness, injectable so that tests can assert exact attempt times.
pub trait JitterSource {
    /// A uniform sample in `[0, 1)`.
    fn next_f64(&mut self) -> f64;
}

/// A small, seedable SplitMix64 generator: the default [`JitterSource`].
///
/// Not cryptographic; it only spreads reconnect attempts.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with a fixed seed (deterministic sequence).
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator seeded from the clock and the process id.
    pub fn from_entropy() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SplitMix64(t ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index in `0..n` (`0` when `n == 0`).
    pub fn next_index(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

impl JitterSource for SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        // 53 random bits into the mantissa: uniform in [0, 1).
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `backoff(n) = min(max, initial × 2^min(n, log2(max/initial)) × U(1 − jitter, 1 + jitter))`.
///
/// `n` is the number of consecutive failures before this one (0 for the first failure). When
/// `max < initial`, the backoff is a constant `initial` (jittered, capped at `initial`).
///
/// ```
/// use std::time::Duration;
/// use mqnet::client::{ExponentialBackoff, SplitMix64};
///
/// let b = ExponentialBackoff::new(Duration::from_millis(50), Duration::from_millis(1000), 0.2);
/// let mut rng = SplitMix64::new(7);
/// let first = b.backoff(0, &mut rng);
/// assert!(first >= Duration::from_millis(40) && first <= Duration::from_millis(60));
/// assert!(b.backoff(30, &mut rng) <= Duration::from_millis(1000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    exp_max: f64,
}

impl ExponentialBackoff {
    /// A backoff doubling from `initial` up to `max`, with `±jitter` (0.2 is Kafka's ±20 %).
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        let max = max.max(initial);
        let exp_max = if initial.is_zero() || max <= initial {
            0.0
        } else {
            (max.as_secs_f64() / initial.as_secs_f64()).log2()
        };
        ExponentialBackoff {
            initial,
            max,
            jitter: jitter.clamp(0.0, 1.0),
            exp_max,
        }
    }

    /// The backoff after `attempts` consecutive earlier failures.
    pub fn backoff(&self, attempts: u32, rng: &mut dyn JitterSource) -> Duration {
        let exp = f64::from(attempts).min(self.exp_max);
        let term = self.initial.as_secs_f64() * exp.exp2();
        let factor = if self.jitter > 0.0 {
            1.0 - self.jitter + 2.0 * self.jitter * rng.next_f64()
        } else {
            1.0
        };
        let secs = (term * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The configured initial value.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The configured cap.
    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always returns the same sample.
    pub(crate) struct Fixed(pub f64);
    impl JitterSource for Fixed {
        fn next_f64(&mut self) -> f64 {
            self.0
        }
    }

    #[test]
    fn doubles_then_caps_kafka_defaults() {
        let b =
            ExponentialBackoff::new(Duration::from_millis(50), Duration::from_millis(1000), 0.2);
        // Sample 0.5 => factor exactly 1.0.
        let mid = |n| b.backoff(n, &mut Fixed(0.5));
        assert_eq!(mid(0), Duration::from_millis(50));
        assert_eq!(mid(1), Duration::from_millis(100));
        assert_eq!(mid(2), Duration::from_millis(200));
        assert_eq!(mid(3), Duration::from_millis(400));
        assert_eq!(mid(4), Duration::from_millis(800));
        assert_eq!(mid(5), Duration::from_millis(1000));
        assert_eq!(mid(60), Duration::from_millis(1000));
    }

    #[test]
    fn jitter_spans_plus_minus_twenty_percent() {
        let b =
            ExponentialBackoff::new(Duration::from_millis(50), Duration::from_millis(1000), 0.2);
        let low = b.backoff(1, &mut Fixed(0.0));
        let high = b.backoff(1, &mut Fixed(0.999_999));
        assert_eq!(low, Duration::from_millis(80));
        assert!(high > Duration::from_micros(119_990) && high < Duration::from_millis(120));
        // At the cap the jittered value never exceeds max, and can fall to 0.8 × max.
        assert_eq!(
            b.backoff(10, &mut Fixed(0.999)),
            Duration::from_millis(1000)
        );
        assert_eq!(b.backoff(10, &mut Fixed(0.0)), Duration::from_millis(800));
    }

    #[test]
    fn max_below_initial_is_constant() {
        let b =
            ExponentialBackoff::new(Duration::from_millis(500), Duration::from_millis(100), 0.2);
        for n in 0..10 {
            assert_eq!(b.backoff(n, &mut Fixed(0.5)), Duration::from_millis(500));
        }
    }

    #[test]
    fn splitmix_is_deterministic_and_uniformish() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        let mean = sum / 10_000.0;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }
}
