//! KIP-368 in band, on simulated time: the [`NetworkClient`] re-authenticates a SASL connection
//! ([`ApiVersionsHandshake::with_sasl`]) on the same channel between 85 % and 95 % of the session
//! lifetime the broker announced. The broker is the scripted one of `sasl_tests`, behind a
//! [`SimServer`] that logs every frame and can hold the caller's requests (to keep them in
//! flight), forge the server signature, change the password, or stall a re-authentication.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::sasl::{SaslError, SASL_AUTHENTICATE, SASL_HANDSHAKE};
use super::sasl_tests::{creds, request_parts, Broker, NODE};
use super::scram::ScramError;
use super::ApiVersionsHandshake;
use crate::client::{
    ClientConfig, ClientRequest, ClientResponse, ConnectionState, DisconnectCause, JitterSource,
    NetworkClient, NodeId, Outcome,
};
use crate::net::{ChannelId, Transport};
use crate::sim::{SimNetwork, SimServer};

const ADDR: &str = "127.0.0.1:9092";
/// The simulated round trip (1 ms each way): a session counts from when the exchange's last
/// request was staged, one round trip before its answer made the connection Ready.
const RTT: Duration = Duration::from_millis(2);
/// The api key of the caller's requests here (Produce; the scripted server echoes them).
const APP: i16 = 0;

struct State {
    broker: Broker,
    /// Every frame received: api key and correlation id, in order.
    log: Vec<(i16, i32)>,
    /// Hold the caller's requests instead of answering them.
    hold_app: bool,
    held: Vec<(ChannelId, i32)>,
    /// Leave every SaslHandshake after the first unanswered (kept in `stalled`).
    stall_reauth: bool,
    stalled: Option<(ChannelId, Bytes)>,
}

#[derive(Clone)]
struct Sim(Arc<Mutex<State>>);

impl Sim {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().expect("sim state")
    }

    fn handshakes(&self) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|(k, _)| *k == SASL_HANDSHAKE)
            .count()
    }
}

fn app_response(corr: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32(corr);
    b.put_slice(b"ok");
    b.freeze()
}

impl SimServer for Sim {
    fn request(&mut self, channel: ChannelId, frame: Bytes) -> Vec<Bytes> {
        let mut s = self.lock();
        let (api, _, corr, _) = request_parts(&frame);
        s.log.push((api, corr));
        match api {
            SASL_HANDSHAKE
                if s.stall_reauth
                    && s.log.iter().filter(|(k, _)| *k == SASL_HANDSHAKE).count() > 1 =>
            {
                s.stalled = Some((channel, frame));
                Vec::new()
            }
            SASL_HANDSHAKE | SASL_AUTHENTICATE | 18 => vec![s.broker.answer(&frame)],
            _ if s.hold_app => {
                s.held.push((channel, corr));
                Vec::new()
            }
            _ => vec![app_response(corr)],
        }
    }
}

/// The jitter source: always `f` (0.5 puts the re-authentication at 90 % of the lifetime).
struct Fixed(f64);
impl JitterSource for Fixed {
    fn next_f64(&mut self) -> f64 {
        self.0
    }
}

type Client = NetworkClient<SimNetwork, ApiVersionsHandshake>;

fn setup(mechanism: &str, lifetime_ms: i64, rng: Option<f64>) -> (Client, Sim) {
    let mut broker = Broker::new("pw");
    broker.lifetime_ms = lifetime_ms;
    let sim = Sim(Arc::new(Mutex::new(State {
        broker,
        log: Vec::new(),
        hold_app: false,
        held: Vec::new(),
        stall_reauth: false,
        stalled: None,
    })));
    let mut net = SimNetwork::new();
    net.set_server(ADDR.parse().expect("addr"), Box::new(sim.clone()));
    let hook = ApiVersionsHandshake::new("c").with_sasl(creds(mechanism, "pw"));
    let mut c = NetworkClient::with_transport(net, ClientConfig::default(), hook);
    if let Some(f) = rng {
        c = c.with_rng(Fixed(f));
    }
    c.add_node(NODE, ADDR).expect("node");
    (c, sim)
}

