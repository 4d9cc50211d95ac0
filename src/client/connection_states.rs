//! Per-node connection states, reconnect backoff and connection-setup timeouts: Kafka's
//! `ClusterConnectionStates`, sans IO. Every method takes `now`; nothing here touches a socket, so
//! it runs on simulated time in tests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::backoff::{ExponentialBackoff, JitterSource};
use super::config::ClientConfig;
use crate::net::ChannelId;

/// The connection state of one node.
///
/// `Disconnected → Connecting → Handshaking → Ready`, back to `Disconnected` on any failure, or to
/// `HandshakeFailed` when the handshake hook rejects the peer. `HandshakeFailed` behaves like
/// `Disconnected` for reconnecting (after the backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// No connection; a new attempt is allowed once the reconnect backoff has elapsed.
    Disconnected,
    /// TCP connect in progress.
    Connecting,
    /// Connected; the layer above's handshake (ApiVersions, TLS, SASL) is running.
    Handshaking,
    /// Requests may be sent.
    Ready,
    /// The last handshake was rejected.
    HandshakeFailed,
}

impl ConnectionState {
    /// `Disconnected` or `HandshakeFailed`.
    pub fn is_disconnected(self) -> bool {
        matches!(
            self,
            ConnectionState::Disconnected | ConnectionState::HandshakeFailed
        )
    }

    /// `Connecting` or `Handshaking`: an attempt is in progress, under the setup timeout.
    pub fn is_setting_up(self) -> bool {
        matches!(
            self,
            ConnectionState::Connecting | ConnectionState::Handshaking
        )
    }
}

/// Where a Ready connection stands in renewing its authenticated session (KIP-368).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Reauth {
    /// Nothing to do before `reauth_at` (if any).
    #[default]
    Idle,
    /// Past `reauth_at`: no new request is staged; re-authentication starts once nothing of the
    /// caller's is in flight.
    Due,
    /// The re-authentication exchange is on the wire.
    Running,
}

/// Everything the client tracks about one node's connection.
#[derive(Debug, Clone)]
pub struct NodeConnection {
    /// Host to resolve.
    pub(crate) host: String,
    /// Port.
    pub(crate) port: u16,
    /// Current state.
    pub(crate) state: ConnectionState,
    /// The channel of the current attempt or connection.
    pub(crate) channel: Option<ChannelId>,
    /// Resolved addresses, tried round robin; emptied to force a re-resolve.
    pub(crate) addresses: Vec<SocketAddr>,
    /// Index of the next address to try.
    pub(crate) next_address: usize,
    /// The address of the current attempt.
    pub(crate) current_address: Option<SocketAddr>,
    /// Consecutive failures since the node was last Ready (KAFKA-13879: reset only at Ready).
    pub(crate) failures: u32,
    /// Consecutive failed setup attempts, for the growing setup timeout.
    pub(crate) setup_failures: u32,
    /// When the last attempt started or the last disconnect happened.
    pub(crate) last_attempt: Option<Instant>,
    /// The current reconnect backoff, counted from `last_attempt`.
    pub(crate) reconnect_backoff: Duration,
    /// The current setup timeout.
    pub(crate) setup_timeout: Duration,
    /// Deadline of the attempt in progress.
    pub(crate) setup_deadline: Option<Instant>,
    /// When the Ready connection's session is to be re-authenticated (KIP-368).
    pub(crate) reauth_at: Option<Instant>,
    /// Re-authentication progress.
    pub(crate) reauth: Reauth,
}

impl NodeConnection {
    /// The host to resolve.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The channel of the current attempt or connection.
    pub fn channel(&self) -> Option<ChannelId> {
        self.channel
    }

    /// The address of the current attempt.
    pub fn current_address(&self) -> Option<SocketAddr> {
        self.current_address
    }

    /// Consecutive failures since the node was last Ready.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The current reconnect backoff, counted from the last attempt or disconnect.
    pub fn reconnect_backoff(&self) -> Duration {
        self.reconnect_backoff
    }
}

/// The connection states of every node, with their backoffs.
#[derive(Debug)]
pub struct ClusterConnectionStates {
    reconnect: ExponentialBackoff,
    setup: ExponentialBackoff,
    nodes: Vec<NodeConnection>,
}

impl ClusterConnectionStates {
    /// States with backoffs from `config`.
    pub fn new(config: &ClientConfig) -> Self {
        ClusterConnectionStates {
            reconnect: ExponentialBackoff::new(
                config.reconnect_backoff,
                config.reconnect_backoff_max,
                0.2,
            ),
            setup: ExponentialBackoff::new(
                config.connection_setup_timeout,
                config.connection_setup_timeout_max,
                0.2,
            ),
            nodes: Vec::new(),
        }
    }

    /// Adds a node (by index; the caller keeps the id ↔ index map) and returns its index.
    pub fn add(&mut self, host: String, port: u16, rng: &mut dyn JitterSource) -> usize {
        let setup_timeout = self.setup.backoff(0, rng);
        self.nodes.push(NodeConnection {
            host,
            port,
            state: ConnectionState::Disconnected,
            channel: None,
            addresses: Vec::new(),
            next_address: 0,
            current_address: None,
            failures: 0,
            setup_failures: 0,
            last_attempt: None,
            reconnect_backoff: Duration::ZERO,
            setup_timeout,
            setup_deadline: None,
            reauth_at: None,
            reauth: Reauth::Idle,
        });
        self.nodes.len() - 1
    }

