//! The broker's state, shared by its nodes under one mutex: topics and their partition logs,
//! leaders, idempotent producer states, the producer-id allocator, and the injected faults.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::batch::{self, Refusal};
use super::codes;
use super::storage::{LogConfig, PartitionLog, StoredBatch};
use super::BrokerConfig;

/// How many batches of each producer a partition remembers for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` bound for idempotence).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// The sequence numbers and offset of one remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SeqBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

/// One producer's state on one partition.
#[derive(Debug, Clone, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<SeqBatch>,
}

/// `seq + n`, wrapping at `i32::MAX` to 0 as Kafka's sequence numbers do.
fn seq_add(seq: i32, n: i32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// What the sequence check decided for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqCheck {
    Append,
    Duplicate(i64),
    Refuse(i16),
}

/// One partition: its log, leader, and producer states.
#[derive(Debug)]
pub struct Partition {
    /// The log.
    pub log: PartitionLog,
    producers: HashMap<i64, ProducerEntry>,
    /// The leader's node id.
    pub leader: i32,
    /// The leader epoch (bumped on every leader move).
    pub leader_epoch: i32,
}

impl Partition {
    fn apply(&mut self, b: &StoredBatch) {
        if b.producer_id < 0 {
            return;
        }
        let e = self.producers.entry(b.producer_id).or_default();
        if b.producer_epoch != e.epoch {
            e.batches.clear();
        }
        e.epoch = b.producer_epoch;
        e.batches.push_back(SeqBatch {
            first_seq: b.base_sequence,
            last_seq: seq_add(b.base_sequence, b.record_count - 1),
            base_offset: b.base_offset,
        });
        while e.batches.len() > PRODUCER_BATCHES_KEPT {
            e.batches.pop_front();
        }
    }

    fn check(
        &self,
        pid: i64,
        epoch: i16,
        first: i32,
        last: i32,
        known: bool,
        fence: i16,
    ) -> SeqCheck {
        let Some(e) = self.producers.get(&pid) else {
            if !known {
                return SeqCheck::Refuse(codes::UNKNOWN_PRODUCER_ID);
            }
            if epoch < fence {
                return SeqCheck::Refuse(codes::INVALID_PRODUCER_EPOCH);
            }
            return if first == 0 {
                SeqCheck::Append
            } else {
                SeqCheck::Refuse(codes::OUT_OF_ORDER_SEQUENCE_NUMBER)
            };
        };
        if epoch < e.epoch || epoch < fence {
            return SeqCheck::Refuse(codes::INVALID_PRODUCER_EPOCH);
        }
        if epoch > e.epoch {
            return if first == 0 {
                SeqCheck::Append
            } else {
                SeqCheck::Refuse(codes::OUT_OF_ORDER_SEQUENCE_NUMBER)
            };
        }
        if let Some(d) = e
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return SeqCheck::Duplicate(d.base_offset);
        }
        match e.batches.back() {
            Some(b) if seq_add(b.last_seq, 1) == first => SeqCheck::Append,
            None if first == 0 => SeqCheck::Append,
            _ => SeqCheck::Refuse(codes::OUT_OF_ORDER_SEQUENCE_NUMBER),
        }
    }
}

/// Errors injected into the next requests of one API.
#[derive(Debug, Clone, Copy)]
struct Injected {
    code: i16,
    remaining: u32,
}

/// The faults currently injected (see [`Broker`](super::Broker)'s fault methods).
#[derive(Debug, Default)]
pub struct Faults {
    down: HashSet<i32>,
    errors: HashMap<i16, VecDeque<Injected>>,
    delay: Duration,
}

impl Faults {
    /// Whether node `id` is down.
    pub fn is_down(&self, id: i32) -> bool {
        self.down.contains(&id)
    }

    /// Sets node `id` down or up.
    pub fn set_down(&mut self, id: i32, down: bool) {
        if down {
            self.down.insert(id);
        } else {
            self.down.remove(&id);
        }
    }

    /// Queues `code` as the answer to the next `count` requests of `api_key`.
    pub fn inject(&mut self, api_key: i16, code: i16, count: u32) {
        if count > 0 {
            self.errors.entry(api_key).or_default().push_back(Injected {
                code,
                remaining: count,
            });
        }
    }

