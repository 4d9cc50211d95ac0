//! # mqnet
//!
//! A networking core for message-queue clients, built by hand on a single-threaded mio reactor.
//!
//! Layers, bottom-up (each calls only the one below it):
//!
//! - [`net`]: length-prefixed frames, channels and the [`net::Selector`], the only code that touches
//!   sockets.
//! - [`client`]: the [`client::NetworkClient`]: per-node connection states, reconnect backoff,
//!   connection-setup timeouts, in-flight requests with correlation checks, request timeouts.
//! - [`group`]: connection groups over the client (n connections per address, reference counted),
//!   with heartbeats and a paced reconnect manager.
//!
//! mqnet is Unix-only (it uses `MSG_NOSIGNAL` and `recv` into uninitialised buffer space).
#![warn(missing_docs)]
#![cfg(unix)]

#[cfg(feature = "broker")]
pub mod broker;
pub mod client;
pub mod failover;
pub mod group;
pub mod net;
#[cfg(feature = "kafka")]
pub mod producer;
#[cfg(feature = "kafka")]
pub mod protocol;
pub mod server;
pub mod sim;

/// The README's example, compiled as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
