//! The mqnet implementation of the echo workload.
//!
//! - Server: [`mqnet::server::Server`] in direct mode with [`EchoHandler`]: requests read in place,
//!   responses written straight into the connection's send buffer.
//! - Client: the closed loop [`run_closed_loop`] over a [`RequestLayer`], of which there are two:
//!   - [`SelectorLayer`] (`--mqnet-client selector`): the request layer's duties done directly on
//!     the [`Selector`] — one channel per connection, a FIFO of in-flight correlation ids and send
//!     times per channel: the transport alone, for comparison.
//!   - [`NetworkClientLayer`] (`--mqnet-client network-client`, the default): mqnet's
//!     `NetworkClient` — one node per connection, all at the same address, `max.in.flight` = W
//!     with `mqnet.pipeline.unsent`, borrowed responses, its own correlation checks.
//!
//! The closed loop is the same for both: each poll's responses are checked (correlation id
//! against the loop's own FIFO and in the payload, size) and their latencies recorded as the
//! layer hands them over; then each connection sends as many new requests as it got responses,
//! one after another (so they coalesce in its send buffer). Which layer is the default is
//! [`ClientLayer::default`].

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::NodeId;
use mqnet::client::{
    ClientConfig, ClientRequest, Completion, ConnectionState, NetworkClient, OutcomeRef,
};
use mqnet::net::ChannelMap;
use mqnet::net::{
    ChannelId, CloseMode, FrameWriter, Received, Selector, SelectorConfig, SocketOptions,
};
use mqnet::server::{DirectHandler, Server, ServerConfig};

use crate::error::{BenchError, Context};
use crate::proto::{
    check_response, request_correlation, CorrelationSeq, Encoder, MAX_PAYLOAD, MIN_REQUEST,
    MIN_RESPONSE, VECTORED_PADDING_ABOVE,
};
use crate::stats::{Recorder, RunResult, Window, Workload};

/// How long connecting all connections may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a client poll blocks (so the end of the window is never missed by much).
const POLL_TICK: Duration = Duration::from_millis(100);

// ----- server ------------------------------------------------------------------------------------

/// Answers every well-formed echo request with a response of `resp_size` bytes carrying its
/// correlation id, written into the connection's send buffer; malformed requests are counted and
/// get no response.
#[derive(Debug)]
pub struct EchoHandler {
    resp_size: usize,
    /// Requests that were not echo requests.
    pub malformed: u64,
}

impl EchoHandler {
    /// A handler answering with `resp_size`-byte responses.
    pub fn new(resp_size: usize) -> Self {
        EchoHandler {
            resp_size: resp_size.max(MIN_RESPONSE),
            malformed: 0,
        }
    }
}

impl DirectHandler for EchoHandler {
    #[inline]
    fn handle(&mut self, _conn: ChannelId, request: &[u8], out: &mut FrameWriter<'_>) -> bool {
        match request_correlation(request) {
            Some(corr) => {
                out.put_i32(corr);
                out.put_bytes(0, self.resp_size - MIN_RESPONSE);
                true
            }
            None => {
                self.malformed += 1;
                false
            }
        }
    }
}

/// Runs the mqnet echo server on `addr` until `stop` is set or `deadline` passes; `bound` is called
/// with the bound address once it listens.
///
/// # Errors
/// Creating, binding or polling the server failed.
pub fn run_server(
    addr: SocketAddr,
    resp_size: usize,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    bound: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    let config = ServerConfig {
        selector: SelectorConfig {
            max_frame_size: MAX_PAYLOAD,
            // Idle expiry stays at Kafka's 540 s: it also ends connections that stall mid-frame.
            ..SelectorConfig::default()
        },
        ..ServerConfig::default()
    };
    let mut server = Server::direct_with_config(EchoHandler::new(resp_size), config)?;
    let local = server.bind(addr)?;
    bound(local);
    server.run_until(stop, deadline)?;
    let st = server.stats();
    log::info!(
        "mqnet server: {} accepted, {} requests, {} invalid frames, {} malformed",
        st.accepted,
        st.requests,
        st.invalid_frames,
        server.handler().malformed
    );
    Ok(())
}

