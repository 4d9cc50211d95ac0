//! NetworkClient on simulated time (mqnet::sim): exact attempt times with a fixed jitter source,
//! injected faults, and a property test of exactly-once completion.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{
    ClientConfig, ClientRequest, ClientResponse, ConnectionState, DisconnectCause, Handshake,
    HandshakeStep, LocalError, NetworkClient, NoHandshake, NodeId, Outcome, ResponseOrder,
    SplitMix64,
};
use mqnet::failover::BootstrapFailover;
use mqnet::net::{DisconnectReason, Transport};
use mqnet::sim::{Behaviour, SimNetwork};
use mqnet_test_support::jitter::NoJitter;
use proptest::prelude::*;

type Client = NetworkClient<SimNetwork, NoHandshake>;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn client(net: SimNetwork, cfg: ClientConfig) -> Client {
    NetworkClient::with_transport(net, cfg, NoHandshake).with_rng(NoJitter)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A request whose frame starts with its correlation id (so the Echo peer answers it correctly).
fn request<H: Handshake>(c: &mut NetworkClient<SimNetwork, H>, node: NodeId) -> ClientRequest {
    let corr = c.next_correlation_id();
    let mut v = corr.to_be_bytes().to_vec();
    v.extend_from_slice(b"body");
    ClientRequest::new(node, corr, Bytes::from(v))
}

/// Polls until `node` is Ready (bounded), returns the completions seen meanwhile.
fn connect(c: &mut Client, node: NodeId) -> Vec<ClientResponse> {
    let mut out = Vec::new();
    for _ in 0..5_000 {
        let now = c.transport().now();
        if c.ready(node, now) {
            return out;
        }
        out.extend(io_round(c, Some(ms(1)), now));
    }
    panic!("{node} never became ready: {:?}", c.connection_state(node));
}

/// One client round on simulated time: the I/O (waiting at most `timeout` from `now`), then the
/// completions settled at the transport's time after it (the caller's clock, read after the I/O).
fn io_round<H: Handshake>(
    c: &mut NetworkClient<SimNetwork, H>,
    timeout: Option<Duration>,
    now: Instant,
) -> Vec<ClientResponse> {
    c.poll_io(timeout, now).expect("poll");
    let after = c.transport().now();
    c.handle(after)
}

#[test]
fn reconnect_backoff_attempt_times_are_exact() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9000), Behaviour::Refuse);
    let mut c = client(net, ClientConfig::default());
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9000").unwrap();
    let t0 = c.transport().now();
    let mut attempts = Vec::new();
    let mut seen = 0;
    for _ in 0..10_000 {
        let now = c.transport().now();
        c.ready(node, now);
        if c.transport().connect_attempts() > seen {
            seen = c.transport().connect_attempts();
            attempts.push((now - t0).as_millis());
        }
        if attempts.len() == 8 {
            break;
        }
        io_round(&mut c, Some(ms(1)), now);
    }
    // Each refusal takes 2 ms (one simulated RTT); then backoff(n) = 50 ms × 2^n, capped at 1 s.
    assert_eq!(attempts, vec![0, 52, 154, 356, 758, 1560, 2562, 3564]);
    assert!(c.connection_delay(node, c.transport().now()) > Duration::ZERO);

    // The server comes up: the next attempt reaches Ready and resets the failure count; a later
    // drop backs off by the initial 50 ms again (KAFKA-13879).
    c.transport_mut().set_behaviour(addr(9000), Behaviour::Echo);
    connect(&mut c, node);
    assert_eq!(c.connection_state(node), Some(ConnectionState::Ready));
    c.transport_mut().close_peer(addr(9000));
    let now = c.transport().now();
    io_round(&mut c, Some(ms(1)), now);
    assert_eq!(
        c.connection_state(node),
        Some(ConnectionState::Disconnected)
    );
    let now = c.transport().now();
    assert_eq!(c.connection_delay(node, now), ms(50));
    assert!(!c.ready(node, now + ms(49)));
    let before = c.transport().connect_attempts();
    c.ready(node, now + ms(50));
    assert_eq!(c.transport().connect_attempts(), before + 1);
}

#[test]
fn setup_timeout_aborts_the_socket_and_grows_to_the_max() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9001), Behaviour::Blackhole);
    let mut c = client(net, ClientConfig::default());
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9001").unwrap();
    let t0 = c.transport().now();
    let mut attempts = Vec::new();
    let mut failures = Vec::new();
    let mut seen = 0;
    for _ in 0..200 {
        let now = c.transport().now();
        c.ready(node, now);
        if c.transport().connect_attempts() > seen {
            seen = c.transport().connect_attempts();
            attempts.push((now - t0).as_millis());
            // Never more than the one socket of the current attempt.
            assert_eq!(c.transport().open_channels(), 1);
        }
        if attempts.len() == 5 {
            break;
        }
        let state = c.connection_state(node);
        let delay = c.connection_delay(node, now).min(Duration::from_secs(60));
        io_round(&mut c, Some(delay), now);
        if state == Some(ConnectionState::Connecting)
            && c.connection_state(node) == Some(ConnectionState::Disconnected)
        {
            failures.push((c.transport().now() - t0).as_millis());
            // The pending socket was aborted, not left to connect later.
            assert_eq!(c.transport().open_channels(), 0);
        }
    }
    // Setup timeouts 10 s, 20 s, 30 s, 30 s; reconnect backoff 50, 100, 200, 400 ms in between.
    assert_eq!(failures, vec![10_000, 30_050, 60_150, 90_350]);
    assert_eq!(attempts, vec![0, 10_050, 30_150, 60_350, 90_750]);
}

