//! Producer configuration: Kafka's key names and defaults.

use std::time::Duration;

use crate::client::{
    parse_bool, parse_ms, parse_properties, parse_usize, ClientConfig, ConfigError,
};
use crate::protocol::Compression;

/// The largest `*.ms` value accepted: `i32::MAX` ms (about 24.8 days, Kafka's int configs). Any
/// deadline the producer computes from the clock and these stays far from `Instant`'s range, so
/// no `Instant + Duration` can overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_millis(i32::MAX as u64);

/// `acks`: how many replicas must have the record before the broker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// `acks=0`: no response; a record is "delivered" once its request has left (offset -1).
    None,
    /// `acks=1`: the leader has written it.
    Leader,
    /// `acks=all` (`-1`): every in-sync replica has it.
    All,
}

impl Acks {
    /// The wire value.
    pub fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// Configuration of a [`Producer`](super::Producer). Defaults are Kafka 4.0's.
///
/// ```
/// use mqnet::producer::{Acks, ProducerConfig};
///
/// let cfg = ProducerConfig::new("127.0.0.1:9092").acks(Acks::Leader).linger_ms(10);
/// assert_eq!(cfg.linger.as_millis(), 10);
/// let cfg = ProducerConfig::from_properties(
///     "bootstrap.servers=127.0.0.1:9092\nacks=all\nreconnect.backoff.ms=20\n",
/// ).unwrap();
/// assert_eq!(cfg.client.reconnect_backoff.as_millis(), 20);
/// assert!(ProducerConfig::from_properties("bogus=1").is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerConfig {
    /// `bootstrap.servers`: `host:port` list.
    pub bootstrap_servers: Vec<String>,
    /// `client.id` ("mqnet-producer").
    pub client_id: String,
    /// `acks` (all).
    pub acks: Acks,
    /// `linger.ms` (5).
    pub linger: Duration,
    /// `batch.size` (16384).
    pub batch_size: usize,
    /// `buffer.memory` (33554432).
    pub buffer_memory: usize,
    /// `max.block.ms` (60000): how long `send` blocks for buffer memory before failing.
    pub max_block: Duration,
    /// `retries` (i32::MAX): retries are bounded by `delivery.timeout.ms` in practice.
    pub retries: u32,
    /// `retry.backoff.ms` (100).
    pub retry_backoff: Duration,
    /// `retry.backoff.max.ms` (1000).
    pub retry_backoff_max: Duration,
    /// `delivery.timeout.ms` (120000): the end-to-end bound on a record, from `send`.
    pub delivery_timeout: Duration,
    /// `enable.idempotence` (true).
    pub enable_idempotence: bool,
    /// `max.request.size` (1048576).
    pub max_request_size: usize,
    /// `metadata.max.age.ms` (300000): refresh metadata at least this often.
    pub metadata_max_age: Duration,
    /// `statistics.interval.ms` (0: off): how often the statistics callback gets librdkafka-shaped
    /// JSON (see [`ProducerConfig::statistics`]).
    pub statistics_interval: Duration,
    /// The statistics callback (librdkafka's `stats_cb`), called every `statistics.interval.ms`.
    pub stats_callback: Option<crate::metrics::StatsCallback>,
    /// `metrics.sample.window.ms` (30000) and `metrics.num.samples` (2): the windows of the
    /// metrics' rates, averages and maxima.
    pub metrics: crate::metrics::MetricConfig,
    /// `compression.type` (none): the codec of the record batches (gzip, snappy, lz4 or zstd,
    /// each behind its cargo feature).
    pub compression: Compression,
    /// `compression.level` (the codec's default): gzip 1-9, lz4 1-17, zstd -131072-22; ignored by
    /// snappy and none. Also read as `compression.gzip.level`, `compression.lz4.level` and
    /// `compression.zstd.level` (Kafka's per-codec keys).
    pub compression_level: Option<i32>,
    /// The transport keys (`request.timeout.ms`, `reconnect.backoff.ms`, ...,
    /// `max.in.flight.requests.per.connection`).
    pub client: ClientConfig,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            bootstrap_servers: Vec::new(),
            client_id: "mqnet-producer".to_string(),
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_size: 16_384,
            buffer_memory: 32 * 1024 * 1024,
            max_block: Duration::from_millis(60_000),
            retries: i32::MAX as u32,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_millis(1000),
            delivery_timeout: Duration::from_millis(120_000),
            enable_idempotence: true,
            max_request_size: 1_048_576,
            metadata_max_age: Duration::from_millis(300_000),
            statistics_interval: Duration::ZERO,
            stats_callback: None,
            metrics: crate::metrics::MetricConfig::default(),
            compression: Compression::None,
            compression_level: None,
            client: ClientConfig::default(),
        }
    }
}

