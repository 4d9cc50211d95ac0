//! Typed errors and disconnect reasons of the network layer.

use std::fmt;
use std::io;

use super::frame::FrameError;

/// A compact, copyable description of an I/O error (the `io::Error` itself is neither `Clone` nor
/// `Eq`, and channels report errors in sets that callers keep around).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFault {
    /// The error's kind.
    pub kind: io::ErrorKind,
    /// The OS error code, when the error came from the OS.
    pub os_code: Option<i32>,
}

impl From<&io::Error> for IoFault {
    fn from(e: &io::Error) -> Self {
        IoFault {
            kind: e.kind(),
            os_code: e.raw_os_error(),
        }
    }
}

impl fmt::Display for IoFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.os_code {
            Some(code) => write!(f, "{} ({})", io::Error::from_raw_os_error(code), self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// Why a channel was closed. Each channel that the Selector closes on its own is reported exactly once
/// with one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The peer closed the connection cleanly at a frame boundary.
    PeerClosed,
    /// The peer closed the connection with a partial frame buffered (`buffered` bytes of it).
    PeerClosedMidFrame {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// A non-blocking connect failed (refused, unreachable, ...).
    ConnectFailed(IoFault),
    /// A read or write failed (reset, broken pipe, ...).
    Io(IoFault),
    /// The peer sent a frame header the decoder rejects.
    InvalidFrame(FrameError),
    /// The channel had no reads or writes for longer than `connections.max.idle.ms`.
    IdleExpired,
    /// The TLS handshake failed (bad or untrusted certificate, no common protocol, a peer that
    /// does not speak TLS, or a peer that closed before the handshake finished). For a client this
    /// is an authentication failure, not a network blip: retrying at once will fail the same way.
    HandshakeFailed(TlsFailure),
    /// A TLS error after the handshake (a record that does not decrypt, an alert from the peer).
    Tls(TlsFailure),
    /// A graceful close requested with [`CloseMode::Graceful`](super::CloseMode) finished; `flushed`
    /// tells whether every staged send left before the close timeout.
    LocalClose {
        /// Whether all staged sends were written before the socket was closed.
        flushed: bool,
    },
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::PeerClosed => write!(f, "peer closed the connection"),
            DisconnectReason::PeerClosedMidFrame { buffered } => {
                write!(
                    f,
                    "peer closed the connection mid-frame ({buffered} bytes buffered)"
                )
            }
            DisconnectReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            DisconnectReason::Io(e) => write!(f, "I/O error: {e}"),
            DisconnectReason::InvalidFrame(e) => write!(f, "invalid frame: {e}"),
            DisconnectReason::IdleExpired => {
                write!(f, "idle for longer than connections.max.idle.ms")
            }
            DisconnectReason::HandshakeFailed(e) => write!(f, "TLS handshake failed: {e}"),
            DisconnectReason::Tls(e) => write!(f, "TLS error: {e}"),
            DisconnectReason::LocalClose { flushed: true } => {
                write!(f, "closed locally after flushing")
            }
            DisconnectReason::LocalClose { flushed: false } => {
                write!(f, "closed locally before every staged send left")
            }
        }
    }
}

impl std::error::Error for IoFault {}

