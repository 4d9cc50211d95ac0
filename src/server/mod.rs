//! The server role: a request/response server over the [`Selector`].
//!
//! A [`Server`] listens, accepts connections, reads request frames, hands each one to a handler and
//! writes the responses back **in request order per connection**. It exists for the benchmark
//! harness and for tests (a broker stand-in), and it is small enough to read in one sitting.
//!
//! Three handler modes:
//!
//! - **Direct** ([`Server::direct`], [`DirectHandler`]): the hot path. The handler reads each
//!   request as a slice borrowed from the connection's read buffer and writes its response
//!   straight into the connection's send buffer, while the poll that received the request is
//!   running; nothing is allocated, split or reference-counted per request. Responses leave in
//!   request order. A connection whose staged responses reach `max_staged_bytes` is muted until
//!   they drain below it.
//! - **Inline** ([`Server::inline`], [`Handler`]): the handler returns the response while the poll
//!   that received the request is running; it is staged at once. Requests of one connection are
//!   handled in arrival order, so responses leave in request order.
//! - **Deferred** ([`Server::deferred`], [`DeferredHandler`]): the handler gets a [`Responder`] and
//!   answers later, from any thread; the reply travels back through a channel and wakes the poll
//!   through the Selector's waker. As in Kafka's broker, a connection is muted once a request of it
//!   is received and unmuted once its response has fully left, so each connection has at most one
//!   request in process. The Selector delivers every whole frame it has buffered in one poll, so
//!   several requests of one connection can arrive together: they wait in a per-connection queue
//!   and are handed to the handler one at a time, in order.
//!
//! Protocol errors (a negative or oversized length prefix, garbage read as one) close only the
//! offending connection; the Selector reports them, and the server counts them in
//! [`ServerStats::invalid_frames`].
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use mqnet::net::ChannelId;
//! use mqnet::server::Server;
//!
//! let mut server = Server::inline(|_conn: ChannelId, req: Bytes| Some(req)).unwrap();
//! let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
//! let client = std::thread::spawn(move || {
//!     let mut s = std::net::TcpStream::connect(addr).unwrap();
//!     s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
//!     s.write_all(&[0, 0, 0, 4, b'p', b'i', b'n', b'g']).unwrap();
//!     let mut buf = [0u8; 8];
//!     s.read_exact(&mut buf).unwrap();
//!     buf
//! });
//! let deadline = Instant::now() + Duration::from_secs(10);
//! while !client.is_finished() && Instant::now() < deadline {
//!     server.poll(Some(Duration::from_millis(10))).unwrap();
//! }
//! assert_eq!(&client.join().unwrap(), &[0, 0, 0, 4, b'p', b'i', b'n', b'g']);
//! ```

mod handler;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::net::frame::HEADER_LEN;
use crate::net::split_frame;
use crate::net::ChannelMap;
use crate::net::{
    ChannelId, CloseMode, DisconnectReason, FrameWriter, ListenerId, Received, Selector,
    SelectorConfig, SelectorWaker, SendError, DEFAULT_BACKLOG,
};

use handler::{Completion, Reply, ReplyPath};
pub use handler::{DeferredHandler, DirectHandler, Handler, Responder, ServerGone};

/// The longest a [`Server::run_until`] poll blocks before it looks at its stop flag again.
pub const RUN_TICK: Duration = Duration::from_millis(100);

