//! SASL on the embedded broker: the users, their credentials stored salted (never the
//! passwords), and each connection's authentication state.
//!
//! With [`SaslServerConfig`] set on the broker every connection must authenticate before any
//! request other than ApiVersions, SaslHandshake (v1) and SaslAuthenticate: another request
//! closes the connection (as Kafka does during the SASL handshake). PLAIN checks the password
//! against a PBKDF2-HMAC-SHA-512 hash of it; SCRAM-SHA-256/512 run the server side of RFC 5802
//! against stored keys. Credentials use [`MIN_ITERATIONS`] iterations and a random 16-byte salt
//! per user and mechanism. A failed authentication is answered with SASL_AUTHENTICATION_FAILED
//! and the broker's message; the connection then serves nothing but a new authentication.
//!
//! KIP-368: an authenticated connection may send SaslHandshake and SaslAuthenticate again to
//! renew its session, as the same user only (a change of principal is refused). With a session
//! lifetime set ([`SaslServerConfig::session_lifetime_ms`]), a connection whose session has
//! expired is closed at its next request other than SaslHandshake or SaslAuthenticate.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::protocol::sasl::{parse_plain_message, Mechanism};
use crate::protocol::scram::{
    random_nonce, ScramCredentials, ScramError, ScramHash, ScramServer, MIN_ITERATIONS,
};

/// One user's stored credentials.
#[derive(Clone)]
struct User {
    plain: ScramCredentials,
    sha256: ScramCredentials,
    sha512: ScramCredentials,
}

/// The broker's SASL settings: the enabled mechanisms and the users.
#[derive(Clone)]
pub struct SaslServerConfig {
    mechanisms: Vec<Mechanism>,
    users: HashMap<String, User>,
    session_lifetime_ms: i64,
}

impl fmt::Debug for SaslServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("SaslServerConfig")
            .field("mechanisms", &self.mechanisms)
            .field("users", &names)
            .field("session_lifetime_ms", &self.session_lifetime_ms)
            .finish()
    }
}

fn salt() -> Vec<u8> {
    // A base64 nonce of 24 random bytes: its first 16 characters as the salt.
    random_nonce().into_bytes()[..16].to_vec()
}

impl SaslServerConfig {
    /// Users from `(name, password)` pairs, with `mechanisms` enabled (none: all three).
    ///
    /// # Errors
    /// A description for an empty user name or a name listed twice.
    pub fn new<'a>(
        users: impl IntoIterator<Item = (&'a str, &'a str)>,
        mechanisms: &[Mechanism],
    ) -> Result<Self, String> {
        let mut map = HashMap::new();
        for (name, password) in users {
            if name.is_empty() {
                return Err("empty user name".into());
            }
            let user = User {
                plain: ScramCredentials::new(ScramHash::Sha512, password, &salt(), MIN_ITERATIONS),
                sha256: ScramCredentials::new(ScramHash::Sha256, password, &salt(), MIN_ITERATIONS),
                sha512: ScramCredentials::new(ScramHash::Sha512, password, &salt(), MIN_ITERATIONS),
            };
            if map.insert(name.to_owned(), user).is_some() {
                return Err(format!("user {name} listed twice"));
            }
        }
        Ok(SaslServerConfig {
            mechanisms: if mechanisms.is_empty() {
                Mechanism::ALL.to_vec()
            } else {
                mechanisms.to_vec()
            },
            users: map,
            session_lifetime_ms: 0,
        })
    }

    /// Users from a file of `name:password` lines (`#` comments, blank lines ignored).
    ///
    /// # Errors
    /// The file cannot be read, or a line is not `name:password`.
    pub fn from_file(path: &Path, mechanisms: &[Mechanism]) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut pairs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, password) = line
                .split_once(':')
                .ok_or_else(|| format!("{}:{}: not name:password", path.display(), i + 1))?;
            pairs.push((name.trim().to_owned(), password.to_owned()));
        }
        SaslServerConfig::new(
            pairs.iter().map(|(n, p)| (n.as_str(), p.as_str())),
            mechanisms,
        )
    }

    /// Sets the session lifetime announced in SaslAuthenticate v1+ (KIP-368), ms (0: none).
    pub fn session_lifetime_ms(mut self, ms: i64) -> Self {
        self.session_lifetime_ms = ms.max(0);
        self
    }

    /// The enabled mechanisms' names.
    pub fn mechanism_names(&self) -> Vec<&'static str> {
        self.mechanisms.iter().map(|m| m.name()).collect()
    }
}

/// A connection's authentication state.
#[derive(Debug, Default)]
pub(crate) enum ConnAuth {
    /// Nothing yet: ApiVersions and SaslHandshake only.
    #[default]
    Start,
    /// SaslHandshake chose the mechanism: SaslAuthenticate next.
    Handshaken(Mechanism),
    /// A SCRAM exchange after its first message.
    Scram(Box<ScramServer>),
    /// Authenticated as this user.
    Authenticated(String),
}

/// What the broker answers to a SaslAuthenticate.
pub(crate) enum AuthOutcome {
    /// Answer with these bytes; the exchange continues.
    Continue(Vec<u8>),
    /// Answer with these bytes; the connection is authenticated.
    Done(Vec<u8>),
    /// Answer SASL_AUTHENTICATION_FAILED with this message; the connection serves nothing more
    /// until it authenticates.
    Failed(String),
}

