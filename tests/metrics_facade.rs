//! The `metrics-facade` feature: the producer publishes its metrics through the `metrics` crate;
//! a recorder installed by the application sees them as gauges with Kafka's names and tags.
//! Run with `cargo test --features metrics-facade --test metrics_facade`.
#![cfg(all(feature = "metrics-facade", feature = "kafka"))]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use mqnet::producer::{Producer, ProducerConfig, ProducerRecord};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A gauge keeping its last value (f64 bits).
struct Cell(AtomicU64);

impl GaugeFn for Cell {
    fn increment(&self, v: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::SeqCst)) + v)
    }
    fn decrement(&self, v: f64) {
        self.increment(-v)
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::SeqCst)
    }
}

/// Records every gauge by its key (name and labels).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<HashMap<String, Arc<Cell>>>>);

impl Capture {
    fn get(&self, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        let key = match label {
            Some((k, v)) => format!("{name}{{{k}={v}}}"),
            None => name.to_string(),
        };
        let map = self.0.lock().expect("map");
        map.get(&key)
            .map(|c| f64::from_bits(c.0.load(Ordering::SeqCst)))
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut name = key.name().to_string();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if !labels.is_empty() {
            name = format!("{name}{{{}}}", labels.join(","));
        }
        let cell = self
            .0
            .lock()
            .expect("map")
            .entry(name)
            .or_insert_with(|| Arc::new(Cell(AtomicU64::new(0))))
            .clone();
        Gauge::from_arc(cell)
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn producer_metrics_reach_the_installed_recorder() {
    let capture = Capture::default();
    metrics::set_global_recorder(capture.clone()).expect("the only recorder of this binary");
    let c: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster");
    c.create_topic("facade", 1, 1).expect("topic");
    let cfg =
        ProducerConfig::new(&c.bootstrap_servers()).statistics(Duration::from_millis(100), |_| {});
    let producer = Producer::new(cfg).expect("producer");
    for i in 0..10 {
        producer.send_with_callback(ProducerRecord::new("facade", format!("{i}")), |_| {});
    }
    assert!(producer.flush(Duration::from_secs(60)));
    // Published every statistics.interval.ms on the network thread: wait (bounded) for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let total = capture.get("producer_metrics_record_send_total", None);
        let topic = capture.get(
            "producer_topic_metrics_record_send_total",
            Some(("topic", "facade")),
        );
        if total == Some(10.0) && topic == Some(10.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{total:?} {topic:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        capture.get("producer_metrics_buffer_total_bytes", None),
        Some(33_554_432.0)
    );
    producer.close(Duration::from_secs(10));
}
