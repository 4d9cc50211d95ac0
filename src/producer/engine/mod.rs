//! The producer's network thread: accumulator, partitioner, sender, metadata and idempotence,
//! driven over one [`NetworkClient`].
//!
//! Sans-IO: the engine is generic over the [`Transport`] below its NetworkClient and every step
//! takes the caller's `now`; [`Engine::run`] is the thin driver that reads the transport's clock
//! (the real one for the Selector), so the same engine runs on `mqnet::sim` time in
//! tests. Its state has named parts, each with its own file:
//! - `metadata.rs`: topics' partitions and leaders, the brokers, Metadata requests;
//! - `idempotence.rs`: the producer id and epoch, per-partition sequences, their reset;
//! - `sender.rs`: which batches go in which Produce request, and what their answers do;
//! - this file: the turn, the accumulator's side, timers, completion.

mod idempotence;
mod metadata;
mod metrics;
mod sender;
#[cfg(test)]
mod sim_tests;

pub(crate) use metrics::MetricsSlot;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::accumulator::{
    Accumulator, Batch, Partitioned, Pending, Rejected, TopicMap, REQUEST_OVERHEAD,
};
use super::command::Command;
use super::config::{Acks, ProducerConfig};
use super::memory::BufferPool;
use super::record::{ProduceError, RecordMetadata, RetryCause};
use crate::client::{
    ClientRequest, ClientResponse, DisconnectCause, ExponentialBackoff, NetworkClient, NodeId,
    Outcome, SplitMix64,
};
use crate::failover::BootstrapFailover;
use crate::net::{DisconnectReason, Selector, TlsFailure, Transport};
use crate::protocol::{self, api, ApiVersionsHandshake, KafkaError, ProtocolError, TopicPartition};

#[derive(Default)]
struct PartitionState {
    leader: Option<i32>,
    /// Batches taken from the accumulator, ready to send (or waiting out a retry backoff). With
    /// idempotence, batches that hold a sequence (resends) come first, in sequence order, then
    /// unstamped ones in the order they were opened.
    batches: VecDeque<Batch>,
    /// One entry per batch of this partition in flight: its base sequence (idempotence), else -1.
    in_flight: Vec<i32>,
    next_sequence: i32,
}

#[derive(Default)]
struct TopicState {
    partitions: Vec<PartitionState>,
    last_error: Option<KafkaError>,
}

/// A batch with the partition it belongs to, once it has left the partition's queue (in flight,
/// or on its way to a retry or a failure).
type PartitionBatch = (TopicPartition, Batch);

struct InFlightProduce {
    node: NodeId,
    version: i16,
    batches: Vec<PartitionBatch>,
}

enum Control {
    Metadata { version: i16 },
    InitProducerId { version: i16 },
}

/// The network thread's whole state.
pub(crate) struct Engine<T: Transport = Selector> {
    cfg: ProducerConfig,
    /// How many batches of one partition may be in flight at once (see [`partition_limit`]).
    partition_limit: usize,
    client: NetworkClient<T, ApiVersionsHandshake>,
    /// Which bootstrap server to ask while no broker is known (RocketMQ's name-server choice:
    /// one address at a time, round robin on failure).
    bootstrap: BootstrapFailover,
    rx: Receiver<Command>,
    acc: Arc<Accumulator>,
    /// The accumulator held nothing at the last look.
    acc_empty: bool,
    /// When the accumulator next needs a look (a linger or delivery timeout), as of the last look.
    acc_wake: Option<Instant>,
    pool: Arc<BufferPool>,
    sleeping: Arc<AtomicBool>,
    topics: TopicMap<TopicState>,
    /// The metadata part (see `metadata.rs`).
    meta: metadata::Metadata,
    /// The idempotence part (see `idempotence.rs`).
    idem: idempotence::Idempotence,
    produce_in_flight: HashMap<i32, InFlightProduce>,
    control_in_flight: HashMap<i32, Control>,
    /// The producer cannot go on (an error that cannot heal, e.g. InitProducerId refused for
    /// good): every record fails with it, queued ones at once, later ones at `send`.
    fatal: Option<ProduceError>,
    flush_waiters: Vec<Sender<()>>,
    closing: Option<(Instant, Sender<()>)>,
    retry: ExponentialBackoff,
    rng: SplitMix64,
    responses: Vec<ClientResponse>,
    send_buf: BytesMut,
    /// The leaders with a sendable batch, gathered on each send pass (kept for its capacity).
    sendable_nodes: Vec<i32>,
    /// `compression.type`'s compressor, its buffers reused batch after batch.
    compressor: protocol::Compressor,
    disconnected_rx: bool,
    /// Batches that arrived for a partition not known here (never, by construction).
    strays: Vec<Batch>,
    /// Metrics, snapshots and statistics (see `metrics.rs`).
    report: metrics::Reporting,
}

