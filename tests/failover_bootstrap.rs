//! Bootstrap failover on simulated time: a failure is noticed at any poll rate, a list change picks
//! at random, removed addresses leave the client; and `NetworkClient::remove_node` completes the
//! node's requests exactly once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{
    ClientConfig, ClientRequest, ClientResponse, ConnectionState, DisconnectCause, LocalError,
    NetworkClient, NoHandshake, NodeId, Outcome, SplitMix64,
};
use mqnet::failover::BootstrapFailover;
use mqnet::net::Transport;
use mqnet::sim::{Behaviour, SimNetwork};
use mqnet_test_support::jitter::FixedJitter as Fixed;

type Client = NetworkClient<SimNetwork, NoHandshake>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn client(net: SimNetwork) -> Client {
    NetworkClient::with_transport(net, ClientConfig::default(), NoHandshake).with_rng(Fixed(0.5))
}

/// One round of a caller that polls every `gap`: the failover step, a client poll, then the
/// caller is busy for `gap` (simulated) before it looks again.
fn round(f: &mut BootstrapFailover, c: &mut Client, gap: Duration) -> Option<NodeId> {
    let now = c.transport().now();
    let ready = f.poll(c, now).unwrap();
    io_round(c, Some(ms(1)), now);
    c.transport_mut().advance(gap);
    ready
}

/// One client round on simulated time: the I/O (waiting at most `timeout` from `now`), then the
/// completions settled at the transport's time after it (the caller's clock, read after the I/O).
fn io_round(c: &mut Client, timeout: Option<Duration>, now: Instant) -> Vec<ClientResponse> {
    c.poll_io(timeout, now).expect("poll");
    let after = c.transport().now();
    c.handle(after)
}

#[test]
fn a_failure_is_noticed_at_every_poll_rate() {
    // 9301 refuses, 9302 is healthy; the caller polls every 0, 1, 10, 49, 50, 100, 500 and 5000 ms
    // (reconnect.backoff.ms is 50 ms: at or above it the backoff has always elapsed by the next
    // look, which hid the failure).
    for gap in [0u64, 1, 10, 49, 50, 100, 500, 5000] {
        let mut net = SimNetwork::new();
        net.set_behaviour(addr(9301), Behaviour::Refuse);
        net.set_behaviour(addr(9302), Behaviour::Echo);
        let mut c = client(net);
        let mut f = BootstrapFailover::new(["127.0.0.1:9301", "127.0.0.1:9302"], &mut Fixed(0.0));
        assert_eq!(f.chosen(), Some("127.0.0.1:9301"));
        let mut ready = None;
        let mut rounds = 0;
        for _ in 0..50 {
            rounds += 1;
            if let Some(n) = round(&mut f, &mut c, ms(gap)) {
                ready = Some(n);
                break;
            }
        }
        let node = ready.unwrap_or_else(|| panic!("gap {gap} ms: never failed over"));
        assert_eq!(f.chosen(), Some("127.0.0.1:9302"), "gap {gap} ms");
        // 9301 was tried exactly once before moving on.
        let history = c.transport().connect_history();
        let to_first = history.iter().filter(|(_, a)| *a == addr(9301)).count();
        assert_eq!(to_first, 1, "gap {gap} ms: retried the failed address");
        assert!(rounds <= 6, "gap {gap} ms: {rounds} rounds");
        assert_eq!(c.connection_state(node), Some(ConnectionState::Ready));
    }
}

#[test]
fn an_established_connection_that_drops_fails_over_at_every_poll_rate() {
    for gap in [0u64, 10, 100, 2000] {
        let mut net = SimNetwork::new();
        net.set_behaviour(addr(9311), Behaviour::Echo);
        net.set_behaviour(addr(9312), Behaviour::Echo);
        let mut c = client(net);
        let mut f = BootstrapFailover::new(["127.0.0.1:9311", "127.0.0.1:9312"], &mut Fixed(0.0));
        let mut up = None;
        for _ in 0..20 {
            up = round(&mut f, &mut c, ms(gap)).or(up);
            if up.is_some() {
                break;
            }
        }
        assert_eq!(f.chosen(), Some("127.0.0.1:9311"));
        assert!(up.is_some());
        c.transport_mut().close_peer(addr(9311));
        let mut moved = None;
        for _ in 0..20 {
            if let Some(n) = round(&mut f, &mut c, ms(gap)) {
                if f.chosen() == Some("127.0.0.1:9312") {
                    moved = Some(n);
                    break;
                }
            }
        }
        assert!(
            moved.is_some(),
            "gap {gap} ms: stayed on the dropped address"
        );
    }
}

