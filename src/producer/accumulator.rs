//! The record accumulator: per-partition batches that application threads append to, and that the
//! network thread takes when they are ready to send (Kafka's `RecordAccumulator`).
//!
//! A record is encoded into its partition's open batch by the thread that calls `send`, under one
//! mutex; the record itself (topic, key, value, headers) is dropped on that thread. A batch that
//! fills up is sealed and passed to the network thread over the producer's crossbeam channel (sent
//! while the lock is held, so it is always ahead of its successor); an open batch past `linger.ms`
//! is taken by the network thread itself. Its work per record is the completion alone. Records for a
//! topic whose partitions are not known yet wait in the topic's queue, in order, until the network
//! thread has the metadata and appends them (later records of that topic queue behind them, so
//! per-partition order is kept).
//!
//! Rule: nothing is completed while the lock is held (a callback may call `send`). Every
//! operation that fails records hands them back to its caller, which completes them unlocked.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Sender;

use super::command::Command;
use super::delivery::Completion;
use super::record::{ProduceError, ProducerRecord, RetryCause};
use crate::client::SplitMix64;
use crate::protocol::{self, RecordBatchWriter};

/// Overhead of a produce request around its batches, for `max.request.size` (header, topic and
/// partition framing; generous).
pub(crate) const REQUEST_OVERHEAD: usize = 256;

/// FNV-1a, for the topic maps. The map is looked up for every record; topic names are short and
/// come from the application, so SipHash's resistance to flooding buys nothing here, and it cost
/// about a tenth of the producer's instructions at a million records per second.
pub(crate) struct TopicHasher(u64);

