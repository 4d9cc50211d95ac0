//! No heap allocation per record on the producer's steady-state path: `send` (partitioner, record
//! encoded into its batch) → network thread (batch taken, Produce request written, response,
//! completion) → callback, against librdkafka's mock cluster (C code, whose `malloc`s this Rust
//! allocator does not see). Its own test binary, with a counting global allocator that counts on
//! every Rust thread while the window is open: the producer's network thread included.
//!
//! Allocations per *batch* remain (the batch buffer, its completion list, the request's
//! bookkeeping), so the bound is on allocations per record: one allocation per record anywhere on
//! the path would put the ratio at 1 or more; the measured ratio is about a batch's few allocations
//! spread over its ~130 records.
#![cfg(feature = "kafka")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mqnet::producer::{Acks, Producer, ProducerConfig, ProducerRecord};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

// SAFETY: every method forwards to the system allocator unchanged; the counter has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static DELIVERED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

const WARMUP: usize = 20_000;
const MEASURED: usize = 100_000;

/// Records built before the window opens (building them allocates: that is the application's).
fn records(topic: &str, from: usize, n: usize, value: &Bytes) -> Vec<ProducerRecord> {
    (from..from + n)
        .map(|i| ProducerRecord::new(topic, value.clone()).key(i.to_string()))
        .collect()
}

/// Sends with a callback that captures nothing (a zero-sized closure: boxing it allocates
/// nothing), then flushes.
fn send_all(producer: &Producer, batch: Vec<ProducerRecord>) {
    for r in batch {
        producer.send_with_callback(r, |res| {
            if res.is_ok() {
                DELIVERED.fetch_add(1, Ordering::Relaxed);
            } else {
                FAILED.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    assert!(
        producer.flush(Duration::from_secs(60)),
        "flush did not finish"
    );
}

/// Produces warm-up records, then counts allocations over `MEASURED` more; returns allocations per
/// record.
fn allocations_per_record(config: ProducerConfig, topic: &str) -> f64 {
    DELIVERED.store(0, Ordering::SeqCst);
    FAILED.store(0, Ordering::SeqCst);
    let producer = Producer::new(config).expect("producer");
    let value = Bytes::from(vec![b'v'; 100]);

    // Warm-up: connections, metadata, producer id, buffers grown to their steady size.
    send_all(&producer, records(topic, 0, WARMUP, &value));
    assert_eq!(DELIVERED.load(Ordering::SeqCst), WARMUP);

    let batch = records(topic, WARMUP, MEASURED, &value);
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    send_all(&producer, batch);
    COUNTING.store(false, Ordering::SeqCst);
    let allocs = ALLOCS.load(Ordering::SeqCst);

    assert_eq!(FAILED.load(Ordering::SeqCst), 0);
    assert_eq!(DELIVERED.load(Ordering::SeqCst), WARMUP + MEASURED);
    producer.close(Duration::from_secs(10));
    let per_record = allocs as f64 / MEASURED as f64;
    eprintln!("{topic}: {allocs} allocations for {MEASURED} records: {per_record:.4} per record");
    per_record
}

#[test]
fn steady_state_allocates_nothing_per_record() {
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(3).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    for (topic, config) in [
        // The default: acks=all, idempotent (sequence numbers, producer id).
        ("idempotent", ProducerConfig::new(&bootstrap)),
        ("acks1", ProducerConfig::new(&bootstrap).acks(Acks::Leader)),
    ] {
        cluster.create_topic(topic, 4, 1).expect("topic");
        let per_record = allocations_per_record(config.linger_ms(5), topic);
        assert!(
            per_record < 0.25,
            "{topic}: {per_record:.3} allocations per record: something allocates per record"
        );
    }
}
