//! A tiny harness: a Selector-based test server on its own thread, a NetworkClient with fixed
//! jitter, bounded poll loops, and (Linux) helpers to fill a listener's accept backlog.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{ClientConfig, ClientRequest, ClientResponse, NetworkClient, NodeId};
use mqnet::net::{
    ChannelId, CloseMode, DisconnectReason, ListenerId, Selector, SelectorWaker, SendError,
};

pub use crate::jitter::NoJitter;
pub use crate::selector_loop::{init_log, localhost, DEADLINE};

/// Generous slack of every timing upper bound.
pub const SLACK: Duration = Duration::from_secs(5);
/// Poll timeout of one iteration of the client loops.
pub const TICK: Duration = Duration::from_millis(10);
/// Bound on a test server's life (a test stops it long before).
pub const SERVER_LIFETIME: Duration = Duration::from_secs(120);
/// Bound on iterations of every loop (the deadline normally fires first).
pub const MAX_ITERS: u64 = 1_000_000;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The client under test: the real Selector, no handshake.
pub type Client = NetworkClient;

/// A client over a real Selector with `config`, without jitter, knowing `node` at `addr`.
pub fn client(config: ClientConfig, node: NodeId, addr: SocketAddr) -> Client {
    let mut c = NetworkClient::new(config)
        .expect("client selector")
        .with_rng(NoJitter);
    c.add_node(node, &addr.to_string()).expect("add_node");
    c
}

/// A request whose frame starts with its correlation id (Kafka convention), so an echo is a
/// valid response. Returns it with a copy of its frame.
pub fn request(c: &mut Client, node: NodeId) -> (ClientRequest, Bytes) {
    let corr = c.next_correlation_id();
    let mut v = corr.to_be_bytes().to_vec();
    v.extend_from_slice(format!("loopback request {corr}").as_bytes());
    let frame = Bytes::from(v);
    (ClientRequest::new(node, corr, frame.clone()), frame)
}

/// The correlation id at the front of a frame.
pub fn corr_of(frame: &[u8]) -> i32 {
    i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]])
}

/// Calls `ready` and polls until `node` is Ready. No request may complete meanwhile.
pub fn connect_ready(c: &mut Client, node: NodeId) {
    let start = Instant::now();
    for i in 0..MAX_ITERS {
        if c.ready(node, Instant::now()) {
            return;
        }
        c.poll_io(Some(TICK), Instant::now()).expect("client poll");
        let done = c.handle(Instant::now());
        assert!(done.is_empty(), "completions while connecting: {done:?}");
        if start.elapsed() > DEADLINE {
            panic!(
                "{node} not Ready after {DEADLINE:?} ({i} polls): {:?}",
                c.connection_state(node)
            );
        }
    }
    panic!("{node} not Ready after {MAX_ITERS} polls");
}

/// Polls the client until `done` (run after every poll, with every completion so far) holds.
/// Returns the completions.
pub fn poll_until(
    c: &mut Client,
    what: &str,
    mut done: impl FnMut(&mut Client, &[ClientResponse]) -> bool,
) -> Vec<ClientResponse> {
    let start = Instant::now();
    let mut all = Vec::new();
    for i in 0..MAX_ITERS {
        c.poll_io(Some(TICK), Instant::now()).expect("client poll");
        all.extend(c.handle(Instant::now()));
        if done(c, &all) {
            return all;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} ({i} polls) waiting for: {what}; completions so far: {all:?}");
        }
    }
    panic!("gave up after {MAX_ITERS} polls waiting for: {what}");
}

// ----- the test server -----------------------------------------------------------------------

/// What the test server does with a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Send it back as is; first releases frames held in `Hold` mode, in order.
    Echo = 0,
    /// Keep it, unanswered, until the mode becomes `Echo`.
    Hold = 1,
    /// Never answer it.
    Silent = 2,
    /// Send it back with a different correlation id (its first 4 bytes + 1 000 000).
    WrongCorrelation = 3,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Echo,
            1 => Mode::Hold,
            2 => Mode::Silent,
            _ => Mode::WrongCorrelation,
        }
    }
}

/// What the server saw, reported to the test thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    Accepted(ChannelId),
    Received {
        channel: ChannelId,
        frame: Bytes,
    },
    Disconnected {
        channel: ChannelId,
        reason: DisconnectReason,
    },
}

