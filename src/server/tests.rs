//! Server tests on 127.0.0.1 with blocking std clients. Every wait is bounded by a count and a
//! deadline; client reads time out.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::net::{FrameError, SelectorConfig, SocketOptions};

const WAIT: Duration = Duration::from_secs(10);
const POLL: Option<Duration> = Some(Duration::from_millis(20));

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// Reads until the server closes the connection; returns whether it did within the read timeout.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..1024 {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

fn round_trip(s: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    s.write_all(&frame(payload)).unwrap();
    read_frame(s).unwrap()
}

/// A server polled on its own thread until stopped (or a 60 s safety deadline).
struct Running<M> {
    stop: Arc<AtomicBool>,
    waker: SelectorWaker,
    join: thread::JoinHandle<Server<M>>,
}

impl<M: Mode + Send + 'static> Running<M> {
    fn start(mut server: Server<M>) -> (SocketAddr, Self) {
        let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let waker = server.waker();
        let flag = Arc::clone(&stop);
        let join = thread::spawn(move || {
            server
                .run_until(&flag, Some(Instant::now() + Duration::from_secs(60)))
                .unwrap();
            server
        });
        (addr, Running { stop, waker, join })
    }

    fn stop(self) -> Server<M> {
        self.stop.store(true, Ordering::Release);
        self.waker.wake().unwrap();
        self.join.join().unwrap()
    }
}

fn poll_until<M: Mode>(server: &mut Server<M>, mut done: impl FnMut(&mut Server<M>) -> bool) {
    let deadline = Instant::now() + WAIT;
    for _ in 0..10_000 {
        if done(server) {
            return;
        }
        assert!(Instant::now() < deadline, "condition not reached in time");
        server.poll(POLL).unwrap();
    }
    panic!("condition not reached within the poll count");
}

// ----- inline ------------------------------------------------------------------------------------

#[test]
fn inline_echo_pipelined_on_two_connections() {
    let server = Server::inline(|_: ChannelId, req: Bytes| Some(req)).unwrap();
    let (addr, running) = Running::start(server);
    let mut a = client(addr);
    let mut b = client(addr);
    let mut burst_a = Vec::new();
    let mut burst_b = Vec::new();
    for i in 0..200u32 {
        burst_a.extend(frame(format!("a{i}").as_bytes()));
        burst_b.extend(frame(&vec![i as u8; (i % 50) as usize]));
    }
    a.write_all(&burst_a).unwrap();
    b.write_all(&burst_b).unwrap();
    for i in 0..200u32 {
        assert_eq!(read_frame(&mut a).unwrap(), format!("a{i}").as_bytes());
        assert_eq!(
            read_frame(&mut b).unwrap(),
            vec![i as u8; (i % 50) as usize]
        );
    }
    drop((a, b));
    let server = running.stop();
    let st = server.stats();
    assert_eq!(st.accepted, 2);
    assert_eq!(st.requests, 400);
    assert_eq!(st.responses, 400);
    assert_eq!(st.invalid_frames, 0);
}

#[test]
fn inline_no_response_keeps_the_order_of_the_rest() {
    // Odd requests get no response.
    let server =
        Server::inline(|_: ChannelId, req: Bytes| (req[0] % 2 == 0).then_some(req)).unwrap();
    let (addr, running) = Running::start(server);
    let mut c = client(addr);
    let burst: Vec<u8> = (0..100u8).flat_map(|i| frame(&[i])).collect();
    c.write_all(&burst).unwrap();
    for i in (0..100u8).step_by(2) {
        assert_eq!(read_frame(&mut c).unwrap(), vec![i]);
    }
    drop(c);
    let st = running.stop().stats();
    assert_eq!(st.requests, 100);
    assert_eq!(st.responses, 50);
    assert_eq!(st.no_responses, 50);
}

/// A server whose connections reach back-pressure quickly: `max_staged` bytes staged per
/// connection at most, and a `send_buffer`-byte socket send buffer on accepted sockets.
fn backpressure_config(max_staged: usize, send_buffer: usize) -> ServerConfig {
    ServerConfig {
        selector: SelectorConfig {
            max_staged_bytes: max_staged,
            accepted_socket_options: SocketOptions {
                send_buffer_bytes: Some(send_buffer),
                ..SocketOptions::os_buffers()
            },
            ..SelectorConfig::default()
        },
        ..ServerConfig::default()
    }
}

