//! A simulated network that implements [`Transport`], for testing the layers above the Selector on
//! simulated time with injected faults (the quinn-proto / raft-rs style: deterministic, no sockets,
//! no sleeping).
//!
//! Each address can have a scripted server [`Behaviour`]. Time moves only inside
//! [`Transport::poll`]: the clock jumps to the next scheduled event, or by the poll's timeout when
//! nothing is scheduled sooner. Faults are injected between polls: [`SimNetwork::close_peer`],
//! [`SimNetwork::reset_peer`], [`SimNetwork::set_behaviour`], [`SimNetwork::set_queue_full`]
//! (sends refused with `QueueFull`, as the Selector does under back-pressure),
//! [`SimNetwork::set_send_delay`] (a send takes time to leave: a partial write completed later, or
//! never if the connection drops first), and [`SimNetwork::with_idle_timeout`] (idle expiry).
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use mqnet::net::{SocketOptions, Transport};
//! use mqnet::sim::{Behaviour, SimNetwork};
//!
//! let mut net = SimNetwork::new();
//! let addr = "127.0.0.1:9092".parse().unwrap();
//! net.set_behaviour(addr, Behaviour::Echo);
//! let ch = net.connect(addr, &SocketOptions::default()).unwrap();
//! net.poll(Some(Duration::from_millis(10))).unwrap();
//! assert_eq!(net.connected(), &[ch]);
//! net.send(ch, Bytes::from_static(b"hi")).unwrap();
//! let mut got = Vec::new();
//! for _ in 0..10 {
//!     net.poll(Some(Duration::from_millis(10))).unwrap();
//!     net.swap_completed_receives(&mut got);
//!     if !got.is_empty() { break; }
//! }
//! assert_eq!(&got[0].frame[..], b"hi");
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::net::{
    ChannelId, CompletedSend, DisconnectReason, Disconnected, IoFault, Received, SendError,
    SocketOptions, Transport,
};

/// How the simulated server at an address behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Accepts connections and answers every frame with the same frame (so a request that starts
    /// with its correlation id gets a correctly correlated response).
    Echo,
    /// Accepts connections and never answers (a stalled broker).
    Silent,
    /// Refuses connections (`ECONNREFUSED` after one latency).
    Refuse,
    /// Never completes a connect (a full accept backlog, a black-holed SYN).
    Blackhole,
    /// Accepts and answers every frame with a correlation id one higher than the request's.
    WrongCorrelation,
}

/// A scripted server at a simulated address (a fake broker, say): it sees every frame a client
/// sends there and answers with zero or more frames, each delivered one round trip after the
/// request, in order. A server that holds a request can answer it later through
/// [`SimNetwork::deliver`]. Connections to its address are accepted.
pub trait SimServer: Send {
    /// Handles one frame sent on `channel`; returns the frames to answer with.
    fn request(&mut self, channel: ChannelId, frame: Bytes) -> Vec<Bytes>;
}

/// The scripted servers, by address.
#[derive(Default)]
struct Servers(HashMap<SocketAddr, Box<dyn SimServer>>);

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Connected(ChannelId),
    ConnectFailed(ChannelId),
    SendDone(ChannelId, u64),
    Deliver(ChannelId, Bytes),
    Disconnect(ChannelId, DisconnectReason),
}

#[derive(Debug)]
struct SimChannel {
    addr: SocketAddr,
    connected: bool,
    next_seq: u64,
    /// Last connect, send, completed send or delivery (for idle expiry).
    last_active: Instant,
    /// When the last staged frame finishes leaving: a stream's frames leave in order, so a later
    /// frame never completes (or is answered) before an earlier one.
    sending_until: Instant,
}

/// Per-address send faults.
#[derive(Debug, Clone, Copy, Default)]
struct SendFaults {
    queue_full: bool,
    delay: Duration,
}

/// A run of frames of one channel in the borrowed-receive buffer: channel, start, end.
type SimRun = (ChannelId, usize, usize);