/// Kafka's bound on an idempotent producer's batches in flight per partition: a broker keeps the
/// last five batches of each producer and partition for duplicate detection, so a sixth could not
/// be told from a duplicate after a resend.
pub(crate) const MAX_IN_FLIGHT_IDEMPOTENT: usize = 5;

/// How many batches of one partition may be in flight at once: with idempotence at most five (and
/// at most `max.in.flight.requests.per.connection`); without it one when
/// `max.in.flight.requests.per.connection` is 1 (strict order across retries), else that limit
/// (a resend may then land after a later batch, as in Kafka).
fn partition_limit(cfg: &ProducerConfig) -> usize {
    let conn = cfg.client.max_in_flight_requests_per_connection.max(1);
    if cfg.enable_idempotence {
        conn.min(MAX_IN_FLIGHT_IDEMPOTENT)
    } else {
        conn
    }
}

/// The most partitions a topic may have here (Kafka's own practical limit is far lower): a
/// Metadata answer with a partition index at or above it is refused, so a hostile or broken
/// answer cannot make the producer allocate per-partition state for billions of partitions.
pub(crate) const MAX_PARTITIONS: usize = 1 << 16;

/// The most distinct brokers the producer tracks (each is a node of the NetworkClient with its
/// buffers and histograms): brokers past it in a Metadata answer are ignored.
pub(crate) const MAX_BROKERS: usize = 1024;

/// Why a topic's partitions in a Metadata answer are refused: an index that is negative, not
/// below the number of partitions listed, or not below [`MAX_PARTITIONS`], or listed twice. A
/// valid answer lists each of `0..n` once.
fn invalid_partitions(t: &protocol::TopicMeta) -> Option<String> {
    let n = t.partitions.len();
    if n > MAX_PARTITIONS {
        return Some(format!("{n} partitions (at most {MAX_PARTITIONS})"));
    }
    let mut seen = vec![false; n];
    for p in &t.partitions {
        let i = p.partition;
        match usize::try_from(i).ok().filter(|&i| i < n) {
            Some(i) if !seen[i] => seen[i] = true,
            Some(_) => return Some(format!("partition {i} listed twice")),
            None => return Some(format!("partition index {i} outside 0..{n}")),
        }
    }
    None
}

/// Completes records that failed before reaching a batch (never under the accumulator's lock).
fn reject_all(pool: &BufferPool, rejected: Vec<Rejected>) {
    for r in rejected {
        pool.release(r.reserved);
        r.completion.complete(Err(r.error));
    }
}