#[test]
fn inline_backpressure_mutes_and_keeps_order() {
    let config = backpressure_config(64 * 1024, 32 * 1024);
    let server = Server::inline_with_config(
        |_: ChannelId, req: Bytes| {
            let mut resp = vec![0xabu8; 16 * 1024];
            resp[..4].copy_from_slice(&req[..4]);
            Some(Bytes::from(resp))
        },
        config,
    )
    .unwrap();
    let (addr, running) = Running::start(server);
    let mut c = client(addr);
    let n = 300u32;
    let burst: Vec<u8> = (0..n).flat_map(|i| frame(&i.to_be_bytes())).collect();
    c.write_all(&burst).unwrap();
    for i in 0..n {
        let resp = read_frame(&mut c).unwrap();
        assert_eq!(resp.len(), 16 * 1024);
        assert_eq!(&resp[..4], &i.to_be_bytes(), "response {i} out of order");
    }
    // The connection is unmuted again: one more round trip works.
    assert_eq!(
        &round_trip(&mut c, &7u32.to_be_bytes())[..4],
        &7u32.to_be_bytes()
    );
    drop(c);
    let st = running.stop().stats();
    assert!(
        st.backpressured > 0,
        "the backlog path was not exercised: {st:?}"
    );
    assert_eq!(st.responses, u64::from(n) + 1);
}

#[test]
fn inline_prefixed_responses_are_sent_as_is_and_a_bad_prefix_closes_only_its_connection() {
    let config = ServerConfig {
        prefixed_responses: true,
        ..ServerConfig::default()
    };
    // Echoes with a correct prefix, except for a request "bad", answered with a wrong one.
    let server = Server::inline_with_config(
        |_: ChannelId, req: Bytes| {
            let n = if &req[..] == b"bad" {
                99
            } else {
                req.len() as u32
            };
            let mut v = n.to_be_bytes().to_vec();
            v.extend_from_slice(&req);
            Some(Bytes::from(v))
        },
        config,
    )
    .unwrap();
    let (addr, running) = Running::start(server);
    let mut good = client(addr);
    let burst: Vec<u8> = (0..50u8).flat_map(|i| frame(&[i; 5])).collect();
    good.write_all(&burst).unwrap();
    for i in 0..50u8 {
        assert_eq!(read_frame(&mut good).unwrap(), vec![i; 5]);
    }
    let mut bad = client(addr);
    bad.write_all(&frame(b"bad")).unwrap();
    assert!(closed_by_peer(&mut bad));
    assert_eq!(round_trip(&mut good, b"still"), b"still");
    drop(good);
    let st = running.stop().stats();
    assert_eq!(st.closed_by_server, 1);
    assert_eq!(st.responses, 51);
}

// ----- deferred ----------------------------------------------------------------------------------

/// A deferred handler that keeps every request and its responder for the test to answer.
#[derive(Default)]
struct Held {
    requests: Vec<(ChannelId, Bytes, Responder)>,
    connected: Vec<ChannelId>,
    disconnected: Vec<(ChannelId, DisconnectReason)>,
}

impl DeferredHandler for Held {
    fn handle(&mut self, conn: ChannelId, request: Bytes, responder: Responder) {
        self.requests.push((conn, request, responder));
    }
    fn connected(&mut self, conn: ChannelId, _: SocketAddr) {
        self.connected.push(conn);
    }
    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        self.disconnected.push((conn, reason));
    }
}

