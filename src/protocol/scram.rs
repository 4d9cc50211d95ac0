//! SCRAM (RFC 5802, with SHA-256 and SHA-512 as RFC 7677 and Kafka's KIP-84 use them): the client
//! and server state machines, sans-IO. Messages are the SCRAM texts Kafka carries in
//! SaslAuthenticate's `auth_bytes`.
//!
//! Rules: no channel binding (`n,,` only); the server's nonce must extend the client's; fewer than
//! [`MIN_ITERATIONS`] iterations is refused (Kafka's minimum); the client verifies the server's
//! signature and fails the exchange when it does not match (a server that does not know the
//! password cannot complete authentication). Every parser is strict: an unknown mandatory
//! attribute, a missing attribute, bad base64 or a non-UTF-8 name is a [`ScramError`].

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

/// Kafka's minimum SCRAM iteration count (and the count credentials are created with here).
pub const MIN_ITERATIONS: u32 = 4096;
/// The most iterations a client accepts from a server (bounds the work a hostile server can ask
/// for).
pub const MAX_ITERATIONS: u32 = 1 << 20;

/// A SCRAM hash: SHA-256 or SHA-512.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// `SCRAM-SHA-256`.
    Sha256,
    /// `SCRAM-SHA-512`.
    Sha512,
}

impl ScramHash {
    /// The SASL mechanism name.
    pub const fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
                for p in parts {
                    m.update(p);
                }
                m.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha512 => {
                let mut m = <Hmac<Sha512> as Mac>::new_from_slice(key).expect("any key length");
                for p in parts {
                    m.update(p);
                }
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
            ScramHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            ScramHash::Sha512 => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// A message is not valid SCRAM syntax (or uses what is not supported: channel binding,
    /// mandatory extensions).
    Malformed(String),
    /// The server's nonce does not start with the client's, or the client's final nonce is not
    /// the combined one.
    NonceMismatch,
    /// The server asked for an iteration count outside [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`].
    Iterations(u32),
    /// The server's signature does not match: it does not know the password.
    ServerSignatureMismatch,
    /// The server answered with `e=...`.
    ServerError(String),
    /// The client's proof is wrong (server side): wrong password.
    InvalidProof,
    /// The user is not known (server side).
    UnknownUser,
    /// A message arrived in a state that does not expect one.
    OutOfOrder,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Malformed(why) => write!(f, "malformed SCRAM message: {why}"),
            ScramError::NonceMismatch => f.write_str("SCRAM nonce mismatch"),
            ScramError::Iterations(i) => write!(
                f,
                "SCRAM iteration count {i} outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
            ),
            ScramError::ServerSignatureMismatch => {
                f.write_str("the server's SCRAM signature does not match")
            }
            ScramError::ServerError(e) => write!(f, "SCRAM server error: {e}"),
            ScramError::InvalidProof => f.write_str("invalid SCRAM client proof"),
            ScramError::UnknownUser => f.write_str("unknown SCRAM user"),
            ScramError::OutOfOrder => f.write_str("SCRAM message out of order"),
        }
    }
}

impl std::error::Error for ScramError {}

fn malformed(why: impl Into<String>) -> ScramError {
    ScramError::Malformed(why.into())
}

