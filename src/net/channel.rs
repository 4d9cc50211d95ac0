//! One TCP connection owned by the Selector: its socket, read buffer and staged sends.

use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use mio::net::TcpStream;
use socket2::SockRef;

use super::id::ChannelId;
use super::layer::Layer;
use super::send_queue::SendQueue;

/// Lifecycle of a channel inside the Selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelState {
    /// Non-blocking connect issued; waiting for the socket to become writable.
    Connecting,
    /// Established: reads and writes flow.
    Connected,
    /// Graceful close requested: no more reads or sends; staged sends are flushed until `deadline`.
    Closing { deadline: Instant },
}

#[derive(Debug)]
pub(crate) struct Channel {
    pub id: ChannelId,
    pub stream: TcpStream,
    pub state: ChannelState,
    pub read_buf: BytesMut,
    /// Borrowed-receive mode: bytes at the front of `read_buf` already reported as frames this
    /// poll. They stay in place (the reports are offsets into the buffer) until the channel is
    /// next read, which drops them first.
    pub consumed: usize,
    /// Size of the read buffer's allocation as last reserved (0 when none is held): what the
    /// channel pins, since frames split off the buffer share it.
    pub read_alloc: usize,
    pub sends: SendQueue,
    pub muted: bool,
    /// The socket may hold unread data: the read budget ran out, or an event arrived while muted.
    pub read_more: bool,
    /// The last write hit `WouldBlock`; wait for a writable event before writing again.
    pub write_blocked: bool,
    /// Already queued on the Selector's pending-write list.
    pub in_write_list: bool,
    /// A send was refused with `QueueFull` and no byte has been written since: the channel reports
    /// itself not writable until a write makes progress.
    pub send_refused: bool,
    /// Already queued on the Selector's pending-read list.
    pub in_read_list: bool,
    /// Whether this channel was counted in `connections_created`.
    pub established: bool,
    pub peer: Option<SocketAddr>,
    /// Plaintext or TLS between the frames and the socket.
    pub layer: Layer,
}

impl Channel {
    pub(crate) fn new(id: ChannelId, stream: TcpStream, state: ChannelState) -> Self {
        Channel {
            id,
            stream,
            state,
            read_buf: BytesMut::new(),
            consumed: 0,
            read_alloc: 0,
            sends: SendQueue::default(),
            muted: false,
            read_more: false,
            write_blocked: false,
            in_write_list: false,
            send_refused: false,
            in_read_list: false,
            established: false,
            peer: None,
            layer: Layer::Plain,
        }
    }

    /// Drops the bytes of frames reported by an earlier poll (borrowed-receive mode).
    #[inline]
    pub(crate) fn drop_consumed(&mut self) {
        if self.consumed == self.read_buf.len() {
            // All of it was whole frames: empty the buffer in place, keeping its whole capacity
            // for the next read (advancing would leave the space before the cursor to a reclaim).
            self.read_buf.clear();
            self.consumed = 0;
        } else if self.consumed > 0 {
            bytes::Buf::advance(&mut self.read_buf, self.consumed);
            self.consumed = 0;
        }
    }

    /// Bytes buffered and not yet reported as frames.
    #[inline]
    pub(crate) fn unreported(&self) -> usize {
        self.read_buf.len() - self.consumed
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.state == ChannelState::Connected
    }

    /// Reads once into the spare capacity of the read buffer, at most `max` bytes.
    ///
    /// # Errors
    /// The socket's read error, `WouldBlock` included.
    #[allow(unsafe_code)]
    pub(crate) fn read_once(&mut self, max: usize) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Layer::Tls(t) = &mut self.layer {
            let mut io = super::layer::SocketIo(SockRef::from(&self.stream));
            return t.read_into(&mut io, &mut self.read_buf, max);
        }
        let spare: &mut [MaybeUninit<u8>] = self.read_buf.spare_capacity_mut();
        let take = spare.len().min(max);
        let n = SockRef::from(&self.stream).recv(&mut spare[..take])?;
        // SAFETY: `recv` initialised the first `n` bytes of the spare capacity, and `n <= take <= spare
        // capacity`, so the new length covers only initialised bytes within the allocation.
        unsafe { self.read_buf.set_len(self.read_buf.len() + n) };
        Ok(n)
    }
}

/// A writer over a borrowed socket that never raises SIGPIPE: `sendmsg` with `MSG_NOSIGNAL`, so a
/// peer that vanished gives `EPIPE` even in a host process that does not ignore the signal.
pub(crate) struct SocketWriter<'a>(pub SockRef<'a>);

impl Write for SocketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_with_flags(buf, libc::MSG_NOSIGNAL)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