#[test]
fn request_timeout_closes_the_connection_and_fails_the_others_as_disconnected() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9002), Behaviour::Silent);
    let mut c = client(net, ClientConfig::default());
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9002").unwrap();
    connect(&mut c, node);
    let t_first = c.transport().now();
    let r1 = request(&mut c, node);
    let c1 = c.send(r1, t_first);
    let mut done = Vec::new();
    for _ in 0..10 {
        let now = c.transport().now();
        if now - t_first >= ms(1000) {
            break;
        }
        done.extend(io_round(&mut c, Some(ms(1000)), now));
    }
    let now = c.transport().now();
    assert_eq!(now - t_first, ms(1000));
    let r2 = request(&mut c, node);
    let c2 = c.send(r2, now);
    for _ in 0..10 {
        if done.len() >= 2 {
            break;
        }
        let now = c.transport().now();
        done.extend(io_round(&mut c, None, now));
    }
    assert_eq!(done.len(), 2, "{done:?}");
    let first = done.iter().find(|r| r.correlation_id == c1).unwrap();
    assert_eq!(first.outcome, Outcome::TimedOut);
    assert_eq!(first.latency, Duration::from_secs(30));
    let second = done.iter().find(|r| r.correlation_id == c2).unwrap();
    assert_eq!(
        second.outcome,
        Outcome::Disconnected(DisconnectCause::RequestTimeout)
    );
    // Completed exactly at the first deadline; connection closed.
    assert_eq!(c.transport().now() - t_first, Duration::from_secs(30));
    assert_eq!(
        c.connection_state(node),
        Some(ConnectionState::Disconnected)
    );
    assert_eq!(c.transport().open_channels(), 0);
}

#[test]
fn in_flight_cap_makes_the_sixth_request_wait() {
    let net = SimNetwork::new().with_latency(ms(50));
    let mut c = client(net, ClientConfig::default());
    c.transport_mut().set_behaviour(addr(9003), Behaviour::Echo);
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9003").unwrap();
    connect(&mut c, node);
    let now = c.transport().now();
    let corrs: Vec<i32> = (0..6)
        .map(|_| {
            let r = request(&mut c, node);
            c.send(r, now)
        })
        .collect();
    // Kafka's rule: one staged at a time until it has fully left.
    assert_eq!(c.in_flight_count(node), 1);
    assert_eq!(c.waiting_count(node), 5);
    let mut done = Vec::new();
    let mut max_in_flight = 0;
    for _ in 0..5_000 {
        let now = c.transport().now();
        done.extend(io_round(&mut c, Some(ms(1)), now));
        max_in_flight = max_in_flight.max(c.in_flight_count(node));
        if c.in_flight_count(node) == 5 {
            assert_eq!(c.waiting_count(node), 1, "the sixth waits");
            assert!(!c.is_ready(node));
        }
        if done.len() == 6 {
            break;
        }
    }
    assert_eq!(max_in_flight, 5);
    let got: Vec<i32> = done.iter().map(|r| r.correlation_id).collect();
    assert_eq!(got, corrs, "responses in order");
    assert!(done
        .iter()
        .all(|r| matches!(&r.outcome, Outcome::Response(b) if b.len() == 8)));
}

#[test]
fn a_request_written_with_a_body_is_one_frame_and_only_sent_when_ready() {
    let mut c = client(
        SimNetwork::new().with_latency(ms(5)),
        ClientConfig::default(),
    );
    c.transport_mut().set_behaviour(addr(9013), Behaviour::Echo);
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9013").unwrap();
    let body = Bytes::from_static(b"the body");
    let corr = c.next_correlation_id();
    let now = c.transport().now();
    // Not connected yet: refused, nothing recorded.
    assert!(!c.send_with_body(node, corr, now, |w| w.put_i32(corr), body.clone()));
    assert_eq!(c.in_flight_count(node), 0);
    connect(&mut c, node);
    let now = c.transport().now();
    assert!(c.send_with_body(node, corr, now, |w| w.put_i32(corr), body.clone()));
    assert_eq!(c.in_flight_count(node), 1);
    let mut done = Vec::new();
    for _ in 0..1_000 {
        let now = c.transport().now();
        done.extend(io_round(&mut c, Some(ms(1)), now));
        if !done.is_empty() {
            break;
        }
    }
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].correlation_id, corr);
    let mut want = corr.to_be_bytes().to_vec();
    want.extend_from_slice(&body);
    assert!(
        matches!(&done[0].outcome, Outcome::Response(b) if b[..] == want[..]),
        "{:?}",
        done[0].outcome
    );
    // Counted like a built frame: the payload and its 4-byte prefix, out and back.
    let m = c.node_metrics(node).expect("node metrics");
    assert_eq!((m.requests_sent, m.bytes_sent), (1, 4 + 12));
    assert_eq!((m.responses, m.bytes_received), (1, 4 + 12));
    // A request written whole with `send_with` is counted the same way.
    let corr = c.next_correlation_id();
    let now = c.transport().now();
    assert!(c.send_with(node, corr, now, |w| {
        w.put_i32(corr);
        w.put_slice(b"abc");
    }));
    let m = c.node_metrics(node).expect("node metrics");
    assert_eq!((m.requests_sent, m.bytes_sent), (2, 16 + 4 + 7));
}

#[test]
fn correlation_mismatch_closes_and_fails_every_in_flight_request() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9004), Behaviour::WrongCorrelation);
    let cfg = ClientConfig::default().pipeline_unsent(true);
    let mut c = client(net, cfg);
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9004").unwrap();
    connect(&mut c, node);
    let now = c.transport().now();
    let corrs: Vec<i32> = (0..3)
        .map(|_| {
            let r = request(&mut c, node);
            c.send(r, now)
        })
        .collect();
    let mut done = Vec::new();
    for _ in 0..20 {
        let now = c.transport().now();
        done.extend(io_round(&mut c, Some(ms(1)), now));
        if done.len() == 3 {
            break;
        }
    }
    assert_eq!(done.len(), 3);
    for r in &done {
        assert_eq!(
            r.outcome,
            Outcome::Disconnected(DisconnectCause::CorrelationMismatch {
                expected: corrs[0],
                actual: Some(corrs[0] + 1)
            })
        );
    }
    assert_eq!(
        c.connection_state(node),
        Some(ConnectionState::Disconnected)
    );
    assert_eq!(c.transport().open_channels(), 0);
}