impl std::error::Error for DisconnectReason {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DisconnectReason::ConnectFailed(e) | DisconnectReason::Io(e) => Some(e),
            DisconnectReason::InvalidFrame(e) => Some(e),
            DisconnectReason::HandshakeFailed(e) | DisconnectReason::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl DisconnectReason {
    /// Whether the channel closed because its TLS handshake failed: for a client an
    /// authentication failure (Kafka's `SslAuthenticationException`), reported to callers as
    /// non-retriable rather than retried like a dropped connection.
    pub fn is_handshake_failure(&self) -> bool {
        matches!(self, DisconnectReason::HandshakeFailed(_))
    }
}

/// What went wrong in a TLS session, in a form that is `Copy` and comparable (the TLS library's
/// own error is neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The peer's certificate has expired.
    CertificateExpired,
    /// The peer's certificate is not yet valid.
    CertificateNotYetValid,
    /// The server's certificate does not name the host connected to
    /// (`ssl.endpoint.identification.algorithm=https`).
    CertificateNotValidForName,
    /// The peer's certificate is not signed by a trusted CA.
    UnknownIssuer,
    /// The peer's certificate is malformed, revoked or otherwise rejected.
    BadCertificate,
    /// The peer presented no certificate where one is required (mutual TLS).
    NoCertificate,
    /// The peer sent a fatal alert; the TLS alert description code.
    AlertReceived(u8),
    /// The peer does not speak TLS (for example a plaintext client on a TLS port): its bytes are
    /// not TLS records.
    NotTls,
    /// No common protocol version, cipher suite or key exchange with the peer.
    PeerIncompatible,
    /// The peer broke the TLS protocol.
    PeerMisbehaved,
    /// A record failed to decrypt or authenticate.
    DecryptError,
    /// The peer closed the connection before the handshake finished.
    ClosedDuringHandshake,
    /// Any other TLS failure.
    Other,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::CertificateExpired => write!(f, "certificate expired"),
            TlsFailure::CertificateNotYetValid => write!(f, "certificate not yet valid"),
            TlsFailure::CertificateNotValidForName => {
                write!(f, "certificate not valid for the host name")
            }
            TlsFailure::UnknownIssuer => write!(f, "certificate signed by an unknown issuer"),
            TlsFailure::BadCertificate => write!(f, "bad certificate"),
            TlsFailure::NoCertificate => write!(f, "peer presented no certificate"),
            TlsFailure::AlertReceived(code) => write!(f, "peer sent fatal alert {code}"),
            TlsFailure::NotTls => write!(f, "peer does not speak TLS"),
            TlsFailure::PeerIncompatible => write!(f, "no common TLS parameters with the peer"),
            TlsFailure::PeerMisbehaved => write!(f, "peer broke the TLS protocol"),
            TlsFailure::DecryptError => write!(f, "record failed to decrypt"),
            TlsFailure::ClosedDuringHandshake => {
                write!(f, "peer closed the connection during the handshake")
            }
            TlsFailure::Other => write!(f, "TLS failure"),
        }
    }
}

impl std::error::Error for TlsFailure {}

/// Why [`Selector::send`](super::Selector::send) refused a frame. Nothing is staged when it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No open channel has this id (never opened, or closed: its slot may have been reused).
    UnknownChannel,
    /// The channel is closing; it takes no new sends.
    Closing,
    /// The channel's staged bytes would exceed `max_staged_bytes`. Back off until it reports itself
    /// writable again (after a poll that writes).
    QueueFull {
        /// Bytes already staged.
        staged: usize,
        /// The configured bound.
        limit: usize,
    },
    /// The frame exceeds the maximum frame size, or was passed with a prefix that does not match its
    /// length.
    InvalidFrame(FrameError),
    /// A pre-framed buffer's length prefix does not match the bytes that follow it.
    PrefixMismatch {
        /// Length the prefix announces.
        announced: i64,
        /// Bytes that follow the prefix.
        actual: usize,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownChannel => write!(f, "unknown channel"),
            SendError::Closing => write!(f, "channel is closing"),
            SendError::QueueFull { staged, limit } => {
                write!(f, "send queue full: {staged} bytes staged, limit {limit}")
            }
            SendError::InvalidFrame(e) => write!(f, "{e}"),
            SendError::PrefixMismatch { announced, actual } => write!(
                f,
                "length prefix announces {announced} bytes but {actual} follow"
            ),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::InvalidFrame(e) => Some(e),
            _ => None,
        }
    }
}

/// Errors of Selector calls that take a channel or listener id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// No open channel or listener has this id.
    Unknown,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown channel or listener")
    }
}

impl std::error::Error for ChannelError {}
