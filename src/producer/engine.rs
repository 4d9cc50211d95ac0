//! The producer's network thread: accumulator, partitioner, sender, metadata and idempotence,
//! driven over one [`NetworkClient`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::accumulator::{
    Accumulator, Batch, Partitioned, Pending, Rejected, TopicMap, REQUEST_OVERHEAD,
};
use super::config::{Acks, ProducerConfig};
use super::memory::BufferPool;
use super::record::{ProduceError, RecordMetadata};
use crate::client::{
    ClientRequest, ClientResponse, ExponentialBackoff, NetworkClient, NodeId, Outcome, SplitMix64,
};
use crate::net::Selector;
use crate::protocol::{self, api, ApiVersionsHandshake, KafkaError, ProtocolError};

/// What application threads send to the network thread.
// Nearly every command is a `Batch`; boxing it would add an allocation per batch to spare the rare
// flush and close a few bytes of channel slot.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// A batch that filled up, sealed by the thread that appended to it (sent while it held the
    /// accumulator's lock: see [`Engine::collect`]).
    Batch {
        topic: Arc<str>,
        partition: i32,
        batch: Batch,
    },
    Flush(Sender<()>),
    Close(Instant, Sender<()>),
}

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

struct InFlightProduce {
    node: NodeId,
    version: i16,
    batches: Vec<(String, i32, Batch)>,
}

enum Control {
    Metadata { version: i16 },
    InitProducerId { version: i16 },
}

/// The network thread's whole state.
pub(crate) struct Engine {
    cfg: ProducerConfig,
    /// How many batches of one partition may be in flight at once (see [`partition_limit`]).
    partition_limit: usize,
    client: NetworkClient<Selector, ApiVersionsHandshake>,
    rx: Receiver<Command>,
    acc: Arc<Accumulator>,
    /// The accumulator held nothing at the last look.
    acc_empty: bool,
    /// When the accumulator next needs a look (a linger or delivery timeout), as of the last look.
    acc_wake: Option<Instant>,
    pool: Arc<BufferPool>,
    sleeping: Arc<AtomicBool>,
    topics: TopicMap<TopicState>,
    brokers: HashMap<i32, String>,
    produce_in_flight: HashMap<i32, InFlightProduce>,
    control_in_flight: HashMap<i32, Control>,
    metadata_due: bool,
    metadata_in_flight: bool,
    metadata_at: Option<Instant>,
    metadata_backoff_until: Option<Instant>,
    metadata_failures: u32,
    producer_id: Option<(i64, i16)>,
    pid_in_flight: bool,
    /// InitProducerId failed: no new attempt before this (the retry backoff, growing with
    /// `pid_failures`).
    pid_backoff_until: Option<Instant>,
    pid_failures: u32,
    /// The producer cannot go on (an error that cannot heal, e.g. InitProducerId refused for
    /// good): every record fails with it, queued ones at once, later ones at `send`.
    fatal: Option<ProduceError>,
    /// A batch holding sequence numbers failed with its outcome unknown (retries or
    /// `delivery.timeout.ms` ran out): the partition's sequence has a gap the broker will never
    /// accept. As Kafka does (KIP-360), sending pauses, requests in flight drain, the producer
    /// gets a new id/epoch and every partition's sequence restarts at 0.
    sequence_reset_due: bool,
    flush_waiters: Vec<Sender<()>>,
    closing: Option<(Instant, Sender<()>)>,
    retry: ExponentialBackoff,
    rng: SplitMix64,
    responses: Vec<ClientResponse>,
    send_buf: BytesMut,
    disconnected_rx: bool,
    /// Batches that arrived for a partition not known here (never, by construction).
    strays: Vec<(String, i32, Batch)>,
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

impl Engine {
    pub fn new(
        cfg: ProducerConfig,
        rx: Receiver<Command>,
        acc: Arc<Accumulator>,
        pool: Arc<BufferPool>,
        sleeping: Arc<AtomicBool>,
        selector: Selector,
    ) -> std::io::Result<Self> {
        let handshake = ApiVersionsHandshake::new(&cfg.client_id);
        let mut client = NetworkClient::with_transport(selector, cfg.client.clone(), handshake);
        for (i, addr) in cfg.bootstrap_servers.iter().enumerate() {
            client.add_node(NodeId(-1 - i as i32), addr)?;
        }
        let retry = ExponentialBackoff::new(cfg.retry_backoff, cfg.retry_backoff_max, 0.2);
        Ok(Engine {
            partition_limit: partition_limit(&cfg),
            client,
            rx,
            acc,
            acc_empty: true,
            acc_wake: None,
            pool,
            sleeping,
            topics: TopicMap::default(),
            brokers: HashMap::new(),
            produce_in_flight: HashMap::new(),
            control_in_flight: HashMap::new(),
            metadata_due: true,
            metadata_in_flight: false,
            metadata_at: None,
            metadata_backoff_until: None,
            metadata_failures: 0,
            producer_id: None,
            pid_in_flight: false,
            pid_backoff_until: None,
            pid_failures: 0,
            fatal: None,
            sequence_reset_due: false,
            flush_waiters: Vec::new(),
            closing: None,
            retry,
            rng: SplitMix64::from_entropy(),
            responses: Vec::new(),
            send_buf: BytesMut::with_capacity(cfg.batch_size * 4),
            disconnected_rx: false,
            strays: Vec::new(),
            cfg,
        })
    }

