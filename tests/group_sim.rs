//! Connection groups on simulated time (mqnet::sim): every rule of the group layer with exact
//! instants (a fixed jitter source), socket counts proving no duplicate connections, and a
//! property test of exactly-once completion and healing under random faults.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{
    ClientConfig, ClientRequest, ClientResponse, DisconnectCause, NetworkClient, NoHandshake,
    NodeId, Outcome, Resolver, SplitMix64,
};
use mqnet::group::{
    DownReason, GroupClient, GroupConfig, GroupError, GroupEvent, GroupEventKind, MemberState,
    MirrorHeartbeat, Selection,
};
use mqnet::sim::{Behaviour, SimNetwork};
use mqnet_test_support::jitter::NoJitter;
use proptest::prelude::*;

/// Resolves every host to 127.0.0.1 except `bad`, which fails at once (a synchronous failure).
struct Fixed;
impl Resolver for Fixed {
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if host == "bad" {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such host"));
        }
        Ok(vec![addr(port)])
    }
}

type G = GroupClient<SimNetwork, NoHandshake, MirrorHeartbeat>;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn groups(net: SimNetwork, gcfg: GroupConfig) -> G {
    let client = NetworkClient::with_transport(net, ClientConfig::default(), NoHandshake)
        .with_rng(NoJitter)
        .with_resolver(Fixed);
    GroupClient::new(client, gcfg, MirrorHeartbeat)
}

fn echo_net(ports: &[u16]) -> SimNetwork {
    let mut net = SimNetwork::new();
    for p in ports {
        net.set_behaviour(addr(*p), Behaviour::Echo);
    }
    net
}

/// Polls until `until` (never past it), returning the completions.
fn run_to(g: &mut G, until: Instant) -> Vec<ClientResponse> {
    let mut out = Vec::new();
    for _ in 0..10_000_000 {
        let now = g.now();
        if now >= until {
            return out;
        }
        out.extend(
            g.poll_io(Some(until - now), now)
                .map(|()| {
                    let now = g.now();
                    g.handle(now)
                })
                .unwrap(),
        );
    }
    panic!("run_to did not reach its instant");
}

/// Polls in steps of at most 1 ms until `cond` holds; panics after `limit` of simulated time.
fn run_until(g: &mut G, limit: Duration, mut cond: impl FnMut(&G) -> bool) -> Vec<ClientResponse> {
    let end = g.now() + limit;
    let mut out = Vec::new();
    while !cond(g) {
        let now = g.now();
        assert!(now < end, "condition not met within {limit:?}");
        out.extend(
            g.poll_io(Some(ms(1)), now)
                .map(|()| {
                    let now = g.now();
                    g.handle(now)
                })
                .unwrap(),
        );
    }
    out
}

fn request(g: &mut G) -> ClientRequest {
    let corr = g.client_mut().next_correlation_id();
    let mut v = corr.to_be_bytes().to_vec();
    v.extend_from_slice(b"body");
    ClientRequest::new(NodeId(-1), corr, Bytes::from(v))
}

fn events(g: &mut G) -> Vec<GroupEvent> {
    g.drain_events().collect()
}

fn kinds(ev: &[GroupEvent], group: &str) -> Vec<GroupEventKind> {
    ev.iter()
        .filter(|e| e.group == group)
        .map(|e| e.kind.clone())
        .collect()
}