#[test]
fn deferred_worker_thread_answers_out_of_band_in_order() {
    let (to_worker, jobs) = mpsc::channel::<(Bytes, Responder)>();
    let in_process = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicBool::new(false));
    let (ip, ov) = (Arc::clone(&in_process), Arc::clone(&overlap));
    let worker = thread::spawn(move || {
        let mut answered = 0u32;
        // Ends when the server (and with it the handler's sender) is dropped.
        for _ in 0..100_000 {
            let Ok((req, responder)) = jobs.recv_timeout(Duration::from_secs(30)) else {
                break;
            };
            let mut resp = b"re:".to_vec();
            resp.extend_from_slice(&req);
            ip.fetch_sub(1, Ordering::SeqCst);
            responder.respond(Bytes::from(resp)).unwrap();
            answered += 1;
        }
        answered
    });
    // One connection only, so "at most one in process" is checked globally.
    let server = Server::deferred(move |_: ChannelId, req: Bytes, r: Responder| {
        if in_process.fetch_add(1, Ordering::SeqCst) != 0 {
            ov.store(true, Ordering::SeqCst);
        }
        to_worker.send((req, r)).unwrap();
    })
    .unwrap();
    let (addr, running) = Running::start(server);
    let mut c = client(addr);
    // Request/response, then pipelined bursts.
    for i in 0..20u32 {
        assert_eq!(
            round_trip(&mut c, format!("{i}").as_bytes()),
            format!("re:{i}").as_bytes()
        );
    }
    for round in 0..5u32 {
        let burst: Vec<u8> = (0..50u32)
            .flat_map(|i| frame(format!("{round}.{i}").as_bytes()))
            .collect();
        c.write_all(&burst).unwrap();
        for i in 0..50u32 {
            assert_eq!(
                read_frame(&mut c).unwrap(),
                format!("re:{round}.{i}").as_bytes()
            );
        }
    }
    drop(c);
    let server = running.stop();
    let st = server.stats();
    drop(server);
    assert_eq!(worker.join().unwrap(), 270);
    assert!(
        !overlap.load(Ordering::SeqCst),
        "two requests of one connection were in process"
    );
    assert_eq!(st.requests, 270);
    assert_eq!(st.responses, 270);
    assert_eq!(st.stale_replies, 0);
}

#[test]
fn deferred_pipelined_requests_are_muted_queued_and_answered_one_at_a_time() {
    let mut server = Server::deferred(Held::default()).unwrap();
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut c = client(addr);
    // Five requests in one write: the Selector delivers them in one poll.
    let burst: Vec<u8> = (0..5u8).flat_map(|i| frame(&[i; 3])).collect();
    c.write_all(&burst).unwrap();

    for i in 0..5u8 {
        poll_until(&mut server, |s| !s.handler().requests.is_empty());
        let conn = server.handler().connected[0];
        // A few more polls: nothing else is handed out while this request is in process.
        for _ in 0..3 {
            server.poll(Some(Duration::ZERO)).unwrap();
        }
        assert_eq!(server.handler().requests.len(), 1, "request {i}");
        assert!(
            server.selector().is_muted(conn),
            "muted while request {i} is in process"
        );
        let (rconn, req, responder) = server.handler_mut().requests.pop().unwrap();
        assert_eq!(rconn, conn);
        assert_eq!(&req[..], &[i; 3]);
        responder.respond(Bytes::from(vec![i + 100])).unwrap();
        // The next request is handed out only after this response has left; then read it.
        poll_until(&mut server, |s| {
            !s.handler().requests.is_empty() || s.stats().responses == u64::from(i) + 1
        });
        assert_eq!(read_frame(&mut c).unwrap(), vec![i + 100]);
    }
    let conn = server.handler().connected[0];
    poll_until(&mut server, |s| !s.selector().is_muted(conn));
    assert!(server.handler().requests.is_empty());

    // Unmuted: a new request flows again, and the client closing is reported once.
    c.write_all(&frame(b"again")).unwrap();
    poll_until(&mut server, |s| !s.handler().requests.is_empty());
    let (_, req, responder) = server.handler_mut().requests.pop().unwrap();
    assert_eq!(&req[..], b"again");
    responder.no_response().unwrap();
    drop(c);
    poll_until(&mut server, |s| !s.handler().disconnected.is_empty());
    assert_eq!(
        server.handler().disconnected,
        vec![(conn, DisconnectReason::PeerClosed)]
    );
    let st = server.stats();
    assert_eq!((st.requests, st.responses, st.no_responses), (6, 5, 1));
}

