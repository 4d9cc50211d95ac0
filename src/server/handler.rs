//! The two handler traits, and the [`Responder`] of the deferred mode.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use bytes::Bytes;

use crate::net::{ChannelId, DisconnectReason, FrameWriter, SelectorWaker};

/// A handler that answers each request during the poll that received it (the inline mode of a
/// [`Server`](super::Server)).
///
/// Closures `FnMut(ChannelId, Bytes) -> Option<Bytes>` are handlers.
pub trait Handler {
    /// Handles one request frame (the payload, without its length prefix) of connection `conn`.
    /// Returns the response payload, staged at once behind the connection's earlier responses, or
    /// `None` when the request has no response (as Kafka's `acks=0` produce).
    fn handle(&mut self, conn: ChannelId, request: Bytes) -> Option<Bytes>;

    /// Called when a connection is accepted, before any of its requests.
    fn connected(&mut self, conn: ChannelId, peer: SocketAddr) {
        let _ = (conn, peer);
    }

    /// Called once when a connection is gone, after all of its requests.
    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        let _ = (conn, reason);
    }
}

impl<F> Handler for F
where
    F: FnMut(ChannelId, Bytes) -> Option<Bytes>,
{
    fn handle(&mut self, conn: ChannelId, request: Bytes) -> Option<Bytes> {
        self(conn, request)
    }
}

/// A handler that reads each request in place and writes its response straight into the
/// connection's send buffer, during the poll that received the request (the direct mode of a
/// [`Server`](super::Server), [`Server::direct`](super::Server::direct)): no buffer is allocated,
/// split or reference-counted per request.
///
/// Closures `FnMut(ChannelId, &[u8], &mut FrameWriter<'_>) -> bool` are direct handlers.
pub trait DirectHandler {
    /// Handles one request frame (the payload, without its length prefix) of connection `conn`,
    /// borrowed from the connection's read buffer: copy what you need to keep
    /// ([`Bytes::copy_from_slice`]). Writes the response payload into `response` (the server
    /// writes the length prefix) and returns `true`; returns `false` when the request has no
    /// response (what was written is dropped then).
    fn handle(&mut self, conn: ChannelId, request: &[u8], response: &mut FrameWriter<'_>) -> bool;

    /// Called when a connection is accepted, before any of its requests.
    fn connected(&mut self, conn: ChannelId, peer: SocketAddr) {
        let _ = (conn, peer);
    }

    /// Called once when a connection is gone, after all of its requests.
    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        let _ = (conn, reason);
    }
}

impl<F> DirectHandler for F
where
    F: FnMut(ChannelId, &[u8], &mut FrameWriter<'_>) -> bool,
{
    fn handle(&mut self, conn: ChannelId, request: &[u8], response: &mut FrameWriter<'_>) -> bool {
        self(conn, request, response)
    }
}

/// A handler whose responses are produced later, possibly on another thread (the deferred mode of
/// a [`Server`](super::Server)).
///
/// The server hands each request over with a [`Responder`]; the connection stays muted and gets its
/// next request only once the response to this one has fully left (or the responder was consumed
/// without a response). Closures `FnMut(ChannelId, Bytes, Responder)` are deferred handlers.
pub trait DeferredHandler {
    /// Takes one request frame of connection `conn`; answer it through `responder`, now or later,
    /// from any thread.
    fn handle(&mut self, conn: ChannelId, request: Bytes, responder: Responder);

    /// Called when a connection is accepted, before any of its requests.
    fn connected(&mut self, conn: ChannelId, peer: SocketAddr) {
        let _ = (conn, peer);
    }

    /// Called once when a connection is gone. Responders still out for it are answered into the
    /// void: the server counts and drops their replies.
    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        let _ = (conn, reason);
    }
}

impl<F> DeferredHandler for F
where
    F: FnMut(ChannelId, Bytes, Responder),
{
    fn handle(&mut self, conn: ChannelId, request: Bytes, responder: Responder) {
        self(conn, request, responder)
    }
}

/// What a [`Responder`] delivers back to the server.
#[derive(Debug)]
pub(crate) enum Reply {
    Respond(Bytes),
    NoResponse,
    Close,
}

