//! The failover transport: one logical request/response connection over a list of servers, with
//! ActiveMQ's reconnect semantics and without its flaws (lock-step reconnects, serialised waiters).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use super::uri::{FailoverOptions, FailoverUri, ServerUri, UriError};
use crate::client::{
    ClientConfig, ClientRequest, ClientResponse, ConnectionState, DisconnectCause, Handshake,
    JitterSource, LocalError, NetworkClient, NoHandshake, NodeId, Outcome, SplitMix64,
};
use crate::net::{Selector, SelectorConfig, Transport};

/// A request for the failover transport.
///
/// Take the correlation id from [`FailoverTransport::next_correlation_id`] and write it into
/// `frame` where the protocol wants it (the NetworkClient checks responses against it). A replayed
/// request (`trackMessages`) is sent again with the same frame, hence the same correlation id.
#[derive(Debug, Clone)]
pub struct FailoverRequest {
    /// The correlation id the transport assigned.
    pub correlation_id: i32,
    /// The encoded request, without its length prefix.
    pub frame: Bytes,
    /// Whether a response is expected (without one, the request completes `Sent`).
    pub expect_response: bool,
    /// An opaque value handed back in the response.
    pub tag: u64,
}

impl FailoverRequest {
    /// A request expecting a response.
    pub fn new(correlation_id: i32, frame: Bytes) -> Self {
        FailoverRequest {
            correlation_id,
            frame,
            expect_response: true,
            tag: 0,
        }
    }

    /// Sets the caller's tag.
    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// Sets whether a response is expected.
    pub fn expect_response(mut self, yes: bool) -> Self {
        self.expect_response = yes;
        self
    }
}

/// How a failover request completed. Every request gets exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverOutcome {
    /// The response frame.
    Response(Bytes),
    /// No response was expected and the request has fully left.
    Sent,
    /// The link it was in flight on was lost (and it was not tracked for replay).
    Disconnected(DisconnectCause),
    /// It waited for a link longer than `timeout`, or passed its request deadline in flight.
    TimedOut,
    /// The transport gave up reconnecting after this many failed passes.
    Exhausted {
        /// Failed passes.
        passes: u32,
    },
    /// It failed locally and never reached the network.
    LocalError(LocalError),
}

impl fmt::Display for FailoverOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailoverOutcome::Response(b) => write!(f, "response ({} bytes)", b.len()),
            FailoverOutcome::Sent => write!(f, "sent"),
            FailoverOutcome::Disconnected(c) => write!(f, "disconnected: {c}"),
            FailoverOutcome::TimedOut => write!(f, "timed out"),
            FailoverOutcome::Exhausted { passes } => write!(
                f,
                "failover gave up after {passes} failed reconnect passes over every server"
            ),
            FailoverOutcome::LocalError(e) => write!(f, "local error: {e}"),
        }
    }
}

/// The completion of one failover request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverResponse {
    /// Its correlation id.
    pub correlation_id: i32,
    /// The caller's tag.
    pub tag: u64,
    /// Time from `send` to completion (waiting and replays included).
    pub latency: Duration,
    /// How many times it was replayed on a new link.
    pub replays: u32,
    /// The outcome.
    pub outcome: FailoverOutcome,
}

/// A transition of the logical connection. Each is reported exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverEvent {
    /// The first link is up.
    Connected {
        /// Its server.
        uri: ServerUri,
    },
    /// The live link was lost.
    Interrupted {
        /// The server it was to.
        uri: ServerUri,
    },
    /// A link is up again after an interruption.
    Resumed {
        /// Its server.
        uri: ServerUri,
    },
    /// The live link moved while up (priority switch-back, or the server left the list).
    Switched {
        /// The old server.
        from: ServerUri,
        /// The new server.
        to: ServerUri,
    },
    /// Reconnecting gave up; every waiting request completed `Exhausted`, and so will new ones.
    Exhausted {
        /// Failed passes.
        passes: u32,
    },
}

/// Counters of a failover transport.
#[derive(Debug, Clone)]
pub struct FailoverMetrics {
    /// Reconnect passes started.
    pub passes: u64,
    /// Passes in which no server connected.
    pub failed_passes: u64,
    /// Warnings logged (every `warnAfterReconnectAttempts` failed passes).
    pub warnings: u64,
    /// `Connected` events.
    pub connects: u64,
    /// `Interrupted` events.
    pub interruptions: u64,
    /// `Resumed` events.
    pub resumptions: u64,
    /// Resumptions on a standby (no reconnect delay).
    pub promotions: u64,
    /// `Switched` events.
    pub switches: u64,
    /// `Exhausted` events.
    pub exhaustions: u64,
    /// Requests replayed on a new link.
    pub replayed: u64,
    /// Time from `Interrupted` to `Resumed`, in microseconds.
    pub time_down_us: Histogram<u64>,
}