#[test]
fn deferred_replies_from_other_connections_interleave_freely() {
    // Two connections; their requests are answered in the reverse order of arrival.
    let mut server = Server::deferred(Held::default()).unwrap();
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut a = client(addr);
    let mut b = client(addr);
    let mut burst = frame(b"a0");
    burst.extend(frame(b"a1"));
    a.write_all(&burst).unwrap();
    b.write_all(&frame(b"b0")).unwrap();
    poll_until(&mut server, |s| s.handler().requests.len() == 2);
    let answer = |(_, req, r): (ChannelId, Bytes, Responder)| {
        let mut resp = b"re:".to_vec();
        resp.extend_from_slice(&req);
        r.respond(Bytes::from(resp)).unwrap();
    };
    let mut held = std::mem::take(&mut server.handler_mut().requests);
    held.drain(..).rev().for_each(answer);
    // a1 is handed out once a0's response has left.
    poll_until(&mut server, |s| {
        s.handler().requests.len() == 1 && s.stats().responses == 2
    });
    let (_, req, _) = &server.handler().requests[0];
    assert_eq!(&req[..], b"a1");
    server.handler_mut().requests.drain(..).for_each(answer);
    poll_until(&mut server, |s| s.stats().responses == 3);
    assert_eq!(read_frame(&mut a).unwrap(), b"re:a0");
    assert_eq!(read_frame(&mut a).unwrap(), b"re:a1");
    assert_eq!(read_frame(&mut b).unwrap(), b"re:b0");
}

#[test]
fn deferred_dropped_responder_closes_only_that_connection() {
    let mut server = Server::deferred(Held::default()).unwrap();
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut victim = client(addr);
    victim.write_all(&frame(b"x")).unwrap();
    poll_until(&mut server, |s| !s.handler().requests.is_empty());
    drop(server.handler_mut().requests.pop());
    poll_until(&mut server, |s| s.connections() == 0);
    assert!(closed_by_peer(&mut victim));
    assert_eq!(server.stats().closed_by_server, 1);
    assert_eq!(server.handler().disconnected.len(), 1);

    let mut other = client(addr);
    other.write_all(&frame(b"y")).unwrap();
    poll_until(&mut server, |s| !s.handler().requests.is_empty());
    let (_, _, r) = server.handler_mut().requests.pop().unwrap();
    r.respond(Bytes::from_static(b"ok")).unwrap();
    poll_until(&mut server, |s| s.stats().responses == 1);
    assert_eq!(read_frame(&mut other).unwrap(), b"ok");
}

#[test]
fn responder_after_server_drop_reports_server_gone() {
    let mut server = Server::deferred(Held::default()).unwrap();
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut c = client(addr);
    c.write_all(&frame(b"x")).unwrap();
    poll_until(&mut server, |s| !s.handler().requests.is_empty());
    let (_, _, r) = server.handler_mut().requests.pop().unwrap();
    drop(server);
    assert_eq!(r.respond(Bytes::new()), Err(ServerGone));
}

// ----- hostile clients ---------------------------------------------------------------------------

/// Sends each hostile prefix (negative, very negative, huge, garbage) on its own connection after
/// a valid request, then good frames pipelined ahead of a bad prefix: each of those five
/// connections is closed, and `neighbour` is served after each.
fn hostile_prefixes_close_only_their_connection(addr: SocketAddr, neighbour: &mut TcpStream) {
    let hostile: [&[u8]; 4] = [
        &(-1i32).to_be_bytes(),               // negative length
        &i32::MIN.to_be_bytes(),              // very negative length
        &0x7fff_ffffu32.to_be_bytes(),        // huge length
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", // garbage: "GET " read as a length
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        let mut h = client(addr);
        // A valid request first, so the connection was a working one.
        assert_eq!(round_trip(&mut h, b"fine"), b"fine");
        h.write_all(bytes).unwrap();
        assert!(
            closed_by_peer(&mut h),
            "hostile client {i} was not disconnected"
        );
        let msg = format!("still here {i}");
        assert_eq!(round_trip(neighbour, msg.as_bytes()), msg.as_bytes());
    }
    // A hostile frame pipelined behind good ones on the same connection: the Selector delivers the
    // good ones and closes the connection in the same poll (as Kafka does on an invalid receive),
    // so their responses have nowhere to go; the connection is closed all the same.
    let mut h = client(addr);
    let mut burst = frame(b"one");
    burst.extend(frame(b"two"));
    burst.extend_from_slice(&(-5i32).to_be_bytes());
    h.write_all(&burst).unwrap();
    assert!(closed_by_peer(&mut h));
    assert_eq!(round_trip(neighbour, b"bye"), b"bye");
}

