//! An embedded, strict Kafka-subset broker (feature `broker`) on the [server role](crate::server),
//! with a real on-disk log. Real Kafka clients (librdkafka, kcat) produce to it and consume from
//! it; tests embed it in-process as librdkafka's mock cluster is embedded, but unlike the mock it
//! checks every batch and every idempotent sequence.
//!
//! # What it serves
//!
//! [`API_VERSIONS`] lists exactly the APIs and versions implemented, and ApiVersions advertises
//! exactly that: ApiVersions v0–3, Metadata v1–12, Produce v3–9, Fetch v4–12, ListOffsets v1–6,
//! InitProducerId v0–4. Any other API or version closes the connection (an ApiVersions request at
//! a higher version gets a v0 `UNSUPPORTED_VERSION` answer with the list, as Kafka does). Requests
//! are decoded by hand with every length checked ([`crate::protocol::requests`]); a malformed
//! request closes its connection. Transactions, consumer groups and fetch sessions are not served.
//!
//! # Strictness
//!
//! Each produced partition's data must be one batch that passes [`batch::validate`] (CRC32C,
//! magic 2, header fields, records walked exactly when uncompressed, `message.max.bytes`). For an
//! idempotent batch (producer id ≥ 0), each partition keeps per producer id its epoch and its last
//! [`PRODUCER_BATCHES_KEPT`](state::PRODUCER_BATCHES_KEPT) batches: a duplicate of one of those is
//! answered with the original base offset and not appended; a sequence that does not follow on is
//! `OUT_OF_ORDER_SEQUENCE_NUMBER`; an epoch older than the partition's (or than the one last handed
//! out for the id) is `INVALID_PRODUCER_EPOCH`; an id this broker never handed out is
//! `UNKNOWN_PRODUCER_ID`; a new epoch must start at sequence 0.
//!
//! # Nodes
//!
//! [`BrokerConfig::nodes`] node ids `1..=N`, each with its own listener, thread and
//! [`Server`]; partition `p` is led by node `p % N + 1`. A request for a
//! partition its node does not lead gets `NOT_LEADER_OR_FOLLOWER`. There is one replica per
//! partition: the high watermark is the log end.
//!
//! # Example
//!
//! ```no_run
//! use mqnet::broker::{Broker, BrokerConfig};
//!
//! let broker = Broker::start(BrokerConfig::default()).unwrap();
//! broker.create_topic("events", 4).unwrap();
//! println!("bootstrap.servers={}", broker.bootstrap_servers());
//! broker.shutdown().unwrap();
//! ```

pub mod batch;
pub mod ha;
mod node;
pub mod sasl;
pub mod state;
pub mod storage;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::server::{Server, ServerConfig, RUN_TICK};

use node::{NodeAddr, NodeHandler, Shared};
use state::Cluster;
pub use storage::LogConfig;

/// The Kafka error codes the broker answers with.
pub mod codes {
    /// The requested offset is outside the log.
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    /// A batch failed its CRC or a structural check.
    pub const CORRUPT_MESSAGE: i16 = 2;
    /// The topic or partition does not exist.
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// This node does not lead the partition.
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    /// The batch is over `message.max.bytes`.
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    /// An illegal topic name.
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    /// A SYNC_MASTER has no healthy slave: the acks=all produce was refused before appending.
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    /// A SYNC_MASTER appended but no slave acknowledged within `ha.sync.timeout.ms`.
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    /// `acks` other than 0, 1, -1.
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    /// The API version is not served.
    pub const UNSUPPORTED_VERSION: i16 = 35;
    /// A request that makes no sense (a negative timestamp other than -1/-2 in ListOffsets).
    pub const INVALID_REQUEST: i16 = 42;
    /// A sequence number that does not follow on.
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    /// A fenced (older) producer epoch.
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    /// InitProducerId asked to bump an id this broker never handed out.
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    /// A transactional id (transactions are not served).
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    /// The log could not be written or read.
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    /// A producer id this broker never handed out.
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
    /// The client's leader epoch is older than the partition's.
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    /// The client's leader epoch is newer than the partition's.
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    /// UNSUPPORTED_COMPRESSION_TYPE: a batch's codec is not compiled into this broker.
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    /// A batch breaks a rule other than the CRC (several batches, a transactional batch, ...).
    pub const INVALID_RECORD: i16 = 87;
}

