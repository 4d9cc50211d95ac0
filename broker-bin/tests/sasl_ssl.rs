//! SASL inside TLS (`security.protocol=SASL_SSL`) against the embedded broker, with librdkafka
//! (kcat) on the other side and certificates made by the test: mqnet's producer authenticates
//! with SCRAM-SHA-512 over TLS and kcat reads back with the same settings; kcat produces over
//! SASL_SSL and reads back; a plaintext SASL client on the TLS port gets nothing.

mod common;
#[path = "../../tests/tls_common/mod.rs"]
mod tls_common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{check_exactly_once_in_order, WAIT};
use mqnet::broker::sasl::SaslServerConfig;
use mqnet::broker::{Broker, BrokerConfig};
use mqnet::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use tls_common::{Leaf, Pki};

const USER: &str = "alice";
const PASSWORD: &str = "alice-secret";
const MECHANISM: &str = "SCRAM-SHA-512";

/// A one-node broker whose listener requires TLS (server certificate only) and SASL.
fn sasl_ssl_broker(server: &Leaf, topic: &str, partitions: i32) -> Broker {
    common::init_log();
    let mut config = BrokerConfig {
        sasl: Some(SaslServerConfig::new([(USER, PASSWORD)], &[]).expect("SASL users")),
        ..BrokerConfig::default()
    };
    config.server.tls = Some(
        mqnet::net::tls::server_config(&server.cert, &server.key, None).expect("server TLS config"),
    );
    let b = Broker::start(config).expect("broker");
    b.create_topic(topic, partitions).expect("topic");
    b
}

/// The client settings of SASL_SSL with SCRAM-SHA-512 as `USER`, in Kafka's key names (the same
/// for kcat's `-X` and for mqnet's `ProducerConfig::set`).
fn sasl_ssl_settings(pki: &Pki) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "SASL_SSL".to_string()),
        ("ssl.ca.location", pki.ca_pem.display().to_string()),
        ("sasl.mechanisms", MECHANISM.to_string()),
        ("sasl.username", USER.to_string()),
        ("sasl.password", PASSWORD.to_string()),
    ]
}

fn kcat_args(settings: &[(&str, String)]) -> Vec<String> {
    settings
        .iter()
        .flat_map(|(k, v)| ["-X".to_string(), format!("{k}={v}")])
        .collect()
}

/// kcat over every partition of `topic` with `settings`; (partition, offset, key, value).
fn kcat_consume(
    bootstrap: &str,
    topic: &str,
    settings: &[(&str, String)],
) -> Vec<(i32, i64, String, String)> {
    common::kcat_with(bootstrap, topic, &kcat_args(settings))
}

#[test]
fn mqnet_producer_over_sasl_ssl_scram_sha_512_read_back_by_kcat_over_sasl_ssl() {
    let pki = Pki::new("sasl-ssl-mqnet");
    let server = pki.leaf("broker", &["127.0.0.1", "localhost"]);
    let topic = "sasl-ssl-mqnet";
    let broker = sasl_ssl_broker(&server, topic, 2);
    let bootstrap = broker.bootstrap_servers();
    let settings = sasl_ssl_settings(&pki);

    let mut config = ProducerConfig::new(&bootstrap);
    for (k, v) in settings
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .chain([("request.timeout.ms", "10000".to_string())])
    {
        config.set(k, &v).expect(k);
    }
    let producer = Producer::new(config).expect("producer");
    let n = 2_000;
    let futures: Vec<DeliveryFuture> = (0..n)
        .map(|i| producer.send(ProducerRecord::new(topic, format!("value-{i}")).key(i.to_string())))
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        f.wait_timeout(WAIT)
            .unwrap_or_else(|| panic!("record {i} never completed"))
            .unwrap_or_else(|e| panic!("record {i} failed: {e}"));
    }
    producer.close(Duration::from_secs(10));
    let got = kcat_consume(&bootstrap, topic, &settings);
    check_exactly_once_in_order(&got, n, 2, true);
    assert_eq!(broker.stats().authentication_failures, 0);
}

#[test]
fn kcat_producer_over_sasl_ssl_read_back_and_plaintext_sasl_gets_nothing() {
    let pki = Pki::new("sasl-ssl-kcat");
    let server = pki.leaf("broker", &["127.0.0.1", "localhost"]);
    let topic = "sasl-ssl-kcat";
    let broker = sasl_ssl_broker(&server, topic, 2);
    let bootstrap = broker.bootstrap_servers();
    let settings = sasl_ssl_settings(&pki);
    let n = 1_000;
    let mut child = Command::new("kcat")
        .args([
            "-P", "-b", &bootstrap, "-t", topic, "-K", ":", "-X", "acks=all",
        ])
        .args(kcat_args(&settings))
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat");
    {
        let mut stdin = child.stdin.take().expect("kcat stdin");
        for i in 0..n {
            writeln!(stdin, "{i}:value-{i}").expect("write to kcat");
        }
    }
    assert!(child.wait().expect("kcat -P").success());
    let total: i64 = (0..2)
        .map(|p| broker.high_watermark(topic, p).expect("high watermark"))
        .sum();
    assert_eq!(total, n as i64, "records in the logs");
    check_exactly_once_in_order(&kcat_consume(&bootstrap, topic, &settings), n, 2, false);

    // The same SASL settings without TLS: the TLS listener never answers in Kafka's protocol, so
    // kcat (bounded by its own timeout) reads nothing.
    let plain: Vec<(&str, String)> = settings
        .iter()
        .filter(|(k, _)| !k.starts_with("ssl."))
        .map(|(k, v)| {
            if *k == "security.protocol" {
                (*k, "SASL_PLAINTEXT".to_string())
            } else {
                (*k, v.clone())
            }
        })
        .collect();
    let out = Command::new("kcat")
        .args(["-L", "-b", &bootstrap, "-m", "5"])
        .args(kcat_args(&plain))
        .output()
        .expect("kcat");
    assert!(
        !out.status.success(),
        "a plaintext SASL client got metadata from the TLS port: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        broker.high_watermark(topic, 0).expect("hw") + broker.high_watermark(topic, 1).expect("hw"),
        n as i64
    );
}

#[test]
fn a_wrong_password_over_sasl_ssl_fails_the_record_with_an_authentication_error() {
    let pki = Pki::new("sasl-ssl-denied");
    let server = pki.leaf("broker", &["127.0.0.1", "localhost"]);
    let topic = "sasl-ssl-denied";
    let broker = sasl_ssl_broker(&server, topic, 1);
    let bootstrap = broker.bootstrap_servers();
    let mut config = ProducerConfig::new(&bootstrap);
    for (k, v) in sasl_ssl_settings(&pki) {
        let v = if k == "sasl.password" {
            "wrong".to_string()
        } else {
            v
        };
        config.set(k, &v).expect(k);
    }
    let producer = Producer::new(config).expect("producer");
    let err = producer
        .send(ProducerRecord::new(topic, "v"))
        .wait_timeout(WAIT)
        .expect("completed")
        .expect_err("must fail");
    assert!(
        matches!(err, mqnet::producer::ProduceError::Authentication { .. }),
        "{err:?}"
    );
    producer.close(Duration::from_secs(5));
    assert!(broker.stats().authentication_failures >= 1);
}
