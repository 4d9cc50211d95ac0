//! The producer's metrics on simulated time against the fake broker of `sim_tests`: exact counts
//! for known traffic, rates by the window's arithmetic, the statistics JSON against a schema of
//! its fields.

use super::*;
use crate::metrics::StatsCallback;

/// [`setup_with_bootstrap`] with the configuration changed by `f` (its `batch.size` kept).
fn setup_cfg(
    broker: &Broker,
    n: usize,
    bootstrap: &str,
    f: impl FnOnce(ProducerConfig) -> ProducerConfig,
) -> (Engine<SimNetwork>, Vec<DeliveryFuture>) {
    broker.lock().partitions = 1;
    let mut net = SimNetwork::new();
    net.set_server(ADDR.parse().expect("addr"), Box::new(broker.clone()));
    let cfg = f(ProducerConfig::new(bootstrap)
        .linger_ms(0)
        .batch_size(1024)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .client(ClientConfig::default().request_timeout(Duration::from_secs(10))));
    let (tx, rx) = unbounded();
    let acc = Arc::new(Accumulator::new(
        cfg.batch_size,
        cfg.max_request_size,
        cfg.delivery_timeout,
        tx,
    ));
    let pool = Arc::new(BufferPool::new(cfg.buffer_memory));
    let now = net.now();
    let e = Engine::new(
        cfg,
        rx,
        acc.clone(),
        pool.clone(),
        Arc::new(AtomicBool::new(false)),
        net,
    )
    .expect("engine");
    let futures = (0..n)
        .map(|i| {
            let (future, completion) = DeliveryFuture::new();
            let record =
                ProducerRecord::new(TOPIC, format!("v-{i:04}-{}", "x".repeat(60))).partition(0);
            let reserved = record.size_estimate();
            pool.reserve(reserved, Duration::ZERO)
                .expect("room for the test's records");
            let _ = acc.append(Pending {
                record,
                completion,
                reserved,
                enqueued: now,
            });
            future
        })
        .collect();
    (e, futures)
}

/// Runs turns until `done`; returns the turn time at which the first Produce request went out.
fn run_tracking_first_send(
    e: &mut Engine<SimNetwork>,
    limit: Duration,
    done: impl Fn(&Engine<SimNetwork>) -> bool,
) -> Option<Instant> {
    let start = e.client.transport().now();
    let mut first = None;
    for _ in 0..100_000 {
        if done(e) {
            return first;
        }
        let now = e.client.transport().now();
        assert!(now - start <= limit, "not done after {limit:?}");
        let timeout = e.turn(now).expect("the engine runs");
        if first.is_none() && e.report.stats.requests > 0 {
            first = Some(now);
        }
        e.poll(timeout, now);
        let now = e.client.transport().now();
        e.handle_responses(now);
    }
    panic!("not done after 100000 turns");
}

#[test]
fn clean_traffic_counts_exactly_and_rates_follow_the_window() {
    let broker = Broker::default();
    let window = Duration::from_secs(30);
    let (mut e, futures) = setup_cfg(&broker, 100, ADDR, |c| c.metrics_window(window, 2));
    let first = run_tracking_first_send(&mut e, Duration::from_secs(10), |_| all_done(&futures))
        .expect("a produce request went out");
    check_exactly_once_in_order(&broker, &futures);
    let now = e.client.transport().now();
    let m = e.metrics_snapshot(now);
    let produce_requests = broker.lock().produce.len() as u64;
    let batches: u64 = broker
        .lock()
        .produce
        .iter()
        .map(|(_, s)| s.len() as u64)
        .sum();
    assert_eq!(m.record_send_total, 100);
    assert_eq!(m.record_error_total, 0);
    assert_eq!(m.record_retry_total, 0);
    assert_eq!(m.produce_request_total, produce_requests);
    assert_eq!(m.requests_in_flight, 0);
    assert_eq!(m.buffer_available_bytes, m.buffer_total_bytes);
    // Every sample still live: rate = total / (elapsed since the first sample + one window,
    // padding to num.samples - 1 = 1 full window).
    let secs = (now - first + window).as_secs_f64();
    assert_eq!(m.record_send_rate, 100.0 / secs);
    assert_eq!(m.byte_rate, m.byte_total as f64 / secs);
    assert_eq!(m.batch_size_avg, m.byte_total as f64 / batches as f64);
    assert!(m.batch_size_max <= 1024.0 + 100.0, "{}", m.batch_size_max);
    assert_eq!(
        m.records_per_request_avg,
        100.0 / produce_requests as f64,
        "records per request"
    );
    let t = m.topic(TOPIC).expect("the topic");
    assert_eq!(t.record_send_total, 100);
    assert_eq!(t.byte_total, m.byte_total);
    // The network side: one broker node took the produce requests (the bootstrap node the
    // metadata and producer-id requests); responses equal requests; bytes both ways.
    let leader = m.network.node(NodeId(1)).expect("the leader's node");
    assert_eq!(leader.request_total, produce_requests);
    assert_eq!(leader.response_total, produce_requests);
    assert!(leader.outgoing_byte_total > m.byte_total);
    assert!(leader.incoming_byte_total > 0);
    assert_eq!(
        m.network.request_total,
        m.network.nodes.iter().map(|n| n.request_total).sum::<u64>()
    );
    // The sim's round trip is 2 ms: no request is faster.
    assert!(m.request_latency_avg >= 2.0, "{}", m.request_latency_avg);
    assert!(m.request_latency_max >= m.request_latency_avg);
    assert!(m.request_latency_p50 >= 2.0);
    assert!(m.network.io_wait_ratio.is_none(), "the sim has no selector");
    // Past two windows without traffic, the windows are empty: rates 0, averages NaN.
    let later = now + 2 * window;
    let m = e.metrics_snapshot(later);
    assert_eq!(m.record_send_rate, 0.0);
    assert!(m.batch_size_avg.is_nan());
    assert_eq!(m.record_send_total, 100, "totals stay");
}

