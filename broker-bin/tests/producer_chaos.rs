//! Seeded chaos through the idempotent producer (acks=all) against the strict broker: records are
//! sent while a fault schedule, drawn from a seed, takes nodes down and up (their connections
//! closed, new ones refused), moves partition leaders, injects retriable errors into the next
//! Produce and Metadata requests, and holds responses back (once past the request timeout). Every
//! delivery outcome is counted; then librdkafka's consumer (CRCs checked) reads every partition to
//! its high watermark, and the run checks that each delivered record is there exactly once at the
//! partition and offset it was acknowledged with, that no failed record is there twice, and that
//! each partition holds the producer's sends in send order.
//!
//! CI size by default. The full-size run (docs/RELIABILITY.md):
//! `MQNET_CHAOS_RECORDS=1000000 cargo test --release -p mqnet-broker --test producer_chaos -- --nocapture`
//! with `MQNET_CHAOS_SEED` (repeat a run) and `MQNET_CHAOS_FAULTS` (fault events) optional.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqnet::broker::{codes, Broker};
use mqnet::client::ClientConfig;
use mqnet::producer::{Acks, Producer, ProducerConfig, ProducerRecord};
use mqnet::protocol::partition_for_key;

const TOPIC: &str = "chaos";
const NODES: i32 = 3;
const PARTITIONS: i32 = 6;
/// Distinct keys: key = record index mod KEYS.
const KEYS: usize = 1_000;
/// The client's request timeout; the `StallPastTimeout` fault holds responses longer than this.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1_500);

/// Retriable Produce errors injected (the broker appends nothing for them).
const PRODUCE_ERRORS: &[i16] = &[
    codes::NOT_LEADER_OR_FOLLOWER,
    7,  // REQUEST_TIMED_OUT
    19, // NOT_ENOUGH_REPLICAS
    20, // NOT_ENOUGH_REPLICAS_AFTER_APPEND
    5,  // LEADER_NOT_AVAILABLE
    codes::KAFKA_STORAGE_ERROR,
];
/// Retriable Metadata errors injected.
const METADATA_ERRORS: &[i16] = &[
    5, /* LEADER_NOT_AVAILABLE */
    codes::UNKNOWN_TOPIC_OR_PARTITION,
];

/// splitmix64: a small seeded generator, so a seed replays the same fault schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// One fault event of the schedule; the records of one chunk are sent while it is in force.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Node down (connections closed, new ones refused) for the duration, then up.
    NodeDown(i32, Duration),
    /// Partition leadership moved to the node (leader epoch bumped).
    MoveLeader(i32, i32),
    /// The next `count` Produce requests answered with the retriable code.
    ProduceErrors(i16, u32),
    /// The next `count` Metadata requests answered with the retriable code.
    MetadataErrors(i16, u32),
    /// Every response held back by the first duration, for the second.
    Delay(Duration, Duration),
    /// Responses held back past the client's request timeout (requests time out and are
    /// retried on new connections while the broker still answers the old ones), for the duration.
    StallPastTimeout(Duration),
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::NodeDown(..) => "node down/up",
            Fault::MoveLeader(..) => "leader moved",
            Fault::ProduceErrors(..) => "produce errors injected",
            Fault::MetadataErrors(..) => "metadata errors injected",
            Fault::Delay(..) => "responses delayed",
            Fault::StallPastTimeout(..) => "responses past request timeout",
        }
    }

    /// Kind `k` (0..6) with seeded parameters.
    fn draw(k: u64, rng: &mut Rng) -> Fault {
        let ms = Duration::from_millis;
        match k {
            0 => Fault::NodeDown(rng.range(1, NODES as u64) as i32, ms(rng.range(100, 800))),
            1 => Fault::MoveLeader(
                rng.range(0, PARTITIONS as u64 - 1) as i32,
                rng.range(1, NODES as u64) as i32,
            ),
            2 => Fault::ProduceErrors(rng.pick(PRODUCE_ERRORS), rng.range(1, 8) as u32),
            3 => Fault::MetadataErrors(rng.pick(METADATA_ERRORS), rng.range(1, 3) as u32),
            4 => Fault::Delay(ms(rng.range(10, 300)), ms(rng.range(100, 500))),
            _ => Fault::StallPastTimeout(ms(rng.range(1_000, 2_000))),
        }
    }
}

/// The schedule: every kind once (in seeded order), then seeded draws; stalls past the timeout
/// are rarer (each costs seconds).
fn schedule(seed: u64, faults: usize) -> Vec<Fault> {
    let mut rng = Rng(seed);
    let mut kinds: Vec<u64> = (0..6).collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.range(0, i as u64) as usize);
    }
    let mut out: Vec<Fault> = kinds.iter().map(|k| Fault::draw(*k, &mut rng)).collect();
    while out.len() < faults {
        let k = match rng.range(0, 99) {
            0..=24 => 0,
            25..=44 => 1,
            45..=69 => 2,
            70..=79 => 3,
            80..=95 => 4,
            _ => 5,
        };
        out.push(Fault::draw(k, &mut rng));
    }
    out.truncate(faults.max(1));
    out
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Per-record outcome, written by the delivery callbacks.
const PENDING: u8 = 0;
const DELIVERED: u8 = 1;
const FAILED: u8 = 2;

