//! TLS channels of the Selector over 127.0.0.1, client and server side, with certificates made by
//! the test (`tls_common`): echo of frames of every size through TLS, mutual TLS, and the typed
//! failures — expired certificate, wrong host, unknown CA, missing client certificate, a server
//! that drops mid-handshake, a plaintext client on a TLS port and a TLS client on a plaintext port.
//! Every loop is bounded in time.

mod tls_common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::net::tls::{self, rustls, TlsClientOptions};
use mqnet::net::{
    ChannelId, CloseMode, DisconnectReason, Disconnected, Selector, SocketOptions, TlsFailure,
};
use tls_common::{Leaf, Pki};

const DEADLINE: Duration = Duration::from_secs(20);
const TICK: Duration = Duration::from_millis(5);

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn client_tls(pki: &Pki, cert: Option<&Leaf>, verify_hostname: bool) -> Arc<rustls::ClientConfig> {
    tls::client_config(&TlsClientOptions {
        ca: Some(pki.ca_pem.clone()),
        certificate: cert.map(|l| l.cert.clone()),
        key: cert.map(|l| l.key.clone()),
        verify_hostname,
    })
    .expect("client config")
}

fn server_tls(server: &Leaf, client_ca: Option<&Pki>) -> Arc<rustls::ServerConfig> {
    tls::server_config(
        &server.cert,
        &server.key,
        client_ca.map(|p| p.ca_pem.as_path()),
    )
    .expect("server config")
}

/// A TLS (or plaintext) echo server Selector and a client Selector, polled in turn.
struct Pair {
    server: Selector,
    client: Selector,
    addr: SocketAddr,
    server_disconnects: Vec<Disconnected>,
    client_disconnects: Vec<Disconnected>,
    received: Vec<Bytes>,
}

impl Pair {
    fn new(
        server_cfg: Option<Arc<rustls::ServerConfig>>,
        client_cfg: Option<Arc<rustls::ClientConfig>>,
    ) -> Pair {
        let mut server = Selector::new().unwrap();
        let l = server.listen(localhost()).unwrap();
        if let Some(cfg) = server_cfg {
            server.set_listener_tls(l, Some(cfg)).unwrap();
        }
        let addr = server.listener_addr(l).unwrap();
        let mut client = Selector::new().unwrap();
        client.set_tls_client(client_cfg);
        Pair {
            server,
            client,
            addr,
            server_disconnects: Vec::new(),
            client_disconnects: Vec::new(),
            received: Vec::new(),
        }
    }

    /// One round: the server echoes what it received; the client collects.
    fn step(&mut self) {
        self.server.poll(Some(TICK)).unwrap();
        let echo: Vec<_> = self.server.drain_completed_receives().collect();
        for r in echo {
            let _ = self.server.send(r.channel, r.frame);
        }
        self.server_disconnects
            .extend_from_slice(self.server.disconnected());
        self.client.poll(Some(TICK)).unwrap();
        self.client_disconnects
            .extend_from_slice(self.client.disconnected());
        let got: Vec<_> = self
            .client
            .drain_completed_receives()
            .map(|r| r.frame)
            .collect();
        self.received.extend(got);
    }

    fn run_until(&mut self, what: &str, mut done: impl FnMut(&Pair) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
            self.step();
        }
    }

    fn client_reason(&self, ch: ChannelId) -> Option<DisconnectReason> {
        self.client_disconnects
            .iter()
            .find(|d| d.channel == ch)
            .map(|d| d.reason)
    }
}

fn payload(i: usize, len: usize) -> Bytes {
    Bytes::from((0..len).map(|j| (i * 31 + j) as u8).collect::<Vec<u8>>())
}