#[test]
fn unordered_mode_matches_by_correlation_id() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9005), Behaviour::WrongCorrelation);
    let cfg = ClientConfig::default()
        .response_order(ResponseOrder::Unordered)
        .pipeline_unsent(true)
        .request_timeout(Duration::from_secs(5));
    let mut c = client(net, cfg);
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9005").unwrap();
    connect(&mut c, node);
    let now = c.transport().now();
    let ra = request(&mut c, node);
    let a = c.send(ra, now);
    let rb = request(&mut c, node);
    let b = c.send(rb, now);
    // The peer answers `a` with id `b` and `b` with id `b + 1`: `b` completes out of order, the
    // unknown id is dropped and counted, `a` eventually times out.
    let mut done = Vec::new();
    for _ in 0..50 {
        let now = c.transport().now();
        done.extend(io_round(&mut c, None, now));
        if done.len() == 2 {
            break;
        }
    }
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(done[0].correlation_id, b);
    assert!(matches!(done[0].outcome, Outcome::Response(_)));
    assert_eq!(done[1].correlation_id, a);
    assert_eq!(done[1].outcome, Outcome::TimedOut);
    assert_eq!(c.node_metrics(node).unwrap().unknown_correlation_ids, 1);
}

#[test]
fn request_without_response_completes_when_sent() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9006), Behaviour::Silent);
    let mut c = client(net, ClientConfig::default());
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9006").unwrap();
    connect(&mut c, node);
    let now = c.transport().now();
    let r = request(&mut c, node).expect_response(false);
    let corr = c.send(r, now);
    let done = io_round(&mut c, Some(ms(1)), now);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].correlation_id, corr);
    assert_eq!(done[0].outcome, Outcome::Sent);
    assert_eq!(c.in_flight_count(node), 0);
}

#[test]
fn peer_close_fails_in_flight_once_and_grows_backoff() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9007), Behaviour::Silent);
    let mut c = client(net, ClientConfig::default().pipeline_unsent(true));
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9007").unwrap();
    connect(&mut c, node);
    let now = c.transport().now();
    for _ in 0..3 {
        let r = request(&mut c, node);
        c.send(r, now);
    }
    io_round(&mut c, Some(ms(1)), now);
    c.transport_mut().reset_peer(addr(9007));
    let now = c.transport().now();
    let done = io_round(&mut c, Some(ms(1)), now);
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|r| matches!(
        r.outcome,
        Outcome::Disconnected(DisconnectCause::Transport(DisconnectReason::Io(_)))
    )));
    assert_eq!(
        c.connection_state(node),
        Some(ConnectionState::Disconnected)
    );
    assert_eq!(c.connection_delay(node, c.transport().now()), ms(50));
    // Nothing more ever completes for them.
    for _ in 0..5 {
        let now = c.transport().now();
        assert!(io_round(&mut c, Some(ms(100)), now).is_empty());
    }
}

#[test]
fn local_errors_never_touch_the_network() {
    let mut c = client(SimNetwork::new(), ClientConfig::default());
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9008").unwrap();
    let now = c.transport().now();
    let r = request(&mut c, NodeId(99));
    c.send(r, now);
    let r = request(&mut c, node);
    c.send(r, now);
    let done = io_round(&mut c, Some(ms(1)), now);
    assert_eq!(done.len(), 2);
    assert_eq!(
        done[0].outcome,
        Outcome::LocalError(LocalError::UnknownNode)
    );
    assert_eq!(
        done[1].outcome,
        Outcome::LocalError(LocalError::NotReady(ConnectionState::Disconnected))
    );
    assert_eq!(c.transport().connect_attempts(), 0);
}

#[test]
fn callbacks_run_once_with_the_response() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9009), Behaviour::Echo);
    let mut c = client(net, ClientConfig::default());
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9009").unwrap();
    connect(&mut c, node);
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let now = c.transport().now();
    let r = request(&mut c, node).on_complete(move |resp| {
        assert!(matches!(resp.outcome, Outcome::Response(_)));
        h.fetch_add(1, Ordering::SeqCst);
    });
    c.send(r, now);
    for _ in 0..20 {
        let now = c.transport().now();
        io_round(&mut c, Some(ms(1)), now);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn borrowed_responses_come_in_completion_order_with_callbacks_first() {
    use std::sync::{Arc, Mutex};
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9010), Behaviour::Echo);
    let mut c = client(net, ClientConfig::default().pipeline_unsent(true));
    assert!(c.set_borrowed_responses(true));
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9010").unwrap();
    connect(&mut c, node);
    // Four requests answered in one poll: the second has a callback (its response is copied for
    // it), the third expects no response (completes `Sent` earlier, its answer is dropped).
    let seen = Arc::new(Mutex::new(Vec::new()));
    let now = c.transport().now();
    let mut frames = Vec::new();
    for k in 0..4 {
        let mut r = request(&mut c, node);
        frames.push(r.frame.clone());
        if k == 1 {
            let log = seen.clone();
            r = r.on_complete(move |resp| {
                log.lock()
                    .unwrap()
                    .push(format!("callback {}", resp.correlation_id));
            });
        }
        if k == 2 {
            r = r.expect_response(false);
        }
        c.send(r, now);
    }
    let mut done = Vec::new();
    for _ in 0..20 {
        let now = c.transport().now();
        c.poll_io(Some(ms(1)), now).unwrap();
        let after = c.transport().now();
        c.handle_with(after, |r| {
            seen.lock()
                .unwrap()
                .push(format!("done {}", r.correlation_id));
            done.push(r.to_owned());
        });
        if done.len() == 4 {
            break;
        }
    }
    let corr: Vec<i32> = frames
        .iter()
        .map(|f| i32::from_be_bytes([f[0], f[1], f[2], f[3]]))
        .collect();
    // `Sent` first (it completed when it left), then the responses in arrival order.
    let order: Vec<i32> = done.iter().map(|r| r.correlation_id).collect();
    assert_eq!(order, [corr[2], corr[0], corr[1], corr[3]]);
    assert_eq!(done[0].outcome, Outcome::Sent);
    for (r, k) in done[1..].iter().zip([0, 1, 3]) {
        assert_eq!(r.outcome, Outcome::Response(frames[k].clone()));
    }
    let log = seen.lock().unwrap().clone();
    let pos = |s: String| log.iter().position(|l| *l == s).expect("logged");
    assert_eq!(
        pos(format!("callback {}", corr[1])) + 1,
        pos(format!("done {}", corr[1]))
    );
    assert_eq!(log.len(), 5, "{log:?}");
    // No request is left over, and the answer to the no-response request was dropped.
    assert_eq!(c.in_flight_count(node), 0);
    let m = c.node_metrics(node).unwrap();
    assert_eq!(m.unknown_correlation_ids, 0);
}