/// Configuration of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The configuration of the server's Selector: maximum frame size (the server's
    /// `socket.request.max.bytes`), staged-bytes bound per connection, read budget, idle expiry
    /// (which also ends connections that stall mid-frame), socket options of accepted sockets.
    pub selector: SelectorConfig,
    /// Accept backlog of the listening sockets.
    pub backlog: i32,
    /// Whether the handler's responses already start with their 4-byte length prefix (for
    /// handlers that encode straight into a send buffer). They are then staged with
    /// [`Selector::send_prefixed`], which checks the prefix and writes each response as one
    /// buffer instead of prefix + payload; a response whose prefix is wrong closes its connection.
    pub prefixed_responses: bool,
    /// TLS on every listener (feature `tls`): accepted connections run a server-side TLS session
    /// with this configuration (see [`crate::net::tls::server_config`]); `None` for plaintext.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<crate::net::tls::rustls::ServerConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            selector: SelectorConfig::default(),
            backlog: DEFAULT_BACKLOG,
            prefixed_responses: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Counters of a [`Server`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections gone, for any reason.
    pub closed: u64,
    /// Request frames handed to the handler.
    pub requests: u64,
    /// Responses staged for sending.
    pub responses: u64,
    /// Requests finished without a response.
    pub no_responses: u64,
    /// Connections closed because the peer sent an invalid length prefix.
    pub invalid_frames: u64,
    /// Connections closed because the server could not send a response (over the maximum frame
    /// size), or because a [`Responder`] asked for it or was dropped unanswered.
    pub closed_by_server: u64,
    /// Deferred replies that arrived for a connection that was already gone.
    pub stale_replies: u64,
    /// Times a connection's responses outran the staged-bytes bound and the connection was muted
    /// until they drained (inline mode).
    pub backpressured: u64,
}

/// Where a deferred-mode connection is with its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No request in process.
    Idle,
    /// The handler holds the request with this ticket.
    Processing(u64),
    /// The response was staged with this sequence number; waiting for it to leave.
    Sending(u64),
}

/// Per-connection state, kept in a [`ChannelMap`] by channel id.
#[derive(Debug)]
struct Conn {
    /// Deferred mode: requests received and not yet handed to the handler, in arrival order.
    queued: VecDeque<Bytes>,
    stage: Stage,
    /// Inline mode: responses the Selector refused (staged-bytes bound), in order; the connection
    /// is muted while any are here.
    backlog: VecDeque<Bytes>,
    muted: bool,
}

impl Conn {
    fn new() -> Self {
        Conn {
            queued: VecDeque::new(),
            stage: Stage::Idle,
            backlog: VecDeque::new(),
            muted: false,
        }
    }
}

/// Whether the Selector takes a frame of `wire_len` bytes (prefix included) on `id` now (its
/// staged-bytes rule: a frame always fits an empty queue, otherwise the queue must stay within the
/// bound).
fn fits(sel: &Selector, id: ChannelId, wire_len: usize) -> bool {
    let staged = sel.staged_bytes(id);
    staged == 0 || staged + wire_len <= sel.config().max_staged_bytes
}

mod sealed {
    use super::*;

    /// What dispatching one request produced.
    pub enum Outcome {
        Respond(Bytes),
        NoResponse,
        Pending,
    }

    /// The mode-specific half of a server; implemented by [`Inline`], [`Deferred`] and [`Direct`]
    /// only.
    pub trait Sealed {
        const DEFERRED: bool;
        /// Receives are borrowed and handled by [`direct`](Sealed::direct).
        const DIRECT: bool = false;
        #[inline]
        fn direct(&mut self, _conn: ChannelId, _req: &[u8], _out: &mut FrameWriter<'_>) -> bool {
            false
        }
        fn dispatch(
            &mut self,
            conn: ChannelId,
            request: Bytes,
            replies: &ReplyPath,
            ticket: u64,
        ) -> Outcome;
        fn connected(&mut self, conn: ChannelId, peer: SocketAddr);
        fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason);
    }
}

use sealed::Outcome;

/// How a [`Server`] hands requests to its handler: [`Direct`], [`Inline`] or [`Deferred`].
/// Sealed.
pub trait Mode: sealed::Sealed {}

/// The direct mode: wraps a [`DirectHandler`].
#[derive(Debug)]
pub struct Direct<D>(D);

impl<D: DirectHandler> sealed::Sealed for Direct<D> {
    const DEFERRED: bool = false;
    const DIRECT: bool = true;

    #[inline]
    fn direct(&mut self, conn: ChannelId, req: &[u8], out: &mut FrameWriter<'_>) -> bool {
        self.0.handle(conn, req, out)
    }

