//! [`GroupClient`]: named connection groups over a [`NetworkClient`], with heartbeats and a paced
//! reconnect manager.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use super::config::{GroupConfig, Selection};
use super::heartbeat::Heartbeat;
use crate::client::{
    ClientRequest, ClientResponse, ConnectionState, DisconnectCause, Handshake, NetworkClient,
    NodeId, Outcome,
};
use crate::net::Transport;

/// The tag heartbeat requests carry, so the completion path looks a completion up only when it
/// may be a heartbeat.
const HEARTBEAT_TAG: u64 = u64::MAX;

/// Where a member stands, as [`GroupError::NoAvailableConnection`] and
/// [`GroupClient::member_states`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Ready, heartbeats answered: requests go here.
    Live,
    /// Ready, but its latest heartbeat went unanswered: chosen only when no member is `Live`.
    Suspect,
    /// A connection attempt is in progress.
    Connecting,
    /// Closed; the reconnect manager will retry it after its backoff.
    Disconnected,
    /// Closed after `reconnect.max.attempts` failed attempts; left alone until the next
    /// `connect` of its group and address.
    Abandoned,
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Live => "live",
            MemberState::Suspect => "suspect",
            MemberState::Connecting => "connecting",
            MemberState::Disconnected => "disconnected",
            MemberState::Abandoned => "abandoned",
        })
    }
}

/// Why a member went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// `heartbeat.max.failures` consecutive heartbeats failed; the group closed it.
    HeartbeatFailed,
    /// The client closed it with requests on it, for this cause.
    Disconnected(DisconnectCause),
    /// The connection closed with no request on it (peer close, reset, idle expiry).
    ConnectionLost,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::HeartbeatFailed => write!(f, "heartbeat failed"),
            DownReason::Disconnected(c) => write!(f, "disconnected: {c}"),
            DownReason::ConnectionLost => write!(f, "connection lost"),
        }
    }
}

/// What happened in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEventKind {
    /// A member's connection became ready.
    MemberUp {
        /// The member's client node.
        node: NodeId,
        /// Its address.
        address: String,
    },
    /// A ready member's connection closed.
    MemberDown {
        /// The member's client node.
        node: NodeId,
        /// Its address.
        address: String,
        /// Why.
        reason: DownReason,
    },
    /// A member reached `reconnect.max.attempts` failed attempts and is no longer retried.
    MemberAbandoned {
        /// The member's client node.
        node: NodeId,
        /// Its address.
        address: String,
        /// Failed attempts counted.
        attempts: u32,
    },
    /// The group's last live member went down.
    GroupEmpty,
    /// A member came up in a group that was empty.
    GroupRestored {
        /// How long the group was empty.
        after: Duration,
    },
    /// Every member is live again after a member went down.
    GroupHealed {
        /// Since the first member went down.
        after: Duration,
    },
}

/// One event of one group, at simulated or real time `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    /// The group's name.
    pub group: String,
    /// When it was observed (the `now` of the call that observed it).
    pub at: Instant,
    /// What happened.
    pub kind: GroupEventKind,
}

/// Counters and gauges of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupMetrics {
    /// Members (every address).
    pub members: usize,
    /// Members whose connection is ready.
    pub live: usize,
    /// Heartbeat requests sent.
    pub heartbeats_sent: u64,
    /// Heartbeats unanswered within `heartbeat.timeout.ms` or answered wrongly.
    pub heartbeats_failed: u64,
    /// Members closed for `heartbeat.max.failures` consecutive failures.
    pub heartbeat_closes: u64,
    /// Connection attempts started by the reconnect manager (first connects included).
    pub connect_attempts: u64,
    /// Attempts that failed, at once or later.
    pub connect_failures: u64,
    /// Members that came back up after having been up before.
    pub reconnects: u64,
    /// Members abandoned after `reconnect.max.attempts`.
    pub abandoned: u64,
    /// Times the group went from degraded back to every member live.
    pub heals: u64,
    /// The latest time to heal (first member down to every member live).
    pub last_time_to_heal: Option<Duration>,
    /// The longest time to heal.
    pub max_time_to_heal: Option<Duration>,
}

/// What went wrong in a group operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum GroupError {
    /// No member of the group is ready: the request was refused at once and never queued.
    NoAvailableConnection {
        /// The group.
        group: String,
        /// Every member's state.
        states: Vec<MemberState>,
    },
    /// No group of that name exists.
    UnknownGroup(String),
    /// `who` does not (or no longer) refer to the group: an unknown referrer or a double release.
    NotAReferrer {
        /// The group.
        group: String,
        /// The referrer named.
        who: String,
    },
    /// The address is not `host:port`.
    InvalidAddress(io::Error),
    /// The node id space above `mqnet.group.first.node.id` is used up.
    NodeIdsExhausted,
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupError::NoAvailableConnection { group, states } => {
                write!(
                    f,
                    "no available connection in group {group} ({} members: states",
                    states.len()
                )?;
                for (k, s) in states.iter().enumerate() {
                    write!(f, "{}{s}", if k == 0 { " " } else { ", " })?;
                }
                write!(f, ")")
            }
            GroupError::UnknownGroup(g) => write!(f, "unknown group {g}"),
            GroupError::NotAReferrer { group, who } => {
                write!(f, "{who} is not a referrer of group {group}")
            }
            GroupError::InvalidAddress(e) => write!(f, "invalid address: {e}"),
            GroupError::NodeIdsExhausted => write!(f, "no node ids left for group members"),
        }
    }
}

