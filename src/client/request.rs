//! Requests handed to the [`NetworkClient`](super::NetworkClient) and their single completion.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::connection_states::ConnectionState;
use super::node::NodeId;
use crate::net::{DisconnectReason, SendError};

/// A completion callback, called once with the request's response during the `poll` that
/// completes it.
pub type Callback = Box<dyn FnOnce(&ClientResponse) + Send>;

/// A request for one node.
///
/// Take the correlation id from [`NetworkClient::next_correlation_id`](super::NetworkClient::next_correlation_id)
/// and write it into `frame` where the protocol wants it (Kafka: the request header); the client
/// checks the response's correlation id against it.
pub struct ClientRequest {
    /// Destination node.
    pub node: NodeId,
    /// The correlation id the client assigned.
    pub correlation_id: i32,
    /// The encoded request, without the 4-byte length prefix (the Selector writes it).
    pub frame: Bytes,
    /// Whether a response is expected. A request without one (Kafka `acks=0`) completes with
    /// [`Outcome::Sent`] once it has fully left.
    pub expect_response: bool,
    /// Overrides `request.timeout.ms` for this request.
    pub timeout: Option<Duration>,
    /// An opaque value handed back in the response (for the caller's bookkeeping).
    pub tag: u64,
    /// Called with the response when the request completes.
    pub callback: Option<Callback>,
}

impl fmt::Debug for ClientRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRequest")
            .field("node", &self.node)
            .field("correlation_id", &self.correlation_id)
            .field("len", &self.frame.len())
            .field("expect_response", &self.expect_response)
            .field("timeout", &self.timeout)
            .field("tag", &self.tag)
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

impl ClientRequest {
    /// A request that expects a response, with the default timeout and no callback.
    pub fn new(node: NodeId, correlation_id: i32, frame: Bytes) -> Self {
        ClientRequest {
            node,
            correlation_id,
            frame,
            expect_response: true,
            timeout: None,
            tag: 0,
            callback: None,
        }
    }

    /// Sets whether a response is expected.
    pub fn expect_response(mut self, yes: bool) -> Self {
        self.expect_response = yes;
        self
    }

    /// Overrides the request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the caller's tag.
    pub fn tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// Sets the completion callback.
    pub fn on_complete(mut self, f: impl FnOnce(&ClientResponse) + Send + 'static) -> Self {
        self.callback = Some(Box::new(f));
        self
    }
}

/// Why a connection was lost under a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The Selector closed the channel (peer closed, reset, invalid frame, idle expiry, ...).
    Transport(DisconnectReason),
    /// A response's correlation id did not match the oldest in-flight request's; the connection was
    /// closed rather than left desynchronised (apache/kafka #7251).
    CorrelationMismatch {
        /// The oldest in-flight request's correlation id.
        expected: i32,
        /// What the response carried (`None`: too short to carry one).
        actual: Option<i32>,
    },
    /// Another request on the connection timed out, so the connection was closed.
    RequestTimeout,
    /// The connection did not become Ready within the setup timeout.
    SetupTimeout,
    /// The handshake hook rejected the connection.
    HandshakeFailed,
    /// [`NetworkClient::disconnect`](super::NetworkClient::disconnect) was called.
    Local,
    /// [`NetworkClient::remove_node`](super::NetworkClient::remove_node) removed the node.
    NodeRemoved,
}

impl fmt::Display for DisconnectCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectCause::Transport(r) => write!(f, "{r}"),
            DisconnectCause::CorrelationMismatch { expected, actual } => write!(
                f,
                "response correlation id {actual:?} does not match expected {expected}"
            ),
            DisconnectCause::RequestTimeout => {
                write!(f, "another request on the connection timed out")
            }
            DisconnectCause::SetupTimeout => write!(f, "connection setup timed out"),
            DisconnectCause::HandshakeFailed => write!(f, "handshake failed"),
            DisconnectCause::Local => write!(f, "disconnected locally"),
            DisconnectCause::NodeRemoved => write!(f, "the node was removed"),
        }
    }
}

impl DisconnectCause {
    /// Whether the connection failed authentication: the handshake hook rejected it, or its TLS
    /// handshake failed (a certificate that is expired, untrusted or for another host; a peer that
    /// does not speak TLS). Kafka reports these as an `AuthenticationException`: non-retriable for
    /// the request, and the node's next attempt still waits for the reconnect backoff.
    pub fn is_authentication_failure(&self) -> bool {
        match self {
            DisconnectCause::HandshakeFailed => true,
            DisconnectCause::Transport(r) => r.is_handshake_failure(),
            _ => false,
        }
    }
}

