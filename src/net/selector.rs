//! The Selector: the only code in mqnet that touches sockets.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use super::channel::{Channel, ChannelState};
use super::error::{ChannelError, DisconnectReason, IoFault, SendError};
use super::frame::{encode_header, FrameDecoder, FrameError, HEADER_LEN};
use super::id::{ChannelId, ListenerId};
use super::layer::{self, Layer, LayerWriter};
use super::lru::Lru;
use super::metrics::SelectorMetrics;
use super::options::{SelectorConfig, SocketOptions};
use super::send_queue::{FrameWriter, SendQueue};
use super::slots::Slots;

const WAKER_TOKEN: Token = Token(usize::MAX);

/// Below this much spare space a read buffer that cannot be reclaimed is grown before reading.
const MIN_READ_SPACE: usize = 4096;

/// A read buffer larger than this (and larger than four read chunks) is released when it holds no
/// bytes, so one large frame does not pin its size for the life of the connection; smaller
/// buffers are kept and reused without allocating.
const READ_BUFFER_KEEP: usize = 1024 * 1024;

/// Default accept backlog of [`Selector::listen`].
pub const DEFAULT_BACKLOG: i32 = 1024;

/// How often a listener whose accept failed for lack of resources (descriptors, kernel memory) tries
/// again. Readiness is edge-triggered and a full backlog takes no new connection, so without the
/// retry no event would ever bring the listener back.
pub const ACCEPT_RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// At most one warning per this interval about failing accepts; the others are counted in it.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether an accept error means the process or the system is out of a resource that may come
/// back (descriptors, socket buffers, memory), as opposed to a problem of one pending connection.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether an accept error is the descriptor limit, which the reserve descriptor can lift for one
/// accept-and-close.
fn is_descriptor_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// How [`Selector::close`] closes a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Close the socket now; staged sends are dropped. The channel is *not* reported as disconnected:
    /// the caller closed it and already knows.
    Immediate,
    /// Stop reading and taking sends, keep writing staged sends for at most `timeout`, then close.
    /// Reported once as disconnected with [`DisconnectReason::LocalClose`] when the close completes.
    Graceful {
        /// Longest time to keep flushing.
        timeout: Duration,
    },
}

/// A channel accepted by one of the Selector's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The listener that accepted it.
    pub listener: ListenerId,
    /// The new channel.
    pub channel: ChannelId,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// A channel the Selector closed, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnected {
    /// The channel; its id is dead from now on.
    pub channel: ChannelId,
    /// Why it was closed.
    pub reason: DisconnectReason,
    /// Staged sends that had not fully left and were dropped with the channel.
    pub unsent: usize,
}

/// A staged send whose last byte has been written to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedSend {
    /// The channel it was sent on.
    pub channel: ChannelId,
    /// The sequence number [`Selector::send`] returned for it.
    pub seq: u64,
}

/// A frame received whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The channel it arrived on.
    pub channel: ChannelId,
    /// The frame's payload, without its length prefix; split off the read buffer without a copy.
    pub frame: Bytes,
}

/// Where a run of whole frames received in borrowed-receive mode lies in its channel's read
/// buffer: `start..end`, prefixes included, checked against the maximum frame size when decoded.
#[derive(Debug, Clone, Copy)]
struct FrameRef {
    channel: ChannelId,
    start: usize,
    end: usize,
}

/// The payload of the frame at the front of `buf` — a run of whole frames with their 4-byte
/// big-endian length prefixes, as [`Selector::received_run`] hands out — and the rest of `buf`;
/// `None` when `buf` does not start with a whole frame (it is empty, say).
///
/// # Example
/// ```
/// use mqnet::net::split_frame;
///
/// let run = [0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0];
/// let (first, rest) = split_frame(&run).unwrap();
/// assert_eq!(first, b"hi");
/// let (second, rest) = split_frame(rest).unwrap();
/// assert!(second.is_empty() && rest.is_empty());
/// assert!(split_frame(rest).is_none());
/// ```
#[inline]
pub fn split_frame(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let h = buf.get(..HEADER_LEN)?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let end = HEADER_LEN.checked_add(len)?;
    let frame = buf.get(HEADER_LEN..end)?;
    Some((frame, &buf[end..]))
}

/// Scans the whole frames at the front of `buf`: where the last one ends, how many there are, and
/// the error of the header that stopped the scan, if one did (the frames before it still count).
#[inline]
fn scan_frames(decoder: FrameDecoder, buf: &[u8]) -> (usize, u64, Option<FrameError>) {
    let mut end = 0;
    let mut frames = 0;
    loop {
        let pending = &buf[end..];
        match decoder.peek_len(pending) {
            Ok(Some(len)) if pending.len() - HEADER_LEN >= len => {
                end += HEADER_LEN + len;
                frames += 1;
            }
            Ok(_) => return (end, frames, None),
            Err(e) => return (end, frames, Some(e)),
        }
    }
}

/// What [`Selector::for_each_received`] hands out beside each frame: staging on the channel the
/// frame came from, while the frame is still borrowed from that channel's read buffer.
#[derive(Debug)]
pub struct ChannelSink<'a> {
    /// `None` when the channel is gone or closing.
    inner: Option<SinkInner<'a>>,
    closing: bool,
    max_frame_size: usize,
    /// Whether frames staged through the sink are reported one by one (the Selector's
    /// `report_sends`).
    track: bool,
}

#[derive(Debug)]
struct SinkInner<'a> {
    sends: &'a mut SendQueue,
    muted: &'a mut bool,
    staged: bool,
}

impl ChannelSink<'_> {
    /// Stages one frame whose payload `write` appends straight into the channel's send buffer
    /// (the length prefix is filled in afterwards), behind everything staged before. Returns the
    /// frame's sequence number, or `None` when `write` returned `false` (nothing is staged then).
    ///
    /// Unlike [`Selector::send`], this does not refuse a frame over `max_staged_bytes`: the bytes
    /// are written already. Check [`staged_bytes`](Self::staged_bytes) and
    /// [`mute`](Self::mute) the channel to bound what a peer that does not read can make you
    /// stage.
    ///
    /// # Errors
    /// [`SendError::UnknownChannel`] or [`SendError::Closing`] when the channel is gone or closing,
    /// [`SendError::InvalidFrame`] when the payload is over `max_frame_size`; nothing is staged.
    #[inline]
    pub fn send_with(
        &mut self,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
    ) -> Result<Option<u64>, SendError> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(if self.closing {
                SendError::Closing
            } else {
                SendError::UnknownChannel
            });
        };
        let seq = inner
            .sends
            .push_with(self.max_frame_size, self.track, write)
            .map_err(SendError::InvalidFrame)?;
        inner.staged |= seq.is_some();
        Ok(seq)
    }

    /// Bytes staged on the channel and not yet written (0 when it is gone).
    #[inline]
    pub fn staged_bytes(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.sends.staged_bytes())
    }

    /// Stops reading the channel, as [`Selector::mute`]: frames of it still to come in this
    /// [`for_each_received`](Selector::for_each_received) are handed out, later ones wait for
    /// [`Selector::unmute`].
    #[inline]
    pub fn mute(&mut self) {
        if let Some(i) = self.inner.as_mut() {
            *i.muted = true;
        }
    }

    /// Whether the channel takes frames (open and not closing).
    #[inline]
    pub fn is_open(&self) -> bool {
        self.inner.is_some()
    }
}

/// A handle that wakes a [`Selector`] blocked in [`Selector::poll`] from another thread.
#[derive(Debug, Clone)]
pub struct SelectorWaker(Arc<Waker>);

impl SelectorWaker {
    /// Interrupts the Selector's current or next blocking poll; that poll then reports
    /// [`Selector::woken`]. Wakes coalesce: several calls before a poll give one wake-up.
    ///
    /// # Errors
    /// The OS error of the underlying eventfd write (practically never).
    pub fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

#[derive(Debug)]
struct Listener {
    id: ListenerId,
    socket: TcpListener,
    /// Accepted channels get a server-side TLS session with this configuration.
    #[cfg(feature = "tls")]
    tls: Option<Arc<super::tls::rustls::ServerConfig>>,
}

#[derive(Debug)]
enum Slot {
    Channel(Box<Channel>),
    Listener(Listener),
}

/// Reports collected by one poll. Cleared at the start of the next poll.
#[derive(Debug, Default)]
struct Outputs {
    connected: Vec<ChannelId>,
    accepted: Vec<Accepted>,
    disconnected: Vec<Disconnected>,
    completed_sends: Vec<CompletedSend>,
    completed_receives: Vec<Received>,
    /// Borrowed-receive mode: the frames received, as offsets into their channels' read buffers.
    frames: Vec<FrameRef>,
    /// Borrowed-receive mode: read buffers of channels closed while they held reported frames.
    graveyard: Vec<(ChannelId, bytes::BytesMut)>,
    /// Some frame fully left during this poll (reported in `completed_sends` or not).
    sent: bool,
    woken: bool,
}

impl Outputs {
    fn clear(&mut self) {
        self.connected.clear();
        self.accepted.clear();
        self.disconnected.clear();
        self.completed_sends.clear();
        self.completed_receives.clear();
        self.frames.clear();
        self.graveyard.clear();
        self.sent = false;
        self.woken = false;
    }

