//! The client's SASL handshake ([`ApiVersionsHandshake::with_sasl`]) against a scripted broker,
//! sans-IO: every frame the hook sends is answered by the broker model below, so the exchange is
//! deterministic and needs no clock. Wrong password, unknown mechanism, a forged server
//! signature, a connection dropped mid-exchange, and the session lifetime (KIP-368).

use bytes::{BufMut, Bytes, BytesMut};

use super::sasl::*;
use super::scram::{ScramCredentials, ScramServer, MIN_ITERATIONS};
use super::ApiVersionsHandshake;
use crate::client::{Handshake, HandshakeStep, NodeId};

/// A request frame's api key, version, correlation id and body (header v1, or v2 for
/// SaslAuthenticate v2).
pub(super) fn request_parts(frame: &[u8]) -> (i16, i16, i32, &[u8]) {
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let corr = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let id_len = i16::from_be_bytes([frame[8], frame[9]]).max(0) as usize;
    let mut at = 10 + id_len;
    let flexible = (api_key == 36 && version >= 2) || (api_key == 18 && version >= 3);
    if flexible {
        assert_eq!(frame[at], 0, "no header tagged fields");
        at += 1;
    }
    (api_key, version, corr, &frame[at..])
}

/// A broker model: one user, some mechanisms, and what to break.
pub(super) struct Broker {
    pub(super) password: &'static str,
    mechanisms: Vec<&'static str>,
    pub(super) forge_signature: bool,
    pub(super) lifetime_ms: i64,
    scram: Option<ScramServer>,
    handshaken: Option<Mechanism>,
}

