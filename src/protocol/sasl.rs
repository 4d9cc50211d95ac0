//! SASL for Kafka connections: the SaslHandshake (v1) and SaslAuthenticate (v0-2) codec, both
//! sides, and the client's per-connection authentication state machine ([`SaslClient`]) for
//! PLAIN and SCRAM-SHA-256/512 (see [`scram`](super::scram)).
//!
//! The client's exchange, after ApiVersions: SaslHandshake v1 naming the mechanism (the broker
//! answers with its enabled mechanisms, or UNSUPPORTED_SASL_MECHANISM), then SaslAuthenticate
//! rounds carrying the mechanism's messages. A non-zero error code in any answer ends the
//! exchange with [`SaslError`], carrying the broker's message. The last SaslAuthenticate answer
//! (v1+) gives the session lifetime (KIP-368): the connection must re-authenticate before it ends.
//!
//! Every decoder is strict: lengths are checked against the frame, trailing bytes are an error.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::ProtocolError;
use super::produce::RequestHeader;
use super::scram::{random_nonce, ScramClient, ScramError, ScramHash};
use super::wire::{put_uvarint, Reader};

/// SaslHandshake's API key.
pub const SASL_HANDSHAKE: i16 = 17;
/// SaslAuthenticate's API key.
pub const SASL_AUTHENTICATE: i16 = 36;
/// SaslAuthenticate versions implemented (flexible from 2).
pub const SASL_AUTHENTICATE_VERSIONS: (i16, i16) = (0, 2);
/// UNSUPPORTED_SASL_MECHANISM.
pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
/// ILLEGAL_SASL_STATE.
pub const ILLEGAL_SASL_STATE: i16 = 34;
/// SASL_AUTHENTICATION_FAILED.
pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// The largest SASL message accepted in either direction.
pub const MAX_AUTH_BYTES: usize = 64 * 1024;

/// A SASL mechanism served here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616): the password in clear, for TLS or trusted networks only.
    Plain,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    Scram(ScramHash),
}

impl Mechanism {
    /// Every mechanism served.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::Scram(ScramHash::Sha256),
        Mechanism::Scram(ScramHash::Sha512),
    ];

    /// The mechanism's name (`sasl.mechanism`).
    pub const fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(h) => h.mechanism(),
        }
    }

    /// The mechanism named `name` (case-sensitive, as Kafka's names are).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why SASL authentication failed. Kafka's clients treat each as an `AuthenticationException`:
/// not retriable by reconnecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The broker does not enable the mechanism; it named the ones it does.
    UnsupportedMechanism {
        /// The mechanism asked for.
        mechanism: String,
        /// The broker's enabled mechanisms.
        enabled: Vec<String>,
    },
    /// The broker refused the credentials (SASL_AUTHENTICATION_FAILED or another error code),
    /// with its message.
    AuthenticationFailed {
        /// The error code.
        code: i16,
        /// The broker's message, if it sent one.
        message: Option<String>,
    },
    /// The SCRAM exchange failed on our side (the server's signature did not match, a bad
    /// nonce, ...).
    Scram(ScramError),
    /// The broker does not serve SaslHandshake v1 and SaslAuthenticate.
    NotServed,
    /// An answer that is not a valid response.
    Protocol(ProtocolError),
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaslError::UnsupportedMechanism { mechanism, enabled } => write!(
                f,
                "SASL mechanism {mechanism} is not enabled on the broker (enabled: {})",
                enabled.join(", ")
            ),
            SaslError::AuthenticationFailed { code, message } => write!(
                f,
                "SASL authentication failed (error {code}): {}",
                message.as_deref().unwrap_or("no message")
            ),
            SaslError::Scram(e) => write!(f, "SASL authentication failed: {e}"),
            SaslError::NotServed => {
                f.write_str("the broker does not serve SaslHandshake v1 and SaslAuthenticate")
            }
            SaslError::Protocol(e) => write!(f, "SASL exchange: {e}"),
        }
    }
}

