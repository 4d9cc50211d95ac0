//! Real Kafka clients both ways: mqnet's producer and librdkafka's idempotent producer write to the
//! broker; kcat (`check.crcs=true`) and librdkafka's consumer read everything back exactly once.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{check_exactly_once_in_order, consume, kcat, WAIT};
use mqnet::client::ClientConfig;
use mqnet::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::ClientContext;

fn mqnet_config(bootstrap: &str) -> ProducerConfig {
    ProducerConfig::new(bootstrap)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .client(
            ClientConfig::default()
                .reconnect_backoff(Duration::from_millis(20))
                .reconnect_backoff_max(Duration::from_millis(200))
                .request_timeout(Duration::from_secs(5)),
        )
}

#[test]
fn mqnet_producer_to_three_nodes_read_back_by_kcat_and_librdkafka_exactly_once_in_order() {
    let topic = "keyed";
    let broker = common::broker(3, topic, 4);
    let bootstrap = broker.bootstrap_servers();
    let producer = Producer::new(mqnet_config(&bootstrap)).expect("producer");
    let n = 20_000;
    let futures: Vec<DeliveryFuture> = (0..n)
        .map(|i| producer.send(ProducerRecord::new(topic, format!("value-{i}")).key(i.to_string())))
        .collect();
    for (i, f) in futures.into_iter().enumerate() {
        f.wait_timeout(WAIT)
            .unwrap_or_else(|| panic!("record {i} never completed"))
            .unwrap_or_else(|e| panic!("record {i} failed: {e}"));
    }
    producer.close(Duration::from_secs(10));
    let hw: i64 = (0..4)
        .map(|p| broker.high_watermark(topic, p).unwrap())
        .sum();
    assert_eq!(hw, n as i64, "records in the logs");
    let by_kcat = kcat(&bootstrap, topic);
    check_exactly_once_in_order(&by_kcat, n, 4, true);
    let by_rdkafka = consume(&bootstrap, topic, 4, n);
    check_exactly_once_in_order(&by_rdkafka, n, 4, true);
}

/// Counts librdkafka's delivery reports.
#[derive(Default)]
struct Counting {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                eprintln!("delivery failed: {e}");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

fn rdkafka_producer(
    bootstrap: &str,
) -> (
    ThreadedProducer<Counting>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let ctx = Counting::default();
    let (ok, failed) = (Arc::clone(&ctx.ok), Arc::clone(&ctx.failed));
    let p = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("retry.backoff.ms", "20")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "200")
        .set("message.timeout.ms", "120000")
        .create_with_context(ctx)
        .expect("librdkafka producer");
    (p, ok, failed)
}

fn send_range(p: &ThreadedProducer<Counting>, topic: &str, range: std::ops::Range<usize>) {
    for i in range {
        let key = i.to_string();
        let value = format!("value-{i}");
        // Partition i % 3 explicitly, so the test knows which node each record needs.
        let mut rec = BaseRecord::to(topic)
            .key(&key)
            .payload(&value)
            .partition((i % 3) as i32);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "send: {e}"
                    );
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
}

fn wait_delivered(ok: &AtomicUsize, failed: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + WAIT * 2;
    while ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} delivered",
            ok.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed deliveries");
}

#[test]
fn librdkafka_idempotent_producer_read_back_by_kcat_exactly_once() {
    let topic = "rdk";
    let broker = common::broker(1, topic, 3);
    let bootstrap = broker.bootstrap_servers();
    let (p, ok, failed) = rdkafka_producer(&bootstrap);
    let n = 20_000;
    send_range(&p, topic, 0..n);
    p.flush(WAIT).expect("flush");
    wait_delivered(&ok, &failed, n);
    drop(p);
    let got = kcat(&bootstrap, topic);
    check_exactly_once_in_order(&got, n, 3, false);
}

#[test]
fn librdkafka_idempotent_producer_with_a_node_down_and_up_mid_run_exactly_once() {
    let topic = "bounce";
    let broker = common::broker(3, topic, 3);
    let bootstrap = broker.bootstrap_servers();
    let (p, ok, failed) = rdkafka_producer(&bootstrap);
    let n = 12_000;
    send_range(&p, topic, 0..n / 3);
    p.flush(WAIT).expect("flush");
    wait_delivered(&ok, &failed, n / 3);
    // Node 2 goes down while the second third is being sent: its partition's batches fail with
    // disconnects and are retried.
    broker.set_node_down(2, true);
    send_range(&p, topic, n / 3..2 * n / 3);
    let deadline = Instant::now() + WAIT;
    // Partition p is led by node p % 3 + 1: partitions 0 and 2 (nodes 1 and 3) stay up. Wait
    // until their records of the second third are delivered.
    while ok.load(Ordering::Relaxed) < n / 3 + 2 * (n / 9) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ok.load(Ordering::Relaxed) >= n / 3 + 2 * (n / 9),
        "the live nodes' partitions stalled while node 2 was down"
    );
    // Node 2's partition did not move while it was down.
    let first_third_on_p1 = (0..n / 3).filter(|i| i % 3 == 1).count() as i64;
    assert_eq!(broker.high_watermark(topic, 1), Some(first_third_on_p1));
    broker.set_node_down(2, false);
    send_range(&p, topic, 2 * n / 3..n);
    p.flush(WAIT * 2).expect("flush");
    wait_delivered(&ok, &failed, n);
    drop(p);
    let got = kcat(&bootstrap, topic);
    check_exactly_once_in_order(&got, n, 3, false);
}

#[test]
fn kcat_produces_to_an_auto_created_topic_and_reads_it_back() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    common::init_log();
    // A fresh data dir: auto-create is on by default.
    let broker = mqnet::broker::Broker::start(mqnet::broker::BrokerConfig {
        default_partitions: 2,
        ..Default::default()
    })
    .expect("broker");
    let bootstrap = broker.bootstrap_servers();
    let n = 1_000;
    let mut child = Command::new("kcat")
        .args([
            "-P", "-b", &bootstrap, "-t", "fresh", "-K", ":", "-X", "acks=all",
        ])
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
        .map(|p| broker.high_watermark("fresh", p).unwrap())
        .sum();
    assert_eq!(total, n as i64);
    check_exactly_once_in_order(&kcat(&bootstrap, "fresh"), n, 2, false);
}
