//! One broker node: a deferred-mode [`Server`](crate::server::Server) handler that decodes
//! requests (by hand, bounds-checked), applies them to the shared [`Cluster`], and encodes the
//! responses with `kafka-protocol`.
//!
//! Fetches that cannot be answered yet (fewer than `min.bytes`) are parked with their
//! [`Responder`] until data arrives (an append bumps the cluster's generation and wakes the nodes
//! with parked fetches) or `max.wait.ms` passes; the node's loop calls [`NodeHandler::tick`] after
//! every poll and polls no longer than the nearest deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages as km;
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

use crate::net::{ChannelId, SelectorWaker};
use crate::protocol::requests::{
    decode_api_versions_request, decode_fetch_request, decode_init_producer_id_request,
    decode_list_offsets_request, decode_metadata_request, decode_produce_request,
    decode_request_header, peek_request_header, FetchRequest,
};
use crate::server::{DeferredHandler, Responder};

use super::codes;
use super::ha::master::{SyncOutcome, SyncWaiters};
use super::ha::Role;
use super::sasl::{AuthOutcome, ConnAuth, SaslServerConfig};
use super::state::{valid_topic_name, Cluster};
use super::API_VERSIONS;
use crate::protocol::sasl as psasl;
use crate::protocol::sasl::Mechanism;
use std::collections::HashMap;

/// Kafka's broker default `fetch.max.bytes` (55 MiB): the most record bytes one Fetch response
/// reads, whatever the request asks for.
pub(crate) const FETCH_MAX_BYTES: usize = 57_671_680;

/// A node's advertised address.
#[derive(Debug, Clone)]
pub(crate) struct NodeAddr {
    /// The node id.
    pub id: i32,
    /// The host clients connect to.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// What every node shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The state, under one lock.
    pub cluster: Mutex<Cluster>,
    /// The nodes' addresses, set once every node is bound.
    pub nodes: OnceLock<Vec<NodeAddr>>,
    /// The nodes' wakers, set once every node is bound.
    pub wakers: OnceLock<Vec<SelectorWaker>>,
    /// Parked fetches per node (index = node id - 1).
    pub parked: Vec<AtomicUsize>,
    /// Whether each node is down (index = node id - 1), for its loop's cheap check.
    pub down: Vec<AtomicBool>,
    /// The HA state, when the broker replicates.
    pub ha: Option<Arc<super::ha::HaShared>>,
    /// SASL users and mechanisms: when set, every connection must authenticate.
    pub sasl: Option<SaslServerConfig>,
    /// Connections accepted (all nodes).
    pub connections: AtomicU64,
    /// SASL authentications refused (all nodes).
    pub auth_failures: AtomicU64,
    /// SASL re-authentications accepted (all nodes).
    pub reauthentications: AtomicU64,
    /// Connections closed for a request after their session expired (all nodes).
    pub expired_sessions: AtomicU64,
}

/// An authenticated connection's session: who, with which mechanism, and until when (KIP-368;
/// `None`: no limit).
struct Session {
    user: String,
    mechanism: Option<Mechanism>,
    expires: Option<Instant>,
}

impl Shared {
    /// The cluster, locked (a poisoned lock is taken over: the state is only ever mutated by
    /// complete operations).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_parked(&self, except: i32) {
        let Some(wakers) = self.wakers.get() else {
            return;
        };
        for (i, w) in wakers.iter().enumerate() {
            if i as i32 + 1 != except && self.parked[i].load(Ordering::Acquire) > 0 {
                let _ = w.wake();
            }
        }
    }
}

/// A SYNC_MASTER produce answer held until a slave's ack covers the append.
struct HeldProduce {
    correlation_id: i32,
    version: i16,
    response: km::ProduceResponse,
    responder: Responder,
}

struct Parked {
    deadline: Instant,
    correlation_id: i32,
    version: i16,
    request: FetchRequest,
    responder: Responder,
}