impl<T: Transport> Engine<T> {
    pub(crate) fn new(
        cfg: ProducerConfig,
        rx: Receiver<Command>,
        acc: Arc<Accumulator>,
        pool: Arc<BufferPool>,
        sleeping: Arc<AtomicBool>,
        transport: T,
    ) -> std::io::Result<Self> {
        let mut handshake = ApiVersionsHandshake::new(&cfg.client_id);
        if cfg.client.security.protocol.uses_sasl() {
            let sasl = &cfg.client.sasl;
            let mechanism = sasl
                .mechanism
                .as_deref()
                .and_then(protocol::sasl::Mechanism::from_name)
                .ok_or_else(|| std::io::Error::other("sasl.mechanism is not set or not served"))?;
            handshake = handshake.with_sasl(protocol::sasl::SaslCredentials {
                mechanism,
                username: sasl.username.clone(),
                password: sasl.password.clone(),
            });
        }
        let mut client = NetworkClient::with_transport(transport, cfg.client.clone(), handshake)
            .with_metric_config(cfg.metrics);
        let report = metrics::Reporting::new(&cfg, client.transport().now());
        // Registered up front (under the ids BootstrapFailover gives them: -1, -2, ... in list
        // order) so a malformed address fails here, at construction.
        for (i, addr) in cfg.bootstrap_servers.iter().enumerate() {
            client.add_node(NodeId(-1 - i as i32), addr)?;
        }
        let mut rng = SplitMix64::from_entropy();
        let bootstrap = BootstrapFailover::new(cfg.bootstrap_servers.iter().cloned(), &mut rng);
        let retry = ExponentialBackoff::new(cfg.retry_backoff, cfg.retry_backoff_max, 0.2);
        let compressor = protocol::Compressor::new(cfg.compression, cfg.compression_level)
            .map_err(std::io::Error::other)?;
        Ok(Engine {
            compressor,
            bootstrap,
            partition_limit: partition_limit(&cfg),
            client,
            rx,
            acc,
            acc_empty: true,
            acc_wake: None,
            pool,
            sleeping,
            topics: TopicMap::default(),
            meta: metadata::Metadata::default(),
            idem: idempotence::Idempotence::default(),
            produce_in_flight: HashMap::new(),
            control_in_flight: HashMap::new(),
            fatal: None,
            flush_waiters: Vec::new(),
            closing: None,
            retry,
            rng,
            responses: Vec::new(),
            send_buf: BytesMut::with_capacity(cfg.batch_size * 4),
            sendable_nodes: Vec::new(),
            disconnected_rx: false,
            strays: Vec::new(),
            report,
            cfg,
        })
    }

    /// Where the engine keeps its last metrics snapshot (one is stored at once).
    pub(crate) fn metrics_slot(&self) -> MetricsSlot {
        let now = self.client.transport().now();
        let snap = self.metrics_snapshot(now);
        let slot = self.report.slot.clone();
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(snap);
        slot
    }

    /// The driver: runs turns until closed, on the transport's clock (the real clock for the
    /// Selector), sleeping in the transport's poll between them.
    pub(crate) fn run(mut self) {
        loop {
            let now = self.client.transport().now();
            let Some(timeout) = self.turn(now) else {
                break;
            };
            self.sleeping.store(true, Ordering::SeqCst);
            // An append or command that came after the look above and saw us awake did not wake
            // us: check for it now that `sleeping` is set (both sides use SeqCst).
            let timeout = if self.rx.is_empty() && !self.acc.changed.load(Ordering::SeqCst) {
                timeout
            } else {
                Duration::ZERO
            };
            self.poll(timeout, now);
            self.sleeping.store(false, Ordering::SeqCst);
            let now = self.client.transport().now();
            self.handle_responses(now);
        }
        self.shut_down();
    }

    /// One turn at `now`: look at the accumulator, ask for metadata and a producer id as needed,
    /// send what may be sent, expire what is past its deadline, answer flushes. Returns how long
    /// the engine may sleep before its next turn, or `None` once it has finished (closed, and idle
    /// or past the close deadline): then call [`shut_down`](Self::shut_down).
    pub(crate) fn turn(&mut self, now: Instant) -> Option<Duration> {
        self.collect(now);
        if self.finished(now) {
            return None;
        }
        self.check_authentication();
        self.maybe_request_metadata(now);
        self.maybe_init_producer_id(now);
        self.fail_fatally();
        self.send_ready(now);
        self.expire(now);
        self.answer_flushes();
        self.report(now);
        Some(self.next_wake(now))
    }