#[test]
fn hostile_clients_close_only_their_own_connection() {
    let server = Server::inline(|_: ChannelId, req: Bytes| Some(req)).unwrap();
    let (addr, running) = Running::start(server);
    let mut neighbour = client(addr);
    assert_eq!(round_trip(&mut neighbour, b"hello"), b"hello");

    hostile_prefixes_close_only_their_connection(addr, &mut neighbour);

    drop(neighbour);
    let st = running.stop().stats();
    assert_eq!(st.invalid_frames, 5, "{st:?}");
}

#[test]
fn stalled_half_frame_expires_while_a_neighbour_is_served() {
    let config = ServerConfig {
        selector: SelectorConfig {
            connections_max_idle: Some(Duration::from_millis(300)),
            ..SelectorConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::inline_with_config(|_: ChannelId, req: Bytes| Some(req), config).unwrap();
    let (addr, running) = Running::start(server);
    let mut stalled = client(addr);
    // Announces 10 bytes, sends 2, then nothing.
    stalled.write_all(&[0, 0, 0, 10, 1, 2]).unwrap();
    let watcher = thread::spawn(move || closed_by_peer(&mut stalled));
    let mut neighbour = client(addr);
    let deadline = Instant::now() + WAIT;
    let mut trips = 0u32;
    for i in 0..1_000_000u32 {
        if watcher.is_finished() || Instant::now() >= deadline {
            break;
        }
        let msg = i.to_be_bytes();
        assert_eq!(round_trip(&mut neighbour, &msg), msg);
        trips += 1;
    }
    assert!(
        watcher.join().unwrap(),
        "the stalled connection was not closed"
    );
    assert!(trips > 0);
    assert_eq!(round_trip(&mut neighbour, b"after"), b"after");
    drop(neighbour);
    let st = running.stop().stats();
    assert_eq!(st.invalid_frames, 0);
    assert!(st.closed >= 1);
}

// ----- direct ------------------------------------------------------------------------------------

/// A direct handler that echoes the request.
fn direct_echo(_: ChannelId, req: &[u8], out: &mut FrameWriter<'_>) -> bool {
    out.put_slice(req);
    true
}

#[test]
fn direct_echo_pipelined_small_and_large_on_two_connections() {
    let server = Server::direct(direct_echo).unwrap();
    let (addr, running) = Running::start(server);
    let mut a = client(addr);
    let mut b = client(addr);
    let mut burst_a = Vec::new();
    let mut burst_b = Vec::new();
    // Sizes cross the read chunk (64 KiB) and the contiguous send buffer's limit, so frames
    // straddle reads and buffer growth happens while frames are outstanding.
    let size_b = |i: u32| ((i * 7919) % 150_000) as usize;
    for i in 0..200u32 {
        burst_a.extend(frame(format!("a{i}").as_bytes()));
        burst_b.extend(frame(&vec![i as u8; size_b(i)]));
    }
    let wb = thread::spawn(move || {
        b.write_all(&burst_b).unwrap();
        b
    });
    a.write_all(&burst_a).unwrap();
    for i in 0..200u32 {
        assert_eq!(read_frame(&mut a).unwrap(), format!("a{i}").as_bytes());
    }
    let mut b = wb.join().unwrap();
    for i in 0..200u32 {
        assert_eq!(
            read_frame(&mut b).unwrap(),
            vec![i as u8; size_b(i)],
            "frame {i}"
        );
    }
    drop((a, b));
    let server = running.stop();
    let st = server.stats();
    assert_eq!(st.accepted, 2);
    assert_eq!(st.requests, 400);
    assert_eq!(st.responses, 400);
    assert_eq!(st.invalid_frames, 0);
}

#[test]
fn direct_no_response_drops_what_was_written_and_keeps_the_order() {
    // Odd requests get no response, though the handler wrote into the writer first.
    let server = Server::direct(|_: ChannelId, req: &[u8], out: &mut FrameWriter<'_>| {
        out.put_slice(req);
        req[0] % 2 == 0
    })
    .unwrap();
    let (addr, running) = Running::start(server);
    let mut c = client(addr);
    let burst: Vec<u8> = (0..100u8).flat_map(|i| frame(&[i, i])).collect();
    c.write_all(&burst).unwrap();
    for i in (0..100u8).step_by(2) {
        assert_eq!(read_frame(&mut c).unwrap(), vec![i, i]);
    }
    drop(c);
    let st = running.stop().stats();
    assert_eq!(st.requests, 100);
    assert_eq!(st.responses, 50);
    assert_eq!(st.no_responses, 50);
}

#[test]
fn direct_backpressure_mutes_and_keeps_order() {
    let config = backpressure_config(64 * 1024, 32 * 1024);
    let server = Server::direct_with_config(
        |_: ChannelId, req: &[u8], out: &mut FrameWriter<'_>| {
            out.put_slice(&req[..4]);
            out.put_bytes(0xab, 16 * 1024 - 4);
            true
        },
        config,
    )
    .unwrap();
    let (addr, running) = Running::start(server);
    let mut c = client(addr);
    let n = 300u32;
    let burst: Vec<u8> = (0..n).flat_map(|i| frame(&i.to_be_bytes())).collect();
    c.write_all(&burst).unwrap();
    for i in 0..n {
        let resp = read_frame(&mut c).unwrap();
        assert_eq!(resp.len(), 16 * 1024);
        assert_eq!(&resp[..4], &i.to_be_bytes(), "response {i} out of order");
    }
    assert_eq!(
        &round_trip(&mut c, &7u32.to_be_bytes())[..4],
        &7u32.to_be_bytes()
    );
    drop(c);
    let server = running.stop();
    let st = server.stats();
    assert!(
        st.backpressured > 0,
        "back-pressure was not exercised: {st:?}"
    );
    assert_eq!(st.responses, u64::from(n) + 1);
}

