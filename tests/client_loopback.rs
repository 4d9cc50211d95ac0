//! Loopback integration tests of the NetworkClient over the real Selector (127.0.0.1 only): a
//! server restart on the same port, a silent server (request timeout), a server answering with the
//! wrong correlation id, a listener whose accept backlog is full (setup timeout), the in-flight cap,
//! idle expiry, and requests that expect no response.
//!
//! The test servers are Selectors running on their own threads (see [`mqnet_test_support::client_loop::TestServer`]). Every
//! loop is bounded in iterations and in time ([`mqnet_test_support::client_loop::DEADLINE`]); running out of either panics
//! with a message naming what was awaited. Timing assertions only use sound lower bounds (the
//! client cannot act before its deadline) and generous upper bounds ([`mqnet_test_support::client_loop::SLACK`]).

use std::time::{Duration, Instant};

use mqnet::client::{ClientConfig, ConnectionState, DisconnectCause, NodeId, Outcome};
use mqnet::net::DisconnectReason;

use mqnet_test_support::client_loop::*;

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