/// `saslname` escaping: `=` → `=3D`, `,` → `=2C`.
fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=3D") => out.push('='),
            Some("=2C") => out.push(','),
            _ => return Err(malformed("bad escape in a user name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits a SCRAM message into its `k=v` attributes, in order.
fn attributes(msg: &str) -> Result<Vec<(char, &str)>, ScramError> {
    msg.split(',')
        .map(|a| {
            let mut c = a.chars();
            match (c.next(), c.next()) {
                (Some(k), Some('=')) if k.is_ascii_alphabetic() => Ok((k, &a[2..])),
                _ => Err(malformed(format!("attribute {a:?}"))),
            }
        })
        .collect()
}

fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

fn unb64(s: &str) -> Result<Vec<u8>, ScramError> {
    B64.decode(s).map_err(|e| malformed(format!("base64: {e}")))
}

fn printable_nonce(n: &str) -> Result<(), ScramError> {
    if n.is_empty() || !n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') {
        return Err(malformed("nonce is not printable"));
    }
    Ok(())
}

/// A fresh nonce: 24 random bytes, base64 (from the OS's random source).
pub fn random_nonce() -> String {
    let mut bytes = [0u8; 24];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !filled {
        let mut rng = crate::client::SplitMix64::from_entropy();
        for chunk in bytes.chunks_mut(8) {
            let v = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    b64(&bytes)
}

#[derive(Clone)]
enum ClientState {
    Initial,
    SentFirst { first_bare: String },
    SentFinal { server_signature: Vec<u8> },
    Done,
}

/// The client side of one SCRAM exchange: [`first`](Self::first), then
/// [`handle_server_first`](Self::handle_server_first) (gives the client-final message), then
/// [`handle_server_final`](Self::handle_server_final) (verifies the server).
///
/// # Example
///
/// ```
/// use mqnet::protocol::scram::{ScramClient, ScramCredentials, ScramHash, ScramServer};
///
/// let creds = ScramCredentials::new(ScramHash::Sha512, "secret", b"salt-of-16-bytes", 4096);
/// let mut server = ScramServer::new(ScramHash::Sha512, "snonce".into());
/// let mut client = ScramClient::new(ScramHash::Sha512, "alice", "secret", "cnonce".into());
/// let first = client.first();
/// let server_first = server.handle_client_first(first.as_bytes(), |_user| Some(creds.clone())).unwrap();
/// let client_final = client.handle_server_first(server_first.as_bytes()).unwrap();
/// let server_final = server.handle_client_final(client_final.as_bytes()).unwrap();
/// client.handle_server_final(server_final.as_bytes()).unwrap();
/// assert_eq!(server.user(), Some("alice"));
/// ```
#[derive(Clone)]
pub struct ScramClient {
    hash: ScramHash,
    user: String,
    password: String,
    nonce: String,
    state: ClientState,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A client exchange for `user` with `password`, using `nonce` (printable, no comma; see
    /// [`random_nonce`]).
    pub fn new(hash: ScramHash, user: &str, password: &str, nonce: String) -> Self {
        ScramClient {
            hash,
            user: user.to_owned(),
            password: password.to_owned(),
            nonce,
            state: ClientState::Initial,
        }
    }

    /// The client-first message (`n,,n=user,r=nonce`).
    pub fn first(&mut self) -> String {
        let first_bare = format!("n={},r={}", escape_name(&self.user), self.nonce);
        let msg = format!("n,,{first_bare}");
        self.state = ClientState::SentFirst { first_bare };
        msg
    }

    /// Takes the server-first message; returns the client-final message (with the proof).
    ///
    /// # Errors
    /// [`ScramError`] for a malformed message, a nonce that does not extend ours, or an
    /// iteration count out of bounds.
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        let ClientState::SentFirst { first_bare } = &self.state else {
            return Err(ScramError::OutOfOrder);
        };
        let text = std::str::from_utf8(msg).map_err(|_| malformed("server-first is not UTF-8"))?;
        let attrs = attributes(text)?;
        if let Some(('e', e)) = attrs.first() {
            return Err(ScramError::ServerError((*e).to_owned()));
        }
        let (nonce, salt, iterations) = match attrs.as_slice() {
            [('r', r), ('s', s), ('i', i), ..] => (*r, *s, *i),
            [('m', _), ..] => return Err(malformed("mandatory extension")),
            _ => return Err(malformed("server-first is not r=,s=,i=")),
        };
        printable_nonce(nonce)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let salt = unb64(salt)?;
        if salt.is_empty() {
            return Err(malformed("empty salt"));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| malformed(format!("iteration count {iterations:?}")))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let h = self.hash;
        let salted = h.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = h.hmac(&salted, &[b"Client Key"]);
        let stored_key = h.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{first_bare},{text},{without_proof}");
        let client_signature = h.hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = h.hmac(&salted, &[b"Server Key"]);
        let server_signature = h.hmac(&server_key, &[auth_message.as_bytes()]);
        self.state = ClientState::SentFinal { server_signature };
        Ok(format!("{without_proof},p={}", b64(&proof)))
    }

    /// Takes the server-final message and verifies the server's signature.
    ///
    /// # Errors
    /// [`ScramError::ServerSignatureMismatch`] when it does not match,
    /// [`ScramError::ServerError`] for `e=...`, [`ScramError::Malformed`] otherwise.
    pub fn handle_server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::SentFinal { server_signature } = &self.state else {
            return Err(ScramError::OutOfOrder);
        };
        let text = std::str::from_utf8(msg).map_err(|_| malformed("server-final is not UTF-8"))?;
        let attrs = attributes(text)?;
        match attrs.first() {
            Some(('v', v)) => {
                let got = unb64(v)?;
                if !constant_time_eq(&got, server_signature) {
                    return Err(ScramError::ServerSignatureMismatch);
                }
                self.state = ClientState::Done;
                Ok(())
            }
            Some(('e', e)) => Err(ScramError::ServerError((*e).to_owned())),
            _ => Err(malformed("server-final is neither v= nor e=")),
        }
    }

    /// Whether the next message expected is the server-first one.
    pub fn expects_server_first(&self) -> bool {
        matches!(self.state, ClientState::SentFirst { .. })
    }

    /// Whether the exchange completed and the server was verified.
    pub fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A user's SCRAM credentials as a server stores them: the salt, the iteration count, and the
/// stored and server keys (never the password).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// The hash.
    pub hash: ScramHash,
    /// The salt.
    pub salt: Vec<u8>,
    /// The iteration count.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("hash", &self.hash)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredentials {
    /// Derives the credentials of `password` with `salt` and `iterations`.
    pub fn new(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hash.salted_password(password.as_bytes(), salt, iterations);
        let client_key = hash.hmac(&salted, &[b"Client Key"]);
        ScramCredentials {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: hash.hash(&client_key),
            server_key: hash.hmac(&salted, &[b"Server Key"]),
        }
    }
}

enum ServerState {
    Initial,
    SentFirst {
        user: String,
        creds: ScramCredentials,
        nonce: String,
        first_bare: String,
        server_first: String,
    },
    Done {
        user: String,
    },
    Failed,
}

/// The server side of one SCRAM exchange.
pub struct ScramServer {
    hash: ScramHash,
    server_nonce: String,
    state: ServerState,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// A server exchange that adds `server_nonce` to the client's nonce.
    pub fn new(hash: ScramHash, server_nonce: String) -> Self {
        ScramServer {
            hash,
            server_nonce,
            state: ServerState::Initial,
        }
    }

    /// Takes the client-first message, looks its user up with `lookup`; returns the
    /// server-first message.
    ///
    /// # Errors
    /// [`ScramError::Malformed`] (channel binding, extensions, bad syntax),
    /// [`ScramError::UnknownUser`], or credentials of another hash.
    pub fn handle_client_first(
        &mut self,
        msg: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
    ) -> Result<String, ScramError> {
        if !matches!(self.state, ServerState::Initial) {
            return Err(ScramError::OutOfOrder);
        }
        self.state = ServerState::Failed;
        let text = std::str::from_utf8(msg).map_err(|_| malformed("client-first is not UTF-8"))?;
        let Some(first_bare) = text
            .strip_prefix("n,,")
            .or_else(|| text.strip_prefix("y,,"))
        else {
            return Err(malformed("gs2 header other than n,, or y,,"));
        };
        let attrs = attributes(first_bare)?;
        let (user, nonce) = match attrs.as_slice() {
            [('n', n), ('r', r)] => (unescape_name(n)?, *r),
            [('n', _), ('r', _), ('t', _)] => {
                return Err(malformed("token authentication is not served"))
            }
            _ => return Err(malformed("client-first is not n=,r=")),
        };
        printable_nonce(nonce)?;
        let creds = lookup(&user).ok_or(ScramError::UnknownUser)?;
        if creds.hash != self.hash {
            return Err(ScramError::UnknownUser);
        }
        let nonce = format!("{nonce}{}", self.server_nonce);
        let server_first = format!("r={nonce},s={},i={}", b64(&creds.salt), creds.iterations);
        self.state = ServerState::SentFirst {
            user,
            creds,
            nonce,
            first_bare: first_bare.to_owned(),
            server_first: server_first.clone(),
        };
        Ok(server_first)
    }

    /// Takes the client-final message, checks the proof; returns the server-final message.
    ///
    /// # Errors
    /// [`ScramError::InvalidProof`] for a wrong password, [`ScramError::NonceMismatch`],
    /// [`ScramError::Malformed`].
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        let state = std::mem::replace(&mut self.state, ServerState::Failed);
        let ServerState::SentFirst {
            user,
            creds,
            nonce,
            first_bare,
            server_first,
        } = state
        else {
            return Err(ScramError::OutOfOrder);
        };
        let text = std::str::from_utf8(msg).map_err(|_| malformed("client-final is not UTF-8"))?;
        let attrs = attributes(text)?;
        let (cb, r, proof) = match attrs.as_slice() {
            [('c', c), ('r', r), ('p', p)] => (*c, *r, *p),
            _ => return Err(malformed("client-final is not c=,r=,p=")),
        };
        if cb != "biws" && cb != "eSws" {
            return Err(malformed("channel binding data"));
        }
        // Kafka's server rule: the final nonce must end with the combined one. librdkafka (up to
        // at least 2.0) sends its own nonce in front of the combined nonce again; the proof
        // covers the message as sent, so this leniency weakens nothing.
        if !r.ends_with(&nonce) {
            return Err(ScramError::NonceMismatch);
        }
        let proof = unb64(proof)?;
        let h = self.hash;
        let without_proof = &text[..text.len() - proof_len(text)];
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let client_signature = h.hmac(&creds.stored_key, &[auth_message.as_bytes()]);
        if proof.len() != client_signature.len() {
            return Err(ScramError::InvalidProof);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if !constant_time_eq(&h.hash(&client_key), &creds.stored_key) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = h.hmac(&creds.server_key, &[auth_message.as_bytes()]);
        self.state = ServerState::Done { user };
        Ok(format!("v={}", b64(&server_signature)))
    }

    /// The authenticated user, once the exchange succeeded.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            ServerState::Done { user } => Some(user),
            _ => None,
        }
    }
}