#[test]
fn direct_oversized_response_closes_only_its_connection() {
    let config = ServerConfig {
        selector: SelectorConfig {
            max_frame_size: 1024,
            ..SelectorConfig::default()
        },
        ..ServerConfig::default()
    };
    // "big" is answered with more than the maximum frame size.
    let server = Server::direct_with_config(
        |_: ChannelId, req: &[u8], out: &mut FrameWriter<'_>| {
            if req == b"big" {
                out.put_bytes(1, 2048);
            } else {
                out.put_slice(req);
            }
            true
        },
        config,
    )
    .unwrap();
    let (addr, running) = Running::start(server);
    let mut good = client(addr);
    assert_eq!(round_trip(&mut good, b"one"), b"one");
    let mut bad = client(addr);
    assert_eq!(round_trip(&mut bad, b"fine"), b"fine");
    bad.write_all(&frame(b"big")).unwrap();
    assert!(closed_by_peer(&mut bad));
    assert_eq!(round_trip(&mut good, b"still"), b"still");
    drop(good);
    let st = running.stop().stats();
    assert_eq!(st.closed_by_server, 1);
    assert_eq!(st.responses, 3);
}

#[test]
fn direct_hostile_clients_close_only_their_own_connection() {
    let server = Server::direct(direct_echo).unwrap();
    let (addr, running) = Running::start(server);
    let mut neighbour = client(addr);
    assert_eq!(round_trip(&mut neighbour, b"hello"), b"hello");
    hostile_prefixes_close_only_their_connection(addr, &mut neighbour);
    drop(neighbour);
    let st = running.stop().stats();
    assert_eq!(st.invalid_frames, 5, "{st:?}");
    // 1 + 4 × 2 + 2 + 1 requests reached the handler (the last burst's two included).
    assert_eq!(st.requests, 12, "{st:?}");
}

