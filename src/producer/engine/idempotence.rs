//! The engine's idempotence part: the producer id and epoch (InitProducerId, its backoff and
//! fatal errors) and the per-partition sequences (given back, abandoned, reset).

use super::*;

/// The producer id and epoch, and the state of their renewal.
#[derive(Default)]
pub(super) struct Idempotence {
    /// From InitProducerId; `None` until then and after a reset.
    pub(super) producer_id: Option<(i64, i16)>,
    pub(super) init_in_flight: bool,
    /// InitProducerId failed: no new attempt before this (the retry backoff, growing with
    /// `init_failures`).
    pub(super) init_backoff_until: Option<Instant>,
    pub(super) init_failures: u32,
    /// A batch holding sequence numbers failed with its outcome unknown (retries or
    /// `delivery.timeout.ms` ran out), or the broker lost the producer's state: the partition's
    /// sequence has a gap the broker will never accept. As Kafka does (KIP-360), sending pauses,
    /// requests in flight drain, the producer gets a new id/epoch and every partition's sequence
    /// restarts at 0.
    pub(super) reset_due: bool,
}

impl<T: Transport> Engine<T> {
    // ----- idempotence ------------------------------------------------------------------------

    pub(super) fn maybe_init_producer_id(&mut self, now: Instant) {
        if !self.cfg.enable_idempotence
            || self.idem.producer_id.is_some()
            || self.idem.init_in_flight
            || self.fatal.is_some()
            || self.idem.init_backoff_until.is_some_and(|t| now < t)
        {
            return;
        }
        let Some((node, version)) = self.control_target(
            api::INIT_PRODUCER_ID,
            protocol::INIT_PRODUCER_ID_VERSIONS,
            now,
        ) else {
            return;
        };
        let corr = self.client.next_correlation_id();
        match protocol::encode_init_producer_id_request(version, corr, &self.cfg.client_id) {
            Ok(frame) => {
                self.client.send(ClientRequest::new(node, corr, frame), now);
                self.control_in_flight
                    .insert(corr, Control::InitProducerId { version });
                self.idem.init_in_flight = true;
            }
            Err(e) => log::error!("init producer id request: {e}"),
        }
    }

    pub(super) fn handle_init_producer_id(&mut self, version: i16, frame: &[u8], now: Instant) {
        match protocol::decode_init_producer_id_response(version, frame) {
            Ok(resp) => match resp.error {
                None => {
                    log::info!(
                        "producer id {} epoch {}",
                        resp.producer_id,
                        resp.producer_epoch
                    );
                    self.idem.init_in_flight = false;
                    self.idem.init_failures = 0;
                    self.idem.init_backoff_until = None;
                    self.idem.producer_id = Some((resp.producer_id, resp.producer_epoch));
                }
                Some(err) if err.is_retriable() => {
                    log::warn!("InitProducerId: {err}");
                    self.init_producer_id_failed(now, err.invalidates_metadata());
                }
                Some(err) => {
                    // Not retriable (authorization, an invalid request, an unknown server
                    // error): asking again cannot heal it, so the producer fails fast.
                    log::error!("InitProducerId refused: {err}; every record fails with it");
                    self.idem.init_in_flight = false;
                    self.fatal = Some(ProduceError::Broker(err));
                }
            },
            Err(e) => {
                log::warn!("InitProducerId: {e}");
                self.init_producer_id_failed(now, false);
            }
        }
    }

    /// An InitProducerId attempt failed in a way that may heal: the next one waits out the retry
    /// backoff, growing with each failure in a row.
    pub(super) fn init_producer_id_failed(&mut self, now: Instant, stale_metadata: bool) {
        self.idem.init_in_flight = false;
        if stale_metadata {
            self.meta.due = true;
        }
        let b = self.retry.backoff(self.idem.init_failures, &mut self.rng);
        self.idem.init_failures = self.idem.init_failures.saturating_add(1);
        self.idem.init_backoff_until = Some(now.checked_add(b).unwrap_or(now));
    }

