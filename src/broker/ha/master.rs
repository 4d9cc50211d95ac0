//! The master's side of HA, sans-IO: one [`Master`] per HA listener tracks every slave
//! connection (handshake, what was sent, what was acknowledged, when it last reported) and says
//! what to send next; [`SyncWaiters`] holds SYNC_MASTER produce answers until a slave covers them.
//! The driver feeds received frames and the time in and writes what [`Master::poll_transmit`]
//! returns; nothing here touches a socket or a clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::protocol::{self, FromSlave, Hello, RefuseReason, Role};
use super::{HaError, HaLog};

/// The master's HA settings (RocketMQ's defaults).
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// The cluster id a slave must present.
    pub cluster_id: String,
    /// `ha.transfer.batch.bytes`: the most log bytes in one chunk (32 KiB).
    pub transfer_batch_bytes: usize,
    /// `ha.heartbeat.interval.ms`: a heartbeat after this long with nothing sent (5 s).
    pub heartbeat_interval: Duration,
    /// `ha.housekeeping.ms`: a slave silent this long (or not through its handshake) is closed
    /// (20 s).
    pub housekeeping: Duration,
    /// `ha.max.gap.bytes`: a slave further behind is not healthy (256 MiB).
    pub max_gap_bytes: i64,
    /// `ha.sync.timeout.ms`: how long a SYNC_MASTER waits for a slave's ack (3 s).
    pub sync_timeout: Duration,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            cluster_id: "mqnet".into(),
            transfer_batch_bytes: 32 * 1024,
            heartbeat_interval: Duration::from_secs(5),
            housekeeping: Duration::from_secs(20),
            max_gap_bytes: 256 << 20,
            sync_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug)]
enum Phase {
    Handshake,
    Streaming {
        broker_id: i32,
        /// The next offset to send.
        next: i64,
        /// The end of what was sent (an ack above it closes the connection).
        sent_end: i64,
        /// The slave's last report (-1: none since a reset).
        acked: i64,
    },
}

#[derive(Debug)]
struct Session {
    phase: Phase,
    opened: Instant,
    last_report: Instant,
    last_send: Instant,
    /// Control frames (welcome, reset) to send before any chunk.
    outbox: Vec<Bytes>,
}

/// The state of one slave connection, for stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaveView {
    /// The connection's key.
    pub conn: u64,
    /// The slave's broker id.
    pub broker_id: i32,
    /// Its last report (-1: none since a reset).
    pub acked: i64,
    /// The end of what was sent to it.
    pub sent_end: i64,
}

/// The master's HA state machine; see the [module docs](self).
#[derive(Debug)]
pub struct Master {
    config: MasterConfig,
    sessions: BTreeMap<u64, Session>,
    scratch: BytesMut,
}