#[test]
fn connect_is_idempotent_while_pending_and_live_and_spans_addresses() {
    let mut g = groups(echo_net(&[9000, 9001]), GroupConfig::default());
    let now = g.now();
    g.connect("g", "127.0.0.1:9000", 3, "a", now).unwrap();
    // Again while the three attempts are pending: nothing new.
    g.connect("g", "127.0.0.1:9000", 3, "a", now).unwrap();
    g.connect("g", "127.0.0.1:9000", 2, "b", now).unwrap();
    assert_eq!(g.client().transport().connect_attempts(), 3);
    assert_eq!(g.member_states("g"), vec![MemberState::Connecting; 3]);
    run_until(&mut g, ms(100), |g| g.live_members("g") == 3);
    // Again while live: nothing new.
    let now = g.now();
    g.connect("g", "127.0.0.1:9000", 3, "a", now).unwrap();
    run_to(&mut g, now + secs(1));
    assert_eq!(g.client().transport().connect_attempts(), 3);
    assert_eq!(g.client().transport().open_channels_to(addr(9000)), 3);
    // A second address joins the same group; a larger n adds only the difference.
    let now = g.now();
    g.connect("g", "127.0.0.1:9001", 2, "a", now).unwrap();
    g.connect("g", "127.0.0.1:9000", 4, "a", now).unwrap();
    run_until(&mut g, ms(100), |g| g.live_members("g") == 6);
    assert_eq!(g.client().transport().open_channels_to(addr(9000)), 4);
    assert_eq!(g.client().transport().open_channels_to(addr(9001)), 2);
    assert_eq!(g.client().transport().connect_attempts(), 6);
    assert_eq!(g.members("g").len(), 6);
    assert_eq!(g.referrers("g").unwrap().len(), 2);
    let m = g.metrics("g").unwrap();
    assert_eq!((m.members, m.live, m.connect_attempts), (6, 6, 6));
    // A malformed address is a typed error and changes nothing.
    let now = g.now();
    assert!(matches!(
        g.connect("g", "no-port", 1, "a", now),
        Err(GroupError::InvalidAddress(_))
    ));
    assert_eq!(g.members("g").len(), 6);
}

#[test]
fn round_robin_skips_dead_members() {
    let mut g = groups(echo_net(&[9000]), GroupConfig::default());
    let now = g.now();
    g.connect("g", "127.0.0.1:9000", 3, "a", now).unwrap();
    run_until(&mut g, ms(100), |g| g.live_members("g") == 3);
    let m = g.members("g");
    let mut picks = Vec::new();
    for _ in 0..6 {
        let r = request(&mut g);
        let now = g.now();
        picks.push(g.send("g", r, now).unwrap());
        run_to(&mut g, now + ms(5));
    }
    assert_eq!(picks, vec![m[0], m[1], m[2], m[0], m[1], m[2]]);
    // The peer resets the middle member's connection; the backoff keeps it down for 50 ms.
    assert!(g.client_mut().transport_mut().reset_one(addr(9000), 1));
    let now = g.now();
    run_to(&mut g, now + ms(1));
    assert_eq!(
        g.member_states("g"),
        vec![
            MemberState::Live,
            MemberState::Disconnected,
            MemberState::Live
        ]
    );
    let mut picks = Vec::new();
    let mut done = Vec::new();
    for _ in 0..4 {
        let r = request(&mut g);
        let now = g.now();
        picks.push(g.send("g", r, now).unwrap());
        done.extend(run_to(&mut g, now + ms(5)));
    }
    // The cursor stood at member 0 after the six picks; member 1 is skipped.
    assert_eq!(picks, vec![m[0], m[2], m[0], m[2]]);
    assert!(done
        .iter()
        .all(|r| matches!(r.outcome, Outcome::Response(_))));
    // It heals (50 ms backoff, 2 ms connect) and rejoins the rotation.
    run_until(&mut g, ms(100), |g| g.live_members("g") == 3);
    let mut picks = Vec::new();
    for _ in 0..3 {
        let r = request(&mut g);
        let now = g.now();
        picks.push(g.send("g", r, now).unwrap());
    }
    picks.sort();
    assert_eq!(picks, m);
}

#[test]
fn least_loaded_picks_the_member_with_fewest_requests() {
    let mut net = echo_net(&[9000]);
    net = net.with_latency(ms(10));
    let mut g = groups(
        net,
        GroupConfig::default().selection(Selection::LeastLoaded),
    );
    let now = g.now();
    g.connect("g", "127.0.0.1:9000", 3, "a", now).unwrap();
    run_until(&mut g, ms(200), |g| g.live_members("g") == 3);
    let m = g.members("g");
    let now = g.now();
    // Loads: member 0 gets 2, member 1 gets 1: the next must go to member 2.
    for node in [m[0], m[0], m[1]] {
        let r = request(&mut g);
        let mut r = r;
        r.node = node;
        g.client_mut().send(r, now);
    }
    let r = request(&mut g);
    assert_eq!(g.send("g", r, now).unwrap(), m[2]);
    let r = request(&mut g);
    assert_eq!(g.send("g", r, now).unwrap(), m[1]);
}