    fn dispatch(&mut self, _: ChannelId, _: Bytes, _: &ReplyPath, _: u64) -> Outcome {
        // Direct mode receives borrowed frames only; the Selector never hands it a `Bytes`.
        Outcome::NoResponse
    }

    fn connected(&mut self, conn: ChannelId, peer: SocketAddr) {
        self.0.connected(conn, peer);
    }

    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        self.0.disconnected(conn, reason);
    }
}

impl<D: DirectHandler> Mode for Direct<D> {}

/// The inline mode: wraps a [`Handler`].
#[derive(Debug)]
pub struct Inline<H>(H);

/// The deferred mode: wraps a [`DeferredHandler`].
#[derive(Debug)]
pub struct Deferred<D>(D);

impl<H: Handler> sealed::Sealed for Inline<H> {
    const DEFERRED: bool = false;

    #[inline]
    fn dispatch(&mut self, conn: ChannelId, request: Bytes, _: &ReplyPath, _: u64) -> Outcome {
        match self.0.handle(conn, request) {
            Some(r) => Outcome::Respond(r),
            None => Outcome::NoResponse,
        }
    }

    fn connected(&mut self, conn: ChannelId, peer: SocketAddr) {
        self.0.connected(conn, peer);
    }

    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        self.0.disconnected(conn, reason);
    }
}

impl<H: Handler> Mode for Inline<H> {}

impl<D: DeferredHandler> sealed::Sealed for Deferred<D> {
    const DEFERRED: bool = true;

    #[inline]
    fn dispatch(
        &mut self,
        conn: ChannelId,
        request: Bytes,
        replies: &ReplyPath,
        ticket: u64,
    ) -> Outcome {
        self.0
            .handle(conn, request, replies.responder(conn, ticket));
        Outcome::Pending
    }

    fn connected(&mut self, conn: ChannelId, peer: SocketAddr) {
        self.0.connected(conn, peer);
    }

    fn disconnected(&mut self, conn: ChannelId, reason: DisconnectReason) {
        self.0.disconnected(conn, reason);
    }
}

impl<D: DeferredHandler> Mode for Deferred<D> {}

/// A request/response server over a [`Selector`]; see the [module docs](self) for the two modes.
///
/// Drive it with [`poll`](Server::poll) in your own loop, or with [`run_until`](Server::run_until).
/// It is single-threaded like the Selector; only [`Responder`]s and the [`waker`](Server::waker)
/// cross threads.
#[derive(Debug)]
pub struct Server<M> {
    sel: Selector,
    mode: M,
    backlog: i32,
    prefixed: bool,
    listeners: Vec<ListenerId>,
    conns: ChannelMap<Conn>,
    /// Inline mode: connections with responses in their backlog. Direct mode: connections muted
    /// because their staged responses reached the bound.
    backlogged: Vec<ChannelId>,
    /// Direct mode: connections whose response could not be staged, closed after the handling.
    failed: Vec<(ChannelId, SendError)>,
    /// Direct mode: where responses to requests of connections already gone are written, and
    /// dropped.
    discard: Vec<u8>,
    /// Swapped with the Selector's received frames every poll, so the frames are ours to move.
    received: Vec<Received>,
    replies: ReplyPath,
    next_ticket: u64,
    stats: ServerStats,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<crate::net::tls::rustls::ServerConfig>>,
}

impl<H: Handler> Server<Inline<H>> {
    /// An inline-mode server with the default configuration, listening nowhere yet (see
    /// [`bind`](Server::bind)).
    ///
    /// # Errors
    /// The OS error of creating the Selector (epoll instance, waker).
    pub fn inline(handler: H) -> io::Result<Self> {
        Self::inline_with_config(handler, ServerConfig::default())
    }

    /// An inline-mode server with `config`.
    ///
    /// # Errors
    /// The OS error of creating the Selector (epoll instance, waker).
    pub fn inline_with_config(handler: H, config: ServerConfig) -> io::Result<Self> {
        Server::with_mode(Inline(handler), config)
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.mode.0
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.mode.0
    }
}