    /// Whether the poll has something to report; completed sends count only with `sends`.
    fn has_reports(&self, sends: bool) -> bool {
        !(self.connected.is_empty()
            && self.accepted.is_empty()
            && self.disconnected.is_empty()
            && (!sends || !self.sent)
            && self.completed_receives.is_empty()
            && self.frames.is_empty())
    }
}

/// A single-threaded, non-blocking socket multiplexer over mio, with length-prefixed framing.
///
/// # Contract
///
/// Callers [`connect`](Selector::connect), [`listen`](Selector::listen) and
/// [`send`](Selector::send) (which only stages), then call [`poll`](Selector::poll), which does all
/// the socket work. One `poll` runs, in this order:
///
/// 1. **Clear** every output of the previous poll, then carry in what happened between polls (a
///    connect that completed immediately, a graceful close with nothing left to flush).
/// 2. **Write** the staged sends of every channel that has some and is not blocked, with vectored
///    writes across frame boundaries, until the socket says `WouldBlock`. Small frames (at most 512
///    bytes with their prefix) were copied into one contiguous buffer per channel by `send`, so a
///    run of them is written as one slice.
/// 3. **Select**: wait in `epoll_wait` for at most the caller's timeout, shortened to the next idle
///    expiry, graceful-close deadline or accept retry, and to zero when step 1, 2 or 4 has
///    something to report (sends completed in step 2 only while
///    [`set_wake_on_sends`](Selector::set_wake_on_sends) is on) or a channel is left with work
///    from the previous poll (read budget spent, unmuted with data buffered, accept budget spent).
/// 4. **Handle readiness**: first channels carried over from the previous poll, then each event.
///    Connecting sockets finish the non-blocking connect (`take_error`, then `peer_addr`; a spurious
///    event leaves them connecting). Listeners accept up to `accept_budget` connections. A listener
///    whose accept failed for lack of resources (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) is retried
///    every [`ACCEPT_RETRY_INTERVAL`] while the condition lasts; on the descriptor limit, a reserve
///    descriptor is released to accept and close pending connections at once (counted in
///    [`SelectorMetrics::accepts_refused`]), so their peers see a close rather than a hang. Writable
///    channels write. Readable, unmuted channels read until `WouldBlock`, until `read_budget` bytes
///    (then they are revisited on the next poll without waiting for an event), or until a read
///    returns less than it asked for — with edge-triggered readiness that means the receive queue
///    was empty, and later data raises a new edge; events that report the peer's FIN or an error
///    are read to the end. Every complete frame is split off the read buffer and reported.
/// 5. **Expire** channels idle longer than `connections_max_idle`, oldest first, and finish graceful
///    closes whose deadline passed.
///
/// # Outputs
///
/// Every output describes what happened during the most recent `poll` and is cleared when the next
/// `poll` starts: [`connected`](Selector::connected), [`accepted`](Selector::accepted),
/// [`disconnected`](Selector::disconnected), [`completed_sends`](Selector::completed_sends),
/// [`completed_receives`](Selector::completed_receives), [`woken`](Selector::woken).
/// Receives of a channel come in arrival order; a channel may report receives and its disconnect in
/// the same poll (the frames arrived before the failure). A channel the Selector closes on its own
/// is reported in `disconnected` exactly once; a channel closed with [`CloseMode::Immediate`] is not
/// reported.
///
/// Drop received frames (or [`drain_completed_receives`](Selector::drain_completed_receives) them)
/// before the next poll when you can: a frame shares the channel's read buffer, and the buffer's
/// space is reused without allocating only once no frame refers to it.
///
/// # Example
///
/// ```
/// use std::time::{Duration, Instant};
/// use bytes::Bytes;
/// use mqnet::net::{Selector, SocketOptions};
///
/// let mut sel = Selector::new().unwrap();
/// let listener = sel.listen("127.0.0.1:0".parse().unwrap()).unwrap();
/// let addr = sel.listener_addr(listener).unwrap();
/// let client = sel.connect(addr, &SocketOptions::default()).unwrap();
/// sel.send(client, Bytes::from_static(b"ping")).unwrap();
///
/// let deadline = Instant::now() + Duration::from_secs(10);
/// let mut got = None;
/// while got.is_none() && Instant::now() < deadline {
///     sel.poll(Some(Duration::from_millis(100))).unwrap();
///     got = sel.completed_receives().first().map(|r| r.frame.clone());
/// }
/// assert_eq!(got.as_deref(), Some(&b"ping"[..]));
/// ```
#[derive(Debug)]
pub struct Selector {
    poll: Poll,
    events: Option<Events>,
    config: SelectorConfig,
    decoder: FrameDecoder,
    slots: Slots<Slot>,
    waker: SelectorWaker,
    lru: Lru,
    /// Channels with staged sends to try before selecting.
    write_list: Vec<ChannelId>,
    /// Channels to read (or deliver buffered frames of) without waiting for an event.
    read_list: Vec<ChannelId>,
    /// Listeners whose accept budget ran out.
    accept_list: Vec<ListenerId>,
    /// Channels closing gracefully.
    closing: Vec<ChannelId>,
    /// Listeners whose accept failed for lack of resources, retried at `accept_retry_at`.
    starved: Vec<ListenerId>,
    accept_retry_at: Option<Instant>,
    /// A lower bound of the next idle-expiry deadline (`None`: not known, work it out). Touches
    /// only make channels younger and removals only drop them, so a bound once right stays a
    /// lower bound; a poll before it neither looks at the idle list nor subtracts instants.
    idle_bound: Option<Instant>,
    /// A descriptor held while the Selector has a listener, released when accept hits the
    /// descriptor limit so that pending connections can be accepted and closed at once (a clean
    /// refusal instead of a hang in a full backlog).
    reserve_fd: Option<std::fs::File>,
    /// Rate limit of the accept-failure warning: when it was last logged, and failures since.
    accept_warned_at: Option<Instant>,
    accept_failures_unlogged: u64,
    /// Borrowed-receive mode is on (see [`Selector::set_borrowed_receives`]).
    borrowed: bool,
    /// Sends completed by the pre-select write shorten the select to zero (see
    /// [`Selector::set_wake_on_sends`]).
    wake_on_sends: bool,
    /// Completed sends are reported (see [`Selector::set_report_sends`]).
    report_sends: bool,
    /// When the last poll finished (see [`Selector::finished_at`]).
    finished_at: Option<Instant>,
    /// Channels holding bytes of frames reported by the last poll; dropped when the next starts.
    consumed_list: Vec<ChannelId>,
    /// Scratch list swapped with the work lists, so iterating them allocates nothing.
    scratch: Vec<ChannelId>,
    /// Reports produced between polls, carried into the next poll's outputs.
    carried_connected: Vec<ChannelId>,
    carried_disconnected: Vec<Disconnected>,
    out: Outputs,
    metrics: SelectorMetrics,
    /// Outbound channels get a client-side TLS session with this configuration.
    #[cfg(feature = "tls")]
    tls_client: Option<Arc<super::tls::rustls::ClientConfig>>,
}

impl Selector {
    /// A Selector with the default configuration.
    ///
    /// # Errors
    /// The OS error of creating the epoll instance or its waker.
    pub fn new() -> io::Result<Self> {
        Selector::with_config(SelectorConfig::default())
    }

    /// A Selector with `config`.
    ///
    /// # Errors
    /// The OS error of creating the epoll instance or its waker.
    pub fn with_config(config: SelectorConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = SelectorWaker(Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?));
        Ok(Selector {
            events: Some(Events::with_capacity(config.events_capacity.max(1))),
            decoder: FrameDecoder::new(config.max_frame_size),
            poll,
            config,
            slots: Slots::default(),
            waker,
            lru: Lru::default(),
            write_list: Vec::new(),
            read_list: Vec::new(),
            accept_list: Vec::new(),
            closing: Vec::new(),
            starved: Vec::new(),
            accept_retry_at: None,
            idle_bound: None,
            reserve_fd: None,
            accept_warned_at: None,
            accept_failures_unlogged: 0,
            borrowed: false,
            wake_on_sends: true,
            report_sends: true,
            finished_at: None,
            consumed_list: Vec::new(),
            scratch: Vec::new(),
            carried_connected: Vec::new(),
            carried_disconnected: Vec::new(),
            out: Outputs::default(),
            metrics: SelectorMetrics::default(),
            #[cfg(feature = "tls")]
            tls_client: None,
        })
    }

