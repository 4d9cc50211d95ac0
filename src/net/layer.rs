//! The per-channel transport layer (Kafka's `TransportLayer`): plaintext, or TLS with the `tls`
//! feature. The Selector's read and write paths dispatch on it with a `match`; the plaintext arm is
//! the plain socket call, so plaintext channels pay one branch and no indirection.

#[cfg(feature = "tls")]
use std::io::Read;
use std::io::{self, IoSlice, Write};

use mio::net::TcpStream;
use socket2::SockRef;

use super::channel::SocketWriter;
use super::error::{DisconnectReason, IoFault};

/// How a channel's bytes reach its socket.
#[derive(Debug)]
pub(crate) enum Layer {
    /// Bytes go to the socket as they are.
    Plain,
    /// Bytes go through a TLS session.
    #[cfg(feature = "tls")]
    Tls(Box<super::tls::TlsSession>),
}

impl Layer {
    /// Whether the layer holds bytes for the socket that the staged sends do not account for
    /// (TLS records: handshake messages, encrypted data, alerts).
    #[inline]
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Layer::Plain => false,
            #[cfg(feature = "tls")]
            Layer::Tls(t) => t.wants_write(),
        }
    }

    /// Whether an outbound channel with this layer is reported connected only later, when its
    /// TLS handshake has finished (Kafka: a channel is ready once its transport layer is).
    #[inline]
    pub(crate) fn defers_connected(&self) -> bool {
        match self {
            Layer::Plain => false,
            #[cfg(feature = "tls")]
            Layer::Tls(t) => t.is_client() && t.is_handshaking(),
        }
    }

    /// Whether this is the client side of a TLS session.
    #[inline]
    pub(crate) fn is_tls_client(&self) -> bool {
        match self {
            Layer::Plain => false,
            #[cfg(feature = "tls")]
            Layer::Tls(t) => t.is_client(),
        }
    }

    /// Whether writes that the layer refused earlier may go ahead now (a TLS handshake finished
    /// during a read); cleared by the call.
    #[inline]
    pub(crate) fn take_write_wakeup(&mut self) -> bool {
        match self {
            Layer::Plain => false,
            #[cfg(feature = "tls")]
            Layer::Tls(t) => t.take_write_wakeup(),
        }
    }

    /// Before the socket closes: a TLS layer queues `close_notify` and writes what it holds, as
    /// far as the socket takes it without blocking.
    pub(crate) fn close(&mut self, _stream: &TcpStream) {
        match self {
            Layer::Plain => {}
            #[cfg(feature = "tls")]
            Layer::Tls(t) => t.close(&mut SocketIo(SockRef::from(_stream))),
        }
    }
}

/// The reason a channel closes after `e` failed one of its reads or writes: a TLS failure keeps its
/// type, anything else is an I/O fault.
pub(crate) fn disconnect_reason(e: &io::Error) -> DisconnectReason {
    #[cfg(feature = "tls")]
    if let Some(reason) = super::tls::failure_of(e) {
        return reason;
    }
    DisconnectReason::Io(IoFault::from(e))
}

#[cfg(feature = "tls")]
/// A borrowed socket as `Read + Write`: `recv`, and `sendmsg` with `MSG_NOSIGNAL` (a peer that
/// vanished gives `EPIPE`, never SIGPIPE).
pub(crate) struct SocketIo<'a>(pub SockRef<'a>);

#[cfg(feature = "tls")]
impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let socket: &socket2::Socket = &self.0;
        let mut socket = socket;
        socket.read(buf)
    }
}

#[cfg(feature = "tls")]
impl Write for SocketIo<'_> {
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

/// The writer a channel's staged sends are written through.
pub(crate) enum LayerWriter<'a> {
    /// Straight to the socket.
    Plain(SocketWriter<'a>),
    /// Through a TLS session to the socket.
    #[cfg(feature = "tls")]
    Tls(&'a mut super::tls::TlsSession, SocketIo<'a>),
}

impl<'a> LayerWriter<'a> {
    /// The writer of `layer` over `stream`.
    #[inline]
    pub(crate) fn new(layer: &'a mut Layer, stream: &'a TcpStream) -> Self {
        match layer {
            Layer::Plain => LayerWriter::Plain(SocketWriter(SockRef::from(stream))),
            #[cfg(feature = "tls")]
            Layer::Tls(t) => LayerWriter::Tls(t, SocketIo(SockRef::from(stream))),
        }
    }

    /// Writes what the layer itself holds for the socket (TLS records); returns whether the socket
    /// refused some of it.
    ///
    /// # Errors
    /// The socket's write error.
    #[inline]
    pub(crate) fn flush_layer(&mut self) -> io::Result<bool> {
        match self {
            LayerWriter::Plain(_) => Ok(false),
            #[cfg(feature = "tls")]
            LayerWriter::Tls(t, io) => t.flush(io),
        }
    }
}

impl Write for LayerWriter<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LayerWriter::Plain(io) => io.write(buf),
            #[cfg(feature = "tls")]
            LayerWriter::Tls(t, io) => t.write_vectored(io, &[IoSlice::new(buf)]),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            LayerWriter::Plain(io) => io.write_vectored(bufs),
            #[cfg(feature = "tls")]
            LayerWriter::Tls(t, io) => t.write_vectored(io, bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