    /// A SASL failure on any connection is fatal (Kafka's `AuthenticationException` is not
    /// retriable): every record fails with it and the producer stops connecting, instead of
    /// reconnecting in a loop with credentials the broker refuses.
    ///
    /// A TLS handshake the broker or this client refused (a certificate expired, untrusted or for
    /// another host, no client certificate, a peer that does not speak TLS) is fatal the same way
    /// (Kafka's `SslAuthenticationException`); a connection closed during the handshake is not
    /// (a broker restarting), and is retried after the reconnect backoff.
    fn check_authentication(&mut self) {
        let failures = self.client.handshake_mut().take_auth_failures();
        if let Some((node, e)) = failures.into_iter().next() {
            if self.fatal.is_none() {
                log::error!("{node}: {e}: the producer fails every record");
                self.fatal = Some(ProduceError::Authentication {
                    message: e.to_string(),
                });
            }
        }
        if self.fatal.is_some() || !self.cfg.client.security.protocol.uses_tls() {
            return;
        }
        for &node in self.client.nodes() {
            let Some(m) = self.client.node_metrics(node) else {
                continue;
            };
            if let Some(DisconnectCause::Transport(DisconnectReason::HandshakeFailed(f))) =
                m.authentication_failure
            {
                if f != TlsFailure::ClosedDuringHandshake {
                    log::error!(
                        "{node}: TLS handshake failed ({f}): the producer fails every record"
                    );
                    self.fatal = Some(ProduceError::Authentication {
                        message: format!("{node}: TLS handshake failed: {f}"),
                    });
                    return;
                }
            }
        }
    }

    /// Polls the network for at most `timeout` (the turn began at `now`); the responses it
    /// brought are handled by [`handle_responses`](Self::handle_responses).
    pub(crate) fn poll(&mut self, timeout: Duration, now: Instant) {
        if let Err(e) = self.client.poll_io(Some(timeout), now) {
            log::error!("producer poll failed: {e}");
        }
    }

    /// Settles the last poll's I/O at `now` (read after the poll) and handles the responses.
    pub(crate) fn handle_responses(&mut self, now: Instant) {
        let mut responses = std::mem::take(&mut self.responses);
        self.client.handle_into(now, &mut responses);
        for r in responses.drain(..) {
            self.handle_response(r, now);
        }
        self.responses = responses;
    }

    /// After the last turn: every record still here fails with `Closed`, flushes and the close are
    /// answered.
    pub(crate) fn shut_down(&mut self) {
        self.fail_everything(ProduceError::Closed);
        self.answer_flushes();
        self.final_report();
        if let Some((_, ack)) = self.closing.take() {
            let _ = ack.send(());
        }
    }

    fn finished(&mut self, now: Instant) -> bool {
        match &self.closing {
            Some((deadline, _)) => self.is_idle() || now >= *deadline,
            None => self.disconnected_rx && self.is_idle(),
        }
    }

    fn is_idle(&self) -> bool {
        self.acc_empty
            && self.produce_in_flight.is_empty()
            && self
                .topics
                .values()
                .all(|t| t.partitions.iter().all(|p| p.batches.is_empty()))
    }

    // ----- commands and the accumulator --------------------------------------------------------