impl FailoverMetrics {
    fn new() -> Self {
        FailoverMetrics {
            passes: 0,
            failed_passes: 0,
            warnings: 0,
            connects: 0,
            interruptions: 0,
            resumptions: 0,
            promotions: 0,
            switches: 0,
            exhaustions: 0,
            replayed: 0,
            time_down_us: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .unwrap_or_else(|_| Histogram::new(2).expect("2 significant digits are valid")),
        }
    }
}

/// One server of the current list.
#[derive(Debug, Clone)]
struct Server {
    uri: ServerUri,
    node: NodeId,
    /// Consecutive failed background attempts (standby, priority or move candidate).
    bg_failures: u32,
    /// No background attempt before this.
    bg_retry_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    Pending,
    InFlight,
}

struct Entry {
    seq: u64,
    tag: u64,
    created: Instant,
    /// `timeout` from the send: the latest a waiting request may wait.
    deadline: Option<Instant>,
    expect_response: bool,
    /// Kept while waiting, and while in flight when tracked.
    frame: Option<Bytes>,
    len: usize,
    tracked: bool,
    at: Where,
    replays: u32,
}

/// ActiveMQ's failover transport, sans-IO over a [`NetworkClient`].
///
/// One logical connection over an ordered list of servers: every server is a node of the client;
/// exactly one is the live link, plus up to `backupPoolSize` connected standbys with `backup=true`.
///
/// # Rules
///
/// - **Passes**: while down, a pass tries every server once, one at a time, in list order
///   (shuffled at the start of each pass with `randomize`; priority servers first with
///   `priorityBackup`; the server that failed last moved to the end).
/// - **Waits**: none before the first pass at start-up; `initialReconnectDelay` before the first pass
///   after an established link was lost; after `n` failed passes,
///   `initialReconnectDelay × reconnectDelayExponent^(n−1)` (constant without
///   `useExponentialBackOff`). Each wait is multiplied by a uniform factor in `[0.8, 1.2)` from the
///   injected [`JitterSource`] and capped at `maxReconnectDelay`.
/// - **Giving up**: after `startupMaxReconnectAttempts` failed passes (falling back to
///   `maxReconnectAttempts` when -1) while never connected, or `maxReconnectAttempts` after a loss
///   (0 counts as 1: one pass is always made). Then every waiting request completes
///   [`FailoverOutcome::Exhausted`], and so does every later one.
/// - **Waiting**: a request sent while down waits for a link at most `timeout` from its own send,
///   then completes `TimedOut`; waiters do not queue behind each other.
/// - **Link loss**: its in-flight requests complete `Disconnected` once; with `trackMessages` they
///   are instead sent again on the next link in their original order, as long as the tracked
///   in-flight bytes stay within `maxCacheSize` (the oldest beyond it are no longer tracked).
/// - **Standbys** (`backup`) are promoted without any wait. **priorityBackup**: while on a server
///   that is not a priority one, a priority server is connected in the background and the link
///   switches to it once it is Ready; requests in flight on the old link finish there.
/// - Background attempts (standbys, priority) that fail wait as passes do, per server.
///
/// The client's own reconnect backoff is set to zero: the transport alone decides when to connect.
///
/// # Example
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// use bytes::Bytes;
/// use mqnet::client::ClientConfig;
/// use mqnet::failover::{FailoverOutcome, FailoverRequest, FailoverTransport};
///
/// let uri = "failover:(tcp://127.0.0.1:9001,tcp://127.0.0.1:9002)?randomize=false&timeout=2000"
///     .parse()
///     .unwrap();
/// let mut t = FailoverTransport::connect(&uri, ClientConfig::default()).unwrap();
/// let corr = t.next_correlation_id();
/// let mut frame = corr.to_be_bytes().to_vec();
/// frame.extend_from_slice(b"hello");
/// t.send(FailoverRequest::new(corr, Bytes::from(frame)), Instant::now());
/// let deadline = Instant::now() + Duration::from_secs(5);
/// while Instant::now() < deadline {
///     t.poll_io(Some(Duration::from_millis(50)), Instant::now()).unwrap();
///     for r in t.handle(Instant::now()) {
///         if let FailoverOutcome::Response(body) = r.outcome {
///             println!("{} bytes back", body.len());
///         }
///     }
///     for e in t.drain_events() {
///         println!("{e:?}");
///     }
/// }
/// ```
pub struct FailoverTransport<T: Transport = Selector, H: Handshake = NoHandshake> {
    client: NetworkClient<T, H>,
    options: FailoverOptions,
    servers: Vec<Server>,
    registry: HashMap<ServerUri, NodeId>,
    next_node: i32,
    rng: Box<dyn JitterSource + Send>,

    live: Option<NodeId>,
    exhausted: Option<u32>,
    ever_connected: bool,
    down_since: Option<Instant>,
    failed_passes: u32,
    next_pass_at: Option<Instant>,
    in_pass: bool,
    pass: Vec<NodeId>,
    pass_pos: usize,
    attempt: Option<NodeId>,
    last_failed: Option<NodeId>,
    standbys: Vec<NodeId>,
    candidate: Option<NodeId>,
    draining: Vec<NodeId>,
    must_move: bool,
    /// The `now` of the last policy step: background retry times at or before it are not
    /// deadlines any more (the server was retried, or was not needed).
    last_now: Option<Instant>,

