//! TLS for the Selector's channels (feature `tls`): a rustls session driven sans-IO over the
//! non-blocking socket (`read_tls` / `process_new_packets` / `write_tls`; no blocking call, no
//! thread), and the PEM loaders that build client and server configurations.
//!
//! A channel's TLS session sits between its frames and its socket: staged sends are encrypted into
//! TLS records and written with the socket's vectored write; bytes read from the socket are
//! decrypted into the channel's read buffer, where the frame decoder finds them as on a plaintext
//! channel. Records split across reads (down to one byte at a time) are reassembled by rustls. The
//! handshake runs inside the same reads and writes: sends staged before it finishes wait in the
//! session and leave when it does. A handshake that fails closes the channel with
//! [`DisconnectReason::HandshakeFailed`]; a graceful close sends `close_notify`.
//!
//! TLS 1.2 and 1.3 are enabled (rustls has no renegotiation). The provider is `ring`.

use std::fmt;
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
pub use rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};

use super::error::{DisconnectReason, TlsFailure};
use super::layer::Layer;

/// Most bytes of plaintext and of TLS records a session buffers (rustls' buffer limit): a send
/// staged before the handshake finishes waits within this bound, beyond it the write reports
/// `WouldBlock` and the frame stays staged.
const SESSION_BUFFER_LIMIT: usize = 256 * 1024;

/// The system's CA bundle, used as the trust store when none is configured.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An `io::Error` payload that carries a TLS failure up through the Selector's I/O calls.
#[derive(Debug)]
struct TlsIoError {
    failure: TlsFailure,
    handshake: bool,
}

impl fmt::Display for TlsIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.handshake {
            write!(f, "TLS handshake failed: {}", self.failure)
        } else {
            write!(f, "TLS error: {}", self.failure)
        }
    }
}

impl std::error::Error for TlsIoError {}

fn tls_io_error(failure: TlsFailure, handshake: bool) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        TlsIoError { failure, handshake },
    )
}

/// The disconnect reason of an I/O error raised by a TLS session, if it is one.
pub(crate) fn failure_of(e: &io::Error) -> Option<DisconnectReason> {
    let inner = e.get_ref()?.downcast_ref::<TlsIoError>()?;
    Some(if inner.handshake {
        DisconnectReason::HandshakeFailed(inner.failure)
    } else {
        DisconnectReason::Tls(inner.failure)
    })
}

/// The typed failure of a rustls error.
pub fn classify(e: &rustls::Error) -> TlsFailure {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsFailure::CertificateExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                TlsFailure::CertificateNotYetValid
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::CertificateNotValidForName
            }
            CertificateError::UnknownIssuer => TlsFailure::UnknownIssuer,
            _ => TlsFailure::BadCertificate,
        },
        E::NoCertificatesPresented => TlsFailure::NoCertificate,
        E::AlertReceived(a) => TlsFailure::AlertReceived(u8::from(*a)),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => TlsFailure::NotTls,
        E::PeerIncompatible(_) => TlsFailure::PeerIncompatible,
        E::PeerMisbehaved(_) | E::PeerSentOversizedRecord => TlsFailure::PeerMisbehaved,
        E::DecryptError => TlsFailure::DecryptError,
        _ => TlsFailure::Other,
    }
}

