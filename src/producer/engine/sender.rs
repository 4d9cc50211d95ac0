//! The engine's sender part: which batches may be sent (the in-flight rules), the Produce
//! requests that carry them, and what each answer does to them.

use super::*;

impl<T: Transport> Engine<T> {
    // ----- sending -----------------------------------------------------------------------------

    /// Whether a partition's front batch may be sent now. It must not be waiting out a retry
    /// backoff (a batch here was taken from the accumulator because it was ready). With
    /// idempotence, a batch that already holds a sequence (a resend) goes alone: only once every
    /// batch before it has been answered, so the broker sees the partition's sequences in order
    /// (Kafka's rule for retries of an idempotent producer). Otherwise up to `partition_limit`
    /// batches of the partition may be in flight.
    pub(super) fn may_send(
        p: &PartitionState,
        now: Instant,
        idempotent: bool,
        limit: usize,
    ) -> bool {
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

    pub(super) fn flushing(&self) -> bool {
        !self.flush_waiters.is_empty() || self.closing.is_some()
    }

    pub(super) fn send_ready(&mut self, now: Instant) {
        self.maybe_reset_sequences();
        let idempotent = self.cfg.enable_idempotence;
        if idempotent && (self.idem.producer_id.is_none() || self.idem.reset_due) {
            return;
        }
        let limit = self.partition_limit;
        // Which leaders have a sendable batch?
        let mut nodes = std::mem::take(&mut self.sendable_nodes);
        nodes.clear();
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
        for &leader in &nodes {
            let node = NodeId(leader);
            for _ in 0..rounds {
                if !self.client.ready(node, now) || !self.send_to(node, now) {
                    break;
                }
            }
        }
        self.sendable_nodes = nodes;
    }

    /// Sends one Produce request to `node` with the front batch of every partition it leads that
    /// may send; returns whether it sent one.
    pub(super) fn send_to(&mut self, node: NodeId, now: Instant) -> bool {
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
        let (pid, epoch) = self.idem.producer_id.unwrap_or((-1, -1));
        let idempotent = self.cfg.enable_idempotence;
        let limit = self.partition_limit;
        let max_request = self.cfg.max_request_size;
        let mut size = REQUEST_OVERHEAD;
        let mut taken: Vec<PartitionBatch> = Vec::new();
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
                    if let Err((w, e)) =
                        w.finish_compressed(&mut b.buf, &mut self.compressor, pid, epoch, seq)
                    {
                        log::warn!("{name}-{i}: {e}: the batch goes uncompressed");
                        w.finish(&mut b.buf, pid, epoch, seq);
                    }
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
                taken.push((TopicPartition::new(name.as_str(), i as i32), b));
            }
        }
        if taken.is_empty() {
            return false;
        }
        let mut records = 0u64;
        for (tp, b) in &taken {
            let queued = (b.attempts == 0).then(|| now.saturating_duration_since(b.created));
            let n = b.completions.len();
            records += n as u64;
            let n = i32::try_from(n).unwrap_or(i32::MAX);
            let sent = crate::metrics::SentBatch {
                leader: node.0,
                topic: &tp.topic,
                partition: tp.partition,
                records: n,
                bytes: b.size(),
                queued,
            };
            self.report.stats.batch_sent(now, sent);
        }
        self.report.stats.request_sent(now, records);
        // Write the request straight into the send buffer, topic by topic: `taken` holds each
        // topic's partitions one after the other (it was filled topic by topic above), so the
        // request needs no grouping of its own.
        let runs = |from: usize| {
            let topic = taken[from].0.topic.as_str();
            taken[from..]
                .iter()
                .take_while(|(tp, _)| tp.topic == topic)
                .count()
        };
        let mut topic_count = 0;
        let mut k = 0;
        while k < taken.len() {
            k += runs(k);
            topic_count += 1;
        }
        let corr = self.client.next_correlation_id();
        self.send_buf.reserve(size);
        let header = protocol::ProduceHeader {
            request: protocol::RequestHeader {
                api_version: version,
                correlation_id: corr,
                client_id: &self.cfg.client_id,
            },
            acks: self.cfg.acks.wire(),
            timeout_ms: self
                .cfg
                .client
                .request_timeout
                .as_millis()
                .min(i32::MAX as u128) as i32,
        };
        let buf = &mut self.send_buf;
        let mut req = protocol::ProduceRequestWriter::begin(buf, false, &header, topic_count);
        let mut k = 0;
        while k < taken.len() {
            let run = runs(k);
            req.topic(buf, &taken[k].0.topic, run);
            for (tp, b) in &taken[k..k + run] {
                req.partition(buf, tp.partition, b.frozen.as_deref().unwrap_or(&[]));
            }
            k += run;
        }
        req.finish(buf);
        let frame = self.send_buf.split().freeze();
        self.acc
            .request_bytes
            .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
        let expect = self.cfg.acks != Acks::None;
        self.client.send(
            ClientRequest::new(node, corr, frame).expect_response(expect),
            now,
        );
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

