//! The engine's metadata part: which partitions a topic has, who leads them, where the brokers
//! are; Metadata requests, their backoff and the checks on their answers.

use super::*;

/// What the engine knows of the cluster's layout and its Metadata requests.
pub(super) struct Metadata {
    /// Brokers the metadata named, by id: their address as last advertised.
    pub(super) brokers: HashMap<i32, String>,
    /// A refresh is wanted (a new topic, a stale leader, an error).
    pub(super) due: bool,
    pub(super) in_flight: bool,
    /// When the last answer came.
    pub(super) at: Option<Instant>,
    /// No request before this (after a failure or an incomplete answer).
    pub(super) backoff_until: Option<Instant>,
    /// Failures in a row, for the backoff.
    pub(super) failures: u32,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            brokers: HashMap::new(),
            due: true,
            in_flight: false,
            at: None,
            backoff_until: None,
            failures: 0,
        }
    }
}

impl<T: Transport> Engine<T> {
    // ----- metadata ----------------------------------------------------------------------------

    /// Where and at which version to send a control request (Metadata, InitProducerId): while no
    /// broker is known, the bootstrap server `BootstrapFailover` has chosen; then the least
    /// loaded node once it is Ready, at the highest version both sides support. A node that shares
    /// no version with us is disconnected, so it backs off and another node is tried.
    pub(super) fn control_target(
        &mut self,
        api_key: i16,
        (lo, hi): (i16, i16),
        now: Instant,
    ) -> Option<(NodeId, i16)> {
        let node = if self.meta.brokers.is_empty() {
            // No broker known yet: ask the chosen bootstrap server, failing over round robin.
            match self.bootstrap.poll(&mut self.client, now) {
                Ok(node) => node?,
                Err(e) => {
                    log::error!("bootstrap servers: {e}");
                    return None;
                }
            }
        } else {
            let node = self.client.least_loaded_node(now)?;
            if !self.client.ready(node, now) {
                return None;
            }
            node
        };
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

    pub(super) fn maybe_request_metadata(&mut self, now: Instant) {
        if self.meta.in_flight || self.fatal.is_some() {
            return;
        }
        let stale = self
            .meta
            .at
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.metadata_max_age);
        if self.topics.is_empty() || !(self.meta.due || stale) {
            return;
        }
        if self.meta.backoff_until.is_some_and(|t| now < t) {
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
                self.meta.in_flight = true;
                self.meta.due = false;
            }
            Err(e) => log::error!("metadata request: {e}"),
        }
    }

    pub(super) fn metadata_failed(&mut self, now: Instant) {
        self.meta.in_flight = false;
        self.meta.due = true;
        let b = self.retry.backoff(self.meta.failures, &mut self.rng);
        self.meta.failures = self.meta.failures.saturating_add(1);
        self.meta.backoff_until = Some(now + b);
    }

    pub(super) fn handle_metadata(&mut self, version: i16, frame: &[u8], now: Instant) {
        self.meta.in_flight = false;
        let md = match protocol::decode_metadata_response(version, frame) {
            Ok(md) => md,
            Err(e) => {
                log::warn!("metadata response: {e}");
                self.metadata_failed(now);
                return;
            }
        };
        self.meta.at = Some(now);
        self.meta.failures = 0;
        for b in &md.brokers {
            if b.node_id < 0 {
                log::warn!("metadata: broker with node id {} ignored", b.node_id);
                continue;
            }
            if !self.meta.brokers.contains_key(&b.node_id) && self.meta.brokers.len() >= MAX_BROKERS
            {
                log::warn!(
                    "metadata: broker {} ignored (already {MAX_BROKERS} brokers)",
                    b.node_id
                );
                continue;
            }
            let addr = format!("{}:{}", b.host, b.port);
            if self.meta.brokers.get(&b.node_id) != Some(&addr) {
                if let Err(e) = self.client.add_node(NodeId(b.node_id), &addr) {
                    log::warn!("broker {} at {addr}: {e}", b.node_id);
                    continue;
                }
                self.meta.brokers.insert(b.node_id, addr);
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
            self.meta.due = true;
            self.meta.backoff_until = Some(now + self.cfg.retry_backoff);
        }
    }
}