#[test]
fn a_list_change_chooses_at_random() {
    // Start at index 2 of the old list each time; after the change the choice must spread over
    // the whole new list (round robin from the old position would always give the same index).
    let mut picks = HashSet::new();
    for seed in 0..40u64 {
        let mut rng = SplitMix64::new(seed);
        let mut f = BootstrapFailover::new(["a:1", "b:1", "c:1"], &mut rng);
        while f.chosen() != Some("c:1") {
            f.failed();
        }
        f.update(["x:1", "y:1", "z:1", "w:1"]);
        picks.insert(f.chosen().unwrap().to_string());
    }
    assert_eq!(picks.len(), 4, "{picks:?}");
}

#[test]
fn removed_addresses_leave_the_client() {
    let mut net = SimNetwork::new();
    for p in [9321, 9322, 9323] {
        net.set_behaviour(addr(p), Behaviour::Silent);
    }
    let mut c = client(net);
    let mut f = BootstrapFailover::new(["127.0.0.1:9321", "127.0.0.1:9322"], &mut Fixed(0.0));
    let mut node = None;
    for _ in 0..20 {
        node = round(&mut f, &mut c, ms(1)).or(node);
        if node.is_some() {
            break;
        }
    }
    let node = node.unwrap();
    // Requests in flight on it (the peer never answers).
    let mut sent = Vec::new();
    for _ in 0..3 {
        let corr = c.next_correlation_id();
        let frame = Bytes::from(corr.to_be_bytes().to_vec());
        c.send(ClientRequest::new(node, corr, frame), c.transport().now());
        sent.push(corr);
    }
    let now = c.transport().now();
    io_round(&mut c, Some(ms(1)), now);
    assert_eq!(c.in_flight_count(node) + c.waiting_count(node), 3);
    f.update(["127.0.0.1:9323"]);
    let now = c.transport().now();
    f.poll(&mut c, now).unwrap();
    assert_eq!(c.connection_state(node), None, "removed from the client");
    assert_eq!(
        c.transport().open_channels_to(addr(9321)),
        0,
        "its channel closed"
    );
    let out = io_round(&mut c, Some(ms(1)), now);
    let got: Vec<i32> = out.iter().map(|r| r.correlation_id).collect();
    assert_eq!(got, sent, "each completed once, in order");
    assert!(out
        .iter()
        .all(|r| r.outcome == Outcome::Disconnected(DisconnectCause::NodeRemoved)));
    // Nothing more later, and new requests to it fail locally.
    let corr = c.next_correlation_id();
    c.send(
        ClientRequest::new(node, corr, Bytes::from_static(b"xxxx")),
        now,
    );
    let out = io_round(&mut c, Some(ms(10)), now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Outcome::LocalError(LocalError::UnknownNode));
    assert_eq!(c.nodes().len(), 1);
    assert_eq!(f.chosen(), Some("127.0.0.1:9323"));
}

#[test]
fn remove_node_keeps_the_other_nodes_working() {
    let mut net = SimNetwork::new();
    for p in 9331..=9334 {
        net.set_behaviour(addr(p), Behaviour::Echo);
    }
    let mut c = client(net);
    for (k, p) in (9331..=9334).enumerate() {
        c.add_node(NodeId(k as i32), &format!("127.0.0.1:{p}"))
            .unwrap();
    }
    for _ in 0..20 {
        let now = c.transport().now();
        let all = (0..4).all(|k| c.ready(NodeId(k), now));
        if all {
            break;
        }
        io_round(&mut c, Some(ms(1)), now);
    }
    let now = c.transport().now();
    assert!(c.remove_node(NodeId(1), now));
    assert!(!c.remove_node(NodeId(1), now));
    io_round(&mut c, Some(ms(1)), now);
    // The others (indices after the removed one included) still answer, by their own ids.
    for k in [0, 2, 3] {
        let corr = c.next_correlation_id();
        let frame = Bytes::from(corr.to_be_bytes().to_vec());
        let now = c.transport().now();
        c.send(ClientRequest::new(NodeId(k), corr, frame), now);
        let mut answered = false;
        for _ in 0..10 {
            let now = c.transport().now();
            for r in io_round(&mut c, Some(ms(5)), now) {
                assert_eq!(r.node, NodeId(k));
                assert!(matches!(r.outcome, Outcome::Response(_)));
                answered = true;
            }
            if answered {
                break;
            }
        }
        assert!(answered, "node {k}");
    }
    // Re-adding the id starts afresh.
    c.add_node(NodeId(1), "127.0.0.1:9332").unwrap();
    assert_eq!(
        c.connection_state(NodeId(1)),
        Some(ConnectionState::Disconnected)
    );
}
