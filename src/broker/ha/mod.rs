//! Master/slave replication of the broker (RocketMQ's HA design, with its holes closed).
//!
//! A master records every change to its state — topics created, batches appended, producer ids
//! handed out — in one byte stream, the [journal], before applying it. A slave connects to the
//! master's HA listener, presents itself in a handshake (cluster id, broker id, role, protocol
//! version, the id and range of the journal it holds), and the master pushes the journal from the
//! slave's end in chunks of at most 32 KiB; the slave appends exactly what arrives at exactly
//! its end, applies the complete entries to its own topics and partition logs, and reports its
//! end after every chunk and at least every 5 s. So the slave's journal and partition logs are
//! byte-for-byte the master's.
//!
//! - [`protocol`]: the frames, strictly decoded.
//! - [`master::Master`] and [`slave::Slave`]: the two sans-IO state machines (time and bytes
//!   in, frames out), [`master::SyncWaiters`]: SYNC_MASTER answers held for a slave's ack.
//! - [`journal`]: the journal on disk and how its entries apply to the broker's state.
//! - The driver (this module): one thread per broker with its own [`Selector`] running the
//!   machine of its role.
//!
//! Roles: an `ASYNC_MASTER` answers producers after the local append; a `SYNC_MASTER` answers an
//! acks=all produce once a slave's acknowledged offset covers the journal end after the append,
//! waiting at most `ha.sync.timeout.ms` (then `NOT_ENOUGH_REPLICAS_AFTER_APPEND`), and refuses it
//! before appending with `NOT_ENOUGH_REPLICAS` when no slave is healthy (none through its
//! handshake, or more than `ha.max.gap.bytes` behind). A `SLAVE` serves Fetch, ListOffsets and
//! Metadata (naming itself leader) and answers Produce with `NOT_LEADER_OR_FOLLOWER`.
//!
//! Against RocketMQ: a connection must handshake before its reports count (a stranger, a second
//! slave with the same id, another cluster or protocol version is refused); a slave whose log is
//! not a prefix of the master's (another log id, an end past the master's, an offset below the
//! master's start) gets an explicit reset instead of heartbeats forever; an ack above what was
//! sent closes the connection; every produce answer says what happened.

pub mod journal;
pub mod master;
pub mod protocol;
pub mod slave;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::net::{ChannelId, CloseMode, Selector, SelectorConfig, SelectorWaker, SocketOptions};

use super::node::Shared;
use journal::{Journal, JournalReader};
use master::{Master, MasterConfig};
pub use protocol::Role;
use slave::{Slave, SlaveConfig, SlaveEvent};

/// The log a master replicates, as its state machine reads it.
pub trait HaLog {
    /// The log's id (a slave holding another log's bytes is reset).
    fn log_id(&self) -> u64;
    /// The first offset held.
    fn start(&self) -> i64;
    /// The end offset.
    fn end(&self) -> i64;
    /// Appends up to `max` bytes from `offset` to `buf`; returns how many.
    ///
    /// # Errors
    /// An offset outside `[start, end]` or a read error.
    fn read_into(&self, offset: i64, max: usize, buf: &mut BytesMut) -> io::Result<usize>;
}

/// Why an HA connection is closed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HaError {
    /// A frame did not decode.
    Wire(protocol::WireError),
    /// The handshake was refused.
    Refused(protocol::RefuseReason),
    /// A slave acknowledged an offset above what was sent to it.
    AckAboveSent {
        /// The acknowledged offset.
        ack: i64,
        /// The end of what was sent.
        sent: i64,
    },
    /// A slave's report went below its previous one.
    AckRegressed {
        /// The reported offset.
        ack: i64,
        /// The previous report.
        previous: i64,
    },
    /// A chunk did not start at the slave's log end.
    UnexpectedOffset {
        /// The slave's log end.
        expected: i64,
        /// The chunk's offset.
        got: i64,
    },
    /// A frame that is well-formed but out of place.
    Unexpected(&'static str),
    /// The replicated journal does not parse or apply.
    Journal(journal::JournalError),
    /// Reading or writing the log failed.
    Io(io::Error),
}

