//! The Kafka producer: records from any thread, batched per partition and sent by one network
//! thread over the [`NetworkClient`](crate::client::NetworkClient), speaking the real Kafka
//! protocol (ApiVersions, Metadata, InitProducerId, Produce with record batch v2).
//!
//! - [`Producer`] is `Clone + Send + Sync`. [`Producer::send`] returns a [`DeliveryFuture`] (a
//!   `Future`, and a blocking [`wait`](DeliveryFuture::wait)); [`Producer::send_with_callback`]
//!   calls back on the network thread; [`Producer::flush`] and [`Producer::close`] bound the wait.
//! - Accumulator: `send` encodes the record straight into its partition's batch, on the calling
//!   thread (Kafka's `RecordAccumulator`). Records reach the network thread in whole batches: a
//!   batch that fills up is passed over a crossbeam channel, one past `linger.ms` is taken by the
//!   network thread; that thread is woken through the Selector's waker only when a batch or a
//!   topic was opened (or a batch sealed) while it was asleep in `poll`. Batches are bounded by
//!   `batch.size`; `buffer.memory` bounds what is in the producer, and `send` blocks up to
//!   `max.block.ms` for room, then fails with [`ProduceError::BufferExhausted`] — nothing is dropped
//!   silently.
//! - Partitioner: Java-compatible murmur2 of the key; keyless records stick to one partition until
//!   its batch fills.
//! - Sender: up to `max.in.flight.requests.per.connection` Produce requests in flight per broker
//!   connection, each with the ready batch of every partition the broker leads (one batch per
//!   partition per request, as Kafka's broker requires), so several batches of one partition are in
//!   flight at once. With idempotence at most five per partition (Kafka's limit); sequences are
//!   assigned in order, and when a batch fails retriably the batches behind it (which the broker
//!   answers OUT_OF_ORDER_SEQUENCE_NUMBER) are resent in sequence order after it, one at a time,
//!   never reordered or duplicated. Without idempotence and with more than one request in flight a
//!   resent batch may land after a later one (Kafka's documented behaviour);
//!   `max.in.flight.requests.per.connection=1` keeps strict order. Metadata refreshed on
//!   `NOT_LEADER_OR_FOLLOWER`, `UNKNOWN_TOPIC_OR_PARTITION` and disconnects, retriable errors retried
//!   with `retry.backoff.ms`..`retry.backoff.max.ms` (exponential, jittered) until
//!   `delivery.timeout.ms`.
//! - `enable.idempotence` (default on): producer id and epoch from InitProducerId, per-partition
//!   sequence numbers kept across retries, `DUPLICATE_SEQUENCE_NUMBER` counted as success.
//!
//! # Example
//!
//! ```no_run
//! use mqnet::producer::{Producer, ProducerConfig, ProducerRecord};
//!
//! let producer = Producer::new(ProducerConfig::new("127.0.0.1:9092")).unwrap();
//! let delivery = producer.send(ProducerRecord::new("events", "hello").key("user-1"));
//! let meta = delivery.wait().unwrap();
//! println!("partition {} offset {}", meta.partition, meta.offset);
//! producer.close(std::time::Duration::from_secs(10));
//! ```

mod accumulator;
mod command;
mod config;
mod delivery;
mod engine;
mod memory;
mod record;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Sender};

pub use crate::metrics::{ProducerMetrics, StatsCallback, TopicMetrics};
pub use config::{Acks, ProducerConfig};
pub use delivery::{DeliveryCallback, DeliveryFuture, DeliveryResult};
pub use record::{
    validate_topic, ProduceError, ProducerRecord, RecordMetadata, RetryCause, MAX_TOPIC_LEN,
};

use crate::client::ConfigError;
use crate::net::{Selector, SelectorConfig, SelectorWaker};
use accumulator::{Accumulator, Appended, Pending};
use command::Command;
use delivery::Completion;
use engine::{Engine, MetricsSlot};
use memory::BufferPool;

