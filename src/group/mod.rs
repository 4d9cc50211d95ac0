//! Connection groups after metaq/gecko: `n` connections per address under one name, shared by
//! reference count, kept alive by heartbeats and healed by a paced reconnect manager, over the
//! [`NetworkClient`](crate::client::NetworkClient) (each member is one of its nodes).
//!
//! - [`GroupClient`]: groups, selection, sharing, heartbeats, reconnects, events, metrics.
//! - [`Heartbeat`]: the heartbeat protocol; [`EchoHeartbeat`] for the harness's echo protocol,
//!   `KafkaHeartbeat` (ApiVersions, feature `kafka`) for Kafka brokers, [`MirrorHeartbeat`] for
//!   peers that return frames byte for byte (the simulated network's echo).
//! - [`GroupConfig`]: `heartbeat.interval.ms`, `heartbeat.timeout.ms`, `heartbeat.max.failures`,
//!   `reconnect.max.concurrent`, `reconnect.max.attempts`, `group.selection`.

mod config;
mod heartbeat;
mod manager;

pub use config::{GroupConfig, Selection};
#[cfg(feature = "kafka")]
pub use heartbeat::KafkaHeartbeat;
pub use heartbeat::{EchoHeartbeat, Heartbeat, MirrorHeartbeat};
pub use manager::{
    DownReason, GroupClient, GroupError, GroupEvent, GroupEventKind, GroupMetrics, MemberState,
};
