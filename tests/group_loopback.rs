//! Connection groups over real sockets on 127.0.0.1: a server that stops answering (connections
//! open) is detected by heartbeats and its members replaced; a server killed and restarted on the
//! same port is healed to n members. Every wait is bounded in time.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mqnet::client::{ClientConfig, NetworkClient, NoHandshake};
use mqnet::group::{
    DownReason, GroupClient, GroupConfig, GroupEvent, GroupEventKind, MirrorHeartbeat,
};
use mqnet::net::Selector;

const DEADLINE: Duration = Duration::from_secs(30);

type G = GroupClient<Selector, NoHandshake, MirrorHeartbeat>;

/// The server's open connections, each with its stalled flag.
type Conns = Arc<Mutex<Vec<(TcpStream, Arc<AtomicBool>)>>>;

/// A length-prefixed echo server on threads. Connections marked stalled keep reading but never
/// answer (a hung peer whose TCP connection stays open).
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Conns,
    accepted: Arc<AtomicUsize>,
    closed_by_client: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(addr: SocketAddr) -> Server {
        let listener = TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (s, c, a, cl) = (
            stop.clone(),
            conns.clone(),
            accepted.clone(),
            closed_by_client.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_millis(20)))
                            .unwrap();
                        let stalled = Arc::new(AtomicBool::new(false));
                        c.lock()
                            .unwrap()
                            .push((stream.try_clone().unwrap(), stalled.clone()));
                        a.fetch_add(1, Ordering::SeqCst);
                        let (s, cl) = (s.clone(), cl.clone());
                        workers.push(std::thread::spawn(move || serve(stream, stalled, s, cl)));
                    }
                    // The accept loop's own pacing, not a wait for a test condition.
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Server {
            addr,
            stop,
            conns,
            accepted,
            closed_by_client,
            thread: Some(thread),
        }
    }

    /// Every connection open now stops answering.
    fn stall_current(&self) {
        for (_, stalled) in self.conns.lock().unwrap().iter() {
            stalled.store(true, Ordering::SeqCst);
        }
    }

    /// Closes the listener and every connection; returns once the threads have ended.
    fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (s, _) in self.conns.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(
    mut s: TcpStream,
    stalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut chunk) {
            Ok(0) => {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..4 + len).collect();
            if !stalled.load(Ordering::SeqCst) && s.write_all(&frame).is_err() {
                return;
            }
        }
    }
}

fn groups(gcfg: GroupConfig) -> G {
    let _ = env_logger::builder().is_test(true).try_init();
    let client = NetworkClient::new(ClientConfig::default()).unwrap();
    GroupClient::new(client, gcfg, MirrorHeartbeat)
}

/// Polls until `cond` holds, collecting events; panics after [`DEADLINE`].
fn wait(
    g: &mut G,
    events: &mut Vec<GroupEvent>,
    what: &str,
    mut cond: impl FnMut(&G, &[GroupEvent]) -> bool,
) {
    let start = Instant::now();
    for _ in 0..10_000_000u64 {
        g.poll_io(Some(Duration::from_millis(10)), Instant::now())
            .map(|()| {
                let now = std::time::Instant::now();
                g.handle(now)
            })
            .unwrap();
        events.extend(g.drain_events());
        if cond(g, events) {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
    }
    panic!("gave up waiting for: {what}");
}

fn count(events: &[GroupEvent], f: impl Fn(&GroupEventKind) -> bool) -> usize {
    events.iter().filter(|e| f(&e.kind)).count()
}

#[test]
fn a_stalled_server_is_detected_by_heartbeats_and_the_members_replaced() {
    let server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let gcfg = GroupConfig::default()
        .heartbeat_interval(Duration::from_millis(200))
        .heartbeat_timeout(Duration::from_millis(300));
    let mut g = groups(gcfg);
    let a = server.addr.to_string();
    g.connect("g", &a, 2, "t", Instant::now()).unwrap();
    let mut ev = Vec::new();
    wait(&mut g, &mut ev, "2 live", |g, _| g.live_members("g") == 2);
    // Heartbeats answered: the members stay up.
    wait(&mut g, &mut ev, "heartbeats answered", |g, _| {
        g.metrics("g").unwrap().heartbeats_sent >= 4
    });
    assert_eq!(g.metrics("g").unwrap().heartbeats_failed, 0);
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    // Both connections stop answering; TCP stays up.
    server.stall_current();
    let started = Instant::now();
    wait(
        &mut g,
        &mut ev,
        "both members closed for failed heartbeats",
        |_, ev| {
            count(ev, |k| {
                matches!(
                    k,
                    GroupEventKind::MemberDown {
                        reason: DownReason::HeartbeatFailed,
                        ..
                    }
                )
            }) == 2
        },
    );
    // Three intervals and a timeout at the least.
    assert!(started.elapsed() >= Duration::from_millis(3 * 200 + 300) - Duration::from_millis(250));
    // Replaced: two new connections, the stalled ones closed by the client.
    wait(&mut g, &mut ev, "2 live again", |g, _| {
        g.live_members("g") == 2
    });
    wait(&mut g, &mut ev, "stalled sockets closed", |_, _| {
        server.closed_by_client.load(Ordering::SeqCst) == 2
    });
    assert_eq!(server.accepted.load(Ordering::SeqCst), 4);
    let m = g.metrics("g").unwrap();
    assert!(m.heartbeats_failed >= 6, "{m:?}");
    assert_eq!(m.heartbeat_closes, 2);
    assert_eq!(m.reconnects, 2);
}

#[test]
fn a_killed_and_restarted_server_is_healed_to_n_members() {
    let mut server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let addr = server.addr;
    let mut g = groups(GroupConfig::default());
    g.connect("g", &addr.to_string(), 3, "t", Instant::now())
        .unwrap();
    let mut ev = Vec::new();
    wait(&mut g, &mut ev, "3 live", |g, _| g.live_members("g") == 3);
    server.kill();
    wait(&mut g, &mut ev, "group empty", |_, ev| {
        count(ev, |k| matches!(k, GroupEventKind::GroupEmpty)) == 1
    });
    // Reconnects are refused while the server is down.
    wait(&mut g, &mut ev, "refused attempts", |g, _| {
        g.metrics("g").unwrap().connect_failures >= 3
    });
    assert_eq!(g.live_members("g"), 0);
    let server = Server::start(addr);
    wait(&mut g, &mut ev, "healed to 3", |g, _| {
        g.live_members("g") == 3
    });
    wait(&mut g, &mut ev, "healed event", |_, ev| {
        count(ev, |k| matches!(k, GroupEventKind::GroupHealed { .. })) == 1
    });
    assert_eq!(
        count(&ev, |k| matches!(k, GroupEventKind::GroupRestored { .. })),
        1
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    let m = g.metrics("g").unwrap();
    assert_eq!((m.live, m.reconnects, m.heals), (3, 3, 1));
}
