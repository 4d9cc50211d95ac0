//! Simulated-time tests of the HA state machines: the time is an `Instant` the test moves, and
//! frames are carried between the two machines by hand.

use std::io;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::master::{Master, MasterConfig, SyncOutcome, SyncWaiters};
use super::protocol::{self, FromMaster, Hello, RefuseReason, Role};
use super::slave::{Slave, SlaveConfig, SlaveEvent, SlaveState};
use super::{HaError, HaLog};

struct MemLog {
    id: u64,
    start: i64,
    data: Vec<u8>,
}

impl MemLog {
    fn new(len: usize) -> MemLog {
        MemLog {
            id: 0xabc,
            start: 0,
            data: (0..len).map(|i| (i * 7 % 251) as u8).collect(),
        }
    }
}

impl HaLog for MemLog {
    fn log_id(&self) -> u64 {
        self.id
    }
    fn start(&self) -> i64 {
        self.start
    }
    fn end(&self) -> i64 {
        self.start + self.data.len() as i64
    }
    fn read_into(&self, offset: i64, max: usize, buf: &mut BytesMut) -> io::Result<usize> {
        let at = (offset - self.start) as usize;
        let n = (self.data.len() - at).min(max);
        buf.put_slice(&self.data[at..at + n]);
        Ok(n)
    }
}

const SEC: Duration = Duration::from_secs(1);

fn hello(id: i32, end: i64, log_id: u64) -> Bytes {
    protocol::encode_hello(&Hello {
        version: protocol::VERSION,
        broker_id: id,
        role: Role::Slave,
        cluster_id: "mqnet".into(),
        log_id,
        log_start: 0,
        log_end: end,
    })
}

fn report(off: i64) -> Bytes {
    protocol::encode_report(&mut BytesMut::new(), off)
}

/// A slave connected to a master over one simulated connection, with the slave's stored log.
struct Pair {
    m: Master,
    s: Slave,
    stored: Vec<u8>,
    now: Instant,
}

impl Pair {
    fn new(log: &MemLog) -> Pair {
        let now = Instant::now();
        let mut p = Pair {
            m: Master::new(MasterConfig::default()),
            s: Slave::new(SlaveConfig::default(), 0, 0, 0, now),
            stored: Vec::new(),
            now,
        };
        p.connect(log);
        p
    }

    fn connect(&mut self, log: &MemLog) {
        assert!(self.s.want_connect(self.now));
        self.s.connecting(self.now);
        self.m.accepted(1, self.now);
        self.s.connected(self.now);
        self.pump(log);
        assert_eq!(self.s.state(), SlaveState::Streaming);
    }

    /// Carries frames both ways until both are quiet; returns the chunk sizes the slave got.
    fn pump(&mut self, log: &MemLog) -> Vec<usize> {
        let mut chunks = Vec::new();
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(f) = self.s.poll_transmit(self.now) {
                self.m.on_frame(1, self.now, &f, log).unwrap();
                moved = true;
            }
            while let Some(f) = self.m.poll_transmit(1, self.now, log).unwrap() {
                moved = true;
                if let Ok(FromMaster::Chunk { data, .. }) = protocol::decode_from_master(&f) {
                    chunks.push(data.len());
                }
                match self.s.on_frame(self.now, &f).unwrap() {
                    SlaveEvent::None => {}
                    SlaveEvent::Append(d) => {
                        self.stored.extend_from_slice(&d);
                        self.s.stored(self.stored.len() as i64);
                    }
                    SlaveEvent::Reset { log_id, offset } => {
                        self.stored.clear();
                        self.s.reset_done(log_id, offset);
                    }
                }
            }
            if !moved {
                return chunks;
            }
        }
        panic!("no quiescence");
    }
}

#[test]
fn chunks_are_at_most_the_transfer_batch_and_the_slave_copies_the_log() {
    let log = MemLog::new(100 * 1024);
    let mut p = Pair::new(&log);
    assert_eq!(p.m.acked(), 100 * 1024);
    assert_eq!(p.stored, log.data);
    assert_eq!(p.s.lag(), 0);
    // The chunks were cut at 32 KiB: 3 full and the rest.
    let log2 = MemLog {
        data: [log.data.clone(), vec![9u8; 70_000]].concat(),
        ..log
    };
    let chunks = p.pump(&log2);
    assert_eq!(chunks, vec![32768, 32768, 70_000 - 65536]);
    assert_eq!(p.stored, log2.data);
    assert_eq!(p.m.acked(), log2.end());
    assert!(p.m.healthy(log2.end()));
}