/// The simulated network. See the module docs.
#[derive(Debug)]
pub struct SimNetwork {
    now: Instant,
    latency: Duration,
    next_index: u32,
    next_event: u64,
    behaviours: HashMap<SocketAddr, Behaviour>,
    send_faults: HashMap<SocketAddr, SendFaults>,
    idle_timeout: Option<Duration>,
    channels: HashMap<ChannelId, SimChannel>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: HashMap<u64, Event>,
    connected: Vec<ChannelId>,
    disconnected: Vec<Disconnected>,
    sends: Vec<CompletedSend>,
    receives: Vec<Received>,
    /// Borrowed-receive mode: the frames received by the last poll, length-prefixed, and their
    /// runs in that buffer.
    borrowed: Option<(Vec<u8>, Vec<SimRun>)>,
    connects: u64,
    history: Vec<(Instant, SocketAddr)>,
    /// Frames the server at an address swallows without answering, per address.
    drops: HashMap<SocketAddr, u64>,
    servers: Servers,
}

impl Default for SimNetwork {
    fn default() -> Self {
        SimNetwork::new()
    }
}

impl SimNetwork {
    /// A network with a one-way latency of 1 ms and no servers (connects to unknown addresses are
    /// refused).
    pub fn new() -> Self {
        SimNetwork {
            now: Instant::now(),
            latency: Duration::from_millis(1),
            next_index: 0,
            next_event: 0,
            behaviours: HashMap::new(),
            send_faults: HashMap::new(),
            idle_timeout: None,
            channels: HashMap::new(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            connected: Vec::new(),
            disconnected: Vec::new(),
            sends: Vec::new(),
            receives: Vec::new(),
            borrowed: None,
            connects: 0,
            history: Vec::new(),
            drops: HashMap::new(),
            servers: Servers::default(),
        }
    }

    /// Sets the one-way latency.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Closes connected channels with no activity (connect, send, completed send, delivery) for
    /// `idle`, reporting [`DisconnectReason::IdleExpired`], as the Selector's
    /// `connections_max_idle` does. `None` (the default) disables it.
    pub fn with_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// While `full`, sends to `addr` are refused with [`SendError::QueueFull`] (the Selector's
    /// back-pressure), handing the frame back.
    pub fn set_queue_full(&mut self, addr: SocketAddr, full: bool) {
        self.send_faults.entry(addr).or_default().queue_full = full;
    }

    /// Frames sent to `addr` from now on take `delay` to leave (a partial write finished later):
    /// their completed send, and the peer's answer, come that much later; a connection dropped
    /// meanwhile drops them unsent.
    pub fn set_send_delay(&mut self, addr: SocketAddr, delay: Duration) {
        self.send_faults.entry(addr).or_default().delay = delay;
    }

    /// Sets (or changes) the behaviour of the server at `addr`. Existing connections keep running
    /// under the new behaviour.
    pub fn set_behaviour(&mut self, addr: SocketAddr, behaviour: Behaviour) {
        self.behaviours.insert(addr, behaviour);
    }

    /// Puts a scripted server at `addr` (it takes precedence over a [`Behaviour`] there).
    pub fn set_server(&mut self, addr: SocketAddr, server: Box<dyn SimServer>) {
        self.servers.0.insert(addr, server);
    }

    /// Delivers `frame` to the client on `channel` one latency from now (a held request's late
    /// answer). Nothing happens if the channel is closed by then.
    pub fn deliver(&mut self, channel: ChannelId, frame: Bytes) {
        self.schedule(self.latency, Event::Deliver(channel, frame));
    }

    /// Advances the clock by `d` without polling.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Open channels (connecting or connected).
    pub fn open_channels(&self) -> usize {
        self.channels.len()
    }

    /// Open channels to `addr`.
    pub fn open_channels_to(&self, addr: SocketAddr) -> usize {
        self.channels.values().filter(|c| c.addr == addr).count()
    }

    /// Connect attempts made so far.
    pub fn connect_attempts(&self) -> u64 {
        self.connects
    }

    /// Every connect attempt so far: when, and to which address.
    pub fn connect_history(&self) -> &[(Instant, SocketAddr)] {
        &self.history
    }

    /// The peer at `addr` closes every connection cleanly (reported at the next poll).
    pub fn close_peer(&mut self, addr: SocketAddr) {
        self.drop_peer(addr, DisconnectReason::PeerClosed);
    }

    /// The peer at `addr` resets every connection.
    pub fn reset_peer(&mut self, addr: SocketAddr) {
        let fault = IoFault {
            kind: io::ErrorKind::ConnectionReset,
            os_code: Some(libc::ECONNRESET),
        };
        self.drop_peer(addr, DisconnectReason::Io(fault));
    }

    /// The peer at `addr` resets one connection: the `k % count`-th of its established
    /// connections in channel order. Returns whether there was one.
    pub fn reset_one(&mut self, addr: SocketAddr, k: usize) -> bool {
        let mut ids: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, c)| c.addr == addr && c.connected)
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return false;
        }
        ids.sort_by_key(|id| id.index);
        let fault = IoFault {
            kind: io::ErrorKind::ConnectionReset,
            os_code: Some(libc::ECONNRESET),
        };
        let id = ids[k % ids.len()];
        self.schedule(
            Duration::ZERO,
            Event::Disconnect(id, DisconnectReason::Io(fault)),
        );
        true
    }

    /// The server at `addr` swallows the next `n` frames it receives (on any connection) without
    /// answering, as if they were lost; the connections stay open. Zero ends the losses.
    pub fn drop_frames(&mut self, addr: SocketAddr, n: u64) {
        self.drops.insert(addr, n);
    }

    fn drop_peer(&mut self, addr: SocketAddr, reason: DisconnectReason) {
        let ids: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, c)| c.addr == addr && c.connected)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.schedule(Duration::ZERO, Event::Disconnect(id, reason));
        }
    }

    fn next_idle_expiry(&self) -> Option<Instant> {
        let idle = self.idle_timeout?;
        self.channels
            .values()
            .filter(|c| c.connected)
            .map(|c| c.last_active + idle)
            .min()
    }

    fn expire_idle(&mut self) {
        let Some(idle) = self.idle_timeout else {
            return;
        };
        let now = self.now;
        let mut expired: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, c)| c.connected && now.saturating_duration_since(c.last_active) >= idle)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_by_key(|id| id.index);
        for id in expired {
            self.channels.remove(&id);
            self.disconnected.push(Disconnected {
                channel: id,
                reason: DisconnectReason::IdleExpired,
                unsent: 0,
            });
        }
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        let n = self.next_event;
        self.next_event += 1;
        self.queue.push(Reverse((self.now + after, n)));
        self.events.insert(n, event);
    }

    fn behaviour(&self, addr: SocketAddr) -> Behaviour {
        self.behaviours
            .get(&addr)
            .copied()
            .unwrap_or(Behaviour::Refuse)
    }

    fn run(&mut self, event: Event) {
        match event {
            Event::Connected(id) => {
                if let Some(c) = self.channels.get_mut(&id) {
                    c.connected = true;
                    c.last_active = self.now;
                    self.connected.push(id);
                }
            }
            Event::ConnectFailed(id) => {
                if self.channels.remove(&id).is_some() {
                    let fault = IoFault {
                        kind: io::ErrorKind::ConnectionRefused,
                        os_code: Some(libc::ECONNREFUSED),
                    };
                    self.disconnected.push(Disconnected {
                        channel: id,
                        reason: DisconnectReason::ConnectFailed(fault),
                        unsent: 0,
                    });
                }
            }
            Event::SendDone(id, seq) => {
                if let Some(c) = self.channels.get_mut(&id) {
                    c.last_active = self.now;
                    self.sends.push(CompletedSend { channel: id, seq });
                }
            }
            Event::Deliver(id, frame) => {
                if let Some(c) = self.channels.get_mut(&id) {
                    c.last_active = self.now;
                    match &mut self.borrowed {
                        None => self.receives.push(Received { channel: id, frame }),
                        Some((buf, runs)) => {
                            let start = buf.len();
                            // Simulated frames are the test's own and far below 4 GiB.
                            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                            buf.extend_from_slice(&len.to_be_bytes());
                            buf.extend_from_slice(&frame);
                            match runs.last_mut() {
                                Some((ch, _, end)) if *ch == id && *end == start => {
                                    *end = buf.len();
                                }
                                _ => runs.push((id, start, buf.len())),
                            }
                        }
                    }
                }
            }
            Event::Disconnect(id, reason) => {
                if self.channels.remove(&id).is_some() {
                    self.disconnected.push(Disconnected {
                        channel: id,
                        reason,
                        unsent: 0,
                    });
                }
            }
        }
    }
}

