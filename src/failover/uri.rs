//! The `failover:` URI: a list of server URIs and the reconnect options, with ActiveMQ's keys and
//! defaults.
//!
//! Two forms are accepted:
//!
//! - `failover:(tcp://a:61616,tcp://b:61616)?randomize=false&maxReconnectAttempts=20`: the servers
//!   in parentheses, the transport's options after `?`;
//! - `failover:tcp://a:61616,tcp://b:61616`: the bare form, servers only (each may carry its own
//!   `?query`; there are no transport options, every option has its default).
//!
//! A server is `tcp://host:port` (an IPv6 host in brackets) with an optional `?k=v&...` of its own,
//! kept on [`ServerUri::options`] and applied to that server's connections as socket options
//! ([`ServerUri::socket_options`]: `tcpNoDelay`, `keepAlive`, `socketBufferSize`; any other key is
//! refused). Any scheme other than `tcp` is refused. Parsing never stops at the first problem: the error lists every bad
//! server, unknown key and bad value.

use std::fmt;
use std::time::Duration;

use crate::net::SocketOptions;

/// One server of a failover list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerUri {
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The server's own query options, in order, percent-decoded.
    pub options: Vec<(String, String)>,
}

impl ServerUri {
    /// Parses `tcp://host:port[?k=v&...]`.
    ///
    /// # Errors
    /// A [`UriProblem`] naming the text and what is wrong with it.
    pub fn parse(text: &str) -> Result<ServerUri, UriProblem> {
        let text = text.trim();
        let bad = |reason: &'static str| UriProblem::BadServer {
            uri: text.to_string(),
            reason,
        };
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(bad("expected tcp://host:port"));
        };
        if !scheme.eq_ignore_ascii_case("tcp") {
            return Err(UriProblem::UnsupportedScheme {
                uri: text.to_string(),
                scheme: scheme.to_string(),
            });
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((h, p)) = v6.split_once("]:") else {
                return Err(bad("expected [ipv6]:port"));
            };
            (h, p)
        } else {
            let Some((h, p)) = authority.rsplit_once(':') else {
                return Err(bad("missing :port"));
            };
            if h.contains(':') {
                return Err(bad("an IPv6 host must be in brackets"));
            }
            (h, p)
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '[' | ']' | '(' | ')' | ','))
        {
            return Err(bad("invalid character in host"));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("port is not a number in 1..=65535")),
        };
        let mut options = Vec::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(bad("query option without `=`"));
                };
                let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
                    return Err(bad("bad percent escape in query"));
                };
                if k.is_empty() {
                    return Err(bad("query option with an empty key"));
                }
                options.push((k, v));
            }
        }
        Ok(ServerUri {
            host: host.to_string(),
            port,
            options,
        })
    }

    /// The socket options of this server's connections: `base` with the server's own options
    /// applied. Keys (ActiveMQ's tcp transport names): `tcpNoDelay` (bool), `keepAlive` (bool),
    /// `socketBufferSize` (bytes, both `SO_SNDBUF` and `SO_RCVBUF`; -1 for the OS default).
    ///
    /// # Errors
    /// Every unknown key or bad value.
    pub fn socket_options(&self, base: SocketOptions) -> Result<SocketOptions, Vec<UriProblem>> {
        let mut o = base;
        let mut problems = Vec::new();
        for (key, value) in &self.options {
            let v = value.trim();
            let bad = |expected: &'static str| UriProblem::InvalidValue {
                key: format!("{}: {key}", self.address()),
                value: value.clone(),
                expected,
            };
            match key.as_str() {
                "tcpNoDelay" => match boolean(v) {
                    Some(b) => o.nodelay = b,
                    None => problems.push(bad(BOOL)),
                },
                "keepAlive" => match boolean(v) {
                    Some(b) => o.keepalive = b,
                    None => problems.push(bad(BOOL)),
                },
                "socketBufferSize" => match v.parse::<i64>() {
                    Ok(-1) => {
                        o.send_buffer_bytes = None;
                        o.receive_buffer_bytes = None;
                    }
                    Ok(n) if (1..=i64::from(i32::MAX)).contains(&n) => {
                        o.send_buffer_bytes = Some(n as usize);
                        o.receive_buffer_bytes = Some(n as usize);
                    }
                    _ => problems.push(bad("-1 (OS default) or bytes from 1 to 2147483647")),
                },
                _ => problems.push(UriProblem::UnknownServerOption {
                    uri: self.to_string(),
                    key: key.clone(),
                }),
            }
        }
        if problems.is_empty() {
            Ok(o)
        } else {
            Err(problems)
        }
    }

    /// `host:port` (IPv6 hosts in brackets), as the NetworkClient takes addresses.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ServerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp://{}", self.address())?;
        for (k, (key, value)) in self.options.iter().enumerate() {
            let sep = if k == 0 { '?' } else { '&' };
            write!(f, "{sep}{key}={value}")?;
        }
        Ok(())
    }
}

