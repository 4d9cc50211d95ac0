//! NetworkClient configuration: Kafka's key names and defaults, a typed builder, and `key=value`
//! parsing.

use std::fmt;
use std::time::Duration;

use crate::net::SocketOptions;

/// How responses are matched to in-flight requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseOrder {
    /// Kafka: responses arrive in request order; each must carry the oldest in-flight request's
    /// correlation id, and a mismatch closes the connection.
    Ordered,
    /// RocketMQ's `opaque`: responses may arrive in any order and are matched by correlation id; a
    /// response with an unknown id is dropped and counted.
    Unordered,
}

/// Configuration of a [`NetworkClient`](super::NetworkClient).
///
/// Build it with the typed setters, or from `key=value` pairs with
/// [`ClientConfig::from_pairs`] / [`ClientConfig::set`].
///
/// ```
/// use std::time::Duration;
/// use mqnet::client::ClientConfig;
///
/// let cfg = ClientConfig::default()
///     .reconnect_backoff(Duration::from_millis(100))
///     .max_in_flight(10);
/// assert_eq!(cfg.max_in_flight_requests_per_connection, 10);
///
/// let cfg = ClientConfig::from_pairs([("request.timeout.ms", "5000")]).unwrap();
/// assert_eq!(cfg.request_timeout, Duration::from_secs(5));
/// assert!(ClientConfig::from_pairs([("no.such.key", "1")]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// `reconnect.backoff.ms` (50): backoff after the first failed connection attempt.
    pub reconnect_backoff: Duration,
    /// `reconnect.backoff.max.ms` (1000): cap of the exponential reconnect backoff.
    pub reconnect_backoff_max: Duration,
    /// `socket.connection.setup.timeout.ms` (10000): how long a node may stay Connecting or
    /// Handshaking before the attempt is failed and its socket aborted.
    pub connection_setup_timeout: Duration,
    /// `socket.connection.setup.timeout.max.ms` (30000): cap of the setup timeout, which doubles
    /// (with ±20 % jitter) per consecutive failed attempt.
    pub connection_setup_timeout_max: Duration,
    /// `request.timeout.ms` (30000): a request's deadline, counted from `send`.
    pub request_timeout: Duration,
    /// `max.in.flight.requests.per.connection` (5).
    pub max_in_flight_requests_per_connection: usize,
    /// `connections.max.idle.ms` (540000): idle connections are closed by the Selector.
    pub connections_max_idle: Option<Duration>,
    /// `send.buffer.bytes` (131072; -1 for the OS default).
    pub send_buffer_bytes: Option<usize>,
    /// `receive.buffer.bytes` (32768; -1 for the OS default).
    pub receive_buffer_bytes: Option<usize>,
    /// `mqnet.response.order` (`ordered`): see [`ResponseOrder`].
    pub response_order: ResponseOrder,
    /// `mqnet.pipeline.unsent` (false). With `false` (Kafka's rule), a new request is handed to the
    /// Selector only once the newest in-flight one has fully left; with `true`, up to
    /// `max.in.flight` requests may be staged at once and the Selector's byte-bounded send queue
    /// provides the back-pressure. Enable it for deep pipelines of small requests.
    pub pipeline_unsent: bool,
    /// `security.protocol` and the `ssl.*` keys: see [`SecurityConfig`](super::SecurityConfig).
    pub security: super::security::SecurityConfig,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password` (used with `SASL_PLAINTEXT` and
    /// `SASL_SSL`).
    pub sasl: super::SaslSettings,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_millis(1000),
            connection_setup_timeout: Duration::from_millis(10_000),
            connection_setup_timeout_max: Duration::from_millis(30_000),
            request_timeout: Duration::from_millis(30_000),
            max_in_flight_requests_per_connection: 5,
            connections_max_idle: Some(Duration::from_millis(540_000)),
            send_buffer_bytes: Some(131_072),
            receive_buffer_bytes: Some(32_768),
            response_order: ResponseOrder::Ordered,
            pipeline_unsent: false,
            security: super::security::SecurityConfig::new(),
            sasl: super::SaslSettings::default(),
        }
    }
}

/// A configuration key or value that was not accepted. The message names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The key is not a configuration key of this component.
    UnknownKey(String),
    /// The value does not parse or is out of range for the key.
    InvalidValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A security setting cannot be put to use (an unreadable certificate, TLS without the `tls`
    /// feature).
    Security {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A line of a properties text is not `key=value`.
    Malformed {
        /// 1-based line number.
        line: usize,
        /// The line's text.
        text: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownKey(k) => write!(f, "unknown configuration key `{k}`"),
            ConfigError::Security { key, reason } => write!(f, "`{key}`: {reason}"),
            ConfigError::InvalidValue {
                key,
                value,
                expected,
            } => write!(
                f,
                "invalid value `{value}` for `{key}`: expected {expected}"
            ),
            ConfigError::Malformed { line, text } => {
                write!(f, "line {line} is not `key=value`: `{text}`")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses a millisecond value for `key`.
///
/// # Errors
/// [`ConfigError::InvalidValue`] when `value` is not a non-negative integer.
pub fn parse_ms(key: &str, value: &str) -> Result<Duration, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| invalid(key, value, "a non-negative integer (milliseconds)"))
}

/// Parses an unsigned integer for `key`, at least `min`.
///
/// # Errors
/// [`ConfigError::InvalidValue`] when `value` is not an integer `>= min`.
pub fn parse_usize(key: &str, value: &str, min: usize) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(invalid(key, value, "a positive integer")),
    }
}

/// Parses `true`/`false` for `key`.
///
/// # Errors
/// [`ConfigError::InvalidValue`] otherwise.
pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value, "`true` or `false`")),
    }
}

fn parse_buffer(key: &str, value: &str) -> Result<Option<usize>, ConfigError> {
    match value.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n > 0 => Ok(Some(n as usize)),
        _ => Err(invalid(
            key,
            value,
            "a positive byte count or -1 (OS default)",
        )),
    }
}

fn invalid(key: &str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    }
}

/// Splits a properties text (`key=value` per line; `#` and `!` start comments; blank lines
/// ignored) into pairs.
///
/// # Errors
/// [`ConfigError::Malformed`] for a line without `=`.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError::Malformed {
                line: i + 1,
                text: line.to_string(),
            });
        };
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

