//! Loopback integration tests of the NetworkClient over the real Selector (127.0.0.1 only): a
//! server restart on the same port, a silent server (request timeout), a server answering with the
//! wrong correlation id, a listener whose accept backlog is full (setup timeout), the in-flight cap,
//! idle expiry, and requests that expect no response.
//!
//! The test servers are Selectors running on their own threads (see [`support::TestServer`]). Every
//! loop is bounded in iterations and in time ([`support::DEADLINE`]); running out of either panics
//! with a message naming what was awaited. Timing assertions only use sound lower bounds (the
//! client cannot act before its deadline) and generous upper bounds ([`support::SLACK`]).

use std::time::{Duration, Instant};

use mqnet::client::{ClientConfig, ConnectionState, DisconnectCause, NodeId, Outcome};
use mqnet::net::DisconnectReason;

use support::*;

/// A tiny harness: a Selector-based test server on its own thread, a NetworkClient with fixed
/// jitter, bounded poll loops, and (Linux) helpers to fill a listener's accept backlog.
mod support {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use mqnet::client::{
        ClientConfig, ClientRequest, ClientResponse, JitterSource, NetworkClient, NodeId,
    };
    use mqnet::net::{
        ChannelId, CloseMode, DisconnectReason, ListenerId, Selector, SelectorWaker, SendError,
    };

    /// Bound on every wait: far beyond what any condition needs on a loaded machine.
    pub const DEADLINE: Duration = Duration::from_secs(20);
    /// Generous slack of every timing upper bound.
    pub const SLACK: Duration = Duration::from_secs(5);
    /// Poll timeout of one iteration of the client loops.
    pub const TICK: Duration = Duration::from_millis(10);
    /// Bound on a test server's life (a test stops it long before).
    pub const SERVER_LIFETIME: Duration = Duration::from_secs(120);
    /// Bound on iterations of every loop (the deadline normally fires first).
    pub const MAX_ITERS: u64 = 1_000_000;

    /// Turns on `RUST_LOG`-driven logging, once.
    pub fn init_log() {
        let _ = env_logger::builder().is_test(true).try_init();
    }