/// The APIs served: `(api key, min version, max version)`, advertised in ApiVersions as they are.
pub const API_VERSIONS: &[(i16, i16, i16)] = &[
    (0, 3, 9),  // Produce
    (1, 4, 12), // Fetch
    (2, 1, 6),  // ListOffsets
    (3, 1, 12), // Metadata
    (18, 0, 3), // ApiVersions
    // SaslHandshake: v0 and v1 have the same request and response; librdkafka enables SASL only
    // with a broker that lists v0. The tokens must then come in SaslAuthenticate (v1's rule): a
    // v0 client's raw tokens are not Kafka requests and close the connection.
    (17, 0, 1),
    (22, 0, 4), // InitProducerId
    (36, 0, 2), // SaslAuthenticate
];

/// Kafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_048_588;

/// Configuration of a [`Broker`].
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The first node's listen address; node `i` listens on its port + `i` (port 0: every node
    /// takes a free port).
    pub listen: SocketAddr,
    /// The host advertised in Metadata (defaults to the listen address's IP).
    pub advertised_host: Option<String>,
    /// Number of nodes (broker ids 1..=N) served by this process.
    pub nodes: usize,
    /// The data directory; `None` makes a fresh directory under the system's temp dir, removed
    /// when the broker shuts down.
    pub data_dir: Option<PathBuf>,
    /// Partitions of an auto-created topic.
    pub default_partitions: i32,
    /// Whether Metadata creates unknown topics; `None`: on for a fresh (empty) data dir.
    pub auto_create_topics: Option<bool>,
    /// `message.max.bytes`: the largest batch accepted.
    pub message_max_bytes: usize,
    /// The log configuration of every partition.
    pub log: LogConfig,
    /// How often retention runs.
    pub retention_check_interval: Duration,
    /// The server role's configuration (frame cap, staged-bytes bound, idle expiry) of each node.
    pub server: ServerConfig,
    /// Master/slave replication ([`ha`]); `None`: none.
    pub ha: Option<ha::HaConfig>,
    /// SASL users and mechanisms (`None`: no authentication, PLAINTEXT). With them every
    /// connection must authenticate (SASL_PLAINTEXT).
    pub sasl: Option<sasl::SaslServerConfig>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertised_host: None,
            nodes: 1,
            data_dir: None,
            default_partitions: 1,
            auto_create_topics: None,
            message_max_bytes: DEFAULT_MESSAGE_MAX_BYTES,
            log: LogConfig::default(),
            retention_check_interval: Duration::from_secs(30),
            server: ServerConfig::default(),
            ha: None,
            sasl: None,
        }
    }
}

/// Why a [`Broker`] could not start or stop cleanly.
#[derive(Debug)]
#[non_exhaustive]
pub enum BrokerError {
    /// The data directory could not be opened or recovered.
    Recovery(io::Error),
    /// A node could not bind its listener or create its Selector.
    Bind(io::Error),
    /// A node's loop failed (its Selector's poll returned an error).
    Node(io::Error),
    /// A node thread panicked.
    Panicked,
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::Recovery(e) => write!(f, "cannot recover the data directory: {e}"),
            BrokerError::Bind(e) => write!(f, "cannot start a node: {e}"),
            BrokerError::Node(e) => write!(f, "a node failed: {e}"),
            BrokerError::Panicked => f.write_str("a node thread panicked"),
        }
    }
}

impl std::error::Error for BrokerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BrokerError::Recovery(e) | BrokerError::Bind(e) | BrokerError::Node(e) => Some(e),
            BrokerError::Panicked => None,
        }
    }
}

/// Counters of a [`Broker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Record bytes appended since start-up.
    pub appended_bytes: u64,
    /// Idempotent batches answered as duplicates (not appended) since start-up.
    pub duplicates: u64,
    /// Bytes of torn or corrupt tail truncated by recovery at start-up.
    pub recovered_truncated_bytes: u64,
    /// Connections accepted by all nodes since start-up.
    pub connections_accepted: u64,
    /// SASL authentications refused since start-up.
    pub authentication_failures: u64,
    /// SASL re-authentications (KIP-368) accepted on already authenticated connections since
    /// start-up.
    pub reauthentications: u64,
    /// Connections closed because a request other than SaslHandshake/SaslAuthenticate came after
    /// their session had expired (KIP-368), since start-up.
    pub expired_sessions_closed: u64,
}

/// A running broker; see the [module docs](self). Dropping it stops its nodes.
#[derive(Debug)]
pub struct Broker {
    shared: Arc<Shared>,
    nodes: Vec<NodeAddr>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    stop: Arc<AtomicBool>,
    data_dir: PathBuf,
    owned_dir: bool,
    truncated: u64,
}

