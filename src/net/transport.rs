//! The seam between the request layer and the socket layer.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::SendError;
use super::id::ChannelId;
use super::metrics::SelectorMetrics;
use super::options::SocketOptions;
use super::selector::{CompletedSend, Disconnected, Received, Selector};
use super::send_queue::FrameWriter;
use super::CloseMode;

/// What the [`NetworkClient`](crate::client::NetworkClient) needs from the layer below: the
/// [`Selector`] in production, a simulated network in tests (so the client's state machines run on
/// simulated time and faults can be injected deterministically).
///
/// The semantics are the Selector's: `send` only stages, `poll` does the work and replaces the
/// output sets, a channel the transport closes on its own is reported in `disconnected` exactly
/// once, a channel closed through `close` is not reported.
pub trait Transport {
    /// Starts a non-blocking connect.
    ///
    /// # Errors
    /// A synchronous failure; no channel exists then.
    fn connect(&mut self, addr: SocketAddr, options: &SocketOptions) -> io::Result<ChannelId>;
    /// As [`connect`](Transport::connect), naming the host `addr` was resolved from (the name a
    /// TLS client verifies the server's certificate against).
    ///
    /// # Errors
    /// As [`connect`](Transport::connect).
    fn connect_named(
        &mut self,
        addr: SocketAddr,
        host: &str,
        options: &SocketOptions,
    ) -> io::Result<ChannelId> {
        let _ = host;
        self.connect(addr, options)
    }
    /// Stages one frame; returns its per-channel sequence number.
    ///
    /// # Errors
    /// See [`SendError`]; the refused frame is handed back (so a caller can retry it after
    /// back-pressure without having kept a copy).
    fn send(&mut self, channel: ChannelId, frame: Bytes) -> Result<u64, (SendError, Bytes)>;
    /// Stages one frame whose payload `write` appends (see [`Selector::send_with`]); `None` when
    /// `write` returned `false`. The default builds the payload in a buffer of its own and calls
    /// [`send`](Transport::send); the Selector writes straight into the channel's send buffer.
    ///
    /// # Errors
    /// See [`SendError`]; nothing is staged then.
    fn send_with(
        &mut self,
        channel: ChannelId,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
    ) -> Result<Option<u64>, SendError>
    where
        Self: Sized,
    {
        self.send_with_body(channel, write, Bytes::new())
    }
    /// Stages one frame whose payload is what `write` appends followed by `body` (see
    /// [`Selector::send_with_body`]); `None` when `write` returned `false`. The default copies
    /// both into a buffer of its own and calls [`send`](Transport::send); the Selector writes
    /// `write`'s part into the channel's send buffer and `body` from its own buffer.
    ///
    /// # Errors
    /// See [`SendError`]; nothing is staged then.
    fn send_with_body(
        &mut self,
        channel: ChannelId,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
        body: Bytes,
    ) -> Result<Option<u64>, SendError>
    where
        Self: Sized,
    {
        let mut buf = Vec::new();
        if !write(&mut FrameWriter::new(&mut buf)) {
            return Ok(None);
        }
        buf.extend_from_slice(&body);
        self.send(channel, Bytes::from(buf))
            .map(Some)
            .map_err(|(e, _)| e)
    }
    /// Closes a channel immediately; not reported as disconnected.
    fn close(&mut self, channel: ChannelId);
    /// Does the I/O, waiting at most `timeout`.
    ///
    /// # Errors
    /// A failure of the poller itself.
    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// The current time on the transport's clock (the real clock for the Selector).
    fn now(&self) -> Instant;
    /// Channels connected in the last poll.
    fn connected(&self) -> &[ChannelId];
    /// Channels disconnected in the last poll.
    fn disconnected(&self) -> &[Disconnected];
    /// Sends completed in the last poll.
    fn completed_sends(&self) -> &[CompletedSend];
    /// Moves the last poll's receives into `out` (cleared first).
    fn swap_completed_receives(&mut self, out: &mut Vec<Received>);
    /// Switches borrowed receives on or off (see [`Selector::set_borrowed_receives`]): received
    /// frames stay in the transport's buffers and are read through
    /// [`received_run`](Transport::received_run) until the next poll, instead of being moved out
    /// by [`swap_completed_receives`](Transport::swap_completed_receives). Returns whether the
    /// transport now works in the mode asked for; the default supports only owned receives (it
    /// returns `!on`). Switch while no received frame is outstanding (before the first poll).
    fn set_borrowed_receives(&mut self, on: bool) -> bool {
        !on
    }
    /// In borrowed mode, the `k`-th run of whole frames of one channel received by the last poll,
    /// length prefixes included (split with [`split_frame`](super::split_frame)), readable until
    /// the next poll whatever else the caller does with the transport meanwhile; `None` past the
    /// last run (and always, by default).
    fn received_run(&self, k: usize) -> Option<(ChannelId, &[u8])> {
        let _ = k;
        None
    }
    /// Whether sends completed before the select make the poll return at once (see
    /// [`Selector::set_wake_on_sends`]); the default ignores it (a transport that reports every
    /// completion at once).
    fn set_wake_on_sends(&mut self, _on: bool) {}
    /// The transport's own I/O counters (the Selector's [`SelectorMetrics`]), for the client's
    /// `io-wait-ratio` and friends; `None` (the default) for a transport without them.
    fn io_metrics(&self) -> Option<SelectorMetrics> {
        None
    }
}

impl Transport for Selector {
    fn connect(&mut self, addr: SocketAddr, options: &SocketOptions) -> io::Result<ChannelId> {
        Selector::connect(self, addr, options)
    }

    fn connect_named(
        &mut self,
        addr: SocketAddr,
        host: &str,
        options: &SocketOptions,
    ) -> io::Result<ChannelId> {
        Selector::connect_named(self, addr, host, options)
    }

    fn send(&mut self, channel: ChannelId, frame: Bytes) -> Result<u64, (SendError, Bytes)> {
        Selector::send_or_return(self, channel, frame)
    }

    fn send_with(
        &mut self,
        channel: ChannelId,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
    ) -> Result<Option<u64>, SendError> {
        Selector::send_with(self, channel, write)
    }

    fn send_with_body(
        &mut self,
        channel: ChannelId,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
        body: Bytes,
    ) -> Result<Option<u64>, SendError> {
        Selector::send_with_body(self, channel, write, body)
    }

    fn close(&mut self, channel: ChannelId) {
        let _ = Selector::close(self, channel, CloseMode::Immediate);
    }

    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        Selector::poll(self, timeout)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn connected(&self) -> &[ChannelId] {
        Selector::connected(self)
    }

    fn disconnected(&self) -> &[Disconnected] {
        Selector::disconnected(self)
    }

    fn completed_sends(&self) -> &[CompletedSend] {
        Selector::completed_sends(self)
    }

    fn swap_completed_receives(&mut self, out: &mut Vec<Received>) {
        Selector::swap_completed_receives(self, out)
    }

    fn set_wake_on_sends(&mut self, on: bool) {
        Selector::set_wake_on_sends(self, on)
    }

    fn set_borrowed_receives(&mut self, on: bool) -> bool {
        Selector::set_borrowed_receives(self, on);
        true
    }

    #[inline]
    fn received_run(&self, k: usize) -> Option<(ChannelId, &[u8])> {
        Selector::received_run(self, k)
    }

    fn io_metrics(&self) -> Option<SelectorMetrics> {
        Some(Selector::metrics(self))
    }
}