impl<D: DirectHandler> Server<Direct<D>> {
    /// A direct-mode server (see the [module docs](self)) with the default configuration,
    /// listening nowhere yet (see [`bind`](Server::bind)).
    ///
    /// # Errors
    /// The OS error of creating the Selector (epoll instance, waker).
    ///
    /// # Example
    /// ```
    /// use mqnet::net::{ChannelId, FrameWriter};
    /// use mqnet::server::Server;
    ///
    /// // Answers every request with its first four bytes (a Kafka-style correlation id).
    /// let server = Server::direct(|_c: ChannelId, req: &[u8], out: &mut FrameWriter<'_>| {
    ///     out.put_slice(req.get(..4).unwrap_or(&[]));
    ///     true
    /// })
    /// .unwrap();
    /// # drop(server);
    /// ```
    pub fn direct(handler: D) -> io::Result<Self> {
        Self::direct_with_config(handler, ServerConfig::default())
    }

    /// A direct-mode server with `config` (`prefixed_responses` does not apply: the server
    /// writes every prefix).
    ///
    /// # Errors
    /// The OS error of creating the Selector (epoll instance, waker).
    pub fn direct_with_config(handler: D, config: ServerConfig) -> io::Result<Self> {
        Server::with_mode(Direct(handler), config)
    }

    /// The handler.
    pub fn handler(&self) -> &D {
        &self.mode.0
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut D {
        &mut self.mode.0
    }
}

impl<D: DeferredHandler> Server<Deferred<D>> {
    /// A deferred-mode server with the default configuration, listening nowhere yet (see
    /// [`bind`](Server::bind)).
    ///
    /// # Errors
    /// The OS error of creating the Selector (epoll instance, waker).
    pub fn deferred(handler: D) -> io::Result<Self> {
        Self::deferred_with_config(handler, ServerConfig::default())
    }

    /// A deferred-mode server with `config`.
    ///
    /// # Errors
    /// The OS error of creating the Selector (epoll instance, waker).
    pub fn deferred_with_config(handler: D, config: ServerConfig) -> io::Result<Self> {
        Server::with_mode(Deferred(handler), config)
    }

    /// The handler.
    pub fn handler(&self) -> &D {
        &self.mode.0
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut D {
        &mut self.mode.0
    }
}

impl<M: Mode> Server<M> {
    fn with_mode(mode: M, config: ServerConfig) -> io::Result<Self> {
        let mut sel = Selector::with_config(config.selector)?;
        sel.set_borrowed_receives(M::DIRECT);
        // Only the deferred mode paces a connection's replies by their completions.
        sel.set_report_sends(M::DEFERRED);
        let replies = ReplyPath::new(sel.waker());
        Ok(Server {
            sel,
            mode,
            backlog: config.backlog,
            prefixed: config.prefixed_responses,
            listeners: Vec::new(),
            conns: ChannelMap::new(),
            backlogged: Vec::new(),
            failed: Vec::new(),
            discard: Vec::new(),
            received: Vec::new(),
            replies,
            next_ticket: 0,
            stats: ServerStats::default(),
            #[cfg(feature = "tls")]
            tls: config.tls,
        })
    }

    /// Listens on `addr` (port 0 picks a free port) and returns the bound address. A server may
    /// listen on several addresses.
    ///
    /// # Errors
    /// The OS error of creating, binding or listening.
    pub fn bind(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let id = self.sel.listen_with_backlog(addr, self.backlog)?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            self.sel
                .set_listener_tls(id, Some(tls.clone()))
                .map_err(io::Error::other)?;
        }
        self.listeners.push(id);
        self.sel.listener_addr(id).map_err(io::Error::other)
    }

    /// The address of the first listener, if any.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .first()
            .and_then(|id| self.sel.listener_addr(*id).ok())
    }