#[test]
fn least_loaded_prefers_ready_then_connecting_then_oldest_attempt() {
    let mut net = SimNetwork::new().with_latency(ms(10));
    for p in 9100..9104 {
        net.set_behaviour(addr(p), Behaviour::Silent);
    }
    let mut c = NetworkClient::with_transport(
        net,
        ClientConfig::default().pipeline_unsent(true),
        NoHandshake,
    )
    .with_rng(SplitMix64::new(3));
    let (a, b) = (NodeId(1), NodeId(2));
    c.add_node(a, "127.0.0.1:9100").unwrap();
    c.add_node(b, "127.0.0.1:9101").unwrap();
    connect(&mut c, a);
    connect(&mut c, b);
    let now = c.transport().now();
    for _ in 0..2 {
        let r = request(&mut c, a);
        c.send(r, now);
    }
    let r = request(&mut c, b);
    c.send(r, now);
    for _ in 0..20 {
        assert_eq!(c.least_loaded_node(now), Some(b), "fewest in flight wins");
    }
    // With no Ready node, a connecting one is preferred over connectable ones.
    let (x, y) = (NodeId(3), NodeId(4));
    c.add_node(x, "127.0.0.1:9102").unwrap();
    c.add_node(y, "127.0.0.1:9103").unwrap();
    c.disconnect(a, now);
    c.disconnect(b, now);
    c.ready(x, now);
    for _ in 0..20 {
        assert_eq!(c.least_loaded_node(now), Some(x));
    }
    // Nothing ready or connecting: the connectable node whose last attempt is oldest (never = oldest).
    c.disconnect(x, now);
    let later = now + Duration::from_secs(5);
    for _ in 0..20 {
        assert_eq!(c.least_loaded_node(later), Some(y));
    }
    // Everyone in backoff: none. (a, b, x were disconnected at `now`; y is refused.)
    c.transport_mut()
        .set_behaviour(addr(9103), Behaviour::Refuse);
    c.ready(y, now);
    assert_eq!(
        c.least_loaded_node(now),
        Some(y),
        "connecting beats backing off"
    );
    for _ in 0..100 {
        let t = c.transport().now();
        io_round(&mut c, Some(ms(1)), t);
        if c.connection_state(y) == Some(ConnectionState::Disconnected) {
            break;
        }
    }
    let t = c.transport().now();
    assert!(t - now < ms(50));
    assert_eq!(c.connection_state(y), Some(ConnectionState::Disconnected));
    assert_eq!(c.least_loaded_node(t), None);
}

#[test]
fn bootstrap_failover_moves_round_robin_and_stays_on_a_healthy_server() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9201), Behaviour::Refuse);
    net.set_behaviour(addr(9202), Behaviour::Refuse);
    net.set_behaviour(addr(9203), Behaviour::Echo);
    let mut c = client(net, ClientConfig::default());
    let list = ["127.0.0.1:9201", "127.0.0.1:9202", "127.0.0.1:9203"];
    // NoJitter picks index 1 to start (0.5 × 3).
    let mut f = BootstrapFailover::new(list, &mut NoJitter);
    assert_eq!(f.chosen(), Some("127.0.0.1:9202"));
    let mut chosen_trace = Vec::new();
    let mut ready = None;
    for _ in 0..1000 {
        let now = c.transport().now();
        let cur = f.chosen().unwrap().to_string();
        if chosen_trace.last() != Some(&cur) {
            chosen_trace.push(cur);
        }
        if let Some(n) = f.poll(&mut c, now).unwrap() {
            ready = Some(n);
            break;
        }
        io_round(&mut c, Some(ms(1)), now);
    }
    // 9202 fails, 9203 (next round robin) is healthy.
    assert_eq!(chosen_trace, vec!["127.0.0.1:9202", "127.0.0.1:9203"]);
    let node = ready.expect("a bootstrap server became ready");
    // Stays on it while healthy.
    for _ in 0..50 {
        let now = c.transport().now();
        assert_eq!(f.poll(&mut c, now).unwrap(), Some(node));
        io_round(&mut c, Some(ms(10)), now);
    }
    // It leaves the list: reselect among the new list.
    f.update(["127.0.0.1:9201"]);
    assert_eq!(f.chosen(), Some("127.0.0.1:9201"));
}

