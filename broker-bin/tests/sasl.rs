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

#[test]
fn a_session_with_a_lifetime_is_renewed_by_reconnecting_and_records_keep_flowing() {
    common::init_log();
    let topic = "renewed";
    let sasl = SaslServerConfig::new([(USER, PASSWORD)], &[])
        .unwrap()
        .session_lifetime_ms(1_500);
    let broker = Broker::start(BrokerConfig {
        sasl: Some(sasl),
        ..BrokerConfig::default()
    })
    .expect("broker");
    broker.create_topic(topic, 1).expect("topic");
    let bootstrap = broker.bootstrap_servers();
    let cfg = producer_config(
        &bootstrap,
        SecurityProtocol::SaslPlaintext,
        "SCRAM-SHA-512",
        PASSWORD,
    );
    let producer = Producer::new(cfg).expect("producer");
    producer
        .send(ProducerRecord::new(topic, "first"))
        .wait_timeout(WAIT)
        .expect("completed")
        .expect("delivered");
    let baseline = broker.stats().connections_accepted;
    // Keep producing until a connection was renewed (bounded): each record must be delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 1;
    while broker.stats().connections_accepted == baseline {
        assert!(Instant::now() < deadline, "no renewal within 30 s");
        producer
            .send(ProducerRecord::new(topic, format!("v{sent}")))
            .wait_timeout(WAIT)
            .expect("completed")
            .expect("delivered");
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    producer
        .send(ProducerRecord::new(topic, "after"))
        .wait_timeout(WAIT)
        .expect("completed")
        .expect("delivered after the renewal");
    sent += 1;
    producer.close(Duration::from_secs(5));
    assert_eq!(broker.high_watermark(topic, 0), Some(sent));
    assert_eq!(broker.stats().authentication_failures, 0);
}