impl Default for TopicHasher {
    fn default() -> Self {
        TopicHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for TopicHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A map keyed by topic name.
pub(crate) type TopicMap<V> = HashMap<String, V, BuildHasherDefault<TopicHasher>>;

/// A record waiting for its topic's metadata.
pub(crate) struct Pending {
    pub record: ProducerRecord,
    pub completion: Completion,
    pub reserved: usize,
    pub enqueued: Instant,
}

/// A record that failed before it reached a batch, with the bytes it reserved.
pub(crate) struct Rejected {
    pub completion: Completion,
    pub reserved: usize,
    pub error: ProduceError,
}

/// One record batch of one partition.
pub(crate) struct Batch {
    pub buf: BytesMut,
    /// Present until the network thread finishes (stamps) the batch for its first send.
    pub writer: Option<RecordBatchWriter>,
    pub frozen: Option<Bytes>,
    pub completions: Vec<Completion>,
    pub reserved: usize,
    pub created: Instant,
    /// Earliest `enqueued + delivery.timeout.ms` of its records.
    pub deadline: Instant,
    pub retry_at: Option<Instant>,
    pub attempts: u32,
    pub base_sequence: Option<i32>,
    /// `base_sequence` was moved (an earlier batch of the partition was refused for good) after
    /// the batch was stamped: its frozen bytes carry the old sequence and are re-stamped before
    /// the next send, and an OUT_OF_ORDER_SEQUENCE_NUMBER answer to the old stamp is expected.
    pub restamp: bool,
    pub records: i32,
    pub base_timestamp: i64,
    pub last_error: Option<RetryCause>,
}

impl Batch {
    /// Its size in bytes (header included).
    pub(crate) fn size(&self) -> usize {
        match &self.frozen {
            Some(b) => b.len(),
            None => self.buf.len(),
        }
    }
}

/// A partition's batch that the network thread has not taken yet.
#[derive(Default)]
pub(crate) struct AccPartition {
    /// The batch records are appended to.
    pub open: Option<Batch>,
}

/// A topic in the accumulator.
pub(crate) struct AccTopic {
    /// Its name, shared with the sealed batches sent to the network thread.
    name: Arc<str>,
    /// One entry per partition; empty until the topic's metadata is known.
    pub partitions: Vec<AccPartition>,
    /// Records waiting for the topic's metadata, in send order.
    pub waiting: VecDeque<Pending>,
    sticky: Option<usize>,
}

/// Limits an append checks.
#[derive(Clone, Copy)]
struct Limits {
    batch_size: usize,
    max_request: usize,
    delivery_timeout: Duration,
}

/// Everything behind the accumulator's lock.
pub(crate) struct AccState {
    pub topics: TopicMap<AccTopic>,
    /// A topic was added since the network thread last looked.
    pub new_topics: bool,
    /// The producer is closed: appends fail with [`ProduceError::Closed`].
    pub closed: bool,
    /// The producer failed for good: appends fail with this error.
    pub fatal: Option<ProduceError>,
    rng: SplitMix64,
    limits: Limits,
    /// Sealed batches go to the network thread here.
    tx: Sender<Command>,
}

/// What [`Accumulator::append`] did with a record.
pub(crate) enum Appended {
    /// In a batch or waiting for metadata. `wake`: it opened a batch or a topic, so the network
    /// thread should look (a linger timer to start, a full batch to send, metadata to fetch).
    /// `orphan`: the batch it sealed could not be handed over (the network thread is gone): its
    /// records must be failed.
    Queued { wake: bool, orphan: Option<Batch> },
    /// Failed before it was queued.
    Rejected(Rejected),
}

/// The accumulator shared by the producer handle and its network thread.
pub(crate) struct Accumulator {
    state: Mutex<AccState>,
    /// Set (after the append) when an append wants the network thread to look; the network thread
    /// clears it before each look and checks it again before it sleeps.
    pub changed: AtomicBool,
    /// Bytes of Produce requests handed to the network (length prefix included), for
    /// [`Producer::produce_request_bytes`](super::Producer::produce_request_bytes).
    pub request_bytes: std::sync::atomic::AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Accumulator {
    pub(crate) fn new(
        batch_size: usize,
        max_request: usize,
        delivery_timeout: Duration,
        tx: Sender<Command>,
    ) -> Self {
        Accumulator {
            state: Mutex::new(AccState {
                topics: TopicMap::default(),
                new_topics: false,
                closed: false,
                fatal: None,
                rng: SplitMix64::from_entropy(),
                limits: Limits {
                    batch_size,
                    max_request,
                    delivery_timeout,
                },
                tx,
            }),
            changed: AtomicBool::new(false),
            request_bytes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Locks the state (a poisoned lock is taken over: the state stays consistent between
    /// statements that could panic).
    pub(crate) fn lock(&self) -> MutexGuard<'_, AccState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a record on the calling thread: to its partition's open batch when the topic's
    /// partitions are known and no earlier record of the topic waits for them, else to the topic's
    /// waiting queue.
    pub(crate) fn append(&self, p: Pending) -> Appended {
        let mut st = self.lock();
        if st.closed || st.fatal.is_some() {
            let error = st.fatal.clone().unwrap_or(ProduceError::Closed);
            return Appended::Rejected(Rejected {
                completion: p.completion,
                reserved: p.reserved,
                error,
            });
        }
        let st = &mut *st;
        match st.topics.get_mut(p.record.topic.as_str()) {
            Some(t) if !t.partitions.is_empty() && t.waiting.is_empty() => {
                match t.append(p, &mut st.rng, st.limits) {
                    Ok((opened, sealed)) => Appended::Queued {
                        wake: opened,
                        orphan: sealed.and_then(|(partition, batch)| {
                            hand_over(&st.tx, &t.name, partition, batch)
                        }),
                    },
                    Err(r) => Appended::Rejected(r),
                }
            }
            Some(t) => {
                t.waiting.push_back(p);
                Appended::Queued {
                    wake: false,
                    orphan: None,
                }
            }
            None => {
                let name = p.record.topic.clone();
                let mut t = AccTopic {
                    name: Arc::from(name.as_str()),
                    partitions: Vec::new(),
                    waiting: VecDeque::new(),
                    sticky: None,
                };
                t.waiting.push_back(p);
                st.topics.insert(name, t);
                st.new_topics = true;
                Appended::Queued {
                    wake: true,
                    orphan: None,
                }
            }
        }
    }
}

/// Sends a sealed batch to the network thread; hands it back if that thread is gone.
fn hand_over(
    tx: &Sender<Command>,
    topic: &Arc<str>,
    partition: i32,
    batch: Batch,
) -> Option<Batch> {
    let cmd = Command::Batch {
        topic: topic.clone(),
        partition,
        batch,
    };
    match tx.send(cmd) {
        Ok(()) => None,
        Err(e) => match e.into_inner() {
            Command::Batch { batch, .. } => Some(batch),
            _ => None,
        },
    }
}

/// What [`AccState::set_partitions`] produced: records that failed, and batches sealed on the way
/// (for the caller, the network thread, to queue before anything it takes later).
#[derive(Default)]
pub(crate) struct Partitioned {
    pub rejected: Vec<Rejected>,
    pub sealed: Vec<(i32, Batch)>,
}

impl AccState {
    /// Sets a topic's partition count (it only grows) and appends the records that waited for it.
    /// Called by the network thread.
    pub(crate) fn set_partitions(&mut self, topic: &str, count: usize) -> Partitioned {
        let mut out = Partitioned::default();
        let limits = self.limits;
        let Some(t) = self.topics.get_mut(topic) else {
            return out;
        };
        let count = count.min(super::engine::MAX_PARTITIONS);
        if t.partitions.len() < count {
            t.partitions.resize_with(count, AccPartition::default);
        }
        if t.partitions.is_empty() {
            return out;
        }
        while let Some(p) = t.waiting.pop_front() {
            match t.append(p, &mut self.rng, limits) {
                Ok((_, sealed)) => out.sealed.extend(sealed),
                Err(r) => out.rejected.push(r),
            }
        }
        out
    }
}

impl AccTopic {
    /// Chooses the partition and appends to its open batch, opening one when needed. Returns
    /// whether a batch was opened, and the batch it replaced (sealed: ready to send) with its
    /// partition.
    #[allow(clippy::type_complexity)]
    fn append(
        &mut self,
        p: Pending,
        rng: &mut SplitMix64,
        limits: Limits,
    ) -> Result<(bool, Option<(i32, Batch)>), Rejected> {
        let Limits {
            batch_size,
            max_request,
            delivery_timeout,
        } = limits;
        let count = self.partitions.len() as i32;
        let keyless = p.record.partition.is_none() && p.record.key.is_none();
        let mut partition = match (p.record.partition, &p.record.key) {
            (Some(n), _) => {
                if n < 0 || n >= count {
                    return Err(Rejected {
                        completion: p.completion,
                        reserved: p.reserved,
                        error: ProduceError::InvalidPartition {
                            partition: n,
                            count,
                        },
                    });
                }
                n as usize
            }
            (None, Some(key)) => protocol::partition_for_key(key, count) as usize,
            (None, None) => match self.sticky {
                Some(s) => s,
                None => {
                    let s = rng.next_index(self.partitions.len());
                    self.sticky = Some(s);
                    s
                }
            },
        };
        let ts = p.record.timestamp_ms.unwrap_or_else(now_ms);
        let headers: Vec<(&str, Option<&[u8]>)> = p
            .record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let key = p.record.key.as_deref();
        let value = p.record.value.as_deref();
        // Does it fit the partition's open batch?
        let fits_in = |part: &AccPartition| {
            part.open.as_ref().is_some_and(|b| {
                let size = RecordBatchWriter::record_size(
                    b.records,
                    ts - b.base_timestamp,
                    key,
                    value,
                    &headers,
                );
                b.buf.len() + size
                    <= batch_size
                        .max(protocol::RECORD_BATCH_OVERHEAD + size)
                        .min(max_request)
                    && b.buf.len() + size + REQUEST_OVERHEAD <= max_request
            })
        };
        let mut fits = fits_in(&self.partitions[partition]);
        let sticky_full = self.partitions[partition]
            .open
            .as_ref()
            .is_some_and(|b| b.records > 0);
        if !fits && keyless && sticky_full && count > 1 {
            // Kafka's sticky partitioner: the full batch stays behind, ready to send, and this
            // record starts the next sticky partition (another one, chosen at random).
            let mut next = rng.next_index(self.partitions.len() - 1);
            if next >= partition {
                next += 1;
            }
            self.sticky = Some(next);
            partition = next;
            fits = fits_in(&self.partitions[partition]);
        }
        let part = &mut self.partitions[partition];
        let mut opened = false;
        let mut sealed = None;
        if !fits {
            // (A record that fits the open batch is never too large on its own: its size there is
            // at least `single`, and the batch already holds a header.)
            let single = RecordBatchWriter::record_size(0, 0, key, value, &headers);
            if protocol::RECORD_BATCH_OVERHEAD + single + REQUEST_OVERHEAD > max_request {
                return Err(Rejected {
                    completion: p.completion,
                    reserved: p.reserved,
                    error: ProduceError::RecordTooLarge {
                        size: protocol::RECORD_BATCH_OVERHEAD + single + REQUEST_OVERHEAD,
                        limit: max_request,
                    },
                });
            }
            // Open a new batch; the one before it (if any) is sealed, ready to send.
            let mut buf =
                BytesMut::with_capacity(batch_size.max(protocol::RECORD_BATCH_OVERHEAD + single));
            let writer = RecordBatchWriter::begin(&mut buf, ts);
            let fresh = Batch {
                buf,
                writer: Some(writer),
                frozen: None,
                // Room for the completions of a batch of records this size (no regrowth).
                completions: Vec::with_capacity(batch_size / single.max(1) + 1),
                reserved: 0,
                created: p.enqueued,
                deadline: p.enqueued + delivery_timeout,
                retry_at: None,
                attempts: 0,
                base_sequence: None,
                restamp: false,
                records: 0,
                base_timestamp: ts,
                last_error: None,
            };
            sealed = part.open.replace(fresh).map(|old| (partition as i32, old));
            opened = true;
        }
        if let Some(b) = part.open.as_mut() {
            if let Some(w) = b.writer.as_mut() {
                w.append(&mut b.buf, ts, key, value, &headers);
            }
            b.records += 1;
            b.reserved += p.reserved;
            b.deadline = b.deadline.min(p.enqueued + delivery_timeout);
            b.completions.push(p.completion);
        }
        Ok((opened, sealed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::delivery::DeliveryFuture;
    use crossbeam_channel::{unbounded, Receiver};

    fn pending(topic: &str, key: &str, now: Instant) -> (Pending, DeliveryFuture) {
        let (future, completion) = DeliveryFuture::new();
        let record = ProducerRecord::new(topic, "v").key(key.to_string());
        let reserved = record.size_estimate();
        (
            Pending {
                record,
                completion,
                reserved,
                enqueued: now,
            },
            future,
        )
    }

    fn acc(batch_size: usize) -> (Accumulator, Receiver<Command>) {
        let (tx, rx) = unbounded();
        (
            Accumulator::new(batch_size, 1_048_576, Duration::from_secs(120), tx),
            rx,
        )
    }

    fn wake(a: Appended) -> Option<bool> {
        match a {
            Appended::Queued { wake, orphan: None } => Some(wake),
            _ => None,
        }
    }

    #[test]
    fn records_wait_for_metadata_and_keep_their_order_after_it() {
        let (acc, _rx) = acc(16_384);
        let now = Instant::now();
        let mut futures = Vec::new();
        // The first record opens the topic (wake); the second queues behind it.
        for (i, want_wake) in [(0, true), (1, false)] {
            let (p, f) = pending("t", &format!("k{i}"), now);
            futures.push(f);
            assert_eq!(wake(acc.append(p)), Some(want_wake));
        }
        let out = {
            let mut st = acc.lock();
            assert!(st.new_topics);
            st.set_partitions("t", 1)
        };
        assert!(out.rejected.is_empty() && out.sealed.is_empty());
        // A third record, after the metadata, lands behind the two that waited.
        let (p, f) = pending("t", "k2", now);
        futures.push(f);
        assert_eq!(wake(acc.append(p)), Some(false));
        let st = acc.lock();
        let t = &st.topics["t"];
        assert!(t.waiting.is_empty());
        let b = t.partitions[0].open.as_ref().unwrap();
        assert_eq!(b.records, 3);
        assert_eq!(b.completions.len(), 3);
    }

    #[test]
    fn a_record_that_does_not_fit_seals_the_batch_and_hands_it_over() {
        let (acc, rx) = acc(200);
        let now = Instant::now();
        let (p, _f0) = pending("t", "a", now);
        acc.append(p);
        assert!(acc.lock().set_partitions("t", 1).sealed.is_empty());
        let mut opened = 0;
        let mut futures = Vec::new();
        for i in 0..20 {
            let (p, f) = pending("t", &format!("key-{i}"), now);
            futures.push(f);
            if wake(acc.append(p)) == Some(true) {
                opened += 1;
            }
        }
        let sealed: Vec<Batch> = rx
            .try_iter()
            .map(|c| match c {
                Command::Batch {
                    topic,
                    partition: 0,
                    batch,
                } if &*topic == "t" => batch,
                _ => panic!("not a sealed batch of t-0"),
            })
            .collect();
        assert_eq!(opened, sealed.len());
        assert!(!sealed.is_empty());
        let st = acc.lock();
        let open = st.topics["t"].partitions[0].open.as_ref().unwrap();
        let total: i32 = sealed.iter().map(|b| b.records).sum::<i32>() + open.records;
        assert_eq!(total, 21);
        for b in &sealed {
            assert!(b.buf.len() <= 200, "batch of {} bytes", b.buf.len());
        }
    }

    #[test]
    fn a_sealed_batch_the_network_thread_cannot_take_is_handed_back() {
        let (acc, rx) = acc(200);
        let now = Instant::now();
        let (p, _f0) = pending("t", "a", now);
        acc.append(p);
        acc.lock().set_partitions("t", 1);
        drop(rx);
        let mut futures = Vec::new();
        let mut orphans = 0;
        for i in 0..20 {
            let (p, f) = pending("t", &format!("key-{i}"), now);
            futures.push(f);
            if let Appended::Queued {
                orphan: Some(b), ..
            } = acc.append(p)
            {
                assert!(b.records > 0);
                orphans += 1;
            }
        }
        assert!(orphans > 0);
    }

    #[test]
    fn a_closed_accumulator_rejects_and_a_bad_partition_is_rejected() {
        let (acc, _rx) = acc(16_384);
        let now = Instant::now();
        let (p, _f) = pending("t", "a", now);
        acc.append(p);
        acc.lock().set_partitions("t", 2);
        let (mut p, _f) = pending("t", "b", now);
        p.record.partition = Some(2);
        assert!(matches!(
            acc.append(p),
            Appended::Rejected(Rejected {
                error: ProduceError::InvalidPartition {
                    partition: 2,
                    count: 2
                },
                ..
            })
        ));
        acc.lock().closed = true;
        let (p, _f) = pending("t", "c", now);
        assert!(matches!(
            acc.append(p),
            Appended::Rejected(Rejected {
                error: ProduceError::Closed,
                ..
            })
        ));
    }
}