// ----- property: exactly one completion, and the right one -------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Ready(usize),
    /// Node, expects a response, per-request timeout (ms) instead of the default.
    Send(usize, bool, Option<u64>),
    ClosePeer(usize),
    ResetPeer(usize),
    Stall(usize),
    Heal(usize),
    Down(usize),
    WrongCorrelation(usize),
    /// The peer never accepts (connects hang until the setup timeout).
    Blackhole(usize),
    /// The handshake hook rejects new connections to the node.
    FailHandshake(usize),
    /// Sends to the node are refused with `QueueFull` (back-pressure).
    QueueFull(usize),
    /// Sends to the node take this long (ms) to leave: partial writes completed later.
    SlowSend(usize, u64),
    Disconnect(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0usize..3;
    prop_oneof![
        4 => node.clone().prop_map(Op::Ready),
        8 => (
            node.clone(),
            proptest::bool::weighted(0.9),
            proptest::option::weighted(0.2, 100u64..8_000)
        )
            .prop_map(|(n, r, t)| Op::Send(n, r, t)),
        1 => node.clone().prop_map(Op::ClosePeer),
        1 => node.clone().prop_map(Op::ResetPeer),
        1 => node.clone().prop_map(Op::Stall),
        3 => node.clone().prop_map(Op::Heal),
        1 => node.clone().prop_map(Op::Down),
        1 => node.clone().prop_map(Op::WrongCorrelation),
        1 => node.clone().prop_map(Op::Blackhole),
        1 => node.clone().prop_map(Op::FailHandshake),
        1 => node.clone().prop_map(Op::QueueFull),
        1 => (node.clone(), 1u64..2_000).prop_map(|(n, d)| Op::SlowSend(n, d)),
        1 => node.prop_map(Op::Disconnect),
        4 => (0u64..3_000).prop_map(Op::Advance),
    ]
}

/// A handshake hook driven by the fault script: per node, reject new connections, or exchange one
/// request (echoed by the peer) before Ready.
#[derive(Debug, Default)]
struct ScriptedHandshake {
    fail: [bool; 3],
    exchange: bool,
}

impl Handshake for ScriptedHandshake {
    fn start(&mut self, node: NodeId, corr: i32) -> HandshakeStep {
        if self.fail[node.0 as usize] {
            HandshakeStep::Fail("scripted rejection".into())
        } else if self.exchange {
            HandshakeStep::Send(Bytes::copy_from_slice(&corr.to_be_bytes()))
        } else {
            HandshakeStep::Done
        }
    }

    fn on_response(&mut self, _node: NodeId, _response: Bytes, _corr: i32) -> HandshakeStep {
        HandshakeStep::Done
    }
}

/// Kinds of scripted faults, logged with their simulated time per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Closed,
    Reset,
    Down,
    Stalled,
    Healed,
    WrongCorrelation,
    Blackhole,
    HandshakeFails,
    QueueFull,
    Disconnect,
}

/// What the script did to one node, in time order, and what the client was asked.
#[derive(Debug)]
struct Sent {
    node: usize,
    /// The script step it was sent at.
    at: u64,
    /// The step of the last poll before it: faults injected since then were not yet seen by the
    /// client when it was sent, and may still hit it.
    since: u64,
    expect: bool,
    timeout: Duration,
    ready: bool,
    frame: Bytes,
}

/// The fault log: `(step, node, fault)`, in order. Steps number the script's operations and the
/// settling polls: several happen at one simulated instant, and their order is what counts.
struct Script {
    log: Vec<(u64, usize, Fault)>,
}

impl Script {
    /// Whether `fault` hit `node` within `[from, to]`.
    fn hit(&self, node: usize, from: u64, to: u64, fault: Fault) -> bool {
        self.log
            .iter()
            .any(|&(t, n, f)| n == node && f == fault && t >= from && t <= to)
    }

    /// Whether the peer of `node` answered requests at some moment of `[from, to]`: its
    /// last behaviour change at or before `from` was not a stall, a refusal or a black hole, or a heal came
    /// within the window. Every node starts healthy.
    fn echoing(&self, node: usize, from: u64, to: u64) -> bool {
        // A WrongCorrelation peer answers too: its answer to one request carries the next one's id
        // and is, on the wire, that request's answer.
        let answers = |f: Fault| !matches!(f, Fault::Stalled | Fault::Down | Fault::Blackhole);
        let behaviour = |f: Fault| {
            matches!(
                f,
                Fault::Stalled
                    | Fault::WrongCorrelation
                    | Fault::Down
                    | Fault::Blackhole
                    | Fault::Healed
            )
        };
        let before = self
            .log
            .iter()
            .rev()
            .find(|&&(t, n, f)| n == node && t <= from && behaviour(f))
            .is_none_or(|&(_, _, f)| answers(f));
        before || self.hit(node, from, to, Fault::Healed)
    }
}