/// Reconnect options of a failover transport: ActiveMQ's keys, defaults and meanings.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverOptions {
    /// `initialReconnectDelay` (10 ms): the wait before the first pass after an established link
    /// was lost, and after the first failed pass.
    pub initial_reconnect_delay: Duration,
    /// `maxReconnectDelay` (30000 ms): the cap of the wait between passes (jitter included).
    pub max_reconnect_delay: Duration,
    /// `useExponentialBackOff` (true): grow the wait by `reconnectDelayExponent` per failed pass.
    pub use_exponential_backoff: bool,
    /// `reconnectDelayExponent` (2.0, at least 1): the growth factor of the wait.
    pub reconnect_delay_exponent: f64,
    /// `maxReconnectAttempts` (-1 = forever, `None`): failed passes after which a transport that
    /// was connected once gives up.
    pub max_reconnect_attempts: Option<u32>,
    /// `startupMaxReconnectAttempts` (-1, `None`): failed passes after which a transport that never
    /// connected gives up; `None` falls back to `maxReconnectAttempts`.
    pub startup_max_reconnect_attempts: Option<u32>,
    /// `warnAfterReconnectAttempts` (10; 0 or -1 = never): log a warning every this many failed
    /// passes.
    pub warn_after_reconnect_attempts: u32,
    /// `timeout` (-1 = forever, `None`): how long a request may wait for a link, from its send.
    pub timeout: Option<Duration>,
    /// `randomize` (true): shuffle the servers at the start of each pass.
    pub randomize: bool,
    /// `backup` (false): keep connected standbys to other servers.
    pub backup: bool,
    /// `backupPoolSize` (1): how many standbys.
    pub backup_pool_size: usize,
    /// `priorityBackup` (false): while on a non-priority server, keep trying the priority ones and
    /// switch back once one is connected.
    pub priority_backup: bool,
    /// `priorityURIs` (empty): the priority servers; when empty, the first server of the list.
    pub priority_uris: Vec<ServerUri>,
    /// `trackMessages` (false): replay in-flight requests on the new link after a loss.
    pub track_messages: bool,
    /// `maxCacheSize` (131072 bytes): how many bytes of in-flight requests are tracked for replay.
    pub max_cache_size: usize,
}

impl Default for FailoverOptions {
    fn default() -> Self {
        FailoverOptions {
            initial_reconnect_delay: Duration::from_millis(10),
            max_reconnect_delay: Duration::from_millis(30_000),
            use_exponential_backoff: true,
            reconnect_delay_exponent: 2.0,
            max_reconnect_attempts: None,
            startup_max_reconnect_attempts: None,
            warn_after_reconnect_attempts: 10,
            timeout: None,
            randomize: true,
            backup: false,
            backup_pool_size: 1,
            priority_backup: false,
            priority_uris: Vec::new(),
            track_messages: false,
            max_cache_size: 131_072,
        }
    }
}

