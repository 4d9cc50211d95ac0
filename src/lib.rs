//! # mqnet
//!
//! A networking core for message-queue clients, built by hand on a single-threaded mio reactor.
//! The state machines are sans-IO: they take the caller's `now` and bytes, and a thin driver does
//! the syscalls, so every layer above the sockets also runs on simulated time in tests.
//!
//! # The map
//!
//! Layers, bottom-up. Each calls only the one below it; nothing above [`net`] touches a socket.
//!
//! ```text
//!   binaries   mqnet-bench                  mqnet-broker
//!              producer                     broker
//!              protocol (Kafka codec)         |
//!              failover, group                |
//!              client                       server
//!   net        Selector (sockets), Transport trait;  sim: a simulated Transport
//! ```
//!
//! - [`net`]: length-prefixed frames, channels, send queues and the [`net::Selector`], which owns
//!   every socket; a per-channel transport layer (plaintext, or TLS with rustls driven sans-IO,
//!   feature `tls`); the [`net::Transport`] trait that the layers above are generic over.
//! - [`client`]: the [`client::NetworkClient`]: per-node connection states, reconnect backoff,
//!   connection-setup timeouts, in-flight requests with correlation checks, request timeouts;
//!   `security.protocol`, the `ssl.*` and `sasl.*` settings. Polling is `poll_io(timeout, now)`
//!   (I/O) then `handle(now)` with the caller's time after the I/O: one clock, the caller's;
//!   `handle_with` hands completions out with responses borrowed from the read buffer.
//! - [`failover`]: policies above the client: bootstrap-server selection
//!   ([`failover::BootstrapFailover`]) and one logical connection over a list of servers
//!   ([`failover::FailoverTransport`], ActiveMQ's `failover:` URI).
//! - [`group`]: connection groups over the client (n connections per address, reference counted),
//!   with heartbeats and a paced reconnect manager.
//! - [`protocol`] (feature `kafka`): the Kafka wire codec: hand-written record batches and Produce
//!   requests on the hot path, length-checked decoders for every response.
//! - [`producer`] (feature `kafka`): the idempotent Kafka producer: accumulator, sender engine,
//!   delivery futures and callbacks.
//! - [`server`]: the server role beside the client on [`net`]: accept, read request frames, hand
//!   them to a handler, write responses back in request order per connection.
//! - `broker` (feature `broker`): an embedded strict Kafka-subset broker on the server role, with
//!   an on-disk log, Kafka's idempotence checks, SASL, TLS listeners, and RocketMQ-style
//!   master/slave replication (`broker::ha`).
//! - [`metrics`]: Kafka-named metrics (sampled windows, HDR latencies), the librdkafka-shaped
//!   statistics document, and the optional `metrics`-crate facade.
//! - `sim` (feature `sim`, and the crate's own unit tests): a simulated network implementing
//!   [`net::Transport`], with scripted servers and injected faults, on simulated time.
//!
//! # Cargo features
//!
//! - `kafka` (default): [`protocol`] and [`producer`] (pulls in `kafka-protocol`, `crc32c`,
//!   `crossbeam-channel`, and `sha2`, `hmac`, `pbkdf2`, `base64` for SASL SCRAM).
//! - `compression` (default): `gzip`, `snappy`, `lz4` and `zstd`, the record batch codecs of
//!   `compression.type` (pulls in `flate2`, `snap`, `lz4_flex`, `zstd`); each is a feature of its
//!   own.
//! - `broker` (off): the `broker` module; implies `kafka`.
//! - `tls` (off): TLS in the transport layer (`rustls` with `ring`); `security.protocol=SSL` and
//!   `SASL_SSL` need it. The harness and the broker binary turn it on.
//! - `metrics-facade` (off): publishes [`metrics`] through the `metrics` crate (0.24), so any of
//!   its exporters (Prometheus, StatsD, ...) can serve them.
//! - `sim` (off): the `sim` module, for tests of code built on mqnet. A default build does not
//!   compile it.
//!
//! # Workspace
//!
//! - `bench/` (`mqnet-bench`): the loopback benchmark harness; tokio, clap and librdkafka live
//!   there and never reach the library.
//! - `broker-bin/` (`mqnet-broker`): the broker as a process, with its interop and crash tests.
//! - `support/` (`mqnet-test-support`): fixtures shared by the test binaries and benches (fixed
//!   jitter, bounded loops, echo rigs, the scripted fake Kafka broker); a dev-dependency only.
//! - `fuzz/`: cargo-fuzz targets (frame decoding, failover URIs, Kafka responses and requests, the
//!   server's streams); outside the workspace, built by `cargo fuzz`.
//!
//! mqnet is Unix-only (it uses `MSG_NOSIGNAL` and `recv` into uninitialised buffer space).
#![deny(missing_docs)]
// The one `unsafe` block (`Channel::read_once`, reading into uninitialised buffer space) is
// allowed on its function, with its SAFETY comment.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(unreachable_pub, rust_2018_idioms)]
// A library does not print (it logs through `log`), and leaves no debugging or placeholder macro.
#![warn(clippy::dbg_macro, clippy::todo, clippy::unimplemented)]
#![warn(clippy::print_stdout, clippy::print_stderr)]
#![warn(clippy::manual_let_else, clippy::cast_lossless)]
#![cfg(unix)]

#[cfg(feature = "broker")]
pub mod broker;
pub mod client;
pub mod failover;
pub mod group;
pub mod metrics;
pub mod net;
#[cfg(feature = "kafka")]
pub mod producer;
#[cfg(feature = "kafka")]
pub mod protocol;
pub mod server;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

/// The README's example, compiled as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