impl std::error::Error for GroupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GroupError::InvalidAddress(e) => Some(e),
            _ => None,
        }
    }
}

/// One connection of a group: a node of the client.
#[derive(Debug)]
struct Member {
    node: NodeId,
    address: String,
    /// The client state seen at the last observation.
    seen: ConnectionState,
    abandoned: bool,
    ever_up: bool,
    /// Consecutive failed attempts since the member was last ready.
    attempts: u32,
    /// The last response, ready transition or heartbeat send.
    last_activity: Instant,
    /// Deadline of the newest unanswered heartbeat.
    heartbeat_deadline: Option<Instant>,
    heartbeat_failures: u32,
    /// Set when the group closes the member itself.
    closing: Option<DownReason>,
    /// The cause of the latest `Disconnected` completion on this member.
    last_cause: Option<DisconnectCause>,
    /// Its pending attempt was aborted to free a slot for another group: not a failure.
    preempted: bool,
}

impl Member {
    fn state(&self, client_state: ConnectionState) -> MemberState {
        if self.abandoned {
            return MemberState::Abandoned;
        }
        match client_state {
            ConnectionState::Ready if self.heartbeat_failures > 0 => MemberState::Suspect,
            ConnectionState::Ready => MemberState::Live,
            s if s.is_setting_up() => MemberState::Connecting,
            _ => MemberState::Disconnected,
        }
    }
}

#[derive(Debug)]
struct Group {
    name: String,
    members: Vec<Member>,
    referrers: Vec<String>,
    cursor: usize,
    reconnect_cursor: usize,
    live: usize,
    pending: usize,
    empty_since: Option<Instant>,
    degraded_since: Option<Instant>,
    metrics: GroupMetrics,
}

/// Named groups of connections over a [`NetworkClient`], after metaq/gecko's connection groups,
/// with heartbeats and a reconnect manager.
///
/// Each member of a group is one node of the client (so it has its own connection state,
/// in-flight deque and backoff); a group may span several addresses. The client's own rules hold
/// for every request (one completion each, timeouts, correlation checks); this layer adds:
///
/// - **Idempotent connect**: [`connect`](Self::connect) brings the group's member count for an
///   address up to `n` and never beyond, however often it is called, whatever the members'
///   states.
/// - **Selection**: [`send`](Self::send) picks the next live member round robin (or the least
///   loaded, per `group.selection`), skipping members that are not ready or whose heartbeat is
///   overdue; with no ready member it fails at once with
///   [`GroupError::NoAvailableConnection`], never queueing behind a dead socket.
/// - **Sharing**: a group has a set of referrers; [`release`](Self::release) closes it only when
///   the last one leaves. A double release or unknown referrer is an error and changes nothing.
/// - **Heartbeats**: a ready member that has received nothing for `heartbeat.interval.ms` sends
///   a [`Heartbeat`] request; each one unanswered after `heartbeat.timeout.ms` is a failure;
///   `heartbeat.max.failures` consecutive failures close the member
///   ([`DownReason::HeartbeatFailed`]). Any response on the member resets the count, so a member
///   carrying traffic sends none.
/// - **Reconnect manager**: a closed member is retried once its client backoff (exponential,
///   jittered by the client's [`JitterSource`](crate::client::JitterSource)) has elapsed, with at
///   most `reconnect.max.concurrent` attempts pending at once over all groups and at most
///   `max(1, that / groups)` per group, granted round robin across groups. A dead address thus
///   holds only its own group's share and never delays another group's healing.
///   Every failed attempt counts toward `reconnect.max.attempts`, whether the connect failed at
///   once or later; only a ready connection resets the count. An attempt that exceeds the
///   client's setup timeout is aborted and its socket closed before the next one starts: a member
///   never has two sockets.
///
/// Sans-IO like the client: every method takes the caller's `now`; [`poll_io`](Self::poll_io) does the
/// I/O through the client's transport.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use mqnet::client::{ClientConfig, ClientRequest, NetworkClient, NoHandshake, NodeId, Outcome};
/// use mqnet::group::{GroupClient, GroupConfig, MirrorHeartbeat};
/// use mqnet::net::Transport;
/// use mqnet::sim::{Behaviour, SimNetwork};
///
/// let mut net = SimNetwork::new();
/// net.set_behaviour("127.0.0.1:9000".parse().unwrap(), Behaviour::Echo);
/// let client = NetworkClient::with_transport(net, ClientConfig::default(), NoHandshake);
/// // The simulated echo returns frames byte for byte: MirrorHeartbeat is its heartbeat.
/// let mut groups = GroupClient::new(client, GroupConfig::default(), MirrorHeartbeat);
/// let now = groups.now();
/// groups.connect("orders", "127.0.0.1:9000", 2, "producer-1", now).unwrap();
/// while groups.live_members("orders") < 2 {
///     let now = groups.now();
///     groups.poll_io(Some(Duration::from_millis(1)), now).unwrap();
///     let now = groups.now();
///     groups.handle(now);
/// }
/// let corr = groups.client_mut().next_correlation_id();
/// let mut frame = corr.to_be_bytes().to_vec();
/// frame.extend_from_slice(b"hello");
/// let now = groups.now();
/// let node = groups
///     .send("orders", ClientRequest::new(NodeId(0), corr, Bytes::from(frame)), now)
///     .unwrap();
/// let mut done = Vec::new();
/// while done.is_empty() {
///     let now = groups.now();
///     groups.poll_io(Some(Duration::from_millis(1)), now).unwrap();
///     let now = groups.now();
///     done = groups.handle(now);
/// }
/// assert_eq!(done[0].node, node);
/// assert!(matches!(done[0].outcome, Outcome::Response(_)));
/// // The last referrer leaving closes the group.
/// let now = groups.now();
/// assert!(groups.release("orders", "producer-1", now).unwrap());
/// ```
pub struct GroupClient<T: Transport, H: Handshake, B: Heartbeat> {
    client: NetworkClient<T, H>,
    config: GroupConfig,
    heartbeat: B,
    groups: Vec<Option<Group>>,
    by_name: HashMap<String, usize>,
    /// `owners[node - first_node_id]` = (group slot, member index) of a live group's member.
    owners: Vec<Option<(u32, u32)>>,
    next_node: i32,
    /// Heartbeats in flight: (node, correlation id).
    heartbeats: Vec<(NodeId, i32)>,
    events: Vec<GroupEvent>,
    scratch: Vec<ClientResponse>,
    group_cursor: usize,
}