impl fmt::Display for HaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaError::Wire(e) => write!(f, "bad HA frame: {e}"),
            HaError::Refused(r) => write!(f, "handshake refused: {r}"),
            HaError::AckAboveSent { ack, sent } => {
                write!(f, "ack {ack} above the {sent} bytes sent")
            }
            HaError::AckRegressed { ack, previous } => {
                write!(f, "report {ack} below the previous {previous}")
            }
            HaError::UnexpectedOffset { expected, got } => {
                write!(f, "chunk at {got}, the local log ends at {expected}")
            }
            HaError::Unexpected(w) => write!(f, "unexpected frame: {w}"),
            HaError::Journal(e) => write!(f, "{e}"),
            HaError::Io(e) => write!(f, "HA I/O: {e}"),
        }
    }
}

impl std::error::Error for HaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HaError::Wire(e) => Some(e),
            HaError::Journal(e) => Some(e),
            HaError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<protocol::WireError> for HaError {
    fn from(e: protocol::WireError) -> Self {
        HaError::Wire(e)
    }
}

/// The HA configuration of a broker.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// The role.
    pub role: Role,
    /// A master's HA listen address.
    pub listen: Option<SocketAddr>,
    /// A slave's master HA address.
    pub master: Option<SocketAddr>,
    /// The master's settings (cluster id, timing, gap, sync timeout).
    pub master_config: MasterConfig,
    /// The slave's settings (cluster id, broker id, timing).
    pub slave_config: SlaveConfig,
}

impl HaConfig {
    /// A master of `role` listening for slaves on `listen`, with the default settings.
    pub fn master(role: Role, listen: SocketAddr) -> HaConfig {
        HaConfig {
            role,
            listen: Some(listen),
            master: None,
            master_config: MasterConfig::default(),
            slave_config: SlaveConfig::default(),
        }
    }

    /// A slave of the master whose HA listener is `master`, with the default settings.
    pub fn slave(master: SocketAddr) -> HaConfig {
        HaConfig {
            role: Role::Slave,
            listen: None,
            master: Some(master),
            master_config: MasterConfig::default(),
            slave_config: SlaveConfig::default(),
        }
    }
}

/// HA counters and state, shared by the HA thread and the nodes.
#[derive(Debug)]
pub(crate) struct HaShared {
    pub role: Role,
    pub sync_timeout: Duration,
    /// The local journal's end.
    pub end: Arc<AtomicI64>,
    /// Master: the best slave ack (-1: none). Slave: unused.
    pub acked: AtomicI64,
    /// Master: whether a slave is healthy.
    pub healthy: AtomicBool,
    /// Master: slaves through their handshake.
    pub slaves: AtomicUsize,
    /// Slave: the master's end as last heard.
    pub master_end: AtomicI64,
    /// Slave: connects made.
    pub connects: AtomicU64,
    /// Slave: whether it is streaming from a master.
    pub streaming: AtomicBool,
    /// Master: the HA listener's address.
    pub listen_addr: OnceLock<SocketAddr>,
    /// The HA thread's waker.
    pub waker: OnceLock<SelectorWaker>,
}

impl HaShared {
    pub(crate) fn new(role: Role, sync_timeout: Duration, end: Arc<AtomicI64>) -> HaShared {
        HaShared {
            role,
            sync_timeout,
            acked: AtomicI64::new(-1),
            healthy: AtomicBool::new(false),
            slaves: AtomicUsize::new(0),
            master_end: AtomicI64::new(end.load(Ordering::Acquire)),
            end,
            connects: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            listen_addr: OnceLock::new(),
            waker: OnceLock::new(),
        }
    }

    /// Wakes the HA thread (a master after an append).
    pub(crate) fn wake(&self) {
        if let Some(w) = self.waker.get() {
            let _ = w.wake();
        }
    }