// ----- request layer -----------------------------------------------------------------------------

/// Writes an echo request payload of `size` bytes (api_key 0, api_version 0, correlation id,
/// zero padding) into a send buffer.
#[inline]
fn put_request(w: &mut FrameWriter<'_>, size: usize, correlation_id: i32) {
    /// Padding of common request sizes is copied from here (one `memcpy`) rather than filled.
    static ZEROS: [u8; 512] = [0; 512];
    let size = size.max(MIN_REQUEST);
    w.put_i32(0);
    w.put_i32(correlation_id);
    let pad = size - MIN_REQUEST;
    match ZEROS.get(..pad) {
        Some(zeros) => w.put_slice(zeros),
        None => w.put_bytes(0, pad),
    }
}

/// Something the request layer reports from a poll.
#[derive(Debug)]
pub enum LayerEvent {
    /// Connection `conn` is up.
    Connected {
        /// Connection index.
        conn: usize,
    },
    /// The request with `correlation_id` on `conn` failed (connection lost, timeout, ...).
    Failed {
        /// Connection index.
        conn: usize,
        /// Its correlation id.
        correlation_id: i32,
    },
    /// Connection `conn` is gone.
    Disconnected {
        /// Connection index.
        conn: usize,
        /// Why, for the log.
        reason: String,
    },
}

/// The request layer the mqnet closed loop runs on; see the module docs for the swap to the
/// `NetworkClient`.
pub trait RequestLayer {
    /// Starts connection `conn` (indices are dense, from 0) to `addr`; reported by a later poll as
    /// [`LayerEvent::Connected`] or [`LayerEvent::Disconnected`].
    ///
    /// # Errors
    /// A synchronous connect failure.
    fn open(&mut self, conn: usize, addr: SocketAddr) -> io::Result<()>;

    /// Whether [`send`](RequestLayer::send) takes frames that start with their 4-byte length
    /// prefix (built with `Encoder::request_prefixed`) rather than bare payloads.
    fn prefixed(&self) -> bool {
        false
    }

    /// Stages a request on `conn` at `now` (a payload, or a prefixed frame when
    /// [`prefixed`](RequestLayer::prefixed)); its response comes back as a
    /// completion (see [`poll`](RequestLayer::poll)) with `correlation_id`.
    ///
    /// # Errors
    /// The connection is unknown, down, or refuses more.
    fn send(
        &mut self,
        conn: usize,
        correlation_id: i32,
        frame: Bytes,
        now: Instant,
    ) -> Result<(), BenchError>;

    /// Stages the echo request of `size` bytes with `correlation_id` on `conn` at `now`, written
    /// straight into the connection's send buffer when the layer can; `Ok(false)` when it cannot
    /// now (then [`send`](RequestLayer::send) it as a built frame).
    ///
    /// # Errors
    /// As [`send`](RequestLayer::send).
    fn send_written(
        &mut self,
        conn: usize,
        correlation_id: i32,
        size: usize,
        now: Instant,
    ) -> Result<bool, BenchError> {
        let _ = (conn, correlation_id, size, now);
        Ok(false)
    }

    /// Does the IO, waiting at most `timeout` from `now` (the caller's time just before the
    /// call); hands the requests it completed to `done` (node = connection index; the
    /// correlation id is the request's, from the layer's own in-flight tracking; the latency runs
    /// from the `now` the request was sent at to the time read after the IO; an outcome other
    /// than a response is a failed request) with the time read after the IO, at which they were
    /// settled, then appends what else happened to `events`, and returns that time
    /// (the caller's next `now`: one clock read per poll). Completions are the NetworkClient's
    /// own borrowed type, so its layer hands responses on where they were received.
    ///
    /// # Errors
    /// A failure of the poller itself.
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        now: Instant,
        done: &mut impl FnMut(Instant, Completion<'_>),
        events: &mut Vec<LayerEvent>,
    ) -> io::Result<Instant>;