    /// Runs until closed.
    pub fn run(mut self) {
        loop {
            let now = Instant::now();
            self.collect(now);
            if self.finished(now) {
                break;
            }
            self.maybe_request_metadata(now);
            self.maybe_init_producer_id(now);
            self.fail_fatally();
            self.send_ready(now);
            self.expire(now);
            self.answer_flushes();
            let timeout = self.next_wake(now);
            self.sleeping.store(true, Ordering::SeqCst);
            // An append or command that came after the look above and saw us awake did not wake
            // us: check for it now that `sleeping` is set (both sides use SeqCst).
            let timeout = if self.rx.is_empty() && !self.acc.changed.load(Ordering::SeqCst) {
                timeout
            } else {
                Some(Duration::ZERO)
            };
            let mut responses = std::mem::take(&mut self.responses);
            if let Err(e) = self.client.poll_into(timeout, now, &mut responses) {
                log::error!("producer poll failed: {e}");
            }
            self.sleeping.store(false, Ordering::SeqCst);
            let now = Instant::now();
            for r in responses.drain(..) {
                self.handle_response(r, now);
            }
            self.responses = responses;
        }
        self.fail_everything(ProduceError::Closed);
        self.answer_flushes();
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
                self.strays.push((topic.to_string(), partition, batch));
            }
        }
    }

    /// Fails the batches `queue_batch` had no partition for.
    fn fail_strays(&mut self) {
        for (topic, partition, batch) in std::mem::take(&mut self.strays) {
            self.fail_batch(&topic, partition, batch, ProduceError::Closed);
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
                    self.metadata_due = true;
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
            self.pool.release(p.reserved);
            let last = self
                .topics
                .get(&name)
                .and_then(|t| t.last_error)
                .map(|e| e.to_string());
            p.completion
                .complete(Err(ProduceError::DeliveryTimeout { last }));
        }
    }

    // ----- metadata ----------------------------------------------------------------------------

    /// Where and at which version to send a control request (Metadata, InitProducerId): the least
    /// loaded node once it is Ready, at the highest version both sides support. A node that shares
    /// no version with us is disconnected, so it backs off and another node is tried.
    fn control_target(
        &mut self,
        api_key: i16,
        (lo, hi): (i16, i16),
        now: Instant,
    ) -> Option<(NodeId, i16)> {
        let node = self.client.least_loaded_node(now)?;
        if !self.client.ready(node, now) {
            return None;
        }
        match self
            .client
            .handshake()
            .versions(node)?
            .negotiate(api_key, lo, hi)
        {
            Ok(version) => Some((node, version)),
            Err(e) => {
                log::error!("{node}: {e}");
                self.client.disconnect(node, now);
                None
            }
        }
    }

    fn maybe_request_metadata(&mut self, now: Instant) {
        if self.metadata_in_flight {
            return;
        }
        let stale = self
            .metadata_at
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.metadata_max_age);
        if self.topics.is_empty() || !(self.metadata_due || stale) {
            return;
        }
        if self.metadata_backoff_until.is_some_and(|t| now < t) {
            return;
        }
        let Some((node, version)) =
            self.control_target(api::METADATA, protocol::METADATA_VERSIONS, now)
        else {
            return;
        };
        let topics: Vec<&str> = self.topics.keys().map(String::as_str).collect();
        let corr = self.client.next_correlation_id();
        match protocol::encode_metadata_request(version, corr, &self.cfg.client_id, &topics) {
            Ok(frame) => {
                self.client.send(ClientRequest::new(node, corr, frame), now);
                self.control_in_flight
                    .insert(corr, Control::Metadata { version });
                self.metadata_in_flight = true;
                self.metadata_due = false;
            }
            Err(e) => log::error!("metadata request: {e}"),
        }
    }

    fn metadata_failed(&mut self, now: Instant) {
        self.metadata_in_flight = false;
        self.metadata_due = true;
        let b = self.retry.backoff(self.metadata_failures, &mut self.rng);
        self.metadata_failures = self.metadata_failures.saturating_add(1);
        self.metadata_backoff_until = Some(now + b);
    }

    fn handle_metadata(&mut self, version: i16, frame: &[u8], now: Instant) {
        self.metadata_in_flight = false;
        let md = match protocol::decode_metadata_response(version, frame) {
            Ok(md) => md,
            Err(e) => {
                log::warn!("metadata response: {e}");
                self.metadata_failed(now);
                return;
            }
        };
        self.metadata_at = Some(now);
        self.metadata_failures = 0;
        for b in &md.brokers {
            if b.node_id < 0 {
                log::warn!("metadata: broker with node id {} ignored", b.node_id);
                continue;
            }
            if !self.brokers.contains_key(&b.node_id) && self.brokers.len() >= MAX_BROKERS {
                log::warn!(
                    "metadata: broker {} ignored (already {MAX_BROKERS} brokers)",
                    b.node_id
                );
                continue;
            }
            let addr = format!("{}:{}", b.host, b.port);
            if self.brokers.get(&b.node_id) != Some(&addr) {
                if let Err(e) = self.client.add_node(NodeId(b.node_id), &addr) {
                    log::warn!("broker {} at {addr}: {e}", b.node_id);
                    continue;
                }
                self.brokers.insert(b.node_id, addr);
            }
        }
        let mut retry_soon = false;
        let mut rejected = Vec::new();
        let acc = self.acc.clone();
        let mut st = acc.lock();
        for t in md.topics {
            let Some(state) = self.topics.get_mut(&t.name) else {
                continue;
            };
            if let Some(err) = t.error {
                log::debug!("metadata for {}: {err}", t.name);
                state.last_error = Some(err);
                retry_soon = true;
                continue;
            }
            if let Some(why) = invalid_partitions(&t) {
                log::warn!("metadata for {} refused: {why}", t.name);
                retry_soon = true;
                continue;
            }
            let n = t.partitions.len();
            if state.partitions.len() < n {
                state.partitions.resize_with(n, PartitionState::default);
            }
            for p in &t.partitions {
                let Some(ps) = state.partitions.get_mut(p.partition as usize) else {
                    continue;
                };
                ps.leader = if p.error.is_none() && p.leader >= 0 {
                    Some(p.leader)
                } else {
                    retry_soon = true;
                    None
                };
            }
            state.last_error = None;
            // The accumulator learns the partitions (records that waited for them are appended
            // now, in order).
            let Partitioned {
                rejected: failed,
                sealed,
            } = st.set_partitions(&t.name, state.partitions.len());
            rejected.extend(failed);
            for (i, b) in sealed {
                if let Some(ps) = state.partitions.get_mut(i as usize) {
                    ps.batches.push_back(b);
                }
            }
        }
        drop(st);
        reject_all(&self.pool, rejected);
        if retry_soon {
            self.metadata_due = true;
            self.metadata_backoff_until = Some(now + self.cfg.retry_backoff);
        }
    }

    // ----- idempotence ------------------------------------------------------------------------

    fn maybe_init_producer_id(&mut self, now: Instant) {
        if !self.cfg.enable_idempotence
            || self.producer_id.is_some()
            || self.pid_in_flight
            || self.fatal.is_some()
            || self.pid_backoff_until.is_some_and(|t| now < t)
        {
            return;
        }
        let Some((node, version)) = self.control_target(
            api::INIT_PRODUCER_ID,
            protocol::INIT_PRODUCER_ID_VERSIONS,
            now,
        ) else {
            return;
        };
        let corr = self.client.next_correlation_id();
        match protocol::encode_init_producer_id_request(version, corr, &self.cfg.client_id) {
            Ok(frame) => {
                self.client.send(ClientRequest::new(node, corr, frame), now);
                self.control_in_flight
                    .insert(corr, Control::InitProducerId { version });
                self.pid_in_flight = true;
            }
            Err(e) => log::error!("init producer id request: {e}"),
        }
    }

    fn handle_init_producer_id(&mut self, version: i16, frame: &[u8], now: Instant) {
        match protocol::decode_init_producer_id_response(version, frame) {
            Ok(resp) => match resp.error {
                None => {
                    log::info!(
                        "producer id {} epoch {}",
                        resp.producer_id,
                        resp.producer_epoch
                    );
                    self.pid_in_flight = false;
                    self.pid_failures = 0;
                    self.pid_backoff_until = None;
                    self.producer_id = Some((resp.producer_id, resp.producer_epoch));
                }
                Some(err) if err.is_retriable() => {
                    log::warn!("InitProducerId: {err}");
                    self.init_producer_id_failed(now, err.invalidates_metadata());
                }
                Some(err) => {
                    // Not retriable (authorization, an invalid request, an unknown server
                    // error): asking again cannot heal it, so the producer fails fast.
                    log::error!("InitProducerId refused: {err}; every record fails with it");
                    self.pid_in_flight = false;
                    self.fatal = Some(ProduceError::Broker(err));
                }
            },
            Err(e) => {
                log::warn!("InitProducerId: {e}");
                self.init_producer_id_failed(now, false);
            }
        }
    }

    /// An InitProducerId attempt failed in a way that may heal: the next one waits out the retry
    /// backoff, growing with each failure in a row.
    fn init_producer_id_failed(&mut self, now: Instant, stale_metadata: bool) {
        self.pid_in_flight = false;
        if stale_metadata {
            self.metadata_due = true;
        }
        let b = self.retry.backoff(self.pid_failures, &mut self.rng);
        self.pid_failures = self.pid_failures.saturating_add(1);
        self.pid_backoff_until = Some(now.checked_add(b).unwrap_or(now));
    }

    /// Once the producer is fatally failed: every queued batch fails with the error, the
    /// accumulator refuses new records with it, and what it holds fails too.
    fn fail_fatally(&mut self) {
        let Some(err) = self.fatal.clone() else {
            return;
        };
        let mut failed: Vec<(String, i32, Batch)> = Vec::new();
        let mut waiting = Vec::new();
        {
            let acc = self.acc.clone();
            let mut st = acc.lock();
            if st.fatal.is_none() {
                st.fatal = Some(err.clone());
            }
            for (name, t) in st.topics.iter_mut() {
                waiting.extend(t.waiting.drain(..));
                for (i, p) in t.partitions.iter_mut().enumerate() {
                    if let Some(b) = p.open.take() {
                        failed.push((name.clone(), i as i32, b));
                    }
                }
            }
        }
        for (name, t) in self.topics.iter_mut() {
            for (i, p) in t.partitions.iter_mut().enumerate() {
                while let Some(b) = p.batches.pop_front() {
                    failed.push((name.clone(), i as i32, b));
                }
            }
        }
        for (t, p, b) in failed {
            self.fail_batch(&t, p, b, err.clone());
        }
        for p in waiting {
            self.pool.release(p.reserved);
            p.completion.complete(Err(err.clone()));
        }
        self.acc_empty = true;
    }

    // ----- sending -----------------------------------------------------------------------------

    /// Whether a partition's front batch may be sent now. It must not be waiting out a retry
    /// backoff (a batch here was taken from the accumulator because it was ready). With
    /// idempotence, a batch that already holds a sequence (a resend) goes alone: only once every
    /// batch before it has been answered, so the broker sees the partition's sequences in order
    /// (Kafka's rule for retries of an idempotent producer). Otherwise up to `partition_limit`
    /// batches of the partition may be in flight.
    fn may_send(p: &PartitionState, now: Instant, idempotent: bool, limit: usize) -> bool {
        let Some(front) = p.batches.front() else {
            return false;
        };
        if front.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        if idempotent && front.base_sequence.is_some() {
            return p.in_flight.is_empty();
        }
        p.in_flight.len() < limit
    }

    fn flushing(&self) -> bool {
        !self.flush_waiters.is_empty() || self.closing.is_some()
    }

    fn send_ready(&mut self, now: Instant) {
        self.maybe_reset_sequences();
        let idempotent = self.cfg.enable_idempotence;
        if idempotent && (self.producer_id.is_none() || self.sequence_reset_due) {
            return;
        }
        let limit = self.partition_limit;
        // Which leaders have a sendable batch?
        let mut nodes: Vec<i32> = Vec::new();
        for t in self.topics.values() {
            for p in &t.partitions {
                let Some(leader) = p.leader else {
                    continue;
                };
                if Self::may_send(p, now, idempotent, limit) && !nodes.contains(&leader) {
                    nodes.push(leader);
                }
            }
        }
        // Each request takes at most one batch per partition (a Kafka broker accepts one record
        // batch per partition in a Produce request); the connection's own limit
        // (`max.in.flight.requests.per.connection`) bounds how many requests are in flight.
        let rounds = self.cfg.client.max_in_flight_requests_per_connection;
        for leader in nodes {
            let node = NodeId(leader);
            for _ in 0..rounds {
                if !self.client.ready(node, now) || !self.send_to(node, now) {
                    break;
                }
            }
        }
    }

    /// Sends one Produce request to `node` with the front batch of every partition it leads that
    /// may send; returns whether it sent one.
    fn send_to(&mut self, node: NodeId, now: Instant) -> bool {
        let Some(versions) = self.client.handshake().versions(node) else {
            return false;
        };
        let (lo, hi) = protocol::PRODUCE_VERSIONS;
        let version = match versions.negotiate(api::PRODUCE, lo, hi) {
            Ok(v) => v,
            Err(e) => {
                self.fail_node_batches(node, &ProduceError::Protocol(e));
                return false;
            }
        };
        let (pid, epoch) = self.producer_id.unwrap_or((-1, -1));
        let idempotent = self.cfg.enable_idempotence;
        let limit = self.partition_limit;
        let max_request = self.cfg.max_request_size;
        let mut size = REQUEST_OVERHEAD;
        let mut taken: Vec<(String, i32, Batch)> = Vec::new();
        for (name, t) in self.topics.iter_mut() {
            for (i, p) in t.partitions.iter_mut().enumerate() {
                if p.leader != Some(node.0) || !Self::may_send(p, now, idempotent, limit) {
                    continue;
                }
                let Some(front) = p.batches.front() else {
                    continue;
                };
                if size + front.size() > max_request && !taken.is_empty() {
                    continue;
                }
                let Some(mut b) = p.batches.pop_front() else {
                    continue;
                };
                if let Some(w) = b.writer.take() {
                    let seq = if idempotent { p.next_sequence } else { -1 };
                    w.finish(&mut b.buf, pid, epoch, seq);
                    if idempotent {
                        b.base_sequence = Some(seq);
                        p.next_sequence = p.next_sequence.wrapping_add(b.records);
                    }
                    b.frozen = Some(b.buf.split().freeze());
                } else if idempotent && (b.base_sequence.is_none() || b.restamp) {
                    // Stamped under a producer id given up since (sequence reset: a new
                    // sequence), or its sequence moved down (an earlier batch was refused for
                    // good): re-stamp it (a copy; these paths are rare).
                    if let Some(frozen) = b.frozen.take() {
                        let mut fresh = BytesMut::from(&frozen[..]);
                        let seq = match b.base_sequence {
                            Some(seq) => seq,
                            None => {
                                let seq = p.next_sequence;
                                p.next_sequence = p.next_sequence.wrapping_add(b.records);
                                seq
                            }
                        };
                        protocol::restamp_batch(&mut fresh, pid, epoch, seq);
                        b.base_sequence = Some(seq);
                        b.restamp = false;
                        b.frozen = Some(fresh.freeze());
                    }
                }
                size += b.size() + 16;
                p.in_flight.push(b.base_sequence.unwrap_or(-1));
                taken.push((name.clone(), i as i32, b));
            }
        }
        if taken.is_empty() {
            return false;
        }
        // Write the request straight into the send buffer.
        type Part<'a> = (i32, &'a [u8]);
        type Parts<'a> = Vec<Part<'a>>;
        let mut grouped: Vec<(&str, Parts<'_>)> = Vec::new();
        for (name, part, b) in &taken {
            let bytes: &[u8] = b.frozen.as_deref().unwrap_or(&[]);
            match grouped.iter_mut().find(|(n, _)| *n == name.as_str()) {
                Some((_, v)) => v.push((*part, bytes)),
                None => grouped.push((name.as_str(), vec![(*part, bytes)])),
            }
        }
        let topics: Vec<(&str, &[Part<'_>])> =
            grouped.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let corr = self.client.next_correlation_id();
        self.send_buf.reserve(size);
        protocol::write_produce_request_unprefixed(
            &mut self.send_buf,
            version,
            corr,
            &self.cfg.client_id,
            self.cfg.acks.wire(),
            self.cfg
                .client
                .request_timeout
                .as_millis()
                .min(i32::MAX as u128) as i32,
            &topics,
        );
        let frame = self.send_buf.split().freeze();
        let expect = self.cfg.acks != Acks::None;
        self.client.send(
            ClientRequest::new(node, corr, frame).expect_response(expect),
            now,
        );
        drop(topics);
        drop(grouped);
        self.produce_in_flight.insert(
            corr,
            InFlightProduce {
                node,
                version,
                batches: taken,
            },
        );
        true
    }

    // ----- responses ---------------------------------------------------------------------------

    fn handle_response(&mut self, r: ClientResponse, now: Instant) {
        if let Some(ctl) = self.control_in_flight.remove(&r.correlation_id) {
            match (ctl, r.outcome) {
                (Control::Metadata { version }, Outcome::Response(frame)) => {
                    self.handle_metadata(version, &frame, now)
                }
                (Control::Metadata { .. }, _) => self.metadata_failed(now),
                (Control::InitProducerId { version }, Outcome::Response(frame)) => {
                    self.handle_init_producer_id(version, &frame, now)
                }
                (Control::InitProducerId { .. }, _) => self.init_producer_id_failed(now, false),
            }
            return;
        }
        let Some(inflight) = self.produce_in_flight.remove(&r.correlation_id) else {
            return;
        };
        for (topic, part, b) in &inflight.batches {
            self.landed(topic, *part, b);
        }
        match r.outcome {
            Outcome::Response(frame) => {
                match protocol::decode_produce_response(inflight.version, &frame) {
                    Ok(resp) => self.handle_produce(inflight, resp, now),
                    Err(e) => {
                        log::warn!("produce response from {}: {e}", inflight.node);
                        self.retry_batches(inflight.batches, &format!("{e}"), now);
                    }
                }
            }
            Outcome::Sent => {
                for (topic, part, b) in inflight.batches {
                    self.complete_batch(&topic, part, b, -1);
                }
            }
            Outcome::Disconnected(cause) => {
                self.metadata_due = true;
                self.retry_batches(inflight.batches, &format!("disconnected: {cause}"), now);
            }
            Outcome::TimedOut => {
                self.metadata_due = true;
                self.retry_batches(inflight.batches, "request timed out", now);
            }
            Outcome::LocalError(e) => {
                self.retry_batches(inflight.batches, &format!("{e}"), now);
            }
        }
    }

    /// A batch's request has its outcome: it is no longer in flight.
    fn landed(&mut self, topic: &str, part: i32, b: &Batch) {
        let seq = b.base_sequence.unwrap_or(-1);
        if let Some(p) = self.partition_mut(topic, part) {
            if let Some(i) = p.in_flight.iter().position(|&s| s == seq) {
                p.in_flight.swap_remove(i);
            } else if !p.in_flight.is_empty() {
                p.in_flight.swap_remove(0);
            }
        }
    }

    /// Whether the partition holds a batch not yet resolved (in flight or queued for a resend)
    /// whose sequence comes before `seq`.
    fn earlier_unresolved(p: &PartitionState, seq: i32) -> bool {
        let before = |s: i32| s >= 0 && seq.wrapping_sub(s) > 0;
        p.in_flight.iter().any(|&s| before(s))
            || p.batches
                .iter()
                .any(|b| b.base_sequence.is_some_and(before))
    }

    fn handle_produce(
        &mut self,
        inflight: InFlightProduce,
        resp: protocol::ProduceResponse,
        now: Instant,
    ) {
        let mut results: HashMap<(String, i32), (Option<KafkaError>, i64)> = HashMap::new();
        for (topic, parts) in resp.topics {
            for p in parts {
                results.insert((topic.clone(), p.partition), (p.error, p.base_offset));
            }
        }
        for (topic, part, b) in inflight.batches {
            match results.remove(&(topic.clone(), part)) {
                Some((None, base)) => self.complete_batch(&topic, part, b, base),
                Some((Some(KafkaError::DuplicateSequenceNumber), base)) => {
                    self.complete_batch(&topic, part, b, base)
                }
                Some((Some(KafkaError::OutOfOrderSequenceNumber), _))
                    if self.cfg.enable_idempotence && b.base_sequence.is_some() =>
                {
                    // The broker did not append it: it expects an earlier sequence. When an
                    // earlier batch of the partition is still unresolved (failed and queued for a
                    // resend, or in flight) or this one's sequence was moved, it is resent after
                    // them, in sequence order. Otherwise the broker lost the producer's state:
                    // a new producer id/epoch and sequences from 0 (KIP-360), then a resend.
                    let seq = b.base_sequence.unwrap_or(0);
                    let expected = b.restamp
                        || self.sequence_reset_due
                        || self
                            .partition_mut(&topic, part)
                            .is_some_and(|p| Self::earlier_unresolved(p, seq));
                    if !expected {
                        log::warn!(
                            "{topic}-{part}: OUT_OF_ORDER_SEQUENCE_NUMBER at sequence {seq} with \
                             nothing before it: new producer id"
                        );
                        self.sequence_reset_due = true;
                    }
                    self.retry_batches(vec![(topic, part, b)], "OUT_OF_ORDER_SEQUENCE_NUMBER", now);
                }
                Some((Some(err), _)) if err.is_retriable() => {
                    if err.invalidates_metadata() {
                        self.metadata_due = true;
                    }
                    self.retry_batches(vec![(topic, part, b)], &err.to_string(), now);
                }
                Some((Some(err), _)) => {
                    self.release_sequence(&topic, part, &b);
                    self.fail_batch(&topic, part, b, ProduceError::Broker(err));
                }
                None => self.retry_batches(
                    vec![(topic, part, b)],
                    "partition missing from response",
                    now,
                ),
            }
        }
    }

    fn partition_mut(&mut self, topic: &str, part: i32) -> Option<&mut PartitionState> {
        self.topics
            .get_mut(topic)
            .and_then(|t| t.partitions.get_mut(part as usize))
    }

    fn complete_batch(&mut self, _topic: &str, part: i32, b: Batch, base_offset: i64) {
        self.pool.release(b.reserved);
        for (i, c) in b.completions.into_iter().enumerate() {
            let offset = if base_offset >= 0 {
                base_offset + i as i64
            } else {
                -1
            };
            c.complete(Ok(RecordMetadata {
                partition: part,
                offset,
            }));
        }
    }

    /// Gives back the sequence numbers of a batch the broker refused for good (a non-retriable
    /// error in its response: nothing was appended), so that the partition's later batches carry
    /// the sequences the broker still expects instead of a gap that each would fail on with
    /// OUT_OF_ORDER_SEQUENCE_NUMBER (Kafka's `adjustSequencesDueToFailedBatch`): every later batch,
    /// queued or in flight, moves down by the refused batch's record count and is re-stamped
    /// before it is next sent; those in flight come back OUT_OF_ORDER_SEQUENCE_NUMBER and are
    /// resent in order.
    fn release_sequence(&mut self, topic: &str, part: i32, b: &Batch) {
        let Some(seq) = b.base_sequence else {
            return;
        };
        let n = b.records;
        let after = |s: i32| s.wrapping_sub(seq) > 0;
        let Some(p) = self.partition_mut(topic, part) else {
            return;
        };
        for s in p.in_flight.iter_mut() {
            if *s >= 0 && after(*s) {
                *s = s.wrapping_sub(n);
            }
        }
        for q in p.batches.iter_mut() {
            if let Some(s) = q.base_sequence.filter(|&s| after(s)) {
                q.base_sequence = Some(s.wrapping_sub(n));
                q.restamp = true;
            }
        }
        if after(p.next_sequence) || p.next_sequence == seq.wrapping_add(n) {
            p.next_sequence = p.next_sequence.wrapping_sub(n);
        }
        for inflight in self.produce_in_flight.values_mut() {
            for (t, i, q) in inflight.batches.iter_mut() {
                if *i != part || t != topic {
                    continue;
                }
                if let Some(s) = q.base_sequence.filter(|&s| after(s)) {
                    q.base_sequence = Some(s.wrapping_sub(n));
                    q.restamp = true;
                }
            }
        }
    }

    /// A batch that holds sequence numbers is given up with its outcome unknown: schedule the
    /// epoch bump and sequence reset (see `sequence_reset_due`).
    fn abandon_sequence(&mut self, b: &Batch) {
        if self.cfg.enable_idempotence && b.base_sequence.is_some() {
            self.sequence_reset_due = true;
        }
    }

    /// Carries out a due sequence reset once no produce request is in flight: forget the producer
    /// id (a new InitProducerId follows), restart every partition at sequence 0, and mark queued
    /// batches that were stamped under the old id for re-stamping when they are next sent (in
    /// queue order, which is sequence order).
    fn maybe_reset_sequences(&mut self) {
        if !self.sequence_reset_due || !self.produce_in_flight.is_empty() {
            return;
        }
        log::warn!("sequences restart at 0 under a new producer id");
        self.producer_id = None;
        for t in self.topics.values_mut() {
            for p in t.partitions.iter_mut() {
                p.next_sequence = 0;
                p.in_flight.clear();
                for b in p.batches.iter_mut() {
                    b.base_sequence = None;
                    b.restamp = false;
                }
            }
        }
        self.sequence_reset_due = false;
    }

    fn fail_batch(&mut self, _topic: &str, _part: i32, b: Batch, err: ProduceError) {
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
    fn retry_batches(&mut self, batches: Vec<(String, i32, Batch)>, why: &str, now: Instant) {
        for (topic, part, mut b) in batches.into_iter().rev() {
            b.attempts += 1;
            b.last_error = Some(why.to_string());
            if now >= b.deadline {
                let last = b.last_error.clone();
                self.abandon_sequence(&b);
                self.fail_batch(&topic, part, b, ProduceError::DeliveryTimeout { last });
                continue;
            }
            if b.attempts > self.cfg.retries {
                let last = b.last_error.clone();
                self.abandon_sequence(&b);
                self.fail_batch(&topic, part, b, ProduceError::RetriesExhausted { last });
                continue;
            }
            let backoff = self.retry.backoff(b.attempts - 1, &mut self.rng);
            b.retry_at = Some(now.checked_add(backoff).unwrap_or(now));
            log::debug!("retrying {topic}-{part} after {backoff:?}: {why}");
            if let Some(p) = self.partition_mut(&topic, part) {
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
            for (i, p) in t.partitions.iter_mut().enumerate() {
                if p.leader == Some(node.0) && p.in_flight.is_empty() {
                    while let Some(b) = p.batches.pop_front() {
                        failed.push((name.clone(), i as i32, b));
                    }
                }
            }
        }
        for (t, p, b) in failed {
            self.fail_batch(&t, p, b, err.clone());
        }
    }

    // ----- timers ------------------------------------------------------------------------------

    fn expire(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (name, t) in self.topics.iter_mut() {
            for (i, p) in t.partitions.iter_mut().enumerate() {
                while p.batches.front().is_some_and(|b| now >= b.deadline) {
                    if let Some(b) = p.batches.pop_front() {
                        expired.push((name.clone(), i as i32, b));
                    }
                }
            }
        }
        for (t, p, b) in expired {
            let last = b.last_error.clone();
            self.abandon_sequence(&b);
            self.fail_batch(&t, p, b, ProduceError::DeliveryTimeout { last });
        }
        // Batches in flight past their deadline: their records fail now, as `delivery.timeout.ms`
        // promises (Kafka's client does the same). The request itself cannot be recalled; when its
        // outcome arrives the batch has no records left to complete, and it is never retried
        // (`retry_batches` fails anything past its deadline).
        for inflight in self.produce_in_flight.values_mut() {
            for (_, _, b) in inflight.batches.iter_mut() {
                if now >= b.deadline && !b.completions.is_empty() {
                    self.pool.release(b.reserved);
                    b.reserved = 0;
                    let last = b
                        .last_error
                        .clone()
                        .or_else(|| Some("request still in flight".to_string()));
                    for c in b.completions.drain(..) {
                        c.complete(Err(ProduceError::DeliveryTimeout { last: last.clone() }));
                    }
                }
            }
        }
    }

    fn next_wake(&self, now: Instant) -> Option<Duration> {
        let mut wake = now + Duration::from_secs(1);
        let mut at = |t: Instant| {
            if t < wake {
                wake = t;
            }
        };
        for inflight in self.produce_in_flight.values() {
            for (_, _, b) in &inflight.batches {
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
                    if let Some(r) = b.retry_at {
                        at(r);
                    }
                }
            }
        }
        if let Some(t) = self.metadata_backoff_until {
            if self.metadata_due {
                at(t);
            }
        }
        if let Some((d, _)) = &self.closing {
            at(*d);
        }
        if let Some(t) = self.pid_backoff_until {
            if self.cfg.enable_idempotence && self.producer_id.is_none() {
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
        Some(wake.saturating_duration_since(now))
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
            for (name, t) in st.topics.iter_mut() {
                waiting.extend(t.waiting.drain(..));
                for (i, p) in t.partitions.iter_mut().enumerate() {
                    if let Some(b) = p.open.take() {
                        accumulated.push((name.clone(), i as i32, b));
                    }
                }
            }
        }
        self.fail_strays();
        self.acc_empty = true;
        // Oldest first: in flight, queued here, in the accumulator, waiting for metadata.
        let mut all: Vec<(String, i32, Batch)> = self
            .produce_in_flight
            .drain()
            .flat_map(|(_, inflight)| inflight.batches)
            .collect();
        for (name, t) in self.topics.iter_mut() {
            for (i, p) in t.partitions.iter_mut().enumerate() {
                while let Some(b) = p.batches.pop_front() {
                    all.push((name.clone(), i as i32, b));
                }
            }
        }
        all.extend(accumulated);
        for (t, p, b) in all {
            self.fail_batch(&t, p, b, err.clone());
        }
        for p in waiting {
            self.pool.release(p.reserved);
            p.completion.complete(Err(err.clone()));
        }
    }
}

impl Drop for Engine {
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
            e.metadata_due = false;
            e.handle_metadata(V, &metadata([1].into_iter(), bad), now);
            assert_eq!(partitions(&e), (0, 0), "{bad:?}");
            assert!(e.metadata_due, "{bad:?}: metadata is asked again");
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
        assert_eq!(e.brokers.len(), MAX_BROKERS);
        assert!(e.brokers.keys().all(|&id| id >= 0));
        assert_eq!(e.client.nodes().len(), bootstrap + MAX_BROKERS);
        // Known brokers are still updated; new ones still refused.
        e.handle_metadata(V, &metadata([2999, 5000].into_iter(), &[0]), now);
        assert_eq!(e.brokers.len(), MAX_BROKERS);
        assert!(!e.brokers.contains_key(&5000));
    }
}