impl Broker {
    pub(super) fn new(password: &'static str) -> Self {
        Broker {
            password,
            mechanisms: vec!["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            forge_signature: false,
            lifetime_ms: 0,
            scram: None,
            handshaken: None,
        }
    }

    fn api_versions(corr: i32) -> Bytes {
        // v3 body: error, compact array of (key, min, max, tags), throttle, tags.
        let keys: [(i16, i16, i16); 4] = [(0, 3, 9), (17, 0, 1), (18, 0, 3), (36, 0, 2)];
        let mut b = BytesMut::new();
        b.put_i32(corr);
        b.put_i16(0);
        b.put_u8(keys.len() as u8 + 1);
        for (k, lo, hi) in keys {
            b.put_i16(k);
            b.put_i16(lo);
            b.put_i16(hi);
            b.put_u8(0);
        }
        b.put_i32(0);
        b.put_u8(0);
        b.freeze()
    }

    pub(super) fn answer(&mut self, frame: &[u8]) -> Bytes {
        let (api_key, version, corr, body) = request_parts(frame);
        match api_key {
            18 => Self::api_versions(corr),
            17 => {
                let m = decode_sasl_handshake_request(body).unwrap();
                let on = self.mechanisms.contains(&m);
                self.handshaken = on.then(|| Mechanism::from_name(m).unwrap());
                let code = if on { 0 } else { UNSUPPORTED_SASL_MECHANISM };
                encode_sasl_handshake_response(corr, code, &self.mechanisms)
            }
            36 => {
                let bytes = decode_sasl_authenticate_request(version, body).unwrap();
                let (code, msg, out) = self.authenticate(bytes);
                encode_sasl_authenticate_response(
                    version,
                    corr,
                    &SaslAuthenticateResponse {
                        error_code: code,
                        error_message: msg,
                        auth_bytes: out,
                        session_lifetime_ms: if code == 0 { self.lifetime_ms } else { 0 },
                    },
                )
            }
            k => panic!("unexpected api {k}"),
        }
    }

    fn authenticate(&mut self, bytes: &[u8]) -> (i16, Option<String>, Vec<u8>) {
        let refused = (
            SASL_AUTHENTICATION_FAILED,
            Some("Authentication failed: Invalid username or password".to_owned()),
            Vec::new(),
        );
        match self.handshaken {
            Some(Mechanism::Plain) => match parse_plain_message(bytes) {
                Ok(("alice", p)) if p == self.password => (0, None, Vec::new()),
                _ => refused,
            },
            Some(Mechanism::Scram(h)) => {
                let creds = ScramCredentials::new(h, self.password, b"pepper", MIN_ITERATIONS);
                match self.scram.take() {
                    None => {
                        let mut s = ScramServer::new(h, "srv".into());
                        match s.handle_client_first(bytes, |_| Some(creds.clone())) {
                            Ok(first) => {
                                self.scram = Some(s);
                                (0, None, first.into_bytes())
                            }
                            Err(_) => refused,
                        }
                    }
                    Some(mut s) => match s.handle_client_final(bytes) {
                        Ok(_) if self.forge_signature => (
                            0,
                            None,
                            b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_vec(),
                        ),
                        Ok(fin) => (0, None, fin.into_bytes()),
                        Err(_) => refused,
                    },
                }
            }
            None => (ILLEGAL_SASL_STATE, None, Vec::new()),
        }
    }
}

pub(super) fn creds(mechanism: &str, password: &str) -> SaslCredentials {
    SaslCredentials {
        mechanism: Mechanism::from_name(mechanism).unwrap(),
        username: "alice".into(),
        password: password.into(),
    }
}

pub(super) const NODE: NodeId = NodeId(1);

/// Runs the hook's exchange against `broker` to its end: `Ok(())` when Ready, else the
/// failure's text. Counts the frames sent.
fn run(hook: &mut ApiVersionsHandshake, broker: &mut Broker) -> (Result<(), String>, usize) {
    let mut corr = 1;
    let mut step = hook.start(NODE, corr);
    let mut sent = 0;
    loop {
        match step {
            HandshakeStep::Done => return (Ok(()), sent),
            HandshakeStep::Fail(why) => return (Err(why), sent),
            HandshakeStep::Send(frame) => {
                sent += 1;
                assert!(sent < 10, "runaway exchange");
                let resp = broker.answer(&frame);
                corr += 1;
                step = hook.on_response(NODE, resp, corr);
            }
        }
    }
}

#[test]
fn every_mechanism_authenticates_and_the_connection_is_ready() {
    for (m, frames) in [("PLAIN", 3), ("SCRAM-SHA-256", 4), ("SCRAM-SHA-512", 4)] {
        let mut hook = ApiVersionsHandshake::new("c").with_sasl(creds(m, "pw"));
        let mut broker = Broker::new("pw");
        assert_eq!(run(&mut hook, &mut broker), (Ok(()), frames), "{m}");
        assert!(hook.versions(NODE).is_some(), "{m}: versions once Ready");
        assert!(hook.take_auth_failures().is_empty());
    }
}

#[test]
fn a_wrong_password_fails_with_the_brokers_message() {
    for m in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let mut hook = ApiVersionsHandshake::new("c").with_sasl(creds(m, "wrong"));
        let (r, _) = run(&mut hook, &mut Broker::new("pw"));
        let why = r.unwrap_err();
        assert!(why.contains("Invalid username or password"), "{m}: {why}");
        let failures = hook.take_auth_failures();
        assert!(
            matches!(
                failures.as_slice(),
                [(
                    NODE,
                    SaslError::AuthenticationFailed {
                        code: 58,
                        message: Some(_)
                    }
                )]
            ),
            "{m}: {failures:?}"
        );
        assert!(hook.versions(NODE).is_none(), "{m}: not Ready");
    }
}