/// One channel's TLS session: a rustls client or server connection and the state the Selector
/// needs around it.
pub struct TlsSession {
    conn: rustls::Connection,
    /// The handshake was still running at the last check.
    handshaking: bool,
    /// The handshake finished since the Selector last asked: writes it refused may go ahead.
    write_wakeup: bool,
    /// The socket reported end of stream.
    eof: bool,
    /// Application bytes have arrived: an alert after this is no longer part of the handshake.
    received: bool,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.handshaking)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// A client session that verifies the server as `name`.
    ///
    /// # Errors
    /// rustls' error for a configuration it cannot start a session with.
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, rustls::Error> {
        let conn = rustls::ClientConnection::new(config, name)?;
        Ok(TlsSession::new(rustls::Connection::Client(conn)))
    }

    /// A server session.
    ///
    /// # Errors
    /// rustls' error for a configuration it cannot start a session with.
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let conn = rustls::ServerConnection::new(config)?;
        Ok(TlsSession::new(rustls::Connection::Server(conn)))
    }

    fn new(mut conn: rustls::Connection) -> Self {
        conn.set_buffer_limit(Some(SESSION_BUFFER_LIMIT));
        TlsSession {
            conn,
            handshaking: true,
            write_wakeup: false,
            eof: false,
            received: false,
        }
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The negotiated cipher suite, once the handshake has chosen one.
    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.conn.negotiated_cipher_suite()
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Whether this is the client side.
    pub fn is_client(&self) -> bool {
        matches!(self.conn, rustls::Connection::Client(_))
    }

    /// Whether the session holds TLS records for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub(crate) fn take_write_wakeup(&mut self) -> bool {
        std::mem::take(&mut self.write_wakeup)
    }

    fn note_handshake(&mut self) {
        if self.handshaking && !self.conn.is_handshaking() {
            self.handshaking = false;
            self.write_wakeup = true;
        }
    }

    fn fail(&mut self, io: &mut dyn Write, e: &rustls::Error) -> io::Error {
        // rustls queued the alert that tells the peer why; send it if the socket takes it.
        let _ = self.flush(io);
        // In TLS 1.3 a client finishes its side of the handshake before the server has checked
        // the client's certificate; the server's rejection arrives as an alert right after. An
        // alert before any application byte is therefore still the handshake failing.
        let handshake = self.conn.is_handshaking()
            || (!self.received && matches!(e, rustls::Error::AlertReceived(_)));
        log::debug!("TLS failure (handshake: {handshake}): {e}");
        tls_io_error(classify(e), handshake)
    }

    /// Writes the session's pending TLS records to `io`; returns whether the socket refused some
    /// (`WouldBlock`).
    ///
    /// # Errors
    /// The socket's write error.
    pub fn flush(&mut self, io: &mut dyn Write) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(io) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Encrypts plaintext from `bufs` and writes the records to `io`. Returns the plaintext bytes
    /// taken; records the socket refused stay in the session and leave with the next write or
    /// [`flush`](Self::flush). `WouldBlock` when the session takes nothing: records from an earlier
    /// write are still waiting for the socket, or the handshake is running and the session's
    /// buffer is full.
    ///
    /// # Errors
    /// `WouldBlock` as above; the socket's write error.
    pub fn write_vectored(
        &mut self,
        io: &mut dyn Write,
        bufs: &[IoSlice<'_>],
    ) -> io::Result<usize> {
        if self.flush(io)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write_vectored(bufs)?;
        self.flush(io)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Reads TLS records from `io` and decrypts into the spare capacity of `buf` (at most `max`
    /// bytes), answering the handshake on the way. Returns the plaintext bytes added; fewer than
    /// the space offered only when the socket had no more (`WouldBlock`) or reached its end.
    /// `Ok(0)` is the end of the stream: `close_notify`, or the peer closing the socket after the
    /// handshake.
    ///
    /// # Errors
    /// `WouldBlock` when no plaintext is available yet; a TLS failure (see
    /// [`DisconnectReason::HandshakeFailed`]), including the peer closing during the handshake;
    /// the socket's read error.
    pub fn read_into<S: Read + Write>(
        &mut self,
        io: &mut S,
        buf: &mut BytesMut,
        max: usize,
    ) -> io::Result<usize> {
        let room = (buf.capacity() - buf.len()).min(max);
        let mut filled = 0;
        loop {
            if filled == room {
                return Ok(filled);
            }
            // Plaintext is copied straight from the session's buffer into the spare capacity
            // (within it: no allocation, and no zeroing of space the copy does not reach).
            let mut reader = self.conn.reader();
            match reader.fill_buf() {
                // `close_notify`: the clean end of the stream.
                Ok([]) => return Ok(filled),
                Ok(chunk) => {
                    let n = chunk.len().min(room - filled);
                    buf.extend_from_slice(&chunk[..n]);
                    reader.consume(n);
                    filled += n;
                    self.received = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    if self.conn.is_handshaking() {
                        return Err(tls_io_error(TlsFailure::ClosedDuringHandshake, true));
                    }
                    // The socket ended after the handshake without `close_notify`: the peer closed.
                    return Ok(filled);
                }
                Err(e) => return Err(e),
            }
            if self.eof {
                // End of stream with the handshake unfinished (after it, the reader above ends).
                return Err(tls_io_error(TlsFailure::ClosedDuringHandshake, true));
            }
            match self.conn.read_tls(io) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush(io)?;
                    return if filled > 0 { Ok(filled) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A reset before the handshake finished: the peer gave up on it.
                Err(_) if self.conn.is_handshaking() => {
                    return Err(tls_io_error(TlsFailure::ClosedDuringHandshake, true));
                }
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                return Err(self.fail(io, &e));
            }
            self.note_handshake();
            if self.conn.wants_write() {
                self.flush(io)?;
            }
        }
    }

    /// Queues `close_notify` and writes what the session holds, as far as `io` takes it without
    /// blocking.
    pub fn close(&mut self, io: &mut dyn Write) {
        self.conn.send_close_notify();
        let _ = self.flush(io);
    }
}

/// The layer of an outbound channel to a server verified as `name`.
pub(crate) fn client_layer(
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<Layer> {
    TlsSession::client(config.clone(), name)
        .map(|s| Layer::Tls(Box::new(s)))
        .map_err(io::Error::other)
}

/// The layer of a channel accepted on a TLS listener.
pub(crate) fn server_layer(config: &Arc<ServerConfig>) -> io::Result<Layer> {
    TlsSession::server(config.clone())
        .map(|s| Layer::Tls(Box::new(s)))
        .map_err(io::Error::other)
}

/// The server name a client verifies: `host` as an IP address or DNS name; the connected address
/// when `host` is neither.
pub fn server_name(host: &str, addr: IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.to_string()).unwrap_or(ServerName::IpAddress(addr.into()))
}

// ----- configuration ---------------------------------------------------------------------------

/// Why a TLS configuration could not be built.
#[derive(Debug)]
pub enum TlsConfigError {
    /// A PEM file could not be read or holds nothing usable.
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// rustls rejected the configuration (a key that does not match its certificate, no usable
    /// CA, ...).
    Rustls(rustls::Error),
    /// A client certificate was given without its key, or a key without its certificate.
    CertificateWithoutKey,
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::Pem { path, reason } => write!(f, "{}: {reason}", path.display()),
            TlsConfigError::Rustls(e) => write!(f, "TLS configuration: {e}"),
            TlsConfigError::CertificateWithoutKey => {
                write!(
                    f,
                    "a certificate and its private key must be given together"
                )
            }
        }
    }
}

