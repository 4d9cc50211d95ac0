//! The workload through mqnet's [`Producer`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::producer::{DeliveryResult, Producer, ProducerConfig, ProducerRecord};

use super::pace::Pacer;
use super::settings::Settings;
use super::tally::{decimal, value_bytes, Measured, Tally};
use super::WARMUP_LIMIT;
use crate::error::{BenchError, Context};

// ----- mqnet -------------------------------------------------------------------------------------

pub(super) fn run_mqnet(
    s: &Settings,
    bootstrap: &str,
    topic: &str,
) -> Result<Measured, BenchError> {
    let deadline = Instant::now() + s.budget();
    let cfg = ProducerConfig::new(bootstrap)
        .acks(s.acks.mqnet())
        .idempotence(s.acks.idempotence())
        .linger_ms(s.linger_ms)
        .batch_size(s.batch_size)
        .buffer_memory(s.buffer_memory)
        .compression(s.compression, None);
    let cfg = match s.max_in_flight {
        Some(n) => {
            let client = cfg.client.clone().max_in_flight(n);
            cfg.client(client)
        }
        None => cfg,
    };
    let mut cfg = cfg;
    for (k, v) in &s.extra {
        cfg.set(k, v)
            .with_context(|| format!("mqnet producer: -X {k}"))?;
    }
    let producer = Producer::new(cfg).context("mqnet producer")?;
    let value = value_bytes(s.size);
    let mut key = [0u8; 20];
    let record = |i: u64, key: &mut [u8; 20]| {
        ProducerRecord::new(topic, value.clone()).key(Bytes::copy_from_slice(decimal(i, key)))
    };

    // Record 0: connection and metadata.
    let first = producer.send(record(0, &mut key));
    match first.wait_timeout(WARMUP_LIMIT) {
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            producer.close(Duration::ZERO);
            return Err(BenchError::wrap("mqnet: record 0 failed".into(), e));
        }
        None => {
            producer.close(Duration::ZERO);
            return Err(BenchError::Run(format!(
                "mqnet: record 0 not delivered within {WARMUP_LIMIT:?}"
            )));
        }
    }

    // One tally per run, shared by the delivery callbacks (they run on the producer's I/O thread).
    let tally = Arc::new(Mutex::new(Tally::new()));
    let start = Instant::now();
    let pacer = Pacer::new(start, s.rate);
    for i in 1..s.records {
        if let Some(wait) = pacer.ahead(i, Instant::now()) {
            std::thread::sleep(wait);
        }
        if i % 65_536 == 0 && Instant::now() >= deadline {
            break;
        }
        let sent = Instant::now();
        let tally = Arc::clone(&tally);
        producer.send_with_callback(record(i, &mut key), move |r: DeliveryResult| {
            let now = Instant::now();
            let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
            match r {
                Ok(_) => t.delivered(sent, now),
                Err(e) => t.failed(now, &e),
            }
        });
    }
    producer.flush(deadline.saturating_duration_since(Instant::now()));
    producer.close(Duration::from_secs(5));
    // Callbacks of records still pending after close find a fresh tally and count nowhere.
    let tally = std::mem::replace(
        &mut *tally.lock().unwrap_or_else(PoisonError::into_inner),
        Tally::new(),
    );
    let metrics = s
        .stats
        .then(|| crate::metrics_report::to_map(&producer.metrics().to_metrics()));
    Ok(Measured {
        tally,
        start,
        rejected: 0,
        first_error: None,
        metrics,
        wire_bytes: producer.produce_request_bytes(),
    })
}