/// The option keys [`FailoverOptions`] accepts.
pub const OPTION_KEYS: &[&str] = &[
    "initialReconnectDelay",
    "maxReconnectDelay",
    "useExponentialBackOff",
    "reconnectDelayExponent",
    "maxReconnectAttempts",
    "startupMaxReconnectAttempts",
    "warnAfterReconnectAttempts",
    "timeout",
    "randomize",
    "backup",
    "backupPoolSize",
    "priorityBackup",
    "priorityURIs",
    "trackMessages",
    "maxCacheSize",
];

impl FailoverOptions {
    /// Applies one `key=value`.
    ///
    /// # Errors
    /// The problems found: an unknown key, a value that does not parse or is out of range, or a
    /// bad server in `priorityURIs`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Vec<UriProblem>> {
        let bad = |expected: &'static str| {
            vec![UriProblem::InvalidValue {
                key: key.to_string(),
                value: value.to_string(),
                expected,
            }]
        };
        let v = value.trim();
        match key {
            "initialReconnectDelay" => {
                self.initial_reconnect_delay = ms(v).ok_or_else(|| bad(MS))?;
            }
            "maxReconnectDelay" => self.max_reconnect_delay = ms(v).ok_or_else(|| bad(MS))?,
            "useExponentialBackOff" => {
                self.use_exponential_backoff = boolean(v).ok_or_else(|| bad(BOOL))?;
            }
            "reconnectDelayExponent" => {
                self.reconnect_delay_exponent = match v.parse::<f64>() {
                    Ok(x) if x.is_finite() && (1.0..=1000.0).contains(&x) => x,
                    _ => return Err(bad("a number from 1.0 to 1000.0")),
                };
            }
            "maxReconnectAttempts" => {
                self.max_reconnect_attempts = attempts(v).ok_or_else(|| bad(ATTEMPTS))?;
            }
            "startupMaxReconnectAttempts" => {
                self.startup_max_reconnect_attempts = attempts(v).ok_or_else(|| bad(ATTEMPTS))?;
            }
            "warnAfterReconnectAttempts" => {
                self.warn_after_reconnect_attempts = match v.parse::<i64>() {
                    Ok(n) if (-1..=0).contains(&n) => 0,
                    Ok(n) => u32::try_from(n).map_err(|_| bad(ATTEMPTS))?,
                    Err(_) => return Err(bad(ATTEMPTS)),
                };
            }
            "timeout" => {
                self.timeout = match v {
                    "-1" => None,
                    _ => Some(ms(v).ok_or_else(|| bad("-1 (forever) or milliseconds"))?),
                };
            }
            "randomize" => self.randomize = boolean(v).ok_or_else(|| bad(BOOL))?,
            "backup" => self.backup = boolean(v).ok_or_else(|| bad(BOOL))?,
            "backupPoolSize" => {
                self.backup_pool_size = match v.parse::<usize>() {
                    Ok(n) if n <= 1024 => n,
                    _ => return Err(bad("an integer from 0 to 1024")),
                };
            }
            "priorityBackup" => self.priority_backup = boolean(v).ok_or_else(|| bad(BOOL))?,
            "priorityURIs" => {
                let mut uris = Vec::new();
                let mut problems = Vec::new();
                for item in v.split(',').filter(|s| !s.trim().is_empty()) {
                    match ServerUri::parse(item) {
                        Ok(u) => uris.push(u),
                        Err(p) => problems.push(p),
                    }
                }
                if !problems.is_empty() {
                    return Err(problems);
                }
                self.priority_uris = uris;
            }
            "trackMessages" => self.track_messages = boolean(v).ok_or_else(|| bad(BOOL))?,
            "maxCacheSize" => {
                self.max_cache_size = match v.parse::<u64>() {
                    Ok(n) if n <= i32::MAX as u64 => n as usize,
                    _ => return Err(bad("bytes, from 0 to 2147483647")),
                };
            }
            "backOffMultiplier" => {
                return Err(vec![UriProblem::NotAnOption {
                    key: key.to_string(),
                    hint: "it is not an ActiveMQ failover option; the growth factor of the \
                           reconnect delay is `reconnectDelayExponent`",
                }]);
            }
            _ => {
                return Err(vec![UriProblem::UnknownKey {
                    key: key.to_string(),
                    value: value.to_string(),
                    did_you_mean: closest_key(key),
                }]);
            }
        }
        Ok(())
    }
}