/// One round: the I/O (at most `timeout`, never past the client's own deadline), then the
/// completions settled at the transport's time after it.
fn round(c: &mut Client, timeout: Option<Duration>) -> Vec<ClientResponse> {
    let now = c.transport().now();
    c.poll_io(timeout, now).expect("poll");
    let after = c.transport().now();
    c.handle(after)
}

/// Rounds until the simulated clock reaches `t` (bounded), each waiting at most until `t` or the
/// client's own next deadline.
fn until(c: &mut Client, t: Instant) -> Vec<ClientResponse> {
    let mut done = Vec::new();
    for _ in 0..50 {
        let now = c.transport().now();
        if now >= t {
            return done;
        }
        done.extend(round(c, Some(t - now)));
    }
    panic!(
        "the clock never reached {t:?}: at {:?}",
        c.transport().now()
    );
}

/// Rounds of 1 ms.
fn rounds(c: &mut Client, n: usize) -> Vec<ClientResponse> {
    (0..n)
        .flat_map(|_| round(c, Some(Duration::from_millis(1))))
        .collect()
}

/// Connects and authenticates; returns the instant the connection became Ready.
fn connect(c: &mut Client) -> Instant {
    for _ in 0..100 {
        let now = c.transport().now();
        if c.ready(NODE, now) {
            return now;
        }
        round(c, Some(Duration::from_millis(1)));
    }
    panic!("never ready: {:?}", c.connection_state(NODE));
}

fn app_frame(corr: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(APP);
    b.put_i16(3);
    b.put_i32(corr);
    b.put_i16(1);
    b.put_u8(b'c');
    b.put_slice(b"records");
    b.freeze()
}

fn send(c: &mut Client) -> i32 {
    let corr = c.next_correlation_id();
    let now = c.transport().now();
    c.send(ClientRequest::new(NODE, corr, app_frame(corr)), now);
    corr
}

fn reauths(c: &Client) -> u64 {
    c.node_metrics(NODE).expect("node").reauthentications
}

fn responses(done: &[ClientResponse]) -> Vec<i32> {
    done.iter()
        .filter(|r| matches!(&r.outcome, Outcome::Response(b) if &b[4..] == b"ok"))
        .map(|r| r.correlation_id)
        .collect()
}

#[test]
fn an_idle_connection_wakes_and_re_authenticates_in_band_within_85_to_95_percent() {
    for (mechanism, jitter) in [
        ("SCRAM-SHA-512", None),
        ("SCRAM-SHA-256", Some(0.0)),
        ("PLAIN", Some(1.0)),
    ] {
        let lifetime = Duration::from_secs(10);
        let (mut c, sim) = setup(mechanism, 10_000, jitter);
        let mut session_start = connect(&mut c) - RTT;
        assert_eq!(sim.handshakes(), 1);
        for k in 1..=3u64 {
            // Idle: the client's own deadline is the re-authentication point, and a poll with no
            // timeout of the caller's wakes there.
            let due = c.poll_deadline().expect("a re-authentication deadline");
            let offset = due - session_start;
            assert!(
                offset >= lifetime.mul_f64(0.85) && offset <= lifetime.mul_f64(0.95),
                "{mechanism}: re-authentication {k} at {offset:?} of {lifetime:?}"
            );
            if let Some(f) = jitter {
                assert_eq!(offset, lifetime.mul_f64(0.85 + 0.10 * f), "{mechanism}");
            }
            round(&mut c, None);
            assert_eq!(
                c.transport().now(),
                due,
                "{mechanism}: woke at the deadline"
            );
            assert!(
                !c.is_ready(NODE),
                "{mechanism}: no new sends while renewing"
            );
            let mut rounds = 0;
            while reauths(&c) < k {
                rounds += 1;
                assert!(
                    rounds < 20,
                    "{mechanism}: re-authentication {k} never finished"
                );
                round(&mut c, Some(Duration::from_millis(1)));
            }
            session_start = c.transport().now() - RTT;
            assert!(c.is_ready(NODE), "{mechanism}");
            assert_eq!(sim.handshakes() as u64, k + 1, "{mechanism}");
        }
        // One connection for all of it, ApiVersions asked once.
        assert_eq!(c.transport().connect_attempts(), 1, "{mechanism}");
        let api_versions = sim.lock().log.iter().filter(|(k, _)| *k == 18).count();
        assert_eq!(api_versions, 1, "{mechanism}");
        let m = c.node_metrics(NODE).expect("node");
        assert_eq!((m.connections_created, m.connections_closed), (1, 0));
        assert!(c.handshake_mut().take_auth_failures().is_empty());
    }
}