    requests: HashMap<i32, Entry>,
    pending: VecDeque<i32>,
    tracked: VecDeque<(i32, u64)>,
    tracked_bytes: usize,
    next_seq: u64,
    completed: Vec<FailoverResponse>,
    events: Vec<FailoverEvent>,
    scratch: Vec<ClientResponse>,
    metrics: FailoverMetrics,
}

impl FailoverTransport<Selector, NoHandshake> {
    /// A transport over a new Selector, with the client configured from `config` (its reconnect
    /// backoff is overridden to zero).
    ///
    /// # Errors
    /// The OS error of creating the Selector, or an invalid server address.
    pub fn connect(uri: &FailoverUri, config: ClientConfig) -> io::Result<Self> {
        let selector = Selector::with_config(SelectorConfig {
            connections_max_idle: config.connections_max_idle,
            ..SelectorConfig::default()
        })?;
        FailoverTransport::with_transport(selector, config, NoHandshake, uri)
    }
}

impl<T: Transport, H: Handshake> FailoverTransport<T, H> {
    /// A transport over `transport` (a Selector, or `mqnet::sim::SimNetwork` in tests).
    ///
    /// Each server's own options (`tcp://h:p?tcpNoDelay=false`) become its connections' socket
    /// options, over the client config's.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when a server address is not `host:port` or a server option
    /// is not accepted.
    pub fn with_transport(
        transport: T,
        config: ClientConfig,
        handshake: H,
        uri: &FailoverUri,
    ) -> io::Result<Self> {
        let config = config
            .reconnect_backoff(Duration::ZERO)
            .reconnect_backoff_max(Duration::ZERO);
        let client = NetworkClient::with_transport(transport, config, handshake);
        let mut t = FailoverTransport {
            client,
            options: uri.options.clone(),
            servers: Vec::new(),
            registry: HashMap::new(),
            next_node: 1,
            rng: Box::new(SplitMix64::from_entropy()),
            live: None,
            exhausted: None,
            ever_connected: false,
            down_since: None,
            failed_passes: 0,
            next_pass_at: None,
            in_pass: false,
            pass: Vec::new(),
            pass_pos: 0,
            attempt: None,
            last_failed: None,
            standbys: Vec::new(),
            candidate: None,
            draining: Vec::new(),
            must_move: false,
            last_now: None,
            requests: HashMap::new(),
            pending: VecDeque::new(),
            tracked: VecDeque::new(),
            tracked_bytes: 0,
            next_seq: 0,
            completed: Vec::new(),
            events: Vec::new(),
            scratch: Vec::new(),
            metrics: FailoverMetrics::new(),
        };
        for s in &uri.servers {
            let node = t.register(s)?;
            t.servers.push(Server {
                uri: s.clone(),
                node,
                bg_failures: 0,
                bg_retry_at: None,
            });
        }
        Ok(t)
    }

    /// Replaces the randomness used for jitter and shuffling (tests inject a fixed source).
    pub fn with_rng(mut self, rng: impl JitterSource + Send + 'static) -> Self {
        self.rng = Box::new(rng);
        self
    }

    fn register(&mut self, uri: &ServerUri) -> io::Result<NodeId> {
        let node = match self.registry.get(uri) {
            Some(n) => *n,
            None => {
                let n = NodeId(self.next_node);
                self.next_node += 1;
                self.registry.insert(uri.clone(), n);
                n
            }
        };
        self.client.add_node(node, &uri.address())?;
        if !uri.options.is_empty() {
            let base = self.client.config().socket_options();
            let options = uri.socket_options(base).map_err(|p| {
                io::Error::new(io::ErrorKind::InvalidInput, UriError { problems: p })
            })?;
            self.client.set_socket_options(node, Some(options));
        }
        Ok(node)
    }

    /// The client underneath (its nodes are the servers).
    pub fn client(&self) -> &NetworkClient<T, H> {
        &self.client
    }

    /// The client underneath, mutably (tests inject faults through its transport).
    pub fn client_mut(&mut self) -> &mut NetworkClient<T, H> {
        &mut self.client
    }

    /// The options in force.
    pub fn options(&self) -> &FailoverOptions {
        &self.options
    }

    /// The metrics.
    pub fn metrics(&self) -> &FailoverMetrics {
        &self.metrics
    }

    /// The current server list.
    pub fn servers(&self) -> impl Iterator<Item = &ServerUri> {
        self.servers.iter().map(|s| &s.uri)
    }

    /// The server of the live link, if up.
    pub fn current_uri(&self) -> Option<&ServerUri> {
        self.live.and_then(|n| self.uri_of(n))
    }