/// Checks one completion against what the fault script makes correct. Returns why it is wrong.
fn judge(
    r: &ClientResponse,
    req: &Sent,
    at: u64,
    script: &Script,
    timed_out_at: &[(usize, u64)],
    idle: Option<Duration>,
) -> Result<(), String> {
    let n = req.node;
    let (from, to) = (req.since, at);
    if !req.ready {
        return match &r.outcome {
            Outcome::LocalError(LocalError::NotReady(_)) if r.latency.is_zero() => Ok(()),
            o => Err(format!("sent while not Ready, completed {o:?}")),
        };
    }
    match &r.outcome {
        Outcome::Response(body) => {
            if !req.expect {
                return Err("a response to a request that expects none".into());
            }
            if body != &req.frame {
                return Err("the response is not this request's answer".into());
            }
            if r.latency > req.timeout {
                return Err(format!("answered after its timeout ({:?})", r.latency));
            }
            // A WrongCorrelation peer's answer to an earlier request carries this one's id and,
            // on the wire, is this request's answer, whatever the peer does by now.
            if !script.echoing(n, req.at, to) && !script.hit(n, 0, to, Fault::WrongCorrelation) {
                return Err("answered by a peer that was not answering".into());
            }
            Ok(())
        }
        Outcome::Sent if !req.expect => Ok(()),
        Outcome::Sent => Err("`Sent` for a request that expects a response".into()),
        Outcome::TimedOut if r.latency >= req.timeout => Ok(()),
        Outcome::TimedOut => Err(format!(
            "timed out early ({:?} < {:?})",
            r.latency, req.timeout
        )),
        Outcome::Disconnected(cause) => {
            let ok = match cause {
                DisconnectCause::Transport(DisconnectReason::PeerClosed) => {
                    script.hit(n, from, to, Fault::Closed) || script.hit(n, from, to, Fault::Down)
                }
                DisconnectCause::Transport(DisconnectReason::Io(_)) => {
                    script.hit(n, from, to, Fault::Reset)
                }
                DisconnectCause::Transport(DisconnectReason::IdleExpired) => {
                    // Idle means no IO: a request held back in the client (by `QueueFull`, or by
                    // the in-flight cap behind requests a silent peer never answers) never touched
                    // the socket, so the connection can expire less than `idle` after it was sent.
                    idle.is_some_and(|idle| {
                        r.latency >= idle
                            || [
                                Fault::QueueFull,
                                Fault::Stalled,
                                Fault::Blackhole,
                                Fault::Down,
                            ]
                            .into_iter()
                            .any(|f| script.hit(n, 0, to, f))
                    })
                }
                DisconnectCause::CorrelationMismatch { .. } => {
                    // A wrong answer, or an answer skipped by a peer that stalled (or went down,
                    // or black-holed) and then healed,
                    // to this or an earlier request on the connection fails it.
                    [
                        Fault::WrongCorrelation,
                        Fault::Stalled,
                        Fault::Blackhole,
                        Fault::Down,
                    ]
                    .into_iter()
                    .any(|f| script.hit(n, 0, to, f))
                }
                DisconnectCause::RequestTimeout => timed_out_at.contains(&(n, at)),
                DisconnectCause::Local => script.hit(n, from, to, Fault::Disconnect),
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "disconnected ({cause:?}) with no fault to cause it"
                ))
            }
        }
        o @ Outcome::LocalError(_) => Err(format!("unexpected local error {o:?}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_request_completes_exactly_once_with_the_right_outcome(
        ops in proptest::collection::vec(op(), 1..200),
        pipeline in any::<bool>(),
        unordered in any::<bool>(),
        exchange in any::<bool>(),
        idle in proptest::option::of(1_000u64..6_000),
        seed in any::<u64>(),
        borrowed in any::<bool>(),
    ) {
        let idle = idle.map(ms);
        let mut net = SimNetwork::new().with_idle_timeout(idle);
        for p in 0..3 {
            net.set_behaviour(addr(9300 + p), Behaviour::Echo);
        }
        let default_timeout = Duration::from_secs(5);
        let cfg = ClientConfig::default()
            .pipeline_unsent(pipeline)
            .response_order(if unordered { ResponseOrder::Unordered } else { ResponseOrder::Ordered })
            .request_timeout(default_timeout)
            .connection_setup_timeout(Duration::from_secs(2))
            .connection_setup_timeout_max(Duration::from_secs(4));
        let handshake = ScriptedHandshake { fail: [false; 3], exchange };
        let mut c = NetworkClient::with_transport(net, cfg, handshake).with_rng(SplitMix64::new(seed));
        prop_assert!(c.set_borrowed_responses(borrowed));
        // Borrowed: completions as `handle_with` hands them out (responses read where the
        // transport received them), copied to be judged after the run.
        let io_round = |c: &mut NetworkClient<SimNetwork, ScriptedHandshake>, timeout, now| {
            if !borrowed {
                return io_round(c, timeout, now);
            }
            c.poll_io(timeout, now).expect("poll");
            let after = c.transport().now();
            let mut done = Vec::new();
            c.handle_with(after, |r| done.push(r.to_owned()));
            done
        };
        let nodes: Vec<NodeId> = (0..3).map(NodeId).collect();
        for (k, n) in nodes.iter().enumerate() {
            c.add_node(*n, &format!("127.0.0.1:{}", 9300 + k)).unwrap();
        }
        let mut script = Script { log: Vec::new() };
        let mut sent: HashMap<i32, Sent> = HashMap::new();
        let mut reused = Vec::new();
        let mut completions: Vec<(ClientResponse, u64)> = Vec::new();
        let a = |n: usize| addr(9300 + n as u16);
        let mut step = 0u64;
        let mut last_poll = 0u64;
        for op in ops {
            step += 1;
            let now = c.transport().now();
            match op {
                Op::Ready(n) => { c.ready(nodes[n], now); }
                Op::Send(n, expect, timeout) => {
                    let ready = c.connection_state(nodes[n]) == Some(ConnectionState::Ready);
                    let mut r = request(&mut c, nodes[n]).expect_response(expect);
                    if let Some(t) = timeout {
                        r = r.timeout(ms(t));
                    }
                    let frame = r.frame.clone();
                    let corr = c.send(r, now);
                    let entry = Sent {
                        node: n,
                        at: step,
                        since: last_poll,
                        expect,
                        timeout: timeout.map_or(default_timeout, ms),
                        ready,
                        frame,
                    };
                    if sent.insert(corr, entry).is_some() {
                        reused.push(corr);
                    }
                }
                Op::ClosePeer(n) => {
                    c.transport_mut().close_peer(a(n));
                    script.log.push((step, n, Fault::Closed));
                }
                Op::ResetPeer(n) => {
                    c.transport_mut().reset_peer(a(n));
                    script.log.push((step, n, Fault::Reset));
                }
                Op::Stall(n) => {
                    c.transport_mut().set_behaviour(a(n), Behaviour::Silent);
                    script.log.push((step, n, Fault::Stalled));
                }
                Op::Heal(n) => {
                    c.transport_mut().set_behaviour(a(n), Behaviour::Echo);
                    c.transport_mut().set_queue_full(a(n), false);
                    c.transport_mut().set_send_delay(a(n), Duration::ZERO);
                    c.handshake_mut().fail[n] = false;
                    script.log.push((step, n, Fault::Healed));
                }
                Op::Down(n) => {
                    c.transport_mut().set_behaviour(a(n), Behaviour::Refuse);
                    c.transport_mut().close_peer(a(n));
                    script.log.push((step, n, Fault::Down));
                }
                Op::WrongCorrelation(n) => {
                    c.transport_mut().set_behaviour(a(n), Behaviour::WrongCorrelation);
                    script.log.push((step, n, Fault::WrongCorrelation));
                }
                Op::Blackhole(n) => {
                    c.transport_mut().set_behaviour(a(n), Behaviour::Blackhole);
                    script.log.push((step, n, Fault::Blackhole));
                }
                Op::FailHandshake(n) => {
                    c.handshake_mut().fail[n] = true;
                    script.log.push((step, n, Fault::HandshakeFails));
                }
                Op::QueueFull(n) => {
                    c.transport_mut().set_queue_full(a(n), true);
                    script.log.push((step, n, Fault::QueueFull));
                }
                Op::SlowSend(n, d) => c.transport_mut().set_send_delay(a(n), ms(d)),
                Op::Disconnect(n) => {
                    c.disconnect(nodes[n], now);
                    script.log.push((step, n, Fault::Disconnect));
                }
                Op::Advance(d) => {
                    let done = io_round(&mut c, Some(ms(d)), now);
                    last_poll = step;
                    completions.extend(done.into_iter().map(|r| (r, step)));
                }
            }
        }
        // Settle: no new requests; every deadline passes within a bounded number of polls.
        for _ in 0..1_000 {
            let now = c.transport().now();
            let done = io_round(&mut c, Some(Duration::from_secs(1)), now);
            step += 1;
            completions.extend(done.into_iter().map(|r| (r, step)));
            if completions.len() >= sent.len() && nodes.iter().all(|n| c.in_flight_count(*n) + c.waiting_count(*n) == 0) {
                break;
            }
        }
        prop_assert!(reused.is_empty(), "correlation ids reused: {:?}", reused);
        // Exactly once.
        let mut count: HashMap<i32, usize> = HashMap::new();
        for (r, _) in &completions {
            *count.entry(r.correlation_id).or_default() += 1;
        }
        for corr in sent.keys() {
            prop_assert_eq!(count.get(corr).copied(), Some(1), "request {} completions", corr);
        }
        for corr in count.keys() {
            prop_assert!(sent.contains_key(corr), "completion for unknown request {}", corr);
        }
        // The right outcome.
        let timed_out_at: Vec<(usize, u64)> = completions
            .iter()
            .filter(|(r, _)| r.outcome == Outcome::TimedOut)
            .map(|(r, at)| (r.node.0 as usize, *at))
            .collect();
        for (r, at) in &completions {
            let req = &sent[&r.correlation_id];
            prop_assert_eq!(r.node.0 as usize, req.node);
            if let Err(why) = judge(r, req, *at, &script, &timed_out_at, idle) {
                prop_assert!(false, "request {} to node {} ({:?}, sent at step {}, done at step {} after {:?}): {}",
                    r.correlation_id, req.node, r.outcome, req.at, at, r.latency, why);
            }
        }
    }
}