#[test]
fn in_flight_requests_complete_and_requests_sent_meanwhile_wait_then_go_in_order() {
    let (mut c, sim) = setup("SCRAM-SHA-512", 10_000, Some(0.5));
    let t0 = connect(&mut c) - RTT;
    let mut done = round(&mut c, Some(Duration::from_secs(8)));
    // Two requests in flight (held by the broker) when the session is due (9 s).
    sim.lock().hold_app = true;
    let (a, b) = (send(&mut c), send(&mut c));
    done.extend(until(&mut c, t0 + Duration::from_secs(9)));
    assert_eq!(c.transport().now() - t0, Duration::from_secs(9));
    assert!(!c.is_ready(NODE));
    assert_eq!(c.connection_state(NODE), Some(ConnectionState::Ready));
    // Requests sent now wait in the client; the re-authentication waits for a and b.
    let (x, y) = (send(&mut c), send(&mut c));
    done.extend(round(&mut c, Some(Duration::from_millis(100))));
    assert_eq!(c.waiting_count(NODE), 2);
    assert_eq!(
        sim.handshakes(),
        1,
        "re-authentication waits for the requests in flight"
    );
    // The broker answers a and b: they complete; then the exchange, then x and y.
    let held = std::mem::take(&mut sim.lock().held);
    sim.lock().hold_app = false;
    for (ch, corr) in held {
        c.transport_mut().deliver(ch, app_response(corr));
    }
    done.extend(rounds(&mut c, 30));
    assert_eq!(responses(&done), vec![a, b, x, y]);
    assert_eq!(done.len(), 4, "{done:?}");
    assert_eq!(reauths(&c), 1);
    let log = sim.lock().log.clone();
    let second = log
        .iter()
        .rposition(|(k, _)| *k == SASL_HANDSHAKE)
        .expect("a second SaslHandshake");
    let keys: Vec<i16> = log[second..].iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        vec![
            SASL_HANDSHAKE,
            SASL_AUTHENTICATE,
            SASL_AUTHENTICATE,
            APP,
            APP
        ]
    );
    let corrs: Vec<i32> = log[second + 3..].iter().map(|(_, c)| *c).collect();
    assert_eq!(corrs, vec![x, y]);
    assert_eq!(c.transport().connect_attempts(), 1);
}

#[test]
fn a_failed_re_authentication_is_an_authentication_failure_and_closes_the_connection() {
    for (mechanism, forge) in [
        ("SCRAM-SHA-512", true),
        ("SCRAM-SHA-256", false),
        ("PLAIN", false),
    ] {
        let (mut c, sim) = setup(mechanism, 10_000, Some(0.5));
        connect(&mut c);
        {
            let mut s = sim.lock();
            if forge {
                s.broker.forge_signature = true;
            } else {
                s.broker.password = "changed";
            }
        }
        let mut done = round(&mut c, None);
        let waiting = send(&mut c);
        done.extend(rounds(&mut c, 20));
        assert_eq!(sim.handshakes(), 2, "{mechanism}");
        assert_eq!(reauths(&c), 0, "{mechanism}");
        assert_eq!(
            c.connection_state(NODE),
            Some(ConnectionState::HandshakeFailed),
            "{mechanism}"
        );
        assert_eq!(c.transport().open_channels(), 0, "{mechanism}: closed");
        assert_eq!(
            c.node_metrics(NODE).expect("node").authentication_failure,
            Some(DisconnectCause::HandshakeFailed)
        );
        let failures = c.handshake_mut().take_auth_failures();
        if forge {
            assert!(
                matches!(
                    failures.as_slice(),
                    [(NODE, SaslError::Scram(ScramError::ServerSignatureMismatch))]
                ),
                "{mechanism}: {failures:?}"
            );
        } else {
            assert!(
                matches!(
                    failures.as_slice(),
                    [(NODE, SaslError::AuthenticationFailed { code: 58, .. })]
                ),
                "{mechanism}: {failures:?}"
            );
        }
        assert!(
            done.iter().any(|r| r.correlation_id == waiting
                && r.outcome == Outcome::Disconnected(DisconnectCause::HandshakeFailed)),
            "{mechanism}: {done:?}"
        );
    }
}