static TEMP_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Broker {
    /// Recovers (or creates) the data directory and starts every node, each on its own thread.
    ///
    /// # Errors
    /// [`BrokerError::Recovery`] when the data directory cannot be recovered,
    /// [`BrokerError::Bind`] when a node cannot listen.
    pub fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let (data_dir, owned_dir) = match &config.data_dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!(
                    "mqnet-broker-{}-{}",
                    std::process::id(),
                    TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
                )),
                true,
            ),
        };
        let mut config = config;
        if config
            .ha
            .as_ref()
            .is_some_and(|h| h.role == ha::Role::Slave)
        {
            // A slave's topics come from its master only.
            config.auto_create_topics = Some(false);
        }
        let (mut cluster, truncated) =
            Cluster::open(&config, &data_dir).map_err(BrokerError::Recovery)?;
        let mut ha_parts = None;
        if let Some(hc) = &config.ha {
            let journal =
                ha::recover(&mut cluster, &data_dir, hc.role).map_err(BrokerError::Recovery)?;
            let timeout = hc.master_config.sync_timeout;
            let status = Arc::new(ha::HaShared::new(hc.role, timeout, journal.end_handle()));
            if hc.role == ha::Role::Slave {
                ha_parts = Some((status, Some(journal), None));
            } else {
                let reader = journal.reader().map_err(BrokerError::Recovery)?;
                cluster.journal = Some(journal);
                ha_parts = Some((status, None, Some(reader)));
            }
        }
        let n = config.nodes.max(1);
        let shared = Arc::new(Shared {
            cluster: Mutex::new(cluster),
            nodes: OnceLock::new(),
            wakers: OnceLock::new(),
            parked: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            down: (0..n).map(|_| AtomicBool::new(false)).collect(),
            ha: ha_parts.as_ref().map(|p| Arc::clone(&p.0)),
            sasl: config.sasl.clone(),
            connections: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            reauthentications: AtomicU64::new(0),
            expired_sessions: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let host = config
            .advertised_host
            .clone()
            .unwrap_or_else(|| config.listen.ip().to_string());
        let mut threads = Vec::with_capacity(n);
        let mut nodes = Vec::with_capacity(n);
        let mut wakers = Vec::with_capacity(n);
        let mut failure = None;
        for i in 0..n {
            let id = i as i32 + 1;
            let mut addr = config.listen;
            if addr.port() != 0 {
                let Some(port) = u16::try_from(i)
                    .ok()
                    .and_then(|i| addr.port().checked_add(i))
                else {
                    failure = Some(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("node {id}: no port {} + {i}", addr.port()),
                    ));
                    break;
                };
                addr.set_port(port);
            }
            let (tx, rx) = mpsc::channel();
            let shared2 = Arc::clone(&shared);
            let stop2 = Arc::clone(&stop);
            let server_config = config.server.clone();
            let retention_every = config.retention_check_interval;
            let t = std::thread::Builder::new()
                .name(format!("mqnet-broker-{id}"))
                .spawn(move || {
                    node_thread(id, addr, server_config, shared2, stop2, retention_every, tx)
                })
                .map_err(BrokerError::Bind)?;
            threads.push(t);
            match rx.recv() {
                Ok(Ok((bound, waker))) => {
                    nodes.push(NodeAddr {
                        id,
                        host: host.clone(),
                        port: bound.port(),
                    });
                    wakers.push(waker);
                }
                Ok(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                Err(_) => {
                    failure = Some(io::Error::other("node thread ended before binding"));
                    break;
                }
            }
        }
        let _ = shared.nodes.set(nodes.clone());
        let _ = shared.wakers.set(wakers);
        if let (None, Some(hc), Some((status, journal, reader))) =
            (&failure, config.ha.clone(), ha_parts)
        {
            match ha::start(
                hc,
                Arc::clone(&shared),
                status,
                journal,
                reader,
                Arc::clone(&stop),
            ) {
                Ok(t) => threads.push(t),
                Err(e) => failure = Some(e),
            }
        }
        let broker = Broker {
            shared,
            nodes,
            threads,
            stop,
            data_dir,
            owned_dir,
            truncated,
        };
        if let Some(e) = failure {
            drop(broker);
            return Err(BrokerError::Bind(e));
        }
        Ok(broker)
    }

    /// `host:port,...` of every node, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `(node id, port)` of every node.
    pub fn node_ports(&self) -> Vec<(i32, u16)> {
        self.nodes.iter().map(|n| (n.id, n.port)).collect()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Creates `topic` with `partitions` partitions; an existing topic is left as it is.
    ///
    /// # Errors
    /// `InvalidInput` for an illegal name or count; I/O errors of creating its logs.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> io::Result<()> {
        self.shared.lock().create_topic(topic, partitions)
    }

    /// The counters.
    pub fn stats(&self) -> BrokerStats {
        let c = self.shared.lock();
        BrokerStats {
            appended_bytes: c.appended_bytes,
            duplicates: c.duplicates,
            recovered_truncated_bytes: self.truncated,
            connections_accepted: self.shared.connections.load(Ordering::Relaxed),
            authentication_failures: self.shared.auth_failures.load(Ordering::Relaxed),
            reauthentications: self.shared.reauthentications.load(Ordering::Relaxed),
            expired_sessions_closed: self.shared.expired_sessions.load(Ordering::Relaxed),
        }
    }

    /// The replication state, when the broker replicates.
    pub fn ha_stats(&self) -> Option<ha::HaStats> {
        self.shared.ha.as_ref().map(|h| h.stats())
    }

    /// A master's bound HA listen address.
    pub fn ha_listen_addr(&self) -> Option<SocketAddr> {
        self.shared.ha.as_ref()?.listen_addr.get().copied()
    }

    /// The log end offset (= high watermark) of a partition, if it exists.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.shared
            .lock()
            .partition(topic, partition)
            .map(|p| p.log.log_end_offset())
    }

    /// The leader node of a partition, if it exists.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.shared
            .lock()
            .partition(topic, partition)
            .map(|p| p.leader)
    }

    /// Fault injection: takes node `id` down (its open connections are closed, and so is every
    /// new connection as soon as it is accepted) or brings it back up.
    pub fn set_node_down(&self, id: i32, down: bool) {
        self.shared.lock().faults.set_down(id, down);
        let i = usize::try_from(id - 1).ok();
        if let Some(flag) = i.and_then(|i| self.shared.down.get(i)) {
            flag.store(down, Ordering::Release);
        }
        if let Some(w) = i.and_then(|i| self.shared.wakers.get()?.get(i)) {
            let _ = w.wake();
        }
    }

    /// Fault injection: the next `count` requests of `api_key` (on any node) are answered with
    /// error `code` (per partition where the response has partitions).
    pub fn inject_errors(&self, api_key: i16, code: i16, count: u32) {
        self.shared.lock().faults.inject(api_key, code, count);
    }

    /// Fault injection: every response is held back for `delay` (zero: none).
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.lock().faults.set_delay(delay);
    }

    /// Fault injection: moves a partition's leadership to node `node` (its leader epoch is
    /// bumped; the old leader answers `NOT_LEADER_OR_FOLLOWER`).
    ///
    /// # Errors
    /// `NotFound` for an unknown partition or node.
    pub fn move_leader(&self, topic: &str, partition: i32, node: i32) -> io::Result<()> {
        self.shared.lock().move_leader(topic, partition, node)
    }

    /// Stops every node, fsyncs every log and waits for the threads; removes the data directory
    /// if the broker made it.
    ///
    /// # Errors
    /// The first node's failure.
    pub fn shutdown(mut self) -> Result<(), BrokerError> {
        self.stop_nodes()
    }

    fn stop_nodes(&mut self) -> Result<(), BrokerError> {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = self.shared.wakers.get() {
            for w in w {
                let _ = w.wake();
            }
        }
        if let Some(h) = &self.shared.ha {
            h.wake();
        }
        let mut first = None;
        for t in self.threads.drain(..) {
            let r = match t.join() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => BrokerError::Node(e),
                Err(_) => BrokerError::Panicked,
            };
            first.get_or_insert(r);
        }
        {
            let mut c = self.shared.lock();
            c.flush_all();
            if let Some(j) = c.journal.as_mut() {
                let _ = j.flush();
            }
        }
        if self.owned_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.stop_nodes();
        }
    }
}