impl std::error::Error for DisconnectCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DisconnectCause::Transport(r) => Some(r),
            _ => None,
        }
    }
}

/// A request that failed without touching the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalError {
    /// The node is not known to the client.
    UnknownNode,
    /// The node is not Ready (call `ready` and poll until it is).
    NotReady(ConnectionState),
    /// The Selector refused the frame (too large, ...).
    Rejected(SendError),
    /// The correlation id is already in flight on the node.
    DuplicateCorrelationId,
}

impl fmt::Display for LocalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalError::UnknownNode => write!(f, "unknown node"),
            LocalError::NotReady(s) => write!(f, "node not ready ({s:?})"),
            LocalError::Rejected(e) => write!(f, "send refused: {e}"),
            LocalError::DuplicateCorrelationId => write!(f, "correlation id already in flight"),
        }
    }
}

impl std::error::Error for LocalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LocalError::Rejected(e) => Some(e),
            _ => None,
        }
    }
}

/// How a request completed. Every request gets exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The response frame (without its length prefix).
    Response(Bytes),
    /// The request expected no response and has fully left.
    Sent,
    /// The connection was lost before a response arrived.
    Disconnected(DisconnectCause),
    /// The request passed its deadline.
    TimedOut,
    /// The request failed locally and never reached the network.
    LocalError(LocalError),
}

/// The completion of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// The node it was for.
    pub node: NodeId,
    /// Its correlation id.
    pub correlation_id: i32,
    /// The caller's tag.
    pub tag: u64,
    /// Time from `send` to completion.
    pub latency: Duration,
    /// The outcome.
    pub outcome: Outcome,
}

/// An [`Outcome`] with a response's frame borrowed: what
/// [`NetworkClient::handle_with`](super::NetworkClient::handle_with) hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeRef<'a> {
    /// The response frame (without its length prefix), valid until the next poll.
    Response(&'a [u8]),
    /// The request expected no response and has fully left.
    Sent,
    /// The connection was lost before a response arrived.
    Disconnected(DisconnectCause),
    /// The request passed its deadline.
    TimedOut,
    /// The request failed locally and never reached the network.
    LocalError(LocalError),
}

impl OutcomeRef<'_> {
    /// The owned outcome; a response's frame is copied.
    pub fn to_owned(self) -> Outcome {
        match self {
            OutcomeRef::Response(frame) => Outcome::Response(Bytes::copy_from_slice(frame)),
            OutcomeRef::Sent => Outcome::Sent,
            OutcomeRef::Disconnected(c) => Outcome::Disconnected(c),
            OutcomeRef::TimedOut => Outcome::TimedOut,
            OutcomeRef::LocalError(e) => Outcome::LocalError(e),
        }
    }
}

impl Outcome {
    /// The outcome with its response's frame borrowed.
    pub fn as_ref(&self) -> OutcomeRef<'_> {
        match self {
            Outcome::Response(frame) => OutcomeRef::Response(frame),
            Outcome::Sent => OutcomeRef::Sent,
            Outcome::Disconnected(c) => OutcomeRef::Disconnected(*c),
            Outcome::TimedOut => OutcomeRef::TimedOut,
            Outcome::LocalError(e) => OutcomeRef::LocalError(*e),
        }
    }
}

/// The completion of one request with its response's frame borrowed: a [`ClientResponse`] as
/// [`NetworkClient::handle_with`](super::NetworkClient::handle_with) hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion<'a> {
    /// The node it was for.
    pub node: NodeId,
    /// Its correlation id.
    pub correlation_id: i32,
    /// The caller's tag.
    pub tag: u64,
    /// Time from `send` to completion.
    pub latency: Duration,
    /// The outcome.
    pub outcome: OutcomeRef<'a>,
}

impl Completion<'_> {
    /// The owned completion; a response's frame is copied (one allocation).
    pub fn to_owned(self) -> ClientResponse {
        ClientResponse {
            node: self.node,
            correlation_id: self.correlation_id,
            tag: self.tag,
            latency: self.latency,
            outcome: self.outcome.to_owned(),
        }
    }
}

impl ClientResponse {
    /// This completion with its response's frame borrowed.
    pub fn as_completion(&self) -> Completion<'_> {
        Completion {
            node: self.node,
            correlation_id: self.correlation_id,
            tag: self.tag,
            latency: self.latency,
            outcome: self.outcome.as_ref(),
        }
    }
}