    /// Closes connection `id` at once, dropping its staged responses (a broker taking itself
    /// down, say); the handler's `disconnected` is called before this returns. Returns whether the
    /// connection was open.
    pub fn close(&mut self, id: ChannelId) -> bool {
        if self.conns.get_mut(id).is_none() {
            return false;
        }
        self.close_conn(id);
        true
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// The underlying Selector (for its metrics and per-channel state).
    pub fn selector(&self) -> &Selector {
        &self.sel
    }

    /// A handle that interrupts a blocking [`poll`](Server::poll) from another thread.
    pub fn waker(&self) -> SelectorWaker {
        self.sel.waker()
    }

    /// Runs [`poll`](Server::poll) until `stop` is set or `deadline` passes. Each poll blocks at most
    /// [`RUN_TICK`]; set `stop`, then [`wake`](SelectorWaker::wake) the [`waker`](Server::waker),
    /// for a prompt exit.
    ///
    /// # Errors
    /// The first error of [`poll`](Server::poll).
    pub fn run_until(&mut self, stop: &AtomicBool, deadline: Option<Instant>) -> io::Result<()> {
        let mut now = Instant::now();
        // Until then a whole tick fits before the deadline (no difference to work out per round).
        let full_ticks_until = deadline.and_then(|d| d.checked_sub(RUN_TICK));
        loop {
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let timeout = match deadline {
                Some(d) if now >= d => return Ok(()),
                Some(_) if full_ticks_until.is_some_and(|t| now <= t) => RUN_TICK,
                Some(d) => (d - now).min(RUN_TICK),
                None => RUN_TICK,
            };
            self.poll(Some(timeout))?;
            // The Selector read the clock as its poll finished; the handlers ran after that, so
            // the deadline is checked at most one round late.
            now = self.sel.finished_at().unwrap_or_else(Instant::now);
        }
    }

    /// Does one round of work: stages deferred replies that came in, runs one Selector poll
    /// (waiting at most `timeout`, `None` for no limit), accepts, hands every received request to
    /// the handler, stages responses, and settles connections whose responses left or which closed.
    ///
    /// # Errors
    /// Only an error of the OS selector itself; connection errors close that connection and are
    /// counted in [`stats`](Server::stats).
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if M::DEFERRED {
            self.take_replies();
        }
        // Sends completed before the select matter to the deferred mode (it stages a connection's
        // next reply once the previous one left) and to muted connections (unmuted once their
        // backlog drained), not to a server that only answers.
        self.sel
            .set_wake_on_sends(M::DEFERRED || !self.backlogged.is_empty());
        self.sel.poll(timeout)?;

        for i in 0..self.sel.accepted().len() {
            let a = self.sel.accepted()[i];
            self.conns.insert(a.channel, Conn::new());
            self.stats.accepted += 1;
            self.mode.connected(a.channel, a.peer);
        }

        if M::DIRECT {
            // Borrowed receives: every request went through the handler above.
            self.handle_direct();
        } else {
            self.sel.swap_completed_receives(&mut self.received);
            let mut received = std::mem::take(&mut self.received);
            for r in received.drain(..) {
                if M::DEFERRED {
                    self.enqueue(r.channel, r.frame);
                } else {
                    self.handle_inline(r.channel, r.frame);
                }
            }
            self.received = received;
        }

        if M::DEFERRED {
            for i in 0..self.sel.completed_sends().len() {
                let s = self.sel.completed_sends()[i];
                if let Some(c) = self.conns.get_mut(s.channel) {
                    if c.stage == Stage::Sending(s.seq) {
                        c.stage = Stage::Idle;
                        self.pump(s.channel);
                    }
                }
            }
        } else if !self.backlogged.is_empty() {
            if M::DIRECT {
                self.release_backpressure();
            } else {
                self.drain_backlogs();
            }
        }

        for i in 0..self.sel.disconnected().len() {
            let d = self.sel.disconnected()[i];
            self.forget(d.channel, d.reason);
        }

        if M::DEFERRED {
            self.take_replies();
        }
        Ok(())
    }

    /// Bytes `response` takes on the wire.
    #[inline]
    fn wire_len(&self, response: &Bytes) -> usize {
        response.len() + if self.prefixed { 0 } else { HEADER_LEN }
    }