    /// Takes every queued command: sealed batches join their partition's queue.
    fn drain_commands(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Batch {
                    topic,
                    partition,
                    batch,
                }) => self.queue_batch(&topic, partition, batch),
                Ok(Command::Flush(ack)) => self.flush_waiters.push(ack),
                Ok(Command::Metrics(ack)) => self.report.waiters.push(ack),
                Ok(Command::Close(deadline, ack)) => self.closing = Some((deadline, ack)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.disconnected_rx = true;
                    break;
                }
            }
        }
    }

    /// Queues a batch taken from the accumulator behind the partition's others.
    fn queue_batch(&mut self, topic: &str, partition: i32, batch: Batch) {
        match self.partition_mut(topic, partition) {
            Some(p) => p.batches.push_back(batch),
            // Unreachable: a topic's batches exist only after its partitions were set here. Failed
            // by `fail_strays`, outside the accumulator's lock.
            None => {
                log::error!("a batch for unknown partition {topic}-{partition}");
                self.strays.push(batch);
            }
        }
    }

    /// Fails the batches `queue_batch` had no partition for.
    fn fail_strays(&mut self) {
        for batch in std::mem::take(&mut self.strays) {
            self.fail_batch(None, batch, ProduceError::Closed);
        }
    }

    /// Looks at the accumulator: takes the commands (sealed batches among them), learns new
    /// topics, and takes a partition's open batch once it may be sent (the partition has a leader,
    /// nothing in flight and nothing queued here, and the batch is full, past `linger.ms`, or
    /// flushing) or is past its delivery timeout; fails waiting records past theirs. A batch left
    /// open keeps filling while its partition's previous batch is in flight.
    ///
    /// Order: a sealed batch is sent on the channel while its sender holds the accumulator's lock,
    /// so draining the channel under the lock, before looking at open batches, queues every
    /// partition's batches in the order they were opened.
    fn collect(&mut self, now: Instant) {
        self.acc.changed.store(false, Ordering::SeqCst);
        let linger = self.cfg.linger;
        let batch_size = self.cfg.batch_size;
        let delivery_timeout = self.cfg.delivery_timeout;
        let limit = self.partition_limit;
        let mut expired: Vec<(String, Pending)> = Vec::new();
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| {
            if wake.is_none_or(|w| t < w) {
                wake = Some(t);
            }
        };
        let mut empty = true;
        let acc = self.acc.clone();
        let mut st = acc.lock();
        self.drain_commands();
        let flushing = self.flushing();
        if st.new_topics {
            st.new_topics = false;
            for name in st.topics.keys() {
                if !self.topics.contains_key(name) {
                    self.topics.insert(name.clone(), TopicState::default());
                    self.meta.due = true;
                }
            }
        }
        for (name, at_topic) in st.topics.iter_mut() {
            let Some(topic) = self.topics.get_mut(name) else {
                continue;
            };
            while at_topic
                .waiting
                .front()
                .is_some_and(|p| now >= p.enqueued + delivery_timeout)
            {
                if let Some(p) = at_topic.waiting.pop_front() {
                    expired.push((name.clone(), p));
                }
            }
            if let Some(p) = at_topic.waiting.front() {
                empty = false;
                at(p.enqueued + delivery_timeout);
            }
            for (ap, p) in at_topic
                .partitions
                .iter_mut()
                .zip(topic.partitions.iter_mut())
            {
                let Some(b) = ap.open.as_ref() else {
                    continue;
                };
                let sendable =
                    p.leader.is_some() && p.in_flight.len() < limit && p.batches.is_empty();
                let lingered = now.saturating_duration_since(b.created) >= linger;
                if now >= b.deadline
                    || (sendable && (flushing || lingered || b.buf.len() >= batch_size))
                {
                    p.batches.extend(ap.open.take());
                } else {
                    empty = false;
                    at(b.deadline);
                    if sendable {
                        at(b.created + linger);
                    }
                }
            }
        }
        drop(st);
        self.fail_strays();
        self.acc_empty = empty;
        self.acc_wake = wake;
        for (name, p) in expired {
            self.report.stats.records_failed(now, Some(&name), 1);
            self.pool.release(p.reserved);
            let last = self
                .topics
                .get(&name)
                .and_then(|t| t.last_error)
                .map(RetryCause::Broker);
            p.completion
                .complete(Err(ProduceError::DeliveryTimeout { last }));
        }
    }

    fn partition_mut(&mut self, topic: &str, part: i32) -> Option<&mut PartitionState> {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(part as usize))
    }

    fn complete_batch(&mut self, tp: &TopicPartition, b: Batch, base_offset: i64) {
        self.pool.release(b.reserved);
        for (i, c) in b.completions.into_iter().enumerate() {
            let offset = if base_offset >= 0 {
                base_offset + i as i64
            } else {
                -1
            };
            c.complete(Ok(RecordMetadata {
                partition: tp.partition,
                offset,
            }));
        }
    }

    /// Fails every record of `b` with `err`; `topic` (when the caller knows it) is charged the
    /// per-topic error count, the producer's total always.
    fn fail_batch(&mut self, topic: Option<&str>, b: Batch, err: ProduceError) {
        let now = self.client.transport().now();
        self.report
            .stats
            .records_failed(now, topic, b.completions.len());
        self.pool.release(b.reserved);
        for c in b.completions {
            c.complete(Err(err.clone()));
        }
    }

    /// Puts batches back in their partitions after a backoff — with idempotence at their place in
    /// sequence order (ahead of every batch not stamped yet), otherwise at the front; fails them
    /// when retries or the delivery timeout are exhausted.
    ///
    /// Without idempotence and with more than one batch of a partition in flight, a resent batch
    /// may land after a later one (Kafka's documented behaviour); `max.in.flight = 1` keeps order.
    fn retry_batches(&mut self, batches: Vec<PartitionBatch>, why: RetryCause, now: Instant) {
        for (tp, mut b) in batches.into_iter().rev() {
            b.attempts += 1;
            b.last_error = Some(why.clone());
            if now >= b.deadline {
                let last = b.last_error.clone();
                self.abandon_sequence(&b);
                self.fail_batch(Some(&tp.topic), b, ProduceError::DeliveryTimeout { last });
                continue;
            }
            if b.attempts > self.cfg.retries {
                let last = b.last_error.clone();
                self.abandon_sequence(&b);
                self.fail_batch(Some(&tp.topic), b, ProduceError::RetriesExhausted { last });
                continue;
            }
            self.report
                .stats
                .records_retried(now, &tp.topic, b.completions.len());
            let backoff = self.retry.backoff(b.attempts - 1, &mut self.rng);
            b.retry_at = Some(now.checked_add(backoff).unwrap_or(now));
            log::debug!("retrying {tp} after {backoff:?}: {why}");
            if let Some(p) = self.partition_mut(&tp.topic, tp.partition) {
                match b.base_sequence {
                    Some(seq) => {
                        let at = p
                            .batches
                            .iter()
                            .position(|q| q.base_sequence.is_none_or(|s| s.wrapping_sub(seq) > 0))
                            .unwrap_or(p.batches.len());
                        p.batches.insert(at, b);
                    }
                    None => p.batches.push_front(b),
                }
            }
        }
    }

    fn fail_node_batches(&mut self, node: NodeId, err: &ProduceError) {
        let mut failed = Vec::new();
        for (name, t) in self.topics.iter_mut() {
            for p in t.partitions.iter_mut() {
                if p.leader == Some(node.0) && p.in_flight.is_empty() {
                    while let Some(b) = p.batches.pop_front() {
                        failed.push((name.clone(), b));
                    }
                }
            }
        }
        for (name, b) in failed {
            self.fail_batch(Some(&name), b, err.clone());
        }
    }

    // ----- timers ------------------------------------------------------------------------------

    fn expire(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (name, t) in self.topics.iter_mut() {
            for p in t.partitions.iter_mut() {
                while p.batches.front().is_some_and(|b| now >= b.deadline) {
                    if let Some(b) = p.batches.pop_front() {
                        expired.push((name.clone(), b));
                    }
                }
            }
        }
        for (name, b) in expired {
            let last = b.last_error.clone();
            self.abandon_sequence(&b);
            self.fail_batch(Some(&name), b, ProduceError::DeliveryTimeout { last });
        }
        // Batches in flight past their deadline: their records fail now, as `delivery.timeout.ms`
        // promises (Kafka's client does the same). The request itself cannot be recalled; when its
        // outcome arrives the batch has no records left to complete, and it is never retried
        // (`retry_batches` fails anything past its deadline).
        for inflight in self.produce_in_flight.values_mut() {
            for (tp, b) in inflight.batches.iter_mut() {
                if now >= b.deadline && !b.completions.is_empty() {
                    self.report
                        .stats
                        .records_failed(now, Some(&tp.topic), b.completions.len());
                    self.pool.release(b.reserved);
                    b.reserved = 0;
                    let last = b.last_error.clone().or(Some(RetryCause::InFlight));
                    for c in b.completions.drain(..) {
                        c.complete(Err(ProduceError::DeliveryTimeout { last: last.clone() }));
                    }
                }
            }
        }
    }

    fn next_wake(&self, now: Instant) -> Duration {
        let mut wake = now + Duration::from_secs(1);
        let mut at = |t: Instant| {
            if t < wake {
                wake = t;
            }
        };
        for inflight in self.produce_in_flight.values() {
            for (_, b) in &inflight.batches {
                if !b.completions.is_empty() {
                    at(b.deadline);
                }
            }
        }
        if let Some(t) = self.acc_wake {
            at(t);
        }
        for t in self.topics.values() {
            for p in &t.partitions {
                if let Some(b) = p.batches.front() {
                    at(b.deadline);
                    // A backoff still running; one that has run out waits for its leader,
                    // whose connection delay is a wake of its own below (no busy loop while
                    // the leader reconnects).
                    if let Some(r) = b.retry_at.filter(|&r| r > now) {
                        at(r);
                    }
                }
            }
        }
        if let Some(t) = self.meta.backoff_until {
            if self.meta.due {
                at(t);
            }
        }
        if let Some((d, _)) = &self.closing {
            at(*d);
        }
        if let Some(t) = self.report.next() {
            at(t);
        }
        if let Some(t) = self.idem.init_backoff_until {
            if self.cfg.enable_idempotence && self.idem.producer_id.is_none() {
                at(t);
            }
        }
        // A node in reconnect backoff that we need: wake when it may connect.
        for n in self.client.nodes() {
            let d = self.client.connection_delay(*n, now);
            if d > Duration::ZERO && d < Duration::from_secs(1) {
                at(now + d);
            }
        }
        wake.saturating_duration_since(now)
    }

    fn answer_flushes(&mut self) {
        if !self.flush_waiters.is_empty() && self.is_idle() {
            for ack in self.flush_waiters.drain(..) {
                let _ = ack.send(());
            }
        }
    }

    fn fail_everything(&mut self, err: ProduceError) {
        let mut accumulated = Vec::new();
        let mut waiting = Vec::new();
        {
            // Close the accumulator (later appends fail at once), take the queued commands (so
            // every sealed batch and flush gets an answer) and everything left in it.
            let acc = self.acc.clone();
            let mut st = acc.lock();
            st.closed = true;
            self.drain_commands();
            for t in st.topics.values_mut() {
                waiting.extend(t.waiting.drain(..));
                for p in t.partitions.iter_mut() {
                    if let Some(b) = p.open.take() {
                        accumulated.push(b);
                    }
                }
            }
        }
        self.fail_strays();
        self.acc_empty = true;
        // Oldest first: in flight, queued here, in the accumulator, waiting for metadata.
        let mut all: Vec<Batch> = self
            .produce_in_flight
            .drain()
            .flat_map(|(_, inflight)| inflight.batches)
            .map(|(_, b)| b)
            .collect();
        for t in self.topics.values_mut() {
            for p in t.partitions.iter_mut() {
                while let Some(b) = p.batches.pop_front() {
                    all.push(b);
                }
            }
        }
        all.extend(accumulated);
        for b in all {
            self.fail_batch(None, b, err.clone());
        }
        for p in waiting {
            self.pool.release(p.reserved);
            p.completion.complete(Err(err.clone()));
        }
    }
}

