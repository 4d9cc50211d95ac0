//! Failover policies above the [`NetworkClient`](crate::client::NetworkClient).
//!
//! - [`BootstrapFailover`]: RocketMQ's name-server selection applied to bootstrap servers: start at
//!   a random index, stay on the chosen address while it is healthy, move round robin to the next
//!   on failure, reselect when the chosen address leaves an updated list.
//! - [`FailoverTransport`]: one logical connection over a list of servers, ActiveMQ's `failover:`
//!   transport on simulated-time-testable rules (see its docs).
//! - [`FailoverUri`]: ActiveMQ's `failover:(tcp://a:1,tcp://b:2)?key=value` URI and its options.

mod bootstrap;
mod transport;
mod uri;

pub use bootstrap::BootstrapFailover;
pub use transport::{
    FailoverEvent, FailoverMetrics, FailoverOutcome, FailoverRequest, FailoverResponse,
    FailoverTransport,
};
pub use uri::{
    FailoverOptions, FailoverUri, ServerUri, UriError, UriProblem, MAX_URI_LEN, OPTION_KEYS,
};