    /// Stages one response on `id`.
    #[inline]
    fn stage(&mut self, id: ChannelId, response: Bytes) -> Result<u64, SendError> {
        if self.prefixed {
            self.sel.send_prefixed(id, response)
        } else {
            self.sel.send(id, response)
        }
    }

    // ----- inline --------------------------------------------------------------------------------

    fn handle_inline(&mut self, id: ChannelId, frame: Bytes) {
        self.stats.requests += 1;
        let response = match self.mode.dispatch(id, frame, &self.replies, 0) {
            Outcome::Respond(r) => r,
            Outcome::NoResponse | Outcome::Pending => {
                self.stats.no_responses += 1;
                return;
            }
        };
        let wire_len = self.wire_len(&response);
        let Some(c) = self.conns.get_mut(id) else {
            return; // closed by the server while handling an earlier frame of this poll
        };
        if c.backlog.is_empty() && fits(&self.sel, id, wire_len) {
            match self.stage(id, response) {
                Ok(_) => self.stats.responses += 1,
                Err(e) => self.send_failed(id, e),
            }
            return;
        }
        // Back-pressure: the client is not reading. Keep the response in order and stop reading
        // the connection until the backlog has been staged.
        c.backlog.push_back(response);
        if !c.muted {
            c.muted = true;
            self.stats.backpressured += 1;
            let _ = self.sel.mute(id);
            self.backlogged.push(id);
        }
    }

    fn drain_backlogs(&mut self) {
        let mut list = std::mem::take(&mut self.backlogged);
        let header = if self.prefixed { 0 } else { HEADER_LEN };
        let prefixed = self.prefixed;
        list.retain(|&id| {
            let Some(c) = self.conns.get_mut(id) else {
                return false;
            };
            while let Some(front) = c.backlog.front() {
                if !fits(&self.sel, id, front.len() + header) {
                    return true;
                }
                let Some(response) = c.backlog.pop_front() else {
                    break;
                };
                let staged = if prefixed {
                    self.sel.send_prefixed(id, response)
                } else {
                    self.sel.send(id, response)
                };
                if staged.is_err() {
                    // The connection is closing or gone; `forget` cleans up.
                    c.backlog.clear();
                    return false;
                }
                self.stats.responses += 1;
            }
            c.muted = false;
            let _ = self.sel.unmute(id);
            false
        });
        // Nothing pushes onto `backlogged` while we drain it.
        self.backlogged = list;
    }

    // ----- direct --------------------------------------------------------------------------------

    /// Hands every request of the last poll to the handler, its response written into the send
    /// buffer of its connection.
    fn handle_direct(&mut self) {
        let max_staged = self.sel.config().max_staged_bytes;
        let mode = &mut self.mode;
        let stats = &mut self.stats;
        let failed = &mut self.failed;
        let backlogged = &mut self.backlogged;
        let conns = &mut self.conns;
        let discard = &mut self.discard;
        // A run of one connection's requests at a time, so the per-request work below is a loop
        // body rather than a call per request.
        self.sel.for_each_received_run(|id, mut run, sink| {
            while let Some((request, rest)) = split_frame(run) {
                run = rest;
                stats.requests += 1;
                let open = sink.is_open() && !failed.iter().any(|(f, _)| *f == id);
                if !open {
                    // Gone or closing (its disconnect is reported, or was): the handler still
                    // sees the request, its response goes nowhere.
                    discard.clear();
                    if mode.direct(id, request, &mut FrameWriter::new(discard)) {
                        stats.responses += 1;
                    } else {
                        stats.no_responses += 1;
                    }
                    continue;
                }
                match sink.send_with(|w| mode.direct(id, request, w)) {
                    Ok(Some(_)) => stats.responses += 1,
                    Ok(None) => stats.no_responses += 1,
                    Err(e) => {
                        failed.push((id, e));
                        continue;
                    }
                }
                if sink.staged_bytes() >= max_staged {
                    // Back-pressure: the client is not reading. Stop reading it until its
                    // responses drain below the bound.
                    if let Some(c) = conns.get_mut(id) {
                        if !c.muted {
                            c.muted = true;
                            sink.mute();
                            stats.backpressured += 1;
                            backlogged.push(id);
                        }
                    }
                }
            }
        });
        if !self.failed.is_empty() {
            let mut failed = std::mem::take(&mut self.failed);
            for (id, e) in failed.drain(..) {
                self.send_failed(id, e);
            }
            self.failed = failed;
        }
    }

