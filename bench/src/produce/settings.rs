//! What one produce run does ([`Settings`], from the command line) and what it measured
//! ([`ProduceResult`], one row of the table or one JSON line).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AcksArg, ProduceArgs, DEFAULT_BUFFER_MEMORY};
use crate::error::BenchError;
use crate::report;

/// What one produce run does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Records, including the warm-up record 0.
    pub records: u64,
    /// Value size.
    pub size: usize,
    /// acks.
    pub acks: AcksArg,
    /// linger.ms.
    pub linger_ms: u64,
    /// batch.size.
    pub batch_size: usize,
    /// Partitions of the mock's topics.
    pub partitions: i32,
    /// buffer.memory / queue.buffering.max.kbytes × 1024.
    pub buffer_memory: usize,
    /// The mock brokers' response delay (ms).
    pub broker_rtt_ms: u64,
    /// Requests in flight per connection for both peers (`None`: each one's default).
    pub max_in_flight: Option<usize>,
    /// Offered load in records/s (`None`: unpaced).
    pub rate: Option<u64>,
    /// Collect mqnet's producer metrics (`--stats`).
    pub stats: bool,
    /// compression.type of both peers.
    pub compression: mqnet::protocol::Compression,
    /// Settings by Kafka name for both peers (`-X KEY=VALUE`), applied after the others.
    pub extra: Vec<(String, String)>,
}

impl Settings {
    /// The settings of `produce` with its defaults (the default matrix's produce row).
    pub fn target() -> Self {
        Settings {
            records: 1_000_000,
            size: 100,
            acks: AcksArg::One,
            linger_ms: 5,
            batch_size: 16_384,
            partitions: 4,
            buffer_memory: DEFAULT_BUFFER_MEMORY,
            broker_rtt_ms: 0,
            max_in_flight: None,
            rate: None,
            stats: false,
            compression: mqnet::protocol::Compression::None,
            extra: Vec::new(),
        }
    }

    pub(crate) fn from_args(a: &ProduceArgs) -> Result<Self, BenchError> {
        if a.records < 2 {
            return Err(BenchError::usage(
                "--records must be at least 2 (record 0 is the warm-up)",
            ));
        }
        if a.records > 1_000_000_000 {
            return Err(BenchError::usage("--records must be at most 1,000,000,000"));
        }
        if a.size > 16 * 1024 * 1024 {
            return Err(BenchError::usage("--size must be at most 16 MiB"));
        }
        if a.batch_size == 0 {
            return Err(BenchError::usage("--batch-size must be at least 1"));
        }
        if a.linger_ms > 900_000 {
            return Err(BenchError::usage("--linger-ms must be at most 900000"));
        }
        if !(1..=10_000).contains(&a.partitions) {
            return Err(BenchError::usage("--partitions must be in 1..=10000"));
        }
        if !(1024..=(1usize << 40)).contains(&a.buffer_memory) {
            return Err(BenchError::usage(
                "--buffer-memory must be between 1 KiB and 1 TiB",
            ));
        }
        if a.max_in_flight
            .is_some_and(|n| !(1..=1_000_000).contains(&n))
        {
            return Err(BenchError::usage("--max-in-flight must be in 1..=1000000"));
        }
        if a.rate.is_some_and(|r| !(1..=100_000_000).contains(&r)) {
            return Err(BenchError::usage(
                "--rate must be in 1..=100000000 records/s",
            ));
        }
        if a.broker_rtt_ms > 10_000 {
            return Err(BenchError::usage("--broker-rtt-ms must be at most 10000"));
        }
        if a.broker_rtt_ms > 0 && a.bootstrap_servers.is_some() {
            return Err(BenchError::usage(
                "--broker-rtt-ms applies to the mock cluster only",
            ));
        }
        Ok(Settings {
            records: a.records,
            size: a.size,
            acks: a.acks,
            linger_ms: a.linger_ms,
            batch_size: a.batch_size,
            partitions: a.partitions,
            buffer_memory: a.buffer_memory,
            broker_rtt_ms: a.broker_rtt_ms,
            max_in_flight: a.max_in_flight,
            rate: a.rate,
            stats: a.stats,
            compression: a.compression_type,
            extra: a.set.clone(),
        })
    }

    /// The workload label of the table.
    pub fn label(&self) -> String {
        let mut rtt = if self.broker_rtt_ms > 0 {
            format!(" broker RTT {} ms", self.broker_rtt_ms)
        } else {
            String::new()
        };
        if let Some(n) = self.max_in_flight {
            rtt.push_str(&format!(" max.in.flight {n}"));
        }
        if self.compression != mqnet::protocol::Compression::None {
            rtt.push_str(&format!(" compression.type={}", self.compression));
        }
        if let Some(r) = self.rate {
            rtt.push_str(&format!(" at {} rec/s", report::thousands(r as f64)));
        }
        format!(
            "{} × {} acks={} linger.ms={} batch.size={} buffer {}{rtt}",
            report::thousands(self.records as f64),
            report::size_label(self.size),
            self.acks.name(),
            self.linger_ms,
            self.batch_size,
            report::size_label(self.buffer_memory)
        )
    }

    /// The longest a run may take, all told.
    pub(crate) fn budget(&self) -> Duration {
        let per_record = 20_000 + self.size as u64 * 20;
        let paced = self.rate.map_or(Duration::ZERO, |r| {
            Duration::from_secs(self.records / r + 1)
        });
        Duration::from_secs(30)
            + paced
            + Duration::from_nanos(self.records.saturating_mul(per_record))
    }
}

/// The result of one produce run of one implementation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProduceResult {
    /// `mqnet` or `rdkafka`.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Records sent, the warm-up record 0 included.
    pub records: u64,
    /// Value size.
    pub size: usize,
    /// acks: "0", "1" or "all".
    pub acks: String,
    /// linger.ms.
    pub linger_ms: u64,
    /// batch.size.
    pub batch_size: usize,
    /// Records delivered without error per second (records 1.. over the timed window).
    pub records_per_s: f64,
    /// Value bytes delivered per second, in MB (10^6 bytes).
    pub mbps: f64,
    /// Delivery latency (send → callback) percentiles and maximum, in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Records not delivered: failed, rejected, or not completed in time.
    pub errors: u64,
    /// Records delivered without error, record 0 included.
    pub delivered: u64,
    /// The timed window in seconds.
    pub seconds: f64,
    /// Topic produced to.
    pub topic: String,
    /// Partitions of the topic (as created in the mock; as asked for otherwise).
    pub partitions: i32,
    /// The cluster: "mock" or the bootstrap servers.
    pub cluster: String,
    /// CPUs the harness could use.
    pub cores: usize,
    /// The mock brokers' response delay (ms).
    #[serde(default)]
    pub broker_rtt_ms: u64,
    /// The offered load in records/s, when paced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// The first error seen, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// mqnet's producer metrics at the end of its run (`--stats`): `group:name{tags}` → value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::collections::BTreeMap<String, f64>>,
    /// compression.type.
    #[serde(default)]
    pub compression: String,
    /// Bytes the producer sent to the brokers: mqnet's Produce requests (length prefixes
    /// included); librdkafka's `txbytes` over all brokers (its few Metadata and ApiVersions
    /// requests included).
    #[serde(default)]
    pub wire_bytes: u64,
}
