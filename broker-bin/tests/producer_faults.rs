//! The producer's mock-cluster fault tests (tests/producer_mock.rs of the library) run against the
//! strict broker: node down and up, injected NOT_LEADER errors with leader moves, response delay.
//! Every record is then read back by librdkafka's consumer and kcat exactly once, in order.

mod common;

use std::time::{Duration, Instant};

use common::{check_exactly_once_in_order, consume, kcat, WAIT};
use mqnet::broker::codes;
use mqnet::client::ClientConfig;
use mqnet::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};

fn config(bootstrap: &str) -> ProducerConfig {
    ProducerConfig::new(bootstrap)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .client(
            ClientConfig::default()
                .reconnect_backoff(Duration::from_millis(20))
                .reconnect_backoff_max(Duration::from_millis(200))
                .request_timeout(Duration::from_secs(5)),
        )
}

fn record(topic: &str, i: usize) -> ProducerRecord {
    ProducerRecord::new(topic, format!("value-{i}")).key(i.to_string())
}

fn wait_all(futures: Vec<DeliveryFuture>) {
    for (i, f) in futures.into_iter().enumerate() {
        f.wait_timeout(WAIT * 2)
            .unwrap_or_else(|| panic!("record {i} never completed"))
            .unwrap_or_else(|e| panic!("record {i} failed: {e}"));
    }
}

#[test]
fn a_node_down_and_up_while_producing_loses_and_duplicates_nothing() {
    let topic = "bounce";
    let broker = common::broker(3, topic, 4);
    let bootstrap = broker.bootstrap_servers();
    let producer = Producer::new(config(&bootstrap)).unwrap();
    let mut futures: Vec<DeliveryFuture> = Vec::new();
    let mut down_at: Option<Instant> = None;
    let mut up_round: Option<usize> = None;
    let test_deadline = Instant::now() + WAIT;
    for round in 0..1_000 {
        assert!(Instant::now() < test_deadline, "outage test ran too long");
        for _ in 0..500 {
            let i = futures.len();
            futures.push(producer.send(record(topic, i)));
        }
        if let Some(last) = futures.last() {
            let _ = last.wait_timeout(Duration::from_millis(100));
        }
        if round == 5 {
            broker.set_node_down(2, true);
            down_at = Some(Instant::now());
        }
        if up_round.is_none() && down_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)) {
            broker.set_node_down(2, false);
            up_round = Some(round);
        }
        if up_round.is_some_and(|r| round >= r + 5) {
            break;
        }
    }
    let up_round = up_round.expect("the node came back");
    assert!(up_round > 6, "records were produced during the outage");
    let n = futures.len();
    wait_all(futures);
    producer.close(Duration::from_secs(10));
    check_exactly_once_in_order(&consume(&bootstrap, topic, 4, n), n, 4, true);
}

#[test]
fn not_leader_errors_then_leader_moves_are_retried_and_delivered() {
    let topic = "moved";
    let broker = common::broker(3, topic, 4);
    let bootstrap = broker.bootstrap_servers();
    let producer = Producer::new(config(&bootstrap)).unwrap();
    wait_all(vec![producer.send(record(topic, 0))]);
    broker.inject_errors(0, codes::NOT_LEADER_OR_FOLLOWER, 6);
    for p in 0..4 {
        broker.move_leader(topic, p, (p + 1) % 3 + 1).unwrap();
    }
    let n = 5_000;
    let futures: Vec<DeliveryFuture> = (1..n).map(|i| producer.send(record(topic, i))).collect();
    wait_all(futures);
    producer.close(Duration::from_secs(10));
    for p in 0..4 {
        assert_eq!(broker.leader(topic, p), Some((p + 1) % 3 + 1));
    }
    check_exactly_once_in_order(&kcat(&bootstrap, topic), n, 4, true);
}

#[test]
fn delayed_responses_and_injected_retriable_errors_still_deliver_exactly_once() {
    let topic = "slow";
    let broker = common::broker(1, topic, 2);
    let bootstrap = broker.bootstrap_servers();
    broker.set_response_delay(Duration::from_millis(50));
    broker.inject_errors(0, 7 /* REQUEST_TIMED_OUT, retriable */, 3);
    let producer = Producer::new(config(&bootstrap)).unwrap();
    let n = 3_000;
    let t0 = Instant::now();
    let futures: Vec<DeliveryFuture> = (0..n).map(|i| producer.send(record(topic, i))).collect();
    wait_all(futures);
    // At least metadata, InitProducerId and one produce round trip were each held back.
    assert!(t0.elapsed() >= Duration::from_millis(150));
    broker.set_response_delay(Duration::ZERO);
    producer.close(Duration::from_secs(10));
    check_exactly_once_in_order(&kcat(&bootstrap, topic), n, 2, true);
}