    pub(crate) fn stats(&self) -> HaStats {
        let end = self.end.load(Ordering::Acquire);
        let acked = self.acked.load(Ordering::Acquire);
        let (lag, peer_end) = match self.role {
            Role::Slave => {
                let m = self.master_end.load(Ordering::Acquire);
                ((m - end).max(0), m)
            }
            _ => (if acked < 0 { end } else { (end - acked).max(0) }, acked),
        };
        HaStats {
            role: self.role,
            log_end: end,
            peer_end,
            lag_bytes: lag,
            slaves: self.slaves.load(Ordering::Acquire),
            healthy: self.healthy.load(Ordering::Acquire),
            streaming: self.streaming.load(Ordering::Acquire),
            connects: self.connects.load(Ordering::Acquire),
        }
    }
}

/// A snapshot of a broker's replication state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaStats {
    /// The role.
    pub role: Role,
    /// The local journal's end offset.
    pub log_end: i64,
    /// Master: the best slave ack (-1: none); slave: the master's end as last heard.
    pub peer_end: i64,
    /// Replication lag in bytes (master: its end minus the best ack; slave: the master's end
    /// minus its own).
    pub lag_bytes: i64,
    /// Master: slaves through their handshake.
    pub slaves: usize,
    /// Master: whether a slave is healthy (SYNC_MASTER accepts acks=all).
    pub healthy: bool,
    /// Slave: whether it is streaming from its master.
    pub streaming: bool,
    /// Slave: connects to the master so far.
    pub connects: u64,
}

impl fmt::Display for HaStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::AsyncMaster => "ASYNC_MASTER",
            Role::SyncMaster => "SYNC_MASTER",
            Role::Slave => "SLAVE",
        };
        write!(
            f,
            "ha role={role} log_end={} peer_end={} lag_bytes={} slaves={} healthy={} streaming={} connects={}",
            self.log_end,
            self.peer_end,
            self.lag_bytes,
            self.slaves,
            self.healthy,
            self.streaming,
            self.connects
        )
    }
}

/// Opens the journal and brings the state in line with it at start-up: a master replays entries
/// past its partitions' ends (a change journaled but not applied when the process died); a slave
/// does the same and, when its state does not match its journal, starts over empty.
pub(crate) fn recover(
    cluster: &mut super::state::Cluster,
    data_dir: &std::path::Path,
    role: Role,
) -> io::Result<Journal> {
    let master = role != Role::Slave;
    let (mut j, existed) = Journal::open(data_dir, master)?;
    if master && !existed && cluster.has_data() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "HA: this data directory holds data that is not in an HA journal; a master needs a fresh data directory",
        ));
    }
    let replayed = j.replay(|e| journal::apply(cluster, &e));
    match replayed {
        Ok(()) => {}
        Err(e) if master => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("HA journal: {e}"),
            ))
        }
        Err(e) => {
            log::warn!("HA: the local state does not match the journal ({e}): starting over empty");
            cluster.wipe()?;
            j.reset(0, 0)?;
        }
    }
    if !master && j.end() == j.start() && cluster.has_data() {
        log::warn!("HA: partition data without a journal: starting over empty");
        cluster.wipe()?;
    }
    Ok(j)
}

/// Starts the HA thread of a broker whose state is `shared` (the journal already attached to a
/// master's cluster, or handed over here for a slave).
pub(crate) fn start(
    config: HaConfig,
    shared: Arc<Shared>,
    ha: Arc<HaShared>,
    slave_journal: Option<Journal>,
    reader: Option<JournalReader>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> io::Result<std::thread::JoinHandle<io::Result<()>>> {
    let mut sel = Selector::with_config(SelectorConfig {
        max_frame_size: 1 << 20,
        connections_max_idle: None,
        ..SelectorConfig::default()
    })?;
    let _ = ha.waker.set(sel.waker());
    let listener = match (config.role, config.listen) {
        (Role::Slave, _) => None,
        (_, Some(addr)) => {
            let l = sel.listen(addr)?;
            let bound = sel
                .listener_addr(l)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let _ = ha.listen_addr.set(bound);
            log::info!("HA: {:?} listening for slaves on {bound}", config.role);
            Some(l)
        }
        (_, None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a master needs an HA listen address",
            ))
        }
    };
    let _ = listener;
    std::thread::Builder::new()
        .name("mqnet-ha".into())
        .spawn(move || match (config.role, reader, slave_journal) {
            (Role::Slave, _, Some(j)) => {
                let Some(master) = config.master else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a slave needs its master's HA address",
                    ));
                };
                run_slave(sel, config.slave_config, master, j, &shared, &ha, &stop)
            }
            (_, Some(r), _) => run_master(sel, config.master_config, r, &shared, &ha, &stop),
            _ => Err(io::Error::other("HA: no journal")),
        })
}