impl ProducerConfig {
    /// The producer keys [`ProducerConfig::set`] accepts besides [`ClientConfig::KEYS`].
    pub const KEYS: &'static [&'static str] = &[
        "bootstrap.servers",
        "client.id",
        "acks",
        "linger.ms",
        "batch.size",
        "buffer.memory",
        "max.block.ms",
        "retries",
        "retry.backoff.ms",
        "retry.backoff.max.ms",
        "delivery.timeout.ms",
        "enable.idempotence",
        "max.request.size",
        "metadata.max.age.ms",
        "statistics.interval.ms",
        "metrics.sample.window.ms",
        "metrics.num.samples",
        "compression.type",
        "compression.level",
        "compression.gzip.level",
        "compression.lz4.level",
        "compression.zstd.level",
    ];

    /// Defaults with `bootstrap.servers` set from a comma-separated list.
    pub fn new(bootstrap_servers: &str) -> Self {
        ProducerConfig {
            bootstrap_servers: split_list(bootstrap_servers),
            ..ProducerConfig::default()
        }
    }

    /// Sets one key from its string value. Transport keys go to [`ClientConfig::set`].
    ///
    /// # Errors
    /// [`ConfigError::UnknownKey`] for an unknown key, [`ConfigError::InvalidValue`] for a bad
    /// value; both name the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let v = value.trim();
        let bad = |expected: &'static str| ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected,
        };
        match key {
            "bootstrap.servers" => {
                let list = split_list(v);
                if list.is_empty()
                    || list
                        .iter()
                        .any(|a| crate::client::split_host_port(a).is_err())
                {
                    return Err(bad("a comma-separated list of host:port"));
                }
                self.bootstrap_servers = list;
            }
            "client.id" => self.client_id = v.to_string(),
            "acks" => {
                self.acks = match v {
                    "0" => Acks::None,
                    "1" => Acks::Leader,
                    "all" | "-1" => Acks::All,
                    _ => return Err(bad("0, 1, all or -1")),
                }
            }
            "linger.ms" => self.linger = parse_ms(key, v)?,
            "batch.size" => self.batch_size = parse_usize(key, v, 1)?,
            "buffer.memory" => self.buffer_memory = parse_usize(key, v, 1)?,
            "max.block.ms" => self.max_block = parse_ms(key, v)?,
            "retries" => {
                self.retries = v
                    .parse::<u32>()
                    .map_err(|_| bad("a non-negative integer"))?
            }
            "retry.backoff.ms" => self.retry_backoff = parse_ms(key, v)?,
            "retry.backoff.max.ms" => self.retry_backoff_max = parse_ms(key, v)?,
            "delivery.timeout.ms" => self.delivery_timeout = parse_ms(key, v)?,
            "enable.idempotence" => self.enable_idempotence = parse_bool(key, v)?,
            "max.request.size" => self.max_request_size = parse_usize(key, v, 1)?,
            "metadata.max.age.ms" => self.metadata_max_age = parse_ms(key, v)?,
            "statistics.interval.ms" => self.statistics_interval = parse_ms(key, v)?,
            "metrics.sample.window.ms" => {
                let w = parse_ms(key, v)?;
                if w.is_zero() {
                    return Err(bad("a positive integer (milliseconds)"));
                }
                self.metrics.sample_window = w;
            }
            "metrics.num.samples" => self.metrics.num_samples = parse_usize(key, v, 1)?,
            "compression.type" => {
                self.compression =
                    Compression::from_name(v).ok_or(bad("none, gzip, snappy, lz4 or zstd"))?
            }
            "compression.level"
            | "compression.gzip.level"
            | "compression.lz4.level"
            | "compression.zstd.level" => {
                self.compression_level =
                    Some(v.parse::<i32>().map_err(|_| bad("an integer level"))?)
            }
            _ => self.client.set(key, value)?,
        }
        Ok(())
    }

    /// Defaults overridden by `pairs`.
    ///
    /// # Errors
    /// As [`ProducerConfig::set`], and [`ConfigError::InvalidValue`] for an inconsistent whole
    /// (see [`ProducerConfig::validate`]).
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut cfg = ProducerConfig::default();
        for (k, v) in pairs {
            cfg.set(k.as_ref(), v.as_ref())?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// From a `key=value` properties text (`#` comments), with Kafka's key names; keys not given
    /// keep Kafka's defaults.
    ///
    /// # Errors
    /// As [`ProducerConfig::from_pairs`]: an unknown key or a bad value names the key.
    ///
    /// # Example
    ///
    /// ```
    /// use mqnet::producer::{Acks, ProducerConfig};
    ///
    /// let cfg = ProducerConfig::from_properties(
    ///     "bootstrap.servers=10.0.0.1:9092,10.0.0.2:9092\n\
    ///      ## throughput over latency\n\
    ///      acks=1\n\
    ///      enable.idempotence=false\n\
    ///      linger.ms=20\n",
    /// )
    /// .unwrap();
    /// assert_eq!(cfg.acks, Acks::Leader);
    /// assert_eq!(cfg.bootstrap_servers.len(), 2);
    /// let err = ProducerConfig::from_properties("bootstrap.servers=h:1\nlinger=5\n").unwrap_err();
    /// assert!(err.to_string().contains("linger"));
    /// ```
    pub fn from_properties(text: &str) -> Result<Self, ConfigError> {
        ProducerConfig::from_pairs(parse_properties(text)?)
    }

    /// From a `key=value` properties file.
    ///
    /// # Errors
    /// As [`ProducerConfig::from_properties`]; an unreadable file is reported as
    /// [`ConfigError::Malformed`] at line 0.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Malformed {
            line: 0,
            text: format!("{}: {e}", path.display()),
        })?;
        ProducerConfig::from_properties(&text)
    }

    /// Checks the cross-key rules Kafka enforces.
    ///
    /// # Errors
    /// [`ConfigError::InvalidValue`] naming the offending key: idempotence needs `acks=all` and
    /// `max.in.flight.requests.per.connection <= 5`; `delivery.timeout.ms` must be at least
    /// `linger.ms + request.timeout.ms`; `bootstrap.servers` must not be empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "bootstrap.servers".into(),
                value: String::new(),
                expected: "at least one host:port",
            });
        }
        let durations = [
            ("linger.ms", Some(self.linger)),
            ("max.block.ms", Some(self.max_block)),
            ("retry.backoff.ms", Some(self.retry_backoff)),
            ("retry.backoff.max.ms", Some(self.retry_backoff_max)),
            ("delivery.timeout.ms", Some(self.delivery_timeout)),
            ("metadata.max.age.ms", Some(self.metadata_max_age)),
            ("statistics.interval.ms", Some(self.statistics_interval)),
            ("metrics.sample.window.ms", Some(self.metrics.sample_window)),
            ("reconnect.backoff.ms", Some(self.client.reconnect_backoff)),
            (
                "reconnect.backoff.max.ms",
                Some(self.client.reconnect_backoff_max),
            ),
            (
                "socket.connection.setup.timeout.ms",
                Some(self.client.connection_setup_timeout),
            ),
            (
                "socket.connection.setup.timeout.max.ms",
                Some(self.client.connection_setup_timeout_max),
            ),
            ("request.timeout.ms", Some(self.client.request_timeout)),
            ("connections.max.idle.ms", self.client.connections_max_idle),
        ];
        for (key, d) in durations {
            if d.is_some_and(|d| d > MAX_DURATION) {
                return Err(ConfigError::InvalidValue {
                    key: key.into(),
                    value: d.map_or(0, |d| d.as_millis()).to_string(),
                    expected: "at most 2147483647 ms (Kafka's int range)",
                });
            }
        }
        if self.delivery_timeout < self.linger + self.client.request_timeout {
            return Err(ConfigError::InvalidValue {
                key: "delivery.timeout.ms".into(),
                value: self.delivery_timeout.as_millis().to_string(),
                expected: "at least linger.ms + request.timeout.ms (Kafka's rule)",
            });
        }
        if self.client.security.protocol.uses_sasl() && self.client.sasl.mechanism.is_none() {
            return Err(ConfigError::InvalidValue {
                key: "sasl.mechanism".into(),
                value: String::new(),
                expected: "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with a SASL_* security.protocol",
            });
        }
        if !self.compression.available() {
            return Err(ConfigError::InvalidValue {
                key: "compression.type".into(),
                value: self.compression.name().into(),
                expected:
                    "a codec compiled into this build (cargo features gzip, snappy, lz4, zstd)",
            });
        }
        if let (Some(level), Some((lo, hi))) =
            (self.compression_level, self.compression.level_range())
        {
            if !(lo..=hi).contains(&level) {
                return Err(ConfigError::InvalidValue {
                    key: "compression.level".into(),
                    value: level.to_string(),
                    expected: "within the codec's range (gzip 1-9, lz4 1-17, zstd -131072-22)",
                });
            }
        }
        if self.enable_idempotence && self.acks != Acks::All {
            return Err(ConfigError::InvalidValue {
                key: "acks".into(),
                value: format!("{:?}", self.acks),
                expected: "all when enable.idempotence=true",
            });
        }
        if self.enable_idempotence && self.client.max_in_flight_requests_per_connection > 5 {
            return Err(ConfigError::InvalidValue {
                key: "max.in.flight.requests.per.connection".into(),
                value: self
                    .client
                    .max_in_flight_requests_per_connection
                    .to_string(),
                expected: "at most 5 when enable.idempotence=true",
            });
        }
        Ok(())
    }

    /// Sets `acks` (and turns idempotence off unless `acks` is `All`, as Kafka requires).
    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        if acks != Acks::All {
            self.enable_idempotence = false;
        }
        self
    }

    /// Sets `compression.type` (and `compression.level`, `None` for the codec's default).
    pub fn compression(mut self, codec: Compression, level: Option<i32>) -> Self {
        self.compression = codec;
        self.compression_level = level;
        self
    }

    /// Sets `linger.ms`.
    pub fn linger_ms(mut self, ms: u64) -> Self {
        self.linger = Duration::from_millis(ms);
        self
    }

    /// Sets `batch.size`.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets `buffer.memory`.
    pub fn buffer_memory(mut self, n: usize) -> Self {
        self.buffer_memory = n.max(1);
        self
    }

    /// Sets `max.block.ms`.
    pub fn max_block(mut self, d: Duration) -> Self {
        self.max_block = d;
        self
    }

    /// Sets `delivery.timeout.ms`.
    pub fn delivery_timeout(mut self, d: Duration) -> Self {
        self.delivery_timeout = d;
        self
    }

    /// Sets `retry.backoff.ms` and `retry.backoff.max.ms`.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_backoff = initial;
        self.retry_backoff_max = max;
        self
    }

    /// Sets `enable.idempotence`.
    pub fn idempotence(mut self, on: bool) -> Self {
        self.enable_idempotence = on;
        self
    }

    /// Sets `client.id`.
    pub fn client_id(mut self, id: &str) -> Self {
        self.client_id = id.to_string();
        self
    }

    /// `statistics.interval.ms` and the callback that receives the statistics JSON (librdkafka's
    /// `stats_cb`), on the network thread. See `docs/METRICS.md` for the fields.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mqnet::producer::ProducerConfig;
    ///
    /// let cfg = ProducerConfig::new("127.0.0.1:9092")
    ///     .statistics(Duration::from_secs(5), |json| println!("{json}"));
    /// assert_eq!(cfg.statistics_interval, Duration::from_secs(5));
    /// ```
    pub fn statistics(
        mut self,
        interval: Duration,
        callback: impl Fn(&str) + Send + Sync + 'static,
    ) -> Self {
        self.statistics_interval = interval;
        self.stats_callback = Some(crate::metrics::StatsCallback::new(callback));
        self
    }

    /// `metrics.sample.window.ms` and `metrics.num.samples`.
    pub fn metrics_window(mut self, sample_window: Duration, num_samples: usize) -> Self {
        self.metrics = crate::metrics::MetricConfig::new(sample_window, num_samples);
        self
    }

    /// The transport configuration.
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kafkas() {
        let c = ProducerConfig::default();
        assert_eq!(c.acks, Acks::All);
        assert_eq!(c.linger, Duration::from_millis(5));
        assert_eq!(c.batch_size, 16_384);
        assert_eq!(c.buffer_memory, 33_554_432);
        assert_eq!(c.max_block, Duration::from_secs(60));
        assert_eq!(c.retry_backoff, Duration::from_millis(100));
        assert_eq!(c.retry_backoff_max, Duration::from_millis(1000));
        assert_eq!(c.delivery_timeout, Duration::from_secs(120));
        assert!(c.enable_idempotence);
        assert_eq!(c.max_request_size, 1_048_576);
        assert_eq!(c.client.max_in_flight_requests_per_connection, 5);
    }

    #[test]
    fn every_key_parses_and_unknown_keys_fail() {
        let c = ProducerConfig::from_properties(
            "bootstrap.servers=a:1, b:2\nclient.id=x\nacks=1\nlinger.ms=7\nbatch.size=100\n\
             buffer.memory=1000\nmax.block.ms=9\nretries=3\nretry.backoff.ms=11\n\
             retry.backoff.max.ms=12\ndelivery.timeout.ms=30\nenable.idempotence=false\n\
             max.request.size=14\nmetadata.max.age.ms=15\nrequest.timeout.ms=16\n",
        )
        .unwrap();
        assert_eq!(c.bootstrap_servers, vec!["a:1", "b:2"]);
        assert_eq!(c.client_id, "x");
        assert_eq!(c.acks, Acks::Leader);
        assert_eq!(c.linger, Duration::from_millis(7));
        assert_eq!(c.batch_size, 100);
        assert_eq!(c.buffer_memory, 1000);
        assert_eq!(c.max_block, Duration::from_millis(9));
        assert_eq!(c.retries, 3);
        assert_eq!(c.retry_backoff, Duration::from_millis(11));
        assert_eq!(c.retry_backoff_max, Duration::from_millis(12));
        assert_eq!(c.delivery_timeout, Duration::from_millis(30));
        assert!(!c.enable_idempotence);
        assert_eq!(c.max_request_size, 14);
        assert_eq!(c.metadata_max_age, Duration::from_millis(15));
        assert_eq!(c.client.request_timeout, Duration::from_millis(16));
        assert_eq!(
            ProducerConfig::from_pairs([("bootstrap.servers", "a:1"), ("lingr.ms", "1")]),
            Err(ConfigError::UnknownKey("lingr.ms".into()))
        );
        let e =
            ProducerConfig::from_pairs([("bootstrap.servers", "a:1"), ("acks", "2")]).unwrap_err();
        assert!(e.to_string().contains("acks"));
    }

    #[test]
    fn idempotence_requires_acks_all_and_at_most_five_in_flight() {
        let e =
            ProducerConfig::from_pairs([("bootstrap.servers", "a:1"), ("acks", "1")]).unwrap_err();
        assert!(e.to_string().contains("acks"));
        let e = ProducerConfig::from_pairs([
            ("bootstrap.servers", "a:1"),
            ("max.in.flight.requests.per.connection", "6"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("max.in.flight"));
        assert!(
            ProducerConfig::from_pairs([("acks", "all")]).is_err(),
            "bootstrap required"
        );
    }
}
