//! Socket options and Selector configuration.

use std::time::Duration;

use super::frame::DEFAULT_MAX_FRAME_SIZE;

/// Socket options applied through socket2 before a socket connects (or, for accepted sockets, right
/// after accept).
///
/// Defaults follow Kafka's clients: `TCP_NODELAY` on, `SO_KEEPALIVE` on, `send.buffer.bytes` 131072,
/// `receive.buffer.bytes` 32768. `None` for a buffer size leaves the OS default (Kafka's `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Disable Nagle's algorithm.
    pub nodelay: bool,
    /// Enable TCP keep-alive probes.
    pub keepalive: bool,
    /// `SO_SNDBUF` in bytes; `None` keeps the OS default.
    pub send_buffer_bytes: Option<usize>,
    /// `SO_RCVBUF` in bytes; `None` keeps the OS default.
    pub receive_buffer_bytes: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            nodelay: true,
            keepalive: true,
            send_buffer_bytes: Some(131_072),
            receive_buffer_bytes: Some(32_768),
        }
    }
}

impl SocketOptions {
    /// Options with both buffer sizes left to the OS (auto-tuning on Linux), the fast choice on
    /// loopback.
    pub fn os_buffers() -> Self {
        SocketOptions {
            send_buffer_bytes: None,
            receive_buffer_bytes: None,
            ..SocketOptions::default()
        }
    }

    pub(crate) fn apply(&self, socket: &socket2::Socket) -> std::io::Result<()> {
        self.apply_established(socket)?;
        if let Some(n) = self.receive_buffer_bytes {
            socket.set_recv_buffer_size(n)?;
        }
        Ok(())
    }

    /// The options that may change on an established connection: all but the receive buffer. The
    /// receive buffer sizes the window offered in the handshake (and its scale); shrinking it
    /// afterwards leaves the peer sending into a window the kernel no longer honours, and the
    /// stream stalls in retransmission backoff. For accepted sockets it is set on the listener
    /// before `listen`, and the accepted sockets inherit it.
    pub(crate) fn apply_established(&self, socket: &socket2::Socket) -> std::io::Result<()> {
        socket.set_tcp_nodelay(self.nodelay)?;
        socket.set_keepalive(self.keepalive)?;
        if let Some(n) = self.send_buffer_bytes {
            socket.set_send_buffer_size(n)?;
        }
        Ok(())
    }
}

/// Configuration of a [`Selector`](super::Selector).
#[derive(Debug, Clone)]
pub struct SelectorConfig {
    /// Largest frame accepted or sent, in payload bytes (default 100 MiB).
    pub max_frame_size: usize,
    /// Bound on the bytes staged for sending on one channel (default 16 MiB). A single frame larger
    /// than the bound is still accepted when nothing else is staged, so that any frame up to
    /// `max_frame_size` can be sent.
    pub max_staged_bytes: usize,
    /// How many bytes one poll reads from one channel before moving on (default 1 MiB). A channel that
    /// still has data is revisited on the next poll without waiting for a new event.
    pub read_budget: usize,
    /// Size of each read attempt's buffer space (default 64 KiB). The read buffer is allocated lazily
    /// on the first read, so idle connections hold no read memory.
    pub read_chunk: usize,
    /// `connections.max.idle.ms`: close channels with no reads or writes for this long (default
    /// 540 000 ms, Kafka's). `None` disables idle expiry.
    pub connections_max_idle: Option<Duration>,
    /// Capacity of the mio event buffer (events handled per `epoll_wait`).
    pub events_capacity: usize,
    /// Connections accepted per listener per poll before moving on (default 256).
    pub accept_budget: usize,
    /// Options applied to accepted sockets. The receive buffer size is set on each listener before
    /// it listens (accepted sockets inherit it; set after the handshake it would shrink a window
    /// already offered), the rest on each accepted socket.
    pub accepted_socket_options: SocketOptions,
    /// Hold one spare descriptor while listening (default on). When accept hits the descriptor
    /// limit, the spare is released to accept and close pending connections at once, so their
    /// peers see a close instead of waiting in a full backlog; the listener is retried on a timer
    /// either way.
    pub reserve_descriptor: bool,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_staged_bytes: 16 * 1024 * 1024,
            read_budget: 1024 * 1024,
            read_chunk: 64 * 1024,
            connections_max_idle: Some(Duration::from_millis(540_000)),
            events_capacity: 1024,
            accept_budget: 256,
            accepted_socket_options: SocketOptions::os_buffers(),
            reserve_descriptor: true,
        }
    }
}
