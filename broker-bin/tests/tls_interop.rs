//! TLS against librdkafka (kcat) both ways, with certificates made by the test: mqnet's producer
//! over `security.protocol=SSL` with a client certificate to the embedded broker's mutual-TLS
//! listener, read back by kcat with the same settings; kcat as a producer over SSL, read back by
//! kcat. A plaintext kcat on the TLS port gets nothing.

mod common;
#[path = "../../tests/tls_common/mod.rs"]
mod tls_common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{check_exactly_once_in_order, WAIT};
use mqnet::broker::{Broker, BrokerConfig};
use mqnet::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use tls_common::{Leaf, Pki};

/// A one-node broker whose listener requires TLS and a client certificate signed by `pki`.
fn tls_broker(pki: &Pki, server: &Leaf, topic: &str, partitions: i32) -> Broker {
    common::init_log();
    let mut config = BrokerConfig::default();
    config.server.tls = Some(
        mqnet::net::tls::server_config(&server.cert, &server.key, Some(&pki.ca_pem))
            .expect("server TLS config"),
    );
    let b = Broker::start(config).expect("broker");
    b.create_topic(topic, partitions).expect("topic");
    b
}

/// kcat's `-X` settings for SSL with `client` as the client certificate.
fn kcat_ssl(pki: &Pki, client: &Leaf) -> Vec<String> {
    [
        "security.protocol=ssl".to_string(),
        format!("ssl.ca.location={}", pki.ca_pem.display()),
        format!("ssl.certificate.location={}", client.cert.display()),
        format!("ssl.key.location={}", client.key.display()),
    ]
    .into_iter()
    .flat_map(|x| ["-X".to_string(), x])
    .collect()
}

/// kcat over every partition of `topic`, with `extra` settings; (partition, offset, key, value).
fn kcat_consume(bootstrap: &str, topic: &str, extra: &[String]) -> Vec<(i32, i64, String, String)> {
    common::kcat_with(bootstrap, topic, extra)
}

#[test]
fn mqnet_producer_over_ssl_with_client_certificate_read_back_by_kcat_over_ssl() {
    let pki = Pki::new("interop-mqnet");
    let server = pki.leaf("broker", &["127.0.0.1", "localhost"]);
    let client = pki.leaf("client", &["client.test"]);
    let topic = "tls-mqnet";
    let broker = tls_broker(&pki, &server, topic, 2);
    let bootstrap = broker.bootstrap_servers();

    let mut config = ProducerConfig::new(&bootstrap);
    for (k, v) in [
        ("security.protocol", "SSL".to_string()),
        ("ssl.ca.location", pki.ca_pem.display().to_string()),
        (
            "ssl.certificate.location",
            client.cert.display().to_string(),
        ),
        ("ssl.key.location", client.key.display().to_string()),
        ("request.timeout.ms", "10000".to_string()),
    ] {
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
    let got = kcat_consume(&bootstrap, topic, &kcat_ssl(&pki, &client));
    check_exactly_once_in_order(&got, n, 2, true);
}

#[test]
fn kcat_producer_over_ssl_read_back_by_kcat_over_ssl_and_plaintext_kcat_gets_nothing() {
    let pki = Pki::new("interop-kcat");
    let server = pki.leaf("broker", &["127.0.0.1", "localhost"]);
    let client = pki.leaf("client", &["client.test"]);
    let topic = "tls-kcat";
    let broker = tls_broker(&pki, &server, topic, 2);
    let bootstrap = broker.bootstrap_servers();
    let n = 1_000;
    let mut child = Command::new("kcat")
        .args([
            "-P", "-b", &bootstrap, "-t", topic, "-K", ":", "-X", "acks=all",
        ])
        .args(kcat_ssl(&pki, &client))
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat");
    {
        let mut stdin = child.stdin.take().unwrap();
        for i in 0..n {
            writeln!(stdin, "{i}:value-{i}").unwrap();
        }
    }
    assert!(child.wait().expect("kcat -P").success());
    let total: i64 = (0..2)
        .map(|p| broker.high_watermark(topic, p).unwrap())
        .sum();
    assert_eq!(total, n as i64);
    let got = kcat_consume(&bootstrap, topic, &kcat_ssl(&pki, &client));
    check_exactly_once_in_order(&got, n, 2, false);

    // A plaintext kcat on the TLS port: no metadata, a failure within its own timeout.
    let out = Command::new("kcat")
        .args(["-L", "-b", &bootstrap, "-m", "3"])
        .output()
        .expect("kcat");
    assert!(
        !out.status.success(),
        "plaintext kcat listed metadata of a TLS broker"
    );
}

#[test]
fn a_broker_certificate_for_another_host_fails_the_producers_records_at_once() {
    let pki = Pki::new("interop-wrong-host");
    let server = pki.leaf("broker", &["broker.other.test"]);
    let topic = "tls-wrong-host";
    let broker = tls_broker(&pki, &server, topic, 1);
    let bootstrap = broker.bootstrap_servers();
    let mut config = ProducerConfig::new(&bootstrap);
    for (k, v) in [
        ("security.protocol", "SSL".to_string()),
        ("ssl.ca.location", pki.ca_pem.display().to_string()),
        // Far beyond the bound below: a record failing in time failed on the handshake, not on
        // its delivery timeout.
        ("delivery.timeout.ms", "300000".to_string()),
        ("request.timeout.ms", "10000".to_string()),
    ] {
        config.set(k, &v).expect(k);
    }
    let producer = Producer::new(config).expect("producer");
    let started = std::time::Instant::now();
    let err = producer
        .send(ProducerRecord::new(topic, "v"))
        .wait_timeout(WAIT)
        .expect("the record completed")
        .expect_err("the record must fail");
    assert!(
        matches!(err, mqnet::producer::ProduceError::Authentication { .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < WAIT,
        "failed after {:?}",
        started.elapsed()
    );
    // Later records fail with the same error at once, without new connections.
    let err = producer
        .send(ProducerRecord::new(topic, "w"))
        .wait_timeout(WAIT)
        .expect("the record completed")
        .expect_err("the record must fail");
    assert!(
        matches!(err, mqnet::producer::ProduceError::Authentication { .. }),
        "{err:?}"
    );
    producer.close(Duration::from_secs(5));
    assert_eq!(broker.high_watermark(topic, 0).expect("hw"), 0);
}
