//! Descriptor exhaustion, on 127.0.0.1 with real sockets. This binary lowers its own
//! `RLIMIT_NOFILE` (process-wide), so it holds only these tests, serialised by a lock, each
//! restoring the limit when it ends.
//!
//! - A server whose listener ran into `EMFILE` with a full accept backlog serves a fresh client
//!   once descriptors are free again (the listener retries accept on a timer: no readiness event
//!   arrives for a full backlog under edge-triggered epoll).
//! - With the reserve descriptor, connections that arrive while descriptors are exhausted are
//!   closed at once (the peer reads end-of-stream) instead of hanging.
//! - A NetworkClient whose connect fails with `EMFILE` backs off as for any failed attempt and
//!   connects once descriptors are free.
//!
//! Every wait is bounded in time; running out panics naming what was awaited.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{ClientConfig, ClientRequest, NetworkClient, NodeId, Outcome};
use mqnet::net::{ChannelId, SelectorConfig, SelectorMetrics};
use mqnet::server::{Server, ServerConfig};
use socket2::{Domain, Protocol, Socket, Type};

/// Bound on every wait.
const DEADLINE: Duration = Duration::from_secs(20);
/// Descriptors left free above those open when a test starts.
const HEADROOM: u64 = 48;

/// One test at a time: the descriptor limit is per process.
static LOCK: Mutex<()> = Mutex::new(());

/// Counts the `accept failed` warnings logged in this process (the Selector's rate-limited line).
struct AcceptWarnings(std::sync::atomic::AtomicU64);

impl log::Log for AcceptWarnings {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if r.level() == log::Level::Warn && r.args().to_string().contains("accept failed") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {}
}

static WARNINGS: AcceptWarnings = AcceptWarnings(std::sync::atomic::AtomicU64::new(0));

fn accept_warnings() -> u64 {
    if log::set_logger(&WARNINGS).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    WARNINGS.0.load(Ordering::Relaxed)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Lowers the soft `RLIMIT_NOFILE` for the life of the guard.
struct Limit {
    old: libc::rlimit,
}

impl Limit {
    fn lower_to(soft: u64) -> Limit {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `getrlimit` writes one `rlimit` through a valid pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let new = libc::rlimit {
            rlim_cur: soft.min(old.rlim_max),
            rlim_max: old.rlim_max,
        };
        // SAFETY: `setrlimit` reads one valid `rlimit`.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }, 0);
        Limit { old }
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        // SAFETY: as above; restores the limit read at creation.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.old) };
    }
}

/// Opens `/dev/null` until the process is out of descriptors; the files hold them.
fn exhaust() -> Vec<File> {
    let mut held = Vec::new();
    for _ in 0..100_000 {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::EMFILE),
                    "unexpected error: {e}"
                );
                return held;
            }
        }
    }
    panic!("the descriptor limit was not reached");
}

fn is_emfile(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EMFILE)
}

/// An echo server on its own thread, publishing its Selector's metrics after every poll.
struct EchoServer {
    addr: SocketAddr,
    metrics: Arc<Mutex<SelectorMetrics>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start(config: ServerConfig) -> EchoServer {
        let mut server =
            Server::inline_with_config(|_c: ChannelId, req: Bytes| Some(req), config).unwrap();
        let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let metrics = Arc::new(Mutex::new(SelectorMetrics::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (metrics.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                server.poll(Some(Duration::from_millis(20))).unwrap();
                *m.lock().unwrap() = server.selector().metrics();
            }
        });
        EchoServer {
            addr,
            metrics,
            stop,
            thread: Some(thread),
        }
    }

