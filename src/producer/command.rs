//! What application threads send to the network thread (shared by the accumulator, which seals
//! batches, and the engine, which takes them).

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::accumulator::Batch;

/// What application threads send to the network thread.
// Nearly every command is a `Batch`; boxing it would add an allocation per batch to spare the rare
// flush and close a few bytes of channel slot.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// A batch that filled up, sealed by the thread that appended to it (sent while it held the
    /// accumulator's lock: see [`Engine::collect`]).
    Batch {
        topic: Arc<str>,
        partition: i32,
        batch: Batch,
    },
    Flush(Sender<()>),
    /// A `Producer::metrics` call waiting for a snapshot.
    Metrics(Sender<crate::metrics::ProducerMetrics>),
    Close(Instant, Sender<()>),
}
