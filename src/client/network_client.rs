//! The request layer over a [`Transport`]: Kafka's `NetworkClient`, with its users' fixes.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::backoff::{JitterSource, SplitMix64};
use super::config::{ClientConfig, ResponseOrder};
use super::connection_states::{ClusterConnectionStates, ConnectionState, Reauth};
use super::handshake::{Handshake, HandshakeStep, NoHandshake};
use super::metrics::{ClientMetrics, ClientWindow, Delta, NodeMetrics};
use super::node::{split_host_port, NodeId, Resolver, SystemResolver};
use super::request::{
    Callback, ClientRequest, ClientResponse, Completion, DisconnectCause, LocalError, Outcome,
    OutcomeRef,
};
use crate::net::ChannelMap;
use crate::net::{
    split_frame, ChannelId, FrameWriter, Received, Selector, SelectorConfig, SendError,
    SocketOptions, Transport,
};

/// A hasher for the node-id map: ids are small integers, so the identity (spread by a multiply)
/// beats SipHash on the per-request lookup.
#[derive(Default, Clone, Copy)]
struct NodeIdHasher(u64);

impl std::hash::Hasher for NodeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i32(&mut self, n: i32) {
        self.0 = u64::from(n as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type NodeIndex = HashMap<NodeId, usize, std::hash::BuildHasherDefault<NodeIdHasher>>;

/// Node ids in `0..DENSE_IDS` (broker ids usually are) are also indexed by a plain array, so the
/// per-request lookup is one bounds check and a load.
const DENSE_IDS: usize = 4096;

/// Reads a response's correlation id. The default, [`kafka_correlation_id`], reads the first four
/// bytes (Kafka's response header).
pub type CorrelationReader = fn(&[u8]) -> Option<i32>;

/// The correlation id at the front of a Kafka response (`None` when the frame is shorter than 4
/// bytes).
#[inline]
pub fn kafka_correlation_id(frame: &[u8]) -> Option<i32> {
    let b = frame.get(..4)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// One request in flight (staged on the Selector, awaiting its response) or waiting to be staged.
struct InFlight {
    correlation_id: i32,
    expect_response: bool,
    internal: bool,
    created: Instant,
    deadline: Instant,
    tag: u64,
    callback: Option<Callback>,
}

/// Per-node request bookkeeping.
#[derive(Default)]
struct NodeRequests {
    /// Staged on the Selector, oldest first. Entries `[0, sent)` have fully left.
    in_flight: VecDeque<InFlight>,
    sent: usize,
    /// Accepted by `send` but not yet staged (in-flight cap reached), oldest first.
    waiting: VecDeque<(InFlight, Bytes)>,
    /// Set when a request with its own timeout (or a handshake request) is queued; cleared when
    /// the node has no requests. While clear, deadlines follow send order, so the oldest request
    /// holds the earliest deadline and nothing needs scanning.
    mixed_deadlines: bool,
    /// Correlation ids of recent requests that expected no response and completed `Sent`. A peer
    /// that answers them anyway (librdkafka's mock answers `acks=0` produce requests; a real
    /// broker does not) has its answer dropped instead of being taken for a desynchronised stream.
    unanswered: VecDeque<i32>,
    /// How many `in_flight` entries expect no response. They are all unsent (each leaves
    /// `in_flight` when its send completes), so while this is zero a completed send only advances
    /// `sent`.
    no_response: usize,
}

/// How many no-response correlation ids a node remembers.
const UNANSWERED_MEMORY: usize = 64;

impl NodeRequests {
    /// Forgets `id` if it is a recent no-response request; returns whether it was.
    #[inline]
    fn take_unanswered(&mut self, id: Option<i32>) -> bool {
        if self.unanswered.is_empty() {
            return false;
        }
        let Some(id) = id else { return false };
        match self.unanswered.iter().position(|c| *c == id) {
            Some(pos) => {
                self.unanswered.remove(pos);
                true
            }
            None => false,
        }
    }

    /// The earliest deadline among the node's requests.
    fn earliest_deadline(&self) -> Option<Instant> {
        if !self.mixed_deadlines {
            return self
                .in_flight
                .front()
                .or(self.waiting.front().map(|(e, _)| e))
                .map(|e| e.deadline);
        }
        self.in_flight
            .iter()
            .chain(self.waiting.iter().map(|(e, _)| e))
            .map(|e| e.deadline)
            .min()
    }

    /// Whether any in-flight request's deadline is at or before `now`.
    fn in_flight_expired(&self, now: Instant) -> bool {
        if !self.mixed_deadlines {
            return self.in_flight.front().is_some_and(|e| e.deadline <= now);
        }
        self.in_flight.iter().any(|e| e.deadline <= now)
    }

    /// Whether any waiting request's deadline is at or before `now`.
    fn waiting_expired(&self, now: Instant) -> bool {
        if !self.mixed_deadlines {
            return self.waiting.front().is_some_and(|(e, _)| e.deadline <= now);
        }
        self.waiting.iter().any(|(e, _)| e.deadline <= now)
    }

    /// Whether a send completing on this node changes what the owner may do next: a waiting
    /// request can be staged, a no-response request completes, or (without `pipeline_unsent`)
    /// the node becomes ready for another request.
    fn reacts_to_sends(&self, pipeline_unsent: bool, max_in_flight: usize) -> bool {
        let unsent = self.in_flight.len() - self.sent.min(self.in_flight.len());
        unsent > 0
            && (!self.waiting.is_empty()
                || (!pipeline_unsent && self.in_flight.len() < max_in_flight)
                || self.no_response > 0)
    }

    fn settle(&mut self) {
        if self.in_flight.is_empty() && self.waiting.is_empty() {
            self.mixed_deadlines = false;
        }
    }
}

/// Kafka's `NetworkClient`, Rust-shaped and sans-IO at its core.
///
/// The client keeps per-node connection states (see [`ConnectionState`]), reconnects with
/// exponential, jittered backoff, fails attempts that exceed the connection-setup timeout (aborting
/// their sockets), and tracks requests in a deque per node.
///
/// # Semantics
///
/// - **Every request completes exactly once**, in the `poll` that settles it, with one
///   [`Outcome`]: its response; `Sent` (no response expected, fully left); `Disconnected` (the
///   connection was lost first); `TimedOut` (its deadline passed); or `LocalError` (it never reached
///   the network).
/// - **Backoff**: after `n` consecutive failures the next attempt waits
///   `min(max, initial × 2^n × U(0.8, 1.2))` (`reconnect.backoff.ms`, `.max.ms`). The count resets
///   only when a connection reaches Ready (KAFKA-13879).
/// - **Setup timeout** (KIP-601): a node still Connecting or Handshaking after
///   `socket.connection.setup.timeout.ms` (doubling with jitter per consecutive failure up to
///   `.max.ms`) is failed and its socket closed at once.
/// - **In flight**: at most `max.in.flight.requests.per.connection` per node. A new request is
///   staged only when the newest in-flight one has fully left (unless `mqnet.pipeline.unsent`);
///   requests sent beyond that wait, in order, in the client. In ordered mode each response must
///   carry the oldest in-flight request's correlation id; on a mismatch the connection is closed
///   and every request on it completes as `Disconnected(CorrelationMismatch)`.
/// - **Request timeout**: when an in-flight request passes its deadline (`request.timeout.ms` from
///   `send`), the node's connection is closed: expired requests complete `TimedOut`, the others
///   `Disconnected(RequestTimeout)`.
/// - **Disconnect** (peer close, reset, idle expiry, ...): every request on the connection
///   completes `Disconnected`; the node goes to Disconnected and its backoff grows.
///
/// # Example
///
/// ```no_run
/// use std::time::{Duration, Instant};
/// use bytes::Bytes;
/// use mqnet::client::{ClientConfig, ClientRequest, NetworkClient, NodeId, Outcome};
///
/// let mut client = NetworkClient::new(ClientConfig::default()).unwrap();
/// let node = NodeId(1);
/// client.add_node(node, "127.0.0.1:9092").unwrap();
/// let deadline = Instant::now() + Duration::from_secs(10);
/// while !client.ready(node, Instant::now()) && Instant::now() < deadline {
///     client.poll_io(Some(Duration::from_millis(50)), Instant::now()).unwrap();
///     client.handle(Instant::now());
/// }
/// let corr = client.next_correlation_id();
/// let mut frame = corr.to_be_bytes().to_vec();
/// frame.extend_from_slice(b"payload");
/// client.send(ClientRequest::new(node, corr, Bytes::from(frame)), Instant::now());
/// client.poll_io(Some(Duration::from_secs(1)), Instant::now()).unwrap();
/// for r in client.handle(Instant::now()) {
///     if let Outcome::Response(body) = r.outcome {
///         println!("{} bytes back in {:?}", body.len(), r.latency);
///     }
/// }
/// ```
pub struct NetworkClient<T: Transport = Selector, H: Handshake = NoHandshake> {
    transport: T,
    config: ClientConfig,
    handshake: H,
    resolver: Box<dyn Resolver + Send>,
    rng: Box<dyn JitterSource + Send>,
    /// `None`: [`kafka_correlation_id`], called inline.
    correlation_reader: Option<CorrelationReader>,
    states: ClusterConnectionStates,
    ids: Vec<NodeId>,
    index: NodeIndex,
    /// `dense[id]` = node index + 1 for ids in `0..DENSE_IDS`, 0 for none.
    dense: Vec<usize>,
    requests: Vec<NodeRequests>,
    metrics: Vec<NodeMetrics>,
    /// The client-wide metric windows and how they sample.
    window: ClientWindow,
    metric_config: crate::metrics::MetricConfig,
    /// Per node: socket options overriding the config's (`None`: the config's).
    node_options: Vec<Option<SocketOptions>>,
    /// Channel → node index.
    channel_nodes: ChannelMap<usize>,
    /// Completions waiting to be returned by the next poll.
    completed: Vec<ClientResponse>,
    callbacks: Vec<(usize, Callback)>,
    receives: Vec<Received>,
    scratch_channels: Vec<ChannelId>,
    next_correlation: i32,
    /// The last latency computed by `finish`, with its (sent, completed) instants: requests sent
    /// in one poll and completed in one poll share it, so it is computed once per such run.
    latency_memo: (Instant, Instant, Duration),
    /// The last deadline computed by `send`, with its (now, timeout): requests sent together share
    /// it.
    deadline_memo: (Instant, Duration, Instant),
    /// `poll_io` polled the transport and `handle_into` has not yet taken its outputs.
    io_pending: bool,
    /// Responses are read where the transport received them (see `set_borrowed_responses`).
    borrowed: bool,
}

impl NetworkClient<Selector, NoHandshake> {
    /// A client over a new Selector configured from `config` (idle expiry, max frame size default).
    ///
    /// # Errors
    /// The OS error of creating the Selector.
    pub fn new(config: ClientConfig) -> io::Result<Self> {
        let selector = Selector::with_config(SelectorConfig {
            connections_max_idle: config.connections_max_idle,
            ..SelectorConfig::default()
        })?;
        Ok(NetworkClient::with_transport(selector, config, NoHandshake))
    }
}

impl<T: Transport, H: Handshake> NetworkClient<T, H> {
    /// A client over `transport`, running `handshake` on each new connection.
    pub fn with_transport(transport: T, config: ClientConfig, handshake: H) -> Self {
        let states = ClusterConnectionStates::new(&config);
        let t0 = transport.now();
        NetworkClient {
            transport,
            config,
            handshake,
            resolver: Box::new(SystemResolver),
            rng: Box::new(SplitMix64::from_entropy()),
            correlation_reader: None,
            states,
            ids: Vec::new(),
            index: NodeIndex::default(),
            dense: Vec::new(),
            requests: Vec::new(),
            metrics: Vec::new(),
            window: ClientWindow::new(crate::metrics::MetricConfig::default()),
            metric_config: crate::metrics::MetricConfig::default(),
            node_options: Vec::new(),
            channel_nodes: ChannelMap::new(),
            completed: Vec::new(),
            callbacks: Vec::new(),
            receives: Vec::new(),
            scratch_channels: Vec::new(),
            next_correlation: 0,
            latency_memo: (t0, t0, Duration::ZERO),
            deadline_memo: (t0, Duration::ZERO, t0),
            io_pending: false,
            borrowed: false,
        }
    }

    /// Replaces the resolver (tests inject fixed answers).
    pub fn with_resolver(mut self, resolver: impl Resolver + Send + 'static) -> Self {
        self.resolver = Box::new(resolver);
        self
    }

    /// Replaces the randomness used for backoff jitter and node selection (tests inject a seeded
    /// or fixed source). Call before adding nodes.
    pub fn with_rng(mut self, rng: impl JitterSource + Send + 'static) -> Self {
        self.rng = Box::new(rng);
        self
    }

    /// Sets how the metric windows sample (`metrics.sample.window.ms`, `metrics.num.samples`).
    /// Call before adding nodes: nodes added earlier keep the default.
    pub fn with_metric_config(mut self, cfg: crate::metrics::MetricConfig) -> Self {
        self.metric_config = cfg;
        self.window = ClientWindow::new(cfg);
        self
    }

    /// A snapshot of the client's metrics: Kafka's client-wide names and each node's (see
    /// [`ClientMetrics`]). Cheap (one pass over the nodes, allocating the node list); recording
    /// them on the request path takes no lock and allocates nothing.
    pub fn metrics(&self) -> ClientMetrics {
        let now = self.transport.now();
        let nodes = (0..self.ids.len())
            .map(|i| {
                let r = &self.requests[i];
                self.metrics[i].snapshot(
                    self.ids[i],
                    self.states.get(i).state,
                    r.in_flight.len(),
                    r.waiting.len(),
                    now,
                )
            })
            .collect();
        ClientMetrics::new(now, nodes, &self.window, self.transport.io_metrics())
    }

    /// Replaces how correlation ids are read from responses.
    pub fn with_correlation_reader(mut self, reader: CorrelationReader) -> Self {
        self.correlation_reader = Some(reader);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The transport (the Selector), e.g. for its metrics.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (tests inject faults through it).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The handshake hook.
    pub fn handshake(&self) -> &H {
        &self.handshake
    }

    /// The handshake hook, mutably.
    pub fn handshake_mut(&mut self) -> &mut H {
        &mut self.handshake
    }

    // ----- nodes ---------------------------------------------------------------------------------

    /// Adds a node at `host:port`, or updates its address (the new one is used from the next
    /// connection attempt on).
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when `address` is not `host:port`.
    pub fn add_node(&mut self, node: NodeId, address: &str) -> io::Result<()> {
        let (host, port) = split_host_port(address)?;
        if let Some(&i) = self.index.get(&node) {
            let n = self.states.get_mut(i);
            if n.host != host || n.port != port {
                n.host = host;
                n.port = port;
                n.addresses.clear();
                n.next_address = 0;
            }
            return Ok(());
        }
        let i = self.states.add(host, port, self.rng.as_mut());
        self.ids.push(node);
        self.index.insert(node, i);
        if let Ok(id) = usize::try_from(node.0) {
            if id < DENSE_IDS {
                if self.dense.len() <= id {
                    self.dense.resize(id + 1, 0);
                }
                self.dense[id] = i + 1;
            }
        }
        self.requests.push(NodeRequests::default());
        self.metrics.push(NodeMetrics::with_config(
            self.transport.now(),
            self.metric_config,
        ));
        self.node_options.push(None);
        Ok(())
    }

    /// Sets the socket options of the node's next connections (`None`: the config's). Returns
    /// whether the node is known.
    pub fn set_socket_options(&mut self, node: NodeId, options: Option<SocketOptions>) -> bool {
        match self.node_index(node) {
            Some(i) => {
                self.node_options[i] = options;
                true
            }
            None => false,
        }
    }

    /// Removes a node: closes its channel, completes each of its in-flight and waiting requests
    /// once with `Disconnected(NodeRemoved)` (returned by the next poll), and forgets it. Returns
    /// whether the node was known. Requests sent to it afterwards complete
    /// `LocalError(UnknownNode)`; adding the id again starts it afresh.
    pub fn remove_node(&mut self, node: NodeId, now: Instant) -> bool {
        let Some(i) = self.node_index(node) else {
            return false;
        };
        let was = self.states.get(i).state;
        if let Some(ch) = self.states.get(i).channel {
            self.transport.close(ch);
            self.channel_nodes.remove(ch);
        }
        if was == ConnectionState::Ready || was == ConnectionState::Handshaking {
            self.metrics[i].connections_closed += 1;
            self.handshake.on_disconnect(node);
        }
        let failed: Vec<InFlight> = {
            let r = &mut self.requests[i];
            r.in_flight
                .drain(..)
                .chain(r.waiting.drain(..).map(|(e, _)| e))
                .collect()
        };
        for entry in failed {
            self.finish(
                node,
                i,
                entry,
                Outcome::Disconnected(DisconnectCause::NodeRemoved),
                Some(now),
            );
        }
        self.states.remove(i);
        self.ids.remove(i);
        self.requests.remove(i);
        self.metrics.remove(i);
        self.node_options.remove(i);
        self.index.remove(&node);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        if let Ok(id) = usize::try_from(node.0) {
            if let Some(d) = self.dense.get_mut(id) {
                *d = 0;
            }
        }
        for d in &mut self.dense {
            if *d > i + 1 {
                *d -= 1;
            }
        }
        for n in self.channel_nodes.values_mut() {
            if *n > i {
                *n -= 1;
            }
        }
        log::debug!("{node}: removed");
        true
    }

    /// The known nodes, in the order they were added.
    pub fn nodes(&self) -> &[NodeId] {
        &self.ids
    }

    /// The node's connection state (`None` for an unknown node).
    pub fn connection_state(&self, node: NodeId) -> Option<ConnectionState> {
        self.node_index(node).map(|i| self.states.get(i).state)
    }

    /// The node's metrics.
    pub fn node_metrics(&self, node: NodeId) -> Option<&NodeMetrics> {
        self.index.get(&node).map(|&i| &self.metrics[i])
    }

    /// Requests in flight (staged or awaiting a response) on the node, not counting waiting ones.
    pub fn in_flight_count(&self, node: NodeId) -> usize {
        self.index
            .get(&node)
            .map_or(0, |&i| self.requests[i].in_flight.len())
    }

    /// Requests accepted by `send` but waiting for an in-flight slot on the node.
    pub fn waiting_count(&self, node: NodeId) -> usize {
        self.index
            .get(&node)
            .map_or(0, |&i| self.requests[i].waiting.len())
    }

    /// A fresh correlation id (increasing, wrapping to 0 after `i32::MAX`).
    pub fn next_correlation_id(&mut self) -> i32 {
        let c = self.next_correlation;
        self.next_correlation = if c == i32::MAX { 0 } else { c + 1 };
        c
    }

    // ----- readiness -----------------------------------------------------------------------------

    /// Whether a request can be sent to `node` now and staged at once: the connection is Ready and
    /// the in-flight rules allow one more.
    pub fn is_ready(&self, node: NodeId) -> bool {
        self.node_index(node).is_some_and(|i| {
            self.states.get(i).state == ConnectionState::Ready && self.can_stage(i)
        })
    }

    /// Like [`is_ready`](Self::is_ready), and starts a connection attempt when the node is
    /// disconnected and its backoff has elapsed. Call it for every node you want to talk to, then
    /// poll.
    pub fn ready(&mut self, node: NodeId, now: Instant) -> bool {
        let Some(i) = self.node_index(node) else {
            return false;
        };
        self.states.reauth_pending(i, now);
        if self.is_ready(node) {
            return true;
        }
        if self.states.can_connect(i, now) {
            self.initiate_connect(i, now);
        }
        false
    }

    /// How long until `node` may be connected: the rest of its backoff when disconnected, zero when
    /// ready, `Duration::MAX` while an attempt is in progress or for an unknown node.
    pub fn connection_delay(&self, node: NodeId, now: Instant) -> Duration {
        self.index
            .get(&node)
            .map_or(Duration::MAX, |&i| self.states.connection_delay(i, now))
    }

    /// The node to send a request to when any node will do (metadata): a Ready node with the fewest
    /// requests, else a node being connected, else the connectable node whose last attempt is the
    /// oldest. Nodes are scanned from a random offset, so ties spread. `None` when every node is in
    /// backoff.
    pub fn least_loaded_node(&mut self, now: Instant) -> Option<NodeId> {
        let n = self.ids.len();
        if n == 0 {
            return None;
        }
        let offset = ((self.rng.next_f64() * n as f64) as usize).min(n - 1);
        let mut best_ready: Option<(usize, usize)> = None;
        let mut connecting: Option<usize> = None;
        let mut connectable: Option<(usize, Option<Instant>)> = None;
        for k in 0..n {
            let i = (offset + k) % n;
            // A connection renewing its session holds new requests until it is done: pick it only
            // when no other connection is ready, like one still setting up.
            let renewing = self.states.reauth_pending(i, now);
            let st = self.states.get(i);
            match st.state {
                ConnectionState::Ready if renewing => {
                    connecting.get_or_insert(i);
                }
                ConnectionState::Ready => {
                    let load = self.requests[i].in_flight.len() + self.requests[i].waiting.len();
                    if best_ready.is_none_or(|(_, l)| load < l) {
                        best_ready = Some((i, load));
                    }
                }
                s if s.is_setting_up() => {
                    connecting.get_or_insert(i);
                }
                _ => {
                    if self.states.can_connect(i, now) {
                        let older = match connectable {
                            None => true,
                            Some((_, None)) => false,
                            Some((_, Some(t))) => st.last_attempt.is_none_or(|a| a < t),
                        };
                        if older {
                            connectable = Some((i, st.last_attempt));
                        }
                    }
                }
            }
        }
        best_ready
            .map(|(i, _)| i)
            .or(connecting)
            .or(connectable.map(|(i, _)| i))
            .map(|i| self.ids[i])
    }

    /// Whether a caller's request may be staged on the node now: the in-flight rules allow one
    /// more, and no re-authentication is due or running (KIP-368: requests wait meanwhile).
    fn can_stage(&self, i: usize) -> bool {
        let r = &self.requests[i];
        self.states.get(i).reauth == Reauth::Idle
            && r.in_flight.len() < self.config.max_in_flight_requests_per_connection
            && (self.config.pipeline_unsent || r.sent == r.in_flight.len())
    }

    fn initiate_connect(&mut self, i: usize, now: Instant) {
        self.metrics[i].connect_attempts += 1;
        let node = self.ids[i];
        let n = self.states.get_mut(i);
        if n.next_address >= n.addresses.len() {
            // First attempt, list wrapped, or cleared after a drop: resolve again.
            match self.resolver.resolve(&n.host, n.port) {
                Ok(addrs) if !addrs.is_empty() => {
                    n.addresses = addrs;
                    n.next_address = 0;
                }
                Ok(_) | Err(_) => {
                    log::warn!("{node}: cannot resolve {}:{}", n.host, n.port);
                    self.states.attempt_failed(i, now, self.rng.as_mut());
                    return;
                }
            }
        }
        let addr = n.addresses[n.next_address];
        n.next_address += 1;
        let options = self.node_options[i].unwrap_or_else(|| self.config.socket_options());
        let n = self.states.get(i);
        match self.transport.connect_named(addr, &n.host, &options) {
            Ok(ch) => {
                log::debug!("{node}: connecting to {addr} on {ch}");
                self.states.connecting(i, ch, addr, now);
                self.channel_nodes.insert(ch, i);
            }
            Err(e) => {
                log::warn!("{node}: connect to {addr} failed: {e}");
                self.states.attempt_failed(i, now, self.rng.as_mut());
            }
        }
    }

    /// The node's index: the dense array for small non-negative ids, else the map.
    #[inline]
    fn node_index(&self, node: NodeId) -> Option<usize> {
        if let Ok(id) = usize::try_from(node.0) {
            if id < DENSE_IDS {
                return match self.dense.get(id) {
                    Some(&k) if k > 0 => Some(k - 1),
                    _ => None,
                };
            }
        }
        self.index.get(&node).copied()
    }

    fn node_of(&self, ch: ChannelId) -> Option<usize> {
        match self.channel_nodes.get(ch) {
            Some(&i) if self.states.get(i).channel == Some(ch) => Some(i),
            _ => None,
        }
    }

    // ----- sending -------------------------------------------------------------------------------

    /// Sends a request. It is staged on the Selector at once when the in-flight rules allow, or
    /// waits in order in the client until they do; its deadline counts from now either way. Returns
    /// the correlation id.
    ///
    /// A request for an unknown node, a node that is not Ready, or a frame the Selector refuses
    /// completes with [`Outcome::LocalError`] in the next poll; it never panics and never touches
    /// the network.
    pub fn send(&mut self, request: ClientRequest, now: Instant) -> i32 {
        let corr = request.correlation_id;
        let Some(i) = self.node_index(request.node) else {
            self.complete_local(request, LocalError::UnknownNode);
            return corr;
        };
        let state = self.states.get(i).state;
        if state != ConnectionState::Ready {
            self.complete_local(request, LocalError::NotReady(state));
            return corr;
        }
        // Past its re-authentication point the request waits (KIP-368).
        self.states.reauth_pending(i, now);
        if self.config.response_order == ResponseOrder::Unordered
            && self.requests[i]
                .in_flight
                .iter()
                .chain(self.requests[i].waiting.iter().map(|(r, _)| r))
                .any(|r| r.correlation_id == corr)
        {
            self.complete_local(request, LocalError::DuplicateCorrelationId);
            return corr;
        }
        let timeout = request.timeout.unwrap_or(self.config.request_timeout);
        if request.timeout.is_some() {
            self.requests[i].mixed_deadlines = true;
        }
        let deadline = match self.deadline_memo {
            (at, t, d) if at == now && t == timeout => d,
            _ => {
                let d = now + timeout;
                self.deadline_memo = (now, timeout, d);
                d
            }
        };
        let entry = InFlight {
            correlation_id: corr,
            expect_response: request.expect_response,
            internal: false,
            created: now,
            deadline,
            tag: request.tag,
            callback: request.callback,
        };
        if self.requests[i].waiting.is_empty() && self.can_stage(i) {
            self.stage(i, entry, request.frame);
        } else {
            self.requests[i].waiting.push_back((entry, request.frame));
        }
        corr
    }

    /// Sends a request whose frame `write` appends straight into the node's send buffer (no frame
    /// buffer of the caller's, no copy), expecting a response within the configured request
    /// timeout. Only when it can be staged at once: the node is Ready, no request of it waits,
    /// the in-flight limit allows it, and the transport takes it. Returns whether it was sent;
    /// when `false`, nothing was written or recorded: send it with [`send`](Self::send) instead.
    ///
    /// # Example
    /// ```no_run
    /// # use std::time::Instant;
    /// # use mqnet::client::{NetworkClient, NodeId};
    /// # let mut client = NetworkClient::new(Default::default()).unwrap();
    /// let corr = client.next_correlation_id();
    /// let sent = client.send_with(NodeId(1), corr, Instant::now(), |w| {
    ///     w.put_i32(corr);
    ///     w.put_slice(b"payload");
    /// });
    /// # let _ = sent;
    /// ```
    pub fn send_with(
        &mut self,
        node: NodeId,
        correlation_id: i32,
        now: Instant,
        write: impl FnOnce(&mut FrameWriter<'_>),
    ) -> bool {
        let Some((i, ch)) = self.admit_written(node, correlation_id, now) else {
            return false;
        };
        let mut len = 0;
        let staged = self.transport.send_with(ch, |w| {
            write(w);
            len = w.len();
            true
        });
        if !matches!(staged, Ok(Some(_))) {
            return false;
        }
        self.record_written(i, correlation_id, now, len);
        true
    }

    /// As [`send_with`](Self::send_with), the frame being what `write` appends followed by
    /// `body`, which the transport writes from its own buffer (no copy; see
    /// [`Selector::send_with_body`](crate::net::Selector::send_with_body)): for a request whose
    /// bulk already sits in a [`Bytes`], such as a record batch.
    ///
    /// # Example
    /// ```no_run
    /// # use std::time::Instant;
    /// # use bytes::Bytes;
    /// # use mqnet::client::{NetworkClient, NodeId};
    /// # let mut client = NetworkClient::new(Default::default()).unwrap();
    /// let batch = Bytes::from(vec![0u8; 16 * 1024]);
    /// let corr = client.next_correlation_id();
    /// let sent = client.send_with_body(NodeId(1), corr, Instant::now(), |w| w.put_i32(corr), batch);
    /// # let _ = sent;
    /// ```
    pub fn send_with_body(
        &mut self,
        node: NodeId,
        correlation_id: i32,
        now: Instant,
        write: impl FnOnce(&mut FrameWriter<'_>),
        body: Bytes,
    ) -> bool {
        let Some((i, ch)) = self.admit_written(node, correlation_id, now) else {
            return false;
        };
        let mut len = body.len();
        let staged = self.transport.send_with_body(
            ch,
            |w| {
                write(w);
                len += w.len();
                true
            },
            body,
        );
        if !matches!(staged, Ok(Some(_))) {
            return false;
        }
        self.record_written(i, correlation_id, now, len);
        true
    }

    /// Whether a request written in place may be staged on `node` now (see
    /// [`send_with`](Self::send_with)): the node's index and channel if so.
    #[inline(always)]
    fn admit_written(
        &mut self,
        node: NodeId,
        correlation_id: i32,
        now: Instant,
    ) -> Option<(usize, ChannelId)> {
        let i = self.node_index(node)?;
        if self.states.get(i).state != ConnectionState::Ready
            || self.states.reauth_pending(i, now)
            || !self.requests[i].waiting.is_empty()
            || !self.can_stage(i)
        {
            return None;
        }
        if self.config.response_order == ResponseOrder::Unordered
            && self.requests[i]
                .in_flight
                .iter()
                .any(|r| r.correlation_id == correlation_id)
        {
            return None;
        }
        Some((i, self.states.get(i).channel?))
    }

    /// Records a request of `len` payload bytes written in place on node `i` as sent and in
    /// flight.
    #[inline(always)]
    fn record_written(&mut self, i: usize, correlation_id: i32, now: Instant, len: usize) {
        let timeout = self.config.request_timeout;
        let deadline = match self.deadline_memo {
            (at, t, d) if at == now && t == timeout => d,
            _ => {
                let d = now + timeout;
                self.deadline_memo = (now, timeout, d);
                d
            }
        };
        let m = &mut self.metrics[i];
        m.requests_sent += 1;
        // On the wire: the payload and its length prefix, as `stage` counts a built frame.
        m.bytes_sent += len as u64 + 4;
        self.requests[i].in_flight.push_back(InFlight {
            correlation_id,
            expect_response: true,
            internal: false,
            created: now,
            deadline,
            tag: 0,
            callback: None,
        });
    }

    fn complete_local(&mut self, request: ClientRequest, error: LocalError) {
        let response = ClientResponse {
            node: request.node,
            correlation_id: request.correlation_id,
            tag: request.tag,
            latency: Duration::ZERO,
            outcome: Outcome::LocalError(error),
        };
        if let Some(cb) = request.callback {
            self.callbacks.push((self.completed.len(), cb));
        }
        self.completed.push(response);
    }

    /// Stages `entry` on the node's channel. On back-pressure it goes back to the front of the
    /// waiting queue; on any other refusal it completes with a local error.
    fn stage(&mut self, i: usize, entry: InFlight, frame: Bytes) {
        let Some(ch) = self.states.get(i).channel else {
            self.requests[i].waiting.push_front((entry, frame));
            return;
        };
        let len = frame.len() as u64 + 4;
        match self.transport.send(ch, frame) {
            Ok(_) => {
                self.metrics[i].bytes_sent += len;
                if !entry.internal {
                    self.metrics[i].requests_sent += 1;
                }
                let r = &mut self.requests[i];
                if !entry.expect_response {
                    r.no_response += 1;
                }
                r.in_flight.push_back(entry);
            }
            Err((SendError::QueueFull { .. }, frame)) => {
                self.requests[i].waiting.push_front((entry, frame));
            }
            Err((e, _)) => {
                let node = self.ids[i];
                self.finish(
                    node,
                    i,
                    entry,
                    Outcome::LocalError(LocalError::Rejected(e)),
                    None,
                );
            }
        }
    }

    fn stage_waiting(&mut self, i: usize) {
        while !self.requests[i].waiting.is_empty()
            && self.states.get(i).state == ConnectionState::Ready
            && self.can_stage(i)
        {
            let before = self.requests[i].waiting.len();
            let Some((entry, frame)) = self.requests[i].waiting.pop_front() else {
                break;
            };
            self.stage(i, entry, frame);
            if self.requests[i].waiting.len() >= before {
                // Back-pressure: the Selector's queue is full; try again after the next poll.
                break;
            }
        }
    }

    /// Records a completion; internal (handshake) requests are not reported to the caller.
    fn finish(
        &mut self,
        node: NodeId,
        i: usize,
        entry: InFlight,
        outcome: Outcome,
        now: Option<Instant>,
    ) {
        if entry.internal {
            return;
        }
        let latency = match now {
            None => Duration::ZERO,
            Some(t) => self.latency(entry.created, t),
        };
        let m = &mut self.metrics[i];
        match &outcome {
            Outcome::Response(frame) => {
                m.bytes_received += frame.len() as u64 + 4;
                m.responses += 1;
                m.record_latency(latency);
            }
            Outcome::Sent => {
                m.responses += 1;
                m.record_latency(latency);
            }
            Outcome::TimedOut => m.timeouts += 1,
            Outcome::Disconnected(_) => m.disconnects += 1,
            Outcome::LocalError(_) => {}
        }
        if let Some(cb) = entry.callback {
            self.callbacks.push((self.completed.len(), cb));
        }
        self.completed.push(ClientResponse {
            node,
            correlation_id: entry.correlation_id,
            tag: entry.tag,
            latency,
            outcome,
        });
    }

    /// [`finish`](Self::finish) for a caller's request answered by `frame` at `now`: the
    /// per-response path, inlined into the receive loop. It spells out `finish`'s response arm
    /// and completion push instead of sharing a helper with it: a shared helper changes how the
    /// receive loop is inlined and costs instructions per response (see docs/BENCHMARKS.md).
    #[inline(always)]
    fn finish_response(
        &mut self,
        node: NodeId,
        i: usize,
        entry: InFlight,
        frame: Bytes,
        now: Instant,
    ) {
        let latency = self.latency(entry.created, now);
        let m = &mut self.metrics[i];
        m.bytes_received += frame.len() as u64 + 4;
        m.responses += 1;
        m.record_latency(latency);
        if let Some(cb) = entry.callback {
            self.callbacks.push((self.completed.len(), cb));
        }
        self.completed.push(ClientResponse {
            node,
            correlation_id: entry.correlation_id,
            tag: entry.tag,
            latency,
            outcome: Outcome::Response(frame),
        });
    }

    /// `now - created`, memoised: requests sent in one poll and completed in one poll share it.
    #[inline(always)]
    fn latency(&mut self, created: Instant, now: Instant) -> Duration {
        let (sent, at, l) = self.latency_memo;
        if sent == created && at == now {
            l
        } else {
            let l = now.saturating_duration_since(created);
            self.latency_memo = (created, now, l);
            l
        }
    }

    // ----- disconnecting -------------------------------------------------------------------------

    /// Closes the node's connection now. Every request on it completes as
    /// `Disconnected(Local)` in the next poll; the node backs off before reconnecting.
    pub fn disconnect(&mut self, node: NodeId, now: Instant) {
        if let Some(&i) = self.index.get(&node) {
            if self.states.get(i).channel.is_some() {
                self.close_node(i, DisconnectCause::Local, None, now);
            }
        }
    }

    /// Closes the node's channel (if still open), fails its requests and updates its state.
    /// Requests with a deadline at or before `expired_by` complete `TimedOut`, the rest
    /// `Disconnected(cause)`.
    fn close_node(
        &mut self,
        i: usize,
        cause: DisconnectCause,
        expired_by: Option<Instant>,
        now: Instant,
    ) {
        let node = self.ids[i];
        let was = self.states.get(i).state;
        if let Some(ch) = self.states.get(i).channel {
            self.transport.close(ch);
            self.channel_nodes.remove(ch);
        }
        if was == ConnectionState::Ready || was == ConnectionState::Handshaking {
            self.metrics[i].connections_closed += 1;
        }
        if was == ConnectionState::Handshaking || was == ConnectionState::Ready {
            self.handshake.on_disconnect(node);
        }
        let failed: Vec<InFlight> = {
            let r = &mut self.requests[i];
            r.sent = 0;
            r.no_response = 0;
            r.unanswered.clear();
            r.in_flight
                .drain(..)
                .chain(r.waiting.drain(..).map(|(e, _)| e))
                .collect()
        };
        for entry in failed {
            let outcome = match expired_by {
                Some(t) if entry.deadline <= t => Outcome::TimedOut,
                _ => Outcome::Disconnected(cause),
            };
            self.finish(node, i, entry, outcome, Some(now));
        }
        // A TLS handshake the transport failed counts as a rejected handshake (Kafka: an
        // authentication failure), not as a dropped connection.
        let handshake_failed = cause.is_authentication_failure();
        if handshake_failed {
            self.metrics[i].authentication_failure = Some(cause);
        }
        self.states
            .disconnected(i, handshake_failed, now, self.rng.as_mut());
        log::debug!("{node}: disconnected ({cause})");
    }

    // ----- polling -------------------------------------------------------------------------------

    /// The earliest instant at which the client has work of its own: a request deadline, a
    /// connection-setup deadline, or an authenticated session to renew (KIP-368).
    /// Poll no later than this.
    pub fn poll_deadline(&self) -> Option<Instant> {
        let mut d = self.states.next_setup_deadline();
        if let Some(s) = self.states.next_session_deadline() {
            d = Some(d.map_or(s, |x: Instant| x.min(s)));
        }
        for r in &self.requests {
            if let Some(e) = r.earliest_deadline() {
                d = Some(d.map_or(e, |x: Instant| x.min(e)));
            }
        }
        d
    }

    /// Does the I/O: waits at most `timeout` (never past the client's own next deadline, counted
    /// from `now`) for the transport's poll. Nothing is settled yet: call
    /// [`handle_into`](Self::handle_into) (or [`handle`](Self::handle)) next, with the time read
    /// *after* this returns. The client never reads a clock of its own: every time it uses is a
    /// `now` its caller passed.
    ///
    /// # Errors
    /// Only a failure of the OS poller; request failures are outcomes.
    ///
    /// # Example
    /// ```no_run
    /// # use std::time::{Duration, Instant};
    /// # let mut client = mqnet::client::NetworkClient::new(Default::default()).unwrap();
    /// let mut done = Vec::new();
    /// client.poll_io(Some(Duration::from_millis(10)), Instant::now()).unwrap();
    /// client.handle_into(Instant::now(), &mut done);
    /// ```
    pub fn poll_io(&mut self, timeout: Option<Duration>, now: Instant) -> io::Result<()> {
        let mut timeout = timeout;
        if !self.completed.is_empty() {
            timeout = Some(Duration::ZERO);
        } else if let Some(d) = self.poll_deadline() {
            // A caller's timeout ending at or before the deadline stands (an addition is cheaper
            // than the subtraction that would otherwise shorten it).
            let stands = timeout.is_some_and(|t| now.checked_add(t).is_some_and(|end| end <= d));
            if !stands {
                let until = d.saturating_duration_since(now);
                timeout = Some(timeout.map_or(until, |t| t.min(until)));
            }
        }
        let (pipeline, max) = (
            self.config.pipeline_unsent,
            self.config.max_in_flight_requests_per_connection,
        );
        let wake = self
            .requests
            .iter()
            .any(|r| r.reacts_to_sends(pipeline, max));
        self.transport.set_wake_on_sends(wake);
        let res = self.transport.poll(timeout);
        self.io_pending = res.is_ok();
        res
    }

    /// Settles requests at `now` (the caller's time after [`poll_io`](Self::poll_io) returned):
    /// takes what the last transport poll reported (once: a second call without a `poll_io` in
    /// between only checks deadlines), times requests out, and returns every request completed,
    /// in completion order. Callbacks run before it returns.
    pub fn handle(&mut self, now: Instant) -> Vec<ClientResponse> {
        let mut out = Vec::new();
        self.handle_into(now, &mut out);
        out
    }

    /// As [`handle`](Self::handle), appending completions to `out` (no allocation in steady
    /// state). With [borrowed responses](Self::set_borrowed_responses) each response's frame is
    /// copied into a `Bytes` of its own: use [`handle_with`](Self::handle_with) then.
    pub fn handle_into(&mut self, now: Instant, out: &mut Vec<ClientResponse>) {
        if self.borrowed {
            self.handle_with(now, |c| out.push(c.to_owned()));
            return;
        }
        if std::mem::take(&mut self.io_pending) {
            self.handle_connected(now);
            self.handle_completed_sends(now);
            self.handle_receives(now);
            self.handle_disconnected(now);
        }
        self.settle_requests(now);
        self.deliver(out);
    }

    /// As [`handle_into`](Self::handle_into), handing each completion to `f` as it is settled, in
    /// completion order, with a response's frame borrowed. With
    /// [borrowed responses](Self::set_borrowed_responses) that frame is a slice of the
    /// transport's read buffer, valid for the call of `f`: no reference count, no allocation, no
    /// copy per response. A request's own callback runs just before `f` sees its completion (with
    /// borrowed responses its frame is copied for the callback).
    ///
    /// # Example
    /// ```no_run
    /// # use std::time::{Duration, Instant};
    /// use mqnet::client::{NetworkClient, OutcomeRef};
    ///
    /// let mut client = NetworkClient::new(Default::default()).unwrap();
    /// client.set_borrowed_responses(true);
    /// // ... add a node, send requests ...
    /// client.poll_io(Some(Duration::from_millis(10)), Instant::now()).unwrap();
    /// client.handle_with(Instant::now(), |c| {
    ///     if let OutcomeRef::Response(frame) = c.outcome {
    ///         println!("{}: {} bytes", c.correlation_id, frame.len());
    ///     }
    /// });
    /// ```
    pub fn handle_with(&mut self, now: Instant, mut f: impl FnMut(Completion<'_>)) {
        if std::mem::take(&mut self.io_pending) {
            self.handle_connected(now);
            self.handle_completed_sends(now);
            if self.borrowed {
                self.flush_completed(&mut f);
                self.handle_receives_borrowed(now, &mut f);
            } else {
                self.handle_receives(now);
            }
            self.handle_disconnected(now);
        }
        self.settle_requests(now);
        self.flush_completed(&mut f);
    }

    /// Reads responses where the transport received them instead of taking each as a `Bytes` of
    /// its own; [`handle_with`](Self::handle_with) then hands them out borrowed. Call before the
    /// first [`poll_io`](Self::poll_io) (a switch between a `poll_io` and its `handle` is refused).
    /// Returns whether the client now works in the mode asked for: `false` when the transport
    /// has no borrowed receives (the client stays as it was).
    pub fn set_borrowed_responses(&mut self, on: bool) -> bool {
        if self.io_pending || on == self.borrowed {
            return on == self.borrowed;
        }
        if !self.transport.set_borrowed_receives(on) {
            return false;
        }
        self.borrowed = on;
        true
    }

    /// The work of a `handle` after the transport's outputs: deadlines, re-authentication,
    /// waiting requests staged, the metric windows.
    fn settle_requests(&mut self, now: Instant) {
        self.handle_timeouts(now);
        self.handle_reauthentication(now);
        let mut moved = Delta::default();
        for i in 0..self.requests.len() {
            if !self.requests[i].waiting.is_empty() {
                self.stage_waiting(i);
            }
            self.requests[i].settle();
            ClientWindow::add(&mut moved, self.metrics[i].observe(now));
        }
        self.window.observe(now, moved, self.transport.io_metrics());
    }

    fn deliver(&mut self, out: &mut Vec<ClientResponse>) {
        let base = out.len();
        if base == 0 {
            // Hand the completions over whole; the caller's empty vector (and its capacity)
            // collects the next ones.
            std::mem::swap(out, &mut self.completed);
        } else {
            out.append(&mut self.completed);
        }
        for (k, cb) in self.callbacks.drain(..) {
            cb(&out[base + k]);
        }
    }

    /// Hands the completions collected so far to `f`, each after its callback.
    fn flush_completed(&mut self, f: &mut impl FnMut(Completion<'_>)) {
        if self.completed.is_empty() {
            return;
        }
        let mut callbacks = self.callbacks.drain(..).peekable();
        for (k, r) in self.completed.drain(..).enumerate() {
            if let Some((_, cb)) = callbacks.next_if(|(at, _)| *at == k) {
                cb(&r);
            }
            f(r.as_completion());
        }
    }

    fn handle_connected(&mut self, now: Instant) {
        if self.transport.connected().is_empty() {
            return;
        }
        let mut chans = std::mem::take(&mut self.scratch_channels);
        chans.clear();
        chans.extend_from_slice(self.transport.connected());
        for &ch in &chans {
            let Some(i) = self.node_of(ch) else { continue };
            if self.states.get(i).state != ConnectionState::Connecting {
                continue;
            }
            self.states.handshaking(i);
            let corr = self.next_correlation_id();
            let step = self.handshake.start(self.ids[i], corr);
            self.handshake_step(i, step, corr, now, now);
        }
        self.scratch_channels = chans;
    }

    /// Applies the hook's step. `sent` is when the request this step answers was staged: a
    /// session the step completes is counted from then, an instant no later than the broker's
    /// start of it (however long the answer then waited to be handled).
    fn handshake_step(
        &mut self,
        i: usize,
        step: HandshakeStep,
        corr: i32,
        now: Instant,
        sent: Instant,
    ) {
        match step {
            HandshakeStep::Done => {
                let node = self.ids[i];
                let lifetime = self.handshake.session_lifetime(node);
                if self.states.get(i).reauth == Reauth::Running {
                    self.metrics[i].reauthentications += 1;
                    log::info!(
                        "{node}: re-authenticated on the same connection (next session: {})",
                        lifetime.map_or("unlimited".to_owned(), |l| format!("{l:?}"))
                    );
                } else {
                    self.states.ready(i, self.rng.as_mut());
                    self.metrics[i].connections_created += 1;
                    self.metrics[i].authentication_failure = None;
                    log::debug!("{node}: ready");
                }
                self.states
                    .session_started(i, lifetime, sent, self.rng.as_mut());
            }
            HandshakeStep::Send(frame) => {
                self.requests[i].mixed_deadlines = true;
                let entry = InFlight {
                    correlation_id: corr,
                    expect_response: true,
                    internal: true,
                    created: now,
                    deadline: self
                        .states
                        .get(i)
                        .setup_deadline
                        .unwrap_or(now + self.config.request_timeout),
                    tag: 0,
                    callback: None,
                };
                self.stage(i, entry, frame);
            }
            HandshakeStep::Fail(why) => {
                log::warn!("{}: handshake failed: {why}", self.ids[i]);
                self.close_node(i, DisconnectCause::HandshakeFailed, None, now);
            }
        }
    }

    /// KIP-368, in band: a Ready connection past its re-authentication point stops taking new
    /// requests; once nothing of the caller's is in flight on it, the hook's re-authentication
    /// runs on the same connection (its requests are internal, as during the first handshake, and
    /// bounded by the request timeout). Sessions are counted from when the exchange's last
    /// request was staged, never later than the broker counts them. The client does not close a
    /// connection whose session ended: requests in flight were sent within it, and the broker
    /// enforces the end (it closes a connection that sends anything but SaslHandshake or
    /// SaslAuthenticate after it).
    fn handle_reauthentication(&mut self, now: Instant) {
        for i in 0..self.ids.len() {
            let n = self.states.get(i);
            if n.state != ConnectionState::Ready
                || (n.reauth == Reauth::Idle && n.reauth_at.is_none())
                || n.reauth == Reauth::Running
            {
                continue;
            }
            if !self.states.reauth_pending(i, now) || !self.requests[i].in_flight.is_empty() {
                continue;
            }
            self.states.get_mut(i).reauth = Reauth::Running;
            log::debug!("{}: re-authenticating", self.ids[i]);
            let corr = self.next_correlation_id();
            let step = self.handshake.reauthenticate(self.ids[i], corr);
            self.handshake_step(i, step, corr, now, now);
        }
    }

    fn handle_completed_sends(&mut self, now: Instant) {
        let count = self.transport.completed_sends().len();
        // Sends complete in runs per channel: each run's node is looked up once, and while every
        // unsent entry of the node expects a response the run only moves its `sent` boundary.
        let mut k = 0;
        while k < count {
            let sends = self.transport.completed_sends();
            let ch = sends[k].channel;
            let run = 1 + sends[k + 1..count]
                .iter()
                .take_while(|s| s.channel == ch)
                .count();
            k += run;
            let Some(i) = self.node_of(ch) else { continue };
            let r = &mut self.requests[i];
            if r.no_response == 0 {
                r.sent = (r.sent + run).min(r.in_flight.len());
                continue;
            }
            for _ in 0..run {
                let r = &mut self.requests[i];
                let idx = r.sent;
                let Some(entry) = r.in_flight.get(idx) else {
                    continue;
                };
                if entry.expect_response {
                    r.sent += 1;
                } else if let Some(entry) = r.in_flight.remove(idx) {
                    r.no_response -= 1;
                    if r.unanswered.len() == UNANSWERED_MEMORY {
                        r.unanswered.pop_front();
                    }
                    r.unanswered.push_back(entry.correlation_id);
                    let node = self.ids[i];
                    self.finish(node, i, entry, Outcome::Sent, Some(now));
                }
            }
        }
    }

    fn handle_receives(&mut self, now: Instant) {
        let mut receives = std::mem::take(&mut self.receives);
        self.transport.swap_completed_receives(&mut receives);
        // Receives come in runs per channel: its node is looked up once per run, and looked up
        // again after anything that may close a channel.
        let mut last: Option<(ChannelId, usize)> = None;
        for rec in receives.drain(..) {
            let i = match last {
                Some((c, i)) if c == rec.channel => i,
                _ => {
                    let Some(i) = self.node_of(rec.channel) else {
                        continue;
                    };
                    last = Some((rec.channel, i));
                    i
                }
            };
            if !self.receive_one(i, rec.frame, now) {
                last = None;
            }
        }
        self.receives = receives;
    }

    /// Settles one response `frame` received on node `i`'s channel. Returns `false` when the
    /// node's channel may have changed (closed on a mismatch, or a handshake step taken): look
    /// the node up again for the next frame.
    #[inline(always)]
    fn receive_one(&mut self, i: usize, frame: Bytes, now: Instant) -> bool {
        let actual = match self.correlation_reader {
            None => kafka_correlation_id(&frame),
            Some(read) => read(&frame),
        };
        if self.requests[i].take_unanswered(actual) {
            log::debug!(
                "{}: dropping a response to no-response request {actual:?}",
                self.ids[i]
            );
            return true;
        }
        let r = &self.requests[i];
        let pos = match self.config.response_order {
            ResponseOrder::Ordered => match r.in_flight.front() {
                Some(e) if r.sent > 0 && Some(e.correlation_id) == actual => Some(0),
                front => {
                    let expected = front.map_or(-1, |e| e.correlation_id);
                    log::warn!(
                        "{}: correlation id mismatch: expected {expected}, got {actual:?}; closing",
                        self.ids[i]
                    );
                    self.close_node(
                        i,
                        DisconnectCause::CorrelationMismatch { expected, actual },
                        None,
                        now,
                    );
                    return false;
                }
            },
            ResponseOrder::Unordered => {
                let found = r
                    .in_flight
                    .iter()
                    .take(r.sent)
                    .position(|e| Some(e.correlation_id) == actual);
                if found.is_none() {
                    log::warn!(
                        "{}: dropping response with unknown correlation id {actual:?}",
                        self.ids[i]
                    );
                    self.metrics[i].unknown_correlation_ids += 1;
                }
                found
            }
        };
        let Some(pos) = pos else { return true };
        let r = &mut self.requests[i];
        // Ordered mode always takes the oldest: `pop_front` is O(1), `remove(0)` shifts.
        let taken = if pos == 0 {
            r.in_flight.pop_front()
        } else {
            r.in_flight.remove(pos)
        };
        let Some(entry) = taken else {
            return true;
        };
        r.sent -= 1;
        let node = self.ids[i];
        if entry.internal {
            let corr = self.next_correlation_id();
            let step = self.handshake.on_response(node, frame, corr);
            self.handshake_step(i, step, corr, now, entry.created);
            false
        } else {
            self.finish_response(node, i, entry, frame, now);
            true
        }
    }

    /// [`handle_receives`](Self::handle_receives) with borrowed responses: a caller's response
    /// that matches its request is handed to `f` where it lies in the transport's read buffer.
    /// Anything else (a handshake response, a request with a callback, a response to drop, a
    /// mismatch) is copied out and settled by [`receive_one`](Self::receive_one), its
    /// completions handed to `f` before the next frame's.
    fn handle_receives_borrowed(&mut self, now: Instant, f: &mut impl FnMut(Completion<'_>)) {
        // Position: run `k`, byte `off` of it.
        let mut k = 0;
        let mut off = 0;
        while let Some((ch, run)) = self.transport.received_run(k) {
            let Some(i) = self.node_of(ch) else {
                k += 1;
                off = 0;
                continue;
            };
            let node = self.ids[i];
            let mut rest = run.get(off..).unwrap_or_default();
            let mut slow = None;
            let ordered = self.config.response_order == ResponseOrder::Ordered;
            let reader = self.correlation_reader;
            let memo = &mut self.latency_memo;
            let r = &mut self.requests[i];
            let m = &mut self.metrics[i];
            while let Some((frame, next)) = split_frame(rest) {
                let actual = match reader {
                    None => kafka_correlation_id(frame),
                    Some(read) => read(frame),
                };
                // A response to a remembered no-response request is dropped by the slow path.
                let dropped =
                    !r.unanswered.is_empty() && actual.is_some_and(|a| r.unanswered.contains(&a));
                let plain = |e: &InFlight| {
                    Some(e.correlation_id) == actual && !e.internal && e.callback.is_none()
                };
                let taken = if dropped || r.sent == 0 {
                    None
                } else if ordered {
                    // The oldest request's answer, as ordered mode requires.
                    match r.in_flight.front() {
                        Some(e) if plain(e) => r.in_flight.pop_front(),
                        _ => None,
                    }
                } else {
                    match r.in_flight.iter().take(r.sent).position(plain) {
                        Some(0) => r.in_flight.pop_front(),
                        Some(p) => r.in_flight.remove(p),
                        None => None,
                    }
                };
                let Some(entry) = taken else {
                    slow = Some(Bytes::copy_from_slice(frame));
                    off = run.len() - next.len();
                    break;
                };
                r.sent -= 1;
                let latency = match *memo {
                    (sent, at, l) if sent == entry.created && at == now => l,
                    _ => {
                        let l = now.saturating_duration_since(entry.created);
                        *memo = (entry.created, now, l);
                        l
                    }
                };
                m.bytes_received += frame.len() as u64 + 4;
                m.responses += 1;
                m.record_latency(latency);
                f(Completion {
                    node,
                    correlation_id: entry.correlation_id,
                    tag: entry.tag,
                    latency,
                    outcome: OutcomeRef::Response(frame),
                });
                rest = next;
            }
            match slow {
                None => {
                    k += 1;
                    off = 0;
                }
                Some(frame) => {
                    self.receive_one(i, frame, now);
                    self.flush_completed(f);
                }
            }
        }
    }

    fn handle_disconnected(&mut self, now: Instant) {
        let count = self.transport.disconnected().len();
        for k in 0..count {
            let d = self.transport.disconnected()[k];
            let Some(i) = self.node_of(d.channel) else {
                continue;
            };
            // The channel is already gone: forget it before closing so we do not close it twice.
            self.channel_nodes.remove(d.channel);
            self.states.get_mut(i).channel = None;
            self.close_node(i, DisconnectCause::Transport(d.reason), None, now);
        }
    }

    fn handle_timeouts(&mut self, now: Instant) {
        for i in 0..self.requests.len() {
            let state = self.states.get(i).state;
            if state.is_setting_up() {
                if self.states.get(i).setup_deadline.is_some_and(|d| d <= now) {
                    log::warn!(
                        "{}: connection setup timed out; aborting the attempt",
                        self.ids[i]
                    );
                    self.close_node(i, DisconnectCause::SetupTimeout, None, now);
                }
                continue;
            }
            let r = &self.requests[i];
            if r.in_flight_expired(now) {
                log::warn!("{}: request timed out; closing the connection", self.ids[i]);
                self.close_node(i, DisconnectCause::RequestTimeout, Some(now), now);
                continue;
            }
            // Waiting requests past their deadline time out on their own.
            if r.waiting_expired(now) {
                let node = self.ids[i];
                let mut k = 0;
                while k < self.requests[i].waiting.len() {
                    if self.requests[i].waiting[k].0.deadline <= now {
                        if let Some((e, _)) = self.requests[i].waiting.remove(k) {
                            self.finish(node, i, e, Outcome::TimedOut, Some(now));
                        }
                    } else {
                        k += 1;
                    }
                }
            }
        }
    }
}
