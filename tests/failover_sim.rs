//! The failover transport on simulated time (mqnet::sim): exact reconnect times with an injected
//! jitter source, start-up vs established limits, event order, per-request timeouts, replay,
//! standby promotion, priority switch-back, list updates, and a property test of exactly-once
//! completion under random kills.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{ClientConfig, ConnectionState, DisconnectCause, NoHandshake, NodeId};
use mqnet::failover::{
    FailoverEvent, FailoverOutcome, FailoverRequest, FailoverResponse, FailoverTransport,
    FailoverUri, ServerUri,
};
use mqnet::net::Transport;
use mqnet::sim::{Behaviour, SimNetwork};
use mqnet_test_support::jitter::FixedJitter as Fixed;
use proptest::prelude::*;

type Ft = FailoverTransport<SimNetwork, NoHandshake>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn uri_of(port: u16) -> ServerUri {
    ServerUri::parse(&format!("tcp://127.0.0.1:{port}")).unwrap()
}

fn transport(uri: &str, net: SimNetwork, jitter: f64) -> Ft {
    transport_cfg(uri, net, jitter, ClientConfig::default())
}

fn transport_cfg(uri: &str, net: SimNetwork, jitter: f64, cfg: ClientConfig) -> Ft {
    let uri: FailoverUri = uri.parse().unwrap();
    FailoverTransport::with_transport(net, cfg, NoHandshake, &uri)
        .unwrap()
        .with_rng(Fixed(jitter))
}

fn now(t: &Ft) -> Instant {
    t.client().transport().now()
}

/// One poll that sleeps (simulated) until the next event or deadline, at most `max`.
fn step(t: &mut Ft, max: Duration) -> Vec<FailoverResponse> {
    let n = now(t);
    t.poll_io(Some(max), n)
        .map(|()| {
            let now = t.client().transport().now();
            t.handle(now)
        })
        .unwrap()
}

/// Polls until `cond` holds (bounded), collecting completions.
fn until(
    t: &mut Ft,
    out: &mut Vec<FailoverResponse>,
    mut cond: impl FnMut(&Ft, &[FailoverResponse]) -> bool,
) {
    for _ in 0..20_000 {
        if cond(t, out) {
            return;
        }
        out.extend(step(t, ms(1000)));
    }
    panic!("condition never held; transport {t:?}");
}

/// A request whose frame starts with its correlation id (the Echo peer answers it correctly).
fn request(t: &mut Ft, len: usize) -> FailoverRequest {
    let corr = t.next_correlation_id();
    let mut v = corr.to_be_bytes().to_vec();
    v.resize(len.max(4), 0xab);
    FailoverRequest::new(corr, Bytes::from(v))
}

fn send(t: &mut Ft, len: usize) -> i32 {
    let r = request(t, len);
    let corr = r.correlation_id;
    let n = now(t);
    t.send(r, n);
    corr
}

fn node(t: &Ft, port: u16) -> NodeId {
    t.node_of(&uri_of(port)).unwrap()
}

/// Steps until the transport is exhausted (bounded); returns the connect attempts made meanwhile
/// (µs from the start, and the port), the events and the completions.
fn attempt_times(
    t: &mut Ft,
) -> (
    Vec<u64>,
    Vec<u16>,
    Vec<FailoverEvent>,
    Vec<FailoverResponse>,
) {
    let t0 = now(t);
    let base = t.client().transport().connect_history().len();
    let mut events = Vec::new();
    let mut out = Vec::new();
    for _ in 0..10_000 {
        if t.is_exhausted() {
            break;
        }
        out.extend(step(t, ms(1000)));
        events.extend(t.drain_events());
    }
    out.extend(step(t, ms(1)));
    let h = &t.client().transport().connect_history()[base..];
    let times = h
        .iter()
        .map(|(at, _)| (*at - t0).as_micros() as u64)
        .collect();
    let ports = h.iter().map(|(_, a)| a.port()).collect();
    (times, ports, events, out)
}

fn ms_list(v: &[u64]) -> Vec<u64> {
    v.iter().map(|m| m * 1000).collect()
}

