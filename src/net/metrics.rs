//! Counters kept by the Selector.

use std::time::Duration;

/// A snapshot of a Selector's counters since it was created. Take one with
/// [`Selector::metrics`](super::Selector::metrics); subtract two snapshots for rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectorMetrics {
    /// Channels that reached the connected state (outbound) plus channels accepted.
    pub connections_created: u64,
    /// Channels closed, for any reason, locally or by the peer.
    pub connections_closed: u64,
    /// Outbound connects that failed.
    pub connect_failures: u64,
    /// Accepts that failed for lack of resources (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): the
    /// listener then retries on a timer while the condition lasts.
    pub accept_resource_errors: u64,
    /// Connections accepted and closed at once while descriptors were exhausted (the reserve
    /// descriptor released for it), so the peer gets a clean close instead of a hang.
    pub accepts_refused: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Frames received whole.
    pub frames_in: u64,
    /// Frames that fully left (counted as their reports are due: see
    /// [`Selector::set_report_sends`](super::Selector::set_report_sends)).
    pub frames_out: u64,
    /// Calls to `poll`.
    pub polls: u64,
    /// Calls to the OS selector (`epoll_wait`).
    pub selects: u64,
    /// Time spent blocked in the OS selector.
    pub select_time: Duration,
    /// Time spent in `poll` outside the OS selector (reads, writes, accepts, bookkeeping).
    pub io_time: Duration,
}

impl SelectorMetrics {
    /// Kafka's `io-wait-ratio`: the share of poll time spent waiting in the OS selector.
    pub fn io_wait_ratio(&self) -> f64 {
        let total = self.select_time + self.io_time;
        if total.is_zero() {
            0.0
        } else {
            self.select_time.as_secs_f64() / total.as_secs_f64()
        }
    }

    /// Kafka's `io-ratio`: the share of poll time spent doing I/O and bookkeeping.
    pub fn io_ratio(&self) -> f64 {
        let total = self.select_time + self.io_time;
        if total.is_zero() {
            0.0
        } else {
            self.io_time.as_secs_f64() / total.as_secs_f64()
        }
    }

    /// Channels currently open according to the counters.
    pub fn open_connections(&self) -> u64 {
        self.connections_created
            .saturating_sub(self.connections_closed)
    }
}