#[test]
fn echo_frames_of_every_size_through_tls() {
    let pki = Pki::new("echo");
    let server = pki.leaf("server", &["127.0.0.1", "localhost"]);
    let mut p = Pair::new(
        Some(server_tls(&server, None)),
        Some(client_tls(&pki, None, true)),
    );
    let ch = p.client.connect(p.addr, &SocketOptions::default()).unwrap();
    // Staged before the handshake: they wait in the session and leave when it finishes.
    let sizes = [
        0usize,
        1,
        100,
        16_383,
        16_384,
        16_385,
        70_000,
        1 << 20,
        5,
        3 << 20,
    ];
    let sent: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| payload(i, n))
        .collect();
    let mut next = 0;
    let start = Instant::now();
    while p.received.len() < sent.len() {
        assert!(
            start.elapsed() < DEADLINE,
            "echo stalled at {} of {}",
            p.received.len(),
            sent.len()
        );
        if next < sent.len()
            && p.client.is_writable(ch)
            && p.client.send(ch, sent[next].clone()).is_ok()
        {
            next += 1;
        }
        p.step();
        assert!(
            p.client_disconnects.is_empty(),
            "client: {:?}",
            p.client_disconnects
        );
        assert!(
            p.server_disconnects.is_empty(),
            "server: {:?}",
            p.server_disconnects
        );
    }
    assert_eq!(p.received, sent);
    let session = p.client.tls_session(ch).expect("a TLS channel");
    assert!(!session.is_handshaking());
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert!(session.cipher_suite().is_some());

    // Graceful close: close_notify reaches the server, which reports a clean close.
    p.client
        .close(
            ch,
            CloseMode::Graceful {
                timeout: Duration::from_secs(5),
            },
        )
        .unwrap();
    p.run_until("the server to see the close", |p| {
        !p.server_disconnects.is_empty()
    });
    assert_eq!(p.server_disconnects[0].reason, DisconnectReason::PeerClosed);
}

#[test]
fn tls12_only_client_negotiates_tls12() {
    let pki = Pki::new("tls12");
    let server = pki.leaf("server", &["127.0.0.1"]);
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add_parsable_certificates(tls::load_certs(&pki.ca_pem).unwrap());
        Arc::new(r)
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut p = Pair::new(Some(server_tls(&server, None)), Some(Arc::new(cfg)));
    let ch = p.client.connect(p.addr, &SocketOptions::default()).unwrap();
    p.client.send(ch, payload(1, 40_000)).unwrap();
    p.run_until("the echo", |p| {
        !p.received.is_empty() || !p.client_disconnects.is_empty()
    });
    assert_eq!(
        p.received,
        vec![payload(1, 40_000)],
        "{:?}",
        p.client_disconnects
    );
    let s = p.client.tls_session(ch).unwrap();
    assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
}

#[test]
fn mutual_tls_accepts_a_signed_client_and_rejects_a_client_without_certificate() {
    let pki = Pki::new("mtls");
    let server = pki.leaf("server", &["127.0.0.1"]);
    let client_cert = pki.leaf("client", &["client.test"]);
    let server_cfg = server_tls(&server, Some(&pki));

    let mut p = Pair::new(
        Some(server_cfg.clone()),
        Some(client_tls(&pki, Some(&client_cert), true)),
    );
    let ch = p.client.connect(p.addr, &SocketOptions::default()).unwrap();
    p.client.send(ch, payload(2, 1000)).unwrap();
    p.run_until("the echo", |p| {
        !p.received.is_empty() || !p.client_disconnects.is_empty()
    });
    assert_eq!(
        p.received,
        vec![payload(2, 1000)],
        "{:?}",
        p.client_disconnects
    );

    let mut p = Pair::new(Some(server_cfg), Some(client_tls(&pki, None, true)));
    let ch = p.client.connect(p.addr, &SocketOptions::default()).unwrap();
    p.client.send(ch, payload(3, 10)).unwrap();
    p.run_until("both sides to fail", |p| {
        !p.client_disconnects.is_empty() && !p.server_disconnects.is_empty()
    });
    assert!(p.received.is_empty());
    assert_eq!(
        p.server_disconnects[0].reason,
        DisconnectReason::HandshakeFailed(TlsFailure::NoCertificate)
    );
    assert!(
        matches!(
            p.client_reason(ch),
            Some(DisconnectReason::HandshakeFailed(
                TlsFailure::AlertReceived(_)
            ))
        ),
        "{:?}",
        p.client_disconnects
    );
}