    /// The configuration this Selector runs with.
    pub fn config(&self) -> &SelectorConfig {
        &self.config
    }

    /// A handle other threads use to interrupt a blocking [`poll`](Selector::poll).
    pub fn waker(&self) -> SelectorWaker {
        self.waker.clone()
    }

    // ----- opening -------------------------------------------------------------------------------

    fn too_many_channels() -> io::Error {
        io::Error::other("too many channels")
    }

    /// Starts a non-blocking connect to `addr` with `options` set on the socket first.
    ///
    /// The channel exists from now on. A connect that completes at once is reported in
    /// [`connected`](Selector::connected) by the next poll; one that completes later is reported by
    /// the poll that sees it complete; one that fails later (refused, unreachable) is reported in
    /// [`disconnected`](Selector::disconnected) with [`DisconnectReason::ConnectFailed`]. Sends may
    /// be staged right away; they are written once the connection is up.
    ///
    /// # Errors
    /// An OS error that happened synchronously (socket creation, an option, a connect that failed at
    /// once); no channel was created then.
    pub fn connect(&mut self, addr: SocketAddr, options: &SocketOptions) -> io::Result<ChannelId> {
        let layer = self.client_layer(addr, None)?;
        self.open(addr, options, layer)
    }

    /// As [`connect`](Selector::connect), naming the host `addr` was resolved from: with TLS
    /// (see `Selector::set_tls_client`, feature `tls`) the server's certificate is verified
    /// against `host` (server name indication too) rather than against the IP address.
    ///
    /// # Errors
    /// As [`connect`](Selector::connect).
    pub fn connect_named(
        &mut self,
        addr: SocketAddr,
        host: &str,
        options: &SocketOptions,
    ) -> io::Result<ChannelId> {
        let layer = self.client_layer(addr, Some(host))?;
        self.open(addr, options, layer)
    }