#[test]
fn no_available_connection_fails_at_once_and_queues_nothing() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9000), Behaviour::Refuse);
    let mut g = groups(net, GroupConfig::default());
    let now = g.now();
    g.connect("G", "127.0.0.1:9000", 2, "a", now).unwrap();
    let r = request(&mut g);
    let err = g.send("G", r, now).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no available connection in group G (2 members: states connecting, connecting)"
    );
    run_to(&mut g, now + ms(3));
    let r = request(&mut g);
    let now = g.now();
    match g.send("G", r, now) {
        Err(GroupError::NoAvailableConnection { group, states }) => {
            assert_eq!(group, "G");
            assert_eq!(states, vec![MemberState::Disconnected; 2]);
        }
        other => panic!("{other:?}"),
    }
    // Nothing was queued on any member, and nothing completes later.
    for node in g.members("G") {
        assert_eq!(g.client().in_flight_count(node), 0);
        assert_eq!(g.client().waiting_count(node), 0);
    }
    let done = run_to(&mut g, now + secs(5));
    assert!(done.is_empty(), "{done:?}");
    let r = request(&mut g);
    let now = g.now();
    assert!(matches!(
        g.send("nope", r, now),
        Err(GroupError::UnknownGroup(_))
    ));
}

#[test]
fn reference_counting_closes_only_at_the_last_referrer() {
    let mut g = groups(echo_net(&[9000]), GroupConfig::default());
    let now = g.now();
    g.connect("g", "127.0.0.1:9000", 2, "a", now).unwrap();
    g.connect("g", "127.0.0.1:9000", 2, "b", now).unwrap();
    run_until(&mut g, ms(100), |g| g.live_members("g") == 2);
    let now = g.now();
    assert!(!g.release("g", "a", now).unwrap());
    assert_eq!(g.live_members("g"), 2);
    // Double release and unknown referrer: typed errors, nothing closes.
    assert!(matches!(
        g.release("g", "a", now),
        Err(GroupError::NotAReferrer { .. })
    ));
    assert!(matches!(
        g.release("g", "zed", now),
        Err(GroupError::NotAReferrer { .. })
    ));
    assert!(matches!(
        g.release("other", "b", now),
        Err(GroupError::UnknownGroup(_))
    ));
    run_to(&mut g, now + ms(10));
    assert_eq!(g.live_members("g"), 2);
    assert_eq!(g.client().transport().open_channels_to(addr(9000)), 2);
    // A request in flight when the last referrer leaves completes exactly once, Disconnected.
    let r = request(&mut g);
    let corr = r.correlation_id;
    let now = g.now();
    g.send("g", r, now).unwrap();
    assert!(g.release("g", "b", now).unwrap());
    assert_eq!(g.client().transport().open_channels_to(addr(9000)), 0);
    let done = run_to(&mut g, now + secs(1));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].correlation_id, corr);
    assert_eq!(
        done[0].outcome,
        Outcome::Disconnected(DisconnectCause::Local)
    );
    assert!(matches!(
        g.release("g", "b", now),
        Err(GroupError::UnknownGroup(_))
    ));
    // Nothing reconnects a released group.
    let attempts = g.client().transport().connect_attempts();
    run_to(&mut g, now + secs(10));
    assert_eq!(g.client().transport().connect_attempts(), attempts);
}

#[test]
fn heartbeats_only_when_idle() {
    let mut g = groups(echo_net(&[9000]), GroupConfig::default());
    let now = g.now();
    g.connect("idle", "127.0.0.1:9000", 1, "a", now).unwrap();
    g.connect("busy", "127.0.0.1:9000", 1, "a", now).unwrap();
    run_until(&mut g, ms(100), |g| {
        g.live_members("idle") == 1 && g.live_members("busy") == 1
    });
    let ev = events(&mut g);
    let up = ev
        .iter()
        .find(|e| e.group == "idle" && matches!(e.kind, GroupEventKind::MemberUp { .. }))
        .unwrap()
        .at;
    // The busy member carries a request every second; its responses prove it alive.
    let mut user = 0;
    for k in 0..70 {
        let r = request(&mut g);
        let now = g.now();
        g.send("busy", r, now).unwrap();
        if k == 9 {
            // The idle member's first heartbeat goes out exactly heartbeat.interval.ms after it
            // came up.
            user += run_to(&mut g, up + secs(10) - ms(1)).len();
            assert_eq!(g.metrics("idle").unwrap().heartbeats_sent, 0);
        }
        user += run_to(&mut g, up + secs(k + 1)).len();
        if k == 9 {
            assert_eq!(g.metrics("idle").unwrap().heartbeats_sent, 1);
        }
    }
    assert_eq!(user, 70, "user completions only, no heartbeat leaks");
    assert_eq!(g.metrics("busy").unwrap().heartbeats_sent, 0);
    // The idle one: one per interval (plus the answer's round trip), none failed.
    let idle = g.metrics("idle").unwrap();
    assert_eq!(idle.heartbeats_sent, 6);
    assert_eq!(idle.heartbeats_failed, 0);
}