    /// Takes the injected error for one request of `api_key`, if any.
    pub fn take(&mut self, api_key: i16) -> Option<i16> {
        let q = self.errors.get_mut(&api_key)?;
        let front = q.front_mut()?;
        let code = front.code;
        front.remaining -= 1;
        if front.remaining == 0 {
            q.pop_front();
        }
        Some(code)
    }

    /// The delay added to every response.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Sets the delay added to every response.
    pub fn set_delay(&mut self, d: Duration) {
        self.delay = d;
    }
}

/// Whether `name` is a legal topic name (Kafka's rule: 1–249 of `[a-zA-Z0-9._-]`, not `.`/`..`).
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The outcome of producing one partition's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceOutcome {
    /// Error code (0 = none).
    pub code: i16,
    /// The batch's base offset (-1 on error).
    pub base_offset: i64,
    /// The log start offset.
    pub log_start_offset: i64,
}

/// The shared state of every node.
#[derive(Debug)]
pub struct Cluster {
    data_dir: PathBuf,
    log_config: LogConfig,
    nodes: Vec<i32>,
    default_partitions: i32,
    message_max_bytes: usize,
    auto_create: bool,
    /// Topics by name.
    pub topics: BTreeMap<String, Vec<Partition>>,
    next_pid: i64,
    /// The latest epoch handed out per producer id since start-up.
    issued: HashMap<i64, i16>,
    /// Bumped on every append (parked fetches look again when it moves).
    pub generation: u64,
    /// The injected faults.
    pub faults: Faults,
    /// Bytes appended since start-up.
    pub appended_bytes: u64,
    /// Batches answered as duplicates since start-up.
    pub duplicates: u64,
    /// The HA journal of a master: every change is recorded in it before it is applied.
    pub(crate) journal: Option<super::ha::journal::Journal>,
}

const PID_FILE: &str = "producer_ids";

