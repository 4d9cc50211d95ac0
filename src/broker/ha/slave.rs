//! The slave's side of HA, sans-IO: when to connect, the handshake, checking that each chunk
//! starts exactly where the local log ends, when to report, and when the master has been silent
//! too long. The driver does the connecting, the appending and the resetting, and tells the
//! machine what it did.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::protocol::{self, FromMaster, Hello, Role};
use super::HaError;

/// The slave's HA settings (RocketMQ's defaults).
#[derive(Debug, Clone)]
pub struct SlaveConfig {
    /// The cluster id presented in the handshake.
    pub cluster_id: String,
    /// This slave's broker id.
    pub broker_id: i32,
    /// How long after losing the master the slave connects again (5 s).
    pub reconnect_interval: Duration,
    /// `ha.report.interval.ms`: the slave reports at least this often (5 s).
    pub report_interval: Duration,
    /// A master silent this long (no chunk, no heartbeat) is given up on (20 s, the master's
    /// housekeeping time).
    pub master_timeout: Duration,
}

impl Default for SlaveConfig {
    fn default() -> Self {
        SlaveConfig {
            cluster_id: "mqnet".into(),
            broker_id: 2,
            reconnect_interval: Duration::from_secs(5),
            report_interval: Duration::from_secs(5),
            master_timeout: Duration::from_secs(20),
        }
    }
}

/// Where the slave is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaveState {
    /// Not connected; connect at `retry_at`.
    Idle {
        /// When to connect.
        retry_at: Instant,
    },
    /// A connect is under way.
    Connecting,
    /// Connected, the handshake sent.
    Handshaking,
    /// Welcomed: receiving the log.
    Streaming,
}

/// What a frame from the master asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlaveEvent {
    /// Nothing (a welcome or a heartbeat).
    None,
    /// Append `data` to the local log (it starts exactly at the local end), then call
    /// [`Slave::stored`].
    Append(Bytes),
    /// Truncate the whole local log and restart it at `offset` under `log_id`, then call
    /// [`Slave::reset_done`].
    Reset {
        /// The master's log id.
        log_id: u64,
        /// The new start (and end) of the local log.
        offset: i64,
    },
}

/// The slave's HA state machine; see the [module docs](self).
#[derive(Debug)]
pub struct Slave {
    config: SlaveConfig,
    state: SlaveState,
    log_id: u64,
    log_start: i64,
    log_end: i64,
    /// The end of what arrived (chunks are checked against it; the driver may store less).
    recv_end: i64,
    master_end: i64,
    last_heard: Instant,
    last_report: Instant,
    report_due: bool,
    hello_due: bool,
    scratch: BytesMut,
    connects: u64,
}

impl Slave {
    /// A slave whose local log is `[log_start, log_end)` copied from log `log_id` (0: none); it
    /// connects at once.
    pub fn new(
        config: SlaveConfig,
        log_id: u64,
        log_start: i64,
        log_end: i64,
        now: Instant,
    ) -> Slave {
        Slave {
            config,
            state: SlaveState::Idle { retry_at: now },
            log_id,
            log_start,
            log_end,
            recv_end: log_end,
            master_end: log_end,
            last_heard: now,
            last_report: now,
            report_due: false,
            hello_due: false,
            scratch: BytesMut::new(),
            connects: 0,
        }
    }

    /// The state.
    pub fn state(&self) -> SlaveState {
        self.state
    }

    /// The local log end as the machine knows it.
    pub fn log_end(&self) -> i64 {
        self.log_end
    }

    /// The log id the local log was copied from.
    pub fn log_id(&self) -> u64 {
        self.log_id
    }

    /// The master's log end as last heard (the local end before the first chunk).
    pub fn master_end(&self) -> i64 {
        self.master_end
    }

    /// Replication lag in bytes: the master's end as last heard minus the local end.
    pub fn lag(&self) -> i64 {
        (self.master_end - self.log_end).max(0)
    }

    /// Connects started so far.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Whether the driver should start a connect now.
    pub fn want_connect(&self, now: Instant) -> bool {
        matches!(self.state, SlaveState::Idle { retry_at } if now >= retry_at)
    }

    /// The driver started a connect.
    pub fn connecting(&mut self, now: Instant) {
        self.state = SlaveState::Connecting;
        self.last_heard = now;
        self.connects += 1;
    }

    /// The connection is up: the handshake goes out next.
    pub fn connected(&mut self, now: Instant) {
        self.state = SlaveState::Handshaking;
        self.last_heard = now;
        self.hello_due = true;
        self.report_due = false;
    }