/// One reply on its way from a [`Responder`] to the server's poll.
#[derive(Debug)]
pub(crate) struct Completion {
    pub conn: ChannelId,
    pub ticket: u64,
    pub reply: Reply,
}

/// The state shared between a server and its responders: whether a wake-up is already on its way
/// (so a burst of replies costs one eventfd write, not one per reply), and the waker.
#[derive(Debug)]
struct WakeShared {
    pending: AtomicBool,
    waker: SelectorWaker,
}

/// The server's end of the reply path: hands out responders, drains their replies.
#[derive(Debug)]
pub struct ReplyPath {
    tx: mpsc::Sender<Completion>,
    rx: mpsc::Receiver<Completion>,
    shared: Arc<WakeShared>,
}

impl ReplyPath {
    pub(crate) fn new(waker: SelectorWaker) -> Self {
        let (tx, rx) = mpsc::channel();
        ReplyPath {
            tx,
            rx,
            shared: Arc::new(WakeShared {
                pending: AtomicBool::new(false),
                waker,
            }),
        }
    }

    pub(crate) fn responder(&self, conn: ChannelId, ticket: u64) -> Responder {
        Responder {
            conn,
            ticket,
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
            done: false,
        }
    }

    /// Re-arms the wake-up and returns the next reply, if one is there. Call until `None`.
    ///
    /// The flag is cleared before the channel is read: a responder sends, then sets the flag and
    /// wakes if it was clear, so a reply sent after this point always brings a wake-up.
    pub(crate) fn try_next(&self, first: bool) -> Option<Completion> {
        if first {
            self.shared.pending.store(false, Ordering::SeqCst);
        }
        self.rx.try_recv().ok()
    }
}

/// The server's side has gone: the [`Server`](super::Server) that issued a [`Responder`] was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerGone;

impl fmt::Display for ServerGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server that issued this responder is gone")
    }
}

impl std::error::Error for ServerGone {}

/// The ticket for one deferred request: answer it exactly once, from any thread.
///
/// Consuming it with [`respond`](Responder::respond), [`no_response`](Responder::no_response) or
/// [`close`](Responder::close) wakes the server's poll. A responder dropped without an answer
/// closes the connection (like Kafka's broker when a request handler fails): its client would
/// otherwise wait for a response that never comes while the connection stays muted.
#[derive(Debug)]
pub struct Responder {
    conn: ChannelId,
    ticket: u64,
    tx: mpsc::Sender<Completion>,
    shared: Arc<WakeShared>,
    done: bool,
}

impl Responder {
    /// The connection the request came from.
    pub fn conn(&self) -> ChannelId {
        self.conn
    }

    /// Sends `response` (a payload; the server writes its length prefix) on the request's
    /// connection, behind every earlier response of that connection.
    ///
    /// # Errors
    /// [`ServerGone`] when the server was dropped; the response is lost then.
    pub fn respond(mut self, response: Bytes) -> Result<(), ServerGone> {
        self.deliver(Reply::Respond(response))
    }

    /// Finishes the request without a response; the connection gets its next request.
    ///
    /// # Errors
    /// [`ServerGone`] when the server was dropped.
    pub fn no_response(mut self) -> Result<(), ServerGone> {
        self.deliver(Reply::NoResponse)
    }

    /// Closes the request's connection at once; staged responses are dropped.
    ///
    /// # Errors
    /// [`ServerGone`] when the server was dropped.
    pub fn close(mut self) -> Result<(), ServerGone> {
        self.deliver(Reply::Close)
    }

    fn deliver(&mut self, reply: Reply) -> Result<(), ServerGone> {
        self.done = true;
        self.tx
            .send(Completion {
                conn: self.conn,
                ticket: self.ticket,
                reply,
            })
            .map_err(|_| ServerGone)?;
        if !self.shared.pending.swap(true, Ordering::SeqCst) {
            // An eventfd write practically never fails; if it did, the reply would be picked up by
            // the next poll that returns for another reason (`run_until` polls at least every
            // `RUN_TICK`).
            let _ = self.shared.waker.wake();
        }
        Ok(())
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.deliver(Reply::Close);
        }
    }
}