#[test]
fn three_heartbeat_failures_close_the_member_and_it_is_reconnected() {
    let mut g = groups(echo_net(&[9000]), GroupConfig::default());
    let now = g.now();
    g.connect("g", "127.0.0.1:9000", 1, "a", now).unwrap();
    run_until(&mut g, ms(100), |g| g.live_members("g") == 1);
    let up = events(&mut g)[0].at;
    // The server stops answering but keeps the connection open.
    g.client_mut()
        .transport_mut()
        .set_behaviour(addr(9000), Behaviour::Silent);
    run_to(&mut g, up + secs(15) - ms(1));
    assert_eq!(g.metrics("g").unwrap().heartbeats_failed, 0);
    run_to(&mut g, up + secs(15));
    assert_eq!(g.metrics("g").unwrap().heartbeats_failed, 1);
    assert_eq!(g.member_states("g"), vec![MemberState::Suspect]);
    run_to(&mut g, up + secs(25));
    assert_eq!(g.metrics("g").unwrap().heartbeats_failed, 2);
    run_to(&mut g, up + secs(35) - ms(1));
    assert_eq!(g.live_members("g"), 1);
    g.client_mut()
        .transport_mut()
        .set_behaviour(addr(9000), Behaviour::Echo);
    let done = run_to(&mut g, up + secs(35));
    assert!(done.is_empty(), "heartbeats never reach the caller");
    let m = g.metrics("g").unwrap();
    assert_eq!((m.heartbeats_sent, m.heartbeats_failed), (3, 3));
    assert_eq!(m.heartbeat_closes, 1);
    let ev = events(&mut g);
    let down = ev
        .iter()
        .find(|e| matches!(e.kind, GroupEventKind::MemberDown { .. }))
        .unwrap();
    assert_eq!(down.at, up + secs(35));
    assert!(matches!(
        down.kind,
        GroupEventKind::MemberDown {
            reason: DownReason::HeartbeatFailed,
            ..
        }
    ));
    assert_eq!(g.client().transport().open_channels_to(addr(9000)), 0);
    // Handed to the reconnect manager: backoff 50 ms, connect 2 ms.
    run_until(&mut g, secs(1), |g| g.live_members("g") == 1);
    assert_eq!(g.now(), up + secs(35) + ms(52));
    assert_eq!(g.metrics("g").unwrap().reconnects, 1);
    assert_eq!(g.client().transport().open_channels_to(addr(9000)), 1);
    assert_eq!(g.client().transport().connect_attempts(), 2);
}

#[test]
fn a_suspect_member_is_chosen_only_when_no_live_one_is_left() {
    let mut g = groups(echo_net(&[9000, 9001]), GroupConfig::default());
    let now = g.now();
    g.connect("g", "127.0.0.1:9000", 1, "a", now).unwrap();
    g.connect("g", "127.0.0.1:9001", 1, "a", now).unwrap();
    run_until(&mut g, ms(100), |g| g.live_members("g") == 2);
    let up = events(&mut g).last().unwrap().at;
    let m = g.members("g");
    // The first heartbeat of the member at 9000 is lost: it turns suspect at its timeout.
    g.client_mut().transport_mut().drop_frames(addr(9000), 1);
    run_to(&mut g, up + secs(15));
    assert_eq!(
        g.member_states("g"),
        vec![MemberState::Suspect, MemberState::Live]
    );
    let mut picks = Vec::new();
    for _ in 0..3 {
        let r = request(&mut g);
        let now = g.now();
        picks.push(g.send("g", r, now).unwrap());
    }
    assert_eq!(picks, vec![m[1]; 3]);
    // The live member goes down: the suspect one (still connected) is used rather than failing.
    let done = run_to(&mut g, up + secs(15) + ms(5));
    assert_eq!(done.len(), 3);
    assert!(g.client_mut().transport_mut().reset_one(addr(9001), 0));
    let now = g.now();
    run_to(&mut g, now + ms(1));
    let r = request(&mut g);
    let now = g.now();
    assert_eq!(g.send("g", r, now).unwrap(), m[0]);
    // It completes exactly once. (The simulated loss left the heartbeat unanswered at the head of
    // the ordered stream, so the answer behind it is a correlation mismatch and the client closes
    // the connection; a real stream loses nothing, a stalled peer answers nothing.)
    let done = run_to(&mut g, now + ms(5));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].node, m[0]);
}

