//! The handshake hook: what runs between TCP connect and Ready (Kafka's ApiVersions exchange, a
//! SASL exchange, ...).

use bytes::Bytes;

use super::node::NodeId;

/// What the hook wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeStep {
    /// The connection is Ready.
    Done,
    /// Send this request (with the correlation id the hook was given) and call back with its
    /// response.
    Send(Bytes),
    /// Reject the connection: it is closed and the node goes to `HandshakeFailed`.
    Fail(String),
}

/// A handshake run on every new connection before it is Ready. Handshake requests go through the
/// same in-flight bookkeeping as other requests (setup timeout, disconnects), but their completions
/// are given to the hook, not to the caller of `poll`.
pub trait Handshake {
    /// A connection to `node` is established. `correlation_id` is the id to write into a request,
    /// should the hook send one.
    fn start(&mut self, node: NodeId, correlation_id: i32) -> HandshakeStep;

    /// The response to the hook's last request. `correlation_id` is the id for a next request.
    fn on_response(&mut self, node: NodeId, response: Bytes, correlation_id: i32) -> HandshakeStep;

    /// The connection to `node` was lost or aborted during or after the handshake.
    fn on_disconnect(&mut self, _node: NodeId) {}

    /// How long the session the last completed handshake (or re-authentication) of `node`'s
    /// connection established may last (KIP-368's session lifetime). The client asks right after
    /// each `Done`; with `Some`, it re-authenticates the connection in band at a jittered point
    /// between 85 % and 95 % of it (see [`reauthenticate`](Self::reauthenticate)). `None` (the
    /// default): the session never ends.
    fn session_lifetime(&self, _node: NodeId) -> Option<std::time::Duration> {
        None
    }

    /// Starts re-authenticating `node`'s Ready connection in band (KIP-368): called once nothing
    /// of the caller's is in flight on it; new requests wait meanwhile. Steps go through
    /// [`on_response`](Self::on_response) as in a first handshake: `Done` makes the connection
    /// Ready again (with a new [`session_lifetime`](Self::session_lifetime)), `Fail` closes it
    /// as a failed handshake. The default (no session to renew): `Done`.
    fn reauthenticate(&mut self, _node: NodeId, _correlation_id: i32) -> HandshakeStep {
        HandshakeStep::Done
    }
}

/// No handshake: connections are Ready as soon as TCP connects.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHandshake;

impl Handshake for NoHandshake {
    fn start(&mut self, _node: NodeId, _correlation_id: i32) -> HandshakeStep {
        HandshakeStep::Done
    }

    fn on_response(&mut self, _node: NodeId, _response: Bytes, _c: i32) -> HandshakeStep {
        HandshakeStep::Done
    }
}