    /// Unmutes connections muted for back-pressure whose staged responses drained below the bound.
    fn release_backpressure(&mut self) {
        let max_staged = self.sel.config().max_staged_bytes;
        let mut list = std::mem::take(&mut self.backlogged);
        list.retain(|&id| {
            let Some(c) = self.conns.get_mut(id) else {
                return false;
            };
            if self.sel.staged_bytes(id) >= max_staged {
                return true;
            }
            c.muted = false;
            let _ = self.sel.unmute(id);
            false
        });
        self.backlogged = list;
    }

    // ----- deferred ------------------------------------------------------------------------------

    fn enqueue(&mut self, id: ChannelId, frame: Bytes) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.queued.push_back(frame);
        if !c.muted {
            c.muted = true;
            let _ = self.sel.mute(id);
        }
        self.pump(id);
    }

    /// Hands the connection's next queued request to the handler if none is in process; unmutes
    /// the connection when nothing is queued or in process.
    fn pump(&mut self, id: ChannelId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.stage != Stage::Idle {
            return;
        }
        let Some(frame) = c.queued.pop_front() else {
            if c.muted {
                c.muted = false;
                let _ = self.sel.unmute(id);
            }
            return;
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        c.stage = Stage::Processing(ticket);
        self.stats.requests += 1;
        // The deferred mode always answers `Pending`; its reply comes through `take_replies`.
        let _ = self.mode.dispatch(id, frame, &self.replies, ticket);
    }

    fn take_replies(&mut self) {
        let mut first = true;
        // Bounded: a reply is only produced for a request handed out, and each is taken once.
        while let Some(done) = self.replies.try_next(first) {
            first = false;
            self.complete(done);
        }
    }

    fn complete(&mut self, done: Completion) {
        let Completion {
            conn: id,
            ticket,
            reply,
        } = done;
        let Some(c) = self.conns.get_mut(id) else {
            self.stats.stale_replies += 1;
            return;
        };
        if c.stage != Stage::Processing(ticket) {
            self.stats.stale_replies += 1;
            return;
        }
        match reply {
            Reply::Respond(r) => match self.stage(id, r) {
                Ok(seq) => {
                    if let Some(c) = self.conns.get_mut(id) {
                        c.stage = Stage::Sending(seq);
                    }
                    self.stats.responses += 1;
                }
                Err(e) => self.send_failed(id, e),
            },
            Reply::NoResponse => {
                c.stage = Stage::Idle;
                self.stats.no_responses += 1;
                self.pump(id);
            }
            Reply::Close => self.close_conn(id),
        }
    }

    // ----- both ----------------------------------------------------------------------------------

    fn send_failed(&mut self, id: ChannelId, e: SendError) {
        match e {
            // Gone or closing: the Selector reports it (or did), `forget` cleans up.
            SendError::UnknownChannel | SendError::Closing => {}
            _ => {
                log::warn!("{id}: cannot send response: {e}; closing the connection");
                self.close_conn(id);
            }
        }
    }

    fn close_conn(&mut self, id: ChannelId) {
        self.stats.closed_by_server += 1;
        // Immediate closes are not reported by the Selector: report to the handler ourselves.
        let _ = self.sel.close(id, CloseMode::Immediate);
        self.forget(id, DisconnectReason::LocalClose { flushed: false });
    }

    fn forget(&mut self, id: ChannelId, reason: DisconnectReason) {
        if self.conns.remove(id).is_none() {
            return;
        }
        self.stats.closed += 1;
        if matches!(reason, DisconnectReason::InvalidFrame(_)) {
            self.stats.invalid_frames += 1;
        }
        self.mode.disconnected(id, reason);
    }
}