#[test]
fn a_dead_address_does_not_delay_another_groups_healing() {
    let mut net = echo_net(&[9002]);
    net.set_behaviour(addr(9001), Behaviour::Blackhole);
    let gcfg = GroupConfig::default().reconnect_max_concurrent(2);
    let mut g = groups(net, gcfg);
    let now = g.now();
    // The dead group comes first and takes every slot (it is alone).
    g.connect("dead", "127.0.0.1:9001", 4, "a", now).unwrap();
    assert_eq!(g.client().transport().open_channels_to(addr(9001)), 2);
    run_to(&mut g, now + secs(1));
    let pending = |g: &G| {
        ["dead", "live"]
            .iter()
            .flat_map(|n| g.member_states(n))
            .filter(|s| *s == MemberState::Connecting)
            .count()
    };
    // The healthy group arrives: it gets a slot at once (the dead group's excess attempt is
    // aborted), and heals in two connects.
    let t = g.now();
    g.connect("live", "127.0.0.1:9002", 2, "a", t).unwrap();
    let mut max_pending = 0;
    run_until(&mut g, ms(50), |g| {
        max_pending = max_pending.max(pending(g));
        g.live_members("live") == 2
    });
    assert!(g.now() - t <= ms(4), "healed after {:?}", g.now() - t);
    assert!(max_pending <= 2);
    assert_eq!(g.live_members("dead"), 0);
    // Kill the healthy group: it heals within backoff (50 ms) + two connects while the dead
    // group's attempts (10 s setup timeout each) keep failing.
    g.client_mut().transport_mut().close_peer(addr(9002));
    let t = g.now();
    run_until(&mut g, ms(100), |g| {
        max_pending = max_pending.max(pending(g));
        g.metrics("live").unwrap().heals == 1
    });
    let heal = g.metrics("live").unwrap().last_time_to_heal.unwrap();
    assert!(heal <= ms(60), "{heal:?}");
    assert!(g.now() - t <= ms(60));
    // Over a long run the cap holds and the dead address never has more sockets than slots.
    let end = g.now() + secs(60);
    while g.now() < end {
        let now = g.now();
        g.poll_io(Some(ms(100)), now)
            .map(|()| {
                let now = g.now();
                g.handle(now)
            })
            .unwrap();
        assert!(pending(&g) <= 2);
        assert!(g.client().transport().open_channels_to(addr(9001)) <= 2);
    }
    assert_eq!(g.live_members("live"), 2);
    assert!(g.metrics("dead").unwrap().connect_failures > 0);
}

#[test]
fn attempt_limit_counts_async_and_sync_failures() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9000), Behaviour::Refuse);
    let gcfg = GroupConfig::default().reconnect_max_attempts(Some(3));
    let mut g = groups(net, gcfg);
    let now = g.now();
    // Asynchronous failures: each refusal arrives one round trip after the connect.
    g.connect("async", "127.0.0.1:9000", 1, "a", now).unwrap();
    // Synchronous failures: the name does not resolve, the attempt fails inside the call.
    g.connect("sync", "bad:9000", 1, "a", now).unwrap();
    run_to(&mut g, now + secs(60));
    assert_eq!(g.client().transport().connect_attempts(), 3);
    for name in ["async", "sync"] {
        let m = g.metrics(name).unwrap();
        assert_eq!((m.connect_attempts, m.connect_failures), (3, 3), "{name}");
        assert_eq!(m.abandoned, 1);
        assert_eq!(g.member_states(name), vec![MemberState::Abandoned]);
    }
    let ev = events(&mut g);
    for name in ["async", "sync"] {
        assert!(matches!(
            kinds(&ev, name).as_slice(),
            [GroupEventKind::MemberAbandoned { attempts: 3, .. }]
        ));
    }
    // connect again revives it with a fresh count.
    g.client_mut()
        .transport_mut()
        .set_behaviour(addr(9000), Behaviour::Echo);
    let now = g.now();
    g.connect("async", "127.0.0.1:9000", 1, "a", now).unwrap();
    run_until(&mut g, secs(2), |g| g.live_members("async") == 1);
    assert_eq!(g.client().transport().connect_attempts(), 4);
}

