//! Test support shared by mqnet's test binaries, benches and harness tests (h2 keeps its mock peer
//! in `h2-support` for the same reason: one copy of each fixture, compiled once).
//!
//! | module | what it holds |
//! |---|---|
//! | [`jitter`] | jitter sources with a fixed sample, so backoffs and waits are exact |
//! | [`selector_loop`] | bounded poll loops over real Selectors, an in-Selector echo server, raw `std::net` peers, payload patterns |
//! | [`client_loop`] | a Selector test server on its own thread with scripted modes, NetworkClient helpers and bounded client loops |
//! | [`closed_loop`] | a closed-loop rig (client under test, echo Selector, request ring) for the zero-allocation binaries |
//! | [`echo`] | a one-Selector loopback echo, shared by the zero-allocation test and the criterion bench |
//! | [`fake_broker`] | a scripted fake Kafka broker over `mqnet::server::Server` that checks CRCs and idempotent sequences |
//!
//! Every loop is bounded in iterations and in time; running out of either panics with a message
//! naming what was awaited.

pub mod client_loop;
pub mod closed_loop;
pub mod echo;
pub mod fake_broker;
pub mod jitter;
pub mod selector_loop;
