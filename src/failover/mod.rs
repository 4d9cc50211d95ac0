//! Failover policies above the [`NetworkClient`](crate::client::NetworkClient).
//!
//! - [`BootstrapFailover`]: RocketMQ's name-server selection applied to bootstrap servers: start at
//!   a random index, stay on the chosen address while it is healthy, move round robin to the next
//!   on failure, reselect when the chosen address leaves an updated list.

mod bootstrap;

pub use bootstrap::BootstrapFailover;