/// The handler of one node.
pub(crate) struct NodeHandler {
    id: i32,
    /// Open connections, so a node taken down can close them all.
    conns: Vec<ChannelId>,
    shared: Arc<Shared>,
    parked: Vec<Parked>,
    delayed: Vec<(Instant, Responder, Bytes)>,
    seen_generation: u64,
    held: SyncWaiters<HeldProduce>,
    released: Vec<(HeldProduce, SyncOutcome)>,
    /// Each connection's SASL state (with SASL enabled).
    auth: HashMap<ChannelId, ConnAuth>,
    /// Each authenticated connection's session; kept while it re-authenticates.
    sessions: HashMap<ChannelId, Session>,
    /// The mechanism each connection's last SaslHandshake chose.
    mechanisms: HashMap<ChannelId, Mechanism>,
}

impl std::fmt::Debug for NodeHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandler")
            .field("id", &self.id)
            .field("parked", &self.parked.len())
            .field("delayed", &self.delayed.len())
            .finish()
    }
}

fn encode<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    body: &R,
) -> Option<Bytes> {
    let header = km::ResponseHeader::default().with_correlation_id(correlation_id);
    let hv = R::header_version(version);
    let mut buf = BytesMut::new();
    let r = header
        .encode(&mut buf, hv)
        .and_then(|_| body.encode(&mut buf, version));
    match r {
        Ok(()) => Some(buf.freeze()),
        Err(e) => {
            log::error!("cannot encode a response at v{version}: {e:#}");
            None
        }
    }
}

fn name(s: &str) -> km::TopicName {
    km::TopicName(StrBytes::from_string(s.to_owned()))
}

impl NodeHandler {
    /// The handler of node `id`.
    pub(crate) fn new(id: i32, shared: Arc<Shared>) -> Self {
        NodeHandler {
            id,
            conns: Vec::new(),
            shared,
            parked: Vec::new(),
            delayed: Vec::new(),
            seen_generation: 0,
            held: SyncWaiters::default(),
            released: Vec::new(),
            auth: HashMap::new(),
            sessions: HashMap::new(),
            mechanisms: HashMap::new(),
        }
    }

    /// The open connections.
    pub(crate) fn connections(&self) -> &[ChannelId] {
        &self.conns
    }