    fn open(
        &mut self,
        addr: SocketAddr,
        options: &SocketOptions,
        layer: Layer,
    ) -> io::Result<ChannelId> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        options.apply(&socket)?;
        let immediate = match socket.connect(&addr.into()) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => false,
            Err(e) => {
                self.metrics.connect_failures += 1;
                return Err(e);
            }
        };
        let mut stream = TcpStream::from_std(socket.into());
        let entry = self
            .slots
            .vacant_entry()
            .ok_or_else(Self::too_many_channels)?;
        let slot = entry.key().slot();
        self.poll.registry().register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let id = ChannelId::from(entry.key());
        let state = if immediate {
            ChannelState::Connected
        } else {
            ChannelState::Connecting
        };
        let mut ch = Box::new(Channel::new(id, stream, state));
        ch.peer = Some(addr);
        ch.layer = layer;
        let deferred = ch.layer.defers_connected();
        if immediate {
            ch.established = true;
            if ch.layer.wants_write() {
                // The TLS client's first flight goes out with the next poll.
                ch.in_write_list = true;
                self.write_list.push(id);
            }
        }
        entry.insert(Slot::Channel(ch));
        if immediate {
            self.metrics.connections_created += 1;
            if !deferred {
                self.carried_connected.push(id);
            }
            self.lru.touch(slot, Instant::now());
        }
        log::debug!("{id}: connecting to {addr} (immediate: {immediate})");
        Ok(id)
    }

    /// Binds a listening socket on `addr` with the default backlog (1024); accepted channels are
    /// reported in [`accepted`](Selector::accepted).
    ///
    /// # Errors
    /// The OS error of creating, binding or listening.
    pub fn listen(&mut self, addr: SocketAddr) -> io::Result<ListenerId> {
        self.listen_with_backlog(addr, DEFAULT_BACKLOG)
    }

    /// As [`listen`](Selector::listen), with an explicit accept backlog.
    ///
    /// # Errors
    /// The OS error of creating, binding or listening.
    pub fn listen_with_backlog(
        &mut self,
        addr: SocketAddr,
        backlog: i32,
    ) -> io::Result<ListenerId> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        if let Some(n) = self.config.accepted_socket_options.receive_buffer_bytes {
            socket.set_recv_buffer_size(n)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        let mut listener = TcpListener::from_std(socket.into());
        if self.config.reserve_descriptor && self.reserve_fd.is_none() {
            self.reserve_fd = std::fs::File::open("/dev/null").ok();
        }
        let entry = self
            .slots
            .vacant_entry()
            .ok_or_else(Self::too_many_channels)?;
        self.poll.registry().register(
            &mut listener,
            Token(entry.key().slot()),
            Interest::READABLE,
        )?;
        let id = ListenerId::from(entry.key());
        entry.insert(Slot::Listener(Listener {
            id,
            socket: listener,
            #[cfg(feature = "tls")]
            tls: None,
        }));
        Ok(id)
    }

    /// The local address a listener is bound to (useful after binding port 0).
    ///
    /// # Errors
    /// [`ChannelError::Unknown`] for a closed or unknown listener.
    pub fn listener_addr(&self, id: ListenerId) -> Result<SocketAddr, ChannelError> {
        match self.slots.get(id.key()) {
            Some(Slot::Listener(l)) => l.socket.local_addr().map_err(|_| ChannelError::Unknown),
            _ => Err(ChannelError::Unknown),
        }
    }

    /// Stops listening; channels already accepted stay open.
    ///
    /// # Errors
    /// [`ChannelError::Unknown`] for a closed or unknown listener.
    pub fn close_listener(&mut self, id: ListenerId) -> Result<(), ChannelError> {
        match self.slots.get(id.key()) {
            Some(Slot::Listener(_)) => {}
            _ => return Err(ChannelError::Unknown),
        }
        if let Some(Slot::Listener(mut l)) = self.slots.remove(id.key()) {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        self.starved.retain(|l| *l != id);
        Ok(())
    }

    // ----- channel access ------------------------------------------------------------------------

    fn channel(&self, id: ChannelId) -> Option<&Channel> {
        match self.slots.get(id.key()) {
            Some(Slot::Channel(c)) => Some(c),
            _ => None,
        }
    }

    fn channel_mut(&mut self, id: ChannelId) -> Option<&mut Channel> {
        match self.slots.get_mut(id.key()) {
            Some(Slot::Channel(c)) => Some(c),
            _ => None,
        }
    }

    /// Whether `id` names an open channel (connecting, connected or closing).
    pub fn contains(&self, id: ChannelId) -> bool {
        self.channel(id).is_some()
    }

    /// Whether the channel's connection is established and not closing.
    pub fn is_connected(&self, id: ChannelId) -> bool {
        self.channel(id).is_some_and(|c| c.is_connected())
    }

    /// Whether the channel takes more sends: open, not closing, staged bytes below
    /// `max_staged_bytes`, and no send refused with [`SendError::QueueFull`] since the channel last
    /// wrote. It is `false` right after a `QueueFull`; poll until it is `true`, then retry.
    pub fn is_writable(&self, id: ChannelId) -> bool {
        self.channel(id).is_some_and(|c| {
            !matches!(c.state, ChannelState::Closing { .. })
                && !c.send_refused
                && c.sends.staged_bytes() < self.config.max_staged_bytes
        })
    }

    /// Bytes staged on the channel and not yet written (0 for an unknown channel).
    pub fn staged_bytes(&self, id: ChannelId) -> usize {
        self.channel(id).map_or(0, |c| c.sends.staged_bytes())
    }

    /// Frames staged on the channel and not yet reported written (0 for an unknown channel; see
    /// [`set_report_sends`](Selector::set_report_sends) for frames staged while reports are off).
    pub fn staged_frames(&self, id: ChannelId) -> usize {
        self.channel(id).map_or(0, |c| c.sends.len())
    }

    /// Bytes of read buffer the channel holds: the allocation its read buffer last grew to, 0 when
    /// it holds none (or for an unknown channel). A buffer grown past 1 MiB for a large frame is
    /// released once it is empty, so this falls back after a burst of large frames.
    pub fn read_buffer_bytes(&self, id: ChannelId) -> usize {
        self.channel(id).map_or(0, |c| c.read_alloc)
    }

    /// Whether the channel is muted.
    pub fn is_muted(&self, id: ChannelId) -> bool {
        self.channel(id).is_some_and(|c| c.muted)
    }

    /// The address the channel connects to (outbound) or was accepted from.
    pub fn peer_addr(&self, id: ChannelId) -> Option<SocketAddr> {
        self.channel(id).and_then(|c| c.peer)
    }

    /// Open channels and listeners.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no channel or listener is open.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    // ----- sending -------------------------------------------------------------------------------

    /// Stages `payload` as one frame (the Selector writes its length prefix). Nothing is written
    /// until the next [`poll`](Selector::poll). Returns the frame's sequence number on this channel,
    /// which [`completed_sends`](Selector::completed_sends) reports once the frame has fully left.
    ///
    /// # Errors
    /// [`SendError`]: unknown or closing channel, frame over `max_frame_size`, or staged bytes over
    /// `max_staged_bytes` (back-pressure: poll, then retry when [`is_writable`](Selector::is_writable)).
    /// Nothing is staged when it fails.
    pub fn send(&mut self, id: ChannelId, payload: Bytes) -> Result<u64, SendError> {
        self.send_or_return(id, payload).map_err(|(e, _)| e)
    }

    /// As [`send`](Selector::send), handing the payload back when it is refused, so the caller can
    /// retry after back-pressure without keeping a copy.
    ///
    /// # Errors
    /// As [`send`](Selector::send), with the refused payload.
    pub fn send_or_return(
        &mut self,
        id: ChannelId,
        payload: Bytes,
    ) -> Result<u64, (SendError, Bytes)> {
        let header = match encode_header(payload.len(), self.config.max_frame_size) {
            Ok(h) => h,
            Err(e) => return Err((SendError::InvalidFrame(e), payload)),
        };
        self.stage(id, Some(header), payload)
    }

    /// Stages a buffer that already starts with its 4-byte length prefix (for callers that encode
    /// straight into a send buffer). The prefix is checked against the bytes that follow.
    ///
    /// # Errors
    /// As [`send`](Selector::send), and [`SendError::PrefixMismatch`] when the prefix is wrong.
    pub fn send_prefixed(&mut self, id: ChannelId, frame: Bytes) -> Result<u64, SendError> {
        let announced = match frame.get(..HEADER_LEN) {
            Some(h) => i64::from(i32::from_be_bytes([h[0], h[1], h[2], h[3]])),
            None => -1,
        };
        let actual = frame.len().saturating_sub(HEADER_LEN);
        if announced != actual as i64 {
            return Err(SendError::PrefixMismatch { announced, actual });
        }
        encode_header(actual, self.config.max_frame_size).map_err(SendError::InvalidFrame)?;
        self.stage(id, None, frame).map_err(|(e, _)| e)
    }

    fn stage(
        &mut self,
        id: ChannelId,
        header: Option<[u8; HEADER_LEN]>,
        body: Bytes,
    ) -> Result<u64, (SendError, Bytes)> {
        let limit = self.config.max_staged_bytes;
        let Some(Slot::Channel(ch)) = self.slots.get_mut(id.key()) else {
            return Err((SendError::UnknownChannel, body));
        };
        if matches!(ch.state, ChannelState::Closing { .. }) {
            return Err((SendError::Closing, body));
        }
        let staged = ch.sends.staged_bytes();
        let len = body.len() + header.map_or(0, |h| h.len());
        if staged > 0 && staged + len > limit {
            ch.send_refused = true;
            return Err((SendError::QueueFull { staged, limit }, body));
        }
        let seq = ch.sends.push(header, body, self.report_sends);
        if ch.is_connected() && !ch.write_blocked && !ch.in_write_list {
            ch.in_write_list = true;
            self.write_list.push(id);
        }
        Ok(seq)
    }

    // ----- mute, close ---------------------------------------------------------------------------

    /// Stops reading the channel: no bytes are read from its socket and no buffered frame is
    /// reported until [`unmute`](Selector::unmute). Writes continue. Muting a muted channel is a
    /// no-op.
    ///
    /// # Errors
    /// [`ChannelError::Unknown`] for a closed or unknown channel.
    pub fn mute(&mut self, id: ChannelId) -> Result<(), ChannelError> {
        let ch = self.channel_mut(id).ok_or(ChannelError::Unknown)?;
        ch.muted = true;
        Ok(())
    }

    /// Resumes reading a muted channel. Frames buffered while muted, and data that arrived on the
    /// socket meanwhile, are read and reported by the next poll, which then does not block.
    ///
    /// # Errors
    /// [`ChannelError::Unknown`] for a closed or unknown channel.
    pub fn unmute(&mut self, id: ChannelId) -> Result<(), ChannelError> {
        let ch = self.channel_mut(id).ok_or(ChannelError::Unknown)?;
        if !ch.muted || matches!(ch.state, ChannelState::Closing { .. }) {
            ch.muted = false;
            return Ok(());
        }
        ch.muted = false;
        let pending = ch.read_more || ch.unreported() > 0;
        if pending && !ch.in_read_list {
            ch.in_read_list = true;
            self.read_list.push(id);
        }
        Ok(())
    }

    /// Closes a channel. See [`CloseMode`] for what is flushed and what is reported.
    ///
    /// # Errors
    /// [`ChannelError::Unknown`] for a closed or unknown channel.
    pub fn close(&mut self, id: ChannelId, mode: CloseMode) -> Result<(), ChannelError> {
        let now = Instant::now();
        let ch = self.channel_mut(id).ok_or(ChannelError::Unknown)?;
        match mode {
            CloseMode::Immediate => {
                self.remove_channel(id);
            }
            CloseMode::Graceful { timeout } => {
                if matches!(ch.state, ChannelState::Closing { .. }) {
                    return Ok(());
                }
                let connected = ch.is_connected();
                ch.muted = true;
                ch.state = ChannelState::Closing {
                    deadline: now + timeout,
                };
                if ch.sends.is_empty() || !connected {
                    let flushed = ch.sends.is_empty();
                    let d = self.remove_channel(id);
                    self.carried_disconnected.push(Disconnected {
                        channel: id,
                        reason: DisconnectReason::LocalClose { flushed },
                        unsent: d,
                    });
                } else {
                    self.lru.remove(id.index as usize);
                    self.closing.push(id);
                }
            }
        }
        Ok(())
    }

    /// Removes the channel, returns how many staged frames were dropped with it.
    fn remove_channel(&mut self, id: ChannelId) -> usize {
        let slot = id.slot();
        if !matches!(self.slots.get(id.key()), Some(Slot::Channel(_))) {
            return 0;
        }
        let Some(Slot::Channel(mut ch)) = self.slots.remove(id.key()) else {
            return 0;
        };
        ch.layer.close(&ch.stream);
        let _ = self.poll.registry().deregister(&mut ch.stream);
        if ch.consumed > 0 {
            // Frames of it reported by this poll are still to be handed out.
            let buf = std::mem::take(&mut ch.read_buf);
            self.out.graveyard.push((id, buf));
        }
        self.lru.remove(slot);
        if ch.established {
            self.metrics.connections_closed += 1;
        }
        let unsent = ch.sends.clear();
        // An immediate connect closed before the poll that would report it: report nothing.
        self.carried_connected.retain(|c| *c != id);
        log::debug!("{id}: closed ({unsent} staged frames dropped)");
        unsent
    }

    fn close_with(&mut self, id: ChannelId, reason: DisconnectReason) {
        if self.channel(id).is_none() {
            return;
        }
        let unsent = self.remove_channel(id);
        log::debug!("{id}: disconnected: {reason}");
        self.out.disconnected.push(Disconnected {
            channel: id,
            reason,
            unsent,
        });
    }

    // ----- outputs -------------------------------------------------------------------------------

    /// Outbound channels whose connection was established during the last poll.
    pub fn connected(&self) -> &[ChannelId] {
        &self.out.connected
    }

    /// Channels accepted by listeners during the last poll.
    pub fn accepted(&self) -> &[Accepted] {
        &self.out.accepted
    }

    /// Channels the Selector closed during the last poll, each exactly once, with the reason.
    pub fn disconnected(&self) -> &[Disconnected] {
        &self.out.disconnected
    }

    /// Staged frames that fully left during the last poll, in send order per channel.
    pub fn completed_sends(&self) -> &[CompletedSend] {
        &self.out.completed_sends
    }

    /// Frames received whole during the last poll, in arrival order per channel.
    pub fn completed_receives(&self) -> &[Received] {
        &self.out.completed_receives
    }

    /// Takes the last poll's received frames out of the Selector.
    pub fn drain_completed_receives(&mut self) -> std::vec::Drain<'_, Received> {
        self.out.completed_receives.drain(..)
    }

    /// Swaps the last poll's received frames into `out` (cleared first) without allocating; the
    /// Selector keeps `out`'s old buffer for its next poll.
    pub fn swap_completed_receives(&mut self, out: &mut Vec<Received>) {
        out.clear();
        std::mem::swap(out, &mut self.out.completed_receives);
    }

    /// Whether sends completed by a poll's pre-select write make that poll's select return at once
    /// (on by default). With it on, a caller that reacts to a completion (stages the next frame
    /// once the previous one left, completes a request that expects no response) sees it without
    /// waiting for the next event. A caller that does not react to completions turns it off: the
    /// completions are still reported, with whatever the select brings, and a request-response
    /// round trip costs one poll instead of two. It may be switched before any poll.
    pub fn set_wake_on_sends(&mut self, on: bool) {
        self.wake_on_sends = on;
    }

    /// The time the last successful [`poll`](Selector::poll) finished its work (read from the clock
    /// as it returned; `None` before the first). A driver loop that needs a recent time right
    /// after a poll can take this instead of reading the clock again.
    pub fn finished_at(&self) -> Option<Instant> {
        self.finished_at
    }

    /// Whether [`completed_sends`](Selector::completed_sends) reports each frame that fully left
    /// (on by default). A caller that never reads the reports (a server answering requests, whose
    /// only interest is that responses leave) turns it off and saves the per-frame report and the
    /// per-frame bookkeeping behind it: small frames staged while it is off are accounted as runs
    /// (the frames copied one after the other into the channel's send buffer), so
    /// [`staged_frames`](Selector::staged_frames) and the `frames_out` counter move by a whole
    /// run when its last byte leaves. Sends are written, bounded and closed exactly as before.
    pub fn set_report_sends(&mut self, on: bool) {
        self.report_sends = on;
    }

    /// Switches borrowed-receive mode on or off (off by default). When on, received frames are not
    /// split off the read buffer as [`Bytes`] (so [`completed_receives`](Selector::completed_receives)
    /// stays empty): they stay where they were read and are handed out as borrowed slices by
    /// [`for_each_received`](Selector::for_each_received), valid until the next poll, which drops
    /// them. No reference count is touched per frame; take an owned copy
    /// ([`Bytes::copy_from_slice`]) of one you need to keep.
    ///
    /// Switch it while no frame is outstanding (before the first poll, say).
    pub fn set_borrowed_receives(&mut self, on: bool) {
        self.borrowed = on;
    }

    /// Borrowed-receive mode: hands every frame received by the last poll to `f`, in arrival
    /// order per channel, with a [`ChannelSink`] to stage frames (a response, say) on the channel
    /// it came from. Frames of a channel closed in the same poll are handed out too (its sink
    /// refuses). Each frame is handed out once: a second call before the next poll finds none.
    ///
    /// # Example
    /// ```
    /// use std::time::{Duration, Instant};
    /// use bytes::Bytes;
    /// use mqnet::net::{Selector, SocketOptions};
    ///
    /// let mut server = Selector::new().unwrap();
    /// server.set_borrowed_receives(true);
    /// let listener = server.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    /// let mut client = Selector::new().unwrap();
    /// let ch = client.connect(server.listener_addr(listener).unwrap(), &SocketOptions::default()).unwrap();
    /// client.send(ch, Bytes::from_static(b"ping")).unwrap();
    /// let deadline = Instant::now() + Duration::from_secs(10);
    /// while client.completed_receives().is_empty() && Instant::now() < deadline {
    ///     client.poll(Some(Duration::from_millis(5))).unwrap();
    ///     server.poll(Some(Duration::from_millis(5))).unwrap();
    ///     server.for_each_received(|_ch, request, sink| {
    ///         // Echo, reversed, written straight into the send buffer.
    ///         sink.send_with(|w| {
    ///             request.iter().rev().for_each(|b| w.put_u8(*b));
    ///             true
    ///         })
    ///         .unwrap();
    ///     });
    /// }
    /// assert_eq!(&client.completed_receives()[0].frame[..], b"gnip");
    /// ```
    pub fn for_each_received(&mut self, mut f: impl FnMut(ChannelId, &[u8], &mut ChannelSink<'_>)) {
        self.for_each_received_run(|id, mut run, sink| {
            while let Some((frame, rest)) = split_frame(run) {
                f(id, frame, sink);
                run = rest;
            }
        });
    }

    /// As [`for_each_received`](Selector::for_each_received), one call per run of whole frames
    /// of one channel (length prefixes included; split them with [`split_frame`]), so that a
    /// caller's per-frame work sits in its own loop instead of behind a call per frame.
    pub(crate) fn for_each_received_run(
        &mut self,
        mut f: impl FnMut(ChannelId, &[u8], &mut ChannelSink<'_>),
    ) {
        let mut frames = std::mem::take(&mut self.out.frames);
        let max_frame_size = self.config.max_frame_size;
        let track = self.report_sends;
        for r in &frames {
            let range = r.start..r.end;
            match self.slots.get_mut(r.channel.key()) {
                Some(Slot::Channel(ch)) => {
                    let Channel {
                        read_buf,
                        sends,
                        muted,
                        state,
                        write_blocked,
                        in_write_list,
                        ..
                    } = &mut **ch;
                    let Some(run) = read_buf.get(range) else {
                        continue;
                    };
                    let closing = matches!(state, ChannelState::Closing { .. });
                    let mut sink = ChannelSink {
                        inner: (!closing).then_some(SinkInner {
                            sends,
                            muted,
                            staged: false,
                        }),
                        closing,
                        max_frame_size,
                        track,
                    };
                    f(r.channel, run, &mut sink);
                    let staged = sink.inner.is_some_and(|i| i.staged);
                    if staged
                        && *state == ChannelState::Connected
                        && !*write_blocked
                        && !*in_write_list
                    {
                        *in_write_list = true;
                        self.write_list.push(r.channel);
                    }
                }
                _ => {
                    let Some(run) = self
                        .out
                        .graveyard
                        .iter()
                        .find(|(id, _)| *id == r.channel)
                        .and_then(|(_, buf)| buf.get(range))
                    else {
                        continue;
                    };
                    let mut sink = ChannelSink {
                        inner: None,
                        closing: false,
                        max_frame_size,
                        track,
                    };
                    f(r.channel, run, &mut sink);
                }
            }
        }
        frames.clear();
        self.out.frames = frames;
    }

    /// Borrowed-receive mode: the `k`-th run of whole frames the last poll received, as the
    /// channel it came from and the bytes of its frames, length prefixes included (split them with
    /// [`split_frame`]); `None` past the last run. Runs are in arrival order per channel; one
    /// channel may have several. Unlike [`for_each_received`](Selector::for_each_received) it
    /// hands nothing out for good: a run can be looked at again, and between two looks the
    /// caller may use the Selector (close a channel, stage a frame) — the run stays readable until
    /// the next poll, also when its channel was closed in between.
    ///
    /// # Example
    /// ```
    /// use mqnet::net::{split_frame, Selector};
    ///
    /// let mut sel = Selector::new().unwrap();
    /// sel.set_borrowed_receives(true);
    /// // ... connect and poll ...
    /// let mut k = 0;
    /// while let Some((channel, mut run)) = sel.received_run(k) {
    ///     while let Some((frame, rest)) = split_frame(run) {
    ///         println!("{channel}: {} bytes", frame.len());
    ///         run = rest;
    ///     }
    ///     k += 1;
    /// }
    /// ```
    pub fn received_run(&self, k: usize) -> Option<(ChannelId, &[u8])> {
        let r = self.out.frames.get(k)?;
        let range = r.start..r.end;
        let run = match self.slots.get(r.channel.key()) {
            Some(Slot::Channel(ch)) => ch.read_buf.get(range),
            _ => self
                .out
                .graveyard
                .iter()
                .find(|(id, _)| *id == r.channel)
                .and_then(|(_, buf)| buf.get(range)),
        };
        // An empty run cannot be recorded; a missing buffer is reported as one so that the
        // caller's walk over the runs goes on.
        Some((r.channel, run.unwrap_or_default()))
    }

    /// Stages one frame on `id` whose payload `write` appends straight into the channel's send
    /// buffer (no payload buffer of your own, no copy); the length prefix is filled in afterwards.
    /// Returns the frame's sequence number, or `None` when `write` returned `false` (nothing is
    /// staged then). Nothing is written until the next [`poll`](Selector::poll).
    ///
    /// # Errors
    /// As [`send`](Selector::send); the staged-bytes bound is checked before `write` runs.
    #[inline]
    pub fn send_with(
        &mut self,
        id: ChannelId,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
    ) -> Result<Option<u64>, SendError> {
        self.stage_written(id, |q, max, track| q.push_with(max, track, write))
    }

    /// As [`send_with`](Selector::send_with), the frame's payload being what `write` appends
    /// followed by `body`. The body is written from its own buffer by the same vectored write
    /// (no copy), so a large part that already sits in a [`Bytes`] — a record batch, shared
    /// padding — costs a reference count, not a copy into the send buffer. Pays off above a few
    /// hundred bytes; smaller bodies are cheaper copied with
    /// [`FrameWriter::put_slice`]. Reported sent once the body's last byte has been written.
    ///
    /// ```no_run
    /// # use mqnet::net::{Selector, SocketOptions};
    /// # use bytes::Bytes;
    /// # let mut sel = Selector::new().unwrap();
    /// # let id = sel.connect("127.0.0.1:9092".parse().unwrap(), &SocketOptions::default()).unwrap();
    /// let batch = Bytes::from(vec![0u8; 16 * 1024]);
    /// let seq = sel.send_with_body(id, |w| { w.put_i32(7); true }, batch.clone());
    /// # let _ = seq;
    /// ```
    ///
    /// # Errors
    /// As [`send_with`](Selector::send_with); `max_frame_size` bounds the whole payload.
    pub fn send_with_body(
        &mut self,
        id: ChannelId,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
        body: Bytes,
    ) -> Result<Option<u64>, SendError> {
        self.stage_written(id, |q, max, track| q.push_written(max, track, write, body))
    }

    /// The checks of [`send_with`](Selector::send_with) around `push`, which stages the frame on
    /// the channel's queue given `max_frame_size` and whether sends are reported.
    #[inline]
    fn stage_written(
        &mut self,
        id: ChannelId,
        push: impl FnOnce(&mut SendQueue, usize, bool) -> Result<Option<u64>, FrameError>,
    ) -> Result<Option<u64>, SendError> {
        let limit = self.config.max_staged_bytes;
        let max_frame_size = self.config.max_frame_size;
        let Some(Slot::Channel(ch)) = self.slots.get_mut(id.key()) else {
            return Err(SendError::UnknownChannel);
        };
        if matches!(ch.state, ChannelState::Closing { .. }) {
            return Err(SendError::Closing);
        }
        let staged = ch.sends.staged_bytes();
        if staged >= limit {
            ch.send_refused = true;
            return Err(SendError::QueueFull { staged, limit });
        }
        let seq = push(&mut ch.sends, max_frame_size, self.report_sends)
            .map_err(SendError::InvalidFrame)?;
        if seq.is_some() && ch.is_connected() && !ch.write_blocked && !ch.in_write_list {
            ch.in_write_list = true;
            self.write_list.push(id);
        }
        Ok(seq)
    }

    /// Whether the last poll was interrupted by a [`SelectorWaker`].
    pub fn woken(&self) -> bool {
        self.out.woken
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> SelectorMetrics {
        self.metrics
    }

    // ----- poll ----------------------------------------------------------------------------------

    /// Does all pending connect, accept, read and write work, waiting at most `timeout` for
    /// readiness (`None`: until something happens). See the type-level docs for the exact order
    /// and for when each output is cleared.
    ///
    /// # Errors
    /// Only an error of the OS selector itself (`epoll_wait`); channel errors are reported per
    /// channel in [`disconnected`](Selector::disconnected) and never fail the poll.
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let started = Instant::now();
        self.metrics.polls += 1;
        self.out.clear();
        while let Some(id) = self.consumed_list.pop() {
            if let Some(ch) = self.channel_mut(id) {
                ch.drop_consumed();
            }
        }
        if !self.carried_connected.is_empty() {
            self.out.connected.append(&mut self.carried_connected);
        }
        if !self.carried_disconnected.is_empty() {
            self.out.disconnected.append(&mut self.carried_disconnected);
        }

        // 2. Write staged sends.
        self.flush_write_list(started);

        // 3. Select.
        let mut timeout = timeout;
        let carried_work = !self.read_list.is_empty() || !self.accept_list.is_empty();
        if carried_work || self.out.has_reports(self.wake_on_sends) {
            timeout = Some(Duration::ZERO);
        } else if let Some(deadline) = self.next_deadline() {
            timeout = Some(match timeout {
                // The deadline lies beyond the caller's timeout: no difference to work out.
                Some(t) if started.checked_add(t).is_some_and(|end| end <= deadline) => t,
                t => {
                    let until = deadline.saturating_duration_since(started);
                    t.map_or(until, |t| t.min(until))
                }
            });
        }
        let mut events = self
            .events
            .take()
            .unwrap_or_else(|| Events::with_capacity(self.config.events_capacity.max(1)));
        let select_start = Instant::now();
        let res = self.poll.poll(&mut events, timeout);
        let now = Instant::now();
        let selecting = now.saturating_duration_since(select_start);
        self.metrics.selects += 1;
        self.metrics.select_time += selecting;
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
            Err(e) => {
                self.events = Some(events);
                return Err(e);
            }
        }

        // 4. Carried-over work, then events.
        self.run_read_list(now);
        self.run_accept_list(now);
        self.run_starved(now);
        for event in events.iter() {
            let token = event.token();
            if token == WAKER_TOKEN {
                self.out.woken = true;
                continue;
            }
            match self.slots.at_slot(token.0) {
                Some((_, Slot::Listener(l))) => {
                    let id = l.id;
                    self.accept(id, now);
                }
                Some((_, Slot::Channel(c))) => {
                    let id = c.id;
                    let readable =
                        event.is_readable() || event.is_read_closed() || event.is_error();
                    let writable =
                        event.is_writable() || event.is_write_closed() || event.is_error();
                    let peer_done = event.is_read_closed() || event.is_error();
                    self.handle_channel(id, readable, writable, peer_done, now);
                }
                None => {}
            }
        }
        self.events = Some(events);

        // 5. Idle expiry and graceful-close deadlines.
        self.expire_idle(now);
        self.finish_closing(now);

        let finished = Instant::now();
        self.finished_at = Some(finished);
        let total = finished.saturating_duration_since(started);
        self.metrics.io_time += total.saturating_sub(selecting);
        Ok(())
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let idle = self.idle_deadline();
        if self.closing.is_empty() && self.accept_retry_at.is_none() {
            return idle;
        }
        let closing = self
            .closing
            .iter()
            .filter_map(|id| match self.channel(*id)?.state {
                ChannelState::Closing { deadline } => Some(deadline),
                _ => None,
            })
            .min();
        [idle, closing, self.accept_retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Retries the accepts of starved listeners once their retry time has come.
    fn run_starved(&mut self, now: Instant) {
        match self.accept_retry_at {
            Some(at) if now >= at => {}
            _ => return,
        }
        self.accept_retry_at = None;
        let list = std::mem::take(&mut self.starved);
        for id in &list {
            self.accept(*id, now);
        }
    }

    /// An accept failed with `e` (not `WouldBlock`): count it, log it (rate-limited), refuse
    /// pending connections cleanly if the reserve descriptor allows, and schedule a retry.
    fn accept_failed(&mut self, id: ListenerId, e: &io::Error, now: Instant) {
        let resource = is_resource_exhaustion(e);
        if resource {
            self.metrics.accept_resource_errors += 1;
        }
        self.accept_failures_unlogged += 1;
        let due = self
            .accept_warned_at
            .is_none_or(|at| now.saturating_duration_since(at) >= ACCEPT_LOG_INTERVAL);
        if due {
            log::warn!(
                "{id}: accept failed: {e} ({} failures since the last report; retrying every {} ms)",
                self.accept_failures_unlogged,
                ACCEPT_RETRY_INTERVAL.as_millis()
            );
            self.accept_warned_at = Some(now);
            self.accept_failures_unlogged = 0;
        }
        if is_descriptor_exhaustion(e) {
            if let Some(reserve) = self.reserve_fd.take() {
                drop(reserve);
                self.refuse_pending(id);
                self.reserve_fd = std::fs::File::open("/dev/null").ok();
            }
        }
        if !self.starved.contains(&id) {
            self.starved.push(id);
        }
        if self.accept_retry_at.is_none() {
            self.accept_retry_at = Some(now + ACCEPT_RETRY_INTERVAL);
        }
    }

    /// Accepts and closes at once up to `accept_budget` pending connections of `id`, with the
    /// descriptor the reserve released: their peers see the connection closed instead of waiting.
    fn refuse_pending(&mut self, id: ListenerId) {
        for _ in 0..self.config.accept_budget {
            let accepted = match self.slots.get(id.key()) {
                Some(Slot::Listener(l)) => l.socket.accept(),
                _ => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    drop(stream);
                    self.metrics.accepts_refused += 1;
                    log::debug!("{id}: out of descriptors: closed the connection from {peer}");
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(_) => return,
            }
        }
    }

    fn flush_write_list(&mut self, now: Instant) {
        if self.write_list.is_empty() {
            return;
        }
        let mut work = std::mem::take(&mut self.scratch);
        std::mem::swap(&mut work, &mut self.write_list);
        for id in work.drain(..) {
            if let Some(ch) = self.channel_mut(id) {
                ch.in_write_list = false;
                self.write_channel(id, now);
            }
        }
        self.scratch = work;
    }

    fn run_read_list(&mut self, now: Instant) {
        if self.read_list.is_empty() {
            return;
        }
        let mut work = std::mem::take(&mut self.scratch);
        std::mem::swap(&mut work, &mut self.read_list);
        for id in work.drain(..) {
            if let Some(ch) = self.channel_mut(id) {
                ch.in_read_list = false;
                self.read_channel(id, now, false);
            }
        }
        self.scratch = work;
    }

    fn run_accept_list(&mut self, now: Instant) {
        if self.accept_list.is_empty() {
            return;
        }
        let list = std::mem::take(&mut self.accept_list);
        for id in &list {
            self.accept(*id, now);
        }
        // `accept` pushes listeners that are still over budget back onto `self.accept_list`.
        drop(list);
    }

    fn handle_channel(
        &mut self,
        id: ChannelId,
        readable: bool,
        writable: bool,
        peer_done: bool,
        now: Instant,
    ) {
        let Some(ch) = self.channel_mut(id) else {
            return;
        };
        if ch.state == ChannelState::Connecting {
            if !self.finish_connect(id, now) {
                return;
            }
            // Connected now: write what was staged while connecting.
            self.write_channel(id, now);
        } else if writable {
            if let Some(ch) = self.channel_mut(id) {
                ch.write_blocked = false;
            }
            self.write_channel(id, now);
        }
        if readable {
            self.read_channel(id, now, !peer_done);
        }
    }

    /// mio's non-blocking connect steps: on readiness, `take_error`; then `peer_addr` tells connected
    /// (Ok) from still connecting (`NotConnected`, a spurious event). Returns whether the channel is
    /// connected now.
    fn finish_connect(&mut self, id: ChannelId, now: Instant) -> bool {
        let failure = {
            let Some(ch) = self.channel_mut(id) else {
                return false;
            };
            match ch.stream.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => match ch.stream.peer_addr() {
                    Ok(addr) => {
                        ch.peer = Some(addr);
                        ch.state = ChannelState::Connected;
                        ch.established = true;
                        None
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => return false,
                    Err(e) => Some(e),
                },
            }
        };
        if let Some(e) = failure {
            self.metrics.connect_failures += 1;
            self.close_with(id, DisconnectReason::ConnectFailed(IoFault::from(&e)));
            return false;
        }
        self.metrics.connections_created += 1;
        self.lru.touch(id.index as usize, now);
        // A TLS channel is reported connected when its handshake has finished (`read_channel`).
        if !self.channel(id).is_some_and(|c| c.layer.defers_connected()) {
            self.out.connected.push(id);
        }
        log::debug!("{id}: connected");
        true
    }

    fn accept(&mut self, id: ListenerId, now: Instant) {
        let opts = self.config.accepted_socket_options;
        for _ in 0..self.config.accept_budget {
            let (accepted, layer) = match self.slots.get(id.key()) {
                Some(Slot::Listener(l)) => (l.socket.accept(), Self::server_layer(l)),
                _ => return,
            };
            let (mut stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE and friends: a full backlog raises no new event, so the listener is
                    // retried on a timer until accept works again.
                    self.accept_failed(id, &e, now);
                    return;
                }
            };
            if let Err(e) = opts.apply_established(&socket2::SockRef::from(&stream)) {
                log::warn!("{id}: socket options on accepted connection from {peer}: {e}");
            }
            let Some(entry) = self.slots.vacant_entry() else {
                return;
            };
            let slot = entry.key().slot();
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("{id}: registering accepted connection from {peer}: {e}");
                continue;
            }
            let cid = ChannelId::from(entry.key());
            let mut ch = Box::new(Channel::new(cid, stream, ChannelState::Connected));
            ch.peer = Some(peer);
            ch.layer = match layer {
                Ok(layer) => layer,
                Err(e) => {
                    log::warn!("{id}: TLS session for the connection from {peer}: {e}");
                    let _ = self.poll.registry().deregister(&mut ch.stream);
                    continue;
                }
            };
            ch.established = true;
            // Data that arrived before registration is reported: `EPOLL_CTL_ADD` checks the socket's
            // current readiness. Nothing is read (or allocated) until then, so idle accepted
            // connections hold no read buffer.
            entry.insert(Slot::Channel(ch));
            self.metrics.connections_created += 1;
            self.lru.touch(slot, now);
            self.out.accepted.push(Accepted {
                listener: id,
                channel: cid,
                peer,
            });
        }
        if !self.accept_list.contains(&id) {
            self.accept_list.push(id);
        }
    }

    fn write_channel(&mut self, id: ChannelId, now: Instant) {
        let slot = id.slot();
        let Some(Slot::Channel(ch)) = self.slots.get_mut(id.key()) else {
            return;
        };
        if (ch.sends.is_empty() && !ch.layer.wants_write()) || ch.state == ChannelState::Connecting
        {
            return;
        }
        let sends = &mut self.out.completed_sends;
        let sent = &mut self.out.sent;
        let report = self.report_sends;
        let metrics = &mut self.metrics;
        let mut writer = LayerWriter::new(&mut ch.layer, &ch.stream);
        let res = ch
            .sends
            .write_to(&mut writer, |first, count| {
                metrics.frames_out += u64::from(count);
                *sent = true;
                if report {
                    for seq in first..first + u64::from(count) {
                        sends.push(CompletedSend { channel: id, seq });
                    }
                }
            })
            .and_then(|mut progress| {
                progress.blocked |= writer.flush_layer()?;
                Ok(progress)
            });
        match res {
            Ok(progress) => {
                metrics.bytes_out += progress.bytes as u64;
                ch.write_blocked = progress.blocked;
                if progress.bytes > 0 {
                    ch.send_refused = false;
                }
                let closing = matches!(ch.state, ChannelState::Closing { .. });
                let drained = ch.sends.is_empty() && !ch.layer.wants_write();
                if progress.bytes > 0 && !closing {
                    self.lru.touch(slot, now);
                }
                if closing && drained {
                    let unsent = self.remove_channel(id);
                    self.out.disconnected.push(Disconnected {
                        channel: id,
                        reason: DisconnectReason::LocalClose { flushed: true },
                        unsent,
                    });
                }
            }
            Err(e) => self.close_with(id, layer::disconnect_reason(&e)),
        }
    }

    /// Reads the channel until `WouldBlock`, the read budget, or — when `short_read_drains` — a
    /// read that returns less than it asked for. With edge-triggered readiness that is safe: the
    /// receive queue was empty at that instant, and data arriving later raises a new edge. It is
    /// used only for events that did not report the peer's FIN or an error (a FIN queued behind the
    /// data raises no new edge), and saves one `recv` per readable channel per poll.
    fn read_channel(&mut self, id: ChannelId, now: Instant, short_read_drains: bool) {
        let budget = self.config.read_budget;
        let chunk = self.config.read_chunk.max(HEADER_LEN);
        let decoder = self.decoder;
        let slot = id.slot();
        let Some(Slot::Channel(ch)) = self.slots.get_mut(id.key()) else {
            return;
        };
        if ch.state != ChannelState::Connected {
            return;
        }
        if ch.muted {
            ch.read_more = true;
            return;
        }
        let mut read_total = 0usize;
        let mut drained = false;
        let mut outcome: Option<DisconnectReason> = None;
        let mut touched = false;
        let borrowed = self.borrowed;
        loop {
            // Deliver every whole frame already buffered.
            // One scan over the whole frames buffered; they are handed out as one run.
            let start = ch.consumed;
            let (end, frames, invalid) = scan_frames(decoder, &ch.read_buf[start..]);
            let end = start + end;
            if frames > 0 {
                self.metrics.frames_in += frames;
                if borrowed {
                    if start == 0 {
                        self.consumed_list.push(id);
                    }
                    ch.consumed = end;
                    match self.out.frames.last_mut() {
                        Some(last) if last.channel == id && last.end == start => last.end = end,
                        _ => self.out.frames.push(FrameRef {
                            channel: id,
                            start,
                            end,
                        }),
                    }
                } else {
                    // One split off the read buffer for the run, then a handle per frame on it.
                    let mut run = ch.read_buf.split_to(end).freeze();
                    if frames == 1 {
                        run.advance(HEADER_LEN);
                        self.out.completed_receives.push(Received {
                            channel: id,
                            frame: run,
                        });
                    } else {
                        let mut rest = &run[..];
                        while let Some((frame, next)) = split_frame(rest) {
                            self.out.completed_receives.push(Received {
                                channel: id,
                                frame: run.slice_ref(frame),
                            });
                            rest = next;
                        }
                    }
                }
            }
            if let Some(e) = invalid {
                outcome = Some(DisconnectReason::InvalidFrame(e));
            }
            if outcome.is_some() {
                break;
            }
            if read_total >= budget {
                ch.read_more = true;
                if !ch.in_read_list {
                    ch.in_read_list = true;
                    self.read_list.push(id);
                }
                break;
            }
            if drained {
                ch.read_more = false;
                break;
            }
            // Size the next read: at least `chunk`; for a large frame, grow towards the bytes it
            // still needs, but never more than twice what has arrived so far, so a peer that
            // announces a large frame and sends nothing cannot make us commit memory for it.
            let needed = match decoder.bytes_needed(&ch.read_buf[ch.consumed..]) {
                Ok(n) => n,
                Err(e) => {
                    outcome = Some(DisconnectReason::InvalidFrame(e));
                    break;
                }
            };
            let want = chunk.max(needed.min(ch.unreported().max(chunk)));
            let spare = ch.read_buf.capacity() - ch.read_buf.len();
            // Reuse the buffer's own space when no delivered frame refers to it any more
            // (`try_reclaim` moves the partial frame to the front without allocating). Allocate only
            // when it cannot be reclaimed and the spare space is nearly gone or too small for the
            // frame in progress: in steady state, with frames dropped before the next poll, a
            // channel reads into the same allocation forever. After a read in this call the bytes
            // before the cursor are frames just delivered, so a reclaim is tried then only when
            // the space is short.
            let short = spare < MIN_READ_SPACE || spare < needed.min(want);
            let below_chunk = spare < want.min(chunk);
            let reclaimed =
                below_chunk && (read_total == 0 || short) && ch.read_buf.try_reclaim(want);
            if below_chunk && short && !reclaimed {
                ch.read_buf.reserve(want);
                ch.read_alloc = ch.read_alloc.max(ch.read_buf.capacity());
            }
            let asked = (ch.read_buf.capacity() - ch.read_buf.len()).min(budget - read_total);
            match ch.read_once(budget - read_total) {
                Ok(0) => {
                    outcome = Some(if ch.unreported() == 0 {
                        DisconnectReason::PeerClosed
                    } else {
                        DisconnectReason::PeerClosedMidFrame {
                            buffered: ch.unreported(),
                        }
                    });
                    break;
                }
                Ok(n) => {
                    read_total += n;
                    self.metrics.bytes_in += n as u64;
                    touched = true;
                    drained = short_read_drains && n < asked;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ch.read_more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    outcome = Some(layer::disconnect_reason(&e));
                    break;
                }
            }
        }
        if ch.layer.take_write_wakeup() {
            // A TLS handshake finished: an outbound channel is connected now, and sends the
            // session held back may go.
            if ch.layer.is_tls_client() {
                self.out.connected.push(id);
            }
            if !ch.sends.is_empty() && !ch.in_write_list {
                ch.write_blocked = false;
                ch.in_write_list = true;
                self.write_list.push(id);
            }
        }
        if ch.read_buf.is_empty() && ch.read_alloc > READ_BUFFER_KEEP.max(4 * chunk) {
            // Frames already split off keep their part of the allocation alive until dropped.
            ch.read_buf = bytes::BytesMut::new();
            ch.read_alloc = 0;
        }
        if touched {
            self.lru.touch(slot, now);
        }
        if let Some(reason) = outcome {
            self.close_with(id, reason);
        }
    }

    /// The earliest time a channel may expire idle, or a lower bound of it (see `idle_bound`);
    /// `None` without idle expiry or channels.
    fn idle_deadline(&mut self) -> Option<Instant> {
        if self.idle_bound.is_none() {
            let max_idle = self.config.connections_max_idle?;
            self.idle_bound = self
                .lru
                .oldest()
                .and_then(|(_, last)| last.checked_add(max_idle));
        }
        self.idle_bound
    }

    fn expire_idle(&mut self, now: Instant) {
        let Some(max_idle) = self.config.connections_max_idle else {
            return;
        };
        if self.idle_bound.is_some_and(|bound| now < bound) {
            return;
        }
        self.idle_bound = None;
        while let Some((slot, last)) = self.lru.oldest() {
            if now.saturating_duration_since(last) < max_idle {
                break;
            }
            let id = match self.slots.at_slot(slot) {
                Some((_, Slot::Channel(c))) => c.id,
                _ => {
                    self.lru.remove(slot);
                    continue;
                }
            };
            self.close_with(id, DisconnectReason::IdleExpired);
        }
    }

    fn finish_closing(&mut self, now: Instant) {
        if self.closing.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.closing.len() {
            let id = self.closing[i];
            let state = self.channel(id).map(|c| (c.state, c.sends.is_empty()));
            match state {
                None => {
                    self.closing.swap_remove(i);
                }
                Some((ChannelState::Closing { deadline }, empty)) if empty || now >= deadline => {
                    self.closing.swap_remove(i);
                    let unsent = self.remove_channel(id);
                    self.out.disconnected.push(Disconnected {
                        channel: id,
                        reason: DisconnectReason::LocalClose { flushed: empty },
                        unsent,
                    });
                }
                Some(_) => i += 1,
            }
        }
    }
}