#[test]
fn a_mechanism_the_broker_does_not_enable_fails_naming_the_enabled_ones() {
    let mut hook = ApiVersionsHandshake::new("c").with_sasl(creds("SCRAM-SHA-512", "pw"));
    let mut broker = Broker::new("pw");
    broker.mechanisms = vec!["PLAIN"];
    let (r, sent) = run(&mut hook, &mut broker);
    assert_eq!(sent, 2, "ApiVersions and SaslHandshake only");
    assert!(r.unwrap_err().contains("enabled: PLAIN"));
    assert!(matches!(
        hook.take_auth_failures().as_slice(),
        [(NODE, SaslError::UnsupportedMechanism { .. })]
    ));
}

#[test]
fn a_broker_that_cannot_prove_it_knows_the_password_is_refused() {
    for m in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let mut hook = ApiVersionsHandshake::new("c").with_sasl(creds(m, "pw"));
        let mut broker = Broker::new("pw");
        broker.forge_signature = true;
        let (r, _) = run(&mut hook, &mut broker);
        assert!(r.unwrap_err().contains("signature"), "{m}");
        assert!(matches!(
            hook.take_auth_failures().as_slice(),
            [(
                NODE,
                SaslError::Scram(super::scram::ScramError::ServerSignatureMismatch)
            )]
        ));
        assert!(hook.versions(NODE).is_none());
    }
}

#[test]
fn a_connection_dropped_mid_exchange_starts_over_cleanly() {
    let mut hook = ApiVersionsHandshake::new("c").with_sasl(creds("SCRAM-SHA-512", "pw"));
    let mut broker = Broker::new("pw");
    // ApiVersions, SaslHandshake, then the client-first message: the connection drops.
    let HandshakeStep::Send(f) = hook.start(NODE, 1) else {
        panic!()
    };
    let HandshakeStep::Send(f) = hook.on_response(NODE, broker.answer(&f), 2) else {
        panic!()
    };
    let HandshakeStep::Send(_client_first) = hook.on_response(NODE, broker.answer(&f), 3) else {
        panic!()
    };
    hook.on_disconnect(NODE);
    // A late answer for the dead connection is refused, not taken as part of a new exchange.
    assert!(matches!(
        hook.on_response(NODE, Broker::api_versions(3), 4),
        HandshakeStep::Fail(_)
    ));
    // A fresh connection authenticates from the start against a fresh broker session.
    let mut broker = Broker::new("pw");
    assert_eq!(run(&mut hook, &mut broker), (Ok(()), 4));
    assert!(hook.take_auth_failures().is_empty());
}

#[test]
fn the_session_lifetime_is_kept_for_re_authentication() {
    let mut hook = ApiVersionsHandshake::new("c").with_sasl(creds("SCRAM-SHA-256", "pw"));
    let mut broker = Broker::new("pw");
    broker.lifetime_ms = 60_000;
    assert_eq!(run(&mut hook, &mut broker).0, Ok(()));
    assert_eq!(hook.session_lifetime_ms(NODE), Some(60_000));
    hook.on_disconnect(NODE);
    assert_eq!(hook.session_lifetime_ms(NODE), None);
    let mut broker = Broker::new("pw");
    assert_eq!(run(&mut hook, &mut broker).0, Ok(()));
    assert_eq!(
        hook.session_lifetime_ms(NODE),
        None,
        "no lifetime announced"
    );
}

#[test]
fn truncated_and_garbage_answers_fail_the_exchange_without_panicking() {
    let mut hook = ApiVersionsHandshake::new("c").with_sasl(creds("SCRAM-SHA-512", "pw"));
    let mut broker = Broker::new("pw");
    let HandshakeStep::Send(f) = hook.start(NODE, 1) else {
        panic!()
    };
    let HandshakeStep::Send(f) = hook.on_response(NODE, broker.answer(&f), 2) else {
        panic!()
    };
    let good = broker.answer(&f);
    let cut = good.slice(..good.len() - 1);
    assert!(matches!(
        hook.on_response(NODE, cut, 3),
        HandshakeStep::Fail(_)
    ));
    assert!(matches!(
        hook.take_auth_failures().as_slice(),
        [(NODE, SaslError::Protocol(_))]
    ));
}