    /// Closes every connection.
    fn close_all(&mut self);
}

#[derive(Debug, Default)]
struct LayerConn {
    channel: Option<ChannelId>,
    /// (correlation id, send time) of the requests sent and not yet answered, oldest first.
    in_flight: VecDeque<(i32, Instant)>,
}

/// [`RequestLayer`] straight on the [`Selector`]: one channel per connection, a FIFO of in-flight
/// correlation ids per channel (responses come back in request order per connection). Requests
/// are encoded with their length prefix and staged with `send_prefixed`.
#[derive(Debug)]
pub struct SelectorLayer {
    sel: Selector,
    conns: Vec<LayerConn>,
    /// Connection index by channel.
    by_channel: ChannelMap<usize>,
    received: Vec<Received>,
}

impl SelectorLayer {
    /// A layer over a new Selector that accepts frames up to `max_frame` bytes.
    ///
    /// # Errors
    /// Creating the Selector failed.
    pub fn new(max_frame: usize) -> io::Result<Self> {
        let config = SelectorConfig {
            max_frame_size: max_frame,
            connections_max_idle: None,
            ..SelectorConfig::default()
        };
        Ok(SelectorLayer {
            sel: Selector::with_config(config)?,
            conns: Vec::new(),
            by_channel: ChannelMap::new(),
            received: Vec::new(),
        })
    }

    fn conn_of(&self, channel: ChannelId) -> Option<usize> {
        self.by_channel.get(channel).copied()
    }
}

impl RequestLayer for SelectorLayer {
    fn prefixed(&self) -> bool {
        true
    }

    fn open(&mut self, conn: usize, addr: SocketAddr) -> io::Result<()> {
        let channel = self.sel.connect(addr, &SocketOptions::os_buffers())?;
        if self.conns.len() <= conn {
            self.conns.resize_with(conn + 1, LayerConn::default);
        }
        self.conns[conn] = LayerConn {
            channel: Some(channel),
            in_flight: VecDeque::new(),
        };
        self.by_channel.insert(channel, conn);
        Ok(())
    }

    #[inline]
    fn send(
        &mut self,
        conn: usize,
        correlation_id: i32,
        frame: Bytes,
        now: Instant,
    ) -> Result<(), BenchError> {
        let c = self
            .conns
            .get_mut(conn)
            .ok_or_else(|| BenchError::run("unknown connection"))?;
        let channel = c
            .channel
            .ok_or_else(|| BenchError::run("connection is down"))?;
        self.sel.send_prefixed(channel, frame).context("send")?;
        c.in_flight.push_back((correlation_id, now));
        Ok(())
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        _now: Instant,
        done: &mut impl FnMut(Instant, Completion<'_>),
        events: &mut Vec<LayerEvent>,
    ) -> io::Result<Instant> {
        self.sel.poll(timeout)?;
        // The Selector read the clock as its I/O finished: both ends of a latency are that time.
        let after = self.sel.finished_at().unwrap_or_else(Instant::now);
        for &channel in self.sel.connected() {
            if let Some(conn) = self.conn_of(channel) {
                events.push(LayerEvent::Connected { conn });
            }
        }
        self.sel.swap_completed_receives(&mut self.received);
        for r in self.received.drain(..) {
            let Some(&conn) = self.by_channel.get(r.channel) else {
                continue;
            };
            // A response nobody asked for gets id -1: the closed loop counts it as an error.
            let (correlation_id, sent) = self.conns[conn]
                .in_flight
                .pop_front()
                .unwrap_or((-1, after));
            done(
                after,
                Completion {
                    node: NodeId(i32::try_from(conn).unwrap_or(-1)),
                    correlation_id,
                    tag: 0,
                    latency: after.saturating_duration_since(sent),
                    outcome: OutcomeRef::Response(&r.frame),
                },
            );
        }
        for d in self.sel.disconnected() {
            let Some(conn) = self.by_channel.remove(d.channel) else {
                continue;
            };
            let c = &mut self.conns[conn];
            c.channel = None;
            for (correlation_id, _) in c.in_flight.drain(..) {
                events.push(LayerEvent::Failed {
                    conn,
                    correlation_id,
                });
            }
            events.push(LayerEvent::Disconnected {
                conn,
                reason: d.reason.to_string(),
            });
        }
        Ok(after)
    }

    fn close_all(&mut self) {
        for c in &mut self.conns {
            if let Some(ch) = c.channel.take() {
                let _ = self.sel.close(ch, CloseMode::Immediate);
            }
            c.in_flight.clear();
        }
        self.by_channel.clear();
    }
}

/// Which request layer the mqnet client runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientLayer {
    /// [`SelectorLayer`].
    Selector,
    /// [`NetworkClientLayer`]: the default, as a user of mqnet would run it.
    #[default]
    NetworkClient,
}