#[test]
fn startup_passes_have_the_exact_delay_sequence_and_then_exhaust() {
    // Every server refuses: each attempt takes one simulated RTT (2 ms). No wait before the first
    // pass; after n failed passes the wait is 10 ms × 2^(n−1), capped at 100 ms.
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002)?randomize=false&\
         initialReconnectDelay=10&maxReconnectDelay=100&startupMaxReconnectAttempts=6",
        SimNetwork::new(),
        0.5,
    );
    let waiting = send(&mut t, 8);
    let (times, ports, events, out) = attempt_times(&mut t);
    assert_eq!(
        times,
        ms_list(&[0, 2, 14, 16, 38, 40, 82, 84, 166, 168, 270, 272])
    );
    // In list order; the one that failed last (7002) is moved to the end, which is where it is.
    assert_eq!(ports, [7001, 7002].repeat(6));
    assert_eq!(events, vec![FailoverEvent::Exhausted { passes: 6 }]);
    assert_eq!(t.metrics().passes, 6);
    assert_eq!(t.metrics().failed_passes, 6);
    // The waiting request completed with the reason, and a later one does at once.
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].correlation_id, waiting);
    assert_eq!(out[0].outcome, FailoverOutcome::Exhausted { passes: 6 });
    assert_eq!(out[0].latency, ms(274));
    let late = send(&mut t, 8);
    let out = step(&mut t, ms(1));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].correlation_id, late);
    assert_eq!(out[0].outcome, FailoverOutcome::Exhausted { passes: 6 });
    assert!(out[0].outcome.to_string().contains("gave up after 6"));
}

#[test]
fn startup_limit_falls_back_to_max_reconnect_attempts() {
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001)?maxReconnectAttempts=3&initialReconnectDelay=5",
        SimNetwork::new(),
        0.5,
    );
    let (times, _, events, _) = attempt_times(&mut t);
    assert_eq!(times, ms_list(&[0, 7, 19]));
    assert_eq!(events, vec![FailoverEvent::Exhausted { passes: 3 }]);
    // 0 still makes one pass (ActiveMQ counts the failure after the pass).
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001)?startupMaxReconnectAttempts=0",
        SimNetwork::new(),
        0.5,
    );
    let (times, _, events, _) = attempt_times(&mut t);
    assert_eq!(times, ms_list(&[0]));
    assert_eq!(events, vec![FailoverEvent::Exhausted { passes: 1 }]);
}

#[test]
fn jitter_scales_each_wait_and_never_exceeds_the_cap() {
    let uri = "failover:(tcp://127.0.0.1:7001)?initialReconnectDelay=10&maxReconnectDelay=100&\
               maxReconnectAttempts=6";
    // Factor 0.8 (sample 0): waits 8, 16, 32, 64, then 128 capped at 100.
    let mut t = transport(uri, SimNetwork::new(), 0.0);
    let (times, ..) = attempt_times(&mut t);
    assert_eq!(times, ms_list(&[0, 10, 28, 62, 128, 230]));
    // Factor just under 1.2: 12, 24, 48, 96 (each a hair under), then capped at exactly 100.
    let mut t = transport(uri, SimNetwork::new(), 0.999_999);
    let (times, ..) = attempt_times(&mut t);
    let waits: Vec<u64> = times.windows(2).map(|w| w[1] - w[0] - 2000).collect();
    for (w, base) in waits.iter().zip([10_000u64, 20_000, 40_000, 80_000]) {
        let (lo, hi) = (base * 1_199 / 1_000, base * 6 / 5);
        assert!((lo..=hi).contains(w), "wait {w} µs for base {base} µs");
    }
    assert_eq!(waits[4], 100_000);
    // Without exponential backoff the wait stays at the initial delay.
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001)?initialReconnectDelay=10&useExponentialBackOff=false&\
         maxReconnectAttempts=4",
        SimNetwork::new(),
        0.5,
    );
    let (times, ..) = attempt_times(&mut t);
    assert_eq!(times, ms_list(&[0, 12, 24, 36]));
}