impl std::error::Error for TlsConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsConfigError::Rustls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rustls::Error> for TlsConfigError {
    fn from(e: rustls::Error) -> Self {
        TlsConfigError::Rustls(e)
    }
}

fn pem_error(path: &Path, reason: impl fmt::Display) -> TlsConfigError {
    TlsConfigError::Pem {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file.
///
/// # Errors
/// [`TlsConfigError::Pem`] when it cannot be read, is malformed, or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
///
/// # Errors
/// [`TlsConfigError::Pem`] when it cannot be read or holds no key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

fn root_store(ca: &Path) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(load_certs(ca)?);
    if added == 0 {
        return Err(pem_error(ca, "no usable CA certificate"));
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a TLS client trusts and presents: Kafka's `ssl.*` settings as paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsClientOptions {
    /// PEM bundle of the CAs that sign servers' certificates (`ssl.ca.location`); the system bundle
    /// ([`SYSTEM_CA_BUNDLE`]) when `None`.
    pub ca: Option<PathBuf>,
    /// PEM certificate chain presented to servers that ask (mutual TLS, `ssl.certificate.location`).
    pub certificate: Option<PathBuf>,
    /// PEM private key of `certificate` (`ssl.key.location`).
    pub key: Option<PathBuf>,
    /// Whether the server's certificate must name the host connected to
    /// (`ssl.endpoint.identification.algorithm=https`, the default); `false` for `none`.
    pub verify_hostname: bool,
}

/// A rustls client configuration from `options`: TLS 1.2 and 1.3, the ring provider.
///
/// # Errors
/// [`TlsConfigError`] for an unreadable or empty PEM file, a key that does not match, or a
/// certificate without a key.
pub fn client_config(options: &TlsClientOptions) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let ca = options
        .ca
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    let roots = Arc::new(root_store(&ca)?);
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)?;
    let builder = if options.verify_hostname {
        builder.with_root_certificates(roots)
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsConfigError::Rustls(rustls::Error::General(e.to_string())))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoHostnameVerifier(inner)))
    };
    let config = match (&options.certificate, &options.key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsConfigError::CertificateWithoutKey),
    };
    Ok(Arc::new(config))
}