impl SaslServerConfig {
    /// SaslHandshake: the mechanism, if enabled.
    pub(crate) fn handshake(&self, mechanism: &str) -> Option<Mechanism> {
        Mechanism::from_name(mechanism).filter(|m| self.mechanisms.contains(m))
    }

    /// A SaslAuthenticate's bytes in state `state` (updated).
    pub(crate) fn authenticate(&self, state: &mut ConnAuth, bytes: &[u8]) -> AuthOutcome {
        match std::mem::take(state) {
            ConnAuth::Handshaken(Mechanism::Plain) => {
                let (user, password) = match parse_plain_message(bytes) {
                    Ok(p) => p,
                    Err(why) => return AuthOutcome::Failed(format!("PLAIN: {why}")),
                };
                let ok = self.users.get(user).is_some_and(|u| {
                    let c = &u.plain;
                    ScramCredentials::new(c.hash, password, &c.salt, c.iterations) == *c
                });
                if !ok {
                    return AuthOutcome::Failed(
                        "Authentication failed: Invalid username or password".into(),
                    );
                }
                *state = ConnAuth::Authenticated(user.to_owned());
                AuthOutcome::Done(Vec::new())
            }
            ConnAuth::Handshaken(Mechanism::Scram(hash)) => {
                let mut server = ScramServer::new(hash, random_nonce());
                let lookup = |name: &str| {
                    self.users.get(name).map(|u| match hash {
                        ScramHash::Sha256 => u.sha256.clone(),
                        ScramHash::Sha512 => u.sha512.clone(),
                    })
                };
                match server.handle_client_first(bytes, lookup) {
                    Ok(first) => {
                        *state = ConnAuth::Scram(Box::new(server));
                        AuthOutcome::Continue(first.into_bytes())
                    }
                    Err(e) => AuthOutcome::Failed(scram_failure(hash, &e)),
                }
            }
            ConnAuth::Scram(mut server) => match server.handle_client_final(bytes) {
                Ok(fin) => {
                    let user = server.user().unwrap_or_default().to_owned();
                    *state = ConnAuth::Authenticated(user);
                    AuthOutcome::Done(fin.into_bytes())
                }
                Err(e) => AuthOutcome::Failed(scram_failure(ScramHash::Sha512, &e)),
            },
            other => {
                *state = other;
                AuthOutcome::Failed("SaslAuthenticate out of order".into())
            }
        }
    }

    /// The session lifetime announced, ms.
    pub(crate) fn lifetime_ms(&self) -> i64 {
        self.session_lifetime_ms
    }
}

/// Kafka's message for a failed SCRAM exchange (no detail that would tell users from passwords).
fn scram_failure(_hash: ScramHash, e: &ScramError) -> String {
    log::debug!("SCRAM exchange refused: {e}");
    match e {
        ScramError::Malformed(why) => format!("Authentication failed: {why}"),
        _ => "Authentication failed during authentication due to invalid credentials with SASL \
              mechanism SCRAM"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sasl::plain_message;
    use crate::protocol::scram::ScramClient;

    #[test]
    fn plain_and_scram_check_the_stored_salted_credentials() {
        let cfg = SaslServerConfig::new([("alice", "pw")], &[]).unwrap();
        let mut st = ConnAuth::Handshaken(Mechanism::Plain);
        assert!(matches!(
            cfg.authenticate(&mut st, &plain_message("alice", "pw")),
            AuthOutcome::Done(_)
        ));
        let mut st = ConnAuth::Handshaken(Mechanism::Plain);
        assert!(matches!(
            cfg.authenticate(&mut st, &plain_message("alice", "nope")),
            AuthOutcome::Failed(_)
        ));
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            for (password, ok) in [("pw", true), ("bad", false)] {
                let mut st = ConnAuth::Handshaken(Mechanism::Scram(hash));
                let mut c = ScramClient::new(hash, "alice", password, random_nonce());
                let AuthOutcome::Continue(sf) = cfg.authenticate(&mut st, c.first().as_bytes())
                else {
                    panic!("server-first");
                };
                let cf = c.handle_server_first(&sf).unwrap();
                match cfg.authenticate(&mut st, cf.as_bytes()) {
                    AuthOutcome::Done(fin) => {
                        assert!(ok);
                        c.handle_server_final(&fin).unwrap();
                        assert!(matches!(st, ConnAuth::Authenticated(ref u) if u == "alice"));
                    }
                    AuthOutcome::Failed(_) => assert!(!ok),
                    AuthOutcome::Continue(_) => panic!("a third round"),
                }
            }
        }
    }

    #[test]
    fn the_debug_output_names_users_but_no_secret() {
        let cfg = SaslServerConfig::new([("alice", "secret-pw")], &[]).unwrap();
        let shown = format!("{cfg:?}");
        assert!(
            shown.contains("alice") && !shown.contains("secret-pw"),
            "{shown}"
        );
        assert_eq!(cfg.users["alice"].sha512.iterations, MIN_ITERATIONS);
    }
}