impl<T: Transport> Drop for Engine<T> {
    /// On any exit, a panic included: close the accumulator, so later sends fail at once, and drop
    /// what it holds (a dropped completion resolves with `Closed`). After a normal run it is
    /// already closed and empty.
    fn drop(&mut self) {
        let mut st = self.acc.lock();
        st.closed = true;
        let topics = std::mem::take(&mut st.topics);
        drop(st);
        drop(topics);
    }
}

impl From<ProtocolError> for ProduceError {
    fn from(e: ProtocolError) -> Self {
        ProduceError::Protocol(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::delivery::DeliveryFuture;
    use crate::producer::ProducerRecord;
    use bytes::Bytes;
    use crossbeam_channel::unbounded;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponse as KpMetadata, MetadataResponseBroker, MetadataResponsePartition,
        MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

    const V: i16 = 1;
    const TOPIC: &str = "t";

    /// An engine over a real (idle) Selector that knows topic `t`, with one record of it waiting
    /// in the accumulator for the topic's partitions.
    fn engine() -> (Engine, DeliveryFuture) {
        let cfg = ProducerConfig::new("127.0.0.1:1");
        let (tx, rx) = unbounded();
        let acc = Arc::new(Accumulator::new(
            cfg.batch_size,
            cfg.max_request_size,
            cfg.delivery_timeout,
            tx,
        ));
        let pool = Arc::new(BufferPool::new(cfg.buffer_memory));
        let sleeping = Arc::new(AtomicBool::new(false));
        let selector = Selector::new().expect("a selector");
        let mut e = Engine::new(cfg, rx, acc.clone(), pool, sleeping, selector).expect("engine");
        let (future, completion) = DeliveryFuture::new();
        let record = ProducerRecord::new(TOPIC, "v");
        let reserved = record.size_estimate();
        let _ = acc.append(Pending {
            record,
            completion,
            reserved,
            enqueued: Instant::now(),
        });
        e.topics.insert(TOPIC.to_string(), TopicState::default());
        (e, future)
    }

    fn metadata(brokers: impl Iterator<Item = i32>, partitions: &[i32]) -> Bytes {
        let body = KpMetadata::default()
            .with_brokers(
                brokers
                    .map(|id| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(id))
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(9)
                    })
                    .collect(),
            )
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC))))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&i| {
                            MetadataResponsePartition::default()
                                .with_partition_index(i)
                                .with_leader_id(BrokerId(1))
                        })
                        .collect(),
                )]);
        let mut buf = bytes::BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(1)
            .encode(&mut buf, KpMetadata::header_version(V))
            .expect("header");
        body.encode(&mut buf, V).expect("body");
        buf.freeze()
    }

    fn partitions(e: &Engine) -> (usize, usize) {
        let here = e.topics.get(TOPIC).map_or(0, |t| t.partitions.len());
        let acc = e
            .acc
            .lock()
            .topics
            .get(TOPIC)
            .map_or(0, |t| t.partitions.len());
        (here, acc)
    }

    #[test]
    fn partition_indexes_outside_the_listed_count_are_refused() {
        let (mut e, future) = engine();
        let now = Instant::now();
        for bad in [
            &[i32::MAX - 1][..],
            &[i32::MAX],
            &[-1],
            &[0, 5],
            &[0, 0],
            &[1],
        ] {
            e.meta.due = false;
            e.handle_metadata(V, &metadata([1].into_iter(), bad), now);
            assert_eq!(partitions(&e), (0, 0), "{bad:?}");
            assert!(e.meta.due, "{bad:?}: metadata is asked again");
        }
        assert!(
            future.wait_timeout(Duration::ZERO).is_none(),
            "the record waits"
        );
        e.handle_metadata(V, &metadata([1].into_iter(), &[1, 0]), now);
        assert_eq!(partitions(&e), (2, 2));
        assert!(e.acc.lock().topics[TOPIC].waiting.is_empty());
    }

    #[test]
    fn the_brokers_a_metadata_answer_adds_are_bounded() {
        let (mut e, _future) = engine();
        let now = Instant::now();
        let bootstrap = e.client.nodes().len();
        e.handle_metadata(V, &metadata((-5..3000).rev(), &[0]), now);
        assert_eq!(e.meta.brokers.len(), MAX_BROKERS);
        assert!(e.meta.brokers.keys().all(|&id| id >= 0));
        assert_eq!(e.client.nodes().len(), bootstrap + MAX_BROKERS);
        // Known brokers are still updated; new ones still refused.
        e.handle_metadata(V, &metadata([2999, 5000].into_iter(), &[0]), now);
        assert_eq!(e.meta.brokers.len(), MAX_BROKERS);
        assert!(!e.meta.brokers.contains_key(&5000));
    }
}
