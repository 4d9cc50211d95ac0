//! The NetworkClient over TLS (`security.protocol=SSL` through [`SecurityConfig`]) against the
//! server role with a TLS listener, on 127.0.0.1 with certificates made by the test: requests
//! round-trip; a failed TLS handshake (expired certificate, wrong host) fails the request as an
//! authentication failure, leaves the node in `HandshakeFailed`, and reconnect attempts stay under
//! the reconnect backoff even for a caller that asks for the node every few milliseconds.

mod tls_common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{
    ClientConfig, ClientRequest, ConnectionState, DisconnectCause, NetworkClient, NodeId, Outcome,
};
use mqnet::net::{ChannelId, DisconnectReason, TlsFailure};
use mqnet::server::{Handler, Server, ServerConfig};
use tls_common::{Leaf, Pki};

const DEADLINE: Duration = Duration::from_secs(20);
const NODE: NodeId = NodeId(1);

struct Echo;

impl Handler for Echo {
    fn handle(&mut self, _conn: ChannelId, request: Bytes) -> Option<Bytes> {
        Some(request)
    }
}

/// A TLS echo server on its own thread; stops when dropped.
struct TlsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TlsServer {
    fn start(cert: &Leaf) -> TlsServer {
        let tls = mqnet::net::tls::server_config(&cert.cert, &cert.key, None).unwrap();
        let mut server = Server::inline_with_config(
            Echo,
            ServerConfig {
                tls: Some(tls),
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let addr = server.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let _ = server.run_until(&s, Some(Instant::now() + Duration::from_secs(120)));
        });
        TlsServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client(pki: &Pki, addr: SocketAddr, host: &str) -> NetworkClient {
    let mut config = ClientConfig::default();
    config.set("security.protocol", "SSL").unwrap();
    config
        .set("ssl.ca.location", pki.ca_pem.to_str().unwrap())
        .unwrap();
    config.set("reconnect.backoff.ms", "50").unwrap();
    config.set("reconnect.backoff.max.ms", "1000").unwrap();
    let mut c = NetworkClient::new(config.clone()).unwrap();
    config.security.apply(c.transport_mut()).unwrap();
    c.add_node(NODE, &format!("{host}:{}", addr.port()))
        .unwrap();
    c
}

fn request(c: &mut NetworkClient) -> ClientRequest {
    let corr = c.next_correlation_id();
    let mut v = corr.to_be_bytes().to_vec();
    v.extend_from_slice(&[7u8; 3000]);
    ClientRequest::new(NODE, corr, Bytes::from(v))
}

#[test]
fn requests_round_trip_over_tls_with_host_name_verification() {
    let pki = Pki::new("client-ok");
    let server = TlsServer::start(&pki.leaf("server", &["localhost"]));
    let mut c = client(&pki, server.addr, "localhost");
    let start = Instant::now();
    let mut done = Vec::new();
    let mut sent = 0;
    while done.len() < 50 {
        assert!(start.elapsed() < DEADLINE, "only {} responses", done.len());
        let now = Instant::now();
        if sent < 50 && c.ready(NODE, now) {
            let r = request(&mut c);
            c.send(r, now);
            sent += 1;
        }
        c.poll_io(Some(Duration::from_millis(10)), now).unwrap();
        done.extend(c.handle(Instant::now()));
    }
    assert!(done
        .iter()
        .all(|r| matches!(r.outcome, Outcome::Response(ref b) if b.len() == 3004)));
    assert_eq!(c.node_metrics(NODE).unwrap().connect_attempts, 1);
}

/// Runs a client against a server with `cert_names` for `run`, asking for the node at every
/// tick as an impatient caller would; returns the node's authentication failure and the connect
/// attempts made.
fn failing_run(cert_names: &[&str], expired: bool, run: Duration) -> (DisconnectCause, u64) {
    let pki = Pki::new("client-fail");
    let cert = if expired {
        pki.expired("server", cert_names)
    } else {
        pki.leaf("server", cert_names)
    };
    let server = TlsServer::start(&cert);
    let mut c = client(&pki, server.addr, "127.0.0.1");
    let start = Instant::now();
    let mut failed_seen = false;
    while start.elapsed() < run {
        let now = Instant::now();
        // Never Ready: the handshake fails before the channel is reported connected.
        assert!(
            !c.ready(NODE, now),
            "a node with a bad certificate became Ready"
        );
        c.poll_io(Some(Duration::from_millis(5)), now).unwrap();
        c.handle(Instant::now());
        failed_seen |= c.connection_state(NODE) == Some(ConnectionState::HandshakeFailed);
    }
    assert!(failed_seen, "the node never showed HandshakeFailed");
    let m = c.node_metrics(NODE).unwrap();
    assert_eq!(m.connections_created, 0);
    (
        m.authentication_failure.expect("an authentication failure"),
        m.connect_attempts,
    )
}

/// With a 50 ms backoff doubling to 1 s (±20 % jitter), 3 s allow 7 attempts; a retry storm
/// would make hundreds.
const MAX_ATTEMPTS_IN_3S: u64 = 9;

#[test]
fn expired_certificate_fails_as_authentication_without_a_retry_storm() {
    let (cause, attempts) = failing_run(&["127.0.0.1"], true, Duration::from_secs(3));
    assert_eq!(
        cause,
        DisconnectCause::Transport(DisconnectReason::HandshakeFailed(
            TlsFailure::CertificateExpired
        ))
    );
    assert!(cause.is_authentication_failure());
    assert!(
        (2..=MAX_ATTEMPTS_IN_3S).contains(&attempts),
        "{attempts} attempts"
    );
}

#[test]
fn wrong_host_certificate_fails_as_authentication_without_a_retry_storm() {
    let (cause, attempts) = failing_run(&["wrong.example"], false, Duration::from_secs(3));
    assert_eq!(
        cause,
        DisconnectCause::Transport(DisconnectReason::HandshakeFailed(
            TlsFailure::CertificateNotValidForName
        ))
    );
    assert!(cause.is_authentication_failure());
    assert!(
        (2..=MAX_ATTEMPTS_IN_3S).contains(&attempts),
        "{attempts} attempts"
    );
}