#[test]
fn last_failed_goes_to_the_end_and_randomize_shuffles() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7001), Behaviour::Echo);
    net.set_behaviour(addr(7002), Behaviour::Echo);
    net.set_behaviour(addr(7003), Behaviour::Echo);
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002,tcp://127.0.0.1:7003)?randomize=false",
        net,
        0.5,
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| t.is_connected());
    assert_eq!(t.current_uri(), Some(&uri_of(7001)));
    // Kill the first: the pass starts at the second (7001 moved to the end).
    t.client_mut().transport_mut().close_peer(addr(7001));
    until(&mut t, &mut out, |t, _| {
        t.metrics().resumptions == 1 && t.is_connected()
    });
    assert_eq!(t.current_uri(), Some(&uri_of(7002)));

    // With randomize, the first choice spreads over the list across seeds.
    let mut firsts = std::collections::HashSet::new();
    for k in 0..20u64 {
        let mut net = SimNetwork::new();
        for p in 7001..=7003 {
            net.set_behaviour(addr(p), Behaviour::Echo);
        }
        let uri: FailoverUri =
            "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002,tcp://127.0.0.1:7003)"
                .parse()
                .unwrap();
        let mut t =
            FailoverTransport::with_transport(net, ClientConfig::default(), NoHandshake, &uri)
                .unwrap()
                .with_rng(mqnet::client::SplitMix64::new(k));
        let mut out = Vec::new();
        until(&mut t, &mut out, |t, _| t.is_connected());
        firsts.insert(t.current_uri().unwrap().port);
    }
    assert_eq!(firsts.len(), 3, "randomize covers every server");
}

#[test]
fn established_loss_waits_the_initial_delay_and_uses_the_established_limit() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7001), Behaviour::Echo);
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002)?randomize=false&\
         initialReconnectDelay=10&startupMaxReconnectAttempts=1&maxReconnectAttempts=3",
        net,
        0.5,
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| t.is_connected());
    assert_eq!(
        t.drain_events(),
        vec![FailoverEvent::Connected { uri: uri_of(7001) }]
    );
    t.client_mut()
        .transport_mut()
        .set_behaviour(addr(7001), Behaviour::Refuse);
    t.client_mut().transport_mut().close_peer(addr(7001));
    step(&mut t, ms(1000));
    assert!(!t.is_connected());
    assert_eq!(
        t.drain_events(),
        vec![FailoverEvent::Interrupted { uri: uri_of(7001) }]
    );
    // From the loss: pass 1 after the 10 ms initial delay, 7002 first (7001 failed last); then
    // waits of 10 and 20 ms; 3 passes although the start-up limit was 1.
    let (times, ports, events, _) = attempt_times(&mut t);
    assert_eq!(times, ms_list(&[10, 12, 24, 26, 48, 50]));
    assert_eq!(ports, [7002, 7001].repeat(3));
    assert_eq!(events, vec![FailoverEvent::Exhausted { passes: 3 }]);
}

#[test]
fn events_come_once_per_transition_in_order() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7001), Behaviour::Echo);
    net.set_behaviour(addr(7002), Behaviour::Echo);
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002)?randomize=false&initialReconnectDelay=10",
        net,
        0.5,
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| t.is_connected());
    for _ in 0..3 {
        let live = t.current_uri().unwrap().port;
        t.client_mut().transport_mut().close_peer(addr(live));
        let resumed = t.metrics().resumptions;
        until(&mut t, &mut out, |t, _| t.metrics().resumptions > resumed);
    }
    let events = t.drain_events();
    assert_eq!(
        events,
        vec![
            FailoverEvent::Connected { uri: uri_of(7001) },
            FailoverEvent::Interrupted { uri: uri_of(7001) },
            FailoverEvent::Resumed { uri: uri_of(7002) },
            FailoverEvent::Interrupted { uri: uri_of(7002) },
            FailoverEvent::Resumed { uri: uri_of(7001) },
            FailoverEvent::Interrupted { uri: uri_of(7001) },
            FailoverEvent::Resumed { uri: uri_of(7002) },
        ]
    );
    let m = t.metrics();
    assert_eq!((m.connects, m.interruptions, m.resumptions), (1, 3, 3));
    // Each outage: 10 ms initial wait + one 2 ms connect.
    assert_eq!(m.time_down_us.len(), 3);
    // (The histogram keeps two significant digits.)
    for v in [m.time_down_us.min(), m.time_down_us.max()] {
        assert!(m.time_down_us.equivalent(v, 12_000), "{v} µs");
    }
}

#[test]
fn warns_every_n_failed_passes() {
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001)?warnAfterReconnectAttempts=2&maxReconnectAttempts=5&\
         initialReconnectDelay=1",
        SimNetwork::new(),
        0.5,
    );
    let _ = attempt_times(&mut t);
    assert_eq!(t.metrics().failed_passes, 5);
    assert_eq!(t.metrics().warnings, 2);
}

