//! The failover transport over real sockets on 127.0.0.1, with echo servers (`mqnet::server`) in
//! threads: killing the live server resumes on the next one; a priority server coming back is
//! switched to. Every wait is bounded by [`DEADLINE`].

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::ClientConfig;
use mqnet::failover::{
    FailoverEvent, FailoverOutcome, FailoverRequest, FailoverResponse, FailoverTransport,
    FailoverUri, ServerUri,
};
use mqnet::net::SelectorWaker;
use mqnet::server::Server;

const DEADLINE: Duration = Duration::from_secs(20);
const TICK: Duration = Duration::from_millis(5);

/// An echo server on its own thread, stopped (and its sockets closed) by `kill` or on drop.
struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: SelectorWaker,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(addr: SocketAddr) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut server = Server::inline(|_conn, req: Bytes| Some(req)).expect("server");
            let bound = server.bind(addr).expect("bind");
            tx.send((bound, server.waker())).expect("report address");
            server
                .run_until(&flag, Some(Instant::now() + Duration::from_secs(120)))
                .expect("server run");
        });
        let (addr, waker) = rx.recv_timeout(DEADLINE).expect("server started");
        EchoServer {
            addr,
            stop,
            waker,
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port with nothing listening on it (bound, then released).
fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn server_uri(a: SocketAddr) -> ServerUri {
    ServerUri::parse(&format!("tcp://{a}")).unwrap()
}

/// Polls until `cond` holds, collecting completions and events; panics after [`DEADLINE`].
fn until(
    t: &mut FailoverTransport,
    out: &mut Vec<FailoverResponse>,
    events: &mut Vec<FailoverEvent>,
    what: &str,
    mut cond: impl FnMut(&FailoverTransport, &[FailoverResponse], &[FailoverEvent]) -> bool,
) {
    let start = Instant::now();
    loop {
        if cond(t, out, events) {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        out.extend(
            t.poll_io(Some(TICK), Instant::now())
                .map(|()| {
                    let now = std::time::Instant::now();
                    t.handle(now)
                })
                .unwrap(),
        );
        events.extend(t.drain_events());
    }
}

fn send(t: &mut FailoverTransport) -> i32 {
    let corr = t.next_correlation_id();
    let mut frame = corr.to_be_bytes().to_vec();
    frame.extend_from_slice(b"payload");
    t.send(
        FailoverRequest::new(corr, Bytes::from(frame)),
        Instant::now(),
    );
    corr
}

#[test]
fn killing_the_live_server_resumes_on_the_next() {
    let mut a = EchoServer::start("127.0.0.1:0".parse().unwrap());
    let b = EchoServer::start("127.0.0.1:0".parse().unwrap());
    let uri: FailoverUri = format!(
        "failover:(tcp://{},tcp://{})?randomize=false&initialReconnectDelay=10&trackMessages=true",
        a.addr, b.addr
    )
    .parse()
    .unwrap();
    let mut t = FailoverTransport::connect(&uri, ClientConfig::default()).unwrap();
    let (mut out, mut events) = (Vec::new(), Vec::new());
    until(&mut t, &mut out, &mut events, "connected", |t, _, _| {
        t.is_connected()
    });
    assert_eq!(t.current_uri(), Some(&server_uri(a.addr)));
    let first = send(&mut t);
    until(&mut t, &mut out, &mut events, "first answer", |_, o, _| {
        o.iter().any(|r| r.correlation_id == first)
    });

    // Requests in flight while the live server goes away: tracked, so replayed on the next.
    let ids: Vec<i32> = (0..20).map(|_| send(&mut t)).collect();
    a.kill();
    until(&mut t, &mut out, &mut events, "resumed", |t, _, e| {
        t.outstanding() == 0 && e.iter().any(|e| matches!(e, FailoverEvent::Resumed { .. }))
    });
    assert_eq!(
        events,
        vec![
            FailoverEvent::Connected {
                uri: server_uri(a.addr)
            },
            FailoverEvent::Interrupted {
                uri: server_uri(a.addr)
            },
            FailoverEvent::Resumed {
                uri: server_uri(b.addr)
            },
        ]
    );
    assert_eq!(t.current_uri(), Some(&server_uri(b.addr)));
    for id in &ids {
        let done: Vec<&FailoverResponse> = out.iter().filter(|r| r.correlation_id == *id).collect();
        assert_eq!(done.len(), 1, "request {id} completed once");
        match &done[0].outcome {
            FailoverOutcome::Response(body) => assert_eq!(&body[..4], &id.to_be_bytes()),
            other => panic!("request {id}: {other:?}"),
        }
    }
    let after = send(&mut t);
    until(
        &mut t,
        &mut out,
        &mut events,
        "answer after failover",
        |_, o, _| o.iter().any(|r| r.correlation_id == after),
    );
    assert_eq!(t.metrics().time_down_us.len(), 1);
}

#[test]
fn the_priority_server_coming_back_is_switched_to() {
    let priority = free_port();
    let b = EchoServer::start("127.0.0.1:0".parse().unwrap());
    let uri: FailoverUri = format!(
        "failover:(tcp://{priority},tcp://{})?randomize=false&priorityBackup=true&\
         initialReconnectDelay=10&maxReconnectDelay=100",
        b.addr
    )
    .parse()
    .unwrap();
    let mut t = FailoverTransport::connect(&uri, ClientConfig::default()).unwrap();
    let (mut out, mut events) = (Vec::new(), Vec::new());
    until(&mut t, &mut out, &mut events, "connected", |t, _, _| {
        t.is_connected()
    });
    assert_eq!(t.current_uri(), Some(&server_uri(b.addr)));
    let on_b = send(&mut t);
    until(&mut t, &mut out, &mut events, "answer on b", |_, o, _| {
        o.iter().any(|r| r.correlation_id == on_b)
    });

    let p = EchoServer::start(priority);
    until(&mut t, &mut out, &mut events, "switched back", |_, _, e| {
        e.iter()
            .any(|e| matches!(e, FailoverEvent::Switched { .. }))
    });
    assert_eq!(
        events.last(),
        Some(&FailoverEvent::Switched {
            from: server_uri(b.addr),
            to: server_uri(p.addr)
        })
    );
    assert_eq!(t.current_uri(), Some(&server_uri(p.addr)));
    let on_p = send(&mut t);
    until(
        &mut t,
        &mut out,
        &mut events,
        "answer on the priority server",
        |_, o, _| o.iter().any(|r| r.correlation_id == on_p),
    );
    let node = t.node_of(&server_uri(p.addr)).unwrap();
    assert_eq!(t.client().node_metrics(node).unwrap().responses, 1);
    assert!(out
        .iter()
        .all(|r| matches!(r.outcome, FailoverOutcome::Response(_))));
}
