//! Shared helpers of the Selector loopback tests: bounded poll loops, an echo server that runs
//! inside a Selector, raw `std::net` peers, and payload patterns.
//!
//! Every loop here is bounded both in iterations and in time ([`DEADLINE`]); running out of either
//! panics with a message naming what was awaited.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::net::{Accepted, ChannelId, CompletedSend, Disconnected, Received, Selector, SendError};

/// Generous bound on every wait: far beyond what any condition needs on a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// Poll timeout of one iteration of the bounded loops.
pub const TICK: Duration = Duration::from_millis(5);
/// Bound on iterations of every loop (the deadline normally fires first).
pub const MAX_POLLS: u64 = 10_000_000;

/// Turns on `RUST_LOG`-driven logging, once.
pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// `127.0.0.1:0`.
pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Polls `sel` with a short timeout until `step` (run after every poll) returns `true`; panics
/// after [`DEADLINE`] or [`MAX_POLLS`]. Returns the number of polls.
pub fn poll_until(
    sel: &mut Selector,
    what: &str,
    mut step: impl FnMut(&mut Selector) -> bool,
) -> u64 {
    let start = Instant::now();
    for i in 1..=MAX_POLLS {
        sel.poll(Some(TICK)).expect("Selector::poll failed");
        if step(sel) {
            return i;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} ({i} polls) waiting for: {what}");
        }
    }
    panic!("gave up after {MAX_POLLS} polls waiting for: {what}");
}

/// As [`poll_until`] for two Selectors driven from one thread: each iteration polls both (with a
/// 1 ms timeout each) and then runs `step`.
pub fn poll_pair_until(
    a: &mut Selector,
    b: &mut Selector,
    what: &str,
    mut step: impl FnMut(&mut Selector, &mut Selector) -> bool,
) -> u64 {
    let start = Instant::now();
    let tick = Duration::from_millis(1);
    for i in 1..=MAX_POLLS {
        a.poll(Some(tick)).expect("Selector::poll failed");
        b.poll(Some(tick)).expect("Selector::poll failed");
        if step(a, b) {
            return i;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} ({i} polls) waiting for: {what}");
        }
    }
    panic!("gave up after {MAX_POLLS} polls waiting for: {what}");
}

/// Polls `n` more times with [`TICK`], running `step` after each (for "nothing more happens"
/// checks).
pub fn poll_n(sel: &mut Selector, n: usize, mut step: impl FnMut(&mut Selector)) {
    for _ in 0..n {
        sel.poll(Some(TICK)).expect("Selector::poll failed");
        step(sel);
    }
}

/// Everything one poll reported, copied out (receives are drained).
#[derive(Debug, Default)]
pub struct Outputs {
    pub connected: Vec<ChannelId>,
    pub accepted: Vec<Accepted>,
    pub disconnected: Vec<Disconnected>,
    pub completed_sends: Vec<CompletedSend>,
    pub receives: Vec<Received>,
    pub woken: bool,
}

impl Outputs {
    /// Takes the outputs of the last poll out of `sel`.
    pub fn take(sel: &mut Selector) -> Outputs {
        Outputs {
            connected: sel.connected().to_vec(),
            accepted: sel.accepted().to_vec(),
            disconnected: sel.disconnected().to_vec(),
            completed_sends: sel.completed_sends().to_vec(),
            woken: sel.woken(),
            receives: sel.drain_completed_receives().collect(),
        }
    }

    /// Appends `other` to `self`.
    pub fn extend(&mut self, other: Outputs) {
        self.connected.extend(other.connected);
        self.accepted.extend(other.accepted);
        self.disconnected.extend(other.disconnected);
        self.completed_sends.extend(other.completed_sends);
        self.receives.extend(other.receives);
        self.woken |= other.woken;
    }

    /// Frames received on `ch`, in order.
    pub fn frames_on(&self, ch: ChannelId) -> Vec<Bytes> {
        self.receives
            .iter()
            .filter(|r| r.channel == ch)
            .map(|r| r.frame.clone())
            .collect()
    }

    /// Disconnect reports of `ch`.
    pub fn disconnects_of(&self, ch: ChannelId) -> Vec<Disconnected> {
        self.disconnected
            .iter()
            .filter(|d| d.channel == ch)
            .copied()
            .collect()
    }

    /// Completed send sequence numbers of `ch`, in report order.
    pub fn seqs_of(&self, ch: ChannelId) -> Vec<u64> {
        self.completed_sends
            .iter()
            .filter(|s| s.channel == ch)
            .map(|s| s.seq)
            .collect()
    }
}