/// The bound used for a caller's timeout too large to add to the clock.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a producer could not be created.
#[derive(Debug)]
pub enum ProducerError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The Selector or the network thread could not be created.
    Io(std::io::Error),
}

impl std::fmt::Display for ProducerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProducerError::Config(e) => write!(f, "{e}"),
            ProducerError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ProducerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProducerError::Config(e) => Some(e),
            ProducerError::Io(e) => Some(e),
        }
    }
}

struct Inner {
    tx: Sender<Command>,
    acc: Arc<Accumulator>,
    waker: SelectorWaker,
    sleeping: Arc<AtomicBool>,
    pool: Arc<BufferPool>,
    max_block: Duration,
    /// The timeout a drop of the last handle closes with, in ms (`delivery.timeout.ms` unless
    /// set by [`Producer::close_on_drop`]).
    drop_timeout_ms: AtomicU64,
    metrics: MetricsSlot,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.waker.wake() {
                log::warn!("waking the producer thread: {e}");
            }
        }
    }

    /// Closes: see [`Producer::close`]. With `detach`, returns at once without waiting for the
    /// network thread (which fails what is pending with `Closed` and exits on its own).
    fn close_with(&self, timeout: Duration, detach: bool) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if detach {
            if self
                .tx
                .send(Command::Close(Instant::now(), bounded(1).0))
                .is_ok()
            {
                self.sleeping.store(true, Ordering::SeqCst);
                self.wake();
            }
            // Dropping the handle detaches the thread.
            drop(
                self.thread
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
            return;
        }
        let (ack_tx, ack_rx) = bounded(1);
        // A timeout too large for the clock means "no bound" (a year is as good as forever).
        let timeout = timeout.min(FOREVER);
        let deadline = Instant::now() + timeout;
        if self.tx.send(Command::Close(deadline, ack_tx)).is_ok() {
            self.sleeping.store(true, Ordering::SeqCst);
            self.wake();
            let _ = ack_rx.recv_timeout(timeout.saturating_add(Duration::from_secs(5)));
        }
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let ms = self.drop_timeout_ms.load(Ordering::SeqCst);
        if ms == 0 {
            self.close_with(Duration::ZERO, true);
        } else {
            self.close_with(Duration::from_millis(ms), false);
        }
    }
}

