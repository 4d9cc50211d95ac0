//! The producer's public surface for metrics and completion, against librdkafka's mock cluster:
//! `DeliveryFuture`s awaited on a minimal hand-written executor (deliveries that succeed and
//! deliveries that fail), `Producer::metrics`, the statistics callback, and the close choices
//! (`close(Duration::ZERO)`, `close_on_drop`).
#![cfg(feature = "kafka")]

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use mqnet::client::ClientConfig;
use mqnet::producer::{DeliveryResult, ProduceError, Producer, ProducerConfig, ProducerRecord};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

type Mock = MockCluster<'static, DefaultProducerContext>;

const WAIT: Duration = Duration::from_secs(60);

fn cluster(topic: &str) -> Mock {
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic(topic, 2, 1).expect("topic");
    c
}

fn config(bootstrap: &str) -> ProducerConfig {
    ProducerConfig::new(bootstrap).client(
        ClientConfig::default()
            .reconnect_backoff(Duration::from_millis(20))
            .reconnect_backoff_max(Duration::from_millis(200))
            .request_timeout(Duration::from_millis(500)),
    )
}

/// Wakes the thread blocked in [`block_on`], counting wake-ups.
struct ThreadWaker {
    thread: Thread,
    wakes: AtomicUsize,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// A minimal executor: polls `f` on this thread, parking between polls until woken; gives up
/// after `limit`. Returns the output, how many polls returned `Pending`, and how many wake-ups
/// came.
fn block_on<F: Future>(f: F, limit: Duration) -> (F::Output, usize, usize) {
    let w = Arc::new(ThreadWaker {
        thread: std::thread::current(),
        wakes: AtomicUsize::new(0),
    });
    let waker = Waker::from(w.clone());
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    let deadline = Instant::now() + limit;
    let mut pending = 0;
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return (v, pending, w.wakes.load(Ordering::SeqCst));
        }
        pending += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "not ready after {limit:?}");
        // Spurious unparks only cause an extra poll.
        std::thread::park_timeout(left);
    }
}

/// Awaits every future in order inside one async block.
async fn await_all(futures: Vec<mqnet::producer::DeliveryFuture>) -> Vec<DeliveryResult> {
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        out.push(f.await);
    }
    out
}

#[test]
fn delivery_futures_are_awaited_on_a_hand_written_executor() {
    let c = cluster("async");
    let producer = Producer::new(config(&c.bootstrap_servers())).expect("producer");
    let futures = (0..20)
        .map(|i| producer.send(ProducerRecord::new("async", format!("v{i}")).partition(i % 2)))
        .collect();
    let (results, _, _) = block_on(await_all(futures), WAIT);
    let mut offsets: Vec<(i32, i64)> = results
        .into_iter()
        .map(|r| r.map(|m| (m.partition, m.offset)).expect("delivered"))
        .collect();
    offsets.sort_unstable();
    let expect: Vec<(i32, i64)> = (0..2).flat_map(|p| (0..10).map(move |o| (p, o))).collect();
    assert_eq!(
        offsets, expect,
        "every record once, offsets 0..10 per partition"
    );
    // A record the producer refuses at once: ready on the first poll.
    let (r, pending, _) = block_on(producer.send(ProducerRecord::new("", "v")), WAIT);
    assert!(matches!(r, Err(ProduceError::InvalidTopic { .. })), "{r:?}");
    assert_eq!(pending, 0);
    producer.close(Duration::from_secs(10));
    // After close: `Closed`, also through `.await`.
    let (r, _, _) = block_on(producer.send(ProducerRecord::new("async", "late")), WAIT);
    assert_eq!(r, Err(ProduceError::Closed));
}

#[test]
fn a_failing_delivery_wakes_its_awaiting_task_with_the_error() {
    // Nothing listens on port 1: the record waits for metadata until delivery.timeout.ms.
    let cfg = config("127.0.0.1:1")
        .linger_ms(0)
        .delivery_timeout(Duration::from_millis(1000));
    let producer = Producer::new(cfg).expect("producer");
    let sent = Instant::now();
    let (r, pending, wakes) = block_on(producer.send(ProducerRecord::new("t", "v")), WAIT);
    assert!(
        matches!(r, Err(ProduceError::DeliveryTimeout { .. })),
        "{r:?}"
    );
    assert!(sent.elapsed() >= Duration::from_millis(1000));
    assert!(pending >= 1, "pending until the timeout");
    assert!(wakes >= 1, "woken by the network thread, not by polling");
    let m = producer.metrics();
    assert_eq!(m.record_error_total, 1);
    assert_eq!(m.topic("t").map(|t| t.record_error_total), Some(1));
    producer.close(Duration::ZERO);
}