    fn metrics(&self) -> SelectorMetrics {
        *self.metrics.lock().unwrap()
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&SelectorMetrics) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !cond(&self.metrics()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One echo round trip on a blocking connection.
fn echo(stream: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(DEADLINE))?;
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    stream.write_all(&frame)?;
    let mut back = vec![0u8; frame.len()];
    stream.read_exact(&mut back)?;
    Ok(back[4..].to_vec())
}

/// Connects a fresh client and asks for one echo, retrying a failed or refused attempt, until
/// `DEADLINE`. Returns how long it took.
fn fresh_client_served(addr: SocketAddr) -> Duration {
    let start = Instant::now();
    loop {
        let attempt = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .and_then(|mut s| echo(&mut s, b"fresh"));
        match attempt {
            Ok(back) => {
                assert_eq!(back, b"fresh");
                return start.elapsed();
            }
            Err(e) => assert!(
                start.elapsed() < DEADLINE,
                "no fresh client served within {DEADLINE:?}: {e}"
            ),
        }
    }
}

/// Sockets created (holding their descriptors) but not yet connected, so they can connect while
/// the process has no descriptor left.
fn unconnected_sockets(n: usize) -> Vec<Socket> {
    (0..n)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

fn start_connect(sockets: &[Socket], addr: SocketAddr) {
    for s in sockets {
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => panic!("connect: {e}"),
        }
    }
}

/// The scenario: the listener hits `EMFILE` with its (small) backlog full, everything is
/// released, and no further readiness event will ever come for the listener. A fresh client must
/// still be served, within the bound. Without the timed retry it waits forever.
#[test]
fn server_recovers_after_emfile_with_full_backlog() {
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let server = EchoServer::start(ServerConfig {
        selector: SelectorConfig {
            reserve_descriptor: false,
            ..SelectorConfig::default()
        },
        backlog: 2,
        ..ServerConfig::default()
    });
    let warned_before = accept_warnings();
    let limit = Limit::lower_to(open_fds() + HEADROOM);

    // Served before exhaustion.
    let mut early: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    for s in &mut early {
        assert_eq!(echo(s, b"before").unwrap(), b"before");
    }

    // Out of descriptors, then connections the server cannot accept: more than the backlog holds,
    // so the backlog is full and later SYNs are dropped.
    let pending = unconnected_sockets(8);
    let fillers = exhaust();
    assert!(File::open("/dev/null").is_err_and(|e| is_emfile(&e)));
    start_connect(&pending, server.addr);
    // Several timed retries fail while descriptors stay exhausted ...
    server.wait_for("accept retries failing with EMFILE", |m| {
        m.accept_resource_errors >= 5
    });
    let before_release = server.metrics();
    // ... and are logged once, not once per attempt (one line per 10 s at most; this wait is far
    // shorter unless the machine stalls, hence the bound by elapsed time).
    let warned = accept_warnings() - warned_before;
    assert!(warned >= 1, "no warning about failing accepts");
    assert!(
        warned < before_release.accept_resource_errors,
        "{warned} warnings for {} failed accepts",
        before_release.accept_resource_errors
    );
    assert_eq!(
        before_release.accepts_refused, 0,
        "reserve descriptor is off"
    );

    // Release everything. The connections in the backlog are now closed by their peers.
    drop(fillers);
    drop(pending);
    drop(early);
    let took = fresh_client_served(server.addr);
    eprintln!("fresh client served {took:?} after release");
    assert!(server.metrics().accept_resource_errors >= before_release.accept_resource_errors);
    drop(limit);
}

/// With the reserve descriptor, connections arriving while descriptors are exhausted are accepted
/// and closed at once: their peers read end-of-stream (or a reset) instead of waiting, and the
/// server serves again once descriptors are free.
#[test]
fn server_refuses_cleanly_while_exhausted() {
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let server = EchoServer::start(ServerConfig::default());
    let limit = Limit::lower_to(open_fds() + HEADROOM);

    let pending = unconnected_sockets(8);
    let fillers = exhaust();
    start_connect(&pending, server.addr);
    server.wait_for("connections refused with the reserve descriptor", |m| {
        m.accepts_refused >= pending.len() as u64
    });
    // Each refused peer sees the connection end; none hangs.
    for s in &pending {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8];
        match s.recv(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("a refused connection got {n} bytes"),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a refused connection did not end: {e}"),
        }
    }
    let m = server.metrics();
    assert!(m.accept_resource_errors > 0);

    drop(fillers);
    drop(pending);
    let took = fresh_client_served(server.addr);
    eprintln!("fresh client served {took:?} after release");
    drop(limit);
}

/// A NetworkClient whose connect fails with `EMFILE` (no descriptor for the socket) backs off as
/// for any failed attempt, and connects and completes a request once descriptors are free.
#[test]
fn client_backs_off_on_emfile_and_recovers() {
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let server = EchoServer::start(ServerConfig::default());
    let backoff = Duration::from_millis(200);
    let mut client = NetworkClient::new(
        ClientConfig::default()
            .reconnect_backoff(backoff)
            .reconnect_backoff_max(backoff)
            .request_timeout(Duration::from_secs(10)),
    )
    .unwrap();
    let node = NodeId(1);
    client.add_node(node, &server.addr.to_string()).unwrap();
    let limit = Limit::lower_to(open_fds() + HEADROOM);
    let fillers = exhaust();

    // The attempt fails at once (no socket): the node backs off.
    let t0 = Instant::now();
    assert!(!client.ready(node, t0));
    let attempts = client.node_metrics(node).unwrap().connect_attempts;
    assert_eq!(attempts, 1);
    let delay = client.connection_delay(node, t0);
    assert!(delay > Duration::ZERO, "no backoff after EMFILE");
    // Within the backoff, `ready` starts no new attempt.
    assert!(!client.ready(node, t0 + delay / 2));
    assert_eq!(client.node_metrics(node).unwrap().connect_attempts, 1);

    drop(fillers);
    let deadline = Instant::now() + DEADLINE;
    while !client.ready(node, Instant::now()) {
        assert!(Instant::now() < deadline, "client did not reconnect");
        client
            .poll_io(Some(Duration::from_millis(20)), Instant::now())
            .map(|()| {
                let now = std::time::Instant::now();
                client.handle(now)
            })
            .unwrap();
    }
    let corr = client.next_correlation_id();
    let mut frame = corr.to_be_bytes().to_vec();
    frame.extend_from_slice(b"after");
    client.send(
        ClientRequest::new(node, corr, Bytes::from(frame.clone())),
        Instant::now(),
    );
    let mut answered = None;
    while answered.is_none() {
        assert!(Instant::now() < deadline, "no response after recovery");
        for r in client
            .poll_io(Some(Duration::from_millis(20)), Instant::now())
            .map(|()| {
                let now = std::time::Instant::now();
                client.handle(now)
            })
            .unwrap()
        {
            assert_eq!(r.correlation_id, corr);
            answered = Some(r.outcome);
        }
    }
    match answered {
        Some(Outcome::Response(body)) => assert_eq!(&body[..], &frame[..]),
        other => panic!("unexpected outcome {other:?}"),
    }
    drop(limit);
}