/// An echo server living in a Selector: every frame received on an accepted channel is sent back
/// on it, in order. Frames refused with `QueueFull` wait in a per-channel backlog and are retried
/// after later polls.
#[derive(Debug, Default)]
pub struct Echo {
    /// Accepted channels still open.
    pub channels: HashSet<ChannelId>,
    backlog: HashMap<ChannelId, VecDeque<Bytes>>,
    /// Frames staged back so far.
    pub echoed: u64,
}

impl Echo {
    /// Call after every poll with what the poll reported: tracks accepted and disconnected
    /// channels and echoes the frames received on accepted channels.
    pub fn handle(&mut self, sel: &mut Selector, out: &Outputs) {
        for a in &out.accepted {
            self.channels.insert(a.channel);
        }
        for d in &out.disconnected {
            self.channels.remove(&d.channel);
            self.backlog.remove(&d.channel);
        }
        for r in &out.receives {
            if self.channels.contains(&r.channel) {
                self.backlog
                    .entry(r.channel)
                    .or_default()
                    .push_back(r.frame.clone());
            }
        }
        for (ch, queue) in &mut self.backlog {
            while let Some(frame) = queue.front() {
                match sel.send(*ch, frame.clone()) {
                    Ok(_) => {
                        queue.pop_front();
                        self.echoed += 1;
                    }
                    Err(SendError::QueueFull { .. }) => break,
                    Err(e) => panic!("echo send on {ch} failed: {e}"),
                }
            }
        }
    }
}

/// A deterministic, position-dependent byte pattern: every 8-byte word encodes its index mixed
/// with `seed`, so a lost, duplicated, reordered or shifted chunk is detected.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut w: u64 = 0;
    while v.len() < len {
        let word = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        v.extend_from_slice(&word.to_le_bytes());
        w += 1;
    }
    v.truncate(len);
    v
}

/// A payload that starts with `index` (big-endian u32) and continues with [`pattern`].
pub fn indexed_payload(index: u32, len: usize) -> Bytes {
    assert!(len >= 4);
    let mut v = index.to_be_bytes().to_vec();
    v.extend_from_slice(&pattern(u64::from(index), len - 4));
    Bytes::from(v)
}

/// Checks an [`indexed_payload`] and returns its index.
pub fn check_indexed_payload(frame: &[u8]) -> u32 {
    assert!(frame.len() >= 4, "frame too short: {} bytes", frame.len());
    let index = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    assert_same(
        &frame[4..],
        &pattern(u64::from(index), frame.len() - 4),
        &format!("payload of frame {index}"),
    );
    index
}

/// Asserts `got == want` without printing megabytes on failure.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: got {} bytes, want {} bytes; first difference at {:?}",
        got.len(),
        want.len(),
        first
    );
}

/// A length-prefixed frame as raw bytes.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// A blocking std listener on 127.0.0.1 whose `accept` gives up after [`DEADLINE`].
pub fn raw_listener() -> TcpListener {
    let l = TcpListener::bind(localhost()).expect("bind raw listener");
    // SO_RCVTIMEO bounds accept() on Linux.
    socket2::SockRef::from(&l)
        .set_read_timeout(Some(DEADLINE))
        .expect("SO_RCVTIMEO on listener");
    l
}

/// Accepts one connection (bounded by the listener's timeout) and bounds its reads and writes.
pub fn raw_accept(l: &TcpListener) -> TcpStream {
    let (s, _) = l.accept().expect("raw accept (timed out?)");
    bound_stream(&s);
    s
}

/// A blocking std stream to `addr` with `TCP_NODELAY` and bounded reads and writes.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, DEADLINE).expect("raw connect");
    bound_stream(&s);
    s
}

fn bound_stream(s: &TcpStream) {
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    s.set_write_timeout(Some(DEADLINE)).expect("write timeout");
}

/// Reads one frame from a blocking stream; `Ok(None)` at a clean EOF before a frame starts.
pub fn read_frame(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match s.read(&mut header[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = i32::from_be_bytes(header);
    assert!(len >= 0, "negative frame length {len}");
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// Writes one length-prefixed frame to a blocking stream.
pub fn write_frame(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    s.write_all(&encode_frame(payload))?;
    s.flush()
}

/// Makes sure the soft `RLIMIT_NOFILE` is at least `want`, raising it up to the hard limit.
/// Returns the soft limit in force afterwards.
#[allow(clippy::unnecessary_cast)] // `rlim_t` is not `u64` on every platform.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
    let cur = lim.rlim_cur as u64;
    if cur >= want {
        return cur;
    }
    let new = want.min(lim.rlim_max as u64);
    lim.rlim_cur = new as libc::rlim_t;
    // SAFETY: `lim` is a valid rlimit with `rlim_cur <= rlim_max`.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", io::Error::last_os_error());
    new
}