#[test]
fn a_timed_out_attempt_is_aborted_before_the_next_no_duplicate_sockets() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(9000), Behaviour::Blackhole);
    let mut g = groups(net, GroupConfig::default());
    let now = g.now();
    g.connect("g", "127.0.0.1:9000", 2, "a", now).unwrap();
    let mut max_open = 0;
    // Per member: setup timeouts of 10 s, 20 s, 30 s (backoff 50, 100, 200 ms in between),
    // then a fourth attempt pending at 70 s.
    let end = now + secs(70);
    while g.now() < end {
        let now = g.now();
        g.poll_io(Some(ms(500)), now)
            .map(|()| {
                let now = g.now();
                g.handle(now)
            })
            .unwrap();
        max_open = max_open.max(g.client().transport().open_channels_to(addr(9000)));
    }
    assert_eq!(max_open, 2);
    let attempts = g.client().transport().connect_attempts();
    assert_eq!(attempts, 8);
    assert_eq!(g.metrics("g").unwrap().connect_failures, 6);
    // The address comes back: exactly n sockets, one per member.
    g.client_mut()
        .transport_mut()
        .set_behaviour(addr(9000), Behaviour::Echo);
    run_until(&mut g, secs(60), |g| g.live_members("g") == 2);
    let now = g.now();
    run_to(&mut g, now + secs(5));
    assert_eq!(g.client().transport().open_channels_to(addr(9000)), 2);
    assert_eq!(g.client().transport().open_channels(), 2);
}

#[test]
fn events_empty_restored_healed_and_time_to_heal() {
    let mut g = groups(echo_net(&[9000]), GroupConfig::default());
    let now = g.now();
    g.connect("g", "127.0.0.1:9000", 2, "a", now).unwrap();
    run_until(&mut g, ms(100), |g| g.live_members("g") == 2);
    let ev = events(&mut g);
    assert_eq!(kinds(&ev, "g").len(), 2);
    g.client_mut()
        .transport_mut()
        .set_behaviour(addr(9000), Behaviour::Refuse);
    g.client_mut().transport_mut().close_peer(addr(9000));
    let t = g.now();
    run_to(&mut g, t + secs(2));
    g.client_mut()
        .transport_mut()
        .set_behaviour(addr(9000), Behaviour::Echo);
    run_until(&mut g, secs(5), |g| g.live_members("g") == 2);
    let ev = events(&mut g);
    let k = kinds(&ev, "g");
    let down = k
        .iter()
        .filter(|e| {
            matches!(
                e,
                GroupEventKind::MemberDown {
                    reason: DownReason::ConnectionLost,
                    ..
                }
            )
        })
        .count();
    assert_eq!(down, 2);
    let pos = |f: &dyn Fn(&GroupEventKind) -> bool| k.iter().position(f).unwrap();
    let empty = pos(&|e| matches!(e, GroupEventKind::GroupEmpty));
    let restored = pos(&|e| matches!(e, GroupEventKind::GroupRestored { .. }));
    let healed = pos(&|e| matches!(e, GroupEventKind::GroupHealed { .. }));
    assert!(empty < restored && restored < healed, "{k:?}");
    let m = g.metrics("g").unwrap();
    assert_eq!(m.heals, 1);
    assert_eq!(m.reconnects, 2);
    assert_eq!(m.live, 2);
    let heal = m.last_time_to_heal.unwrap();
    assert!(heal >= secs(2) && heal <= secs(4), "{heal:?}");
    match &k[healed] {
        GroupEventKind::GroupHealed { after } => assert_eq!(*after, heal),
        _ => unreachable!(),
    }
}