#[test]
fn each_waiting_request_has_its_own_deadline() {
    // Nothing is reachable. 100 requests sent 3 ms apart, timeout 500 ms: each completes TimedOut
    // exactly 500 ms after its own send (not k × timeout).
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001)?timeout=500&initialReconnectDelay=50&maxReconnectDelay=200",
        SimNetwork::new(),
        0.5,
    );
    let mut sent = HashMap::new();
    let mut out = Vec::new();
    for _ in 0..100 {
        let corr = send(&mut t, 8);
        sent.insert(corr, now(&t));
        let until_t = now(&t) + ms(3);
        while now(&t) < until_t {
            let n = now(&t);
            out.extend(
                t.poll_io(Some(until_t - n), n)
                    .map(|()| {
                        let now = t.client().transport().now();
                        t.handle(now)
                    })
                    .unwrap(),
            );
        }
    }
    until(&mut t, &mut out, |_, o| o.len() >= 100);
    assert_eq!(out.len(), 100);
    for r in &out {
        assert_eq!(r.outcome, FailoverOutcome::TimedOut);
        assert_eq!(r.latency, ms(500), "request {}", r.correlation_id);
        assert!(sent.remove(&r.correlation_id).is_some(), "completed twice");
    }
    assert!(sent.is_empty());
}

#[test]
fn in_flight_on_loss_complete_disconnected_once_by_default() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7001), Behaviour::Silent);
    net.set_behaviour(addr(7002), Behaviour::Echo);
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002)?randomize=false",
        net,
        0.5,
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| t.is_connected());
    let ids: Vec<i32> = (0..5).map(|_| send(&mut t, 16)).collect();
    out.extend(step(&mut t, ms(5)));
    t.client_mut().transport_mut().close_peer(addr(7001));
    until(&mut t, &mut out, |t, _| t.metrics().resumptions == 1);
    for _ in 0..10 {
        out.extend(step(&mut t, ms(10)));
    }
    assert_eq!(out.len(), 5);
    for (r, id) in out.iter().zip(&ids) {
        assert_eq!(r.correlation_id, *id);
        assert!(matches!(
            r.outcome,
            FailoverOutcome::Disconnected(DisconnectCause::Transport(_))
        ));
    }
}

#[test]
fn tracked_requests_are_replayed_in_order_and_complete_once() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7001), Behaviour::Silent);
    net.set_behaviour(addr(7002), Behaviour::Echo);
    let mut t = transport_cfg(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002)?randomize=false&trackMessages=true",
        net,
        0.5,
        ClientConfig::default().pipeline_unsent(true),
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| t.is_connected());
    let mut ids: Vec<i32> = (0..5).map(|_| send(&mut t, 16)).collect();
    out.extend(step(&mut t, ms(5)));
    assert_eq!(t.tracked_bytes(), 5 * 16);
    t.client_mut().transport_mut().close_peer(addr(7001));
    step(&mut t, ms(1));
    assert!(!t.is_connected());
    // Two more while down: they go after the replayed ones.
    ids.extend((0..2).map(|_| send(&mut t, 16)));
    until(&mut t, &mut out, |t, o| {
        o.len() == 7 && t.outstanding() == 0
    });
    let got: Vec<i32> = out.iter().map(|r| r.correlation_id).collect();
    assert_eq!(got, ids, "answered in the original order");
    for (k, r) in out.iter().enumerate() {
        assert!(matches!(r.outcome, FailoverOutcome::Response(_)));
        assert_eq!(r.replays, u32::from(k < 5));
    }
    assert_eq!(t.metrics().replayed, 5);
    assert_eq!(t.tracked_bytes(), 0);
}

#[test]
fn only_max_cache_size_bytes_are_tracked_the_oldest_beyond_complete_disconnected() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7001), Behaviour::Silent);
    net.set_behaviour(addr(7002), Behaviour::Echo);
    let mut t = transport_cfg(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002)?randomize=false&trackMessages=true&\
         maxCacheSize=250",
        net,
        0.5,
        ClientConfig::default().pipeline_unsent(true),
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| t.is_connected());
    let ids: Vec<i32> = (0..5).map(|_| send(&mut t, 100)).collect();
    assert_eq!(t.tracked_bytes(), 200);
    out.extend(step(&mut t, ms(5)));
    t.client_mut().transport_mut().close_peer(addr(7001));
    until(&mut t, &mut out, |t, o| {
        o.len() == 5 && t.outstanding() == 0
    });
    let mut by_id: HashMap<i32, &FailoverOutcome> = HashMap::new();
    for r in &out {
        assert!(by_id.insert(r.correlation_id, &r.outcome).is_none());
    }
    for id in &ids[..3] {
        assert!(matches!(by_id[id], FailoverOutcome::Disconnected(_)));
    }
    for id in &ids[3..] {
        assert!(matches!(by_id[id], FailoverOutcome::Response(_)));
    }
}