/// Connects a client with `client_cfg` to a TLS server with `server`, returns the client's reason.
fn client_failure(server: &Leaf, client_cfg: Arc<rustls::ClientConfig>) -> DisconnectReason {
    let mut p = Pair::new(Some(server_tls(server, None)), Some(client_cfg));
    let ch = p.client.connect(p.addr, &SocketOptions::default()).unwrap();
    p.client.send(ch, payload(4, 10)).unwrap();
    p.run_until("the client to fail", |p| p.client_reason(ch).is_some());
    assert!(p.received.is_empty());
    p.client_reason(ch).unwrap()
}

#[test]
fn expired_certificate_is_a_typed_handshake_failure() {
    let pki = Pki::new("expired");
    let server = pki.expired("server", &["127.0.0.1"]);
    let reason = client_failure(&server, client_tls(&pki, None, true));
    assert_eq!(
        reason,
        DisconnectReason::HandshakeFailed(TlsFailure::CertificateExpired)
    );
    assert!(reason.is_handshake_failure());
}

#[test]
fn wrong_host_certificate_fails_unless_identification_is_off() {
    let pki = Pki::new("wronghost");
    let server = pki.leaf("server", &["wrong.example"]);
    let reason = client_failure(&server, client_tls(&pki, None, true));
    assert_eq!(
        reason,
        DisconnectReason::HandshakeFailed(TlsFailure::CertificateNotValidForName)
    );
    // ssl.endpoint.identification.algorithm=none: the chain is still checked, the name is not.
    let mut p = Pair::new(
        Some(server_tls(&server, None)),
        Some(client_tls(&pki, None, false)),
    );
    let ch = p.client.connect(p.addr, &SocketOptions::default()).unwrap();
    p.client.send(ch, payload(5, 10)).unwrap();
    p.run_until("the echo", |p| {
        !p.received.is_empty() || !p.client_disconnects.is_empty()
    });
    assert_eq!(
        p.received,
        vec![payload(5, 10)],
        "{:?}",
        p.client_disconnects
    );
}

#[test]
fn host_name_is_verified_against_the_named_host() {
    let pki = Pki::new("named");
    let server = pki.leaf("server", &["localhost"]);
    let mut p = Pair::new(
        Some(server_tls(&server, None)),
        Some(client_tls(&pki, None, true)),
    );
    let ch = p
        .client
        .connect_named(p.addr, "localhost", &SocketOptions::default())
        .unwrap();
    p.client.send(ch, payload(6, 10)).unwrap();
    p.run_until("the echo", |p| {
        !p.received.is_empty() || !p.client_disconnects.is_empty()
    });
    assert_eq!(
        p.received,
        vec![payload(6, 10)],
        "{:?}",
        p.client_disconnects
    );
}

#[test]
fn untrusted_ca_with_identification_off_still_fails() {
    let pki = Pki::new("trusted");
    let other = Pki::new("other");
    let server = other.leaf("server", &["127.0.0.1"]);
    let reason = client_failure(&server, client_tls(&pki, None, false));
    assert_eq!(
        reason,
        DisconnectReason::HandshakeFailed(TlsFailure::UnknownIssuer)
    );
}