    /// Once the producer is fatally failed: every queued batch fails with the error, the
    /// accumulator refuses new records with it, and what it holds fails too.
    pub(super) fn fail_fatally(&mut self) {
        let Some(err) = self.fatal.clone() else {
            return;
        };
        let mut failed: Vec<Batch> = Vec::new();
        let mut waiting = Vec::new();
        {
            let acc = self.acc.clone();
            let mut st = acc.lock();
            if st.fatal.is_none() {
                st.fatal = Some(err.clone());
            }
            for t in st.topics.values_mut() {
                waiting.extend(t.waiting.drain(..));
                for p in t.partitions.iter_mut() {
                    if let Some(b) = p.open.take() {
                        failed.push(b);
                    }
                }
            }
        }
        for t in self.topics.values_mut() {
            for p in t.partitions.iter_mut() {
                while let Some(b) = p.batches.pop_front() {
                    failed.push(b);
                }
            }
        }
        for b in failed {
            self.fail_batch(None, b, err.clone());
        }
        for p in waiting {
            self.pool.release(p.reserved);
            p.completion.complete(Err(err.clone()));
        }
        self.acc_empty = true;
    }

    /// Gives back the sequence numbers of a batch the broker refused for good (a non-retriable
    /// error in its response: nothing was appended), so that the partition's later batches carry
    /// the sequences the broker still expects instead of a gap that each would fail on with
    /// OUT_OF_ORDER_SEQUENCE_NUMBER (Kafka's `adjustSequencesDueToFailedBatch`): every later batch,
    /// queued or in flight, moves down by the refused batch's record count and is re-stamped
    /// before it is next sent; those in flight come back OUT_OF_ORDER_SEQUENCE_NUMBER and are
    /// resent in order.
    pub(super) fn release_sequence(&mut self, tp: &TopicPartition, b: &Batch) {
        let Some(seq) = b.base_sequence else {
            return;
        };
        let n = b.records;
        let after = |s: i32| s.wrapping_sub(seq) > 0;
        let Some(p) = self.partition_mut(&tp.topic, tp.partition) else {
            return;
        };
        for s in p.in_flight.iter_mut() {
            if *s >= 0 && after(*s) {
                *s = s.wrapping_sub(n);
            }
        }
        for q in p.batches.iter_mut() {
            if let Some(s) = q.base_sequence.filter(|&s| after(s)) {
                q.base_sequence = Some(s.wrapping_sub(n));
                q.restamp = true;
            }
        }
        if after(p.next_sequence) || p.next_sequence == seq.wrapping_add(n) {
            p.next_sequence = p.next_sequence.wrapping_sub(n);
        }
        for inflight in self.produce_in_flight.values_mut() {
            for (qtp, q) in inflight.batches.iter_mut() {
                if qtp != tp {
                    continue;
                }
                if let Some(s) = q.base_sequence.filter(|&s| after(s)) {
                    q.base_sequence = Some(s.wrapping_sub(n));
                    q.restamp = true;
                }
            }
        }
    }

    /// A batch that holds sequence numbers is given up with its outcome unknown: schedule the
    /// epoch bump and sequence reset (see `Idempotence::reset_due`).
    pub(super) fn abandon_sequence(&mut self, b: &Batch) {
        if self.cfg.enable_idempotence && b.base_sequence.is_some() {
            self.idem.reset_due = true;
        }
    }

    /// Carries out a due sequence reset once no produce request is in flight: forget the producer
    /// id (a new InitProducerId follows), restart every partition at sequence 0, and mark queued
    /// batches that were stamped under the old id for re-stamping when they are next sent (in
    /// queue order, which is sequence order).
    pub(super) fn maybe_reset_sequences(&mut self) {
        if !self.idem.reset_due || !self.produce_in_flight.is_empty() {
            return;
        }
        log::warn!("sequences restart at 0 under a new producer id");
        self.idem.producer_id = None;
        for t in self.topics.values_mut() {
            for p in t.partitions.iter_mut() {
                p.next_sequence = 0;
                p.in_flight.clear();
                for b in p.batches.iter_mut() {
                    b.base_sequence = None;
                    b.restamp = false;
                }
            }
        }
        self.idem.reset_due = false;
    }
}