impl Cluster {
    /// Opens `config.data_dir` (creating it), recovering every partition found there.
    ///
    /// # Errors
    /// Any I/O error of recovery.
    pub fn open(config: &BrokerConfig, data_dir: &Path) -> io::Result<(Cluster, u64)> {
        fs::create_dir_all(data_dir)?;
        let fresh = fs::read_dir(data_dir)?.next().is_none();
        let nodes: Vec<i32> = (1..=config.nodes.max(1) as i32).collect();
        let mut found: BTreeMap<String, i32> = BTreeMap::new();
        for entry in fs::read_dir(data_dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let n = entry.file_name();
            let Some(s) = n.to_str() else { continue };
            let Some((topic, p)) = s.rsplit_once('-') else {
                continue;
            };
            let Ok(p) = p.parse::<i32>() else { continue };
            if p < 0 || !valid_topic_name(topic) {
                continue;
            }
            let e = found.entry(topic.to_owned()).or_insert(0);
            *e = (*e).max(p + 1);
        }
        let mut cluster = Cluster {
            data_dir: data_dir.to_owned(),
            log_config: config.log.clone(),
            nodes,
            default_partitions: config.default_partitions.max(1),
            message_max_bytes: config.message_max_bytes,
            auto_create: config.auto_create_topics.unwrap_or(fresh),
            topics: BTreeMap::new(),
            next_pid: 0,
            issued: HashMap::new(),
            generation: 0,
            faults: Faults::default(),
            appended_bytes: 0,
            duplicates: 0,
            journal: None,
        };
        let mut truncated = 0;
        let mut max_pid = -1;
        for (topic, n) in found {
            let (parts, t, m) = cluster.open_topic(&topic, n)?;
            truncated += t;
            max_pid = max_pid.max(m);
            cluster.topics.insert(topic, parts);
        }
        let stored = fs::read_to_string(data_dir.join(PID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        cluster.next_pid = stored.max(max_pid + 1);
        Ok((cluster, truncated))
    }

    fn open_topic(&self, topic: &str, n: i32) -> io::Result<(Vec<Partition>, u64, i64)> {
        let mut parts = Vec::with_capacity(n as usize);
        let mut truncated = 0;
        let mut max_pid = -1;
        for p in 0..n {
            let dir = self.data_dir.join(format!("{topic}-{p}"));
            let (log, rec) = PartitionLog::open(dir, self.log_config.clone())?;
            truncated += rec.truncated_bytes;
            let mut part = Partition {
                log,
                producers: HashMap::new(),
                leader: self.nodes[p as usize % self.nodes.len()],
                leader_epoch: 0,
            };
            for b in &rec.batches {
                max_pid = max_pid.max(b.producer_id);
                part.apply(b);
            }
            parts.push(part);
        }
        Ok((parts, truncated, max_pid))
    }

    /// The node ids.
    pub fn nodes(&self) -> &[i32] {
        &self.nodes
    }

    /// Whether unknown topics asked for in Metadata are created.
    pub fn auto_create(&self) -> bool {
        self.auto_create
    }

    /// Creates `topic` with `partitions` partitions (leaders spread over the nodes, partition `p`
    /// on node `p % nodes`); a topic that exists is left as it is.
    ///
    /// # Errors
    /// `InvalidInput` for an illegal name or count; I/O errors of creating the logs.
    pub fn create_topic(&mut self, topic: &str, partitions: i32) -> io::Result<()> {
        if !valid_topic_name(topic) || partitions < 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("illegal topic {topic:?} with {partitions} partitions"),
            ));
        }
        if self.topics.contains_key(topic) {
            return Ok(());
        }
        let mark = match self.journal.as_mut() {
            Some(j) => Some(j.record_topic(topic, partitions)?),
            None => None,
        };
        let (parts, _, _) = match self.open_topic(topic, partitions) {
            Ok(r) => r,
            Err(e) => {
                if let (Some(j), Some(m)) = (self.journal.as_mut(), mark) {
                    let _ = j.truncate(m);
                }
                return Err(e);
            }
        };
        log::info!("created topic {topic} with {partitions} partitions");
        self.topics.insert(topic.to_owned(), parts);
        Ok(())
    }

    /// Creates `topic` with the default partition count.
    ///
    /// # Errors
    /// As [`create_topic`](Self::create_topic).
    pub fn auto_create_topic(&mut self, topic: &str) -> io::Result<()> {
        self.create_topic(topic, self.default_partitions)
    }

    /// The partition, if it exists.
    pub fn partition(&self, topic: &str, p: i32) -> Option<&Partition> {
        self.topics.get(topic)?.get(usize::try_from(p).ok()?)
    }

    fn partition_mut(&mut self, topic: &str, p: i32) -> Option<&mut Partition> {
        self.topics
            .get_mut(topic)?
            .get_mut(usize::try_from(p).ok()?)
    }

    /// Moves a partition's leadership to `node`, bumping its leader epoch.
    ///
    /// # Errors
    /// `NotFound` for an unknown partition or node.
    pub fn move_leader(&mut self, topic: &str, p: i32, node: i32) -> io::Result<()> {
        if !self.nodes.contains(&node) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no node {node}"),
            ));
        }
        let part = self
            .partition_mut(topic, p)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no {topic}-{p}")))?;
        part.leader = node;
        part.leader_epoch += 1;
        Ok(())
    }

    /// Appends one partition's produced data after the strictness checks; see the
    /// [batch module](super::batch) and the idempotence rules in the broker docs.
    pub fn produce(
        &mut self,
        node: i32,
        topic: &str,
        p: i32,
        records: Option<&Bytes>,
    ) -> ProduceOutcome {
        let fail = |code| ProduceOutcome {
            code,
            base_offset: -1,
            log_start_offset: -1,
        };
        let max = self.message_max_bytes;
        let next_pid = self.next_pid;
        {
            let Some(part) = self.partition(topic, p) else {
                return fail(codes::UNKNOWN_TOPIC_OR_PARTITION);
            };
            if part.leader != node {
                return fail(codes::NOT_LEADER_OR_FOLLOWER);
            }
        }
        let Some(records) = records else {
            return fail(codes::CORRUPT_MESSAGE);
        };
        let h = match batch::validate(records, max) {
            Ok(h) => h,
            Err(Refusal { code, why }) => {
                log::info!("{topic}-{p}: batch refused: {why}");
                return fail(code);
            }
        };
        let issued_fence = self.issued.get(&h.producer_id).copied().unwrap_or(0);
        let Some(part) = self.partition_mut(topic, p) else {
            return fail(codes::UNKNOWN_TOPIC_OR_PARTITION);
        };
        if h.producer_id >= 0 {
            let last = seq_add(h.base_sequence, h.record_count - 1);
            let known = h.producer_id < next_pid;
            match part.check(
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                last,
                known,
                issued_fence,
            ) {
                SeqCheck::Append => {}
                SeqCheck::Duplicate(base) => {
                    let start = part.log.log_start_offset();
                    self.duplicates += 1;
                    return ProduceOutcome {
                        code: 0,
                        base_offset: base,
                        log_start_offset: start,
                    };
                }
                SeqCheck::Refuse(code) => {
                    log::info!(
                        "{topic}-{p}: producer {} epoch {} seq {}: refused with {code}",
                        h.producer_id,
                        h.producer_epoch,
                        h.base_sequence
                    );
                    return fail(code);
                }
            }
        }
        let epoch = part.leader_epoch;
        let base = part.log.log_end_offset();
        let mark = match self.journal.as_mut() {
            Some(j) => match j.record_batch(topic, p, epoch, base, records) {
                Ok(m) => Some(m),
                Err(e) => {
                    log::error!("{topic}-{p}: HA journal write failed: {e}");
                    return fail(codes::KAFKA_STORAGE_ERROR);
                }
            },
            None => None,
        };
        let Some(part) = self
            .topics
            .get_mut(topic)
            .and_then(|v| v.get_mut(usize::try_from(p).ok()?))
        else {
            return fail(codes::UNKNOWN_TOPIC_OR_PARTITION);
        };
        let appended = part.log.append(records, epoch);
        if let (Err(_), Some(j), Some(m)) = (&appended, self.journal.as_mut(), mark) {
            let _ = j.truncate(m);
        }
        let Some(part) = self
            .topics
            .get_mut(topic)
            .and_then(|v| v.get_mut(usize::try_from(p).ok()?))
        else {
            return fail(codes::UNKNOWN_TOPIC_OR_PARTITION);
        };
        match appended {
            Ok(stored) => {
                part.apply(&stored);
                let start = part.log.log_start_offset();
                self.generation += 1;
                self.appended_bytes += records.len() as u64;
                ProduceOutcome {
                    code: 0,
                    base_offset: stored.base_offset,
                    log_start_offset: start,
                }
            }
            Err(e) => {
                log::error!("{topic}-{p}: append failed: {e}");
                fail(codes::KAFKA_STORAGE_ERROR)
            }
        }
    }

    /// Hands out a producer id and epoch (InitProducerId). `current` is the id and epoch a
    /// producer asks to bump (v3+), or `(-1, -1)` for a new id.
    ///
    /// Returns `(error code, producer id, epoch)`.
    pub fn init_producer_id(
        &mut self,
        transactional: bool,
        current: (i64, i16),
    ) -> (i16, i64, i16) {
        if transactional {
            return (codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED, -1, -1);
        }
        let (pid, epoch) = current;
        if pid >= 0 {
            if pid >= self.next_pid {
                return (codes::INVALID_PRODUCER_ID_MAPPING, -1, -1);
            }
            let known = self.issued.get(&pid).copied();
            match known {
                Some(e) if e != epoch => return (codes::INVALID_PRODUCER_EPOCH, -1, -1),
                _ => {}
            }
            if epoch < i16::MAX - 1 {
                self.issued.insert(pid, epoch + 1);
                return (0, pid, epoch + 1);
            }
        }
        let pid = self.next_pid;
        self.next_pid += 1;
        if let Err(e) = self.persist_pid() {
            log::error!("cannot persist the producer id allocator: {e}");
            self.next_pid -= 1;
            return (codes::KAFKA_STORAGE_ERROR, -1, -1);
        }
        self.issued.insert(pid, 0);
        (0, pid, 0)
    }

    fn persist_pid(&mut self) -> io::Result<()> {
        if let Some(j) = self.journal.as_mut() {
            j.record_next_pid(self.next_pid)?;
        }
        let tmp = self.data_dir.join(format!("{PID_FILE}.tmp"));
        fs::write(&tmp, format!("{}\n", self.next_pid))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, self.data_dir.join(PID_FILE))
    }

    /// Creates a topic without recording it in the HA journal (applying a journal entry).
    ///
    /// # Errors
    /// As [`create_topic`](Self::create_topic).
    pub(crate) fn create_topic_unjournaled(
        &mut self,
        topic: &str,
        partitions: i32,
    ) -> io::Result<()> {
        let j = self.journal.take();
        let r = self.create_topic(topic, partitions);
        self.journal = j;
        r
    }

    /// Appends a replicated batch that the master stored at `base_offset` with `leader_epoch`; a
    /// batch the partition already holds (`base_offset` below its end) is skipped.
    ///
    /// # Errors
    /// `NotFound` for an unknown partition; `InvalidData` when `base_offset` is past the end or
    /// the batch does not land at `base_offset`; I/O errors of the append.
    pub(crate) fn replicate_batch(
        &mut self,
        topic: &str,
        p: i32,
        leader_epoch: i32,
        base_offset: i64,
        records: &[u8],
    ) -> io::Result<()> {
        let part = self
            .partition_mut(topic, p)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no {topic}-{p}")))?;
        let end = part.log.log_end_offset();
        if base_offset < end {
            return Ok(());
        }
        if base_offset > end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{topic}-{p}: batch at {base_offset}, log ends at {end}"),
            ));
        }
        let stored = part.log.append(records, leader_epoch)?;
        part.leader_epoch = part.leader_epoch.max(leader_epoch);
        part.apply(&stored);
        self.generation += 1;
        self.appended_bytes += records.len() as u64;
        Ok(())
    }

    /// Raises the producer-id allocator to at least `next` (a replicated allocation).
    pub(crate) fn raise_next_pid(&mut self, next: i64) {
        if next > self.next_pid {
            self.next_pid = next;
            if let Err(e) = self.persist_pid() {
                log::warn!("cannot persist the producer id allocator: {e}");
            }
        }
    }

    /// Deletes every topic and its logs (a slave following a reset).
    ///
    /// # Errors
    /// Removing a partition directory.
    pub(crate) fn wipe(&mut self) -> io::Result<()> {
        let topics = std::mem::take(&mut self.topics);
        for (topic, parts) in topics {
            for (p, part) in parts.into_iter().enumerate() {
                drop(part);
                let dir = self.data_dir.join(format!("{topic}-{p}"));
                match fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.generation += 1;
        Ok(())
    }

    /// Whether any partition holds data.
    pub(crate) fn has_data(&self) -> bool {
        self.topics
            .values()
            .flatten()
            .any(|p| p.log.log_end_offset() > 0)
    }

    /// Applies retention to every partition.
    pub fn apply_retention(&mut self, now: SystemTime) {
        for (topic, parts) in &mut self.topics {
            for (p, part) in parts.iter_mut().enumerate() {
                match part.log.apply_retention(now) {
                    Ok(0) => {}
                    Ok(n) => log::info!("{topic}-{p}: retention deleted {n} segments"),
                    Err(e) => log::warn!("{topic}-{p}: retention failed: {e}"),
                }
            }
        }
    }

    /// Fsyncs every partition's active segment.
    pub fn flush_all(&mut self) {
        for parts in self.topics.values_mut() {
            for part in parts.iter_mut() {
                let _ = part.log.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(i32::MAX - 1, 3), 1);
        assert_eq!(seq_add(5, 0), 5);
    }

    #[test]
    fn topic_names_follow_kafkas_rule() {
        assert!(valid_topic_name("a.b_c-9"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("a/b"));
        assert!(!valid_topic_name(&"x".repeat(250)));
    }

    #[test]
    fn injected_errors_run_out() {
        let mut f = Faults::default();
        f.inject(0, 6, 2);
        assert_eq!(f.take(0), Some(6));
        assert_eq!(f.take(0), Some(6));
        assert_eq!(f.take(0), None);
        assert_eq!(f.take(1), None);
    }
}