struct Outcomes {
    state: Vec<AtomicU8>,
    partition: Vec<AtomicI32>,
    offset: Vec<AtomicI64>,
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl Outcomes {
    fn new(n: usize) -> Outcomes {
        Outcomes {
            state: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            partition: (0..n).map(|_| AtomicI32::new(-1)).collect(),
            offset: (0..n).map(|_| AtomicI64::new(-1)).collect(),
            reasons: Mutex::new(BTreeMap::new()),
        }
    }
}

fn key_of(i: usize) -> String {
    (i % KEYS).to_string()
}

/// The value carries the global send sequence; the filler makes records of a realistic size.
fn value_of(i: usize) -> String {
    format!("seq-{i:010}-{:x<40}", "")
}

fn seq_of(value: &str) -> Option<usize> {
    value.strip_prefix("seq-")?.get(..10)?.parse().ok()
}

fn producer_config(bootstrap: &str) -> ProducerConfig {
    ProducerConfig::new(bootstrap)
        .acks(Acks::All)
        .idempotence(true)
        .linger_ms(5)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .client(
            ClientConfig::default()
                .reconnect_backoff(Duration::from_millis(20))
                .reconnect_backoff_max(Duration::from_millis(200))
                .request_timeout(REQUEST_TIMEOUT),
        )
}

fn apply_start(broker: &Broker, f: Fault) {
    match f {
        Fault::NodeDown(node, _) => broker.set_node_down(node, true),
        Fault::MoveLeader(p, node) => broker.move_leader(TOPIC, p, node).expect("move leader"),
        Fault::ProduceErrors(code, n) => broker.inject_errors(0, code, n),
        Fault::MetadataErrors(code, n) => broker.inject_errors(3, code, n),
        Fault::Delay(d, _) => broker.set_response_delay(d),
        Fault::StallPastTimeout(_) => {
            broker.set_response_delay(REQUEST_TIMEOUT + Duration::from_millis(500))
        }
    }
}

/// Keeps the fault in force for its duration, then lifts it.
fn apply_end(broker: &Broker, f: Fault) {
    match f {
        Fault::NodeDown(node, d) => {
            std::thread::sleep(d);
            broker.set_node_down(node, false);
        }
        Fault::Delay(_, d) | Fault::StallPastTimeout(d) => {
            std::thread::sleep(d);
            broker.set_response_delay(Duration::ZERO);
        }
        Fault::MoveLeader(..) | Fault::ProduceErrors(..) | Fault::MetadataErrors(..) => {}
    }
}

/// What a run found.
#[derive(Debug, Default)]
struct Report {
    sent: usize,
    delivered: usize,
    failed: usize,
    pending: usize,
    consumed: usize,
    lost: usize,
    duplicated: usize,
    reordered: usize,
    misplaced: usize,
    unexpected: usize,
    failed_but_written: usize,
    broker_duplicates: u64,
}

fn run(n: usize, faults: usize, seed: u64) -> Report {
    println!("producer chaos: seed {seed}, {n} records, {faults} fault events");
    let t0 = Instant::now();
    let broker = common::broker(NODES as usize, TOPIC, PARTITIONS);
    let bootstrap = broker.bootstrap_servers();
    let producer = Producer::new(producer_config(&bootstrap)).expect("producer");
    let outcomes = Arc::new(Outcomes::new(n));
    let plan = schedule(seed, faults);
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let chunk = n.div_ceil(plan.len() + 1);
    let send_range = |from: usize, to: usize| {
        for i in from..to.min(n) {
            let o = outcomes.clone();
            let record = ProducerRecord::new(TOPIC, value_of(i)).key(key_of(i));
            producer.send_with_callback(record, move |r| match r {
                Ok(meta) => {
                    o.partition[i].store(meta.partition, Ordering::Relaxed);
                    o.offset[i].store(meta.offset, Ordering::Relaxed);
                    o.state[i].store(DELIVERED, Ordering::Release);
                }
                Err(e) => {
                    let reason = e.to_string();
                    let mut r = o.reasons.lock().unwrap_or_else(|p| p.into_inner());
                    *r.entry(reason).or_default() += 1;
                    o.state[i].store(FAILED, Ordering::Release);
                }
            });
        }
    };
    // Chunk 0 runs fault-free; chunk k + 1 is sent while fault k is in force.
    send_range(0, chunk);
    for (k, f) in plan.iter().enumerate() {
        *kinds.entry(f.kind()).or_default() += 1;
        apply_start(&broker, *f);
        send_range((k + 1) * chunk, (k + 2) * chunk);
        apply_end(&broker, *f);
    }
    let sent_in = t0.elapsed();
    // Every fault is lifted; wait for every outcome (the delivery timeout bounds each record).
    let flushed = producer.flush(Duration::from_secs(180));
    producer.close(Duration::from_secs(10));
    let mut rep = Report {
        sent: n,
        broker_duplicates: broker.stats().duplicates,
        ..Report::default()
    };
    for s in &outcomes.state {
        match s.load(Ordering::Acquire) {
            DELIVERED => rep.delivered += 1,
            FAILED => rep.failed += 1,
            _ => rep.pending += 1,
        }
    }
    let hwm: Vec<i64> = (0..PARTITIONS)
        .map(|p| broker.high_watermark(TOPIC, p).expect("partition"))
        .collect();
    let total: usize = hwm.iter().map(|h| *h as usize).sum();
    let consumed = common::consume_until(
        &bootstrap,
        TOPIC,
        PARTITIONS,
        total,
        Instant::now() + Duration::from_secs(60 + (n / 10_000) as u64),
    );
    assert!(
        consumed.len() >= total,
        "seed {seed}: consumer read {} of {total} records by the deadline",
        consumed.len()
    );
    rep.consumed = consumed.len();

    // Exactly once, where acknowledged, in send order per partition.
    let mut seen = vec![0u32; n];
    let mut sorted: Vec<&(i32, i64, String, String)> = consumed.iter().collect();
    sorted.sort_by_key(|(p, o, _, _)| (*p, *o));
    let mut last: BTreeMap<i32, usize> = BTreeMap::new();
    for (p, off, key, value) in sorted {
        let Some(i) = seq_of(value).filter(|i| *i < n) else {
            rep.unexpected += 1;
            continue;
        };
        if *key != key_of(i) || *p != partition_for_key(key.as_bytes(), PARTITIONS) {
            rep.misplaced += 1;
        }
        seen[i] += 1;
        match outcomes.state[i].load(Ordering::Acquire) {
            DELIVERED => {
                let at = (
                    outcomes.partition[i].load(Ordering::Relaxed),
                    outcomes.offset[i].load(Ordering::Relaxed),
                );
                if at != (*p, *off) {
                    rep.misplaced += 1;
                }
            }
            FAILED if seen[i] == 1 => rep.failed_but_written += 1,
            _ => {}
        }
        if let Some(prev) = last.insert(*p, i) {
            if i <= prev {
                rep.reordered += 1;
            }
        }
    }
    for (i, s) in seen.iter().enumerate() {
        if *s > 1 {
            rep.duplicated += 1;
        }
        if *s == 0 && outcomes.state[i].load(Ordering::Acquire) == DELIVERED {
            rep.lost += 1;
        }
    }
    let reasons = outcomes.reasons.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "producer chaos: seed {seed}: sent {} in {:.1} s, flushed {flushed}, total {:.1} s",
        rep.sent,
        sent_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    println!("  faults: {kinds:?}");
    println!("  high watermarks: {hwm:?}");
    println!("  failure reasons: {reasons:?}");
    println!(
        "  broker answered {} retried batches as duplicates (not appended)",
        rep.broker_duplicates
    );
    println!("  {rep:?}");
    drop(reasons);
    broker.shutdown().expect("broker shutdown");
    rep
}

fn check(rep: &Report, seed: u64) {
    let ctx = format!("seed {seed} (MQNET_CHAOS_SEED={seed} replays the schedule): {rep:?}");
    assert_eq!(rep.pending, 0, "records never completed; {ctx}");
    assert_eq!(rep.lost, 0, "delivered records missing; {ctx}");
    assert_eq!(rep.duplicated, 0, "records written twice; {ctx}");
    assert_eq!(rep.reordered, 0, "partitions out of send order; {ctx}");
    assert_eq!(rep.misplaced, 0, "records not where acknowledged; {ctx}");
    assert_eq!(rep.unexpected, 0, "records nobody sent; {ctx}");
    // Faults are bounded and lifted well within delivery.timeout.ms: nothing may fail.
    assert_eq!(rep.failed, 0, "records failed; {ctx}");
    assert_eq!(rep.delivered, rep.sent, "{ctx}");
    assert_eq!(rep.consumed, rep.delivered, "{ctx}");
}

/// The schedule CI replays (a fixed seed, so a CI failure is reproducible as it stands);
/// `MQNET_CHAOS_SEED` explores others.
const CI_SEED: u64 = 20_261_130;

#[test]
fn idempotent_producer_through_seeded_broker_faults_delivers_exactly_once_in_order() {
    let n = env_usize("MQNET_CHAOS_RECORDS").unwrap_or(30_000);
    let faults = env_usize("MQNET_CHAOS_FAULTS").unwrap_or(if n > 100_000 { 200 } else { 12 });
    let seed = std::env::var("MQNET_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CI_SEED);
    let rep = run(n, faults, seed);
    check(&rep, seed);
}

#[test]
fn the_schedule_is_a_function_of_the_seed_and_covers_every_fault_kind() {
    let a = format!("{:?}", schedule(42, 30));
    assert_eq!(a, format!("{:?}", schedule(42, 30)));
    assert_ne!(a, format!("{:?}", schedule(43, 30)));
    let kinds: std::collections::BTreeSet<&str> = schedule(7, 6).iter().map(|f| f.kind()).collect();
    assert_eq!(kinds.len(), 6);
}