#[test]
fn a_standby_is_promoted_without_delay() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7001), Behaviour::Echo);
    net.set_behaviour(addr(7002), Behaviour::Echo);
    net.set_behaviour(addr(7003), Behaviour::Echo);
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002,tcp://127.0.0.1:7003)?randomize=false&\
         backup=true&backupPoolSize=1&initialReconnectDelay=1000",
        net,
        0.5,
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| {
        t.is_connected()
            && t.client().connection_state(node(t, 7002)) == Some(ConnectionState::Ready)
    });
    assert_eq!(
        t.standbys().cloned().collect::<Vec<_>>(),
        vec![uri_of(7002)]
    );
    assert_eq!(
        t.client().connection_state(node(&t, 7003)),
        Some(ConnectionState::Disconnected),
        "pool size 1"
    );
    let attempts = t.client().transport().connect_attempts();
    t.client_mut().transport_mut().close_peer(addr(7001));
    step(&mut t, ms(1000));
    let lost_at = now(&t);
    assert_eq!(t.current_uri(), Some(&uri_of(7002)));
    assert_eq!(
        t.drain_events(),
        vec![
            FailoverEvent::Connected { uri: uri_of(7001) },
            FailoverEvent::Interrupted { uri: uri_of(7001) },
            FailoverEvent::Resumed { uri: uri_of(7002) },
        ]
    );
    assert_eq!(t.metrics().promotions, 1);
    assert!(
        t.metrics().time_down_us.max() < 1000,
        "promoted in the same poll"
    );
    // The pool refills (7003 is the free server) without waiting for initialReconnectDelay.
    assert_eq!(t.client().transport().connect_attempts(), attempts + 1);
    until(&mut t, &mut out, |t, _| {
        t.client().connection_state(node(t, 7003)) == Some(ConnectionState::Ready)
    });
    assert!(now(&t) - lost_at < ms(10));
    // Requests go to the promoted link.
    let corr = send(&mut t, 8);
    until(&mut t, &mut out, |_, o| {
        o.iter().any(|r| r.correlation_id == corr)
    });
    assert!(matches!(
        out.last().unwrap().outcome,
        FailoverOutcome::Response(_)
    ));
}

#[test]
fn priority_backup_switches_back_and_old_in_flight_finish_on_the_old_link() {
    let mut net = SimNetwork::new().with_latency(ms(5));
    net.set_behaviour(addr(7001), Behaviour::Refuse);
    net.set_behaviour(addr(7002), Behaviour::Echo);
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002)?randomize=false&priorityBackup=true&\
         initialReconnectDelay=10&maxReconnectDelay=40",
        net,
        0.5,
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| t.is_connected());
    assert_eq!(t.current_uri(), Some(&uri_of(7002)));
    // The priority server keeps being tried in the background (10, 20, 40, 40 ms apart).
    for _ in 0..20 {
        out.extend(step(&mut t, ms(1000)));
    }
    assert_eq!(t.current_uri(), Some(&uri_of(7002)));
    let a = node(&t, 7001);
    let b = node(&t, 7002);
    assert!(t.client().node_metrics(a).unwrap().connect_attempts >= 4);
    // Requests in flight on 7002, then 7001 comes back.
    let old: Vec<i32> = (0..3).map(|_| send(&mut t, 8)).collect();
    t.client_mut()
        .transport_mut()
        .set_behaviour(addr(7001), Behaviour::Echo);
    until(&mut t, &mut out, |t, _| t.metrics().switches == 1);
    assert_eq!(t.current_uri(), Some(&uri_of(7001)));
    let events = t.drain_events();
    assert_eq!(
        events.last(),
        Some(&FailoverEvent::Switched {
            from: uri_of(7002),
            to: uri_of(7001)
        })
    );
    let new = send(&mut t, 8);
    until(&mut t, &mut out, |t, _| t.outstanding() == 0);
    let answered: Vec<i32> = out.iter().map(|r| r.correlation_id).collect();
    for id in old.iter().chain([&new]) {
        assert_eq!(answered.iter().filter(|c| *c == id).count(), 1);
    }
    assert!(out
        .iter()
        .all(|r| matches!(r.outcome, FailoverOutcome::Response(_))));
    assert_eq!(t.client().node_metrics(b).unwrap().responses, 3);
    assert_eq!(t.client().node_metrics(a).unwrap().responses, 1);
    // The old link closes once drained.
    assert_eq!(
        t.client().connection_state(b),
        Some(ConnectionState::Disconnected)
    );
}