impl Master {
    /// A master with no slaves.
    pub fn new(config: MasterConfig) -> Master {
        Master {
            config,
            sessions: BTreeMap::new(),
            scratch: BytesMut::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MasterConfig {
        &self.config
    }

    /// A connection `conn` was accepted at `now`; it must handshake within the housekeeping time.
    pub fn accepted(&mut self, conn: u64, now: Instant) {
        self.sessions.insert(
            conn,
            Session {
                phase: Phase::Handshake,
                opened: now,
                last_report: now,
                last_send: now,
                outbox: Vec::new(),
            },
        );
    }

    /// Connection `conn` is gone (closed by either side).
    pub fn closed(&mut self, conn: u64) {
        self.sessions.remove(&conn);
    }

    /// Handles one frame from `conn`.
    ///
    /// # Errors
    /// Any [`HaError`]: the caller closes the connection and calls [`closed`](Self::closed);
    /// for [`HaError::Refused`] it first sends [`protocol::encode_refuse`] of the reason.
    pub fn on_frame(
        &mut self,
        conn: u64,
        now: Instant,
        frame: &[u8],
        log: &dyn HaLog,
    ) -> Result<(), HaError> {
        let msg = protocol::decode_from_slave(frame)?;
        let dup = match &msg {
            FromSlave::Hello(h) => self.sessions.iter().any(|(c, s)| {
                *c != conn
                    && matches!(s.phase, Phase::Streaming { broker_id, .. } if broker_id == h.broker_id)
            }),
            FromSlave::Report(_) => false,
        };
        let s = self
            .sessions
            .get_mut(&conn)
            .ok_or(HaError::Unexpected("a frame on an unknown connection"))?;
        match (msg, &mut s.phase) {
            (FromSlave::Hello(h), Phase::Handshake) => {
                let refusal = if h.version != protocol::VERSION {
                    Some(RefuseReason::Version)
                } else if h.cluster_id != self.config.cluster_id {
                    Some(RefuseReason::WrongCluster)
                } else if h.role != Role::Slave {
                    Some(RefuseReason::NotASlave)
                } else if dup {
                    Some(RefuseReason::DuplicateId)
                } else {
                    None
                };
                if let Some(r) = refusal {
                    log::warn!(
                        "HA: refusing broker {} (cluster {:?}, version {}): {r}",
                        h.broker_id,
                        h.cluster_id,
                        h.version
                    );
                    return Err(HaError::Refused(r));
                }
                s.outbox.push(protocol::encode_welcome(
                    log.log_id(),
                    log.start(),
                    log.end(),
                ));
                let start = if needs_reset(&h, log) {
                    log::warn!(
                        "HA: slave {} holds [{}, {}) of log {:x}; this master has [{}, {}) of log {:x}: resetting it to {}",
                        h.broker_id, h.log_start, h.log_end, h.log_id, log.start(), log.end(), log.log_id(), log.start()
                    );
                    s.outbox
                        .push(protocol::encode_reset(log.log_id(), log.start()));
                    None
                } else {
                    Some(h.log_end)
                };
                let from = start.unwrap_or_else(|| log.start());
                log::info!("HA: slave {} streaming from {from}", h.broker_id);
                s.phase = Phase::Streaming {
                    broker_id: h.broker_id,
                    next: from,
                    sent_end: from,
                    acked: start.unwrap_or(-1),
                };
                s.last_report = now;
                Ok(())
            }
            (FromSlave::Hello(_), Phase::Streaming { .. }) => {
                Err(HaError::Unexpected("a second handshake"))
            }
            (FromSlave::Report(_), Phase::Handshake) => {
                Err(HaError::Unexpected("a report before the handshake"))
            }
            (
                FromSlave::Report(off),
                Phase::Streaming {
                    sent_end, acked, ..
                },
            ) => {
                if off > *sent_end {
                    return Err(HaError::AckAboveSent {
                        ack: off,
                        sent: *sent_end,
                    });
                }
                if off < *acked {
                    return Err(HaError::AckRegressed {
                        ack: off,
                        previous: *acked,
                    });
                }
                *acked = off;
                s.last_report = now;
                Ok(())
            }
        }
    }

    /// The next frame to send on `conn`, if any: control frames first, then a chunk of at most
    /// `transfer_batch_bytes` from the log, or a heartbeat after `heartbeat_interval` of nothing
    /// sent. Call it while the connection can take more (the driver bounds what it stages).
    ///
    /// # Errors
    /// An I/O error reading the log: the caller closes the connection.
    pub fn poll_transmit(
        &mut self,
        conn: u64,
        now: Instant,
        log: &dyn HaLog,
    ) -> Result<Option<Bytes>, HaError> {
        let batch = self.config.transfer_batch_bytes.max(1);
        let heartbeat = self.config.heartbeat_interval;
        let Some(s) = self.sessions.get_mut(&conn) else {
            return Ok(None);
        };
        if !s.outbox.is_empty() {
            s.last_send = now;
            return Ok(Some(s.outbox.remove(0)));
        }
        let Phase::Streaming { next, sent_end, .. } = &mut s.phase else {
            return Ok(None);
        };
        let end = log.end();
        if *next < log.start() {
            // The log moved past what this slave needs: send it to the start, explicitly.
            log::warn!(
                "HA: offset {} is below the log start {}: resetting the slave",
                *next,
                log.start()
            );
            *next = log.start();
            *sent_end = *next;
            s.last_send = now;
            return Ok(Some(protocol::encode_reset(log.log_id(), log.start())));
        }
        if *next < end {
            let want = usize::try_from(end - *next)
                .unwrap_or(usize::MAX)
                .min(batch);
            self.scratch.reserve(protocol::CHUNK_HEADER + want);
            protocol::put_chunk_header(&mut self.scratch, *next, want, end);
            let at = self.scratch.len();
            let got = match log.read_into(*next, want, &mut self.scratch) {
                Ok(n) => n,
                Err(e) => {
                    self.scratch.clear();
                    return Err(HaError::Io(e));
                }
            };
            if got != want {
                // The log ended early: fix the size field to what was read.
                self.scratch.truncate(at + got);
                self.scratch[9..13].copy_from_slice(&(got as i32).to_be_bytes());
            }
            *next += got as i64;
            *sent_end = *next;
            s.last_send = now;
            return Ok(Some(self.scratch.split().freeze()));
        }
        if now >= s.last_send + heartbeat {
            self.scratch.reserve(protocol::CHUNK_HEADER);
            protocol::put_chunk_header(&mut self.scratch, *next, 0, end);
            s.last_send = now;
            return Ok(Some(self.scratch.split().freeze()));
        }
        Ok(None)
    }

    /// The nearest moment [`handle_timeout`](Self::handle_timeout) or a heartbeat has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .map(|s| match s.phase {
                Phase::Handshake => s.opened + self.config.housekeeping,
                Phase::Streaming { .. } => (s.last_report + self.config.housekeeping)
                    .min(s.last_send + self.config.heartbeat_interval),
            })
            .min()
    }

    /// Housekeeping: removes the connections that did not handshake or report within
    /// `housekeeping` and pushes them to `expired` (the caller closes them).
    pub fn handle_timeout(&mut self, now: Instant, expired: &mut Vec<u64>) {
        let hk = self.config.housekeeping;
        self.sessions.retain(|conn, s| {
            let since = match s.phase {
                Phase::Handshake => s.opened,
                Phase::Streaming { .. } => s.last_report,
            };
            let keep = now < since + hk;
            if !keep {
                log::warn!("HA: connection {conn} silent for {hk:?}: closing it");
                expired.push(*conn);
            }
            keep
        });
    }

    /// The highest offset a slave acknowledged (-1: none).
    pub fn acked(&self) -> i64 {
        self.sessions
            .values()
            .filter_map(|s| match s.phase {
                Phase::Streaming { acked, .. } => Some(acked),
                Phase::Handshake => None,
            })
            .max()
            .unwrap_or(-1)
    }

    /// Whether a slave is healthy: connected, through its handshake, and at most
    /// `max_gap_bytes` behind `log_end` (RocketMQ's isSlaveOK).
    pub fn healthy(&self, log_end: i64) -> bool {
        let acked = self.acked();
        acked >= 0 && log_end - acked <= self.config.max_gap_bytes
    }

    /// The slaves through their handshake.
    pub fn slaves(&self) -> impl Iterator<Item = SlaveView> + '_ {
        self.sessions.iter().filter_map(|(c, s)| match s.phase {
            Phase::Streaming {
                broker_id,
                acked,
                sent_end,
                ..
            } => Some(SlaveView {
                conn: *c,
                broker_id,
                acked,
                sent_end,
            }),
            Phase::Handshake => None,
        })
    }
}