#[test]
fn retries_are_counted_per_record() {
    let broker = Broker::default();
    broker
        .lock()
        .faults
        .insert((0, 0), VecDeque::from([NOT_ENOUGH_REPLICAS]));
    let (mut e, futures) = setup(&broker, 100);
    run_until(&mut e, Duration::from_secs(10), |_| all_done(&futures));
    check_exactly_once_in_order(&broker, &futures);
    let st = broker.lock();
    let seen = st.seen(0);
    // Batches answered with an error (the refused one and those behind it, OUT_OF_ORDER) were
    // retried; their records are those between their sequences.
    let retried_batches: Vec<i32> = seen.iter().filter(|s| s.code != 0).map(|s| s.seq).collect();
    let first_ok_after = seen
        .iter()
        .filter(|s| s.code == 0)
        .map(|s| s.seq)
        .filter(|&s| s > *retried_batches.last().expect("a refused batch"))
        .min()
        .unwrap_or(100);
    let retried_records = (first_ok_after - retried_batches[0]) as u64;
    drop(st);
    let m = e.metrics_snapshot(e.client.transport().now());
    assert_eq!(m.record_retry_total, retried_records);
    assert_eq!(m.record_send_total, 100 + retried_records);
    assert_eq!(m.record_error_total, 0);
    assert_eq!(
        m.topic(TOPIC).expect("topic").record_retry_total,
        retried_records
    );
}

#[test]
fn records_that_time_out_count_as_errors() {
    let broker = Broker::default();
    // Nothing listens at the bootstrap address: metadata never comes, every record times out.
    let (mut e, futures) = setup_cfg(&broker, 40, "127.0.0.1:1", |c| {
        c.delivery_timeout(Duration::from_secs(15))
    });
    run_until(&mut e, Duration::from_secs(20), |_| all_done(&futures));
    let m = e.metrics_snapshot(e.client.transport().now());
    assert_eq!(m.record_error_total, 40);
    assert_eq!(m.record_send_total, 0);
    assert_eq!(m.topic(TOPIC).expect("topic").record_error_total, 40);
    let bootstrap = m.network.node(NodeId(-1)).expect("the bootstrap node");
    assert!(
        bootstrap.connects >= 2,
        "reconnects: {}",
        bootstrap.connects
    );
    assert_eq!(bootstrap.connections_created, 0);
}

/// A JSON value's type, for the schema.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Int,
    Obj,
}

fn check(v: &serde_json::Value, schema: &[(&str, Ty)], at: &str) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{at}: not an object"));
    for (k, ty) in schema {
        let f = o.get(*k).unwrap_or_else(|| panic!("{at}: no field `{k}`"));
        let ok = match ty {
            Ty::Str => f.is_string(),
            Ty::Int => f.is_u64() || f.is_i64(),
            Ty::Obj => f.is_object(),
        };
        assert!(ok, "{at}.{k}: expected {ty:?}, got {f}");
    }
}