impl ClientConfig {
    /// The configuration keys [`ClientConfig::set`] accepts.
    pub const KEYS: &'static [&'static str] = &[
        "reconnect.backoff.ms",
        "reconnect.backoff.max.ms",
        "socket.connection.setup.timeout.ms",
        "socket.connection.setup.timeout.max.ms",
        "request.timeout.ms",
        "max.in.flight.requests.per.connection",
        "connections.max.idle.ms",
        "send.buffer.bytes",
        "receive.buffer.bytes",
        "mqnet.response.order",
        "mqnet.pipeline.unsent",
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
    ];

    /// Sets one key from its string value.
    ///
    /// # Errors
    /// [`ConfigError::UnknownKey`] for a key not in [`ClientConfig::KEYS`],
    /// [`ConfigError::InvalidValue`] for a value that does not parse; both name the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "reconnect.backoff.ms" => self.reconnect_backoff = parse_ms(key, value)?,
            "reconnect.backoff.max.ms" => self.reconnect_backoff_max = parse_ms(key, value)?,
            "socket.connection.setup.timeout.ms" => {
                self.connection_setup_timeout = parse_ms(key, value)?
            }
            "socket.connection.setup.timeout.max.ms" => {
                self.connection_setup_timeout_max = parse_ms(key, value)?
            }
            "request.timeout.ms" => self.request_timeout = parse_ms(key, value)?,
            "max.in.flight.requests.per.connection" => {
                self.max_in_flight_requests_per_connection = parse_usize(key, value, 1)?
            }
            "connections.max.idle.ms" => {
                self.connections_max_idle = match value.trim() {
                    "-1" => None,
                    v => Some(parse_ms(key, v)?),
                }
            }
            "send.buffer.bytes" => self.send_buffer_bytes = parse_buffer(key, value)?,
            "receive.buffer.bytes" => self.receive_buffer_bytes = parse_buffer(key, value)?,
            "mqnet.response.order" => {
                self.response_order = match value.trim() {
                    "ordered" => ResponseOrder::Ordered,
                    "unordered" => ResponseOrder::Unordered,
                    _ => return Err(invalid(key, value, "`ordered` or `unordered`")),
                }
            }
            "mqnet.pipeline.unsent" => self.pipeline_unsent = parse_bool(key, value)?,
            "sasl.mechanism" | "sasl.mechanisms" => {
                let m = value.trim();
                if !super::SASL_MECHANISMS.contains(&m) {
                    return Err(invalid(key, value, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"));
                }
                self.sasl.mechanism = Some(m.to_owned());
            }
            "sasl.username" => self.sasl.username = value.to_owned(),
            "sasl.password" => self.sasl.password = value.to_owned(),
            _ if self.security.set(key, value)? => {}
            _ => return Err(ConfigError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// A configuration from defaults overridden by `pairs`.
    ///
    /// # Errors
    /// As [`ClientConfig::set`], for the first bad pair.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut cfg = ClientConfig::default();
        for (k, v) in pairs {
            cfg.set(k.as_ref(), v.as_ref())?;
        }
        Ok(cfg)
    }

    /// A configuration from a properties text (`key=value` lines).
    ///
    /// # Errors
    /// [`ConfigError::Malformed`] or as [`ClientConfig::set`].
    pub fn from_properties(text: &str) -> Result<Self, ConfigError> {
        ClientConfig::from_pairs(parse_properties(text)?)
    }

    /// Sets `reconnect.backoff.ms`.
    pub fn reconnect_backoff(mut self, d: Duration) -> Self {
        self.reconnect_backoff = d;
        self
    }

    /// Sets `reconnect.backoff.max.ms`.
    pub fn reconnect_backoff_max(mut self, d: Duration) -> Self {
        self.reconnect_backoff_max = d;
        self
    }

    /// Sets `socket.connection.setup.timeout.ms`.
    pub fn connection_setup_timeout(mut self, d: Duration) -> Self {
        self.connection_setup_timeout = d;
        self
    }

    /// Sets `socket.connection.setup.timeout.max.ms`.
    pub fn connection_setup_timeout_max(mut self, d: Duration) -> Self {
        self.connection_setup_timeout_max = d;
        self
    }

    /// Sets `request.timeout.ms`.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Sets `max.in.flight.requests.per.connection` (at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight_requests_per_connection = n.max(1);
        self
    }

    /// Sets `connections.max.idle.ms` (`None` disables idle expiry).
    pub fn connections_max_idle(mut self, d: Option<Duration>) -> Self {
        self.connections_max_idle = d;
        self
    }

    /// Sets `send.buffer.bytes` (`None`: OS default).
    pub fn send_buffer_bytes(mut self, n: Option<usize>) -> Self {
        self.send_buffer_bytes = n;
        self
    }

    /// Sets `receive.buffer.bytes` (`None`: OS default).
    pub fn receive_buffer_bytes(mut self, n: Option<usize>) -> Self {
        self.receive_buffer_bytes = n;
        self
    }

    /// Sets `mqnet.response.order`.
    pub fn response_order(mut self, order: ResponseOrder) -> Self {
        self.response_order = order;
        self
    }

    /// Sets `mqnet.pipeline.unsent`.
    pub fn pipeline_unsent(mut self, on: bool) -> Self {
        self.pipeline_unsent = on;
        self
    }

    /// Sets `security.protocol`.
    pub fn security_protocol(mut self, protocol: super::SecurityProtocol) -> Self {
        self.security.protocol = protocol;
        self
    }

    /// Sets the SASL keys (`sasl.mechanism`, `sasl.username`, `sasl.password`).
    pub fn sasl(mut self, sasl: super::SaslSettings) -> Self {
        self.sasl = sasl;
        self
    }

    /// The socket options a connection made with this configuration uses.
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            send_buffer_bytes: self.send_buffer_bytes,
            receive_buffer_bytes: self.receive_buffer_bytes,
            ..SocketOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kafkas() {
        let c = ClientConfig::default();
        assert_eq!(c.reconnect_backoff, Duration::from_millis(50));
        assert_eq!(c.reconnect_backoff_max, Duration::from_millis(1000));
        assert_eq!(c.connection_setup_timeout, Duration::from_secs(10));
        assert_eq!(c.connection_setup_timeout_max, Duration::from_secs(30));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.max_in_flight_requests_per_connection, 5);
        assert_eq!(c.connections_max_idle, Some(Duration::from_millis(540_000)));
        assert_eq!(c.send_buffer_bytes, Some(131_072));
        assert_eq!(c.receive_buffer_bytes, Some(32_768));
    }

    #[test]
    fn every_key_parses() {
        let c = ClientConfig::from_properties(
            "# comment\n\
             reconnect.backoff.ms=10\n\
             reconnect.backoff.max.ms = 20\n\
             socket.connection.setup.timeout.ms=30\n\
             socket.connection.setup.timeout.max.ms=40\n\
             request.timeout.ms=50\n\
             max.in.flight.requests.per.connection=7\n\
             connections.max.idle.ms=-1\n\
             send.buffer.bytes=-1\n\
             receive.buffer.bytes=4096\n\
             mqnet.response.order=unordered\n\
             mqnet.pipeline.unsent=true\n\
             security.protocol=sasl_plaintext\n\
             sasl.mechanism=SCRAM-SHA-512\n\
             sasl.mechanisms=SCRAM-SHA-256\n\
             sasl.username=u\n\
             sasl.password=p\n",
        )
        .unwrap();
        assert_eq!(c.reconnect_backoff, Duration::from_millis(10));
        assert_eq!(c.reconnect_backoff_max, Duration::from_millis(20));
        assert_eq!(c.connection_setup_timeout, Duration::from_millis(30));
        assert_eq!(c.connection_setup_timeout_max, Duration::from_millis(40));
        assert_eq!(c.request_timeout, Duration::from_millis(50));
        assert_eq!(c.max_in_flight_requests_per_connection, 7);
        assert_eq!(c.connections_max_idle, None);
        assert_eq!(c.send_buffer_bytes, None);
        assert_eq!(c.receive_buffer_bytes, Some(4096));
        assert_eq!(c.response_order, ResponseOrder::Unordered);
        assert!(c.pipeline_unsent);
        assert_eq!(
            c.security.protocol,
            super::super::SecurityProtocol::SaslPlaintext
        );
        assert_eq!(c.sasl.mechanism.as_deref(), Some("SCRAM-SHA-256"));
        assert_eq!(
            (c.sasl.username.as_str(), c.sasl.password.as_str()),
            ("u", "p")
        );
        assert_eq!(ClientConfig::KEYS.len(), 16);
        for bad in ["security.protocol=TLS", "sasl.mechanism=GSSAPI"] {
            assert!(ClientConfig::from_properties(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = ClientConfig::from_pairs([("reconnect.backof.ms", "5")]).unwrap_err();
        assert_eq!(e, ConfigError::UnknownKey("reconnect.backof.ms".into()));
        assert!(e.to_string().contains("reconnect.backof.ms"));
        let e = ClientConfig::from_pairs([("request.timeout.ms", "soon")]).unwrap_err();
        assert!(e.to_string().contains("request.timeout.ms"));
        let e = ClientConfig::from_pairs([("max.in.flight.requests.per.connection", "0")]);
        assert!(matches!(e, Err(ConfigError::InvalidValue { .. })));
        let e = ClientConfig::from_properties("a=1\nbroken line\n").unwrap_err();
        assert!(matches!(e, ConfigError::Malformed { line: 2, .. }));
    }
}