impl std::error::Error for SaslError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SaslError::Scram(e) => Some(e),
            SaslError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

// ----- codec ---------------------------------------------------------------------------------------

fn header(buf: &mut BytesMut, api_key: i16, h: &RequestHeader<'_>, flexible: bool) {
    buf.put_i16(api_key);
    buf.put_i16(h.api_version);
    buf.put_i32(h.correlation_id);
    buf.put_i16(h.client_id.len().min(i16::MAX as usize) as i16);
    buf.put_slice(&h.client_id.as_bytes()[..h.client_id.len().min(i16::MAX as usize)]);
    if flexible {
        buf.put_u8(0);
    }
}

/// A SaslHandshake request (v0 or v1, header v1) naming `mechanism`, without the length prefix.
pub fn encode_sasl_handshake_request(h: &RequestHeader<'_>, mechanism: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(16 + h.client_id.len() + mechanism.len());
    header(&mut buf, SASL_HANDSHAKE, h, false);
    buf.put_i16(mechanism.len() as i16);
    buf.put_slice(mechanism.as_bytes());
    buf.freeze()
}

/// A SaslAuthenticate request (v0-2; header v2 and compact bytes from v2) carrying `auth_bytes`.
pub fn encode_sasl_authenticate_request(h: &RequestHeader<'_>, auth_bytes: &[u8]) -> Bytes {
    let flexible = h.api_version >= 2;
    let mut buf = BytesMut::with_capacity(24 + h.client_id.len() + auth_bytes.len());
    header(&mut buf, SASL_AUTHENTICATE, h, flexible);
    put_bytes(&mut buf, flexible, Some(auth_bytes));
    if flexible {
        buf.put_u8(0);
    }
    buf.freeze()
}

fn put_bytes(buf: &mut BytesMut, compact: bool, b: Option<&[u8]>) {
    match (compact, b) {
        (true, Some(b)) => {
            put_uvarint(buf, b.len() as u32 + 1);
            buf.put_slice(b);
        }
        (true, None) => buf.put_u8(0),
        (false, Some(b)) => {
            buf.put_i32(b.len() as i32);
            buf.put_slice(b);
        }
        (false, None) => buf.put_i32(-1),
    }
}

fn put_nullable_string(buf: &mut BytesMut, compact: bool, s: Option<&str>) {
    match (compact, s) {
        (true, Some(s)) => {
            put_uvarint(buf, s.len() as u32 + 1);
            buf.put_slice(s.as_bytes());
        }
        (true, None) => buf.put_u8(0),
        (false, Some(s)) => {
            buf.put_i16(s.len().min(i16::MAX as usize) as i16);
            buf.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
        }
        (false, None) => buf.put_i16(-1),
    }
}

fn read_bytes<'a>(r: &mut Reader<'a>, compact: bool) -> Result<&'a [u8], ProtocolError> {
    let len = if compact {
        match r.uvarint()? {
            0 => return Err(ProtocolError::Malformed("null auth bytes".into())),
            n => (n - 1) as usize,
        }
    } else {
        match r.i32()? {
            n if n < 0 => return Err(ProtocolError::Malformed(format!("bytes length {n}"))),
            n => n as usize,
        }
    };
    if len > MAX_AUTH_BYTES {
        return Err(ProtocolError::Malformed(format!(
            "{len} SASL bytes (at most {MAX_AUTH_BYTES})"
        )));
    }
    r.take(len)
}

fn end(r: &Reader<'_>) -> Result<(), ProtocolError> {
    if r.remaining() != 0 {
        return Err(ProtocolError::Malformed(format!(
            "{} bytes after the message",
            r.remaining()
        )));
    }
    Ok(())
}