/// The known key nearest to `key` (case-insensitive edit distance at most 2), if any.
fn closest_key(key: &str) -> Option<&'static str> {
    if key.len() > 64 {
        return None;
    }
    let key = key.to_ascii_lowercase();
    OPTION_KEYS
        .iter()
        .map(|k| (edit_distance(&key, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

const MS: &str = "milliseconds (a non-negative integer)";
const BOOL: &str = "true or false";
const ATTEMPTS: &str = "-1 (forever) or a non-negative integer";

fn ms(v: &str) -> Option<Duration> {
    // Bounded so that `Instant + d` cannot overflow: at most ~31.7 years.
    v.parse::<u64>()
        .ok()
        .filter(|n| *n <= 1_000_000_000_000)
        .map(Duration::from_millis)
}

fn boolean(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn attempts(v: &str) -> Option<Option<u32>> {
    match v.parse::<i64>().ok()? {
        -1 => Some(None),
        n => u32::try_from(n).ok().map(Some),
    }
}

/// Decodes `%XX` escapes and `+` (as a space); `None` on a bad escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A parsed `failover:` URI.
///
/// ```
/// use std::time::Duration;
/// use mqnet::failover::FailoverUri;
///
/// let uri: FailoverUri =
///     "failover:(tcp://a:61616,tcp://b:61616)?randomize=false&maxReconnectAttempts=20"
///         .parse()
///         .unwrap();
/// assert_eq!(uri.servers.len(), 2);
/// assert_eq!(uri.servers[1].address(), "b:61616");
/// assert!(!uri.options.randomize);
/// assert_eq!(uri.options.max_reconnect_attempts, Some(20));
/// assert_eq!(uri.options.initial_reconnect_delay, Duration::from_millis(10));
///
/// let err = "failover:(tcp://a:1)?randomise=false&timeout=soon"
///     .parse::<FailoverUri>()
///     .unwrap_err();
/// assert_eq!(err.problems.len(), 2); // both named in the message
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverUri {
    /// The servers, in the order given.
    pub servers: Vec<ServerUri>,
    /// The transport's options.
    pub options: FailoverOptions,
}

/// The longest URI text accepted (a guard against absurd input).
pub const MAX_URI_LEN: usize = 64 * 1024;

impl FailoverUri {
    /// Parses a `failover:` URI (see the module docs for the forms).
    ///
    /// # Errors
    /// A [`UriError`] listing every problem found.
    pub fn parse(text: &str) -> Result<FailoverUri, UriError> {
        let fail = |p: UriProblem| UriError { problems: vec![p] };
        if text.len() > MAX_URI_LEN {
            return Err(fail(UriProblem::TooLong { len: text.len() }));
        }
        let text = text.trim();
        let body = match text.split_once(':') {
            Some((scheme, body)) if scheme.eq_ignore_ascii_case("failover") => body,
            _ => return Err(fail(UriProblem::NotFailover)),
        };
        let (list, query) = if let Some(inner) = body.strip_prefix('(') {
            let Some(close) = inner.find(')') else {
                return Err(fail(UriProblem::Unbalanced));
            };
            let (list, after) = (&inner[..close], &inner[close + 1..]);
            if list.contains('(') {
                return Err(fail(UriProblem::Unbalanced));
            }
            let query = if after.is_empty() {
                None
            } else if let Some(q) = after.strip_prefix('?') {
                Some(q)
            } else {
                return Err(fail(UriProblem::TrailingText {
                    text: after.to_string(),
                }));
            };
            (list, query)
        } else {
            if body.contains(['(', ')']) {
                return Err(fail(UriProblem::Unbalanced));
            }
            (body, None)
        };
        let mut problems = Vec::new();
        let mut servers = Vec::new();
        for item in list.split(',') {
            if item.trim().is_empty() {
                continue;
            }
            match ServerUri::parse(item) {
                Ok(s) => {
                    if let Err(mut p) = s.socket_options(SocketOptions::default()) {
                        problems.append(&mut p);
                    }
                    servers.push(s);
                }
                Err(p) => problems.push(p),
            }
        }
        if servers.is_empty() && problems.is_empty() {
            problems.push(UriProblem::NoServers);
        }
        let mut options = FailoverOptions::default();
        let mut seen: Vec<String> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
                problems.push(UriProblem::BadEscape {
                    text: pair.to_string(),
                });
                continue;
            };
            if !pair.contains('=') {
                problems.push(UriProblem::MissingValue { key: k });
                continue;
            }
            if seen.contains(&k) {
                problems.push(UriProblem::Duplicate { key: k });
                continue;
            }
            if let Err(mut p) = options.set(&k, &v) {
                problems.append(&mut p);
            }
            seen.push(k);
        }
        if problems.is_empty() {
            Ok(FailoverUri { servers, options })
        } else {
            Err(UriError { problems })
        }
    }
}

impl std::str::FromStr for FailoverUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailoverUri::parse(s)
    }
}

