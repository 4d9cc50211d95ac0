//! The request layer: [`NetworkClient`] over the [`Selector`](crate::net::Selector) — per-node
//! connection states, reconnect backoff with jitter, connection-setup timeouts, in-flight requests
//! with correlation checks, and request timeouts.
//!
//! The state machines ([`ClusterConnectionStates`], [`ExponentialBackoff`]) take `now` and never
//! touch a socket; the client reaches the network only through the [`Transport`](crate::net::Transport)
//! trait, so the whole client runs on simulated time against `mqnet::sim::SimNetwork` in tests.

mod backoff;
mod config;
mod connection_states;
mod handshake;
mod metrics;
mod network_client;
mod node;
mod request;
mod sasl;
mod security;

pub use backoff::{ExponentialBackoff, JitterSource, SplitMix64};
pub use config::{
    parse_bool, parse_ms, parse_properties, parse_usize, ClientConfig, ConfigError, ResponseOrder,
};
pub use connection_states::{ClusterConnectionStates, ConnectionState, NodeConnection};
pub use handshake::{Handshake, HandshakeStep, NoHandshake};
pub use metrics::{ClientMetrics, NodeMetrics, NodeSnapshot};
pub use network_client::{kafka_correlation_id, CorrelationReader, NetworkClient};
pub use node::{split_host_port, NodeId, Resolver, SystemResolver};
pub use request::{
    Callback, ClientRequest, ClientResponse, Completion, DisconnectCause, LocalError, Outcome,
    OutcomeRef,
};
pub use sasl::{SaslSettings, SASL_MECHANISMS};
pub use security::{SecurityConfig, SecurityProtocol};