/// A rustls server configuration: the server's certificate chain and key, and when `client_ca`
/// is given, mutual TLS (clients must present a certificate signed by it).
///
/// # Errors
/// [`TlsConfigError`] for an unreadable or empty PEM file or a key that does not match.
pub fn server_config(
    certificate: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider)
                    .build()
                    .map_err(|e| TlsConfigError::Rustls(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(load_certs(certificate)?, load_key(key)?)?;
    Ok(Arc::new(config))
}

/// `ssl.endpoint.identification.algorithm=none`: the chain is verified as usual, the name in the
/// certificate is not compared with the host.
#[derive(Debug)]
struct NoHostnameVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for NoHostnameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain (signature, validity, usage) is checked before the name; a name mismatch is
        // the only error this verifier forgives.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    //! The session on in-memory pipes: partial records, one-byte reads and writes, the handshake
    //! inside reads and writes, close_notify.

    use std::collections::VecDeque;
    use std::io::{self, IoSlice, Read, Write};
    use std::sync::Arc;

    use bytes::BytesMut;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    use super::TlsSession;
    use crate::net::{DisconnectReason, TlsFailure};

    /// One end of an in-memory connection: reads from `inbox` at most `chunk` bytes at a time
    /// (`WouldBlock` when empty, end of stream once `closed`), writes at most `chunk` bytes into
    /// `outbox`.
    struct End<'a> {
        inbox: &'a mut VecDeque<u8>,
        outbox: &'a mut VecDeque<u8>,
        chunk: usize,
        closed: bool,
    }

    impl Read for End<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.inbox.is_empty() {
                return if self.closed {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.chunk).min(self.inbox.len());
            for (d, s) in buf.iter_mut().zip(self.inbox.drain(..n)) {
                *d = s;
            }
            Ok(n)
        }
    }

    impl Write for End<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.chunk);
            self.outbox.extend(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            match bufs.iter().find(|b| !b.is_empty()) {
                Some(b) => self.write(b),
                None => Ok(0),
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn configs() -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let ck = rcgen::generate_simple_self_signed(vec!["pipe.test".to_string()]).unwrap();
        let cert = CertificateDer::from(ck.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        (Arc::new(client), Arc::new(server))
    }

    struct Link {
        c2s: VecDeque<u8>,
        s2c: VecDeque<u8>,
        chunk: usize,
        client: TlsSession,
        server: TlsSession,
        at_client: BytesMut,
        at_server: BytesMut,
    }

    impl Link {
        fn new(chunk: usize) -> Link {
            let (c, s) = configs();
            let name = ServerName::try_from("pipe.test").unwrap();
            Link {
                c2s: VecDeque::new(),
                s2c: VecDeque::new(),
                chunk,
                client: TlsSession::client(c, name).unwrap(),
                server: TlsSession::server(s).unwrap(),
                at_client: BytesMut::with_capacity(1 << 16),
                at_server: BytesMut::with_capacity(1 << 16),
            }
        }

        /// Moves bytes both ways until neither side makes progress; returns the last read of each
        /// side (`None`: `WouldBlock`). Any other error fails the test.
        fn pump(&mut self) -> (Option<usize>, Option<usize>) {
            let (rc, rs) = self.pump_results();
            let settle = |r: io::Result<usize>| match r {
                Ok(n) => Some(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => panic!("{e}"),
            };
            (settle(rc), settle(rs))
        }

        fn pump_results(&mut self) -> (io::Result<usize>, io::Result<usize>) {
            let mut last = (Ok(0), Ok(0));
            for _ in 0..1_000_000 {
                let before = (
                    self.c2s.len(),
                    self.s2c.len(),
                    self.at_client.len(),
                    self.at_server.len(),
                );
                let mut ce = End {
                    inbox: &mut self.s2c,
                    outbox: &mut self.c2s,
                    chunk: self.chunk,
                    closed: false,
                };
                let _ = self.client.flush(&mut ce);
                self.at_client.reserve(4096);
                let rc = self
                    .client
                    .read_into(&mut ce, &mut self.at_client, usize::MAX);
                let mut se = End {
                    inbox: &mut self.c2s,
                    outbox: &mut self.s2c,
                    chunk: self.chunk,
                    closed: false,
                };
                let _ = self.server.flush(&mut se);
                self.at_server.reserve(4096);
                let rs = self
                    .server
                    .read_into(&mut se, &mut self.at_server, usize::MAX);
                let after = (
                    self.c2s.len(),
                    self.s2c.len(),
                    self.at_client.len(),
                    self.at_server.len(),
                );
                let quiet = matches!(&rc, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                    && matches!(&rs, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
                last = (rc, rs);
                if before == after
                    && quiet
                    && !self.client.wants_write()
                    && !self.server.wants_write()
                {
                    break;
                }
                if last
                    .0
                    .as_ref()
                    .is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock)
                    || last
                        .1
                        .as_ref()
                        .is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock)
                {
                    break;
                }
            }
            last
        }

        fn client_write(&mut self, data: &[u8]) -> usize {
            let mut ce = End {
                inbox: &mut self.s2c,
                outbox: &mut self.c2s,
                chunk: self.chunk,
                closed: false,
            };
            match self.client.write_vectored(&mut ce, &[IoSlice::new(data)]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn one_byte_reads_and_writes_carry_a_large_message_written_before_the_handshake() {
        let mut link = Link::new(1);
        let msg = pattern(40_000);
        // Written before the handshake: held by the session, sent when it finishes.
        let mut taken = 0;
        let mut rounds = 0;
        while taken < msg.len() {
            taken += link.client_write(&msg[taken..]);
            link.pump();
            rounds += 1;
            assert!(rounds < 10_000, "writes stalled at {taken}");
        }
        link.pump();
        assert!(!link.client.is_handshaking() && !link.server.is_handshaking());
        assert_eq!(&link.at_server[..], &msg[..]);
    }

    #[test]
    fn records_split_at_every_size_reassemble() {
        for chunk in [1usize, 2, 3, 5, 7, 100, 4097, 16_389] {
            let mut link = Link::new(chunk);
            link.pump();
            let msg = pattern(50_000);
            let mut taken = 0;
            while taken < msg.len() {
                taken += link.client_write(&msg[taken..]);
                link.pump();
            }
            link.pump();
            assert_eq!(&link.at_server[..], &msg[..], "chunk {chunk}");
        }
    }

    #[test]
    fn close_notify_ends_the_stream_cleanly() {
        let mut link = Link::new(64);
        link.client_write(b"last words");
        link.pump();
        let mut ce = End {
            inbox: &mut link.s2c,
            outbox: &mut link.c2s,
            chunk: 64,
            closed: false,
        };
        link.client.close(&mut ce);
        let (_, rs) = link.pump();
        assert_eq!(&link.at_server[..], b"last words");
        assert_eq!(
            rs.unwrap(),
            0,
            "close_notify reads as the end of the stream"
        );
    }

    #[test]
    fn garbage_instead_of_records_is_a_typed_failure() {
        let (_, s) = configs();
        let mut server = TlsSession::server(s).unwrap();
        let mut inbox: VecDeque<u8> = b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n"
            .iter()
            .copied()
            .collect();
        let mut outbox = VecDeque::new();
        let mut end = End {
            inbox: &mut inbox,
            outbox: &mut outbox,
            chunk: 3,
            closed: false,
        };
        let mut buf = BytesMut::with_capacity(1024);
        let err = match server.read_into(&mut end, &mut buf, 1024) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => panic!("garbage not rejected"),
            Err(e) => e,
            Ok(n) => panic!("plaintext from garbage: {n}"),
        };
        assert_eq!(
            super::failure_of(&err),
            Some(DisconnectReason::HandshakeFailed(TlsFailure::NotTls))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn end_of_stream_during_the_handshake_is_a_handshake_failure() {
        let (c, _) = configs();
        let mut client = TlsSession::client(c, ServerName::try_from("pipe.test").unwrap()).unwrap();
        let mut inbox = VecDeque::new();
        let mut outbox = VecDeque::new();
        let mut end = End {
            inbox: &mut inbox,
            outbox: &mut outbox,
            chunk: 1000,
            closed: true,
        };
        let mut buf = BytesMut::with_capacity(1024);
        let err = client.read_into(&mut end, &mut buf, 1024).unwrap_err();
        assert_eq!(
            super::failure_of(&err),
            Some(DisconnectReason::HandshakeFailed(
                TlsFailure::ClosedDuringHandshake
            ))
        );
    }
}