#[test]
fn without_a_session_lifetime_the_connection_never_re_authenticates() {
    let (mut c, sim) = setup("SCRAM-SHA-512", 0, None);
    connect(&mut c);
    assert_eq!(c.poll_deadline(), None);
    let start = c.transport().now();
    for _ in 0..10 {
        round(&mut c, Some(Duration::from_secs(3600)));
        let corr = send(&mut c);
        let done = rounds(&mut c, 10);
        assert_eq!(responses(&done), vec![corr]);
    }
    assert!(c.transport().now() - start >= Duration::from_secs(36_000));
    assert_eq!(sim.handshakes(), 1);
    assert_eq!(reauths(&c), 0);
    assert_eq!(c.transport().connect_attempts(), 1);
}

#[test]
fn a_re_authentication_under_way_when_the_session_ends_goes_on_and_a_stalled_one_times_out() {
    let (mut c, sim) = setup("SCRAM-SHA-512", 10_000, Some(0.5));
    let t0 = connect(&mut c) - RTT;
    sim.lock().stall_reauth = true;
    let mut done = until(&mut c, t0 + Duration::from_secs(9));
    let waiting = send(&mut c);
    done.extend(rounds(&mut c, 5));
    assert_eq!(sim.handshakes(), 2, "under way");
    // The session ends (10 s); the exchange goes on, bounded by the request timeout only.
    done.extend(until(&mut c, t0 + Duration::from_secs(11)));
    assert_eq!(
        c.connection_state(NODE),
        Some(ConnectionState::Ready),
        "{done:?}"
    );
    assert_eq!(c.transport().open_channels(), 1);
    assert!(done.is_empty(), "{done:?}");
    // The broker answers late: the session is renewed on the same connection, then the waiting
    // request goes.
    let (ch, frame) = sim
        .lock()
        .stalled
        .take()
        .expect("the stalled SaslHandshake");
    let answer = sim.lock().broker.answer(&frame);
    c.transport_mut().deliver(ch, answer);
    done.extend(rounds(&mut c, 20));
    assert_eq!(reauths(&c), 1);
    assert_eq!(responses(&done), vec![waiting]);
    assert_eq!(c.transport().connect_attempts(), 1);

    // The next one stalls for good: the request timeout (30 s from its start) closes the
    // connection, and the request waiting meanwhile completes with it.
    let started = c.poll_deadline().expect("the next re-authentication");
    let mut done = until(&mut c, started + Duration::from_secs(1));
    let waiting = send(&mut c);
    done.extend(until(
        &mut c,
        started + ClientConfig::default().request_timeout,
    ));
    assert_eq!(sim.handshakes(), 3);
    assert_eq!(
        c.connection_state(NODE),
        Some(ConnectionState::Disconnected)
    );
    assert_eq!(c.transport().open_channels(), 0);
    assert!(c.handshake_mut().take_auth_failures().is_empty());
    assert!(
        done.iter().any(|r| r.correlation_id == waiting
            && r.outcome == Outcome::Disconnected(DisconnectCause::RequestTimeout)),
        "{done:?}"
    );
}

