//! SASL against the embedded broker over real sockets, with librdkafka (kcat) on the other side:
//! mqnet's producer authenticates with SCRAM-SHA-512 and kcat reads back with the same settings;
//! kcat produces over SASL (PLAIN and SCRAM) and reads back; a wrong password fails the records
//! with an authentication error and no reconnect storm. The security protocol is a parameter of
//! each run (SASL_PLAINTEXT here; SASL_SSL runs join once the TLS transport is in).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{check_exactly_once_in_order, WAIT};
use mqnet::broker::sasl::SaslServerConfig;
use mqnet::broker::{Broker, BrokerConfig};
use mqnet::client::{ClientConfig, SaslSettings, SecurityProtocol};
use mqnet::producer::{DeliveryFuture, ProduceError, Producer, ProducerConfig, ProducerRecord};
use mqnet::protocol::sasl::{Mechanism, SaslClient, SaslCredentials, SaslError, SaslStep};

const USER: &str = "alice";
const PASSWORD: &str = "alice-secret";

fn sasl_broker(topic: &str, partitions: i32) -> Broker {
    common::init_log();
    let sasl = SaslServerConfig::new([(USER, PASSWORD), ("bob", "bob-secret")], &[]).unwrap();
    let b = Broker::start(BrokerConfig {
        sasl: Some(sasl),
        ..BrokerConfig::default()
    })
    .expect("broker");
    b.create_topic(topic, partitions).expect("topic");
    b
}

fn producer_config(
    bootstrap: &str,
    protocol: SecurityProtocol,
    mechanism: &str,
    password: &str,
) -> ProducerConfig {
    ProducerConfig::new(bootstrap)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .client(
            ClientConfig::default()
                .reconnect_backoff(Duration::from_millis(20))
                .reconnect_backoff_max(Duration::from_millis(200))
                .request_timeout(Duration::from_secs(5))
                .security_protocol(protocol)
                .sasl(SaslSettings {
                    mechanism: Some(mechanism.to_owned()),
                    username: USER.to_owned(),
                    password: password.to_owned(),
                }),
        )
}

/// kcat's `-X` settings for `protocol` and `mechanism` as `USER`.
fn kcat_security(protocol: SecurityProtocol, mechanism: &str) -> Vec<String> {
    [
        format!("security.protocol={}", protocol.name()),
        format!("sasl.mechanisms={mechanism}"),
        format!("sasl.username={USER}"),
        format!("sasl.password={PASSWORD}"),
    ]
    .into_iter()
    .flat_map(|x| ["-X".to_owned(), x])
    .collect()
}

/// kcat reading `topic` from the beginning to the end, CRCs checked, with the security settings.
fn kcat_read(
    bootstrap: &str,
    topic: &str,
    protocol: SecurityProtocol,
    mechanism: &str,
) -> Vec<(i32, i64, String, String)> {
    common::kcat_with(bootstrap, topic, &kcat_security(protocol, mechanism))
}

fn mqnet_produces_and_kcat_reads_back(protocol: SecurityProtocol, mechanism: &str) {
    let topic = format!("mqnet-{mechanism}");
    let broker = sasl_broker(&topic, 2);
    let bootstrap = broker.bootstrap_servers();
    let producer = Producer::new(producer_config(&bootstrap, protocol, mechanism, PASSWORD))
        .expect("producer");
    let n = 2_000;
    let futures: Vec<DeliveryFuture> = (0..n)
        .map(|i| {
            producer.send(ProducerRecord::new(&topic, format!("value-{i}")).key(i.to_string()))
        })
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        f.wait_timeout(WAIT)
            .unwrap_or_else(|| panic!("record {i} never completed"))
            .unwrap_or_else(|e| panic!("record {i} failed: {e}"));
    }
    producer.close(Duration::from_secs(10));
    let got = kcat_read(&bootstrap, &topic, protocol, mechanism);
    check_exactly_once_in_order(&got, n, 2, true);
    assert_eq!(broker.stats().authentication_failures, 0);
}

#[test]
fn mqnet_producer_over_sasl_scram_sha_512_read_back_by_kcat() {
    mqnet_produces_and_kcat_reads_back(SecurityProtocol::SaslPlaintext, "SCRAM-SHA-512");
}

