//! Fuzzes the broker's HA layer over arbitrary bytes: both frame decoders, the journal entry
//! parser, and the master's and the slave's state machines fed the bytes as a stream of frames
//! (first byte of each: its length). Nothing may panic; a chunk's data must lie within its frame.
#![no_main]

use std::io;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqnet::broker::ha::master::{Master, MasterConfig};
use mqnet::broker::ha::slave::{Slave, SlaveConfig, SlaveEvent};
use mqnet::broker::ha::{journal, protocol, HaLog};

struct Mem(Vec<u8>);

impl HaLog for Mem {
    fn log_id(&self) -> u64 {
        7
    }
    fn start(&self) -> i64 {
        0
    }
    fn end(&self) -> i64 {
        self.0.len() as i64
    }
    fn read_into(&self, offset: i64, max: usize, buf: &mut BytesMut) -> io::Result<usize> {
        let at = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = self.0.get(at..).ok_or(io::ErrorKind::InvalidInput)?;
        let n = src.len().min(max);
        buf.put_slice(&src[..n]);
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let _ = protocol::decode_from_slave(data);
    if let Ok(protocol::FromMaster::Chunk { data: d, .. }) = protocol::decode_from_master(&frame) {
        assert!(d.len() <= frame.len());
    }
    let _ = journal::for_each_entry(data, |_| Ok(()));
    let log = Mem(vec![1u8; 100_000]);
    let mut now = Instant::now();
    let mut m = Master::new(MasterConfig::default());
    m.accepted(1, now);
    let mut s = Slave::new(SlaveConfig::default(), 0, 0, 0, now);
    s.connecting(now);
    s.connected(now);
    let mut rest = frame.clone();
    while let Some((&n, _)) = rest.split_first() {
        let n = usize::from(n).min(rest.len() - 1);
        let f = rest.slice(1..1 + n);
        rest = rest.slice(1 + n..);
        now += Duration::from_millis(n as u64 * 50);
        if m.on_frame(1, now, &f, &log).is_err() {
            m.closed(1);
            m.accepted(1, now);
        }
        for _ in 0..4 {
            if m.poll_transmit(1, now, &log).ok().flatten().is_none() {
                break;
            }
        }
        let mut expired = Vec::new();
        m.handle_timeout(now, &mut expired);
        match s.on_frame(now, &f) {
            Ok(SlaveEvent::Append(d)) => s.stored(s.log_end() + d.len() as i64),
            Ok(SlaveEvent::Reset { log_id, offset }) => s.reset_done(log_id, offset),
            Ok(SlaveEvent::None) => {}
            Err(_) => {
                s.disconnected(now);
                s.connecting(now);
                s.connected(now);
            }
        }
        while s.poll_transmit(now).is_some() {}
        let _ = s.handle_timeout(now);
    }
});