// ----- TLS -----------------------------------------------------------------------------------------

impl Selector {
    /// The layer of a new outbound channel: TLS when a client configuration is set.
    #[allow(clippy::unnecessary_wraps)]
    fn client_layer(&self, addr: SocketAddr, host: Option<&str>) -> io::Result<Layer> {
        #[cfg(feature = "tls")]
        if let Some(config) = &self.tls_client {
            let name = super::tls::server_name(host.unwrap_or_default(), addr.ip());
            return super::tls::client_layer(config, name);
        }
        let _ = (addr, host);
        Ok(Layer::Plain)
    }

    /// The layer of a channel accepted by `listener`: TLS when the listener has a configuration.
    #[allow(clippy::unnecessary_wraps)]
    fn server_layer(listener: &Listener) -> io::Result<Layer> {
        #[cfg(feature = "tls")]
        if let Some(config) = &listener.tls {
            return super::tls::server_layer(config);
        }
        let _ = listener;
        Ok(Layer::Plain)
    }

    /// Sets the TLS configuration of outbound channels opened from now on (`None`: plaintext).
    /// Channels already open keep their layer.
    #[cfg(feature = "tls")]
    pub fn set_tls_client(&mut self, config: Option<Arc<super::tls::rustls::ClientConfig>>) {
        self.tls_client = config;
    }

    /// Sets the TLS configuration of a listener's channels accepted from now on (`None`:
    /// plaintext).
    ///
    /// # Errors
    /// [`ChannelError::Unknown`] for a closed or unknown listener.
    #[cfg(feature = "tls")]
    pub fn set_listener_tls(
        &mut self,
        id: ListenerId,
        config: Option<Arc<super::tls::rustls::ServerConfig>>,
    ) -> Result<(), ChannelError> {
        match self.slots.get_mut(id.key()) {
            Some(Slot::Listener(l)) => {
                l.tls = config;
                Ok(())
            }
            _ => Err(ChannelError::Unknown),
        }
    }

    /// The channel's TLS session (`None` for a plaintext or unknown channel): whether its
    /// handshake is done, the negotiated version and cipher suite.
    #[cfg(feature = "tls")]
    pub fn tls_session(&self, id: ChannelId) -> Option<&super::tls::TlsSession> {
        match &self.channel(id)?.layer {
            Layer::Tls(t) => Some(t),
            Layer::Plain => None,
        }
    }
}

impl From<FrameError> for DisconnectReason {
    fn from(e: FrameError) -> Self {
        DisconnectReason::InvalidFrame(e)
    }
}