impl Transport for SimNetwork {
    fn connect(&mut self, addr: SocketAddr, _options: &SocketOptions) -> io::Result<ChannelId> {
        self.connects += 1;
        self.history.push((self.now, addr));
        let id = ChannelId {
            index: self.next_index,
            generation: 0,
        };
        self.next_index += 1;
        self.channels.insert(
            id,
            SimChannel {
                addr,
                connected: false,
                next_seq: 0,
                last_active: self.now,
                sending_until: self.now,
            },
        );
        if self.servers.0.contains_key(&addr) {
            self.schedule(self.latency * 2, Event::Connected(id));
            return Ok(id);
        }
        match self.behaviour(addr) {
            Behaviour::Refuse => self.schedule(self.latency * 2, Event::ConnectFailed(id)),
            Behaviour::Blackhole => {}
            _ => self.schedule(self.latency * 2, Event::Connected(id)),
        }
        Ok(id)
    }

    fn send(&mut self, channel: ChannelId, frame: Bytes) -> Result<u64, (SendError, Bytes)> {
        let Some(c) = self.channels.get_mut(&channel) else {
            return Err((SendError::UnknownChannel, frame));
        };
        let faults = self.send_faults.get(&c.addr).copied().unwrap_or_default();
        if faults.queue_full {
            return Err((
                SendError::QueueFull {
                    staged: frame.len(),
                    limit: 0,
                },
                frame,
            ));
        }
        let seq = c.next_seq;
        c.next_seq += 1;
        c.last_active = self.now;
        let addr = c.addr;
        let done = c.sending_until.max(self.now) + faults.delay;
        c.sending_until = done;
        let leave = done - self.now;
        self.schedule(leave, Event::SendDone(channel, seq));
        let rtt = leave + self.latency * 2;
        if let Some(d) = self.drops.get_mut(&addr).filter(|d| **d > 0) {
            *d -= 1;
            return Ok(seq);
        }
        if let Some(server) = self.servers.0.get_mut(&addr) {
            for answer in server.request(channel, frame) {
                self.schedule(rtt, Event::Deliver(channel, answer));
            }
            return Ok(seq);
        }
        match self.behaviour(addr) {
            Behaviour::Echo => self.schedule(rtt, Event::Deliver(channel, frame)),
            Behaviour::WrongCorrelation => {
                let mut v = frame.to_vec();
                if v.len() >= 4 {
                    let c = i32::from_be_bytes([v[0], v[1], v[2], v[3]]).wrapping_add(1);
                    v[..4].copy_from_slice(&c.to_be_bytes());
                }
                self.schedule(rtt, Event::Deliver(channel, Bytes::from(v)));
            }
            _ => {}
        }
        Ok(seq)
    }