#[derive(Debug, Clone)]
enum Fault {
    /// The peer resets one member's connection.
    Kill(usize),
    /// The server swallows the next frames (lost heartbeats or requests).
    Lose(u64),
    /// The server stops answering for a while, connections open.
    Stall(u64),
    /// Requests sent to the group.
    Send(usize),
    /// Time passes (ms).
    Wait(u64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0usize..8).prop_map(Fault::Kill),
        (1u64..4).prop_map(Fault::Lose),
        (100u64..1500).prop_map(Fault::Stall),
        (1usize..20).prop_map(Fault::Send),
        (1u64..500).prop_map(Fault::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    /// Random member kills, lost frames and stalls over a long simulated run: every accepted
    /// request completes exactly once, and after the faults stop the group is back to n live
    /// members within a bound.
    #[test]
    fn faults_complete_every_request_once_and_the_group_heals(
        faults in prop::collection::vec(fault(), 20..120),
        seed in any::<u64>(),
    ) {
        let client = NetworkClient::with_transport(
            echo_net(&[9000, 9001]),
            ClientConfig::default().request_timeout(ms(2000)),
            NoHandshake,
        )
        .with_rng(SplitMix64::new(seed))
        .with_resolver(Fixed);
        let gcfg = GroupConfig::default()
            .heartbeat_interval(ms(100))
            .heartbeat_timeout(ms(50))
            .reconnect_max_concurrent(2);
        let mut g = GroupClient::new(client, gcfg, MirrorHeartbeat);
        let now = g.now();
        g.connect("g", "127.0.0.1:9000", 3, "a", now).unwrap();
        g.connect("g", "127.0.0.1:9001", 2, "a", now).unwrap();
        let mut accepted: HashMap<i32, u32> = HashMap::new();
        let mut completed: HashMap<i32, u32> = HashMap::new();
        let mut refused = 0u64;
        let mut killed = false;
        let mut stalled_until: Option<(Instant, u16)> = None;
        let record = |done: Vec<ClientResponse>, completed: &mut HashMap<i32, u32>| {
            for r in done {
                *completed.entry(r.correlation_id).or_default() += 1;
            }
        };
        for (k, f) in faults.iter().enumerate() {
            let port = if k % 2 == 0 { 9000 } else { 9001 };
            if let Some((t, p)) = stalled_until {
                if g.now() >= t {
                    g.client_mut().transport_mut().set_behaviour(addr(p), Behaviour::Echo);
                    stalled_until = None;
                }
            }
            match f {
                Fault::Kill(i) => {
                    killed |= g.client_mut().transport_mut().reset_one(addr(port), *i);
                }
                Fault::Lose(n) => g.client_mut().transport_mut().drop_frames(addr(port), *n),
                Fault::Stall(d) => {
                    if stalled_until.is_none() {
                        g.client_mut().transport_mut().set_behaviour(addr(port), Behaviour::Silent);
                        stalled_until = Some((g.now() + ms(*d), port));
                    }
                }
                Fault::Send(n) => {
                    for _ in 0..*n {
                        let r = request(&mut g);
                        let corr = r.correlation_id;
                        let now = g.now();
                        match g.send("g", r, now) {
                            Ok(_) => *accepted.entry(corr).or_default() += 1,
                            Err(GroupError::NoAvailableConnection { .. }) => refused += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                Fault::Wait(d) => {
                    let until = g.now() + ms(*d);
                    let done = run_to(&mut g, until);
                    record(done, &mut completed);
                }
            }
            let now = g.now();
            let done = g.poll_io(Some(ms(1)), now).map(|()| { let now = g.now(); g.handle(now) }).unwrap();
            record(done, &mut completed);
        }
        // Faults stop.
        for p in [9000, 9001] {
            g.client_mut().transport_mut().set_behaviour(addr(p), Behaviour::Echo);
        }
        for p in [9000, 9001] {
            g.client_mut().transport_mut().drop_frames(addr(p), 0);
        }
        // Bound: the requests' 2 s timeout, plus the longest backoff (1 s), a setup, and the
        // heartbeat cycle that may still be closing a member (3 × 100 ms + 50 ms), with slack.
        let stop = g.now();
        let done = run_to(&mut g, stop + secs(5));
        record(done, &mut completed);
        prop_assert_eq!(g.live_members("g"), 5, "not healed: {:?}", g.member_states("g"));
        prop_assert_eq!(g.client().transport().open_channels(), 5);
        let m = g.metrics("g").unwrap();
        prop_assert!(!killed || m.reconnects > 0, "a killed member came back: {:?}", m);
        for (corr, n) in &accepted {
            prop_assert_eq!(*n, 1);
            prop_assert_eq!(completed.get(corr).copied(), Some(1), "request {} completions", corr);
        }
        prop_assert_eq!(completed.len(), accepted.len(), "no stray completions ({} refused)", refused);
    }
}