    /// The node at `index`.
    pub fn get(&self, index: usize) -> &NodeConnection {
        &self.nodes[index]
    }

    /// The node at `index`, mutably.
    pub fn get_mut(&mut self, index: usize) -> &mut NodeConnection {
        &mut self.nodes[index]
    }

    /// Removes the node at `index`; the nodes after it move down by one index.
    pub fn remove(&mut self, index: usize) -> NodeConnection {
        self.nodes.remove(index)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether a new connection attempt is allowed now: disconnected and the backoff elapsed.
    pub fn can_connect(&self, index: usize, now: Instant) -> bool {
        let n = &self.nodes[index];
        n.state.is_disconnected()
            && n.last_attempt
                .is_none_or(|t| now.saturating_duration_since(t) >= n.reconnect_backoff)
    }

    /// How long until a connection attempt is allowed: the rest of the backoff when disconnected,
    /// zero when ready, `Duration::MAX` while an attempt is in progress (its outcome wakes the
    /// caller).
    pub fn connection_delay(&self, index: usize, now: Instant) -> Duration {
        let n = &self.nodes[index];
        match n.state {
            s if s.is_disconnected() => n.last_attempt.map_or(Duration::ZERO, |t| {
                n.reconnect_backoff
                    .saturating_sub(now.saturating_duration_since(t))
            }),
            ConnectionState::Ready => Duration::ZERO,
            _ => Duration::MAX,
        }
    }

    /// Records the start of an attempt on `channel` to `address`.
    pub fn connecting(
        &mut self,
        index: usize,
        channel: ChannelId,
        address: SocketAddr,
        now: Instant,
    ) {
        let n = &mut self.nodes[index];
        n.state = ConnectionState::Connecting;
        n.channel = Some(channel);
        n.current_address = Some(address);
        n.last_attempt = Some(now);
        n.setup_deadline = Some(now + n.setup_timeout);
    }

    /// The TCP connection is up; the handshake starts (still under the setup timeout).
    pub fn handshaking(&mut self, index: usize) {
        self.nodes[index].state = ConnectionState::Handshaking;
    }

    /// The node is Ready: failure counts, reconnect backoff and setup timeout reset.
    pub fn ready(&mut self, index: usize, rng: &mut dyn JitterSource) {
        let setup_timeout = self.setup.backoff(0, rng);
        let n = &mut self.nodes[index];
        n.state = ConnectionState::Ready;
        n.failures = 0;
        n.setup_failures = 0;
        n.reconnect_backoff = Duration::ZERO;
        n.setup_timeout = setup_timeout;
        n.setup_deadline = None;
    }

    /// The attempt or connection ended. The failure count grows and the next backoff is drawn;
    /// an attempt that never reached Ready also grows the setup timeout. An established connection
    /// that drops clears the address list, so the next attempt re-resolves.
    pub fn disconnected(
        &mut self,
        index: usize,
        handshake_failed: bool,
        now: Instant,
        rng: &mut dyn JitterSource,
    ) {
        let reconnect = self.reconnect.backoff(self.nodes[index].failures, rng);
        let n = &mut self.nodes[index];
        let was = n.state;
        if was.is_setting_up() {
            n.setup_failures = n.setup_failures.saturating_add(1);
        }
        let setup_failures = n.setup_failures;
        n.failures = n.failures.saturating_add(1);
        n.reconnect_backoff = reconnect;
        n.last_attempt = Some(now);
        n.channel = None;
        n.setup_deadline = None;
        n.reauth_at = None;
        n.reauth = Reauth::Idle;
        n.state = if handshake_failed {
            ConnectionState::HandshakeFailed
        } else {
            ConnectionState::Disconnected
        };
        if was == ConnectionState::Ready || was == ConnectionState::Handshaking {
            // KAFKA-12193: after an established connection drops, resolve again.
            n.addresses.clear();
            n.next_address = 0;
        }
        if was.is_setting_up() {
            let t = self.setup.backoff(setup_failures, rng);
            self.nodes[index].setup_timeout = t;
        }
    }

    /// A connect attempt failed before a channel existed (resolution or socket error).
    pub fn attempt_failed(&mut self, index: usize, now: Instant, rng: &mut dyn JitterSource) {
        self.nodes[index].state = ConnectionState::Connecting;
        self.disconnected(index, false, now, rng);
    }

    /// The (re-)authenticated session of the Ready node at `index` may last `lifetime` from
    /// `now`: re-authenticate at a uniformly drawn point between 85 % and 95 % of it (Kafka's
    /// client: a margin for latency and clock drift, and jitter so that connections authenticated
    /// together do not renew together); `None`: the session never ends.
    pub(crate) fn session_started(
        &mut self,
        index: usize,
        lifetime: Option<Duration>,
        now: Instant,
        rng: &mut dyn JitterSource,
    ) {
        let n = &mut self.nodes[index];
        n.reauth = Reauth::Idle;
        n.reauth_at = lifetime.filter(|l| !l.is_zero()).map(|l| {
            let share = 0.85 + 0.10 * rng.next_f64().clamp(0.0, 1.0);
            now + l.mul_f64(share)
        });
    }

    /// The earliest re-authentication to start among Ready nodes (KIP-368).
    pub(crate) fn next_session_deadline(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .filter(|n| n.state == ConnectionState::Ready && n.reauth == Reauth::Idle)
            .filter_map(|n| n.reauth_at)
            .min()
    }

    /// Marks the Ready node at `index` due for re-authentication once its point has passed;
    /// returns whether it is due or re-authenticating (no new request may be staged).
    pub(crate) fn reauth_pending(&mut self, index: usize, now: Instant) -> bool {
        let n = &mut self.nodes[index];
        if n.reauth == Reauth::Idle && n.reauth_at.is_some_and(|t| t <= now) {
            n.reauth = Reauth::Due;
        }
        n.reauth != Reauth::Idle
    }

    /// The earliest setup deadline among nodes being set up.
    pub fn next_setup_deadline(&self) -> Option<Instant> {
        self.nodes.iter().filter_map(|n| n.setup_deadline).min()
    }

    /// Iterates over the nodes.
    pub fn iter(&self) -> impl Iterator<Item = &NodeConnection> {
        self.nodes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl JitterSource for Fixed {
        fn next_f64(&mut self) -> f64 {
            self.0
        }
    }

    fn ch(i: u32) -> ChannelId {
        ChannelId {
            index: i,
            generation: 0,
        }
    }

    #[test]
    fn backoff_grows_per_failure_and_resets_only_at_ready() {
        let mut rng = Fixed(0.5);
        let mut s = ClusterConnectionStates::new(&ClientConfig::default());
        let i = s.add("h".into(), 1, &mut rng);
        let t0 = Instant::now();
        let addr = "127.0.0.1:1".parse().unwrap();
        assert!(s.can_connect(i, t0));
        let mut t = t0;
        for (k, expect_ms) in [50u64, 100, 200, 400, 800, 1000, 1000].iter().enumerate() {
            s.connecting(i, ch(k as u32), addr, t);
            assert!(!s.can_connect(i, t));
            s.disconnected(i, false, t, &mut rng);
            let b = Duration::from_millis(*expect_ms);
            assert_eq!(s.connection_delay(i, t), b);
            assert!(!s.can_connect(i, t + b - Duration::from_millis(1)));
            assert!(s.can_connect(i, t + b));
            t += b;
        }
        // Handshaking is not Ready: a drop there keeps growing the count (KAFKA-13879).
        s.connecting(i, ch(9), addr, t);
        s.handshaking(i);
        s.disconnected(i, false, t, &mut rng);
        assert_eq!(s.get(i).failures, 8);
        // Ready resets.
        s.connecting(i, ch(10), addr, t + Duration::from_secs(2));
        s.ready(i, &mut rng);
        assert_eq!(s.get(i).failures, 0);
        s.disconnected(i, false, t + Duration::from_secs(3), &mut rng);
        assert_eq!(s.get(i).reconnect_backoff, Duration::from_millis(50));
    }

    #[test]
    fn setup_timeout_grows_with_jitter_up_to_max() {
        let mut rng = Fixed(0.5);
        let mut s = ClusterConnectionStates::new(&ClientConfig::default());
        let i = s.add("h".into(), 1, &mut rng);
        let addr = "127.0.0.1:1".parse().unwrap();
        let t0 = Instant::now();
        let mut seen = Vec::new();
        for k in 0..4 {
            s.connecting(i, ch(k), addr, t0);
            seen.push(s.get(i).setup_deadline.unwrap() - t0);
            s.disconnected(i, false, t0, &mut rng);
        }
        let secs: Vec<u64> = seen.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![10, 20, 30, 30]);
        s.connecting(i, ch(9), addr, t0);
        s.ready(i, &mut rng);
        assert_eq!(s.get(i).setup_timeout, Duration::from_secs(10));
    }

    #[test]
    fn established_drop_clears_addresses_but_setup_failure_keeps_them() {
        let mut rng = Fixed(0.5);
        let mut s = ClusterConnectionStates::new(&ClientConfig::default());
        let i = s.add("h".into(), 1, &mut rng);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        s.get_mut(i).addresses = vec![addr, "127.0.0.2:1".parse().unwrap()];
        s.get_mut(i).next_address = 1;
        let t0 = Instant::now();
        s.connecting(i, ch(0), addr, t0);
        s.disconnected(i, false, t0, &mut rng);
        assert_eq!(s.get(i).addresses.len(), 2);
        s.connecting(i, ch(1), addr, t0);
        s.ready(i, &mut rng);
        s.disconnected(i, false, t0, &mut rng);
        assert!(s.get(i).addresses.is_empty());
        assert_eq!(s.get(i).next_address, 0);
    }
}