impl ClientLayer {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            ClientLayer::Selector => "selector",
            ClientLayer::NetworkClient => "network-client",
        }
    }
}

/// [`RequestLayer`] on mqnet's `NetworkClient`: one node per connection.
pub struct NetworkClientLayer {
    client: NetworkClient,
    /// The padding of requests above [`VECTORED_PADDING_ABOVE`], shared by all of them.
    padding: Bytes,
    nodes: Vec<NodeId>,
    /// Per connection: reported up, reported down.
    up: Vec<bool>,
    down: Vec<bool>,
}

impl NetworkClientLayer {
    /// A client allowing `inflight` requests in flight per connection, all of which may be staged
    /// at once (`mqnet.pipeline.unsent`: the closed loop sends in batches, as the tokio peer
    /// does), OS socket buffers, no idle expiry, borrowed responses.
    ///
    /// # Errors
    /// Creating the Selector failed.
    pub fn new(inflight: usize) -> io::Result<Self> {
        let config = ClientConfig::default()
            .max_in_flight(inflight.max(1))
            .connections_max_idle(None)
            .send_buffer_bytes(None)
            .receive_buffer_bytes(None)
            .pipeline_unsent(true);
        let mut client = NetworkClient::new(config)?;
        // Responses are checked where they were received (see `poll`).
        client.set_borrowed_responses(true);
        Ok(NetworkClientLayer {
            client,
            padding: Bytes::new(),
            nodes: Vec::new(),
            up: Vec::new(),
            down: Vec::new(),
        })
    }
}

impl NetworkClientLayer {
    /// Sends the echo request with `pad` bytes of padding as its fixed fields written in place
    /// and the shared padding as its body. Kept out of line, so that the path of small requests
    /// stays short.
    #[inline(never)]
    fn send_padded(&mut self, node: NodeId, correlation_id: i32, pad: usize, now: Instant) -> bool {
        if self.padding.len() != pad {
            self.padding = Bytes::from(vec![0; pad]);
        }
        let head = |w: &mut FrameWriter<'_>| {
            w.put_i32(0);
            w.put_i32(correlation_id);
        };
        self.client
            .send_with_body(node, correlation_id, now, head, self.padding.clone())
    }
}

impl RequestLayer for NetworkClientLayer {
    fn open(&mut self, conn: usize, addr: SocketAddr) -> io::Result<()> {
        let id = i32::try_from(conn).map_err(|_| io::Error::other("too many connections"))?;
        let node = NodeId(id);
        self.client.add_node(node, &addr.to_string())?;
        if self.nodes.len() <= conn {
            self.nodes.resize(conn + 1, NodeId(-1));
            self.up.resize(conn + 1, false);
            self.down.resize(conn + 1, false);
        }
        self.nodes[conn] = node;
        self.client.ready(node, Instant::now());
        Ok(())
    }