    /// The client node of a server, if it is in the current list.
    pub fn node_of(&self, uri: &ServerUri) -> Option<NodeId> {
        self.servers.iter().find(|s| s.uri == *uri).map(|s| s.node)
    }

    /// The standbys (connected or connecting), oldest first.
    pub fn standbys(&self) -> impl Iterator<Item = &ServerUri> {
        self.standbys.iter().filter_map(|n| self.uri_of(*n))
    }

    /// Whether a live link is up.
    pub fn is_connected(&self) -> bool {
        self.live.is_some()
    }

    /// Whether the transport gave up reconnecting.
    pub fn is_exhausted(&self) -> bool {
        self.exhausted.is_some()
    }

    /// Requests accepted and not yet completed (waiting or in flight).
    pub fn outstanding(&self) -> usize {
        self.requests.len()
    }

    /// Requests waiting for a link (replays included).
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of in-flight requests tracked for replay.
    pub fn tracked_bytes(&self) -> usize {
        self.tracked_bytes
    }

    /// A fresh correlation id (from the client).
    pub fn next_correlation_id(&mut self) -> i32 {
        self.client.next_correlation_id()
    }

    /// The events since the last call, in order.
    pub fn drain_events(&mut self) -> Vec<FailoverEvent> {
        std::mem::take(&mut self.events)
    }

    fn uri_of(&self, node: NodeId) -> Option<&ServerUri> {
        self.servers
            .iter()
            .find(|s| s.node == node)
            .map(|s| &s.uri)
            .or_else(|| {
                self.registry
                    .iter()
                    .find(|(_, n)| **n == node)
                    .map(|(u, _)| u)
            })
    }

    fn server_mut(&mut self, node: NodeId) -> Option<&mut Server> {
        self.servers.iter_mut().find(|s| s.node == node)
    }

    fn listed(&self, node: NodeId) -> bool {
        self.servers.iter().any(|s| s.node == node)
    }

    fn state(&self, node: NodeId) -> Option<ConnectionState> {
        self.client.connection_state(node)
    }

    fn is_priority(&self, node: NodeId) -> bool {
        if self.options.priority_uris.is_empty() {
            return self.servers.first().is_some_and(|s| s.node == node);
        }
        self.servers.iter().any(|s| {
            s.node == node
                && self
                    .options
                    .priority_uris
                    .iter()
                    .any(|p| p.host == s.uri.host && p.port == s.uri.port)
        })
    }

    /// The wait after `failed` failed passes (0: after losing an established link).
    fn pass_delay(&mut self, failed: u32) -> Duration {
        let o = &self.options;
        let initial = o.initial_reconnect_delay.as_secs_f64();
        let max = o.max_reconnect_delay.as_secs_f64();
        let base = if o.use_exponential_backoff && failed > 1 {
            let k = (failed - 1).min(4096) as i32;
            initial * o.reconnect_delay_exponent.powi(k)
        } else {
            initial
        };
        let factor = 0.8 + 0.4 * self.rng.next_f64();
        let secs = base * factor;
        let secs = if secs.is_finite() { secs.min(max) } else { max };
        Duration::from_secs_f64(secs.max(0.0))
    }

    // ----- sending -------------------------------------------------------------------------------