    /// `127.0.0.1:0`.
    pub fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    pub fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Always the middle of the jitter range: every backoff and setup timeout is exactly its
    /// configured value.
    pub struct NoJitter;
    impl JitterSource for NoJitter {
        fn next_f64(&mut self) -> f64 {
            0.5
        }
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
            let done = c
                .poll_io(Some(TICK), Instant::now())
                .map(|()| {
                    let now = std::time::Instant::now();
                    c.handle(now)
                })
                .expect("client poll");
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
            all.extend(
                c.poll_io(Some(TICK), Instant::now())
                    .map(|()| {
                        let now = std::time::Instant::now();
                        c.handle(now)
                    })
                    .expect("client poll"),
            );
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
            let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
                .expect("listener socket");
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
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
                    .expect("peer socket");
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
}

// ----- tests -------------------------------------------------------------------------------------

const NODE: NodeId = NodeId(1);

/// Sends one request per call of `n` and polls until all of them complete; asserts each got its
/// own frame back, in order.
fn round_trips(c: &mut Client, n: usize) {
    let mut sent = Vec::new();
    for _ in 0..n {
        let (req, frame) = request(c, NODE);
        let corr = c.send(req, Instant::now());
        sent.push((corr, frame));
    }
    let done = poll_until(c, "round trips", |_, done| done.len() >= n);
    assert_eq!(done.len(), n, "{done:?}");
    for (r, (corr, frame)) in done.iter().zip(&sent) {
        assert_eq!(r.correlation_id, *corr);
        assert_eq!(
            r.outcome,
            Outcome::Response(frame.clone()),
            "request {corr}"
        );
    }
}

#[test]
fn server_restart_on_the_same_port_reconnects_after_the_backoff() {
    init_log();
    let backoff = ms(500);
    let mut server = TestServer::start(localhost(), Mode::Echo);
    let addr = server.addr();
    let cfg = ClientConfig::default()
        .reconnect_backoff(backoff)
        .reconnect_backoff_max(ms(1000));
    let mut c = client(cfg, NODE, addr);
    connect_ready(&mut c, NODE);
    round_trips(&mut c, 3);

    // Three requests the server reads but holds: they are in flight when it stops.
    server.set_mode(Mode::Hold);
    let held: Vec<i32> = (0..3)
        .map(|_| {
            let (req, _) = request(&mut c, NODE);
            c.send(req, Instant::now())
        })
        .collect();
    let done = poll_until(
        &mut c,
        "3 requests in flight and read by the server",
        |c, _| c.in_flight_count(NODE) == 3 && server.received().len() == 3 + 3,
    );
    assert!(done.is_empty(), "{done:?}");
    let got: Vec<i32> = server.received()[3..].iter().map(|f| corr_of(f)).collect();
    assert_eq!(got, held);

    // Stop: the server closes its channels and its listener, and its thread ends.
    server.stop();

    // The client sees the drop in one poll: every in-flight request completes Disconnected.
    // `t_before` is taken just before the poll that reports it, so it is no later than the
    // client's disconnect instant.
    let start = Instant::now();
    let mut seen = None;
    for _ in 0..MAX_ITERS {
        let t = Instant::now();
        let done = c
            .poll_io(Some(TICK), t)
            .map(|()| {
                let now = std::time::Instant::now();
                c.handle(now)
            })
            .expect("client poll");
        if !done.is_empty() {
            seen = Some((t, done));
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the client never saw the server stop: {:?}",
            c.connection_state(NODE)
        );
    }
    let (t_before, done) = seen.expect("the client saw the server stop");
    let t_after = Instant::now();
    assert_eq!(
        done.iter().map(|r| r.correlation_id).collect::<Vec<_>>(),
        held
    );
    for r in &done {
        assert!(
            matches!(
                r.outcome,
                Outcome::Disconnected(DisconnectCause::Transport(_))
            ),
            "{r:?}"
        );
    }
    assert_eq!(
        c.connection_state(NODE),
        Some(ConnectionState::Disconnected)
    );
    assert_eq!(c.in_flight_count(NODE), 0);
    assert_eq!(c.transport().len(), 0, "the dead channel is closed");
    // The whole backoff (exactly `backoff`: no jitter) lies ahead of the disconnect instant.
    assert_eq!(c.connection_delay(NODE, t_before), backoff);
    assert_eq!(c.node_metrics(NODE).unwrap().connections_closed, 1);

    // Restart on the same port (bound before the client may retry).
    let mut server = TestServer::start(addr, Mode::Echo);
    assert_eq!(server.addr(), addr);
    let attempts = c.node_metrics(NODE).unwrap().connect_attempts;
    let mut first_attempt = None;
    let start = Instant::now();
    for _ in 0..MAX_ITERS {
        let now = Instant::now();
        let ready = c.ready(NODE, now);
        if first_attempt.is_none() && c.node_metrics(NODE).unwrap().connect_attempts > attempts {
            first_attempt = Some(now);
        }
        if ready {
            break;
        }
        let done = c
            .poll_io(Some(TICK), now)
            .map(|()| {
                let now = std::time::Instant::now();
                c.handle(now)
            })
            .expect("client poll");
        assert!(done.is_empty(), "{done:?}");
        assert!(
            start.elapsed() < DEADLINE,
            "no reconnect after {DEADLINE:?}: {:?}",
            c.connection_state(NODE)
        );
    }
    assert_eq!(c.connection_state(NODE), Some(ConnectionState::Ready));
    let first_attempt = first_attempt.expect("a reconnect attempt");
    // The client's disconnect instant lies in [t_before, t_after]; its backoff counts from there.
    assert!(
        first_attempt.saturating_duration_since(t_before) >= backoff,
        "reconnected {:?} after the drop, before the {backoff:?} backoff",
        first_attempt.saturating_duration_since(t_before)
    );
    assert!(
        first_attempt.saturating_duration_since(t_after) < backoff + SLACK,
        "reconnected only {:?} after the drop",
        first_attempt.saturating_duration_since(t_after)
    );
    let m = c.node_metrics(NODE).unwrap();
    assert_eq!(
        m.connect_attempts,
        attempts + 1,
        "the first attempt succeeded"
    );
    assert_eq!(m.connections_created, 2);

    round_trips(&mut c, 3);
    assert_eq!(server.received().len(), 3);
    server.stop();
}

#[test]
fn silent_server_times_the_request_out_at_its_deadline_and_closes_the_connection() {
    init_log();
    let timeout = ms(300);
    let mut server = TestServer::start(localhost(), Mode::Silent);
    let cfg = ClientConfig::default().request_timeout(timeout);
    let mut c = client(cfg, NODE, server.addr());
    connect_ready(&mut c, NODE);

    let (req, frame) = request(&mut c, NODE);
    let sent_at = Instant::now();
    let corr = c.send(req, sent_at);
    let done = poll_until(&mut c, "the request to time out", |_, done| {
        !done.is_empty()
    });
    let elapsed = sent_at.elapsed();
    assert_eq!(done.len(), 1, "{done:?}");
    let r = &done[0];
    assert_eq!(r.correlation_id, corr);
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert!(r.latency >= timeout, "completed early: {:?}", r.latency);
    assert!(
        r.latency < timeout + SLACK,
        "completed late: {:?}",
        r.latency
    );
    assert!(
        elapsed >= timeout && elapsed < timeout + SLACK,
        "{elapsed:?}"
    );
    assert_eq!(c.node_metrics(NODE).unwrap().timeouts, 1);

    // The connection is closed on both sides.
    assert_eq!(
        c.connection_state(NODE),
        Some(ConnectionState::Disconnected)
    );
    assert_eq!(c.transport().len(), 0);
    server.wait_until("the server to see the client close", |ev| {
        ev.iter()
            .any(|e| matches!(e, ServerEvent::Disconnected { .. }))
    });
    assert_eq!(server.disconnects(), vec![DisconnectReason::PeerClosed]);
    assert_eq!(
        server.received(),
        vec![frame],
        "the server did get the request"
    );
    server.stop();
}

#[test]
fn wrong_correlation_id_fails_every_in_flight_request_and_closes() {
    init_log();
    let mut server = TestServer::start(localhost(), Mode::WrongCorrelation);
    let cfg = ClientConfig::default().pipeline_unsent(true);
    let mut c = client(cfg, NODE, server.addr());
    connect_ready(&mut c, NODE);

    let now = Instant::now();
    let corrs: Vec<i32> = (0..3)
        .map(|_| {
            let (req, _) = request(&mut c, NODE);
            c.send(req, now)
        })
        .collect();
    assert_eq!(c.in_flight_count(NODE), 3, "pipelined: all staged at once");
    let done = poll_until(&mut c, "the mismatch to fail the requests", |_, done| {
        !done.is_empty()
    });
    assert_eq!(
        done.iter().map(|r| r.correlation_id).collect::<Vec<_>>(),
        corrs,
        "all fail together, oldest first"
    );
    let cause = DisconnectCause::CorrelationMismatch {
        expected: corrs[0],
        actual: Some(corrs[0] + 1_000_000),
    };
    for r in &done {
        assert_eq!(r.outcome, Outcome::Disconnected(cause), "{r:?}");
    }
    assert_eq!(
        c.connection_state(NODE),
        Some(ConnectionState::Disconnected)
    );
    assert_eq!(c.in_flight_count(NODE), 0);
    assert_eq!(c.transport().len(), 0);
    server.wait_until("the server to see the client close", |ev| {
        ev.iter()
            .any(|e| matches!(e, ServerEvent::Disconnected { .. }))
    });
    // Nothing more ever completes for them.
    let extra = poll_until(&mut c, "a few quiet polls", |_, _| true);
    assert!(extra.is_empty(), "{extra:?}");
    server.stop();
}

#[cfg(target_os = "linux")]
#[test]
fn full_accept_backlog_fails_the_attempt_at_the_setup_timeout_and_aborts_the_socket() {
    init_log();
    let setup = ms(300);
    let (listener, addr, peers) = full_listener();
    let (queued, backlog) = accept_queue(&listener);
    assert!(queued > backlog, "{queued}/{backlog}");
    let pending_before = syn_sent_to(addr.port());
    assert!(pending_before >= 1, "a raw peer stays pending");

    let cfg = ClientConfig::default().connection_setup_timeout(setup);
    let mut c = client(cfg, NODE, addr);
    assert_eq!(c.transport().len(), 0);
    let t0 = Instant::now();
    assert!(!c.ready(NODE, t0));
    assert_eq!(c.connection_state(NODE), Some(ConnectionState::Connecting));
    assert_eq!(c.transport().len(), 1, "the attempt's channel");
    assert_eq!(
        syn_sent_to(addr.port()),
        pending_before + 1,
        "the client's SYN is dropped: its socket stays in SYN_SENT"
    );

    let done = poll_until(&mut c, "the setup timeout", |c, _| {
        c.connection_state(NODE) != Some(ConnectionState::Connecting)
    });
    let elapsed = t0.elapsed();
    assert!(done.is_empty(), "{done:?}");
    assert_eq!(
        c.connection_state(NODE),
        Some(ConnectionState::Disconnected)
    );
    assert!(elapsed >= setup, "failed early: {elapsed:?}");
    assert!(elapsed < setup + SLACK, "failed late: {elapsed:?}");
    // The pending socket was aborted, not left to connect later.
    assert_eq!(c.transport().len(), 0, "the attempt's channel is closed");
    assert_eq!(
        syn_sent_to(addr.port()),
        pending_before,
        "its socket is gone"
    );
    assert_eq!(c.transport().metrics().connections_created, 0);
    let m = c.node_metrics(NODE).unwrap();
    assert_eq!((m.connect_attempts, m.connections_created), (1, 0));
    assert_eq!(accept_queue(&listener), (queued, backlog));
    drop(peers);
}

#[test]
fn in_flight_cap_holds_the_sixth_request_until_a_slot_frees() {
    init_log();
    let mut server = TestServer::start(localhost(), Mode::Hold);
    let cfg = ClientConfig::default().max_in_flight(5);
    let mut c = client(cfg, NODE, server.addr());
    connect_ready(&mut c, NODE);

    let now = Instant::now();
    let sent: Vec<_> = (0..6)
        .map(|_| {
            let (req, frame) = request(&mut c, NODE);
            (c.send(req, now), frame)
        })
        .collect();
    let mut max_in_flight = 0;
    let done = poll_until(&mut c, "5 in flight, read by the server", |c, _| {
        max_in_flight = max_in_flight.max(c.in_flight_count(NODE));
        c.in_flight_count(NODE) == 5 && server.received().len() == 5
    });
    assert!(done.is_empty(), "{done:?}");
    assert_eq!(c.waiting_count(NODE), 1, "the sixth waits");

    // It keeps waiting while the five are unanswered (a bounded window of polls).
    let window = Instant::now() + ms(300);
    let quiet = poll_until(&mut c, "a quiet window", |c, _| {
        assert_eq!(c.in_flight_count(NODE), 5);
        assert_eq!(c.waiting_count(NODE), 1);
        assert!(!c.is_ready(NODE));
        Instant::now() >= window
    });
    assert!(quiet.is_empty(), "{quiet:?}");
    let got: Vec<i32> = server.received().iter().map(|f| corr_of(f)).collect();
    let first5: Vec<i32> = sent[..5].iter().map(|(c, _)| *c).collect();
    assert_eq!(got, first5, "the sixth never reached the server");

    // The server answers: all six complete, in order, with their own frames.
    server.set_mode(Mode::Echo);
    let done = poll_until(&mut c, "all 6 responses", |c, done| {
        max_in_flight = max_in_flight.max(c.in_flight_count(NODE));
        done.len() >= 6
    });
    assert_eq!(done.len(), 6, "{done:?}");
    for (r, (corr, frame)) in done.iter().zip(&sent) {
        assert_eq!(r.correlation_id, *corr);
        assert_eq!(r.outcome, Outcome::Response(frame.clone()));
    }
    assert_eq!(max_in_flight, 5);
    assert_eq!((c.in_flight_count(NODE), c.waiting_count(NODE)), (0, 0));
    assert_eq!(c.connection_state(NODE), Some(ConnectionState::Ready));
    assert_eq!(server.received().len(), 6);
    server.stop();
}

#[test]
fn idle_expiry_fails_the_in_flight_request_as_disconnected() {
    init_log();
    let idle = ms(300);
    let mut server = TestServer::start(localhost(), Mode::Silent);
    let cfg = ClientConfig::default()
        .connections_max_idle(Some(idle))
        .request_timeout(Duration::from_secs(30));
    let mut c = client(cfg, NODE, server.addr());
    connect_ready(&mut c, NODE);

    let (req, frame) = request(&mut c, NODE);
    let sent_at = Instant::now();
    let corr = c.send(req, sent_at);
    let done = poll_until(&mut c, "idle expiry", |_, done| !done.is_empty());
    assert_eq!(done.len(), 1, "{done:?}");
    let r = &done[0];
    assert_eq!(r.correlation_id, corr);
    assert_eq!(
        r.outcome,
        Outcome::Disconnected(DisconnectCause::Transport(DisconnectReason::IdleExpired))
    );
    // Idle since the request was written, which was after `send`.
    assert!(r.latency >= idle, "expired early: {:?}", r.latency);
    assert!(r.latency < idle + SLACK, "expired late: {:?}", r.latency);
    assert_eq!(
        c.connection_state(NODE),
        Some(ConnectionState::Disconnected)
    );
    assert_eq!(c.transport().len(), 0);
    server.wait_until("the server to see the close", |ev| {
        ev.iter()
            .any(|e| matches!(e, ServerEvent::Disconnected { .. }))
    });
    assert_eq!(server.received(), vec![frame]);
    server.stop();
}

#[test]
fn request_without_response_completes_sent_once_written() {
    init_log();
    let mut server = TestServer::start(localhost(), Mode::Silent);
    let mut c = client(ClientConfig::default(), NODE, server.addr());
    connect_ready(&mut c, NODE);

    let (req, frame) = request(&mut c, NODE);
    let corr = c.send(req.expect_response(false), Instant::now());
    let done = poll_until(&mut c, "the Sent completion", |_, done| !done.is_empty());
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].correlation_id, corr);
    assert_eq!(done[0].outcome, Outcome::Sent);
    assert!(done[0].latency < SLACK);
    assert_eq!(c.in_flight_count(NODE), 0);
    assert_eq!(c.connection_state(NODE), Some(ConnectionState::Ready));
    server.wait_until("the frame to arrive", |ev| {
        ev.iter().any(|e| matches!(e, ServerEvent::Received { .. }))
    });
    assert_eq!(server.received(), vec![frame], "it really went out");

    // The connection is still usable: a normal request gets its response.
    server.set_mode(Mode::Echo);
    round_trips(&mut c, 1);
    assert_eq!(c.node_metrics(NODE).unwrap().responses, 2);
    server.stop();
}