    #[inline]
    fn send(
        &mut self,
        conn: usize,
        correlation_id: i32,
        frame: Bytes,
        now: Instant,
    ) -> Result<(), BenchError> {
        let node = *self
            .nodes
            .get(conn)
            .ok_or_else(|| BenchError::run("unknown connection"))?;
        // Failures (not ready, refused) come back as completions of a later poll.
        self.client
            .send(ClientRequest::new(node, correlation_id, frame), now);
        Ok(())
    }

    #[inline]
    fn send_written(
        &mut self,
        conn: usize,
        correlation_id: i32,
        size: usize,
        now: Instant,
    ) -> Result<bool, BenchError> {
        let node = *self
            .nodes
            .get(conn)
            .ok_or_else(|| BenchError::run("unknown connection"))?;
        let pad = size.max(MIN_REQUEST) - MIN_REQUEST;
        if pad <= VECTORED_PADDING_ABOVE {
            return Ok(self.client.send_with(node, correlation_id, now, |w| {
                put_request(w, size, correlation_id)
            }));
        }
        Ok(self.send_padded(node, correlation_id, pad, now))
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        now: Instant,
        done: &mut impl FnMut(Instant, Completion<'_>),
        events: &mut Vec<LayerEvent>,
    ) -> io::Result<Instant> {
        self.client.poll_io(timeout, now)?;
        let after = self
            .client
            .transport()
            .finished_at()
            .unwrap_or_else(Instant::now);
        self.client.handle_with(after, |c| done(after, c));
        for (conn, &node) in self.nodes.iter().enumerate() {
            let state = self.client.connection_state(node);
            if !self.up[conn] && !self.down[conn] && state == Some(ConnectionState::Ready) {
                self.up[conn] = true;
                events.push(LayerEvent::Connected { conn });
            } else if !self.down[conn] && !matches!(state, Some(s) if !s.is_disconnected()) {
                self.down[conn] = true;
                events.push(LayerEvent::Disconnected {
                    conn,
                    reason: format!("{state:?}"),
                });
            }
        }
        Ok(after)
    }

    fn close_all(&mut self) {
        let now = Instant::now();
        for &node in &self.nodes {
            self.client.disconnect(node, now);
        }
    }
}

// ----- closed loop -------------------------------------------------------------------------------

/// Per-connection state of the closed loop.
#[derive(Debug)]
struct LoopConn {
    seq: CorrelationSeq,
    /// Correlation ids of the requests in flight, oldest first.
    pending: VecDeque<i32>,
    /// Responses of the last poll: each is replaced by a new request after it.
    answered: usize,
    up: bool,
}

/// Runs the closed loop of `w` over `layer` against `addr`: opens C connections, keeps W requests
/// in flight on each, checks every response's correlation id (the layer's and the payload's
/// against the loop's own FIFO) and size, and records send→response latency inside the window.
///
/// # Errors
/// A poll failure of the layer. Connection failures and bad responses are counted as errors.
pub fn run_closed_loop<L: RequestLayer>(
    layer: &mut L,
    addr: SocketAddr,
    w: &Workload,
) -> io::Result<(Recorder, Window)> {
    let mut rec = Recorder::new();
    let mut enc = Encoder::new(w.size);
    let mut conns: Vec<LoopConn> = (0..w.conns)
        .map(|i| LoopConn {
            seq: CorrelationSeq::for_conn(i),
            pending: VecDeque::with_capacity(w.inflight),
            answered: 0,
            up: false,
        })
        .collect();
    let mut events = Vec::with_capacity(1024);
    let prefixed = layer.prefixed();
    let request = move |enc: &mut Encoder, corr: i32| {
        if prefixed {
            enc.request_prefixed(w.size, corr)
        } else {
            enc.request(w.size, corr)
        }
    };

    // Connect every connection (bounded).
    for i in 0..w.conns {
        if let Err(e) = layer.open(i, addr) {
            log::warn!("mqnet client: connect {i} to {addr}: {e}");
            rec.errors += 1;
        }
    }
    let mut up = 0usize;
    let mut down = rec.errors as usize;
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    while up + down < w.conns {
        let now = Instant::now();
        if now >= connect_deadline {
            log::warn!(
                "mqnet client: {} connections not up in time",
                w.conns - up - down
            );
            rec.errors += (w.conns - up - down) as u64;
            break;
        }
        // Nothing was sent yet: anything completed is not the loop's.
        layer.poll(
            Some((connect_deadline - now).min(POLL_TICK)),
            now,
            &mut |_, _| {},
            &mut events,
        )?;
        for ev in events.drain(..) {
            match ev {
                LayerEvent::Connected { conn } => {
                    conns[conn].up = true;
                    up += 1;
                }
                LayerEvent::Disconnected { conn, reason } => {
                    log::warn!("mqnet client: connection {conn} failed: {reason}");
                    rec.errors += 1;
                    down += 1;
                }
                _ => {}
            }
        }
    }

    let window = Window::starting_now(w);
    let now = window.start;
    for (i, c) in conns.iter_mut().enumerate().filter(|(_, c)| c.up) {
        for _ in 0..w.inflight {
            let corr = c.seq.next_id();
            let sent = match layer.send_written(i, corr, w.size, now) {
                Ok(true) => Ok(()),
                Ok(false) => layer.send(i, corr, request(&mut enc, corr), now),
                Err(e) => Err(e),
            };
            if sent.is_err() {
                rec.errors += 1;
                break;
            }
            c.pending.push_back(corr);
        }
    }

    let count = w.count.unwrap_or(u64::MAX);
    let mut live = conns.iter().filter(|c| c.up).count();
    // One clock read per poll: the time the layer read after its IO settles the poll's events
    // and starts the next round.
    let mut now = Instant::now();
    // Until then a poll waits a whole tick (a comparison, not a subtraction, per poll).
    let full_ticks_until = window.end.checked_sub(POLL_TICK).unwrap_or(window.start);
    loop {
        if now >= window.end || rec.measured >= count || live == 0 {
            break;
        }
        let timeout = if now <= full_ticks_until {
            POLL_TICK
        } else {
            (window.end - now).min(POLL_TICK)
        };
        let mut on_done = |at: Instant, r: Completion<'_>| {
            // Node ids are the connection indices the layer was opened with, never negative; one
            // that were would map to an index no connection has, counted as an error.
            let conn = usize::try_from(r.node.0).unwrap_or(usize::MAX);
            let correlation_id = r.correlation_id;
            let Some(c) = conns.get_mut(conn) else {
                rec.errors += 1;
                return;
            };
            match r.outcome {
                OutcomeRef::Response(frame) => {
                    let Some(want) = c.pending.pop_front() else {
                        rec.errors += 1;
                        return;
                    };
                    let ok =
                        correlation_id == want && check_response(frame, w.resp_size, want).is_ok();
                    if !ok {
                        rec.errors += 1;
                    } else if at >= window.warm_end {
                        rec.record_latency(r.latency, at);
                    }
                    c.answered += 1;
                }
                other => request_failed(c, &mut rec, conn, correlation_id, other),
            }
        };
        now = layer.poll(Some(timeout), now, &mut on_done, &mut events)?;
        let sending = now < window.end && rec.measured < count;
        for (conn, c) in conns.iter_mut().enumerate() {
            let answered = std::mem::take(&mut c.answered);
            if !sending {
                continue;
            }
            // The connection's new requests one after another: they coalesce in its send buffer.
            for _ in 0..answered {
                let corr = c.seq.next_id();
                // Errors are dropped in their own arms, off the path of a written send.
                let sent = match layer.send_written(conn, corr, w.size, now) {
                    Ok(true) => true,
                    Ok(false) => layer.send(conn, corr, request(&mut enc, corr), now).is_ok(),
                    Err(_) => false,
                };
                if sent {
                    c.pending.push_back(corr);
                } else {
                    rec.errors += 1;
                }
            }
        }
        for ev in events.drain(..) {
            match ev {
                LayerEvent::Failed {
                    conn,
                    correlation_id,
                } => {
                    rec.errors += 1;
                    let Some(c) = conns.get_mut(conn) else {
                        continue;
                    };
                    if let Some(pos) = c.pending.iter().position(|p| *p == correlation_id) {
                        c.pending.remove(pos);
                    }
                }
                LayerEvent::Disconnected { conn, reason } => {
                    let Some(c) = conns.get_mut(conn) else {
                        continue;
                    };
                    if c.up {
                        log::warn!("mqnet client: connection {conn} lost: {reason}");
                        c.up = false;
                        live -= 1;
                        rec.errors += c.pending.len() as u64 + 1;
                        c.pending.clear();
                    }
                }
                LayerEvent::Connected { .. } => {}
            }
        }
    }
    layer.close_all();
    Ok((rec, window))
}