const STAGED_LIMIT: usize = 1 << 20;
const TICK: Duration = Duration::from_millis(100);

fn key(c: ChannelId) -> u64 {
    (u64::from(c.generation()) << 32) | c.slot() as u64
}

fn wake_nodes(shared: &Shared) {
    if let Some(ws) = shared.wakers.get() {
        for w in ws {
            let _ = w.wake();
        }
    }
}

fn run_master(
    mut sel: Selector,
    config: MasterConfig,
    log: JournalReader,
    shared: &Shared,
    ha: &HaShared,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut m = Master::new(config);
    let mut conns: Vec<ChannelId> = Vec::new();
    let mut expired = Vec::new();
    let mut received = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let timeout = m
            .poll_timeout()
            .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK));
        sel.poll(Some(timeout))?;
        let now = Instant::now();
        for a in sel.accepted() {
            log::info!("HA: connection from {}", a.peer);
            m.accepted(key(a.channel), now);
            conns.push(a.channel);
        }
        for d in sel.disconnected() {
            m.closed(key(d.channel));
            conns.retain(|c| *c != d.channel);
        }
        sel.swap_completed_receives(&mut received);
        for r in received.drain(..) {
            if let Err(e) = m.on_frame(key(r.channel), now, &r.frame, &log) {
                log::warn!("HA: closing slave connection: {e}");
                if let HaError::Refused(reason) = e {
                    let _ = sel.send(r.channel, protocol::encode_refuse(reason));
                    let _ = sel.close(
                        r.channel,
                        CloseMode::Graceful {
                            timeout: Duration::from_secs(1),
                        },
                    );
                } else {
                    let _ = sel.close(r.channel, CloseMode::Immediate);
                }
                m.closed(key(r.channel));
                conns.retain(|c| *c != r.channel);
            }
        }
        m.handle_timeout(now, &mut expired);
        for k in expired.drain(..) {
            if let Some(i) = conns.iter().position(|c| key(*c) == k) {
                let _ = sel.close(conns.swap_remove(i), CloseMode::Immediate);
            }
        }
        let mut i = 0;
        while i < conns.len() {
            let c = conns[i];
            let mut failed = false;
            while sel.staged_bytes(c) < STAGED_LIMIT {
                match m.poll_transmit(key(c), now, &log) {
                    Ok(Some(frame)) => {
                        if let Err(e) = sel.send(c, frame) {
                            log::warn!("HA: send failed: {e}");
                            failed = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log::error!("HA: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                let _ = sel.close(c, CloseMode::Immediate);
                m.closed(key(c));
                conns.swap_remove(i);
            } else {
                i += 1;
            }
        }
        let acked = m.acked();
        let end = log.end();
        ha.healthy.store(m.healthy(end), Ordering::Release);
        ha.slaves.store(m.slaves().count(), Ordering::Release);
        if ha.acked.swap(acked, Ordering::AcqRel) != acked {
            wake_nodes(shared);
        }
    }
    Ok(())
}

fn run_slave(
    mut sel: Selector,
    config: SlaveConfig,
    master: SocketAddr,
    mut journal: Journal,
    shared: &Shared,
    ha: &HaShared,
    stop: &AtomicBool,
) -> io::Result<()> {
    let now = Instant::now();
    let mut s = Slave::new(config, journal.id(), journal.start(), journal.end(), now);
    // Journal bytes received but not yet a complete entry.
    let mut pending: Vec<u8> = Vec::new();
    let mut conn: Option<ChannelId> = None;
    let mut received = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if s.want_connect(now) {
            match sel.connect(master, &SocketOptions::default()) {
                Ok(c) => {
                    s.connecting(now);
                    ha.connects.fetch_add(1, Ordering::AcqRel);
                    conn = Some(c);
                }
                Err(e) => {
                    log::warn!("HA: cannot connect to {master}: {e}");
                    s.disconnected(now);
                }
            }
        }
        let timeout = s
            .poll_timeout()
            .map_or(TICK, |d| d.saturating_duration_since(now).min(TICK));
        sel.poll(Some(timeout))?;
        let now = Instant::now();
        for c in sel.connected() {
            if Some(*c) == conn {
                log::info!("HA: connected to master {master}");
                s.connected(now);
            }
        }
        let mut lost = false;
        for d in sel.disconnected() {
            if Some(d.channel) == conn {
                log::warn!("HA: lost master {master}: {:?}", d.reason);
                lost = true;
            }
        }
        sel.swap_completed_receives(&mut received);
        let mut failure: Option<HaError> = None;
        for r in received.drain(..) {
            if failure.is_some() || Some(r.channel) != conn {
                continue;
            }
            let ev = match s.on_frame(now, &r.frame) {
                Ok(ev) => ev,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            let r = match ev {
                SlaveEvent::None => {
                    if s.log_id() != journal.id() {
                        journal.adopt_id(s.log_id()).map_err(HaError::Io)
                    } else {
                        Ok(())
                    }
                }
                SlaveEvent::Append(data) => store_chunk(&mut journal, &mut pending, &data, shared)
                    .map(|()| {
                        s.stored(journal.end());
                    }),
                SlaveEvent::Reset { log_id, offset } => {
                    pending.clear();
                    let wiped = shared.lock().wipe();
                    wiped
                        .and_then(|()| journal.reset(log_id, offset))
                        .map(|()| s.reset_done(log_id, offset))
                        .map_err(HaError::Io)
                }
            };
            if let Err(e) = r {
                failure = Some(e);
            }
        }
        if let Some(e) = failure {
            log::warn!("HA: closing the master connection: {e}");
            lost = true;
            if let Some(c) = conn {
                let _ = sel.close(c, CloseMode::Immediate);
            }
        }
        if !lost && s.handle_timeout(now) {
            log::warn!("HA: master {master} silent: reconnecting");
            lost = true;
            if let Some(c) = conn {
                let _ = sel.close(c, CloseMode::Immediate);
            }
        }
        if lost {
            conn = None;
            pending.clear();
            // Resume from the last complete entry.
            s.stored(journal.end());
            s.disconnected(now);
        }
        if let Some(c) = conn {
            while let Some(frame) = s.poll_transmit(now) {
                if let Err(e) = sel.send(c, frame) {
                    log::warn!("HA: send to master failed: {e}");
                    break;
                }
            }
        }
        ha.master_end.store(s.master_end(), Ordering::Release);
        ha.streaming
            .store(s.state() == slave::SlaveState::Streaming, Ordering::Release);
    }
    let _ = journal.flush();
    Ok(())
}

/// Appends a chunk to the slave's journal (only its complete entries: a partial entry waits in
/// `pending`) and applies the entries to the state. A malformed or diverging entry cuts the
/// journal back to before it.
fn store_chunk(
    journal: &mut Journal,
    pending: &mut Vec<u8>,
    data: &[u8],
    shared: &Shared,
) -> Result<(), HaError> {
    pending.extend_from_slice(data);
    let mut cluster = shared.lock();
    let (used, r) = journal::for_each_entry(pending, |e| journal::apply(&mut cluster, &e));
    drop(cluster);
    let write = journal.append_raw(&pending[..used]);
    pending.drain(..used);
    write.map_err(HaError::Io)?;
    wake_nodes(shared);
    r.map_err(HaError::Journal)
}

#[cfg(test)]
mod tests;