#[test]
fn requests_in_flight_past_the_session_end_delay_the_re_authentication_without_closing() {
    let (mut c, sim) = setup("PLAIN", 10_000, Some(0.5));
    let t0 = connect(&mut c) - RTT;
    sim.lock().hold_app = true;
    let sent_at = c.transport().now();
    let held = send(&mut c);
    until(&mut c, t0 + Duration::from_secs(9));
    assert!(!c.is_ready(NODE));
    // Nothing of the client's own is due while it waits for the request (no busy loop).
    assert_eq!(
        c.poll_deadline(),
        Some(sent_at + ClientConfig::default().request_timeout)
    );
    let mut done = until(&mut c, t0 + Duration::from_secs(11));
    assert!(done.is_empty(), "{done:?}");
    assert_eq!(sim.handshakes(), 1, "not started: a request is in flight");
    assert_eq!(
        c.transport().open_channels(),
        1,
        "the client does not close it"
    );
    // The answer comes (it was sent within the session): then the re-authentication.
    let (ch, corr) = sim.lock().held.pop().expect("held");
    sim.lock().hold_app = false;
    c.transport_mut().deliver(ch, app_response(corr));
    done.extend(rounds(&mut c, 20));
    assert_eq!(responses(&done), vec![held]);
    assert_eq!(sim.handshakes(), 2);
    assert_eq!(reauths(&c), 1);
    assert_eq!(c.transport().connect_attempts(), 1);
}

#[test]
fn a_request_sent_past_the_point_before_the_client_noticed_waits_for_the_re_authentication() {
    let (mut c, sim) = setup("SCRAM-SHA-256", 10_000, Some(0.5));
    let t0 = connect(&mut c) - RTT;
    // The caller's thread was busy: the clock is past the point and no poll has seen it.
    let gap = t0 + Duration::from_millis(9_500) - c.transport().now();
    c.transport_mut().advance(gap);
    assert_eq!(c.transport().now() - t0, Duration::from_millis(9_500));
    assert!(
        !c.ready(NODE, c.transport().now()),
        "not ready for new sends"
    );
    let late = send(&mut c);
    assert_eq!((c.in_flight_count(NODE), c.waiting_count(NODE)), (0, 1));
    let done = rounds(&mut c, 20);
    assert_eq!(responses(&done), vec![late]);
    assert_eq!(reauths(&c), 1);
    let keys: Vec<i16> = sim.lock().log.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys[keys.len() - 4..],
        [SASL_HANDSHAKE, SASL_AUTHENTICATE, SASL_AUTHENTICATE, APP],
        "the request went after the exchange"
    );
}

#[test]
fn least_loaded_node_passes_over_a_connection_renewing_its_session() {
    let (mut c, sim_a) = setup("PLAIN", 10_000, Some(0.5));
    // A second broker whose sessions do not end, holding the caller's requests.
    let other = NodeId(2);
    let other_addr = "127.0.0.1:9093";
    let mut broker = Broker::new("pw");
    broker.lifetime_ms = 0;
    let sim_b = Sim(Arc::new(Mutex::new(State {
        broker,
        log: Vec::new(),
        hold_app: true,
        held: Vec::new(),
        stall_reauth: false,
        stalled: None,
    })));
    c.transport_mut()
        .set_server(other_addr.parse().expect("addr"), Box::new(sim_b.clone()));
    c.add_node(other, other_addr).expect("node");
    let t0 = connect(&mut c) - RTT;
    for _ in 0..100 {
        let now = c.transport().now();
        if c.ready(other, now) {
            break;
        }
        round(&mut c, Some(Duration::from_millis(1)));
    }
    assert!(c.is_ready(other));
    // Two requests held on the other broker: its load is 2.
    for _ in 0..2 {
        let corr = c.next_correlation_id();
        let now = c.transport().now();
        c.send(ClientRequest::new(other, corr, app_frame(corr)), now);
    }
    // The first broker's renewal stalls: its connection is Ready, renewing, with one request of
    // the exchange in flight (load 1).
    sim_a.lock().stall_reauth = true;
    until(&mut c, t0 + Duration::from_secs(9));
    rounds(&mut c, 5);
    assert!(sim_a.lock().stalled.is_some(), "the renewal started");
    assert_eq!(c.connection_state(NODE), Some(ConnectionState::Ready));
    assert!(!c.is_ready(NODE));
    let now = c.transport().now();
    assert_eq!(c.least_loaded_node(now), Some(other));
}