/// A decoded SaslHandshake response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslHandshakeResponse {
    /// The error code (0, or UNSUPPORTED_SASL_MECHANISM).
    pub error_code: i16,
    /// The broker's enabled mechanisms.
    pub mechanisms: Vec<String>,
}

/// Decodes a SaslHandshake response (v0/v1, response header v0) from a frame without the length
/// prefix.
///
/// # Errors
/// [`ProtocolError`] for a frame that is not exactly such a response.
pub fn decode_sasl_handshake_response(
    frame: &[u8],
) -> Result<SaslHandshakeResponse, ProtocolError> {
    let mut r = Reader::new(frame);
    r.response_header(false)?;
    let error_code = r.i16()?;
    let n = r.array_len(false, 2)?;
    let mut mechanisms = Vec::with_capacity(n);
    for _ in 0..n {
        mechanisms.push(r.string(false)?.to_owned());
    }
    end(&r)?;
    Ok(SaslHandshakeResponse {
        error_code,
        mechanisms,
    })
}

/// Encodes a SaslHandshake response (response header v0), without the length prefix.
pub fn encode_sasl_handshake_response(
    correlation_id: i32,
    error_code: i16,
    mechanisms: &[&str],
) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(correlation_id);
    buf.put_i16(error_code);
    buf.put_i32(mechanisms.len() as i32);
    for m in mechanisms {
        put_nullable_string(&mut buf, false, Some(m));
    }
    buf.freeze()
}

/// A decoded SaslAuthenticate response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslAuthenticateResponse {
    /// The error code (0 on success).
    pub error_code: i16,
    /// The broker's error message.
    pub error_message: Option<String>,
    /// The mechanism's next message.
    pub auth_bytes: Vec<u8>,
    /// How long the session may last before the client re-authenticates, ms (v1+; 0: no
    /// limit).
    pub session_lifetime_ms: i64,
}

/// Decodes a SaslAuthenticate response at `version` (0-2; response header v1 and compact fields
/// from v2).
///
/// # Errors
/// [`ProtocolError`] for a version outside 0..=2 or a frame that is not exactly such a response.
pub fn decode_sasl_authenticate_response(
    version: i16,
    frame: &[u8],
) -> Result<SaslAuthenticateResponse, ProtocolError> {
    if !(SASL_AUTHENTICATE_VERSIONS.0..=SASL_AUTHENTICATE_VERSIONS.1).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: SASL_AUTHENTICATE,
            version,
        });
    }
    let flexible = version >= 2;
    let mut r = Reader::new(frame);
    r.response_header(flexible)?;
    let error_code = r.i16()?;
    let error_message = r.nullable_string(flexible)?.map(str::to_owned);
    let auth_bytes = read_bytes(&mut r, flexible)?.to_vec();
    let session_lifetime_ms = if version >= 1 { r.i64()? } else { 0 };
    if flexible {
        r.skip_tagged_fields()?;
    }
    end(&r)?;
    Ok(SaslAuthenticateResponse {
        error_code,
        error_message,
        auth_bytes,
        session_lifetime_ms,
    })
}

/// Encodes a SaslAuthenticate response at `version` (0-2), without the length prefix.
pub fn encode_sasl_authenticate_response(
    version: i16,
    correlation_id: i32,
    resp: &SaslAuthenticateResponse,
) -> Bytes {
    let flexible = version >= 2;
    let mut buf = BytesMut::with_capacity(32 + resp.auth_bytes.len());
    buf.put_i32(correlation_id);
    if flexible {
        buf.put_u8(0);
    }
    buf.put_i16(resp.error_code);
    put_nullable_string(&mut buf, flexible, resp.error_message.as_deref());
    put_bytes(&mut buf, flexible, Some(&resp.auth_bytes));
    if version >= 1 {
        buf.put_i64(resp.session_lifetime_ms);
    }
    if flexible {
        buf.put_u8(0);
    }
    buf.freeze()
}