impl<T: Transport, H: Handshake, B: Heartbeat> GroupClient<T, H, B> {
    /// Groups over `client`, which they own from now on (reach it with
    /// [`client`](Self::client) / [`client_mut`](Self::client_mut)).
    pub fn new(client: NetworkClient<T, H>, config: GroupConfig, heartbeat: B) -> Self {
        let next_node = config.first_node_id.max(0);
        GroupClient {
            client,
            config,
            heartbeat,
            groups: Vec::new(),
            by_name: HashMap::new(),
            owners: Vec::new(),
            next_node,
            heartbeats: Vec::new(),
            events: Vec::new(),
            scratch: Vec::new(),
            group_cursor: 0,
        }
    }

    /// The client.
    pub fn client(&self) -> &NetworkClient<T, H> {
        &self.client
    }

    /// The client, mutably (correlation ids, fault injection in tests). Do not connect or
    /// disconnect group members through it: the group layer paces those.
    pub fn client_mut(&mut self) -> &mut NetworkClient<T, H> {
        &mut self.client
    }

    /// The configuration.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The transport's clock (simulated time under `mqnet::sim::SimNetwork`).
    pub fn now(&self) -> Instant {
        self.client.transport().now()
    }

    // ----- groups --------------------------------------------------------------------------------

    /// Registers `who` as a referrer of `group` and brings the group's members at `address` up to
    /// `n` (creating the group if needed). Idempotent: members that exist, whatever their state,
    /// count, so calling it again never opens more; abandoned members at `address` are revived
    /// first. New members connect through the reconnect manager (paced), starting in this call.
    ///
    /// # Errors
    /// [`GroupError::InvalidAddress`] when `address` is not `host:port` (nothing changes);
    /// [`GroupError::NodeIdsExhausted`] when no node id is left.
    pub fn connect(
        &mut self,
        group: &str,
        address: &str,
        n: usize,
        who: &str,
        now: Instant,
    ) -> Result<(), GroupError> {
        crate::client::split_host_port(address).map_err(GroupError::InvalidAddress)?;
        let slot = match self.by_name.get(group) {
            Some(&s) => s,
            None => {
                let g = Group {
                    name: group.to_string(),
                    members: Vec::new(),
                    referrers: Vec::new(),
                    cursor: 0,
                    reconnect_cursor: 0,
                    live: 0,
                    pending: 0,
                    empty_since: None,
                    degraded_since: None,
                    metrics: GroupMetrics::default(),
                };
                let s = match self.groups.iter().position(Option::is_none) {
                    Some(s) => {
                        self.groups[s] = Some(g);
                        s
                    }
                    None => {
                        self.groups.push(Some(g));
                        self.groups.len() - 1
                    }
                };
                self.by_name.insert(group.to_string(), s);
                s
            }
        };
        let Some(g) = self.groups[slot].as_mut() else {
            return Err(GroupError::UnknownGroup(group.to_string()));
        };
        if !g.referrers.iter().any(|r| r == who) {
            g.referrers.push(who.to_string());
        }
        let mut have = 0;
        for m in g.members.iter_mut().filter(|m| m.address == address) {
            if have < n && m.abandoned {
                m.abandoned = false;
                m.attempts = 0;
            }
            have += 1;
        }
        while have < n {
            let node = NodeId(self.next_node);
            self.next_node = self
                .next_node
                .checked_add(1)
                .ok_or(GroupError::NodeIdsExhausted)?;
            self.client
                .add_node(node, address)
                .map_err(GroupError::InvalidAddress)?;
            let Some(g) = self.groups[slot].as_mut() else {
                break;
            };
            let idx = g.members.len();
            g.members.push(Member {
                node,
                address: address.to_string(),
                seen: ConnectionState::Disconnected,
                abandoned: false,
                ever_up: false,
                attempts: 0,
                last_activity: now,
                heartbeat_deadline: None,
                heartbeat_failures: 0,
                closing: None,
                last_cause: None,
                preempted: false,
            });
            g.metrics.members = g.members.len();
            let k = self.owner_index(node);
            if self.owners.len() <= k {
                self.owners.resize(k + 1, None);
            }
            self.owners[k] = Some((slot as u32, idx as u32));
            have += 1;
        }
        self.reconnect(now);
        Ok(())
    }