#[test]
fn heartbeat_after_five_idle_seconds_and_not_before() {
    let log = MemLog::new(10);
    let mut p = Pair::new(&log);
    let t0 = p.now;
    assert_eq!(
        p.m.poll_transmit(1, t0 + 5 * SEC - Duration::from_millis(1), &log)
            .unwrap(),
        None
    );
    assert!(p.m.poll_timeout().unwrap() <= t0 + 5 * SEC);
    let hb = p.m.poll_transmit(1, t0 + 5 * SEC, &log).unwrap().unwrap();
    match protocol::decode_from_master(&hb).unwrap() {
        FromMaster::Chunk {
            offset,
            data,
            master_end,
        } => {
            assert_eq!((offset, data.len(), master_end), (10, 0, 10));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.s.on_frame(t0 + 5 * SEC, &hb).unwrap(), SlaveEvent::None);
    // The next heartbeat is 5 s after this one.
    assert_eq!(p.m.poll_transmit(1, t0 + 9 * SEC, &log).unwrap(), None);
    assert!(p.m.poll_transmit(1, t0 + 10 * SEC, &log).unwrap().is_some());
}

#[test]
fn slave_reports_after_each_store_and_every_five_seconds() {
    let log = MemLog::new(10);
    let mut p = Pair::new(&log);
    let t0 = p.now;
    assert_eq!(
        p.s.poll_transmit(t0 + 5 * SEC - Duration::from_millis(1)),
        None
    );
    assert_eq!(p.s.poll_timeout(), Some(t0 + 5 * SEC));
    let r = p.s.poll_transmit(t0 + 5 * SEC).unwrap();
    assert_eq!(r, report(10));
    p.s.stored(10);
    assert_eq!(p.s.poll_transmit(t0 + 5 * SEC), Some(report(10)));
}

#[test]
fn housekeeping_closes_a_silent_slave_at_twenty_seconds() {
    let log = MemLog::new(10);
    let mut p = Pair::new(&log);
    let t0 = p.now;
    let mut expired = Vec::new();
    p.m.handle_timeout(t0 + 20 * SEC - Duration::from_millis(1), &mut expired);
    assert!(expired.is_empty());
    // A report at 15 s pushes housekeeping to 35 s.
    p.m.on_frame(1, t0 + 15 * SEC, &report(10), &log).unwrap();
    p.m.handle_timeout(t0 + 34 * SEC, &mut expired);
    assert!(expired.is_empty());
    p.m.handle_timeout(t0 + 35 * SEC, &mut expired);
    assert_eq!(expired, vec![1]);
    assert_eq!(p.m.acked(), -1);
    assert!(!p.m.healthy(10));
    // A connection that never handshakes is closed too.
    p.m.accepted(2, t0);
    p.m.handle_timeout(t0 + 20 * SEC, &mut expired);
    assert_eq!(expired, vec![1, 2]);
}

#[test]
fn slave_gives_up_on_a_silent_master_and_reconnects_five_seconds_later() {
    let log = MemLog::new(10);
    let mut p = Pair::new(&log);
    let t0 = p.now;
    assert!(!p.s.handle_timeout(t0 + 20 * SEC - Duration::from_millis(1)));
    assert!(p.s.handle_timeout(t0 + 20 * SEC));
    p.s.disconnected(t0 + 20 * SEC);
    assert!(!p.s.want_connect(t0 + 25 * SEC - Duration::from_millis(1)));
    assert_eq!(p.s.poll_timeout(), Some(t0 + 25 * SEC));
    assert!(p.s.want_connect(t0 + 25 * SEC));
}

#[test]
fn reconnect_resumes_from_the_slaves_end() {
    let mut log = MemLog::new(40_000);
    let mut p = Pair::new(&log);
    // The connection drops; the master appends more meanwhile.
    p.m.closed(1);
    p.s.disconnected(p.now);
    log.data.extend_from_slice(&[5u8; 1000]);
    p.now += 5 * SEC;
    p.connect(&log);
    // Only the new 1000 bytes were sent, starting where the slave ended.
    assert_eq!(p.stored, log.data);
    assert_eq!(p.m.acked(), 41_000);
    assert_eq!(p.s.connects(), 2);
}

#[test]
fn a_partial_store_resumes_from_what_was_stored() {
    let log = MemLog::new(50_000);
    let now = Instant::now();
    let mut m = Master::new(MasterConfig::default());
    let mut s = Slave::new(SlaveConfig::default(), 0, 0, 0, now);
    s.connecting(now);
    m.accepted(1, now);
    s.connected(now);
    let h = s.poll_transmit(now).unwrap();
    m.on_frame(1, now, &h, &log).unwrap();
    let w = m.poll_transmit(1, now, &log).unwrap().unwrap();
    s.on_frame(now, &w).unwrap();
    let c = m.poll_transmit(1, now, &log).unwrap().unwrap();
    // The driver could store only 1000 of the 32768 bytes (a partial journal entry waits).
    assert!(matches!(
        s.on_frame(now, &c).unwrap(),
        SlaveEvent::Append(_)
    ));
    s.stored(1000);
    assert_eq!(s.poll_transmit(now), Some(report(1000)));
    // The next chunk still follows on from what arrived.
    let c2 = m.poll_transmit(1, now, &log).unwrap().unwrap();
    assert!(matches!(
        s.on_frame(now, &c2).unwrap(),
        SlaveEvent::Append(_)
    ));
    // After a reconnect the slave asks from what it stored.
    s.disconnected(now);
    s.connecting(now + 5 * SEC);
    s.connected(now + 5 * SEC);
    let h = s.poll_transmit(now + 5 * SEC).unwrap();
    match protocol::decode_from_slave(&h).unwrap() {
        protocol::FromSlave::Hello(h) => assert_eq!(h.log_end, 1000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn out_of_range_and_foreign_logs_get_an_explicit_reset() {
    let log = MemLog::new(100);
    let now = Instant::now();
    for (end, log_id, why) in [
        (500, 0xabc, "past the master's end"),
        (50, 0xdef, "another master's log"),
    ] {
        let mut m = Master::new(MasterConfig::default());
        let mut s = Slave::new(SlaveConfig::default(), log_id, 0, end, now);
        s.connecting(now);
        m.accepted(1, now);
        s.connected(now);
        let h = s.poll_transmit(now).unwrap();
        m.on_frame(1, now, &h, &log).unwrap();
        let w = m.poll_transmit(1, now, &log).unwrap().unwrap();
        assert_eq!(s.on_frame(now, &w).unwrap(), SlaveEvent::None, "{why}");
        let r = m.poll_transmit(1, now, &log).unwrap().unwrap();
        assert_eq!(
            s.on_frame(now, &r).unwrap(),
            SlaveEvent::Reset {
                log_id: 0xabc,
                offset: 0
            },
            "{why}"
        );
        s.reset_done(0xabc, 0);
        assert_eq!(s.poll_transmit(now), Some(report(0)));
        m.on_frame(1, now, &report(0), &log).unwrap();
        let c = m.poll_transmit(1, now, &log).unwrap().unwrap();
        match protocol::decode_from_master(&c).unwrap() {
            FromMaster::Chunk { offset, data, .. } => assert_eq!((offset, data.len()), (0, 100)),
            other => panic!("{other:?}"),
        }
    }
    // Below the master's start (the master's log moved on).
    let trimmed = MemLog {
        start: 1000,
        data: vec![1; 10],
        id: 0xabc,
    };
    let mut m = Master::new(MasterConfig::default());
    m.accepted(1, now);
    m.on_frame(1, now, &hello(2, 10, 0xabc), &trimmed).unwrap();
    let _welcome = m.poll_transmit(1, now, &trimmed).unwrap().unwrap();
    let r = m.poll_transmit(1, now, &trimmed).unwrap().unwrap();
    assert_eq!(
        protocol::decode_from_master(&r).unwrap(),
        FromMaster::Reset {
            log_id: 0xabc,
            offset: 1000
        }
    );
}

#[test]
fn handshake_refusals() {
    let log = MemLog::new(10);
    let now = Instant::now();
    let mut m = Master::new(MasterConfig::default());
    m.accepted(1, now);
    m.on_frame(1, now, &hello(2, 0, 0), &log).unwrap();
    // A second slave with the same id.
    m.accepted(2, now);
    assert!(matches!(
        m.on_frame(2, now, &hello(2, 0, 0), &log),
        Err(HaError::Refused(RefuseReason::DuplicateId))
    ));
    let mut other = |h: Hello, want: RefuseReason| {
        m.accepted(3, now);
        let r = m.on_frame(3, now, &protocol::encode_hello(&h), &log);
        assert!(matches!(r, Err(HaError::Refused(x)) if x == want), "{r:?}");
        m.closed(3);
    };
    let base = Hello {
        version: protocol::VERSION,
        broker_id: 3,
        role: Role::Slave,
        cluster_id: "mqnet".into(),
        log_id: 0,
        log_start: 0,
        log_end: 0,
    };
    other(
        Hello {
            cluster_id: "stranger".into(),
            ..base.clone()
        },
        RefuseReason::WrongCluster,
    );
    other(
        Hello {
            version: 99,
            ..base.clone()
        },
        RefuseReason::Version,
    );
    other(
        Hello {
            role: Role::SyncMaster,
            ..base.clone()
        },
        RefuseReason::NotASlave,
    );
    // Reports do not count before a handshake (RocketMQ's forged acks).
    m.accepted(4, now);
    assert!(matches!(
        m.on_frame(4, now, &report(5), &log),
        Err(HaError::Unexpected(_))
    ));
    // The slave side turns a refusal into an error.
    let mut s = Slave::new(SlaveConfig::default(), 0, 0, 0, now);
    s.connecting(now);
    s.connected(now);
    assert!(matches!(
        s.on_frame(now, &protocol::encode_refuse(RefuseReason::Version)),
        Err(HaError::Refused(RefuseReason::Version))
    ));
}

#[test]
fn an_ack_above_what_was_sent_or_going_back_closes() {
    let log = MemLog::new(100);
    let now = Instant::now();
    let mut m = Master::new(MasterConfig::default());
    m.accepted(1, now);
    m.on_frame(1, now, &hello(2, 0, 0), &log).unwrap();
    let _w = m.poll_transmit(1, now, &log).unwrap();
    // Nothing sent yet: an ack of 1 is forged.
    assert!(matches!(
        m.on_frame(1, now, &report(1), &log),
        Err(HaError::AckAboveSent { ack: 1, sent: 0 })
    ));
    m.accepted(2, now);
    m.on_frame(2, now, &hello(3, 0, 0), &log).unwrap();
    let _w = m.poll_transmit(2, now, &log).unwrap();
    let _c = m.poll_transmit(2, now, &log).unwrap();
    m.on_frame(2, now, &report(100), &log).unwrap();
    assert!(matches!(
        m.on_frame(2, now, &report(101), &log),
        Err(HaError::AckAboveSent { .. })
    ));
    assert!(matches!(
        m.on_frame(2, now, &report(50), &log),
        Err(HaError::AckRegressed { .. })
    ));
    assert!(matches!(
        m.on_frame(2, now, &hello(3, 0, 0), &log),
        Err(HaError::Unexpected(_))
    ));
}

#[test]
fn a_chunk_off_the_slaves_end_closes() {
    let now = Instant::now();
    let mut s = Slave::new(SlaveConfig::default(), 1, 0, 10, now);
    s.connecting(now);
    s.connected(now);
    // Log data before the welcome.
    let mut b = BytesMut::new();
    protocol::put_chunk_header(&mut b, 10, 0, 10);
    assert!(matches!(
        s.on_frame(now, &b.freeze()),
        Err(HaError::Unexpected(_))
    ));
    s.on_frame(now, &protocol::encode_welcome(1, 0, 20))
        .unwrap();
    let mut b = BytesMut::new();
    protocol::put_chunk_header(&mut b, 12, 1, 20);
    b.put_u8(0);
    assert!(matches!(
        s.on_frame(now, &b.freeze()),
        Err(HaError::UnexpectedOffset {
            expected: 10,
            got: 12
        })
    ));
    assert!(matches!(
        s.on_frame(now, &Bytes::from_static(&[5, 1])),
        Err(HaError::Wire(_))
    ));
}

#[test]
fn health_needs_a_slave_within_the_gap() {
    let log = MemLog::new(1000);
    let now = Instant::now();
    let mut m = Master::new(MasterConfig {
        max_gap_bytes: 500,
        ..MasterConfig::default()
    });
    assert!(!m.healthy(1000));
    m.accepted(1, now);
    assert!(!m.healthy(1000), "not through its handshake");
    m.on_frame(1, now, &hello(2, 0, 0), &log).unwrap();
    assert!(!m.healthy(1000), "1000 bytes behind");
    assert!(m.healthy(500));
    m.closed(1);
    assert!(!m.healthy(0));
}

#[test]
fn sync_waits_release_on_ack_and_time_out_at_exactly_three_seconds() {
    let t0 = Instant::now();
    let timeout = MasterConfig::default().sync_timeout;
    assert_eq!(timeout, 3 * SEC);
    let mut w = SyncWaiters::default();
    w.wait(100, t0 + timeout, "a");
    w.wait(200, t0 + SEC + timeout, "b");
    assert_eq!(w.poll_timeout(), Some(t0 + timeout));
    let mut out = Vec::new();
    w.release(99, t0 + timeout - Duration::from_millis(1), &mut out);
    assert!(out.is_empty());
    w.release(150, t0 + SEC, &mut out);
    assert_eq!(out, vec![("a", SyncOutcome::Acked)]);
    out.clear();
    w.release(150, t0 + SEC + timeout - Duration::from_millis(1), &mut out);
    assert!(out.is_empty());
    w.release(150, t0 + SEC + timeout, &mut out);
    assert_eq!(out, vec![("b", SyncOutcome::TimedOut)]);
    assert!(w.is_empty());
}

#[test]
fn timing_defaults_are_rocketmqs() {
    let m = MasterConfig::default();
    assert_eq!(m.transfer_batch_bytes, 32 * 1024);
    assert_eq!(m.heartbeat_interval, 5 * SEC);
    assert_eq!(m.housekeeping, 20 * SEC);
    assert_eq!(m.max_gap_bytes, 256 << 20);
    let s = SlaveConfig::default();
    assert_eq!(s.reconnect_interval, 5 * SEC);
    assert_eq!(s.report_interval, 5 * SEC);
}