/// Decodes a SaslHandshake request body (after the request header): the mechanism.
///
/// # Errors
/// [`ProtocolError`] for a body that is not exactly one string.
pub fn decode_sasl_handshake_request(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body);
    let m = r.string(false)?;
    end(&r)?;
    Ok(m)
}

/// Decodes a SaslAuthenticate request body (after the request header) at `version`: the auth
/// bytes.
///
/// # Errors
/// [`ProtocolError`] for a body that is not exactly such a request, or auth bytes over
/// [`MAX_AUTH_BYTES`].
pub fn decode_sasl_authenticate_request(version: i16, body: &[u8]) -> Result<&[u8], ProtocolError> {
    let flexible = version >= 2;
    let mut r = Reader::new(body);
    let b = read_bytes(&mut r, flexible)?;
    if flexible {
        r.skip_tagged_fields()?;
    }
    end(&r)?;
    Ok(b)
}

/// The PLAIN message: `authzid NUL authcid NUL passwd`, with an empty authzid.
pub fn plain_message(username: &str, password: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(2 + username.len() + password.len());
    m.push(0);
    m.extend_from_slice(username.as_bytes());
    m.push(0);
    m.extend_from_slice(password.as_bytes());
    m
}

/// Parses a PLAIN message into `(username, password)` (an authzid, if any, must equal the
/// username).
///
/// # Errors
/// A description when it is not `[authzid] NUL user NUL password` in UTF-8.
pub fn parse_plain_message(m: &[u8]) -> Result<(&str, &str), String> {
    let mut parts = m.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not authzid NUL user NUL password".into());
    };
    let user = std::str::from_utf8(user).map_err(|_| "user name is not UTF-8")?;
    let pass = std::str::from_utf8(pass).map_err(|_| "password is not UTF-8")?;
    if user.is_empty() {
        return Err("empty user name".into());
    }
    if !authz.is_empty() && authz != user.as_bytes() {
        return Err("authorization id differs from the user".into());
    }
    Ok((user, pass))
}

// ----- the client's state machine ------------------------------------------------------------------

/// The SASL settings a connection authenticates with. The password is never logged and shows as
/// `<redacted>` in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// `sasl.username`.
    pub username: String,
    /// `sasl.password`.
    pub password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the client's SASL exchange does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Send this request frame and pass its response to
    /// [`SaslClient::on_response`].
    Send(Bytes),
    /// Authenticated; the broker's session lifetime in ms (0: no limit).
    Done {
        /// The session lifetime, ms.
        session_lifetime_ms: i64,
    },
    /// Authentication failed.
    Fail(SaslError),
}

#[derive(Clone)]
enum Stage {
    Handshake,
    Authenticate { scram: Option<ScramClient> },
    Finished,
}

/// One connection's SASL exchange, client side, sans-IO: [`start`](Self::start) gives the first
/// request; each response goes to [`on_response`](Self::on_response) with the correlation id for
/// the next request.
#[derive(Clone)]
pub struct SaslClient {
    creds: SaslCredentials,
    client_id: String,
    authenticate_version: i16,
    stage: Stage,
    nonce: Option<String>,
}

impl fmt::Debug for SaslClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslClient")
            .field("creds", &self.creds)
            .finish_non_exhaustive()
    }
}

impl SaslClient {
    /// An exchange with `creds`, SaslAuthenticate at `authenticate_version` (negotiated, 0-2).
    pub fn new(creds: SaslCredentials, client_id: &str, authenticate_version: i16) -> Self {
        SaslClient {
            creds,
            client_id: client_id.to_owned(),
            authenticate_version: authenticate_version
                .clamp(SASL_AUTHENTICATE_VERSIONS.0, SASL_AUTHENTICATE_VERSIONS.1),
            stage: Stage::Handshake,
            nonce: None,
        }
    }

    /// Uses `nonce` as the SCRAM client nonce instead of a random one (for tests).
    pub fn with_nonce(mut self, nonce: &str) -> Self {
        self.nonce = Some(nonce.to_owned());
        self
    }