#[test]
fn simulated_time_starts_from_a_real_instant() {
    // Guard for the helpers above: simulated time is monotonic and moves only in poll.
    let mut net = SimNetwork::new();
    let t = net.now();
    assert!(t <= Instant::now());
    net.poll(Some(ms(250))).unwrap();
    assert_eq!(net.now() - t, ms(250));
}

/// A resolver with a fixed answer that counts its calls.
struct CountingResolver {
    answer: Vec<SocketAddr>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl mqnet::client::Resolver for CountingResolver {
    fn resolve(&mut self, _host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.answer.clone())
    }
}

#[test]
fn all_addresses_are_tried_round_robin_and_re_resolved_on_wrap_and_after_a_drop() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let ips: Vec<SocketAddr> = (1..=3)
        .map(|k| SocketAddr::from(([127, 0, 0, k], 9400)))
        .collect();
    let mut net = SimNetwork::new();
    for ip in &ips {
        net.set_behaviour(*ip, Behaviour::Refuse);
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let resolver = CountingResolver {
        answer: ips.clone(),
        calls: calls.clone(),
    };
    let mut c = client(net, ClientConfig::default()).with_resolver(resolver);
    let node = NodeId(1);
    c.add_node(node, "broker.example:9400").unwrap();
    let mut tried = Vec::new();
    for _ in 0..10_000 {
        let now = c.transport().now();
        c.ready(node, now);
        if c.connection_state(node) == Some(ConnectionState::Connecting) && tried.len() < 7 {
            let st = c.transport().open_channels();
            assert_eq!(st, 1);
        }
        let before = c.node_metrics(node).unwrap().connect_attempts as usize;
        if before > tried.len() {
            // Which address did the attempt use? The one the sim has a channel open to.
            let ip = ips
                .iter()
                .find(|ip| c.transport().open_channels_to(**ip) == 1)
                .copied();
            tried.push(ip.expect("an attempt has an open channel"));
        }
        if tried.len() == 7 {
            break;
        }
        io_round(&mut c, Some(ms(1)), now);
    }
    // One address per attempt, round robin; resolved once per pass over the list.
    assert_eq!(
        tried,
        vec![ips[0], ips[1], ips[2], ips[0], ips[1], ips[2], ips[0]]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // An established connection that drops clears the list: the next attempt resolves again and
    // starts from the first address.
    c.transport_mut().set_behaviour(ips[0], Behaviour::Echo);
    c.transport_mut().set_behaviour(ips[1], Behaviour::Echo);
    connect(&mut c, node);
    let resolved = calls.load(Ordering::SeqCst);
    c.transport_mut().close_peer(ips[1]);
    c.transport_mut().close_peer(ips[0]);
    let now = c.transport().now();
    io_round(&mut c, Some(ms(1)), now);
    assert_eq!(
        c.connection_state(node),
        Some(ConnectionState::Disconnected)
    );
    connect(&mut c, node);
    assert_eq!(calls.load(Ordering::SeqCst), resolved + 1);
    assert_eq!(c.transport().open_channels_to(ips[0]), 1);
}

#[test]
fn node_metrics_count_requests_latency_and_connections() {
    let net = SimNetwork::new().with_latency(ms(5));
    let mut c = client(net, ClientConfig::default());
    c.transport_mut().set_behaviour(addr(9500), Behaviour::Echo);
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9500").unwrap();
    let t0 = c.transport().now();
    connect(&mut c, node);
    for _ in 0..10 {
        let now = c.transport().now();
        let r = request(&mut c, node);
        c.send(r, now);
        assert_eq!(c.in_flight_count(node), 1);
        let mut done = Vec::new();
        for _ in 0..100 {
            let now = c.transport().now();
            done.extend(io_round(&mut c, Some(ms(1)), now));
            if !done.is_empty() {
                break;
            }
        }
        assert_eq!(done.len(), 1);
    }
    c.transport_mut().close_peer(addr(9500));
    let now = c.transport().now();
    io_round(&mut c, Some(ms(1)), now);
    let m = c.node_metrics(node).unwrap();
    assert_eq!(m.requests_sent, 10);
    assert_eq!(m.responses, 10);
    assert_eq!(m.connect_attempts, 1);
    assert_eq!(m.connections_created, 1);
    assert_eq!(m.connections_closed, 1);
    // Each round trip is exactly 10 ms of simulated time.
    assert_eq!(m.latency_avg(), ms(10));
    assert_eq!(m.latency_max, ms(10));
    assert_eq!(m.latency_us.len(), 10);
    let p50 = m.latency_us.value_at_quantile(0.5);
    assert!((9_900..=10_100).contains(&p50), "p50 {p50} us");
    let elapsed = (c.transport().now() - t0).as_secs_f64();
    assert!((m.request_rate(c.transport().now()) - 10.0 / elapsed).abs() < 1e-6);
    assert_eq!(c.in_flight_count(node), 0);
}

#[test]
fn answers_to_no_response_requests_are_dropped_not_taken_for_desync() {
    // The Echo peer answers every frame, as librdkafka's mock answers acks=0 produce requests.
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9600), Behaviour::Echo);
    let mut c = client(net, ClientConfig::default().pipeline_unsent(true));
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9600").unwrap();
    connect(&mut c, node);
    let now = c.transport().now();
    let quiet = request(&mut c, node).expect_response(false);
    let q = c.send(quiet, now);
    let normal = request(&mut c, node);
    let n = c.send(normal, now);
    let mut done = Vec::new();
    for _ in 0..50 {
        let now = c.transport().now();
        done.extend(io_round(&mut c, Some(ms(1)), now));
        if done.len() == 2 {
            break;
        }
    }
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(
        (done[0].correlation_id, &done[0].outcome),
        (q, &Outcome::Sent)
    );
    assert_eq!(done[1].correlation_id, n);
    assert!(matches!(done[1].outcome, Outcome::Response(_)));
    assert_eq!(c.connection_state(node), Some(ConnectionState::Ready));
    // A response to an id that was never sent still closes the connection.
    c.transport_mut()
        .set_behaviour(addr(9600), Behaviour::WrongCorrelation);
    let now = c.transport().now();
    let r = request(&mut c, node);
    c.send(r, now);
    for _ in 0..50 {
        let now = c.transport().now();
        io_round(&mut c, Some(ms(1)), now);
    }
    assert_eq!(
        c.connection_state(node),
        Some(ConnectionState::Disconnected)
    );
}