/// What a [`Recording`] handler saw of its connections.
enum Event {
    Connected(ChannelId, SocketAddr),
    Gone(ChannelId, DisconnectReason),
}

/// A direct echo handler that reports every connection accepted and gone.
struct Recording(mpsc::Sender<Event>);

impl DirectHandler for Recording {
    fn handle(&mut self, conn: ChannelId, request: &[u8], response: &mut FrameWriter<'_>) -> bool {
        direct_echo(conn, request, response)
    }
    fn connected(&mut self, conn: ChannelId, peer: SocketAddr) {
        let _ = self.0.send(Event::Connected(conn, peer));
    }
    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        let _ = self.0.send(Event::Gone(conn, reason));
    }
}

/// Waits (bounded) for the disconnect of the connection whose client end is `client`; events of
/// other connections are kept in `seen`.
fn wait_gone(
    rx: &mpsc::Receiver<Event>,
    seen: &mut Vec<(ChannelId, SocketAddr, Option<DisconnectReason>)>,
    client: SocketAddr,
) -> DisconnectReason {
    let deadline = Instant::now() + WAIT;
    loop {
        let hit = seen.iter().find(|(_, peer, _)| *peer == client);
        if let Some((_, _, Some(reason))) = hit {
            return *reason;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx
            .recv_timeout(left)
            .expect("no disconnect reported in time")
        {
            Event::Connected(id, peer) => seen.push((id, peer, None)),
            Event::Gone(id, reason) => {
                let entry = seen.iter_mut().find(|(i, _, _)| *i == id);
                entry.expect("gone before connected").2 = Some(reason);
            }
        }
    }
}

#[test]
fn direct_invalid_prefixes_close_with_a_typed_reason_and_spare_the_neighbour() {
    let config = ServerConfig {
        selector: SelectorConfig {
            max_frame_size: 1024,
            ..SelectorConfig::default()
        },
        ..ServerConfig::default()
    };
    let (tx, rx) = mpsc::channel();
    let server = Server::direct_with_config(Recording(tx), config).unwrap();
    let (addr, running) = Running::start(server);
    let mut seen = Vec::new();
    let mut neighbour = client(addr);
    // The largest valid frame is served.
    assert_eq!(round_trip(&mut neighbour, &[7; 1024]), vec![7; 1024]);

    let too_large = |len| DisconnectReason::InvalidFrame(FrameError::TooLarge { len, max: 1024 });
    let cases: [(&[u8], DisconnectReason); 5] = [
        // One byte over the maximum frame size.
        (&1025u32.to_be_bytes(), too_large(1025)),
        (&0x7fff_ffffu32.to_be_bytes(), too_large(0x7fff_ffff)),
        (
            &(-1i32).to_be_bytes(),
            DisconnectReason::InvalidFrame(FrameError::NegativeLength(-1)),
        ),
        // Garbage: "GET " read as a length prefix.
        (
            b"GET / HTTP/1.1\r\n\r\n",
            too_large(u32::from_be_bytes(*b"GET ") as usize),
        ),
        // Garbage with the top bit set reads as a negative length.
        (
            &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3],
            DisconnectReason::InvalidFrame(FrameError::NegativeLength(i32::from_be_bytes([
                0xde, 0xad, 0xbe, 0xef,
            ]))),
        ),
    ];
    for (i, (bytes, want)) in cases.iter().enumerate() {
        let mut h = client(addr);
        assert_eq!(round_trip(&mut h, b"fine"), b"fine");
        // A good frame pipelined ahead of the bad prefix, in the same write.
        let mut burst = frame(b"ahead");
        burst.extend_from_slice(bytes);
        h.write_all(&burst).unwrap();
        assert!(closed_by_peer(&mut h), "case {i}: not disconnected");
        let reason = wait_gone(&rx, &mut seen, h.local_addr().unwrap());
        assert_eq!(reason, *want, "case {i}");
        let msg = format!("still here {i}");
        assert_eq!(round_trip(&mut neighbour, msg.as_bytes()), msg.as_bytes());
    }
    let neighbour_addr = neighbour.local_addr().unwrap();
    drop(neighbour);
    assert_eq!(
        wait_gone(&rx, &mut seen, neighbour_addr),
        DisconnectReason::PeerClosed
    );
    let server = running.stop();
    let st = server.stats();
    assert_eq!(st.invalid_frames, 5, "{st:?}");
    assert_eq!(st.accepted, 6, "{st:?}");
    assert_eq!(server.connections(), 0);
}