/// The length of `,p=...` at the end of a client-final message.
fn proof_len(text: &str) -> usize {
    text.rfind(",p=").map_or(0, |at| text.len() - at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(hash: ScramHash, password: &str) -> ScramCredentials {
        ScramCredentials::new(hash, password, b"0123456789abcdef", MIN_ITERATIONS)
    }

    fn run(
        hash: ScramHash,
        client_password: &str,
        server_password: &str,
    ) -> Result<(), ScramError> {
        let stored = creds(hash, server_password);
        let mut server = ScramServer::new(hash, random_nonce());
        let mut client = ScramClient::new(hash, "user,=x", client_password, random_nonce());
        let first = client.first();
        let sf = server.handle_client_first(first.as_bytes(), |u| {
            assert_eq!(u, "user,=x");
            Some(stored.clone())
        })?;
        let cf = client.handle_server_first(sf.as_bytes())?;
        let fin = server.handle_client_final(cf.as_bytes())?;
        client.handle_server_final(fin.as_bytes())?;
        assert!(client.is_done());
        assert_eq!(server.user(), Some("user,=x"));
        Ok(())
    }

    #[test]
    fn both_hashes_authenticate_and_a_wrong_password_is_refused() {
        for h in [ScramHash::Sha256, ScramHash::Sha512] {
            run(h, "pw", "pw").unwrap();
            assert_eq!(run(h, "wrong", "pw"), Err(ScramError::InvalidProof));
        }
    }

    /// RFC 7677's SCRAM-SHA-256 example: the client's proof and the server's signature.
    #[test]
    fn rfc_7677_test_vector() {
        let mut c = ScramClient::new(
            ScramHash::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO".into(),
        );
        assert_eq!(c.first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let sf = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let cf = c.handle_server_first(sf.as_bytes()).unwrap();
        assert_eq!(
            cf,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.handle_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn a_server_that_does_not_know_the_password_is_caught_by_the_client() {
        let h = ScramHash::Sha512;
        let mut c = ScramClient::new(h, "u", "pw", "abc".into());
        c.first();
        let sf = format!("r=abcdef,s={},i=4096", b64(b"salt"));
        c.handle_server_first(sf.as_bytes()).unwrap();
        let forged = format!("v={}", b64(&[7u8; 64]));
        assert_eq!(
            c.handle_server_final(forged.as_bytes()),
            Err(ScramError::ServerSignatureMismatch)
        );
    }

    #[test]
    fn hostile_server_first_messages_are_refused() {
        let h = ScramHash::Sha256;
        let s = b64(b"salt");
        for (msg, want) in [
            (format!("r=xyz1,s={s},i=4096"), ScramError::NonceMismatch),
            (format!("r=abc,s={s},i=4096"), ScramError::NonceMismatch),
            (format!("r=abc1,s={s},i=10"), ScramError::Iterations(10)),
            (
                format!("r=abc1,s={s},i=4294967295"),
                ScramError::Iterations(u32::MAX),
            ),
            (
                "e=other-error".to_string(),
                ScramError::ServerError("other-error".into()),
            ),
        ] {
            let mut c = ScramClient::new(h, "u", "pw", "abc".into());
            c.first();
            assert_eq!(c.handle_server_first(msg.as_bytes()), Err(want), "{msg}");
        }
        for msg in [
            "",
            "r=abc1",
            "r=abc1,s=!!,i=4096",
            "m=ext,r=abc1",
            "r=abc1,s=c2FsdA==,i=x",
        ] {
            let mut c = ScramClient::new(h, "u", "pw", "abc".into());
            c.first();
            assert!(
                matches!(
                    c.handle_server_first(msg.as_bytes()),
                    Err(ScramError::Malformed(_))
                ),
                "{msg}"
            );
        }
    }

    #[test]
    fn hostile_client_messages_are_refused() {
        let h = ScramHash::Sha256;
        let lookup = |_: &str| Some(creds(h, "pw"));
        for msg in [
            "",
            "p=tls,,n=u,r=a",
            "n,,n=u",
            "n,,n=u=2X,r=a",
            "n,a=x,n=u,r=a",
        ] {
            let mut s = ScramServer::new(h, "s".into());
            assert!(
                s.handle_client_first(msg.as_bytes(), lookup).is_err(),
                "{msg}"
            );
        }
        let mut s = ScramServer::new(h, "s".into());
        assert_eq!(
            s.handle_client_first(b"n,,n=nobody,r=a", |_| None),
            Err(ScramError::UnknownUser)
        );
        let mut s = ScramServer::new(h, "s".into());
        s.handle_client_first(b"n,,n=u,r=a", lookup).unwrap();
        assert_eq!(
            s.handle_client_final(b"c=biws,r=b,p=AAAA"),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            s.handle_client_final(b"c=biws,r=as,p=AAAA"),
            Err(ScramError::OutOfOrder)
        );
        // librdkafka's final nonce (its own nonce again in front) is accepted, as Kafka does;
        // the proof decides.
        let mut s = ScramServer::new(h, "s".into());
        s.handle_client_first(b"n,,n=u,r=a", lookup).unwrap();
        assert_eq!(
            s.handle_client_final(b"c=biws,r=aas,p=AAAA"),
            Err(ScramError::InvalidProof)
        );
    }
}