/// One thing wrong with a failover URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriProblem {
    /// The text does not start with `failover:`.
    NotFailover,
    /// The text is longer than [`MAX_URI_LEN`].
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A `(` without its `)`, or nested parentheses.
    Unbalanced,
    /// Text after the closing `)` that is not a `?query`.
    TrailingText {
        /// The text.
        text: String,
    },
    /// The server list is empty.
    NoServers,
    /// A server URI with a scheme other than `tcp`.
    UnsupportedScheme {
        /// The server URI.
        uri: String,
        /// Its scheme.
        scheme: String,
    },
    /// A server URI that is not `tcp://host:port[?query]`.
    BadServer {
        /// The server URI.
        uri: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An option key that is not a failover option.
    UnknownKey {
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// A known key equal but for case, if any.
        did_you_mean: Option<&'static str>,
    },
    /// A key that users reach for but that does not exist, with what to use instead.
    NotAnOption {
        /// The key.
        key: String,
        /// What to use instead.
        hint: &'static str,
    },
    /// A value that does not parse or is out of range.
    InvalidValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A key without `=value`.
    MissingValue {
        /// The key.
        key: String,
    },
    /// A server option that is not one of `tcpNoDelay`, `keepAlive`, `socketBufferSize`.
    UnknownServerOption {
        /// The server URI.
        uri: String,
        /// The key.
        key: String,
    },
    /// A key given twice.
    Duplicate {
        /// The key.
        key: String,
    },
    /// A bad `%XX` escape or invalid UTF-8 after decoding.
    BadEscape {
        /// The `key=value` text.
        text: String,
    },
}

impl fmt::Display for UriProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriProblem::NotFailover => write!(f, "does not start with `failover:`"),
            UriProblem::TooLong { len } => {
                write!(f, "{len} bytes long; at most {MAX_URI_LEN} are accepted")
            }
            UriProblem::Unbalanced => write!(f, "unbalanced or nested parentheses"),
            UriProblem::TrailingText { text } => {
                write!(f, "unexpected `{text}` after `)` (options follow a `?`)")
            }
            UriProblem::NoServers => write!(f, "no server URI given"),
            UriProblem::UnsupportedScheme { uri, scheme } => write!(
                f,
                "server `{uri}`: scheme `{scheme}` is not supported (only tcp://)"
            ),
            UriProblem::BadServer { uri, reason } => write!(f, "server `{uri}`: {reason}"),
            UriProblem::UnknownKey {
                key,
                value,
                did_you_mean,
            } => {
                write!(f, "unknown option `{key}={value}`")?;
                if let Some(k) = did_you_mean {
                    write!(f, " (did you mean `{k}`?)")?;
                }
                Ok(())
            }
            UriProblem::NotAnOption { key, hint } => write!(f, "`{key}` is refused: {hint}"),
            UriProblem::InvalidValue {
                key,
                value,
                expected,
            } => write!(f, "`{key}={value}`: expected {expected}"),
            UriProblem::UnknownServerOption { uri, key } => write!(
                f,
                "server `{uri}`: unknown option `{key}` (known: tcpNoDelay, keepAlive, \
                 socketBufferSize)"
            ),
            UriProblem::MissingValue { key } => write!(f, "option `{key}` has no `=value`"),
            UriProblem::Duplicate { key } => write!(f, "option `{key}` is given twice"),
            UriProblem::BadEscape { text } => write!(f, "bad percent escape in `{text}`"),
        }
    }
}