    fn header(&self, api_version: i16, correlation_id: i32) -> RequestHeader<'_> {
        RequestHeader {
            api_version,
            correlation_id,
            client_id: &self.client_id,
        }
    }

    /// The SaslHandshake v1 request.
    pub fn start(&mut self, correlation_id: i32) -> SaslStep {
        self.stage = Stage::Handshake;
        SaslStep::Send(encode_sasl_handshake_request(
            &self.header(1, correlation_id),
            self.creds.mechanism.name(),
        ))
    }

    fn authenticate(&self, correlation_id: i32, bytes: &[u8]) -> SaslStep {
        SaslStep::Send(encode_sasl_authenticate_request(
            &self.header(self.authenticate_version, correlation_id),
            bytes,
        ))
    }

    /// The response to the last request; `correlation_id` is for the next one.
    pub fn on_response(&mut self, frame: &[u8], correlation_id: i32) -> SaslStep {
        let step = self.step(frame, correlation_id);
        if !matches!(step, SaslStep::Send(_)) {
            self.stage = Stage::Finished;
        }
        step
    }

    fn step(&mut self, frame: &[u8], correlation_id: i32) -> SaslStep {
        match std::mem::replace(&mut self.stage, Stage::Finished) {
            Stage::Handshake => {
                let resp = match decode_sasl_handshake_response(frame) {
                    Ok(r) => r,
                    Err(e) => return SaslStep::Fail(SaslError::Protocol(e)),
                };
                if resp.error_code != 0 {
                    return SaslStep::Fail(if resp.error_code == UNSUPPORTED_SASL_MECHANISM {
                        SaslError::UnsupportedMechanism {
                            mechanism: self.creds.mechanism.name().to_owned(),
                            enabled: resp.mechanisms,
                        }
                    } else {
                        SaslError::AuthenticationFailed {
                            code: resp.error_code,
                            message: None,
                        }
                    });
                }
                let (first, scram) = match self.creds.mechanism {
                    Mechanism::Plain => (
                        plain_message(&self.creds.username, &self.creds.password),
                        None,
                    ),
                    Mechanism::Scram(h) => {
                        let nonce = self.nonce.clone().unwrap_or_else(random_nonce);
                        let mut c =
                            ScramClient::new(h, &self.creds.username, &self.creds.password, nonce);
                        (c.first().into_bytes(), Some(c))
                    }
                };
                self.stage = Stage::Authenticate { scram };
                self.authenticate(correlation_id, &first)
            }
            Stage::Authenticate { scram } => {
                let resp = match decode_sasl_authenticate_response(self.authenticate_version, frame)
                {
                    Ok(r) => r,
                    Err(e) => return SaslStep::Fail(SaslError::Protocol(e)),
                };
                if resp.error_code != 0 {
                    return SaslStep::Fail(SaslError::AuthenticationFailed {
                        code: resp.error_code,
                        message: resp.error_message,
                    });
                }
                let done = SaslStep::Done {
                    session_lifetime_ms: resp.session_lifetime_ms.max(0),
                };
                let Some(mut c) = scram else {
                    return done;
                };
                if c.is_done() {
                    return done;
                }
                let next = if c.expects_server_first() {
                    c.handle_server_first(&resp.auth_bytes)
                        .map(|m| Some(m.into_bytes()))
                } else {
                    c.handle_server_final(&resp.auth_bytes).map(|()| None)
                };
                match next {
                    Ok(Some(msg)) => {
                        self.stage = Stage::Authenticate { scram: Some(c) };
                        self.authenticate(correlation_id, &msg)
                    }
                    Ok(None) => done,
                    Err(e) => SaslStep::Fail(SaslError::Scram(e)),
                }
            }
            Stage::Finished => SaslStep::Fail(SaslError::Scram(ScramError::OutOfOrder)),
        }
    }
}