#[test]
fn a_pipelined_run_mixing_no_response_requests_completes_each_once_in_order() {
    // One batch staged at once, so its sends complete as one run on the channel: the no-response
    // requests complete `Sent` and leave, the others are answered in order; a second batch of
    // response-only requests takes the run path that only moves the sent boundary.
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9610), Behaviour::Echo);
    let mut c = client(net, ClientConfig::default().pipeline_unsent(true));
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9610").unwrap();
    connect(&mut c, node);
    for expects in [
        &[true, false, true, false, false][..],
        &[true, true, true, true, true][..],
    ] {
        let now = c.transport().now();
        let mut want = Vec::new();
        for &expect in expects {
            let r = request(&mut c, node).expect_response(expect);
            want.push((c.send(r, now), expect));
        }
        let mut done = Vec::new();
        for _ in 0..50 {
            let now = c.transport().now();
            done.extend(io_round(&mut c, Some(ms(1)), now));
            if done.len() >= want.len() && c.in_flight_count(node) == 0 {
                break;
            }
        }
        assert_eq!(done.len(), want.len(), "{done:?}");
        let sent: Vec<i32> = want.iter().filter(|w| !w.1).map(|w| w.0).collect();
        let answered: Vec<i32> = want.iter().filter(|w| w.1).map(|w| w.0).collect();
        let got_sent: Vec<i32> = done
            .iter()
            .filter(|d| d.outcome == Outcome::Sent)
            .map(|d| d.correlation_id)
            .collect();
        let got_answered: Vec<i32> = done
            .iter()
            .filter(|d| matches!(d.outcome, Outcome::Response(_)))
            .map(|d| d.correlation_id)
            .collect();
        assert_eq!(got_sent, sent);
        assert_eq!(got_answered, answered);
        assert_eq!(c.in_flight_count(node), 0);
        assert_eq!(c.connection_state(node), Some(ConnectionState::Ready));
    }
}

#[test]
fn a_custom_correlation_reader_is_the_one_responses_are_matched_with() {
    // A reader that shifts every id: the Echo peer's (correct) answers now mismatch, which
    // closes the connection and names the id the custom reader read.
    fn shifted(frame: &[u8]) -> Option<i32> {
        mqnet::client::kafka_correlation_id(frame).map(|c| c.wrapping_add(1000))
    }
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9620), Behaviour::Echo);
    let mut c = client(net, ClientConfig::default()).with_correlation_reader(shifted);
    let node = NodeId(1);
    c.add_node(node, "127.0.0.1:9620").unwrap();
    connect(&mut c, node);
    let now = c.transport().now();
    let r = request(&mut c, node);
    let corr = c.send(r, now);
    let mut done = Vec::new();
    for _ in 0..50 {
        let now = c.transport().now();
        done.extend(io_round(&mut c, Some(ms(1)), now));
        if !done.is_empty() {
            break;
        }
    }
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(
        done[0].outcome,
        Outcome::Disconnected(DisconnectCause::CorrelationMismatch {
            expected: corr,
            actual: Some(corr + 1000),
        })
    );
}