#[test]
fn update_uris_keeps_a_listed_link_and_moves_off_a_removed_one() {
    let mut net = SimNetwork::new();
    for p in 7001..=7004 {
        net.set_behaviour(addr(p), Behaviour::Echo);
    }
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002)?randomize=false",
        net,
        0.5,
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| t.is_connected());
    t.drain_events();
    let a = node(&t, 7001);
    // Still listed: nothing moves.
    let n = now(&t);
    t.update_uris(&[uri_of(7003), uri_of(7001)], n).unwrap();
    for _ in 0..5 {
        out.extend(step(&mut t, ms(10)));
    }
    assert_eq!(t.current_uri(), Some(&uri_of(7001)));
    assert!(t.drain_events().is_empty());
    assert_eq!(
        t.client().connection_state(node(&t, 7003)),
        Some(ConnectionState::Disconnected)
    );
    assert_eq!(t.client().nodes().len(), 2, "7002's node was removed");
    // Removed: the transport moves to a listed server; the old node leaves the client.
    let n = now(&t);
    t.update_uris(&[uri_of(7004)], n).unwrap();
    until(&mut t, &mut out, |t, _| t.metrics().switches == 1);
    assert_eq!(t.current_uri(), Some(&uri_of(7004)));
    assert_eq!(
        t.drain_events(),
        vec![FailoverEvent::Switched {
            from: uri_of(7001),
            to: uri_of(7004)
        }]
    );
    for _ in 0..3 {
        out.extend(step(&mut t, ms(10)));
    }
    assert_eq!(t.client().connection_state(a), None);
    let corr = send(&mut t, 8);
    until(&mut t, &mut out, |_, o| {
        o.iter().any(|r| r.correlation_id == corr)
    });
}

#[test]
fn update_uris_while_down_restarts_the_pass_over_the_new_list() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7005), Behaviour::Echo);
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001)?initialReconnectDelay=1000",
        net,
        0.5,
    );
    for _ in 0..4 {
        step(&mut t, ms(1000));
    }
    assert!(!t.is_connected());
    let corr = send(&mut t, 8);
    let n = now(&t);
    t.update_uris(&[uri_of(7005)], n).unwrap();
    let mut out = Vec::new();
    until(&mut t, &mut out, |_, o| {
        o.iter().any(|r| r.correlation_id == corr)
    });
    assert_eq!(t.current_uri(), Some(&uri_of(7005)));
    assert!(now(&t) - n < ms(10), "no wait for the old schedule");
}