/// A failover URI that was not accepted: every problem found, in the order of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriError {
    /// The problems (at least one).
    pub problems: Vec<UriProblem>,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid failover URI ({n} problem{}): ",
            if n == 1 { "" } else { "s" }
        )?;
        for (k, p) in self.problems.iter().enumerate() {
            if k > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UriError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<FailoverUri, UriError> {
        FailoverUri::parse(s)
    }

    #[test]
    fn defaults_are_activemq_s() {
        let o = FailoverOptions::default();
        assert_eq!(o.initial_reconnect_delay, Duration::from_millis(10));
        assert_eq!(o.max_reconnect_delay, Duration::from_millis(30_000));
        assert!(o.use_exponential_backoff);
        assert_eq!(o.reconnect_delay_exponent, 2.0);
        assert_eq!(o.max_reconnect_attempts, None);
        assert_eq!(o.startup_max_reconnect_attempts, None);
        assert_eq!(o.warn_after_reconnect_attempts, 10);
        assert_eq!(o.timeout, None);
        assert!(o.randomize);
        assert!(!o.backup);
        assert_eq!(o.backup_pool_size, 1);
        assert!(!o.priority_backup);
        assert!(o.priority_uris.is_empty());
        assert!(!o.track_messages);
        assert_eq!(o.max_cache_size, 131_072);
        assert_eq!(parse("failover:tcp://a:1").unwrap().options, o);
    }

    #[test]
    fn parenthesised_form_with_every_key() {
        let u = parse(
            "failover:(tcp://a:1,tcp://[::1]:2?tcpNoDelay=false&socketBufferSize=65536, TCP://c.example:3/)?\
             initialReconnectDelay=5&maxReconnectDelay=100&useExponentialBackOff=false&\
             reconnectDelayExponent=1.5&maxReconnectAttempts=3&startupMaxReconnectAttempts=0&\
             warnAfterReconnectAttempts=2&timeout=500&randomize=false&backup=true&\
             backupPoolSize=2&priorityBackup=true&priorityURIs=tcp://c.example:3,tcp://a:1&\
             trackMessages=true&maxCacheSize=1024",
        )
        .unwrap();
        let addrs: Vec<String> = u.servers.iter().map(ServerUri::address).collect();
        assert_eq!(addrs, ["a:1", "[::1]:2", "c.example:3"]);
        assert_eq!(
            u.servers[1].options,
            vec![
                ("tcpNoDelay".to_string(), "false".to_string()),
                ("socketBufferSize".to_string(), "65536".to_string())
            ]
        );
        let so = u.servers[1]
            .socket_options(SocketOptions::default())
            .unwrap();
        assert!(!so.nodelay && so.keepalive);
        assert_eq!(so.send_buffer_bytes, Some(65_536));
        assert_eq!(so.receive_buffer_bytes, Some(65_536));
        let o = u.options;
        assert_eq!(o.initial_reconnect_delay, Duration::from_millis(5));
        assert_eq!(o.max_reconnect_delay, Duration::from_millis(100));
        assert!(!o.use_exponential_backoff);
        assert_eq!(o.reconnect_delay_exponent, 1.5);
        assert_eq!(o.max_reconnect_attempts, Some(3));
        assert_eq!(o.startup_max_reconnect_attempts, Some(0));
        assert_eq!(o.warn_after_reconnect_attempts, 2);
        assert_eq!(o.timeout, Some(Duration::from_millis(500)));
        assert!(!o.randomize && o.backup && o.priority_backup && o.track_messages);
        assert_eq!(o.backup_pool_size, 2);
        assert_eq!(o.priority_uris.len(), 2);
        assert_eq!(o.priority_uris[0].address(), "c.example:3");
        assert_eq!(o.max_cache_size, 1024);
    }

    #[test]
    fn bare_form_and_negative_one_values() {
        let u = parse("failover:tcp://a:1,tcp://b:2").unwrap();
        assert_eq!(u.servers.len(), 2);
        let u = parse(
            "failover:(tcp://a:1)?timeout=-1&maxReconnectAttempts=-1&warnAfterReconnectAttempts=-1",
        )
        .unwrap();
        assert_eq!(u.options.timeout, None);
        assert_eq!(u.options.max_reconnect_attempts, None);
        assert_eq!(u.options.warn_after_reconnect_attempts, 0);
    }

    #[test]
    fn every_offending_key_and_value_is_named() {
        let e = parse(
            "failover:(tcp://a:1,ssl://b:2,tcp://c)?randomise=false&timeout=soon&\
             maxReconnectAttempts=-2&backup=yes&initialReconnectDelay=10",
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 6, "{e}");
        let msg = e.to_string();
        for needle in [
            "ssl://b:2",
            "`ssl`",
            "tcp://c",
            "randomise=false",
            "did you mean `randomize`",
            "timeout=soon",
            "maxReconnectAttempts=-2",
            "backup=yes",
        ] {
            assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
        }
        assert!(!msg.contains("initialReconnectDelay"), "{msg}");
    }

    #[test]
    fn back_off_multiplier_is_refused_with_a_hint() {
        let e = parse("failover:(tcp://a:1)?backOffMultiplier=2").unwrap_err();
        assert!(matches!(
            &e.problems[..],
            [UriProblem::NotAnOption { key, .. }] if key == "backOffMultiplier"
        ));
        assert!(e.to_string().contains("reconnectDelayExponent"), "{e}");
    }

    #[test]
    fn malformed_shapes_are_errors() {
        for bad in [
            "",
            "tcp://a:1",
            "failover:",
            "failover:()",
            "failover:(tcp://a:1",
            "failover:(tcp://a:1)x",
            "failover:((tcp://a:1))",
            "failover:tcp://a:0",
            "failover:tcp://a:70000",
            "failover:tcp://:1",
            "failover:tcp://::1:1",
            "failover:(tcp://a:1)?timeout",
            "failover:(tcp://a:1)?timeout=1&timeout=2",
            "failover:(tcp://a:1)?timeout=%zz",
            "failover:(tcp://a:1)?reconnectDelayExponent=NaN",
            "failover:(tcp://a:1)?reconnectDelayExponent=0.5",
            "failover:(tcp://a:1)?priorityURIs=udp://x:1",
            "failover:(tcp://a:1?x)",
            "failover:(tcp://a:1?soTimeout=5)",
            "failover:(tcp://a:1?tcpNoDelay=maybe)",
            "failover:(tcp://a:1?socketBufferSize=0)",
            "failover:(tcp://a:1?x=a%20b)",
        ] {
            assert!(parse(bad).is_err(), "accepted `{bad}`");
        }
        let long = format!("failover:tcp://a:1?x={}", "y".repeat(MAX_URI_LEN));
        assert!(matches!(
            &parse(&long).unwrap_err().problems[..],
            [UriProblem::TooLong { .. }]
        ));
    }

    #[test]
    fn display_round_trips_servers() {
        let u =
            parse("failover:(tcp://[::1]:2?keepAlive=false&tcpNoDelay=true,tcp://h:3)").unwrap();
        let again: Vec<ServerUri> = u
            .servers
            .iter()
            .map(|s| ServerUri::parse(&s.to_string()).unwrap())
            .collect();
        assert_eq!(again, u.servers);
    }
}