#[test]
fn producer_metrics_count_the_records_sent() {
    let c = cluster("counted");
    let docs: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = docs.clone();
    let cfg = config(&c.bootstrap_servers())
        .statistics(Duration::from_millis(100), move |j| {
            sink.lock().expect("sink").push(j.to_string())
        })
        .metrics_window(Duration::from_secs(5), 2);
    let producer = Producer::new(cfg).expect("producer");
    for i in 0..50 {
        producer.send_with_callback(ProducerRecord::new("counted", format!("{i}")), |r| {
            assert!(r.is_ok(), "{r:?}")
        });
    }
    assert!(producer.flush(WAIT));
    let m = producer.metrics();
    assert_eq!(m.record_send_total, 50);
    assert_eq!(m.record_error_total, 0);
    assert_eq!(m.buffer_available_bytes, m.buffer_total_bytes);
    assert_eq!(m.buffer_total_bytes, 32 * 1024 * 1024);
    assert!(m.record_send_rate > 0.0);
    assert!(m.batch_size_avg > 0.0);
    assert!(m.request_latency_max >= m.request_latency_avg);
    assert_eq!(m.topic("counted").map(|t| t.record_send_total), Some(50));
    assert!(m.network.connection_count >= 1);
    assert!(m.network.io_wait_ratio.is_some(), "a real Selector");
    let rows = m.to_metrics();
    for name in [
        "record-send-rate",
        "record-send-total",
        "request-latency-avg",
        "request-latency-max",
        "batch-size-avg",
        "batch-size-max",
        "record-queue-time-avg",
        "record-queue-time-max",
        "buffer-available-bytes",
        "buffer-total-bytes",
        "record-error-rate",
        "record-retry-rate",
        "io-wait-ratio",
        "connection-count",
        "connection-creation-rate",
        "connection-close-rate",
        "outgoing-byte-rate",
        "incoming-byte-rate",
        "request-rate",
        "response-rate",
        "requests-in-flight",
    ] {
        assert!(
            rows.iter()
                .any(|r| r.group == "producer-metrics" && r.name == name),
            "{name} missing"
        );
    }
    // The statistics callback runs every 100 ms: wait (bounded) for two documents.
    let deadline = Instant::now() + WAIT;
    while docs.lock().expect("docs").len() < 2 {
        assert!(Instant::now() < deadline, "no statistics");
        std::thread::sleep(Duration::from_millis(10));
    }
    let last = docs
        .lock()
        .expect("docs")
        .last()
        .cloned()
        .expect("a document");
    let v: serde_json::Value = serde_json::from_str(&last).expect("JSON");
    assert_eq!(v["txmsgs"], 50);
    producer.close(Duration::from_secs(10));
    // After close, the final snapshot.
    assert_eq!(producer.metrics().record_send_total, 50);
}

#[test]
fn close_zero_fails_pending_records_without_waiting() {
    let cfg = config("127.0.0.1:1").delivery_timeout(Duration::from_secs(60));
    let producer = Producer::new(cfg).expect("producer");
    let pending: Vec<_> = (0..3)
        .map(|i| producer.send(ProducerRecord::new("t", format!("{i}"))))
        .collect();
    let started = Instant::now();
    producer.close(Duration::ZERO);
    // Far below delivery.timeout.ms (60 s); generous for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for f in pending {
        assert_eq!(
            f.wait_timeout(Duration::ZERO),
            Some(Err(ProduceError::Closed))
        );
    }
}

#[test]
fn close_on_drop_zero_makes_the_drop_non_blocking() {
    let cfg = config("127.0.0.1:1").delivery_timeout(Duration::from_secs(60));
    let producer = Producer::new(cfg).expect("producer");
    producer.close_on_drop(Duration::ZERO);
    let failed = Arc::new(AtomicUsize::new(0));
    let pending: Vec<_> = (0..3)
        .map(|i| producer.send(ProducerRecord::new("t", format!("{i}"))))
        .collect();
    let seen = failed.clone();
    producer.send_with_callback(ProducerRecord::new("t", "cb"), move |r| {
        if r == Err(ProduceError::Closed) {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let started = Instant::now();
    drop(producer);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The network thread fails them on its own, promptly.
    for f in pending {
        assert_eq!(f.wait_timeout(WAIT), Some(Err(ProduceError::Closed)));
    }
    let deadline = Instant::now() + WAIT;
    while failed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the callback was not called");
        std::thread::sleep(Duration::from_millis(5));
    }
}