    /// Sends a request: on the live link at once, or, while down, after the next link is up (at
    /// most `timeout` from now). It completes exactly once, in a later `poll`.
    pub fn send(&mut self, request: FailoverRequest, now: Instant) {
        let corr = request.correlation_id;
        if let Some(passes) = self.exhausted {
            self.completed.push(FailoverResponse {
                correlation_id: corr,
                tag: request.tag,
                latency: Duration::ZERO,
                replays: 0,
                outcome: FailoverOutcome::Exhausted { passes },
            });
            return;
        }
        if self.requests.contains_key(&corr) {
            self.completed.push(FailoverResponse {
                correlation_id: corr,
                tag: request.tag,
                latency: Duration::ZERO,
                replays: 0,
                outcome: FailoverOutcome::LocalError(LocalError::DuplicateCorrelationId),
            });
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry {
            seq,
            tag: request.tag,
            created: now,
            deadline: self.options.timeout.map(|t| now + t),
            expect_response: request.expect_response,
            len: request.frame.len(),
            frame: Some(request.frame),
            tracked: false,
            at: Where::Pending,
            replays: 0,
        };
        self.requests.insert(corr, entry);
        self.pending.push_back(corr);
        self.flush_pending(now);
    }

    /// Hands waiting requests to the live link while it is Ready.
    fn flush_pending(&mut self, now: Instant) {
        let Some(live) = self.live else { return };
        while self.state(live) == Some(ConnectionState::Ready) {
            let Some(corr) = self.pending.pop_front() else {
                break;
            };
            let Some(e) = self.requests.get_mut(&corr) else {
                continue;
            };
            let Some(frame) = e.frame.take() else {
                continue;
            };
            e.at = Where::InFlight;
            let track = self.options.track_messages && e.len <= self.options.max_cache_size;
            if track {
                e.frame = Some(frame.clone());
                e.tracked = true;
                self.tracked_bytes += e.len;
                self.tracked.push_back((corr, e.seq));
            }
            let req = ClientRequest::new(live, corr, frame).expect_response(e.expect_response);
            self.client.send(req, now);
            if track {
                self.evict_tracked();
            }
        }
    }

    /// Stops tracking the oldest in-flight requests while the tracked bytes exceed `maxCacheSize`.
    fn evict_tracked(&mut self) {
        while self.tracked_bytes > self.options.max_cache_size {
            let Some((corr, seq)) = self.tracked.pop_front() else {
                break;
            };
            if let Some(e) = self.requests.get_mut(&corr) {
                if e.seq == seq && e.tracked {
                    e.tracked = false;
                    e.frame = None;
                    self.tracked_bytes -= e.len;
                }
            }
        }
        // Entries of completed requests stay until popped; keep the queue proportional to the
        // requests outstanding.
        if self.tracked.len() > 2 * self.requests.len() + 64 {
            let requests = &self.requests;
            self.tracked.retain(|(c, s)| {
                requests
                    .get(c)
                    .is_some_and(|e| e.seq == *s && e.tracked && e.at == Where::InFlight)
            });
        }
    }

    fn complete(&mut self, corr: i32, outcome: FailoverOutcome, now: Instant) {
        let Some(e) = self.requests.remove(&corr) else {
            return;
        };
        if e.tracked {
            self.tracked_bytes -= e.len;
        }
        self.completed.push(FailoverResponse {
            correlation_id: corr,
            tag: e.tag,
            latency: now.saturating_duration_since(e.created),
            replays: e.replays,
            outcome,
        });
    }

    // ----- polling -------------------------------------------------------------------------------

    /// The earliest instant at which the transport has work of its own (a pass to start, a waiting
    /// request's deadline, a background retry).
    pub fn poll_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut take = |t: Instant| d = Some(d.map_or(t, |x: Instant| x.min(t)));
        if self.exhausted.is_some() {
            return None;
        }
        if self.live.is_none() && !self.in_pass && self.attempt.is_none() {
            if let Some(t) = self.next_pass_at {
                take(t);
            }
        }
        for c in &self.pending {
            if let Some(t) = self.requests.get(c).and_then(|e| e.deadline) {
                take(t);
            }
        }
        let background = self.live.is_some()
            && (self.options.backup || self.options.priority_backup || self.must_move);
        if background {
            for s in &self.servers {
                if let Some(t) = s.bg_retry_at {
                    if self.last_now.is_none_or(|n| t > n) {
                        take(t);
                    }
                }
            }
        }
        d
    }