    fn close(&mut self, channel: ChannelId) {
        self.channels.remove(&channel);
    }

    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.connected.clear();
        self.disconnected.clear();
        self.sends.clear();
        self.receives.clear();
        if let Some((buf, runs)) = &mut self.borrowed {
            buf.clear();
            runs.clear();
        }
        let next = [
            self.queue.peek().map(|Reverse((t, _))| *t),
            self.next_idle_expiry(),
        ]
        .into_iter()
        .flatten()
        .min();
        let target = match (next, timeout) {
            (Some(t), Some(d)) => t.min(self.now + d),
            (Some(t), None) => t,
            (None, Some(d)) => self.now + d,
            (None, None) => self.now,
        };
        if target > self.now {
            self.now = target;
        }
        while let Some(Reverse((t, n))) = self.queue.peek().copied() {
            if t > self.now {
                break;
            }
            self.queue.pop();
            if let Some(e) = self.events.remove(&n) {
                self.run(e);
            }
        }
        self.expire_idle();
        Ok(())
    }

    fn now(&self) -> Instant {
        self.now
    }

    fn connected(&self) -> &[ChannelId] {
        &self.connected
    }

    fn disconnected(&self) -> &[Disconnected] {
        &self.disconnected
    }

    fn completed_sends(&self) -> &[CompletedSend] {
        &self.sends
    }

    fn swap_completed_receives(&mut self, out: &mut Vec<Received>) {
        out.clear();
        std::mem::swap(out, &mut self.receives);
    }

    fn set_borrowed_receives(&mut self, on: bool) -> bool {
        self.borrowed = on.then(Default::default);
        true
    }

    fn received_run(&self, k: usize) -> Option<(ChannelId, &[u8])> {
        let (buf, runs) = self.borrowed.as_ref()?;
        let &(ch, start, end) = runs.get(k)?;
        Some((ch, buf.get(start..end).unwrap_or_default()))
    }
}