#[test]
fn mqnet_producer_over_sasl_plain_and_scram_sha_256_read_back_by_kcat() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256"] {
        mqnet_produces_and_kcat_reads_back(SecurityProtocol::SaslPlaintext, mechanism);
    }
}

#[test]
fn kcat_produces_over_sasl_and_reads_back() {
    let protocol = SecurityProtocol::SaslPlaintext;
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let topic = format!("kcat-{mechanism}");
        let broker = sasl_broker(&topic, 2);
        let bootstrap = broker.bootstrap_servers();
        let n = 500;
        let mut child = Command::new("kcat")
            .args(["-P", "-b", &bootstrap, "-t", &topic, "-K", ":"])
            .args(["-X", "acks=all"])
            .args(kcat_security(protocol, mechanism))
            .stdin(Stdio::piped())
            .spawn()
            .expect("kcat");
        {
            let mut stdin = child.stdin.take().unwrap();
            for i in 0..n {
                writeln!(stdin, "{i}:value-{i}").unwrap();
            }
        }
        assert!(child.wait().expect("kcat -P").success(), "{mechanism}");
        let total: i64 = (0..2)
            .map(|p| broker.high_watermark(&topic, p).unwrap())
            .sum();
        assert_eq!(total, n as i64, "{mechanism}: records in the logs");
        check_exactly_once_in_order(
            &kcat_read(&bootstrap, &topic, protocol, mechanism),
            n,
            2,
            false,
        );
    }
}

#[test]
fn a_wrong_password_fails_the_records_with_the_brokers_message_and_no_reconnect_storm() {
    for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
        let topic = "denied";
        let broker = sasl_broker(topic, 1);
        let bootstrap = broker.bootstrap_servers();
        let cfg = producer_config(
            &bootstrap,
            SecurityProtocol::SaslPlaintext,
            mechanism,
            "wrong",
        );
        let producer = Producer::new(cfg).expect("producer");
        let started = Instant::now();
        let err = producer
            .send(ProducerRecord::new(topic, "v"))
            .wait_timeout(WAIT)
            .expect("completed")
            .expect_err("must fail");
        let ProduceError::Authentication { message } = &err else {
            panic!("{mechanism}: {err:?}");
        };
        assert!(message.contains("Authentication failed"), "{message}");
        // Far below delivery.timeout.ms: the failure is not retried until the deadline.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        // Later records fail at once with the same error.
        let again = producer
            .send(ProducerRecord::new(topic, "v2"))
            .wait_timeout(WAIT)
            .expect("completed");
        assert!(
            matches!(again, Err(ProduceError::Authentication { .. })),
            "{again:?}"
        );
        // With a 20-200 ms reconnect backoff, a producer that retried would connect a few times a
        // second; this one connected once and stopped. Observed over a bounded window.
        let attempts = broker.stats().connections_accepted;
        let window = Instant::now() + Duration::from_secs(2);
        while Instant::now() < window {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                broker.stats().connections_accepted,
                attempts,
                "{mechanism}: reconnected"
            );
        }
        assert_eq!(attempts, 1, "{mechanism}: connection attempts");
        assert_eq!(broker.stats().authentication_failures, 1);
        producer.close(Duration::from_secs(5));
    }
}

/// A broker of `nodes` nodes whose SASL sessions last `lifetime_ms` (KIP-368), with `topic`.
fn broker_with_lifetime(nodes: usize, topic: &str, partitions: i32, lifetime_ms: i64) -> Broker {
    common::init_log();
    let sasl = SaslServerConfig::new([(USER, PASSWORD), ("bob", "bob-secret")], &[])
        .unwrap()
        .session_lifetime_ms(lifetime_ms);
    let b = Broker::start(BrokerConfig {
        nodes,
        sasl: Some(sasl),
        ..BrokerConfig::default()
    })
    .expect("broker");
    b.create_topic(topic, partitions).expect("topic");
    b
}