const TOP: &[(&str, Ty)] = &[
    ("name", Ty::Str),
    ("client_id", Ty::Str),
    ("type", Ty::Str),
    ("ts", Ty::Int),
    ("time", Ty::Int),
    ("age", Ty::Int),
    ("msg_cnt", Ty::Int),
    ("msg_size", Ty::Int),
    ("msg_size_max", Ty::Int),
    ("tx", Ty::Int),
    ("tx_bytes", Ty::Int),
    ("rx", Ty::Int),
    ("rx_bytes", Ty::Int),
    ("txmsgs", Ty::Int),
    ("txmsg_bytes", Ty::Int),
    ("brokers", Ty::Obj),
    ("topics", Ty::Obj),
];
const BROKER: &[(&str, Ty)] = &[
    ("name", Ty::Str),
    ("nodeid", Ty::Int),
    ("nodename", Ty::Str),
    ("source", Ty::Str),
    ("state", Ty::Str),
    ("outbuf_cnt", Ty::Int),
    ("waitresp_cnt", Ty::Int),
    ("tx", Ty::Int),
    ("txbytes", Ty::Int),
    ("req_timeouts", Ty::Int),
    ("rx", Ty::Int),
    ("rxbytes", Ty::Int),
    ("connects", Ty::Int),
    ("disconnects", Ty::Int),
    ("int_latency", Ty::Obj),
    ("rtt", Ty::Obj),
];
const WINDOW: &[(&str, Ty)] = &[
    ("min", Ty::Int),
    ("max", Ty::Int),
    ("avg", Ty::Int),
    ("sum", Ty::Int),
    ("p50", Ty::Int),
    ("p75", Ty::Int),
    ("p90", Ty::Int),
    ("p95", Ty::Int),
    ("p99", Ty::Int),
    ("p99_99", Ty::Int),
    ("cnt", Ty::Int),
];
const PARTITION: &[(&str, Ty)] = &[
    ("partition", Ty::Int),
    ("broker", Ty::Int),
    ("leader", Ty::Int),
    ("msgq_cnt", Ty::Int),
    ("msgq_bytes", Ty::Int),
    ("xmit_msgq_cnt", Ty::Int),
    ("xmit_msgq_bytes", Ty::Int),
    ("msgs_inflight", Ty::Int),
    ("txmsgs", Ty::Int),
    ("txbytes", Ty::Int),
];

#[test]
fn the_statistics_callback_gets_librdkafka_shaped_json_every_interval() {
    let broker = Broker::default();
    let docs: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let sink = docs.clone();
    let interval = Duration::from_secs(1);
    let (mut e, futures) = setup_cfg(&broker, 100, ADDR, |mut c| {
        c.statistics_interval = interval;
        c.stats_callback = Some(StatsCallback::new(move |j| {
            sink.lock().expect("sink").push(j.to_string())
        }));
        c
    });
    let start = e.client.transport().now();
    run_until(&mut e, Duration::from_secs(10), |_| all_done(&futures));
    // Idle turns until 3.5 s of simulated time: reports at 1, 2 and 3 s, no more.
    let until = start + Duration::from_millis(3500);
    run_until(&mut e, Duration::from_secs(10), |e| {
        e.client.transport().now() >= until
    });
    let docs = docs.lock().expect("docs").clone();
    assert_eq!(docs.len(), 3, "one document per interval");
    let last: serde_json::Value = serde_json::from_str(&docs[2]).expect("valid JSON");
    check(&last, TOP, "stats");
    assert_eq!(last["type"], "producer");
    assert_eq!(last["client_id"], "mqnet-producer");
    assert_eq!(last["txmsgs"], 100);
    assert_eq!(last["msg_cnt"], 0, "everything delivered");
    assert_eq!(last["msg_size"], 0);
    let m = e.metrics_snapshot(e.client.transport().now());
    assert_eq!(last["tx"], m.network.request_total);
    assert_eq!(last["rx_bytes"], m.network.incoming_byte_total);
    let brokers = last["brokers"].as_object().expect("brokers");
    assert_eq!(brokers.len(), 2, "the bootstrap node and broker 1");
    for (name, b) in brokers {
        check(b, BROKER, name);
        check(&b["rtt"], WINDOW, &format!("{name}.rtt"));
        check(&b["int_latency"], WINDOW, &format!("{name}.int_latency"));
    }
    let b1 = &brokers["127.0.0.1:9092/1"];
    assert_eq!(b1["state"], "UP");
    assert_eq!(b1["nodeid"], 1);
    assert_eq!(
        b1["tx"],
        m.network.node(NodeId(1)).expect("node 1").request_total
    );
    let p0 = &last["topics"][TOPIC]["partitions"]["0"];
    check(p0, PARTITION, "partition 0");
    assert_eq!(p0["txmsgs"], 100);
    assert_eq!(p0["leader"], 1);
    // The first document (at 1 s) saw the produce traffic in its windows; the third none.
    let first: serde_json::Value = serde_json::from_str(&docs[0]).expect("valid JSON");
    let produce_requests = broker.lock().produce.len() as u64;
    assert_eq!(
        first["brokers"]["127.0.0.1:9092/1"]["rtt"]["cnt"],
        produce_requests
    );
    assert_eq!(b1["rtt"]["cnt"], 0, "nothing new in the last interval");
}
