//! Connection security settings: `security.protocol` and the SASL keys (`sasl.mechanism`,
//! `sasl.username`, `sasl.password`). The SASL exchange itself is the Kafka layer's
//! (`protocol::sasl`), run by the connection's handshake hook; this layer only carries the
//! settings. The password is never logged and is `<redacted>` in `Debug`.

use std::fmt;

/// `security.protocol`: how a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// `PLAINTEXT`: no TLS, no authentication.
    #[default]
    Plaintext,
    /// `SASL_PLAINTEXT`: SASL authentication, no TLS.
    SaslPlaintext,
    /// `SSL`: TLS (needs the TLS transport).
    Ssl,
    /// `SASL_SSL`: SASL over TLS (needs the TLS transport).
    SaslSsl,
}

impl SecurityProtocol {
    /// The Kafka name.
    pub const fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol named `name` (case-insensitive, as Kafka's clients accept it).
    pub fn from_name(name: &str) -> Option<SecurityProtocol> {
        [
            SecurityProtocol::Plaintext,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslSsl,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether connections authenticate with SASL.
    pub const fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    /// Whether connections use TLS.
    pub const fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The SASL mechanisms `sasl.mechanism` accepts.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// The SASL keys. `mechanism` is one of [`SASL_MECHANISMS`] (checked by
/// [`ClientConfig::set`](super::ClientConfig::set)).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SaslSettings {
    /// `sasl.mechanism` (none by default; required with a `SASL_*` security protocol).
    pub mechanism: Option<String>,
    /// `sasl.username`.
    pub username: String,
    /// `sasl.password`: never logged, `<redacted>` in `Debug`.
    pub password: String,
}

impl fmt::Debug for SaslSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_in_debug() {
        let s = SaslSettings {
            mechanism: Some("PLAIN".into()),
            username: "alice".into(),
            password: "hunter2-secret".into(),
        };
        let shown = format!(
            "{s:?} {:?}",
            crate::client::ClientConfig::default().sasl(s.clone())
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice") && shown.contains("<redacted>"));
    }

    #[test]
    fn names() {
        for n in ["PLAINTEXT", "sasl_plaintext", "SSL", "SASL_SSL"] {
            assert!(SecurityProtocol::from_name(n).is_some(), "{n}");
        }
        assert!(SecurityProtocol::from_name("TLS").is_none());
    }
}
