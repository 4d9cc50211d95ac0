//! Jitter sources that always return the same sample, so backoffs, reconnect waits and setup
//! timeouts are exact and tests can assert them to the microsecond.

use mqnet::client::JitterSource;

/// Always the middle of the jitter range: a jitter factor of exactly 1.0, so every backoff and
/// setup timeout is exactly its configured value.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoJitter;

impl JitterSource for NoJitter {
    fn next_f64(&mut self) -> f64 {
        0.5
    }
}

/// Always the sample it holds, in `[0, 1)`: 0.0 is the bottom of the jitter range, 0.5 a factor
/// of exactly 1.0.
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl JitterSource for FixedJitter {
    fn next_f64(&mut self) -> f64 {
        self.0
    }
}