    /// `who` stops using `group`. When it was the last referrer, every member is closed (their
    /// requests complete `Disconnected(Local)` in the next poll) and the group is removed;
    /// returns whether that happened.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`], or [`GroupError::NotAReferrer`] when `who` is not a referrer
    /// (never was, or already released): nothing changes.
    pub fn release(&mut self, group: &str, who: &str, now: Instant) -> Result<bool, GroupError> {
        let Some(&slot) = self.by_name.get(group) else {
            return Err(GroupError::UnknownGroup(group.to_string()));
        };
        let Some(g) = self.groups[slot].as_mut() else {
            return Err(GroupError::UnknownGroup(group.to_string()));
        };
        let Some(pos) = g.referrers.iter().position(|r| r == who) else {
            return Err(GroupError::NotAReferrer {
                group: group.to_string(),
                who: who.to_string(),
            });
        };
        g.referrers.swap_remove(pos);
        if !g.referrers.is_empty() {
            return Ok(false);
        }
        let Some(g) = self.groups[slot].take() else {
            return Ok(false);
        };
        self.by_name.remove(group);
        for m in &g.members {
            // Disconnect first so in-flight requests complete `Disconnected(Local)`, then forget
            // the node so a released group leaves nothing behind in the client.
            self.client.disconnect(m.node, now);
            self.client.remove_node(m.node, now);
            let k = self.owner_index(m.node);
            if let Some(o) = self.owners.get_mut(k) {
                *o = None;
            }
        }
        log::debug!("group {group}: released by its last referrer; closed");
        Ok(true)
    }

    /// The group's referrers.
    pub fn referrers(&self, group: &str) -> Option<&[String]> {
        self.group(group).map(|g| g.referrers.as_slice())
    }

    /// The group's member nodes, in creation order.
    pub fn members(&self, group: &str) -> Vec<NodeId> {
        self.group(group)
            .map(|g| g.members.iter().map(|m| m.node).collect())
            .unwrap_or_default()
    }

    /// Every member's state, in creation order.
    pub fn member_states(&self, group: &str) -> Vec<MemberState> {
        self.group(group)
            .map_or_else(Vec::new, |g| self.states_of(g))
    }

    /// Members whose connection is ready (0 for an unknown group).
    pub fn live_members(&self, group: &str) -> usize {
        self.group(group).map_or(0, |g| {
            g.members
                .iter()
                .filter(|m| self.client.connection_state(m.node) == Some(ConnectionState::Ready))
                .count()
        })
    }

    /// The group's metrics (`live` as of the last observation).
    pub fn metrics(&self, group: &str) -> Option<GroupMetrics> {
        self.group(group).map(|g| g.metrics)
    }

    /// The group a node belongs to.
    pub fn group_of(&self, node: NodeId) -> Option<&str> {
        let (slot, _) = self.owner(node)?;
        self.groups[slot].as_ref().map(|g| g.name.as_str())
    }

