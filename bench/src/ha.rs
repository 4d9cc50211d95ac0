//! `mqnet-bench ha`: produce throughput and latency through mqnet's broker replication.
//!
//! Three rows, each on fresh temp data dirs, brokers in this process (1 node each, the slave
//! replicating over loopback), mqnet's producer sending `--records` records of `--size` bytes
//! (keys = the record index) to a topic of `--partitions` partitions:
//!
//! - `acks=1, no slave`: a plain broker;
//! - `ASYNC_MASTER + slave, acks=1`: answered after the local append;
//! - `SYNC_MASTER + slave, acks=all`: idempotent, answered once the slave acknowledged.
//!
//! Reports records/s, MB/s (values), p50/p99 send-to-delivery latency, the master's replication
//! lag (bytes; sampled every 10 ms while producing: mean and max) and the catch-up time after the
//! last delivery (until the slave's journal ends where the master's does).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;

use mqnet::broker::ha::{HaConfig, Role};
use mqnet::broker::{Broker, BrokerConfig};
use mqnet::producer::{Acks, DeliveryResult, Producer, ProducerConfig, ProducerRecord};

use crate::error::{BenchError, Context as _};

/// Arguments of `ha`.
#[derive(Debug, Args)]
pub struct HaArgs {
    /// Records per row.
    #[arg(long, default_value_t = 300_000)]
    records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// linger.ms of the producer.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// batch.size of the producer (Kafka's default 16 KiB). A SYNC_MASTER holds each request of
    /// a connection for a replication round trip (one request in process per connection, as in
    /// Kafka), so its throughput grows with the bytes per request.
    #[arg(long, default_value_t = 16_384)]
    batch_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Async,
    Sync,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Plain => "acks=1, no slave",
            Mode::Async => "ASYNC_MASTER + slave, acks=1",
            Mode::Sync => "SYNC_MASTER + slave, acks=all",
        }
    }
}

struct Row {
    mode: Mode,
    records_per_s: f64,
    mb_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
    lag_mean: f64,
    lag_max: i64,
    catch_up_ms: f64,
}

struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

const TOPIC: &str = "ha-bench";