    /// The nearest moment [`tick`](Self::tick) has work: a parked fetch's or a delayed
    /// response's deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let a = self.parked.iter().map(|p| p.deadline).min();
        let b = self.delayed.iter().map(|d| d.0).min();
        [a, b, self.held.poll_timeout()].into_iter().flatten().min()
    }

    /// Answers the delayed responses that are due and the parked fetches that are satisfied or
    /// due.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.release_held(now);
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (_, r, b) = self.delayed.swap_remove(i);
                let _ = r.respond(b);
            } else {
                i += 1;
            }
        }
        if self.parked.is_empty() {
            return;
        }
        let generation = self.shared.lock().generation;
        let moved = generation != self.seen_generation;
        self.seen_generation = generation;
        let parked = std::mem::take(&mut self.parked);
        for p in parked {
            if !moved && p.deadline > now {
                self.parked.push(p);
                continue;
            }
            let (resp, bytes, error) = self.fetch(&p.request, p.version);
            if p.deadline <= now || error || bytes >= i64::from(p.request.min_bytes) {
                self.answer(p.responder, encode(p.correlation_id, p.version, &resp));
            } else {
                self.parked.push(p);
            }
        }
        self.shared.parked[(self.id - 1) as usize].store(self.parked.len(), Ordering::Release);
    }

    /// Answers the held SYNC_MASTER produces a slave's ack covers, and those whose
    /// `ha.sync.timeout.ms` passed with NOT_ENOUGH_REPLICAS_AFTER_APPEND.
    fn release_held(&mut self, now: Instant) {
        if self.held.is_empty() {
            return;
        }
        let acked = self
            .shared
            .ha
            .as_ref()
            .map_or(-1, |ha| ha.acked.load(Ordering::Acquire));
        let mut released = std::mem::take(&mut self.released);
        self.held.release(acked, now, &mut released);
        for (mut h, outcome) in released.drain(..) {
            if outcome == SyncOutcome::TimedOut {
                for t in &mut h.response.responses {
                    for p in &mut t.partition_responses {
                        if p.error_code == 0 {
                            p.error_code = codes::NOT_ENOUGH_REPLICAS_AFTER_APPEND;
                            p.base_offset = -1;
                        }
                    }
                }
            }
            let bytes = encode(h.correlation_id, h.version, &h.response);
            self.answer(h.responder, bytes);
        }
        self.released = released;
    }

    /// What HA decides for a produce before it is applied: a forced error code (a slave is
    /// read-only; a SYNC_MASTER without a healthy slave refuses acks=all), and whether the answer
    /// waits for a slave's ack.
    fn ha_gate(&self, acks: i16) -> (Option<i16>, bool) {
        let Some(ha) = &self.shared.ha else {
            return (None, false);
        };
        match ha.role {
            Role::Slave => (Some(codes::NOT_LEADER_OR_FOLLOWER), false),
            Role::SyncMaster if acks == -1 => {
                if ha.healthy.load(Ordering::Acquire) {
                    (None, true)
                } else {
                    (Some(codes::NOT_ENOUGH_REPLICAS), false)
                }
            }
            _ => (None, false),
        }
    }

    fn answer(&mut self, responder: Responder, response: Option<Bytes>) {
        let Some(bytes) = response else {
            let _ = responder.close();
            return;
        };
        let delay = self.shared.lock().faults.delay();
        if delay.is_zero() {
            let _ = responder.respond(bytes);
        } else {
            self.delayed
                .push((Instant::now() + delay, responder, bytes));
        }
    }

    fn dispatch(&mut self, conn: ChannelId, frame: Bytes, responder: Responder) {
        let Ok((api_key, version, correlation_id)) = peek_request_header(&frame) else {
            let _ = responder.close();
            return;
        };
        let injected = {
            let mut c = self.shared.lock();
            if c.faults.is_down(self.id) {
                drop(c);
                let _ = responder.close();
                return;
            }
            c.faults.take(api_key)
        };
        let supported = API_VERSIONS
            .iter()
            .find(|(k, _, _)| *k == api_key)
            .is_some_and(|(_, lo, hi)| (*lo..=*hi).contains(&version));
        if !supported {
            if api_key == 18 {
                // ApiVersions at a version we do not serve: v0 with UNSUPPORTED_VERSION, so the
                // client retries at our maximum.
                let resp = self.api_versions(codes::UNSUPPORTED_VERSION);
                self.answer(responder, encode(correlation_id, 0, &resp));
            } else {
                log::info!(
                    "node {}: api {api_key} v{version} is not served; closing the connection",
                    self.id
                );
                let _ = responder.close();
            }
            return;
        }
        if self.shared.sasl.is_some() && !matches!(api_key, 17 | 36) {
            match self.sessions.get(&conn) {
                // KIP-368: once a session has expired, only re-authentication is served.
                Some(s) if s.expires.is_some_and(|t| t <= Instant::now()) => {
                    log::info!(
                        "node {}: api {api_key} after the SASL session of {} expired; closing \
                         the connection",
                        self.id,
                        s.user
                    );
                    self.shared.expired_sessions.fetch_add(1, Ordering::Relaxed);
                    let _ = responder.close();
                    return;
                }
                Some(_) => {}
                None if api_key == 18 => {}
                None => {
                    log::info!(
                        "node {}: api {api_key} before SASL authentication; closing the connection",
                        self.id
                    );
                    let _ = responder.close();
                    return;
                }
            }
        }
        let (_, body) = match decode_request_header(&frame) {
            Ok(h) => h,
            Err(e) => {
                log::info!("node {}: bad request header: {e}; closing", self.id);
                let _ = responder.close();
                return;
            }
        };
        let body_bytes = &frame[body..];
        let response = match api_key {
            17 => match psasl::decode_sasl_handshake_request(body_bytes) {
                Ok(mechanism) => Some(self.sasl_handshake(conn, correlation_id, mechanism)),
                Err(e) => return self.bad(responder, api_key, e),
            },
            36 => match psasl::decode_sasl_authenticate_request(version, body_bytes) {
                Ok(bytes) => Some(self.sasl_authenticate(conn, version, correlation_id, bytes)),
                Err(e) => return self.bad(responder, api_key, e),
            },
            18 => match decode_api_versions_request(body_bytes, version) {
                Ok(_) => {
                    let resp = self.api_versions(injected.unwrap_or(0));
                    encode(correlation_id, version, &resp)
                }
                Err(e) => return self.bad(responder, api_key, e),
            },
            3 => match decode_metadata_request(body_bytes, version) {
                Ok(req) => {
                    let resp = self.metadata(&req, version, injected);
                    encode(correlation_id, version, &resp)
                }
                Err(e) => return self.bad(responder, api_key, e),
            },
            0 => match decode_produce_request(&frame, body, version) {
                Ok(req) => {
                    let acks = req.acks;
                    let (gate, hold) = self.ha_gate(acks);
                    let resp = self.produce(&req, injected.or(gate));
                    if acks == 0 {
                        let _ = responder.no_response();
                        return;
                    }
                    if hold && injected.is_none() {
                        if let Some(ha) = &self.shared.ha {
                            // Every answer waits for the journal end after this produce: a
                            // duplicate's original may not be on a slave yet either.
                            let target = ha.end.load(Ordering::Acquire);
                            if ha.acked.load(Ordering::Acquire) < target {
                                let deadline = Instant::now() + ha.sync_timeout;
                                self.held.wait(
                                    target,
                                    deadline,
                                    HeldProduce {
                                        correlation_id,
                                        version,
                                        response: resp,
                                        responder,
                                    },
                                );
                                return;
                            }
                        }
                    }
                    encode(correlation_id, version, &resp)
                }
                Err(e) => return self.bad(responder, api_key, e),
            },
            1 => match decode_fetch_request(body_bytes, version) {
                Ok(req) => {
                    if let Some(code) = injected {
                        let resp = fetch_error(&req, code);
                        encode(correlation_id, version, &resp)
                    } else {
                        let (resp, bytes, error) = self.fetch(&req, version);
                        if error || req.max_wait_ms <= 0 || bytes >= i64::from(req.min_bytes) {
                            encode(correlation_id, version, &resp)
                        } else {
                            let wait = Duration::from_millis(req.max_wait_ms as u64);
                            self.parked.push(Parked {
                                deadline: Instant::now() + wait,
                                correlation_id,
                                version,
                                request: req,
                                responder,
                            });
                            self.shared.parked[(self.id - 1) as usize]
                                .store(self.parked.len(), Ordering::Release);
                            return;
                        }
                    }
                }
                Err(e) => return self.bad(responder, api_key, e),
            },
            2 => match decode_list_offsets_request(body_bytes, version) {
                Ok(req) => {
                    let resp = self.list_offsets(&req, version, injected);
                    encode(correlation_id, version, &resp)
                }
                Err(e) => return self.bad(responder, api_key, e),
            },
            22 => match decode_init_producer_id_request(body_bytes, version) {
                Ok(req) => {
                    let (code, pid, epoch) = match injected {
                        Some(code) => (code, -1, -1),
                        None => self.shared.lock().init_producer_id(
                            req.transactional_id
                                .as_deref()
                                .is_some_and(|s| !s.is_empty()),
                            (req.producer_id, req.producer_epoch),
                        ),
                    };
                    let resp = km::InitProducerIdResponse::default()
                        .with_error_code(code)
                        .with_producer_id(km::ProducerId(pid))
                        .with_producer_epoch(epoch);
                    encode(correlation_id, version, &resp)
                }
                Err(e) => return self.bad(responder, api_key, e),
            },
            _ => None,
        };
        self.answer(responder, response);
    }

    /// SaslHandshake: the mechanism is enabled (the connection moves on to SaslAuthenticate) or
    /// UNSUPPORTED_SASL_MECHANISM with the enabled ones (none without SASL).
    fn sasl_handshake(&mut self, conn: ChannelId, correlation_id: i32, mechanism: &str) -> Bytes {
        let Some(sasl) = &self.shared.sasl else {
            return psasl::encode_sasl_handshake_response(
                correlation_id,
                psasl::UNSUPPORTED_SASL_MECHANISM,
                &[],
            );
        };
        let enabled = sasl.mechanism_names();
        // Kafka re-authenticates with the mechanism the session began with; another one fails the
        // re-authentication (the session ends: the connection serves nothing but a new one).
        let previous = self.sessions.get(&conn).and_then(|s| s.mechanism);
        if let Some(before) = previous.filter(|m| m.name() != mechanism) {
            log::info!(
                "node {}: {conn:?}: SASL mechanism {mechanism} refused for re-authentication of {}",
                self.id,
                before.name()
            );
            self.auth.insert(conn, ConnAuth::Start);
            self.sessions.remove(&conn);
            self.shared.auth_failures.fetch_add(1, Ordering::Relaxed);
            return psasl::encode_sasl_handshake_response(
                correlation_id,
                psasl::UNSUPPORTED_SASL_MECHANISM,
                &[before.name()],
            );
        }
        let state = self.auth.entry(conn).or_default();
        match (sasl.handshake(mechanism), &*state) {
            // A first authentication, or a re-authentication of an authenticated connection
            // (KIP-368).
            (Some(m), ConnAuth::Start | ConnAuth::Authenticated(_)) => {
                *state = ConnAuth::Handshaken(m);
                self.mechanisms.insert(conn, m);
                psasl::encode_sasl_handshake_response(correlation_id, 0, &enabled)
            }
            (Some(_), _) => psasl::encode_sasl_handshake_response(
                correlation_id,
                psasl::ILLEGAL_SASL_STATE,
                &enabled,
            ),
            (None, _) => psasl::encode_sasl_handshake_response(
                correlation_id,
                psasl::UNSUPPORTED_SASL_MECHANISM,
                &enabled,
            ),
        }
    }

    /// SaslAuthenticate: the mechanism's next message, or SASL_AUTHENTICATION_FAILED with a
    /// message (the connection must start over).
    fn sasl_authenticate(
        &mut self,
        conn: ChannelId,
        version: i16,
        correlation_id: i32,
        bytes: &[u8],
    ) -> Bytes {
        let (code, message, auth_bytes, lifetime) = match &self.shared.sasl {
            None => (
                psasl::ILLEGAL_SASL_STATE,
                Some("SASL is not enabled".to_owned()),
                Vec::new(),
                0,
            ),
            Some(sasl) => {
                let state = self.auth.entry(conn).or_default();
                match sasl.authenticate(state, bytes) {
                    AuthOutcome::Continue(b) => (0, None, b, 0),
                    AuthOutcome::Done(b) => {
                        let user = match &*state {
                            ConnAuth::Authenticated(user) => user.clone(),
                            _ => String::new(),
                        };
                        let mechanism = self.mechanisms.get(&conn).copied();
                        let lifetime = sasl.lifetime_ms();
                        let expires = u64::try_from(lifetime)
                            .ok()
                            .filter(|&ms| ms > 0)
                            .map(|ms| Instant::now() + Duration::from_millis(ms));
                        match self.sessions.get(&conn).map(|s| s.user.as_str()) {
                            // Kafka refuses a change of principal on re-authentication.
                            Some(before) if before != user => {
                                let why = format!(
                                    "Cannot change principals during re-authentication from \
                                     {before} to {user}"
                                );
                                log::info!("node {}: {conn:?}: {why}", self.id);
                                *state = ConnAuth::Start;
                                self.sessions.remove(&conn);
                                self.shared.auth_failures.fetch_add(1, Ordering::Relaxed);
                                (psasl::SASL_AUTHENTICATION_FAILED, Some(why), Vec::new(), 0)
                            }
                            renewed => {
                                if renewed.is_some() {
                                    log::info!(
                                        "node {}: {conn:?} re-authenticated as {user}",
                                        self.id
                                    );
                                    self.shared
                                        .reauthentications
                                        .fetch_add(1, Ordering::Relaxed);
                                } else {
                                    log::info!(
                                        "node {}: {conn:?} authenticated as {user}",
                                        self.id
                                    );
                                }
                                let session = Session {
                                    user,
                                    mechanism,
                                    expires,
                                };
                                self.sessions.insert(conn, session);
                                (0, None, b, lifetime)
                            }
                        }
                    }
                    AuthOutcome::Failed(why) => {
                        log::info!("node {}: {conn:?}: {why}", self.id);
                        *state = ConnAuth::Start;
                        // A failed re-authentication ends the session: the connection serves
                        // nothing but a new authentication.
                        self.sessions.remove(&conn);
                        self.shared.auth_failures.fetch_add(1, Ordering::Relaxed);
                        (psasl::SASL_AUTHENTICATION_FAILED, Some(why), Vec::new(), 0)
                    }
                }
            }
        };
        psasl::encode_sasl_authenticate_response(
            version,
            correlation_id,
            &psasl::SaslAuthenticateResponse {
                error_code: code,
                error_message: message,
                auth_bytes,
                session_lifetime_ms: lifetime,
            },
        )
    }

    fn bad(&self, responder: Responder, api_key: i16, e: crate::protocol::ProtocolError) {
        log::info!(
            "node {}: malformed request of api {api_key}: {e}; closing the connection",
            self.id
        );
        let _ = responder.close();
    }

    fn api_versions(&self, code: i16) -> km::ApiVersionsResponse {
        km::ApiVersionsResponse::default()
            .with_error_code(code)
            .with_api_keys(
                API_VERSIONS
                    .iter()
                    .map(|(k, lo, hi)| {
                        km::api_versions_response::ApiVersion::default()
                            .with_api_key(*k)
                            .with_min_version(*lo)
                            .with_max_version(*hi)
                    })
                    .collect(),
            )
    }

    fn metadata(
        &self,
        req: &crate::protocol::requests::MetadataRequest,
        version: i16,
        injected: Option<i16>,
    ) -> km::MetadataResponse {
        let nodes = self.shared.nodes.get().cloned().unwrap_or_default();
        let mut c = self.shared.lock();
        let names: Vec<String> = match &req.topics {
            Some(t) => t.clone(),
            None => c.topics.keys().cloned().collect(),
        };
        let mut topics = Vec::with_capacity(names.len());
        for t in names {
            let mut code = injected.unwrap_or(0);
            if code == 0 && !c.topics.contains_key(&t) {
                code = if !valid_topic_name(&t) {
                    codes::INVALID_TOPIC_EXCEPTION
                } else if req.allow_auto_topic_creation && c.auto_create() {
                    match c.auto_create_topic(&t) {
                        Ok(()) => 0,
                        Err(e) => {
                            log::error!("cannot create topic {t}: {e}");
                            codes::KAFKA_STORAGE_ERROR
                        }
                    }
                } else {
                    codes::UNKNOWN_TOPIC_OR_PARTITION
                };
            }
            let partitions = match (code, c.topics.get(&t)) {
                (0, Some(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let mut m = km::metadata_response::MetadataResponsePartition::default()
                            .with_partition_index(i as i32)
                            .with_leader_id(km::BrokerId(p.leader))
                            .with_replica_nodes(vec![km::BrokerId(p.leader)])
                            .with_isr_nodes(vec![km::BrokerId(p.leader)]);
                        if version >= 7 {
                            m = m.with_leader_epoch(p.leader_epoch);
                        }
                        m
                    })
                    .collect(),
                _ => Vec::new(),
            };
            topics.push(
                km::metadata_response::MetadataResponseTopic::default()
                    .with_error_code(code)
                    .with_name(Some(name(&t)))
                    .with_partitions(partitions),
            );
        }
        let controller = c.nodes().first().copied().unwrap_or(1);
        drop(c);
        let mut resp = km::MetadataResponse::default()
            .with_brokers(
                nodes
                    .iter()
                    .map(|n| {
                        km::metadata_response::MetadataResponseBroker::default()
                            .with_node_id(km::BrokerId(n.id))
                            .with_host(StrBytes::from_string(n.host.clone()))
                            .with_port(i32::from(n.port))
                    })
                    .collect(),
            )
            .with_controller_id(km::BrokerId(controller))
            .with_topics(topics);
        if version >= 2 {
            resp = resp.with_cluster_id(Some(StrBytes::from_static_str("mqnet-broker")));
        }
        resp
    }

    fn produce(
        &self,
        req: &crate::protocol::requests::ProduceRequest,
        injected: Option<i16>,
    ) -> km::ProduceResponse {
        let forced = if let Some(code) = injected {
            Some(code)
        } else if req
            .transactional_id
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            Some(codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        } else if !(-1..=1).contains(&req.acks) {
            Some(codes::INVALID_REQUIRED_ACKS)
        } else {
            None
        };
        let mut appended = false;
        let mut responses = Vec::with_capacity(req.topics.len());
        {
            let mut c = self.shared.lock();
            for t in &req.topics {
                let mut parts = Vec::with_capacity(t.partitions.len());
                for p in &t.partitions {
                    let (code, base, start) = match forced {
                        Some(code) => (code, -1, -1),
                        None => {
                            let before = c.generation;
                            let o = c.produce(self.id, &t.name, p.partition, p.records.as_ref());
                            appended |= c.generation != before;
                            (o.code, o.base_offset, o.log_start_offset)
                        }
                    };
                    parts.push(
                        km::produce_response::PartitionProduceResponse::default()
                            .with_index(p.partition)
                            .with_error_code(code)
                            .with_base_offset(base)
                            .with_log_append_time_ms(-1)
                            .with_log_start_offset(start),
                    );
                }
                responses.push(
                    km::produce_response::TopicProduceResponse::default()
                        .with_name(name(&t.name))
                        .with_partition_responses(parts),
                );
            }
        }
        if appended {
            self.shared.wake_parked(self.id);
            if let Some(ha) = &self.shared.ha {
                ha.wake();
            }
        }
        km::ProduceResponse::default().with_responses(responses)
    }

    /// Builds a fetch response from what the logs hold now; returns it, the record bytes in it,
    /// and whether any partition has an error.
    fn fetch(&self, req: &FetchRequest, version: i16) -> (km::FetchResponse, i64, bool) {
        let c = self.shared.lock();
        // The broker's own `fetch.max.bytes` bounds what one response reads, whatever the client
        // asks for (a message.max.bytes batch can still exceed it alone, KIP-74).
        let max_bytes = (req.max_bytes.max(0) as usize).min(FETCH_MAX_BYTES);
        let mut total = 0usize;
        let mut error = false;
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            let mut parts = Vec::with_capacity(t.partitions.len());
            for fp in &t.partitions {
                let mut pd = km::fetch_response::PartitionData::default()
                    .with_partition_index(fp.partition)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1)
                    .with_records(Some(Bytes::new()));
                let code = match c.partition(&t.name, fp.partition) {
                    None => codes::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) if p.leader != self.id => codes::NOT_LEADER_OR_FOLLOWER,
                    Some(p) if fp.current_leader_epoch > p.leader_epoch => {
                        codes::UNKNOWN_LEADER_EPOCH
                    }
                    Some(p)
                        if fp.current_leader_epoch >= 0
                            && fp.current_leader_epoch < p.leader_epoch =>
                    {
                        codes::FENCED_LEADER_EPOCH
                    }
                    Some(p) => {
                        let hw = p.log.log_end_offset();
                        pd = pd
                            .with_high_watermark(hw)
                            .with_last_stable_offset(hw)
                            .with_log_start_offset(p.log.log_start_offset());
                        let budget = (fp.partition_max_bytes.max(0) as usize)
                            .min(max_bytes.saturating_sub(total));
                        // Only the response's first batch may exceed the limits (KIP-74).
                        let at_least_one = total == 0;
                        if budget == 0 && !at_least_one {
                            0
                        } else {
                            match p.log.read(fp.fetch_offset, budget, at_least_one) {
                                Ok(Some(b)) => {
                                    total += b.len();
                                    pd = pd.with_records(Some(b));
                                    0
                                }
                                Ok(None) => codes::OFFSET_OUT_OF_RANGE,
                                Err(e) => {
                                    log::error!("{}-{}: read failed: {e}", t.name, fp.partition);
                                    codes::KAFKA_STORAGE_ERROR
                                }
                            }
                        }
                    }
                };
                error |= code != 0;
                parts.push(pd.with_error_code(code));
            }
            topics.push(
                km::fetch_response::FetchableTopicResponse::default()
                    .with_topic(name(&t.name))
                    .with_partitions(parts),
            );
        }
        let _ = version;
        (
            km::FetchResponse::default().with_responses(topics),
            total as i64,
            error,
        )
    }

    fn list_offsets(
        &self,
        req: &crate::protocol::requests::ListOffsetsRequest,
        version: i16,
        injected: Option<i16>,
    ) -> km::ListOffsetsResponse {
        let c = self.shared.lock();
        let mut topics = Vec::with_capacity(req.topics.len());
        for t in &req.topics {
            let mut parts = Vec::with_capacity(t.partitions.len());
            for lp in &t.partitions {
                let (code, offset, ts, epoch) = match (injected, c.partition(&t.name, lp.partition))
                {
                    (Some(code), _) => (code, -1, -1, -1),
                    (None, None) => (codes::UNKNOWN_TOPIC_OR_PARTITION, -1, -1, -1),
                    (None, Some(p)) if p.leader != self.id => {
                        (codes::NOT_LEADER_OR_FOLLOWER, -1, -1, -1)
                    }
                    (None, Some(p)) => match lp.timestamp {
                        -2 => (0, p.log.log_start_offset(), -1, p.leader_epoch),
                        -1 => (0, p.log.log_end_offset(), -1, p.leader_epoch),
                        ts if ts < 0 => (codes::INVALID_REQUEST, -1, -1, -1),
                        ts => match p.log.offset_for_timestamp(ts) {
                            Ok(Some((o, t))) => (0, o, t, p.leader_epoch),
                            Ok(None) => (0, -1, -1, -1),
                            Err(e) => {
                                log::error!("{}-{}: {e}", t.name, lp.partition);
                                (codes::KAFKA_STORAGE_ERROR, -1, -1, -1)
                            }
                        },
                    },
                };
                let mut r = km::list_offsets_response::ListOffsetsPartitionResponse::default()
                    .with_partition_index(lp.partition)
                    .with_error_code(code)
                    .with_offset(offset)
                    .with_timestamp(ts);
                if version >= 4 {
                    r = r.with_leader_epoch(epoch);
                }
                parts.push(r);
            }
            topics.push(
                km::list_offsets_response::ListOffsetsTopicResponse::default()
                    .with_name(name(&t.name))
                    .with_partitions(parts),
            );
        }
        km::ListOffsetsResponse::default().with_topics(topics)
    }
}

fn fetch_error(req: &FetchRequest, code: i16) -> km::FetchResponse {
    km::FetchResponse::default().with_responses(
        req.topics
            .iter()
            .map(|t| {
                km::fetch_response::FetchableTopicResponse::default()
                    .with_topic(name(&t.name))
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                km::fetch_response::PartitionData::default()
                                    .with_partition_index(p.partition)
                                    .with_error_code(code)
                                    .with_high_watermark(-1)
                                    .with_records(Some(Bytes::new()))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

impl DeferredHandler for NodeHandler {
    fn handle(&mut self, conn: ChannelId, request: Bytes, responder: Responder) {
        self.dispatch(conn, request, responder);
    }

    fn connected(&mut self, conn: ChannelId, _peer: std::net::SocketAddr) {
        self.conns.push(conn);
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
    }

    fn disconnected(&mut self, conn: ChannelId, _reason: crate::net::DisconnectReason) {
        if let Some(i) = self.conns.iter().position(|c| *c == conn) {
            self.conns.swap_remove(i);
        }
        self.auth.remove(&conn);
        self.sessions.remove(&conn);
        self.mechanisms.remove(&conn);
    }
}