/// The frame the `WrongCorrelation` server answers `frame` with.
pub fn wrong_correlation(frame: &[u8]) -> Bytes {
    let mut v = frame.to_vec();
    let wrong = corr_of(frame).wrapping_add(1_000_000);
    v[..4].copy_from_slice(&wrong.to_be_bytes());
    Bytes::from(v)
}

/// A Selector with one listener, serving on its own thread until stopped (an `AtomicBool` plus
/// the Selector's waker). On stop it closes every channel and the listener, then the thread
/// ends and is joined.
pub struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    mode: Arc<AtomicU8>,
    waker: SelectorWaker,
    events: mpsc::Receiver<ServerEvent>,
    log: Vec<ServerEvent>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TestServer {
    /// Listens on `addr` (port 0: any) on the calling thread, so the port is bound when this
    /// returns, then serves on a new thread.
    pub fn start(addr: SocketAddr, mode: Mode) -> TestServer {
        let mut sel = Selector::new().expect("server selector");
        let listener = sel
            .listen(addr)
            .unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
        let addr = sel.listener_addr(listener).expect("listener address");
        let stop = Arc::new(AtomicBool::new(false));
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let waker = sel.waker();
        let (tx, events) = mpsc::channel();
        let thread = {
            let (stop, mode) = (stop.clone(), mode.clone());
            thread::Builder::new()
                .name(format!("test-server-{}", addr.port()))
                .spawn(move || serve(sel, listener, &stop, &mode, &tx))
                .expect("spawn server thread")
        };
        TestServer {
            addr,
            stop,
            mode,
            waker,
            events,
            log: Vec::new(),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the mode (frames held in `Hold` mode are released when it becomes `Echo`).
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.waker.wake().expect("wake server");
    }

    /// Every event reported so far.
    pub fn events(&mut self) -> &[ServerEvent] {
        self.log.extend(self.events.try_iter());
        &self.log
    }

    /// Frames received so far, in order.
    pub fn received(&mut self) -> Vec<Bytes> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Received { frame, .. } => Some(frame.clone()),
                _ => None,
            })
            .collect()
    }

    /// Disconnect reports so far.
    pub fn disconnects(&mut self) -> Vec<DisconnectReason> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Disconnected { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) until `cond` holds over every event reported so far.
    pub fn wait_until(&mut self, what: &str, mut cond: impl FnMut(&[ServerEvent]) -> bool) {
        let start = Instant::now();
        for _ in 0..MAX_ITERS {
            if cond(self.events()) {
                return;
            }
            let left = DEADLINE.saturating_sub(start.elapsed());
            if left.is_zero() {
                panic!(
                    "server {}: timed out after {DEADLINE:?} waiting for: {what}; events: {:?}",
                    self.addr, self.log
                );
            }
            match self
                .events
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(e) => self.log.push(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "server {} thread ended while waiting for: {what}",
                        self.addr
                    )
                }
            }
        }
        panic!("server {}: gave up waiting for: {what}", self.addr);
    }

    /// Stops the server: closes its channels and its listener, joins its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake().expect("wake server");
        if let Err(panic) = thread.join() {
            if !thread::panicking() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn reply(sel: &mut Selector, open: &HashSet<ChannelId>, channel: ChannelId, frame: Bytes) {
    if !open.contains(&channel) {
        return;
    }
    match sel.send(channel, frame) {
        Ok(_) | Err(SendError::UnknownChannel) => {}
        Err(e) => panic!("server send on {channel}: {e}"),
    }
}

fn serve(
    mut sel: Selector,
    listener: ListenerId,
    stop: &AtomicBool,
    mode: &AtomicU8,
    tx: &mpsc::Sender<ServerEvent>,
) {
    let mut open: HashSet<ChannelId> = HashSet::new();
    let mut held: Vec<(ChannelId, Bytes)> = Vec::new();
    // Bounded like every loop here; the stop flag ends it long before.
    let started = Instant::now();
    for _ in 0..MAX_ITERS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        assert!(
            started.elapsed() < SERVER_LIFETIME,
            "test server ran for {SERVER_LIFETIME:?} without being stopped"
        );
        // The waker interrupts this on stop and on mode changes.
        sel.poll(Some(Duration::from_millis(200)))
            .expect("server poll");
        for a in sel.accepted() {
            open.insert(a.channel);
            let _ = tx.send(ServerEvent::Accepted(a.channel));
        }
        for d in sel.disconnected() {
            open.remove(&d.channel);
            held.retain(|(ch, _)| *ch != d.channel);
            let _ = tx.send(ServerEvent::Disconnected {
                channel: d.channel,
                reason: d.reason,
            });
        }
        let mode = Mode::from_u8(mode.load(Ordering::SeqCst));
        if mode == Mode::Echo {
            // Release held frames before answering newer ones: responses stay in order.
            for (ch, frame) in std::mem::take(&mut held) {
                reply(&mut sel, &open, ch, frame);
            }
        }
        let frames: Vec<_> = sel.drain_completed_receives().collect();
        for r in frames {
            let _ = tx.send(ServerEvent::Received {
                channel: r.channel,
                frame: r.frame.clone(),
            });
            match mode {
                Mode::Echo => reply(&mut sel, &open, r.channel, r.frame),
                Mode::Hold => held.push((r.channel, r.frame)),
                Mode::Silent => {}
                Mode::WrongCorrelation => {
                    reply(&mut sel, &open, r.channel, wrong_correlation(&r.frame))
                }
            }
        }
    }
    for ch in open {
        let _ = sel.close(ch, CloseMode::Immediate);
    }
    sel.close_listener(listener).expect("close listener");
}