/// A request of the closed loop that completed without a response: an error, and no longer
/// pending. Out of line, so that the per-response path stays small.
#[cold]
#[inline(never)]
fn request_failed(
    c: &mut LoopConn,
    rec: &mut Recorder,
    conn: usize,
    correlation_id: i32,
    outcome: OutcomeRef<'_>,
) {
    log::debug!("mqnet client: request {correlation_id} on {conn}: {outcome:?}");
    rec.errors += 1;
    if let Some(pos) = c.pending.iter().position(|p| *p == correlation_id) {
        c.pending.remove(pos);
    }
}

/// Runs the mqnet client of `w` against `addr` on `layer` and summarises it.
///
/// # Errors
/// A poll failure of the request layer.
pub fn run_client(addr: SocketAddr, w: &Workload, layer: ClientLayer) -> io::Result<RunResult> {
    let (mut rec, window) = match layer {
        ClientLayer::Selector => run_closed_loop(&mut SelectorLayer::new(MAX_PAYLOAD)?, addr, w)?,
        ClientLayer::NetworkClient => {
            let mut layer = NetworkClientLayer::new(w.inflight)?;
            let run = run_closed_loop(&mut layer, addr, w)?;
            crate::metrics_report::echo_client_done(&layer.client);
            run
        }
    };
    let mut r = RunResult::from_recorder("mqnet", w, &mut rec, &window);
    r.mqnet_client = Some(layer.name().to_string());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn against_mqnet_server(layer: ClientLayer) {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            run_server(
                "127.0.0.1:0".parse().unwrap(),
                16,
                &flag,
                Some(Instant::now() + Duration::from_secs(30)),
                |a| tx.send(a).unwrap(),
            )
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let w = Workload {
            conns: 3,
            inflight: 4,
            size: 100,
            resp_size: 16,
            warmup: Duration::from_millis(50),
            duration: Duration::from_secs(5),
            count: Some(2_000),
            idle: 0,
        };
        let r = run_client(addr, &w, layer).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Release);
        server.join().unwrap().unwrap();
        assert_eq!(r.errors, 0, "{r:?}");
        assert!(r.requests >= 2_000, "{r:?}");
        assert!(r.rps > 0.0 && r.p50_us > 0.0);
    }

    #[test]
    fn selector_layer_against_mqnet_server_has_no_errors() {
        against_mqnet_server(ClientLayer::Selector);
    }

    #[test]
    fn network_client_layer_against_mqnet_server_has_no_errors() {
        against_mqnet_server(ClientLayer::NetworkClient);
    }

    #[test]
    fn a_refused_connection_is_an_error_not_a_hang() {
        // A port nobody listens on: bind, note the port, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let w = Workload {
            conns: 2,
            inflight: 1,
            size: 8,
            resp_size: 4,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(200),
            count: None,
            idle: 0,
        };
        for layer in [ClientLayer::Selector, ClientLayer::NetworkClient] {
            let started = Instant::now();
            let r = run_client(addr, &w, layer).unwrap();
            assert_eq!(r.errors, 2, "{layer:?}: {r:?}");
            assert_eq!(r.requests, 0);
            assert!(started.elapsed() < CONNECT_TIMEOUT, "{layer:?}");
        }
    }
}