#[test]
fn a_session_with_a_lifetime_is_renewed_in_band_on_the_same_connections() {
    const LIFETIME_MS: u64 = 500;
    let topic = "renewed";
    let nodes = 2;
    let broker = broker_with_lifetime(nodes, topic, 2, LIFETIME_MS as i64);
    let bootstrap = broker.bootstrap_servers();
    let cfg = producer_config(
        &bootstrap,
        SecurityProtocol::SaslPlaintext,
        "SCRAM-SHA-512",
        PASSWORD,
    );
    let producer = Producer::new(cfg).expect("producer");
    // Per node of the producer's client that connected (the bootstrap node and each broker
    // node): (connections made, re-authentications).
    let per_node = |p: &Producer| -> Vec<(u64, u64)> {
        p.metrics()
            .network
            .nodes
            .iter()
            .filter(|n| n.connections_created > 0)
            .map(|n| (n.connections_created, n.reauthentications))
            .collect()
    };
    let reauths = |p: &Producer| -> Vec<u64> { per_node(p).iter().map(|n| n.1).collect() };
    // Records keep flowing for at least four lifetimes, and until every connection renewed its
    // session twice (bounded in count and time).
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let min_run = Duration::from_millis(4 * LIFETIME_MS);
    let mut futures: Vec<DeliveryFuture> = Vec::new();
    loop {
        let i = futures.len();
        futures.push(
            producer.send(ProducerRecord::new(topic, format!("value-{i}")).key(i.to_string())),
        );
        if i % 10 == 9 {
            let r = reauths(&producer);
            if started.elapsed() >= min_run && !r.is_empty() && r.iter().all(|&n| n >= 2) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline && futures.len() < 20_000,
            "sessions not renewed twice: {:?} after {} records",
            reauths(&producer),
            futures.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let n = futures.len();
    for (i, f) in futures.into_iter().enumerate() {
        f.wait_timeout(WAIT)
            .unwrap_or_else(|| panic!("record {i} never completed"))
            .unwrap_or_else(|e| panic!("record {i} failed: {e}"));
    }
    let renewed = reauths(&producer);
    let connections = per_node(&producer);
    producer.close(Duration::from_secs(5));
    // Every record is in the logs once (idempotent producer; no resend appended twice).
    let total: i64 = (0..2)
        .map(|p| broker.high_watermark(topic, p).unwrap())
        .sum();
    assert_eq!(total, n as i64, "records in the logs");
    let stats = broker.stats();
    // One connection per broker node, plus the bootstrap connection (a node of its own in the
    // client, as in Kafka's): each renewed on the wire, none replaced.
    assert_eq!(connections.len(), nodes + 1, "{connections:?}");
    assert!(connections.iter().all(|n| n.0 == 1), "{connections:?}");
    assert_eq!(
        stats.connections_accepted,
        nodes as u64 + 1,
        "connections accepted by the broker ({connections:?})"
    );
    assert!(renewed.iter().all(|&r| r >= 2), "{renewed:?}");
    // The broker accepted at least those (one more may finish between the snapshot and close).
    assert!(
        stats.reauthentications >= renewed.iter().sum::<u64>(),
        "{} < {renewed:?}",
        stats.reauthentications
    );
    assert_eq!(stats.authentication_failures, 0);
    assert_eq!(stats.expired_sessions_closed, 0);
}

/// Authenticates a raw connection as `user` with SCRAM-SHA-512 (SaslHandshake v1,
/// SaslAuthenticate v1); returns the session lifetime, or the broker's refusal.
fn raw_authenticate(
    raw: &mut common::Raw,
    user: &str,
    password: &str,
    corr: &mut i32,
) -> Result<i64, SaslError> {
    raw_authenticate_with(raw, "SCRAM-SHA-512", user, password, corr)
}

fn raw_authenticate_with(
    raw: &mut common::Raw,
    mechanism: &str,
    user: &str,
    password: &str,
    corr: &mut i32,
) -> Result<i64, SaslError> {
    let creds = SaslCredentials {
        mechanism: Mechanism::from_name(mechanism).unwrap(),
        username: user.to_owned(),
        password: password.to_owned(),
    };
    let mut client = SaslClient::new(creds, "raw", 1);
    *corr += 1;
    let mut step = client.start(*corr);
    for _ in 0..5 {
        match step {
            SaslStep::Send(frame) => {
                let resp = raw.call(&frame).expect("a SASL answer");
                *corr += 1;
                step = client.on_response(&resp, *corr);
            }
            SaslStep::Done {
                session_lifetime_ms,
            } => return Ok(session_lifetime_ms),
            SaslStep::Fail(e) => return Err(e),
        }
    }
    panic!("runaway SASL exchange");
}

#[test]
fn the_broker_closes_a_connection_whose_session_expired_and_renews_one_re_authenticated() {
    const LIFETIME: Duration = Duration::from_millis(1_500);
    let topic = "lapsed";
    let broker = broker_with_lifetime(1, topic, 1, LIFETIME.as_millis() as i64);
    let addr = broker.bootstrap_servers();
    let addr = addr.split(',').next().unwrap();
    let one = common::batch(1, -1, -1, -1);
    let mut corr = 0;

    // Authenticated, served; after the lifetime a Produce closes the connection (KIP-368).
    let mut lapsing = common::Raw::connect(addr);
    assert_eq!(
        raw_authenticate(&mut lapsing, USER, PASSWORD, &mut corr),
        Ok(LIFETIME.as_millis() as i64)
    );
    let authenticated = Instant::now();
    assert_eq!(common::produce(&mut lapsing, topic, 0, &one), (0, 0));

    // Another connection re-authenticates in band before its session ends.
    let mut renewing = common::Raw::connect(addr);
    raw_authenticate(&mut renewing, USER, PASSWORD, &mut corr).expect("authenticated");
    let renewing_since = Instant::now();
    assert_eq!(common::produce(&mut renewing, topic, 0, &one), (0, 1));
    let midway = renewing_since + LIFETIME / 2;
    std::thread::sleep(midway.saturating_duration_since(Instant::now()));
    raw_authenticate(&mut renewing, USER, PASSWORD, &mut corr).expect("re-authenticated");
    let renewed = Instant::now();

    // Past the first sessions' end (counted from when their last answer arrived, so the broker's
    // own expiry is behind us), well within the renewed one's.
    let past = authenticated.max(renewing_since) + LIFETIME + Duration::from_millis(50);
    std::thread::sleep(past.saturating_duration_since(Instant::now()));
    assert!(
        renewed.elapsed() < LIFETIME - Duration::from_millis(100),
        "the machine stalled past the renewed session ({:?}); nothing can be concluded",
        renewed.elapsed()
    );
    assert_eq!(
        common::produce(&mut renewing, topic, 0, &one),
        (0, 2),
        "a renewed session serves"
    );
    let frame = common::produce_frame(7, topic, 0, &one);
    assert_eq!(lapsing.call(&frame), None, "an expired session is closed");
    let stats = broker.stats();
    assert_eq!(stats.expired_sessions_closed, 1);
    assert_eq!(stats.reauthentications, 1);
    assert_eq!(broker.high_watermark(topic, 0), Some(3));

    // A re-authentication as another user is refused (Kafka: no change of principal), and the
    // connection serves nothing more.
    let mut switching = common::Raw::connect(addr);
    raw_authenticate(&mut switching, USER, PASSWORD, &mut corr).expect("authenticated");
    let refused = raw_authenticate(&mut switching, "bob", "bob-secret", &mut corr);
    assert!(
        matches!(&refused, Err(SaslError::AuthenticationFailed { message: Some(m), .. })
            if m.contains("Cannot change principals")),
        "{refused:?}"
    );
    assert_eq!(switching.call(&frame), None);
    assert_eq!(broker.high_watermark(topic, 0), Some(3));
    assert_eq!(broker.stats().authentication_failures, 1);

    // A re-authentication with another mechanism is refused (Kafka keeps the session's
    // mechanism), naming the one the session began with; the connection serves nothing more.
    let mut other_mechanism = common::Raw::connect(addr);
    raw_authenticate(&mut other_mechanism, USER, PASSWORD, &mut corr).expect("authenticated");
    let refused = raw_authenticate_with(&mut other_mechanism, "PLAIN", USER, PASSWORD, &mut corr);
    assert!(
        matches!(&refused, Err(SaslError::UnsupportedMechanism { enabled, .. })
            if enabled == &["SCRAM-SHA-512".to_owned()]),
        "{refused:?}"
    );
    assert_eq!(other_mechanism.call(&frame), None);
    assert_eq!(broker.high_watermark(topic, 0), Some(3));
    assert_eq!(broker.stats().authentication_failures, 2);
}