#[test]
fn server_dropping_mid_handshake_is_a_handshake_failure() {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let pki = Pki::new("drop");
    let mut client = Selector::new().unwrap();
    client.set_tls_client(Some(client_tls(&pki, None, true)));
    let ch = client.connect(addr, &SocketOptions::default()).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    // Read the whole first record (the ClientHello), polling the client meanwhile, then vanish.
    let mut got = Vec::new();
    let start = Instant::now();
    let complete =
        |b: &[u8]| b.len() >= 5 && b.len() >= 5 + usize::from(u16::from_be_bytes([b[3], b[4]]));
    while !complete(&got) {
        assert!(start.elapsed() < DEADLINE, "no ClientHello");
        client.poll(Some(TICK)).unwrap();
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got[0], 0x16, "a TLS handshake record");
    drop(s);
    let start = Instant::now();
    let reason = loop {
        assert!(start.elapsed() < DEADLINE, "no disconnect");
        client.poll(Some(TICK)).unwrap();
        if let Some(d) = client.disconnected().iter().find(|d| d.channel == ch) {
            break d.reason;
        }
    };
    assert_eq!(
        reason,
        DisconnectReason::HandshakeFailed(TlsFailure::ClosedDuringHandshake)
    );
}

#[test]
fn plaintext_client_on_a_tls_port_fails_typed_on_both_sides() {
    let pki = Pki::new("plain-on-tls");
    let server = pki.leaf("server", &["127.0.0.1"]);
    let mut p = Pair::new(Some(server_tls(&server, None)), None);
    let ch = p.client.connect(p.addr, &SocketOptions::default()).unwrap();
    p.client.send(ch, payload(7, 64)).unwrap();
    p.run_until("both sides to close", |p| {
        !p.server_disconnects.is_empty() && p.client_reason(ch).is_some()
    });
    assert_eq!(
        p.server_disconnects[0].reason,
        DisconnectReason::HandshakeFailed(TlsFailure::NotTls)
    );
    // The client reads the server's alert as a frame header it rejects, or sees the close.
    let reason = p.client_reason(ch).unwrap();
    assert!(
        matches!(
            reason,
            DisconnectReason::InvalidFrame(_)
                | DisconnectReason::PeerClosed
                | DisconnectReason::PeerClosedMidFrame { .. }
                | DisconnectReason::Io(_)
        ),
        "{reason:?}"
    );
    assert!(p.received.is_empty());
}

#[test]
fn tls_client_on_a_plaintext_port_fails_typed_on_both_sides() {
    let pki = Pki::new("tls-on-plain");
    let mut p = Pair::new(None, Some(client_tls(&pki, None, true)));
    let ch = p.client.connect(p.addr, &SocketOptions::default()).unwrap();
    p.client.send(ch, payload(8, 64)).unwrap();
    p.run_until("both sides to close", |p| {
        !p.server_disconnects.is_empty() && p.client_reason(ch).is_some()
    });
    // The ClientHello's first bytes read as an absurd frame length.
    assert!(
        matches!(
            p.server_disconnects[0].reason,
            DisconnectReason::InvalidFrame(_)
        ),
        "{:?}",
        p.server_disconnects
    );
    assert_eq!(
        p.client_reason(ch),
        Some(DisconnectReason::HandshakeFailed(
            TlsFailure::ClosedDuringHandshake
        ))
    );
}

#[test]
fn a_burst_of_frames_through_one_tls_channel_arrives_in_order() {
    let pki = Pki::new("burst");
    let server = pki.leaf("server", &["127.0.0.1"]);
    let mut p = Pair::new(
        Some(server_tls(&server, None)),
        Some(client_tls(&pki, None, true)),
    );
    let ch = p.client.connect(p.addr, &SocketOptions::default()).unwrap();
    let sent: Vec<Bytes> = (0..500).map(|i| payload(i, 1 + (i * 97) % 5000)).collect();
    let mut next = 0;
    let start = Instant::now();
    while p.received.len() < sent.len() {
        assert!(
            start.elapsed() < DEADLINE,
            "burst stalled at {}",
            p.received.len()
        );
        while next < sent.len() && p.client.send(ch, sent[next].clone()).is_ok() {
            next += 1;
        }
        p.step();
        assert!(
            p.client_disconnects.is_empty(),
            "{:?}",
            p.client_disconnects
        );
    }
    assert_eq!(p.received, sent);
}