// ----- a listener with a full accept backlog (Linux) -----------------------------------------

#[cfg(target_os = "linux")]
pub use backlog::*;

#[cfg(target_os = "linux")]
mod backlog {
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use socket2::{Domain, Protocol, Socket, Type};

    use super::{localhost, DEADLINE};

    /// The listener's accept queue: (connections queued, backlog). Linux reports them in
    /// `tcpi_unacked` / `tcpi_sacked` for a listening socket; the queue is full (new SYNs are
    /// dropped) when queued > backlog.
    pub fn accept_queue(listener: &Socket) -> (u32, u32) {
        // SAFETY: an all-zero `tcp_info` is a valid value (plain integers).
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` are valid for writes of `len` bytes for the whole call.
        let rc = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
        (info.tcpi_unacked, info.tcpi_sacked)
    }

    /// Whether `s` became writable (connected, or failed) within `timeout`.
    fn writable_within(s: &Socket, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let mut fd = libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid `pollfd` for the duration of the call.
            let n = unsafe { libc::poll(&mut fd, 1, ms) };
            if n > 0 {
                return true;
            }
            if n == 0 {
                return false;
            }
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
        }
    }

    /// A listener with backlog 0 that never accepts, and raw peers that fill its accept queue:
    /// peers connect one at a time until one stays pending (not writable) for 200 ms while the
    /// kernel reports the queue full. Every peer is kept open (the pending ones keep
    /// retransmitting their SYN, which the kernel keeps dropping).
    pub fn full_listener() -> (Socket, SocketAddr, Vec<Socket>) {
        let listener =
            Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("listener socket");
        listener.bind(&localhost().into()).expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("listener address")
            .as_socket()
            .expect("inet address");
        let start = Instant::now();
        let mut peers = Vec::new();
        for _ in 0..64 {
            let s =
                Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("peer socket");
            s.set_nonblocking(true).expect("nonblocking");
            match s.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => panic!("raw connect to {addr}: {e}"),
            }
            let connected = writable_within(&s, Duration::from_millis(200));
            if let Ok(Some(e)) = s.take_error() {
                panic!("raw connect to {addr} failed: {e}");
            }
            peers.push(s);
            let (queued, backlog) = accept_queue(&listener);
            if !connected && queued > backlog {
                return (listener, addr, peers);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "accept queue of {addr} still not full after {DEADLINE:?}: {queued}/{backlog}"
            );
        }
        panic!("accept queue of {addr} not full after 64 connections");
    }

    /// Sockets of this network namespace in SYN_SENT towards 127.0.0.1:`port` (from
    /// `/proc/net/tcp`).
    pub fn syn_sent_to(port: u16) -> usize {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let remote = format!("0100007F:{port:04X}");
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 3 && cols[2] == remote && cols[3] == "02"
            })
            .count()
    }
}
