//! The librdkafka peer's stand-in in `mqnet-bench`, which does not load librdkafka: no mock
//! cluster, no librdkafka producer. The produce rows that need them run in `mqnet-bench-rdkafka`
//! (see `produce::companion`), whose `rd_peer` is `rdkafka_run.rs`.

use std::convert::Infallible;
use std::time::Duration;

use crate::error::BenchError;
use crate::produce::settings::Settings;
use crate::produce::tally::Measured;
use crate::produce::NO_PEER;

/// Whether this binary has the librdkafka peer and its mock cluster.
pub const AVAILABLE: bool = false;

/// A mock cluster, of which this binary has none.
pub enum Mock {}

impl Mock {
    /// Never called: no `Mock` exists here.
    pub fn broker_round_trip_time(&self, _broker: i32, _rtt: Duration) -> Result<(), Infallible> {
        match *self {}
    }

    /// Never called: no `Mock` exists here.
    pub fn bootstrap_servers(&self) -> String {
        match *self {}
    }

    /// Never called: no `Mock` exists here.
    pub fn create_topic(&self, _topic: &str, _partitions: i32, _rf: i32) -> Result<(), Infallible> {
        match *self {}
    }
}

/// Refuses: the mock cluster is in `mqnet-bench-rdkafka`.
///
/// # Errors
/// Always.
pub fn mock(_brokers: i32) -> Result<Mock, BenchError> {
    Err(BenchError::usage(NO_PEER))
}

/// Refuses: librdkafka's producer is in `mqnet-bench-rdkafka`.
///
/// # Errors
/// Always.
pub fn run(_s: &Settings, _bootstrap: &str, _topic: &str) -> Result<Measured, BenchError> {
    Err(BenchError::usage(NO_PEER))
}