// ----- property: exactly once under random kills ---------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Send(u8),
    Kill(u8),
    Refuse(u8),
    Revive(u8),
    Silence(u8),
    Wait(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..40).prop_map(Op::Send),
        2 => (0u8..3).prop_map(Op::Kill),
        1 => (0u8..3).prop_map(Op::Refuse),
        2 => (0u8..3).prop_map(Op::Revive),
        1 => (0u8..3).prop_map(Op::Silence),
        3 => (0u8..60).prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn every_request_completes_exactly_once_under_random_kills(
        ops in proptest::collection::vec(op(), 1..60),
        track in any::<bool>(),
        backup in any::<bool>(),
        priority in any::<bool>(),
        timeout in prop_oneof![Just(-1i64), 5i64..300],
        cache in 0usize..200,
        seed in any::<u64>(),
    ) {
        let mut net = SimNetwork::new();
        for p in 7001..=7003 {
            net.set_behaviour(addr(p), Behaviour::Echo);
        }
        let uri: FailoverUri = format!(
            "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002,tcp://127.0.0.1:7003)?\
             trackMessages={track}&backup={backup}&priorityBackup={priority}&timeout={timeout}&\
             maxCacheSize={cache}&maxReconnectAttempts=-1&initialReconnectDelay=3&\
             maxReconnectDelay=50"
        )
        .parse()
        .unwrap();
        let cfg = ClientConfig::default()
            .request_timeout(ms(200))
            .pipeline_unsent(seed % 2 == 0);
        let mut t = FailoverTransport::with_transport(net, cfg, NoHandshake, &uri)
            .unwrap()
            .with_rng(mqnet::client::SplitMix64::new(seed));
        let mut sent: HashMap<i32, Bytes> = HashMap::new();
        let mut done: HashMap<i32, u32> = HashMap::new();
        let mut record = |out: Vec<FailoverResponse>, sent: &HashMap<i32, Bytes>| -> Result<(), TestCaseError> {
            for r in out {
                prop_assert!(sent.contains_key(&r.correlation_id), "unknown completion");
                *done.entry(r.correlation_id).or_default() += 1;
                if let FailoverOutcome::Response(b) = &r.outcome {
                    prop_assert_eq!(b, &sent[&r.correlation_id], "wrong response");
                }
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Send(len) => {
                    let r = request(&mut t, usize::from(len));
                    sent.insert(r.correlation_id, r.frame.clone());
                    let n = now(&t);
                    t.send(r, n);
                }
                Op::Kill(k) => t.client_mut().transport_mut().close_peer(addr(7001 + u16::from(k))),
                Op::Refuse(k) => {
                    let a = addr(7001 + u16::from(k));
                    t.client_mut().transport_mut().set_behaviour(a, Behaviour::Refuse);
                    t.client_mut().transport_mut().reset_peer(a);
                }
                Op::Revive(k) => t
                    .client_mut()
                    .transport_mut()
                    .set_behaviour(addr(7001 + u16::from(k)), Behaviour::Echo),
                Op::Silence(k) => t
                    .client_mut()
                    .transport_mut()
                    .set_behaviour(addr(7001 + u16::from(k)), Behaviour::Silent),
                Op::Wait(w) => {
                    let out = step(&mut t, ms(u64::from(w)));
                    record(out, &sent)?;
                }
            }
        }
        for p in 7001..=7003 {
            t.client_mut().transport_mut().set_behaviour(addr(p), Behaviour::Echo);
        }
        for _ in 0..2_000 {
            if t.outstanding() == 0 {
                break;
            }
            let out = step(&mut t, ms(50));
            record(out, &sent)?;
        }
        let out = step(&mut t, ms(1));
        record(out, &sent)?;
        prop_assert_eq!(t.outstanding(), 0);
        prop_assert_eq!(done.len(), sent.len(), "every request completed");
        prop_assert!(done.values().all(|n| *n == 1), "completed more than once: {:?}", done);
        let ev = t.drain_events();
        let interrupted = ev.iter().filter(|e| matches!(e, FailoverEvent::Interrupted { .. })).count();
        let resumed = ev.iter().filter(|e| matches!(e, FailoverEvent::Resumed { .. })).count();
        prop_assert!(resumed <= interrupted && interrupted <= resumed + 1);
    }
}

#[test]
fn a_replayed_request_still_waits_at_most_timeout_from_its_own_send() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7001), Behaviour::Silent);
    let mut t = transport(
        "failover:(tcp://127.0.0.1:7001,tcp://127.0.0.1:7002)?randomize=false&trackMessages=true&\
         timeout=100&initialReconnectDelay=10",
        net,
        0.5,
    );
    let mut out = Vec::new();
    until(&mut t, &mut out, |t, _| t.is_connected());
    let corr = send(&mut t, 8);
    let sent_at = now(&t);
    while now(&t) < sent_at + ms(50) {
        let left = ms(50) - (now(&t) - sent_at);
        out.extend(step(&mut t, left));
    }
    // Nothing answers anywhere from now on.
    t.client_mut()
        .transport_mut()
        .set_behaviour(addr(7001), Behaviour::Refuse);
    t.client_mut().transport_mut().close_peer(addr(7001));
    until(&mut t, &mut out, |_, o| !o.is_empty());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].correlation_id, corr);
    assert_eq!(out[0].outcome, FailoverOutcome::TimedOut);
    assert_eq!(out[0].replays, 1);
    assert_eq!(out[0].latency, ms(100));
    assert_eq!(t.outstanding(), 0);
}