    /// The group names.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().flatten().map(|g| g.name.as_str())
    }

    /// Takes the events observed so far, oldest first.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, GroupEvent> {
        self.events.drain(..)
    }

    fn group(&self, name: &str) -> Option<&Group> {
        let &slot = self.by_name.get(name)?;
        self.groups[slot].as_ref()
    }

    fn states_of(&self, g: &Group) -> Vec<MemberState> {
        g.members
            .iter()
            .map(|m| {
                m.state(
                    self.client
                        .connection_state(m.node)
                        .unwrap_or(ConnectionState::Disconnected),
                )
            })
            .collect()
    }

    fn owner_index(&self, node: NodeId) -> usize {
        (i64::from(node.0) - i64::from(self.config.first_node_id.max(0))).max(0) as usize
    }

    fn owner(&self, node: NodeId) -> Option<(usize, usize)> {
        if node.0 < self.config.first_node_id {
            return None;
        }
        self.owners
            .get(self.owner_index(node))
            .copied()
            .flatten()
            .map(|(s, i)| (s as usize, i as usize))
    }

    // ----- sending -------------------------------------------------------------------------------

    /// Sends `request` on a member of `group` chosen by the selection policy (its `node` field is
    /// replaced) and returns that member's node; the request then completes exactly once through
    /// [`poll_io`](Self::poll_io), like any client request.
    ///
    /// Members whose connection is ready and whose heartbeats are answered come first, in policy
    /// order, and among them those with an in-flight slot free; a suspect member (heartbeat
    /// overdue) is used only when no other is ready.
    ///
    /// # Errors
    /// [`GroupError::UnknownGroup`]; [`GroupError::NoAvailableConnection`] when no member is
    /// ready. Either way the request is dropped unsent (its callback does not run): it is never
    /// queued behind a dead connection.
    pub fn send(
        &mut self,
        group: &str,
        mut request: ClientRequest,
        now: Instant,
    ) -> Result<NodeId, GroupError> {
        let Some(&slot) = self.by_name.get(group) else {
            return Err(GroupError::UnknownGroup(group.to_string()));
        };
        let Some(g) = self.groups[slot].as_mut() else {
            return Err(GroupError::UnknownGroup(group.to_string()));
        };
        let picked = Self::select(&self.client, &self.config, g);
        match picked {
            Some(idx) => {
                g.cursor = (idx + 1) % g.members.len().max(1);
                let node = g.members[idx].node;
                request.node = node;
                self.client.send(request, now);
                Ok(node)
            }
            None => {
                let states = self.member_states(group);
                Err(GroupError::NoAvailableConnection {
                    group: group.to_string(),
                    states,
                })
            }
        }
    }

    /// The member to send to: a live member with an in-flight slot free (round robin from the
    /// cursor, or the least loaded), else the least loaded ready member of any health.
    fn select(client: &NetworkClient<T, H>, config: &GroupConfig, g: &Group) -> Option<usize> {
        let n = g.members.len();
        let ready = |m: &Member| client.connection_state(m.node) == Some(ConnectionState::Ready);
        let load = |m: &Member| client.in_flight_count(m.node) + client.waiting_count(m.node);
        match config.selection {
            Selection::RoundRobin => {
                for k in 0..n {
                    let idx = (g.cursor + k) % n;
                    let m = &g.members[idx];
                    if m.heartbeat_failures == 0 && client.is_ready(m.node) {
                        return Some(idx);
                    }
                }
            }
            Selection::LeastLoaded => {
                let mut best: Option<(usize, usize)> = None;
                for k in 0..n {
                    let idx = (g.cursor + k) % n;
                    let m = &g.members[idx];
                    if m.heartbeat_failures == 0 && ready(m) {
                        let l = load(m);
                        if best.is_none_or(|(_, b)| l < b) {
                            best = Some((idx, l));
                        }
                    }
                }
                if let Some((idx, _)) = best {
                    return Some(idx);
                }
            }
        }
        let mut best: Option<(usize, (bool, usize))> = None;
        for k in 0..n {
            let idx = (g.cursor + k) % n;
            let m = &g.members[idx];
            if ready(m) {
                let key = (m.heartbeat_failures > 0, load(m));
                if best.is_none_or(|(_, b)| key < b) {
                    best = Some((idx, key));
                }
            }
        }
        best.map(|(idx, _)| idx)
    }

    // ----- polling -------------------------------------------------------------------------------

    /// The earliest instant at which the group layer or the client has work: a heartbeat due or
    /// overdue, a member's backoff ending while a reconnect slot is free, or the client's own
    /// deadlines.
    pub fn poll_deadline(&self, now: Instant) -> Option<Instant> {
        let mut d = self.client.poll_deadline();
        let mut take = |t: Instant| d = Some(d.map_or(t, |x: Instant| x.min(t)));
        let total_pending: usize = self.groups.iter().flatten().map(|g| g.pending).sum();
        let share = self.share();
        let hb_on = !self.config.heartbeat_interval.is_zero();
        for g in self.groups.iter().flatten() {
            let slot_free =
                total_pending < self.config.reconnect_max_concurrent && g.pending < share;
            for m in &g.members {
                if m.abandoned {
                    continue;
                }
                match self.client.connection_state(m.node) {
                    Some(ConnectionState::Ready) if hb_on => match m.heartbeat_deadline {
                        Some(t) => take(t),
                        None => take(m.last_activity + self.config.heartbeat_interval),
                    },
                    Some(s) if s.is_disconnected() && slot_free => {
                        take(now + self.client.connection_delay(m.node, now));
                    }
                    _ => {}
                }
            }
        }
        d
    }

    /// Runs heartbeats and the reconnect manager at `now` and does the client's I/O (waiting at
    /// most `timeout`, never past the next deadline of either layer). Then call
    /// [`handle_into`](Self::handle_into) (or [`handle`](Self::handle)) with the time read after
    /// this returns.
    ///
    /// # Errors
    /// Only a failure of the OS poller.
    pub fn poll_io(&mut self, timeout: Option<Duration>, now: Instant) -> io::Result<()> {
        self.tick(now);
        let mut timeout = timeout;
        if let Some(d) = self.poll_deadline(now) {
            let until = d.saturating_duration_since(now);
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        self.client.poll_io(timeout, now)
    }

    /// Settles at `now` (the caller's time after [`poll_io`](Self::poll_io)) what the last I/O
    /// brought and returns the completed requests (heartbeats are consumed here, never returned).
    pub fn handle(&mut self, now: Instant) -> Vec<ClientResponse> {
        let mut out = Vec::new();
        self.handle_into(now, &mut out);
        out
    }

    /// As [`handle`](Self::handle), appending to `out` (no allocation in steady state).
    pub fn handle_into(&mut self, now: Instant, out: &mut Vec<ClientResponse>) {
        let mut got = std::mem::take(&mut self.scratch);
        got.clear();
        self.client.handle_into(now, &mut got);
        for r in got.drain(..) {
            if self.on_completion(&r, now) {
                out.push(r);
            }
        }
        self.scratch = got;
        self.tick(now);
    }

    /// Updates the member of a completion; returns whether the caller gets it (not a heartbeat).
    fn on_completion(&mut self, r: &ClientResponse, now: Instant) -> bool {
        let heartbeat = r.tag == HEARTBEAT_TAG
            && match self
                .heartbeats
                .iter()
                .position(|&(n, c)| n == r.node && c == r.correlation_id)
            {
                Some(pos) => {
                    self.heartbeats.swap_remove(pos);
                    true
                }
                None => false,
            };
        let ok = match &r.outcome {
            Outcome::Response(body) => !heartbeat || self.heartbeat.check(r.correlation_id, body),
            _ => false,
        };
        let Some((slot, idx)) = self.owner(r.node) else {
            return !heartbeat;
        };
        let Some(g) = self.groups[slot].as_mut() else {
            return !heartbeat;
        };
        let m = &mut g.members[idx];
        match &r.outcome {
            Outcome::Response(_) if ok => {
                m.last_activity = now;
                m.heartbeat_failures = 0;
                m.heartbeat_deadline = None;
            }
            Outcome::Response(_) => {
                // A heartbeat answered wrongly: as good as unanswered.
                log::warn!("group {}: {}: bad heartbeat response", g.name, m.node);
                g.metrics.heartbeats_failed += 1;
                m.heartbeat_failures += 1;
                m.heartbeat_deadline = None;
                if m.heartbeat_failures >= self.config.heartbeat_max_failures {
                    m.closing = Some(DownReason::HeartbeatFailed);
                }
            }
            Outcome::Disconnected(cause) => m.last_cause = Some(*cause),
            _ => {}
        }
        !heartbeat
    }

    /// Observes state changes, runs heartbeats, then grants reconnect slots.
    fn tick(&mut self, now: Instant) {
        self.observe(now);
        self.heartbeats(now);
        self.observe(now);
        self.reconnect(now);
    }

    /// Compares every member's client state with the last one seen and raises events.
    fn observe(&mut self, now: Instant) {
        let max_attempts = self.config.reconnect_max_attempts;
        for g in self.groups.iter_mut().flatten() {
            let mut pending = 0;
            for m in g.members.iter_mut() {
                let cur = self
                    .client
                    .connection_state(m.node)
                    .unwrap_or(ConnectionState::Disconnected);
                if cur.is_setting_up() {
                    pending += 1;
                }
                let prev = m.seen;
                m.seen = cur;
                if prev == cur {
                    continue;
                }
                if cur == ConnectionState::Ready {
                    m.attempts = 0;
                    m.last_activity = now;
                    m.heartbeat_failures = 0;
                    m.heartbeat_deadline = None;
                    m.closing = None;
                    m.last_cause = None;
                    if m.ever_up {
                        g.metrics.reconnects += 1;
                    }
                    m.ever_up = true;
                    g.live += 1;
                    self.events.push(GroupEvent {
                        group: g.name.clone(),
                        at: now,
                        kind: GroupEventKind::MemberUp {
                            node: m.node,
                            address: m.address.clone(),
                        },
                    });
                    if g.live == 1 {
                        if let Some(t) = g.empty_since.take() {
                            self.events.push(GroupEvent {
                                group: g.name.clone(),
                                at: now,
                                kind: GroupEventKind::GroupRestored {
                                    after: now.saturating_duration_since(t),
                                },
                            });
                        }
                    }
                } else if prev == ConnectionState::Ready {
                    let reason = m.closing.take().unwrap_or(match m.last_cause.take() {
                        Some(c) => DownReason::Disconnected(c),
                        None => DownReason::ConnectionLost,
                    });
                    m.heartbeat_failures = 0;
                    m.heartbeat_deadline = None;
                    g.live = g.live.saturating_sub(1);
                    g.degraded_since.get_or_insert(now);
                    log::info!(
                        "group {}: {} at {} down: {reason}",
                        g.name,
                        m.node,
                        m.address
                    );
                    self.events.push(GroupEvent {
                        group: g.name.clone(),
                        at: now,
                        kind: GroupEventKind::MemberDown {
                            node: m.node,
                            address: m.address.clone(),
                            reason,
                        },
                    });
                    if g.live == 0 {
                        g.empty_since = Some(now);
                        self.events.push(GroupEvent {
                            group: g.name.clone(),
                            at: now,
                            kind: GroupEventKind::GroupEmpty,
                        });
                    }
                } else if prev.is_setting_up() && cur.is_disconnected() && m.preempted {
                    m.preempted = false;
                    m.last_cause = None;
                } else if prev.is_setting_up() && cur.is_disconnected() {
                    // An attempt that failed after it started (refused, setup timeout, ...).
                    m.last_cause = None;
                    g.metrics.connect_failures += 1;
                    m.attempts = m.attempts.saturating_add(1);
                    if max_attempts.is_some_and(|max| m.attempts >= max) {
                        m.abandoned = true;
                        g.metrics.abandoned += 1;
                        self.events.push(GroupEvent {
                            group: g.name.clone(),
                            at: now,
                            kind: GroupEventKind::MemberAbandoned {
                                node: m.node,
                                address: m.address.clone(),
                                attempts: m.attempts,
                            },
                        });
                    }
                }
            }
            g.pending = pending;
            g.metrics.live = g.live;
            if g.live == g.members.len() && g.live > 0 {
                if let Some(t) = g.degraded_since.take() {
                    let after = now.saturating_duration_since(t);
                    g.metrics.heals += 1;
                    g.metrics.last_time_to_heal = Some(after);
                    g.metrics.max_time_to_heal =
                        Some(g.metrics.max_time_to_heal.map_or(after, |m| m.max(after)));
                    self.events.push(GroupEvent {
                        group: g.name.clone(),
                        at: now,
                        kind: GroupEventKind::GroupHealed { after },
                    });
                }
            }
        }
    }

    /// Counts overdue heartbeats, closes members past `heartbeat.max.failures`, and sends the
    /// heartbeats that are due.
    fn heartbeats(&mut self, now: Instant) {
        let interval = self.config.heartbeat_interval;
        if interval.is_zero() {
            return;
        }
        let timeout = self.config.heartbeat_timeout;
        let max = self.config.heartbeat_max_failures;
        // Failures come at most one per max(interval, timeout); the client's own deadline for a
        // heartbeat lies a whole cycle beyond the group's verdict on it and its successors, so
        // the group's rule (not the client's request timeout) decides when the member closes.
        let client_timeout = interval.max(timeout) * max.saturating_add(1) + timeout;
        for g in self.groups.iter_mut().flatten() {
            for m in g.members.iter_mut() {
                if m.abandoned
                    || self.client.connection_state(m.node) != Some(ConnectionState::Ready)
                {
                    continue;
                }
                if m.heartbeat_deadline.is_some_and(|d| d <= now) {
                    m.heartbeat_deadline = None;
                    m.heartbeat_failures += 1;
                    g.metrics.heartbeats_failed += 1;
                    log::warn!(
                        "group {}: {}: heartbeat {} of {max} unanswered",
                        g.name,
                        m.node,
                        m.heartbeat_failures
                    );
                    if m.heartbeat_failures >= max {
                        m.closing = Some(DownReason::HeartbeatFailed);
                    }
                }
                if m.closing == Some(DownReason::HeartbeatFailed) {
                    g.metrics.heartbeat_closes += 1;
                    self.client.disconnect(m.node, now);
                    continue;
                }
                if m.heartbeat_deadline.is_none()
                    && now.saturating_duration_since(m.last_activity) >= interval
                {
                    let corr = self.client.next_correlation_id();
                    let frame = self.heartbeat.request(corr);
                    self.client.send(
                        ClientRequest::new(m.node, corr, frame)
                            .timeout(client_timeout)
                            .tag(HEARTBEAT_TAG),
                        now,
                    );
                    self.heartbeats.push((m.node, corr));
                    m.last_activity = now;
                    m.heartbeat_deadline = Some(now + timeout);
                    g.metrics.heartbeats_sent += 1;
                }
            }
        }
    }

    /// All slots are taken: when a group with no pending attempt has a member due while another
    /// group holds more than its share (it took the slots before the first group needed any),
    /// aborts one of that group's pending attempts. Returns whether a slot was freed.
    fn preempt(&mut self, share: usize, now: Instant) -> bool {
        let starving = self.groups.iter().flatten().any(|g| {
            g.pending == 0
                && g.members.iter().any(|m| {
                    !m.abandoned
                        && self
                            .client
                            .connection_state(m.node)
                            .is_some_and(ConnectionState::is_disconnected)
                        && self.client.connection_delay(m.node, now).is_zero()
                })
        });
        if !starving {
            return false;
        }
        let Some(g) = self
            .groups
            .iter_mut()
            .flatten()
            .filter(|g| g.pending > share)
            .max_by_key(|g| g.pending)
        else {
            return false;
        };
        let client = &mut self.client;
        let Some(m) = g.members.iter_mut().rev().find(|m| {
            client
                .connection_state(m.node)
                .is_some_and(ConnectionState::is_setting_up)
        }) else {
            return false;
        };
        log::debug!(
            "group {}: aborting the attempt of {} to free a reconnect slot",
            g.name,
            m.node
        );
        m.preempted = true;
        client.disconnect(m.node, now);
        g.pending -= 1;
        true
    }

    /// Each group's cap on pending attempts.
    fn share(&self) -> usize {
        let groups = self.groups.iter().flatten().count().max(1);
        (self.config.reconnect_max_concurrent / groups).max(1)
    }

    /// Grants connection attempts to closed members whose backoff has elapsed: one per group per
    /// round, groups in round-robin order, within the global and per-group caps.
    fn reconnect(&mut self, now: Instant) {
        let share = self.share();
        let cap = self.config.reconnect_max_concurrent;
        let mut total: usize = self.groups.iter().flatten().map(|g| g.pending).sum();
        let slots = self.groups.len();
        if slots == 0 {
            return;
        }
        let max_attempts = self.config.reconnect_max_attempts;
        // One grant per member per call at most, even with a zero backoff after an instant
        // failure.
        let mut budget: usize = self.groups.iter().flatten().map(|g| g.members.len()).sum();
        loop {
            let mut granted = false;
            if total >= cap && self.preempt(share, now) {
                total -= 1;
            }
            for k in 0..slots {
                if total >= cap || budget == 0 {
                    return;
                }
                let s = (self.group_cursor + k) % slots;
                let Some(g) = self.groups[s].as_mut() else {
                    continue;
                };
                if g.pending >= share {
                    continue;
                }
                let n = g.members.len();
                let pick = (0..n).map(|j| (g.reconnect_cursor + j) % n).find(|&i| {
                    let m = &g.members[i];
                    !m.abandoned
                        && self
                            .client
                            .connection_state(m.node)
                            .is_some_and(ConnectionState::is_disconnected)
                        && self.client.connection_delay(m.node, now).is_zero()
                });
                let Some(i) = pick else { continue };
                g.reconnect_cursor = (i + 1) % n;
                let m = &mut g.members[i];
                self.client.ready(m.node, now);
                g.metrics.connect_attempts += 1;
                granted = true;
                budget -= 1;
                let st = self
                    .client
                    .connection_state(m.node)
                    .unwrap_or(ConnectionState::Disconnected);
                m.seen = st;
                if st.is_setting_up() {
                    g.pending += 1;
                    total += 1;
                } else if st.is_disconnected() {
                    // Refused at once (resolution or connect(2) failed): a failure like any other.
                    g.metrics.connect_failures += 1;
                    m.attempts = m.attempts.saturating_add(1);
                    if max_attempts.is_some_and(|max| m.attempts >= max) {
                        m.abandoned = true;
                        g.metrics.abandoned += 1;
                        self.events.push(GroupEvent {
                            group: g.name.clone(),
                            at: now,
                            kind: GroupEventKind::MemberAbandoned {
                                node: m.node,
                                address: m.address.clone(),
                                attempts: m.attempts,
                            },
                        });
                    }
                }
                self.group_cursor = (s + 1) % slots;
            }
            if !granted {
                return;
            }
        }
    }
}