fn start(mode: Mode, partitions: i32) -> Result<(Broker, Option<Broker>), BenchError> {
    let ha = match mode {
        Mode::Plain => None,
        Mode::Async => Some(HaConfig::master(
            Role::AsyncMaster,
            "127.0.0.1:0".parse().unwrap(),
        )),
        Mode::Sync => Some(HaConfig::master(
            Role::SyncMaster,
            "127.0.0.1:0".parse().unwrap(),
        )),
    };
    let master = Broker::start(BrokerConfig {
        default_partitions: partitions,
        ha,
        ..BrokerConfig::default()
    })
    .context("master")?;
    master.create_topic(TOPIC, partitions).context("topic")?;
    let Some(addr) = master.ha_listen_addr() else {
        return Ok((master, None));
    };
    let slave = Broker::start(BrokerConfig {
        ha: Some(HaConfig::slave(addr)),
        ..BrokerConfig::default()
    })
    .context("slave")?;
    // Wait (bounded) for the slave's handshake.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !master.ha_stats().is_some_and(|s| s.healthy) {
        if Instant::now() > deadline {
            return Err(BenchError::run("the slave did not connect within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((master, Some(slave)))
}

fn run(mode: Mode, a: &HaArgs) -> Result<Row, BenchError> {
    let (master, slave) = start(mode, a.partitions)?;
    let (acks, idem) = match mode {
        Mode::Sync => (Acks::All, true),
        _ => (Acks::Leader, false),
    };
    let producer = Producer::new(
        ProducerConfig::new(&master.bootstrap_servers())
            .acks(acks)
            .idempotence(idem)
            .linger_ms(a.linger_ms)
            .batch_size(a.batch_size),
    )
    .context("producer")?;
    let value = Bytes::from(vec![b'v'; a.size]);
    let first = producer.send(ProducerRecord::new(TOPIC, value.clone()).key("0"));
    match first.wait_timeout(Duration::from_secs(30)) {
        Some(Ok(_)) => {}
        other => return Err(BenchError::run(format!("record 0: {other:?}"))),
    }
    let tally = Arc::new(Mutex::new(Tally {
        hist: Histogram::new_with_bounds(1, 600_000_000_000, 3).context("latency histogram")?,
        ok: 0,
        failed: 0,
        first_error: None,
    }));
    // The lag sampler.
    let stop = Arc::new(AtomicBool::new(false));
    let master = Arc::new(master);
    let sampler = {
        let (stop, master) = (Arc::clone(&stop), Arc::clone(&master));
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Acquire) {
                if let Some(s) = master.ha_stats() {
                    samples.push(s.lag_bytes);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        })
    };
    let t0 = Instant::now();
    for i in 1..a.records {
        let sent = Instant::now();
        let t = Arc::clone(&tally);
        producer.send_with_callback(
            ProducerRecord::new(TOPIC, value.clone()).key(Bytes::from(i.to_string())),
            move |r: DeliveryResult| {
                let ns = sent.elapsed().as_nanos() as u64;
                let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(_) => {
                        t.ok += 1;
                        t.hist.saturating_record(ns.max(1));
                    }
                    Err(e) => {
                        t.failed += 1;
                        t.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            },
        );
    }
    if !producer.flush(Duration::from_secs(300)) {
        return Err(BenchError::run("flush timed out"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let done = Instant::now();
    let mut catch_up_ms = 0.0;
    if let Some(slave) = &slave {
        let end = master.ha_stats().map_or(0, |s| s.log_end);
        let deadline = done + Duration::from_secs(60);
        while slave.ha_stats().map_or(0, |s| s.log_end) < end {
            if Instant::now() > deadline {
                return Err(BenchError::run("the slave did not catch up within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        catch_up_ms = done.elapsed().as_secs_f64() * 1000.0;
    }
    stop.store(true, Ordering::Release);
    let samples = sampler
        .join()
        .map_err(|_| BenchError::child("the lag sampler panicked"))?;
    producer.close(Duration::from_secs(5));
    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = &t.first_error {
        log::warn!("{}: first error {e}", mode.label());
    }
    let n = (a.records - 1) as f64;
    let lag_mean = if samples.is_empty() || slave.is_none() {
        0.0
    } else {
        samples.iter().sum::<i64>() as f64 / samples.len() as f64
    };
    Ok(Row {
        mode,
        records_per_s: n / elapsed,
        mb_per_s: n * a.size as f64 / elapsed / 1e6,
        p50_ms: t.hist.value_at_quantile(0.5) as f64 / 1e6,
        p99_ms: t.hist.value_at_quantile(0.99) as f64 / 1e6,
        failed: t.failed,
        lag_mean,
        lag_max: if slave.is_some() {
            samples.iter().copied().max().unwrap_or(0)
        } else {
            0
        },
        catch_up_ms,
    })
}

/// Runs the three rows and prints the table; `Ok(false)` when a row counted failures.
///
/// # Errors
/// A row that could not run.
pub fn ha(a: &HaArgs) -> Result<bool, BenchError> {
    println!(
        "ha: {} records × {} B, {} partitions, linger.ms={}, batch.size={}, brokers and producer in one process",
        a.records, a.size, a.partitions, a.linger_ms, a.batch_size
    );
    println!(
        "{:<32} {:>11} {:>8} {:>9} {:>9} {:>7} {:>12} {:>11} {:>10} {:>8}",
        "mode",
        "records/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "failed",
        "lag mean B",
        "lag max B",
        "catch-up",
        "÷ acks=1"
    );
    let mut base = None;
    let mut ok = true;
    for mode in [Mode::Plain, Mode::Async, Mode::Sync] {
        let r = run(mode, a)?;
        let b = *base.get_or_insert(r.records_per_s);
        ok &= r.failed == 0;
        println!(
            "{:<32} {:>11.0} {:>8.2} {:>9.2} {:>9.2} {:>7} {:>12.0} {:>11} {:>8.1}ms {:>8.2}",
            r.mode.label(),
            r.records_per_s,
            r.mb_per_s,
            r.p50_ms,
            r.p99_ms,
            r.failed,
            r.lag_mean,
            r.lag_max,
            r.catch_up_ms,
            r.records_per_s / b
        );
    }
    Ok(ok)
}
