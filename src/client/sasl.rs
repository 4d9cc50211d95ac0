//! The SASL keys of a client (`sasl.mechanism`,
//! `sasl.username`, `sasl.password`). The SASL exchange itself is the Kafka layer's
//! (`protocol::sasl`), run by the connection's handshake hook; this layer only carries the
//! settings. The password is never logged and is `<redacted>` in `Debug`.

use std::fmt;

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
    use crate::client::SecurityProtocol;

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