/// Whether a slave's log is not a prefix-position of this master's: another log id, or an end
/// outside the master's range.
fn needs_reset(h: &Hello, log: &dyn HaLog) -> bool {
    let other_log = h.log_end > 0 && h.log_id != log.log_id();
    other_log || h.log_end > log.end() || h.log_end < log.start()
}

/// How a held answer was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// A slave's ack covers the target.
    Acked,
    /// `ha.sync.timeout.ms` passed first (NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    TimedOut,
}

/// Answers held until a slave's acknowledged offset covers their target offset, or until their
/// deadline (see [`MasterConfig::sync_timeout`]).
#[derive(Debug)]
pub struct SyncWaiters<T> {
    waiting: Vec<(i64, Instant, T)>,
}

impl<T> Default for SyncWaiters<T> {
    fn default() -> Self {
        SyncWaiters {
            waiting: Vec::new(),
        }
    }
}

impl<T> SyncWaiters<T> {
    /// Holds `item` until an ack reaches `target` or `deadline` passes.
    pub fn wait(&mut self, target: i64, deadline: Instant, item: T) {
        self.waiting.push((target, deadline, item));
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The nearest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.1).min()
    }

    /// Releases, in the order they were held, every item that `acked` covers (at `now` or not)
    /// and every item whose deadline is at or before `now`.
    pub fn release(&mut self, acked: i64, now: Instant, out: &mut Vec<(T, SyncOutcome)>) {
        let mut i = 0;
        while i < self.waiting.len() {
            let (target, deadline, _) = &self.waiting[i];
            let outcome = if acked >= *target {
                Some(SyncOutcome::Acked)
            } else if *deadline <= now {
                Some(SyncOutcome::TimedOut)
            } else {
                None
            };
            match outcome {
                Some(o) => {
                    let (_, _, item) = self.waiting.remove(i);
                    out.push((item, o));
                }
                None => i += 1,
            }
        }
    }
}
