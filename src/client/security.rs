//! Kafka's security settings of a client: `security.protocol` and the `ssl.*` keys (TLS in the
//! transport, feature `tls`). SASL keys live beside them in the client's configuration.

use std::fmt;
use std::path::PathBuf;

use super::config::ConfigError;

/// `security.protocol`: what runs between the client and a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// `PLAINTEXT` (default): no TLS, no SASL.
    #[default]
    Plaintext,
    /// `SSL`: TLS, authenticated by certificates.
    Ssl,
    /// `SASL_PLAINTEXT`: SASL authentication over a plaintext connection.
    SaslPlaintext,
    /// `SASL_SSL`: SASL authentication inside TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Parses Kafka's names, case-insensitively.
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] for any other value.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(SecurityProtocol::Plaintext),
            "SSL" => Ok(SecurityProtocol::Ssl),
            "SASL_PLAINTEXT" => Ok(SecurityProtocol::SaslPlaintext),
            "SASL_SSL" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(ConfigError::InvalidValue {
                key: "security.protocol".into(),
                value: value.to_string(),
                expected: "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
            }),
        }
    }

    /// The Kafka name.
    pub const fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol named `name` (case-insensitive, as Kafka's clients accept it).
    pub fn from_name(name: &str) -> Option<SecurityProtocol> {
        Self::parse(name).ok()
    }

    /// Whether connections run inside TLS (`SSL`, `SASL_SSL`).
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether connections authenticate with SASL (`SASL_PLAINTEXT`, `SASL_SSL`).
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        })
    }
}

/// `security.protocol` and the TLS settings, with Kafka's key names. Only PEM files are read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecurityConfig {
    /// `security.protocol` (`PLAINTEXT`).
    pub protocol: SecurityProtocol,
    /// `ssl.ca.location` / `ssl.truststore.location`: PEM bundle of the CAs trusted to sign
    /// brokers' certificates; the system bundle when unset.
    pub ca_location: Option<PathBuf>,
    /// `ssl.certificate.location`: PEM certificate chain presented to brokers that ask for one
    /// (mutual TLS). `ssl.keystore.location` sets it and the key to one PEM file holding both.
    pub certificate_location: Option<PathBuf>,
    /// `ssl.key.location`: PEM private key of the certificate.
    pub key_location: Option<PathBuf>,
    /// `ssl.endpoint.identification.algorithm` (`https`): whether a broker's certificate must name
    /// the host connected to; `none` (or empty) turns the check off (the chain is still verified).
    pub endpoint_identification: bool,
}

impl SecurityConfig {
    /// The keys [`SecurityConfig::set`] accepts.
    pub const KEYS: &'static [&'static str] = &[
        "security.protocol",
        "ssl.ca.location",
        "ssl.truststore.location",
        "ssl.truststore.type",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.keystore.location",
        "ssl.keystore.type",
        "ssl.endpoint.identification.algorithm",
    ];

    /// Defaults: `PLAINTEXT`, host names verified.
    pub fn new() -> Self {
        SecurityConfig {
            endpoint_identification: true,
            ..SecurityConfig::default()
        }
    }

    /// Sets `key` when it is one of [`SecurityConfig::KEYS`]; returns whether it was.
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] for a bad value (a store type other than `PEM`, an unknown
    /// protocol or identification algorithm).
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        let v = value.trim();
        let path = || (!v.is_empty()).then(|| PathBuf::from(v));
        match key {
            "security.protocol" => self.protocol = SecurityProtocol::parse(v)?,
            "ssl.ca.location" | "ssl.truststore.location" => self.ca_location = path(),
            "ssl.certificate.location" => self.certificate_location = path(),
            "ssl.key.location" => self.key_location = path(),
            "ssl.keystore.location" => {
                self.certificate_location = path();
                self.key_location = path();
            }
            "ssl.truststore.type" | "ssl.keystore.type" => {
                if !v.eq_ignore_ascii_case("PEM") {
                    return Err(ConfigError::InvalidValue {
                        key: key.to_string(),
                        value: value.to_string(),
                        expected: "PEM",
                    });
                }
            }
            "ssl.endpoint.identification.algorithm" => {
                self.endpoint_identification = match v.to_ascii_lowercase().as_str() {
                    "https" => true,
                    "" | "none" => false,
                    _ => {
                        return Err(ConfigError::InvalidValue {
                            key: key.to_string(),
                            value: value.to_string(),
                            expected: "https, none or empty",
                        })
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The TLS client configuration these settings call for: `None` for `PLAINTEXT` and
    /// `SASL_PLAINTEXT`.
    ///
    /// # Errors
    /// [`crate::net::tls::TlsConfigError`] for unreadable PEM files or a key that does not match.
    #[cfg(feature = "tls")]
    pub fn tls_client_config(
        &self,
    ) -> Result<
        Option<std::sync::Arc<crate::net::tls::rustls::ClientConfig>>,
        crate::net::tls::TlsConfigError,
    > {
        if !self.protocol.uses_tls() {
            return Ok(None);
        }
        crate::net::tls::client_config(&crate::net::tls::TlsClientOptions {
            ca: self.ca_location.clone(),
            certificate: self.certificate_location.clone(),
            key: self.key_location.clone(),
            verify_hostname: self.endpoint_identification,
        })
        .map(Some)
    }

    /// Sets up `selector` for these settings: outbound channels get TLS when the protocol calls
    /// for it.
    ///
    /// # Errors
    /// [`ConfigError::Security`] when the TLS configuration cannot be built, or when TLS is asked
    /// for and the crate was built without the `tls` feature.
    pub fn apply(&self, selector: &mut crate::net::Selector) -> Result<(), ConfigError> {
        #[cfg(feature = "tls")]
        {
            let tls = self
                .tls_client_config()
                .map_err(|e| ConfigError::Security {
                    key: "security.protocol".into(),
                    reason: e.to_string(),
                })?;
            selector.set_tls_client(tls);
            Ok(())
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = selector;
            if self.protocol.uses_tls() {
                return Err(ConfigError::Security {
                    key: "security.protocol".into(),
                    reason: format!("{} needs mqnet built with the `tls` feature", self.protocol),
                });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_keys_parse() {
        let mut s = SecurityConfig::new();
        assert!(s.set("security.protocol", "ssl").unwrap());
        assert_eq!(s.protocol, SecurityProtocol::Ssl);
        assert!(s.set("ssl.truststore.location", "/ca.pem").unwrap());
        assert_eq!(s.ca_location, Some(PathBuf::from("/ca.pem")));
        assert!(s.set("ssl.keystore.location", "/both.pem").unwrap());
        assert_eq!(s.key_location, Some(PathBuf::from("/both.pem")));
        assert!(s.endpoint_identification);
        assert!(s.set("ssl.endpoint.identification.algorithm", "").unwrap());
        assert!(!s.endpoint_identification);
        assert!(s.set("ssl.keystore.type", "JKS").is_err());
        assert!(s.set("security.protocol", "TLS").is_err());
        assert!(!s.set("sasl.mechanism", "PLAIN").unwrap());
        assert!(SecurityProtocol::parse("SASL_SSL").unwrap().uses_tls());
        assert!(!SecurityProtocol::parse("sasl_plaintext")
            .unwrap()
            .uses_tls());
    }
}
