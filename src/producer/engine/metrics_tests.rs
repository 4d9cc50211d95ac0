//! Metrics on simulated time.