/// A Kafka producer. See the [module docs](self).
///
/// # Dropping
///
/// Dropping the last handle closes the producer as [`close`](Producer::close) does, with
/// `delivery.timeout.ms` as the timeout: **the drop blocks** until every pending record has
/// completed, for up to `delivery.timeout.ms` + 5 s (the network thread's grace to answer). To
/// bound it, call [`close`](Producer::close) first, or choose the drop's timeout with
/// [`close_on_drop`](Producer::close_on_drop); `close_on_drop(Duration::ZERO)` makes the drop
/// non-blocking (Kafka's `close(Duration.ZERO)`: pending records fail with
/// [`ProduceError::Closed`] on the network thread, which exits on its own).
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl Producer {
    /// Starts a producer: validates the configuration and spawns its network thread. Connections
    /// are made lazily, on the first send.
    ///
    /// # Errors
    /// [`ProducerError::Config`] for an invalid configuration, [`ProducerError::Io`] when the
    /// Selector or thread cannot be created.
    pub fn new(config: ProducerConfig) -> Result<Self, ProducerError> {
        config.validate().map_err(ProducerError::Config)?;
        let selector = Selector::with_config(SelectorConfig {
            connections_max_idle: config.client.connections_max_idle,
            ..SelectorConfig::default()
        })
        .map_err(ProducerError::Io)?;
        let mut selector = selector;
        config
            .client
            .security
            .apply(&mut selector)
            .map_err(ProducerError::Config)?;
        let waker = selector.waker();
        let (tx, rx) = unbounded();
        let pool = Arc::new(BufferPool::new(config.buffer_memory));
        let acc = Arc::new(Accumulator::new(
            config.batch_size,
            config.max_request_size,
            config.delivery_timeout,
            tx.clone(),
        ));
        let sleeping = Arc::new(AtomicBool::new(false));
        let max_block = config.max_block;
        let drop_timeout_ms = u64::try_from(config.delivery_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let engine = Engine::new(
            config,
            rx,
            acc.clone(),
            pool.clone(),
            sleeping.clone(),
            selector,
        )
        .map_err(ProducerError::Io)?;
        let metrics = engine.metrics_slot();
        let thread = std::thread::Builder::new()
            .name("mqnet-producer".into())
            .spawn(move || engine.run())
            .map_err(ProducerError::Io)?;
        Ok(Producer {
            inner: Arc::new(Inner {
                tx,
                acc,
                waker,
                sleeping,
                pool,
                max_block,
                drop_timeout_ms: AtomicU64::new(drop_timeout_ms),
                metrics,
                closed: AtomicBool::new(false),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Reserves the record's bytes, then encodes it into its partition's batch on this thread
    /// (the network thread takes whole batches); wakes the network thread when a batch or a topic
    /// was opened.
    fn enqueue(&self, record: ProducerRecord, completion: Completion) {
        if self.inner.closed.load(Ordering::SeqCst) {
            completion.complete(Err(ProduceError::Closed));
            return;
        }
        if let Err(reason) = record::validate_topic(&record.topic) {
            completion.complete(Err(ProduceError::InvalidTopic { reason }));
            return;
        }
        let reserved = record.size_estimate();
        if let Err(e) = self.inner.pool.reserve(reserved, self.inner.max_block) {
            completion.complete(Err(e));
            return;
        }
        let pending = Pending {
            record,
            completion,
            reserved,
            enqueued: Instant::now(),
        };
        match self.inner.acc.append(pending) {
            Appended::Queued { wake, orphan: None } => {
                if wake {
                    self.inner.acc.changed.store(true, Ordering::SeqCst);
                    self.inner.wake();
                }
            }
            Appended::Queued {
                orphan: Some(batch),
                ..
            } => {
                // The network thread is gone (closed): the batch's records fail.
                self.inner.pool.release(batch.reserved);
                for c in batch.completions {
                    c.complete(Err(ProduceError::Closed));
                }
            }
            Appended::Rejected(r) => {
                self.inner.pool.release(r.reserved);
                r.completion.complete(Err(r.error));
            }
        }
    }

    /// Sends a record. Blocks only while `buffer.memory` is full, for at most `max.block.ms`.
    /// The returned future resolves once the record is acknowledged (or has failed); at the latest
    /// when `delivery.timeout.ms` has passed. Call it from any thread; records sent from one thread
    /// to one partition are delivered in the order sent.
    ///
    /// The record is encoded into its partition's batch on the calling thread; nothing is sent
    /// until the batch is full, `linger.ms` has passed, or [`flush`](Self::flush) is called.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # use mqnet::producer::{Producer, ProducerConfig, ProducerRecord, ProduceError};
    /// let producer = Producer::new(ProducerConfig::new("127.0.0.1:9092")).unwrap();
    /// // Many records in flight at once, then wait for each: records are batched meanwhile.
    /// let futures: Vec<_> = (0..1000)
    ///     .map(|i| producer.send(ProducerRecord::new("events", format!("v{i}")).key(i.to_string())))
    ///     .collect();
    /// for f in futures {
    ///     match f.wait() {
    ///         Ok(meta) => assert!(meta.offset >= 0),
    ///         Err(ProduceError::DeliveryTimeout { last }) => eprintln!("gave up: {last:?}"),
    ///         Err(e) => eprintln!("failed: {e}"),
    ///     }
    /// }
    /// ```
    ///
    /// In async code, `.await` the future instead of calling `wait`.
    pub fn send(&self, record: ProducerRecord) -> DeliveryFuture {
        let (future, completion) = DeliveryFuture::new();
        self.enqueue(record, completion);
        future
    }

    /// Sends a record and calls `callback` once with its result, on the producer's network thread
    /// (or on this thread, when the record fails before it is queued). Keep the callback short: it
    /// runs on the thread that drives the network. A callback that captures nothing costs no
    /// allocation.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # use std::sync::atomic::{AtomicU64, Ordering};
    /// # use std::time::Duration;
    /// # use mqnet::producer::{Producer, ProducerConfig, ProducerRecord};
    /// static DELIVERED: AtomicU64 = AtomicU64::new(0);
    /// let producer = Producer::new(ProducerConfig::new("127.0.0.1:9092").linger_ms(5)).unwrap();
    /// for i in 0..100_000u32 {
    ///     producer.send_with_callback(ProducerRecord::new("events", i.to_be_bytes().to_vec()), |r| {
    ///         if r.is_ok() {
    ///             DELIVERED.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     });
    /// }
    /// assert!(producer.flush(Duration::from_secs(30)));
    /// ```
    pub fn send_with_callback(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(DeliveryResult) + Send + 'static,
    ) {
        self.enqueue(record, Completion::callback(Box::new(callback)));
    }

    /// Sends everything queued at once (ignoring `linger.ms`) and blocks until every record sent
    /// before this call has completed (records sent concurrently may be waited for too), or until
    /// `timeout`. Returns whether everything completed (a record that *failed* has completed: check
    /// the futures or callbacks for outcomes).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = bounded(1);
        if self.inner.tx.send(Command::Flush(ack_tx)).is_err() {
            return true;
        }
        self.inner.sleeping.store(true, Ordering::SeqCst);
        self.inner.wake();
        ack_rx.recv_timeout(timeout.min(FOREVER)).is_ok()
    }

    /// Flushes for at most `timeout`, then stops the network thread; records still not delivered
    /// fail with [`ProduceError::Closed`]. Later sends fail with `Closed`. Idempotent; every clone
    /// shares the same producer. Dropping the last clone closes with `delivery.timeout.ms` as the
    /// timeout (see [`close_on_drop`](Self::close_on_drop)).
    ///
    /// `close(Duration::ZERO)` is Kafka's forced close: nothing more is sent or waited for; every
    /// pending record fails with `Closed` (futures resolve, callbacks run, on the network thread)
    /// before it returns, which takes one turn of the network thread, not a network round trip.
    /// Otherwise it blocks for at most `timeout` + 5 s.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use mqnet::producer::{Producer, ProducerConfig, ProducerRecord, ProduceError};
    /// let producer = Producer::new(ProducerConfig::new("127.0.0.1:9092")).unwrap();
    /// let pending = producer.send(ProducerRecord::new("events", "last words"));
    /// producer.close(Duration::from_secs(5));
    /// // Delivered within the 5 s, or failed with `Closed`; either way it has completed.
    /// assert!(pending.wait_timeout(Duration::ZERO).is_some());
    /// assert_eq!(producer.send(ProducerRecord::new("events", "late")).wait(), Err(ProduceError::Closed));
    /// ```
    pub fn close(&self, timeout: Duration) {
        self.inner.close_with(timeout, false);
    }

    /// Chooses the timeout a drop of the last handle closes with (`delivery.timeout.ms` until
    /// set). [`Duration::ZERO`] makes that drop non-blocking: it signals the network thread and
    /// returns; the thread fails pending records with [`ProduceError::Closed`] and exits.
    pub fn close_on_drop(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.min(FOREVER).as_millis()).unwrap_or(u64::MAX);
        let ms = if timeout.is_zero() { 0 } else { ms.max(1) };
        self.inner.drop_timeout_ms.store(ms, Ordering::SeqCst);
    }

    /// A snapshot of the producer's metrics (Kafka's `producer.metrics()`: see
    /// [`ProducerMetrics`] and `docs/METRICS.md`). Asks the network thread, which builds it
    /// between two turns (recording them takes no lock and allocates nothing per record); waits
    /// at most a second for it, then returns the last snapshot built (the final one once the
    /// producer is closed).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use mqnet::producer::{Producer, ProducerConfig, ProducerRecord};
    /// let producer = Producer::new(ProducerConfig::new("127.0.0.1:9092")).unwrap();
    /// producer.send(ProducerRecord::new("events", "v")).wait().unwrap();
    /// let m = producer.metrics();
    /// println!("{} records sent, {:.1}/s, latency avg {:.2} ms",
    ///     m.record_send_total, m.record_send_rate, m.request_latency_avg);
    /// for row in m.to_metrics() {
    ///     println!("{row}"); // producer-metrics:record-send-rate 12.5 ...
    /// }
    /// ```
    pub fn metrics(&self) -> ProducerMetrics {
        if !self.inner.closed.load(Ordering::SeqCst) {
            let (tx, rx) = bounded(1);
            if self.inner.tx.send(Command::Metrics(tx)).is_ok() {
                self.inner.sleeping.store(true, Ordering::SeqCst);
                self.inner.wake();
                if let Ok(m) = rx.recv_timeout(Duration::from_secs(1)) {
                    return m;
                }
            }
        }
        let slot = self
            .inner
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.clone()
            .expect("the engine stores a snapshot when it is created")
    }

    /// Bytes of Produce requests handed to the network since the producer started, length
    /// prefixes included: the record batches as sent (compressed, with `compression.type`) and
    /// their request framing, resends counted again.
    pub fn produce_request_bytes(&self) -> u64 {
        self.inner.acc.request_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of records accepted and not yet completed.
    pub fn buffered_bytes(&self) -> usize {
        self.inner.pool.used()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn producer_is_clone_send_sync() {
        assert_send_sync::<Producer>();
    }

    #[test]
    fn closed_producer_fails_sends_at_once() {
        let p = Producer::new(ProducerConfig::new("127.0.0.1:1")).unwrap();
        p.close(Duration::from_millis(100));
        let r = p.send(ProducerRecord::new("t", "v")).wait();
        assert_eq!(r, Err(ProduceError::Closed));
    }

    #[test]
    fn huge_ms_values_are_refused_at_configuration_and_huge_timeouts_saturate() {
        for key in [
            "linger.ms",
            "max.block.ms",
            "retry.backoff.ms",
            "retry.backoff.max.ms",
            "delivery.timeout.ms",
            "metadata.max.age.ms",
            "request.timeout.ms",
            "reconnect.backoff.ms",
        ] {
            let mut cfg = ProducerConfig::new("127.0.0.1:1");
            cfg.set(key, "18446744073709551615").unwrap();
            match Producer::new(cfg) {
                Err(ProducerError::Config(e)) => assert!(e.to_string().contains(key), "{e}"),
                Err(e) => panic!("{key}: {e}"),
                Ok(_) => panic!("{key}: accepted"),
            }
        }
        let cfg = ProducerConfig::new("127.0.0.1:1").delivery_timeout(Duration::MAX);
        assert!(matches!(Producer::new(cfg), Err(ProducerError::Config(_))));
        let p = Producer::new(ProducerConfig::new("127.0.0.1:1")).unwrap();
        assert!(p.flush(Duration::MAX), "nothing queued: flushed at once");
        p.close(Duration::MAX);
        assert_eq!(
            p.send(ProducerRecord::new("t", "v")).wait(),
            Err(ProduceError::Closed)
        );
    }

    #[test]
    fn record_too_large_for_the_buffer_fails_without_blocking() {
        let cfg = ProducerConfig::new("127.0.0.1:1").buffer_memory(64);
        let p = Producer::new(cfg).unwrap();
        let r = p.send(ProducerRecord::new("t", vec![0u8; 1000])).wait();
        assert!(matches!(r, Err(ProduceError::RecordTooLarge { .. })));
        p.close(Duration::ZERO);
    }
}