    pub(super) fn handle_response(&mut self, r: ClientResponse, now: Instant) {
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
        for (tp, b) in &inflight.batches {
            self.landed(tp, b);
        }
        if matches!(r.outcome, Outcome::Response(_)) {
            self.report.stats.response(now, r.latency);
        }
        match r.outcome {
            Outcome::Response(frame) => {
                match protocol::decode_produce_response(inflight.version, &frame) {
                    Ok(resp) => self.handle_produce(inflight, resp, now),
                    Err(e) => {
                        log::warn!("produce response from {}: {e}", inflight.node);
                        self.retry_batches(inflight.batches, RetryCause::Protocol(e), now);
                    }
                }
            }
            Outcome::Sent => {
                for (tp, b) in inflight.batches {
                    self.complete_batch(&tp, b, -1);
                }
            }
            Outcome::Disconnected(cause) => {
                self.meta.due = true;
                self.retry_batches(inflight.batches, RetryCause::Disconnected(cause), now);
            }
            Outcome::TimedOut => {
                self.meta.due = true;
                self.retry_batches(inflight.batches, RetryCause::RequestTimedOut, now);
            }
            Outcome::LocalError(e) => {
                self.retry_batches(inflight.batches, RetryCause::Local(e), now);
            }
        }
    }

    /// A batch's request has its outcome: it is no longer in flight.
    pub(super) fn landed(&mut self, tp: &TopicPartition, b: &Batch) {
        let seq = b.base_sequence.unwrap_or(-1);
        if let Some(p) = self.partition_mut(&tp.topic, tp.partition) {
            if let Some(i) = p.in_flight.iter().position(|&s| s == seq) {
                p.in_flight.swap_remove(i);
            } else if !p.in_flight.is_empty() {
                p.in_flight.swap_remove(0);
            }
        }
    }

    /// Whether the partition holds a batch not yet resolved (in flight or queued for a resend)
    /// whose sequence comes before `seq`.
    pub(super) fn earlier_unresolved(p: &PartitionState, seq: i32) -> bool {
        let before = |s: i32| s >= 0 && seq.wrapping_sub(s) > 0;
        p.in_flight.iter().any(|&s| before(s))
            || p.batches
                .iter()
                .any(|b| b.base_sequence.is_some_and(before))
    }

    pub(super) fn handle_produce(
        &mut self,
        inflight: InFlightProduce,
        resp: protocol::ProduceResponse,
        now: Instant,
    ) {
        let mut results: HashMap<TopicPartition, (Option<KafkaError>, i64)> = HashMap::new();
        for (topic, parts) in resp.topics {
            for p in parts {
                results.insert(
                    TopicPartition::new(topic.as_str(), p.partition),
                    (p.error, p.base_offset),
                );
            }
        }
        for (tp, b) in inflight.batches {
            match results.remove(&tp) {
                Some((None, base)) => self.complete_batch(&tp, b, base),
                Some((Some(KafkaError::DuplicateSequenceNumber), base)) => {
                    self.complete_batch(&tp, b, base)
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
                        || self.idem.reset_due
                        || self
                            .partition_mut(&tp.topic, tp.partition)
                            .is_some_and(|p| Self::earlier_unresolved(p, seq));
                    if !expected {
                        log::warn!(
                            "{tp}: OUT_OF_ORDER_SEQUENCE_NUMBER at sequence {seq} with \
                             nothing before it: new producer id"
                        );
                        self.idem.reset_due = true;
                    }
                    let why = RetryCause::Broker(KafkaError::OutOfOrderSequenceNumber);
                    self.retry_batches(vec![(tp, b)], why, now);
                }
                Some((Some(err), _)) if err.is_retriable() => {
                    if err.invalidates_metadata() {
                        self.meta.due = true;
                    }
                    self.retry_batches(vec![(tp, b)], RetryCause::Broker(err), now);
                }
                Some((Some(err), _)) => {
                    self.release_sequence(&tp, &b);
                    self.fail_batch(Some(&tp.topic), b, ProduceError::Broker(err));
                }
                None => self.retry_batches(vec![(tp, b)], RetryCause::PartitionMissing, now),
            }
        }
    }
}