    /// Runs the reconnect policy at `now` and does the I/O: waits at most `timeout` (never past the
    /// transport's or the client's next deadline). Then call [`handle_into`](Self::handle_into)
    /// (or [`handle`](Self::handle)) with the time read after this returns.
    ///
    /// # Errors
    /// Only a failure of the OS poller.
    pub fn poll_io(&mut self, timeout: Option<Duration>, now: Instant) -> io::Result<()> {
        self.drive(now);
        self.expire_pending(now);
        let mut timeout = timeout;
        if !self.completed.is_empty() {
            timeout = Some(Duration::ZERO);
        } else if let Some(d) = self.poll_deadline() {
            let until = d.saturating_duration_since(now);
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        self.client.poll_io(timeout, now)
    }

    /// Settles at `now` (the caller's time after [`poll_io`](Self::poll_io)) what the last I/O
    /// brought, runs the reconnect policy, and returns every request completed.
    pub fn handle(&mut self, now: Instant) -> Vec<FailoverResponse> {
        let mut out = Vec::new();
        self.handle_into(now, &mut out);
        out
    }

    /// As [`handle`](Self::handle), appending to `out`.
    pub fn handle_into(&mut self, now: Instant, out: &mut Vec<FailoverResponse>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.client.handle_into(now, &mut scratch);
        for r in scratch.drain(..) {
            self.on_completion(r, now);
        }
        self.scratch = scratch;
        self.drive(now);
        self.expire_pending(now);
        out.append(&mut self.completed);
    }

    fn on_completion(&mut self, r: ClientResponse, now: Instant) {
        let corr = r.correlation_id;
        let Some(e) = self.requests.get_mut(&corr) else {
            return;
        };
        if e.at != Where::InFlight {
            return;
        }
        let outcome = match r.outcome {
            Outcome::Response(b) => FailoverOutcome::Response(b),
            Outcome::Sent => FailoverOutcome::Sent,
            Outcome::TimedOut => FailoverOutcome::TimedOut,
            Outcome::LocalError(l) => FailoverOutcome::LocalError(l),
            Outcome::Disconnected(cause) => {
                if e.tracked && e.frame.is_some() && self.exhausted.is_none() {
                    e.tracked = false;
                    e.at = Where::Pending;
                    e.replays += 1;
                    self.tracked_bytes -= e.len;
                    let seq = e.seq;
                    let requests = &self.requests;
                    let pos = self
                        .pending
                        .partition_point(|c| requests.get(c).is_some_and(|p| p.seq < seq));
                    self.pending.insert(pos, corr);
                    self.metrics.replayed += 1;
                    return;
                }
                FailoverOutcome::Disconnected(cause)
            }
        };
        self.complete(corr, outcome, now);
    }

    fn expire_pending(&mut self, now: Instant) {
        let expired = |e: &Entry| e.deadline.is_some_and(|d| d <= now);
        if !self
            .pending
            .iter()
            .any(|c| self.requests.get(c).is_some_and(expired))
        {
            return;
        }
        let mut keep = VecDeque::with_capacity(self.pending.len());
        for c in std::mem::take(&mut self.pending) {
            if self.requests.get(&c).is_some_and(expired) {
                self.complete(c, FailoverOutcome::TimedOut, now);
            } else {
                keep.push_back(c);
            }
        }
        self.pending = keep;
    }

    fn drive(&mut self, now: Instant) {
        self.last_now = Some(now);
        if self.exhausted.is_some() {
            return;
        }
        if let Some(live) = self.live {
            if self.state(live) != Some(ConnectionState::Ready) {
                self.lose_link(live, now);
            }
        }
        if self.live.is_none() {
            self.drive_down(now);
        }
        if self.live.is_some() {
            self.drive_up(now);
        }
        self.drain_old(now);
    }

    fn lose_link(&mut self, lost: NodeId, now: Instant) {
        self.live = None;
        if let Some(uri) = self.uri_of(lost).cloned() {
            self.events.push(FailoverEvent::Interrupted { uri });
        }
        self.metrics.interruptions += 1;
        log::info!("failover: link to {lost} lost");
        self.down_since = Some(now);
        self.last_failed = Some(lost);
        self.failed_passes = 0;
        self.in_pass = false;
        self.attempt = None;
        self.next_pass_at = Some(now + self.pass_delay(0));
        if let Some(c) = self.candidate.take() {
            self.standbys.push(c);
        }
        if self.must_move {
            self.must_move = false;
            if !self.listed(lost) {
                self.client.remove_node(lost, now);
            }
        }
    }

    fn drive_down(&mut self, now: Instant) {
        // Bounded: each iteration either returns or consumes one server of the pass.
        for _ in 0..self.servers.len() + 3 {
            if let Some(a) = self.attempt {
                match self.state(a) {
                    Some(ConnectionState::Ready) => {
                        self.attempt = None;
                        self.resume(a, now);
                        return;
                    }
                    Some(s) if s.is_setting_up() => return,
                    _ => {
                        self.attempt = None;
                        self.last_failed = Some(a);
                    }
                }
            }
            let ready_standby = self
                .standbys
                .iter()
                .copied()
                .find(|n| self.state(*n) == Some(ConnectionState::Ready));
            if let Some(s) = ready_standby {
                self.metrics.promotions += 1;
                self.resume(s, now);
                return;
            }
            if self.servers.is_empty() {
                return;
            }
            if !self.in_pass {
                if self.next_pass_at.is_some_and(|t| now < t) {
                    return;
                }
                self.start_pass();
            }
            if self.pass_pos < self.pass.len() {
                let n = self.pass[self.pass_pos];
                self.pass_pos += 1;
                if self.client.ready(n, now) {
                    self.resume(n, now);
                    return;
                }
                match self.state(n) {
                    Some(s) if s.is_setting_up() => {
                        self.attempt = Some(n);
                        return;
                    }
                    _ => self.last_failed = Some(n),
                }
            } else {
                self.pass_failed(now);
                return;
            }
        }
    }

    fn start_pass(&mut self) {
        let mut order: Vec<NodeId> = self.servers.iter().map(|s| s.node).collect();
        if self.options.randomize {
            for i in (1..order.len()).rev() {
                let j = ((self.rng.next_f64() * (i + 1) as f64) as usize).min(i);
                order.swap(i, j);
            }
        }
        if self.options.priority_backup {
            let (mut first, rest): (Vec<NodeId>, Vec<NodeId>) =
                order.into_iter().partition(|n| self.is_priority(*n));
            first.extend(rest);
            order = first;
        }
        if let Some(last) = self.last_failed {
            if let Some(p) = order.iter().position(|n| *n == last) {
                let n = order.remove(p);
                order.push(n);
            }
        }
        self.pass = order;
        self.pass_pos = 0;
        self.in_pass = true;
        self.metrics.passes += 1;
    }

    fn pass_failed(&mut self, now: Instant) {
        self.in_pass = false;
        self.failed_passes += 1;
        self.metrics.failed_passes += 1;
        let n = self.failed_passes;
        let w = self.options.warn_after_reconnect_attempts;
        if w > 0 && n % w == 0 {
            self.metrics.warnings += 1;
            log::warn!(
                "failover: {n} reconnect passes over {} servers failed; still trying",
                self.servers.len()
            );
        }
        let limit = if self.ever_connected {
            self.options.max_reconnect_attempts
        } else {
            self.options
                .startup_max_reconnect_attempts
                .or(self.options.max_reconnect_attempts)
        };
        if limit.is_some_and(|l| n >= l.max(1)) {
            self.exhaust(now);
            return;
        }
        self.next_pass_at = Some(now + self.pass_delay(n));
    }

    fn exhaust(&mut self, now: Instant) {
        let passes = self.failed_passes;
        log::error!("failover: giving up after {passes} failed reconnect passes");
        self.exhausted = Some(passes);
        self.events.push(FailoverEvent::Exhausted { passes });
        self.metrics.exhaustions += 1;
        for c in std::mem::take(&mut self.pending) {
            self.complete(c, FailoverOutcome::Exhausted { passes }, now);
        }
        for n in std::mem::take(&mut self.standbys)
            .into_iter()
            .chain(self.candidate.take())
            .chain(self.attempt.take())
        {
            self.client.disconnect(n, now);
        }
    }

    fn resume(&mut self, node: NodeId, now: Instant) {
        self.live = Some(node);
        self.standbys.retain(|n| *n != node);
        if self.candidate == Some(node) {
            self.candidate = None;
        }
        if let Some(a) = self.attempt.take() {
            if a != node {
                self.client.disconnect(a, now);
            }
        }
        self.in_pass = false;
        self.failed_passes = 0;
        self.next_pass_at = None;
        if let Some(s) = self.server_mut(node) {
            s.bg_failures = 0;
            s.bg_retry_at = None;
        }
        let uri = self.uri_of(node).cloned();
        match self.down_since.take() {
            Some(t) => {
                let us = now.saturating_duration_since(t).as_micros();
                let _ = self
                    .metrics
                    .time_down_us
                    .record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                self.metrics.resumptions += 1;
                if let Some(uri) = uri {
                    log::info!("failover: resumed on {uri}");
                    self.events.push(FailoverEvent::Resumed { uri });
                }
            }
            None => {
                self.metrics.connects += 1;
                if let Some(uri) = uri {
                    log::info!("failover: connected to {uri}");
                    self.events.push(FailoverEvent::Connected { uri });
                }
            }
        }
        self.ever_connected = true;
        self.flush_pending(now);
    }

    /// While up: keep the standby pool full and pursue a priority (or move) candidate.
    fn drive_up(&mut self, now: Instant) {
        let Some(live) = self.live else { return };
        self.flush_pending(now);
        // Standbys that failed leave the pool and retry later.
        let mut k = 0;
        while k < self.standbys.len() {
            let n = self.standbys[k];
            match self.state(n) {
                Some(s) if s == ConnectionState::Ready || s.is_setting_up() => k += 1,
                _ => {
                    self.standbys.remove(k);
                    self.background_failed(n, now);
                }
            }
        }
        let pool = if self.options.backup {
            self.options.backup_pool_size
        } else {
            0
        };
        while self.standbys.len() > pool {
            if let Some(n) = self.standbys.pop() {
                self.client.disconnect(n, now);
            }
        }
        let wants_switch =
            self.must_move || (self.options.priority_backup && !self.is_priority(live));
        // A Ready standby that is a better place switches at once.
        if wants_switch {
            let better = self.standbys.iter().copied().find(|n| {
                self.state(*n) == Some(ConnectionState::Ready)
                    && (self.must_move || self.is_priority(*n))
            });
            if let Some(b) = better {
                self.switch_to(b, now);
                return;
            }
        }
        if let Some(c) = self.candidate {
            match self.state(c) {
                Some(ConnectionState::Ready) => {
                    self.switch_to(c, now);
                    return;
                }
                Some(s) if s.is_setting_up() => {}
                _ => {
                    self.candidate = None;
                    self.background_failed(c, now);
                }
            }
        }
        if wants_switch && self.candidate.is_none() {
            let pick = self
                .servers
                .iter()
                .filter(|s| {
                    s.node != live
                        && !self.draining.contains(&s.node)
                        && !self.standbys.contains(&s.node)
                        && s.bg_retry_at.is_none_or(|t| t <= now)
                        && (self.must_move || self.is_priority(s.node))
                })
                .map(|s| s.node)
                .next();
            if let Some(c) = pick {
                if self.client.ready(c, now) {
                    self.switch_to(c, now);
                    return;
                }
                if self.state(c).is_some_and(ConnectionState::is_setting_up) {
                    self.candidate = Some(c);
                } else {
                    self.background_failed(c, now);
                }
            }
        }
        while self.standbys.len() < pool {
            // In list order, the server that failed last only when no other is free.
            let pick = self
                .servers
                .iter()
                .filter(|s| {
                    s.node != live
                        && Some(s.node) != self.candidate
                        && !self.draining.contains(&s.node)
                        && !self.standbys.contains(&s.node)
                        && s.bg_retry_at.is_none_or(|t| t <= now)
                })
                .min_by_key(|s| Some(s.node) == self.last_failed)
                .map(|s| s.node);
            let Some(n) = pick else { break };
            self.client.ready(n, now);
            match self.state(n) {
                Some(s) if s == ConnectionState::Ready || s.is_setting_up() => {
                    self.standbys.push(n);
                }
                _ => self.background_failed(n, now),
            }
        }
    }

    fn background_failed(&mut self, node: NodeId, now: Instant) {
        let failures = match self.server_mut(node) {
            Some(s) => {
                s.bg_failures += 1;
                s.bg_failures
            }
            None => return,
        };
        let wait = self.pass_delay(failures);
        if let Some(s) = self.server_mut(node) {
            s.bg_retry_at = Some(now + wait);
        }
    }

    fn switch_to(&mut self, to: NodeId, now: Instant) {
        let Some(from) = self.live else { return };
        self.live = Some(to);
        self.standbys.retain(|n| *n != to);
        if self.candidate == Some(to) {
            self.candidate = None;
        }
        self.must_move = false;
        if let Some(s) = self.server_mut(to) {
            s.bg_failures = 0;
            s.bg_retry_at = None;
        }
        let keep_as_standby = self.options.backup
            && self.listed(from)
            && self.standbys.len() < self.options.backup_pool_size;
        if keep_as_standby {
            self.standbys.push(from);
        } else {
            self.draining.push(from);
        }
        self.metrics.switches += 1;
        if let (Some(f), Some(t)) = (self.uri_of(from).cloned(), self.uri_of(to).cloned()) {
            log::info!("failover: switching from {f} to {t}");
            self.events.push(FailoverEvent::Switched { from: f, to: t });
        }
        self.flush_pending(now);
    }

    /// Closes old links once their in-flight requests have finished.
    fn drain_old(&mut self, now: Instant) {
        let mut k = 0;
        while k < self.draining.len() {
            let n = self.draining[k];
            let busy = self.client.in_flight_count(n) + self.client.waiting_count(n) > 0
                && self.state(n) == Some(ConnectionState::Ready);
            if busy {
                k += 1;
                continue;
            }
            self.draining.remove(k);
            if self.listed(n) {
                if Some(n) != self.live && !self.standbys.contains(&n) {
                    self.client.disconnect(n, now);
                }
            } else {
                self.client.remove_node(n, now);
            }
        }
    }

    // ----- list updates --------------------------------------------------------------------------

    /// Replaces the server list (a broker's cluster update). The live link stays if its server is
    /// still listed; otherwise a listed server is connected in the background and the link
    /// switches to it once Ready (requests in flight on the old one finish there). Standbys and
    /// attempts to servers no longer listed are dropped and their nodes removed from the client.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when an address is not `host:port` or a server option is
    /// not accepted; the list is then unchanged.
    pub fn update_uris(&mut self, uris: &[ServerUri], now: Instant) -> io::Result<()> {
        for u in uris {
            crate::client::split_host_port(&u.address())?;
            u.socket_options(self.client.config().socket_options())
                .map_err(|p| {
                    io::Error::new(io::ErrorKind::InvalidInput, UriError { problems: p })
                })?;
        }
        let mut next = Vec::with_capacity(uris.len());
        for u in uris {
            if next.iter().any(|s: &Server| s.uri == *u) {
                continue;
            }
            match self.servers.iter().find(|s| s.uri == *u) {
                Some(s) => next.push(s.clone()),
                None => {
                    let node = self.register(u)?;
                    next.push(Server {
                        uri: u.clone(),
                        node,
                        bg_failures: 0,
                        bg_retry_at: None,
                    });
                }
            }
        }
        let old = std::mem::replace(&mut self.servers, next);
        for s in old {
            let n = s.node;
            if self.listed(n) {
                continue;
            }
            if self.live == Some(n) {
                self.must_move = true;
                continue;
            }
            if self.draining.contains(&n) {
                continue;
            }
            self.standbys.retain(|x| *x != n);
            if self.candidate == Some(n) {
                self.candidate = None;
            }
            if self.attempt == Some(n) {
                self.attempt = None;
            }
            self.client.remove_node(n, now);
        }
        if self.live.is_none() {
            // While down, a new list is tried at once with a fresh pass; the interrupted pass
            // does not count as failed.
            self.in_pass = false;
            self.next_pass_at = None;
        }
        Ok(())
    }
}

impl<T: Transport, H: Handshake> fmt::Debug for FailoverTransport<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverTransport")
            .field("servers", &self.servers.len())
            .field("live", &self.current_uri().map(ToString::to_string))
            .field("exhausted", &self.exhausted)
            .field("outstanding", &self.requests.len())
            .field("waiting", &self.pending.len())
            .field("attempt", &self.attempt)
            .field("in_pass", &self.in_pass)
            .field("standbys", &self.standbys)
            .field("candidate", &self.candidate)
            .field("draining", &self.draining)
            .finish()
    }
}