type Bound = io::Result<(SocketAddr, crate::net::SelectorWaker)>;

fn node_thread(
    id: i32,
    addr: SocketAddr,
    config: ServerConfig,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    retention_every: Duration,
    ready: mpsc::Sender<Bound>,
) -> io::Result<()> {
    let handler = NodeHandler::new(id, Arc::clone(&shared));
    let mut server = match Server::deferred_with_config(handler, config) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    let bound = match server.bind(addr) {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(e.kind(), format!("{addr}: {e}"))));
            return Err(e);
        }
    };
    log::info!("node {id} listening on {bound}");
    let _ = ready.send(Ok((bound, server.waker())));
    let mut next_retention = Instant::now() + retention_every;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        let mut timeout = RUN_TICK;
        if let Some(d) = server.handler().next_deadline() {
            timeout = timeout.min(d.saturating_duration_since(now));
        }
        server.poll(Some(timeout))?;
        let now = Instant::now();
        server.handler_mut().tick(now);
        if shared.down[(id - 1) as usize].load(Ordering::Acquire) {
            let open: Vec<_> = server.handler().connections().to_vec();
            for c in open {
                server.close(c);
            }
        }
        if id == 1 && now >= next_retention {
            next_retention = now + retention_every;
            shared.lock().apply_retention(SystemTime::now());
        }
    }
    Ok(())
}