    /// The connection is gone (or could not be made): connect again after the reconnect
    /// interval, resuming from the local end.
    pub fn disconnected(&mut self, now: Instant) {
        self.state = SlaveState::Idle {
            retry_at: now + self.config.reconnect_interval,
        };
        self.hello_due = false;
        self.report_due = false;
        self.recv_end = self.log_end;
    }

    /// Handles one frame from the master.
    ///
    /// # Errors
    /// Any [`HaError`] (a malformed frame, a refusal, a frame out of place, a chunk that does not
    /// start at the local end): the caller closes the connection and calls
    /// [`disconnected`](Self::disconnected).
    pub fn on_frame(&mut self, now: Instant, frame: &Bytes) -> Result<SlaveEvent, HaError> {
        let msg = protocol::decode_from_master(frame)?;
        self.last_heard = now;
        match (msg, self.state) {
            (FromMaster::Refuse(r), _) => Err(HaError::Refused(r)),
            (
                FromMaster::Welcome {
                    log_id, log_end, ..
                },
                SlaveState::Handshaking,
            ) => {
                if self.log_end == self.log_start && self.log_id != log_id {
                    // An empty log takes the master's id.
                    self.log_id = log_id;
                }
                self.master_end = log_end;
                self.state = SlaveState::Streaming;
                self.report_due = true;
                Ok(SlaveEvent::None)
            }
            (FromMaster::Welcome { .. }, _) => Err(HaError::Unexpected("a welcome out of place")),
            (
                FromMaster::Chunk {
                    offset,
                    master_end,
                    data,
                },
                SlaveState::Streaming,
            ) => {
                if offset != self.recv_end {
                    return Err(HaError::UnexpectedOffset {
                        expected: self.recv_end,
                        got: offset,
                    });
                }
                self.recv_end += data.len() as i64;
                self.master_end = master_end.max(self.recv_end);
                if data.is_empty() {
                    Ok(SlaveEvent::None)
                } else {
                    Ok(SlaveEvent::Append(data))
                }
            }
            (FromMaster::Reset { log_id, offset }, SlaveState::Streaming) => {
                log::warn!(
                    "HA: the master resets this slave (local log [{}, {}) of {:x}) to offset {offset} of log {log_id:x}",
                    self.log_start,
                    self.log_end,
                    self.log_id
                );
                Ok(SlaveEvent::Reset { log_id, offset })
            }
            (FromMaster::Chunk { .. } | FromMaster::Reset { .. }, _) => {
                Err(HaError::Unexpected("log data before the welcome"))
            }
        }
    }

    /// The driver stored what arrived up to `end` (at most the end of what arrived; a partial
    /// journal entry may wait for the next chunk). A report of `end` goes out next.
    pub fn stored(&mut self, end: i64) {
        self.log_end = end;
        self.report_due = true;
    }

    /// The driver truncated the local log and restarted it at `offset` of `log_id`. A report
    /// goes out next.
    pub fn reset_done(&mut self, log_id: u64, offset: i64) {
        self.log_id = log_id;
        self.log_start = offset;
        self.log_end = offset;
        self.recv_end = offset;
        self.report_due = true;
    }

    /// The next frame to send: the handshake, then reports (after each store and at least every
    /// report interval).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        match self.state {
            SlaveState::Handshaking if self.hello_due => {
                self.hello_due = false;
                Some(protocol::encode_hello(&Hello {
                    version: protocol::VERSION,
                    broker_id: self.config.broker_id,
                    role: Role::Slave,
                    cluster_id: self.config.cluster_id.clone(),
                    log_id: self.log_id,
                    log_start: self.log_start,
                    log_end: self.log_end,
                }))
            }
            SlaveState::Streaming
                if self.report_due || now >= self.last_report + self.config.report_interval =>
            {
                self.report_due = false;
                self.last_report = now;
                Some(protocol::encode_report(&mut self.scratch, self.log_end))
            }
            _ => None,
        }
    }

    /// The nearest moment the machine has work: a reconnect, a report, or the master's timeout.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            SlaveState::Idle { retry_at } => Some(retry_at),
            SlaveState::Connecting | SlaveState::Handshaking => {
                Some(self.last_heard + self.config.master_timeout)
            }
            SlaveState::Streaming => Some(
                (self.last_report + self.config.report_interval)
                    .min(self.last_heard + self.config.master_timeout),
            ),
        }
    }

    /// Returns whether the master has been silent for the master timeout: the caller closes the
    /// connection and calls [`disconnected`](Self::disconnected).
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.state {
            SlaveState::Idle { .. } => false,
            _ => now >= self.last_heard + self.config.master_timeout,
        }
    }
}