#[test]
fn direct_peer_that_stops_reading_is_muted_then_unmuted_with_nothing_lost() {
    const PAYLOAD: usize = 1000;
    let config = backpressure_config(16 * 1024, 4 * 1024);
    let (tx, rx) = mpsc::channel();
    let mut server = Server::direct_with_config(Recording(tx), config).unwrap();
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // A fixed, small receive buffer, set before the connect so the window is sized by it: the
    // kernel grows an unset one by megabytes, which would absorb the responses of a peer that does
    // not read.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.set_nonblocking(true).unwrap();
    let mut id = None;
    poll_until(&mut server, |_| {
        if let Ok(Event::Connected(c, _)) = rx.try_recv() {
            id = Some(c);
        }
        id.is_some()
    });
    let id = id.expect("the connection");
    let request = |i: u32| {
        let mut p = i.to_be_bytes().to_vec();
        p.resize(PAYLOAD, i as u8);
        frame(&p)
    };

    // Sends requests and reads nothing until the server mutes the connection.
    let mut out = Vec::new();
    let mut sent = 0u32;
    let deadline = Instant::now() + WAIT;
    for _ in 0..100_000 {
        if server.selector().is_muted(id) {
            break;
        }
        assert!(Instant::now() < deadline, "never muted");
        if out.len() < 64 * 1024 {
            out.extend(request(sent));
            sent += 1;
        }
        match c.write(&out) {
            Ok(n) => drop(out.drain(..n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("write: {e}"),
        }
        server.poll(Some(Duration::from_millis(1))).unwrap();
    }
    assert!(server.selector().is_muted(id), "never muted");
    assert_eq!(server.stats().backpressured, 1);
    assert!(server.selector().staged_bytes(id) >= 16 * 1024);

    // A poll that starts with the connection muted reads nothing of it: further requests wait in
    // the socket buffers and the handler gets none of them.
    for _ in 0..5 {
        if !server.selector().is_muted(id) {
            break;
        }
        let handled = server.stats().requests;
        server.poll(Some(Duration::from_millis(5))).unwrap();
        assert_eq!(server.stats().requests, handled);
    }

    // The peer reads again: every response arrives, in order, and the connection is unmuted.
    let mut got = Vec::new();
    let mut next = 0u32;
    let mut buf = vec![0u8; 64 * 1024];
    let frame_len = 4 + PAYLOAD;
    let deadline = Instant::now() + WAIT;
    let mut unmuted = false;
    for _ in 0..100_000 {
        if next == sent && out.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "responses missing: {next} of {sent}"
        );
        if !out.is_empty() {
            match c.write(&out) {
                Ok(n) => drop(out.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        match c.read(&mut buf) {
            Ok(0) => panic!("closed by the server"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
        while got.len() >= frame_len {
            assert_eq!(got[..frame_len], request(next), "response {next}");
            got.drain(..frame_len);
            next += 1;
        }
        server.poll(Some(Duration::from_millis(1))).unwrap();
        unmuted |= !server.selector().is_muted(id);
    }
    assert_eq!(next, sent, "responses missing");
    assert!(got.is_empty());
    assert!(unmuted, "never unmuted");
    poll_until(&mut server, |s| !s.selector().is_muted(id));
    let st = server.stats();
    assert_eq!(st.requests, u64::from(sent), "{st:?}");
    assert_eq!(st.responses, u64::from(sent), "{st:?}");
    assert_eq!(st.invalid_frames, 0);
    assert_eq!(st.closed, 0);
}
