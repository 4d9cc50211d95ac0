//! `mqnet-bench produce`: the Kafka producer workload.
//!
//! N records (key = the record's index in decimal, so a consumer can check completeness; value =
//! S bytes) to one topic, through mqnet's [`Producer`] and through librdkafka's `BaseProducer`
//! (the `rdkafka` crate, cargo feature `rdkafka-peer`), one after another, against the same
//! cluster in the same run: the one at `--bootstrap-servers`, or an in-process librdkafka mock
//! cluster with 3 brokers, where each implementation gets a fresh topic of its own.
//!
//! Both peers get the same settings: `acks`, `linger.ms`, `batch.size`, `enable.idempotence`
//! (true only with `acks=all`, Kafka's rule), the same bound on the bytes of records a producer
//! holds (`--buffer-memory`, default Kafka's 32 MiB: mqnet's `buffer.memory`, librdkafka's
//! `queue.buffering.max.kbytes`; librdkafka's `queue.buffering.max.messages` is set large enough
//! for the run so that only the byte bound applies), and the Java-compatible murmur2 partitioner
//! (librdkafka: `partitioner=murmur2_random`), so every key lands on the same partition with
//! both. Everything else is each library's default.
//!
//! Measurement, the same for both:
//! - record 0 is sent alone and awaited first: it makes the connection and fetches metadata;
//! - the clock runs from the send of record 1 to the delivery of the last record, and records/s
//!   counts the records delivered without error in that time;
//! - delivery latency is send → delivery callback, per record, in an HDR histogram.
//!

mod cluster;
mod mqnet_run;
pub(crate) mod pace;
pub(crate) mod settings;
pub(crate) mod tally;

use clap::{Args, ValueEnum};
use indicatif::ProgressBar;

use mqnet::producer::Acks;

use std::time::Duration;

#[cfg(test)]
use tally::decimal;

pub use settings::{ProduceResult, Settings};

use crate::error::{BenchError, Context};
use crate::report;
use crate::sys;
use cluster::{run_impl, Cluster};

/// Brokers of the in-process mock cluster.
pub const MOCK_BROKERS: i32 = 3;
/// Replication factor of the mock's topics: the mock does not replicate data, so 1 costs least
/// and changes nothing for `acks=1`.
pub const MOCK_REPLICATION: i32 = 1;
/// How long record 0 (connection, metadata) may take.
pub(crate) const WARMUP_LIMIT: Duration = Duration::from_secs(30);

/// `--acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcksArg {
    /// `acks=0`.
    Zero,
    /// `acks=1`.
    One,
    /// `acks=all`.
    All,
}

impl AcksArg {
    /// The value as Kafka's configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            AcksArg::Zero => "0",
            AcksArg::One => "1",
            AcksArg::All => "all",
        }
    }

    pub(super) fn mqnet(self) -> Acks {
        match self {
            AcksArg::Zero => Acks::None,
            AcksArg::One => Acks::Leader,
            AcksArg::All => Acks::All,
        }
    }

    /// `enable.idempotence` for both peers: Kafka allows it only with `acks=all`, and it is the
    /// default there.
    pub(super) fn idempotence(self) -> bool {
        self == AcksArg::All
    }
}

fn parse_acks(s: &str) -> Result<AcksArg, BenchError> {
    match s.trim() {
        "0" => Ok(AcksArg::Zero),
        "1" => Ok(AcksArg::One),
        "all" | "-1" => Ok(AcksArg::All),
        other => Err(BenchError::Usage(format!(
            "{other:?}: expected 0, 1 or all"
        ))),
    }
}

/// An implementation of the producer workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceImpl {
    /// `mqnet::producer::Producer`.
    Mqnet,
    /// librdkafka's `BaseProducer` through the `rdkafka` crate.
    Rdkafka,
}

impl ProduceImpl {
    /// Its name in the table and the JSON lines.
    pub fn name(self) -> &'static str {
        match self {
            ProduceImpl::Mqnet => "mqnet",
            ProduceImpl::Rdkafka => "rdkafka",
        }
    }
}

/// `--peer` of `produce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProducePeer {
    /// mqnet's producer only.
    Mqnet,
    /// librdkafka's BaseProducer only (needs the `rdkafka-peer` feature).
    Rdkafka,
    /// Both, librdkafka first.
    All,
}

impl ProducePeer {
    /// The implementations to run, in run order.
    pub fn impls(self) -> Vec<ProduceImpl> {
        match self {
            ProducePeer::Mqnet => vec![ProduceImpl::Mqnet],
            ProducePeer::Rdkafka => vec![ProduceImpl::Rdkafka],
            ProducePeer::All => vec![ProduceImpl::Rdkafka, ProduceImpl::Mqnet],
        }
    }
}

/// Why a run that needs librdkafka cannot have it.
pub(crate) const NO_PEER: &str = "the librdkafka peer and its mock cluster are in \
    `mqnet-bench-rdkafka` (cargo feature `rdkafka-peer`, on by default), which is not built beside \
    this mqnet-bench; build it (`cargo build --release -p mqnet-bench --bins`), or pass \
    --bootstrap-servers and --peer mqnet";

/// `mqnet-bench-rdkafka`, the binary with the librdkafka peer, when it was built beside this one.
pub(crate) fn companion() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.with_file_name("mqnet-bench-rdkafka");
    path.is_file().then_some(path)
}

/// Runs this command line (the same arguments) in `mqnet-bench-rdkafka` instead: on Unix it
/// replaces this process, so its PID, output and exit code are this command's.
///
/// # Errors
/// The companion is not built, or it cannot be started.
fn run_in_companion() -> Result<bool, BenchError> {
    let exe = companion().ok_or_else(|| BenchError::usage(NO_PEER))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1));
    #[cfg(unix)]
    {
        let e = std::os::unix::process::CommandExt::exec(&mut cmd);
        Err(e).with_context(|| format!("starting {}", exe.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .with_context(|| format!("running {}", exe.display()))?;
        Ok(status.success())
    }
}

/// Whether this command needs librdkafka: its producer, or its mock cluster.
fn needs_rdkafka(a: &ProduceArgs, impls: &[ProduceImpl]) -> bool {
    impls.contains(&ProduceImpl::Rdkafka)
        || (a.bootstrap_servers.is_none()
            && a.broker != crate::produce_broker::BrokerKind::Embedded)
}

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Records to produce (per implementation); record i has key "i" (decimal).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// acks: 0, 1 or all (enable.idempotence is on only with all, for both peers).
    #[arg(long, value_parser = parse_acks, default_value = "1")]
    pub acks: AcksArg,
    /// linger.ms.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// batch.size in bytes.
    #[arg(long, default_value_t = 16_384)]
    pub batch_size: usize,
    /// Topic. With the mock cluster each implementation gets a fresh topic TOPIC-IMPL.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the mock cluster's topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Bytes of records a producer may hold, for both peers: mqnet's buffer.memory and
    /// librdkafka's queue.buffering.max.kbytes (÷ 1024; its queue.buffering.max.messages is set
    /// large enough for the run, so only this bound applies). Default: Kafka's buffer.memory.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER_MEMORY)]
    pub buffer_memory: usize,
    /// A Kafka cluster to produce to (the topic must exist or be auto-created); without it, an
    /// in-process librdkafka mock cluster with 3 brokers.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub bootstrap_servers: Option<String>,
    /// Print one JSON line per run (impl, records, size, acks, linger_ms, batch_size,
    /// records_per_s, mbps, p50_us, p99_us, errors, ...) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Implementations to run.
    #[arg(long, value_enum, default_value_t = ProducePeer::All)]
    pub peer: ProducePeer,
    /// The cluster when --bootstrap-servers is not given: librdkafka's mock, or mqnet's strict
    /// broker in-process (see produce_broker.rs).
    #[arg(long, value_enum, default_value_t = crate::produce_broker::BrokerKind::Mock)]
    pub broker: crate::produce_broker::BrokerKind,
    /// Response delay of every broker of the in-process mock cluster, in milliseconds
    /// (`rd_kafka_mock_broker_set_rtt`): a real cluster's round trip. Both peers produce to the
    /// same cluster. Only with the mock.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub broker_rtt_ms: u64,
    /// `max.in.flight.requests.per.connection` for mqnet and `max.in.flight` for librdkafka (the
    /// same value for both); default: each one's own default (5, and librdkafka's 1,000,000).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Offered load in records/s, the same for both peers (sends paced to it); default: as fast
    /// as `send` returns. Latency compared at a load both can drain measures linger + round trip
    /// + the sender's own time; at saturation it measures how long the buffer is.
    #[arg(long, value_name = "RECORDS_PER_S")]
    pub rate: Option<u64>,
    /// Print mqnet's producer metrics (Kafka's names) after its run; with --json they are the
    /// result's `metrics` field.
    #[arg(long)]
    pub stats: bool,
    /// compression.type for both producers: none, gzip, snappy, lz4 or zstd.
    #[arg(long, value_name = "TYPE", value_parser = parse_compression, default_value = "none")]
    pub compression_type: mqnet::protocol::Compression,
    /// A producer setting by its Kafka name, passed to both producers (repeatable), e.g.
    /// `-X security.protocol=SASL_SSL -X sasl.mechanism=SCRAM-SHA-512 -X ssl.ca.location=ca.pem`
    /// (use librdkafka's spelling where the two differ, e.g. `sasl.mechanisms`; mqnet reads both).
    #[arg(short = 'X', long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub set: Vec<(String, String)>,
}

fn parse_setting(s: &str) -> Result<(String, String), BenchError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(BenchError::usage(format!("{s:?}: expected KEY=VALUE"))),
    }
}

fn parse_compression(s: &str) -> Result<mqnet::protocol::Compression, BenchError> {
    mqnet::protocol::Compression::from_name(s).ok_or_else(|| {
        BenchError::usage(format!("{s:?}: expected none, gzip, snappy, lz4 or zstd"))
    })
}

/// Kafka's default `buffer.memory` (32 MiB).
pub const DEFAULT_BUFFER_MEMORY: usize = 32 * 1024 * 1024;

/// Runs `impls` on `s` one after another against one cluster (`bootstrap`, or a fresh mock), then
/// prints the table (or JSON lines). Returns whether every run succeeded without errors.
///
/// # Errors
/// When the cluster cannot be had.
pub fn run_row(
    s: &Settings,
    impls: &[ProduceImpl],
    topic: &str,
    bootstrap: Option<&str>,
    json: bool,
    pb: &ProgressBar,
) -> Result<bool, BenchError> {
    let cluster = Cluster::open(bootstrap, s.broker_rtt_ms)?;
    let header = format!(
        "mqnet-bench produce: {} cores; {}; producers one after another in this process; \
         key = record index, value {} B; record 0 warms up, the clock runs from record 1 to the \
         last delivery",
        sys::cores(),
        cluster.describe(s),
        s.size
    );
    if json {
        pb.suspend(|| eprintln!("{header}"));
    } else {
        pb.suspend(|| println!("{header}"));
    }
    if s.acks == AcksArg::Zero && cluster.is_mock() {
        pb.suspend(|| {
            eprintln!(
                "note: librdkafka's mock answers acks=0 Produce requests (a real broker does not); \
                 mqnet's NetworkClient closes a connection on a response it did not ask for, so \
                 against the mock acks=0 measures reconnects, not mqnet's acks=0 path"
            )
        });
    }
    let label = s.label();
    let mut row = report::ProduceRow {
        label: label.clone(),
        results: Vec::new(),
    };
    let mut ok = true;
    for &imp in impls {
        pb.set_message(format!("produce {label} · {}", imp.name()));
        let r = run_impl(imp, s, &cluster, topic);
        match &r {
            Ok(res) => {
                if res.errors > 0 {
                    ok = false;
                    pb.suspend(|| {
                        eprintln!(
                            "produce {}: {} errors (first: {})",
                            imp.name(),
                            res.errors,
                            res.first_error.as_deref().unwrap_or("-")
                        )
                    });
                }
                if json {
                    let line = serde_json::to_string(res).context("serialising the result")?;
                    pb.suspend(|| println!("{line}"));
                }
            }
            Err(e) => {
                ok = false;
                pb.suspend(|| eprintln!("produce {}: FAILED: {e:#}", imp.name()));
            }
        }
        row.results.push((imp.name().to_string(), r));
        pb.inc(1);
    }
    if !json {
        pb.suspend(|| print!("{}", report::produce_table(std::slice::from_ref(&row))));
        for (name, r) in &row.results {
            if let Ok(ProduceResult {
                metrics: Some(m), ..
            }) = r
            {
                pb.suspend(|| crate::metrics_report::print_map(&format!("{name} metrics"), m));
            }
        }
    }
    Ok(ok)
}

/// `mqnet-bench produce`.
///
/// # Errors
/// Invalid arguments, or no cluster.
pub fn produce(a: &ProduceArgs) -> Result<bool, BenchError> {
    let s = Settings::from_args(a)?;
    let mut impls = a.peer.impls();
    if !crate::rd_peer::AVAILABLE && needs_rdkafka(a, &impls) {
        if companion().is_some() {
            return run_in_companion();
        }
        // Without the companion, `--peer all` is every peer there is.
        if a.peer == ProducePeer::All {
            impls.retain(|i| *i == ProduceImpl::Mqnet);
        }
        if needs_rdkafka(a, &impls) {
            return Err(BenchError::usage(NO_PEER));
        }
    }
    if a.bootstrap_servers.is_none() && a.broker == crate::produce_broker::BrokerKind::Embedded {
        let embedded = crate::produce_broker::Embedded::start(&a.topic, s.partitions)?;
        let pb = crate::progress(impls.len(), a.json);
        let r = run_row(
            &s,
            &impls,
            &a.topic,
            Some(&embedded.bootstrap()),
            a.json,
            &pb,
        );
        pb.finish_and_clear();
        embedded.finish(a.json);
        return r;
    }
    if a.topic.is_empty() || a.topic.len() > 200 {
        return Err(BenchError::usage("--topic must be 1 to 200 characters"));
    }
    let pb = crate::progress(impls.len(), a.json);
    let r = run_row(
        &s,
        &impls,
        &a.topic,
        a.bootstrap_servers.as_deref(),
        a.json,
        &pb,
    );
    pb.finish_and_clear();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_keys() {
        let mut b = [0u8; 20];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(1_000_000, &mut b), b"1000000");
        assert_eq!(decimal(u64::MAX, &mut b), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn acks_parse_and_idempotence_follows_kafkas_rule() {
        assert_eq!(parse_acks("0").ok(), Some(AcksArg::Zero));
        assert_eq!(parse_acks("1").ok(), Some(AcksArg::One));
        assert_eq!(parse_acks("all").ok(), Some(AcksArg::All));
        assert_eq!(parse_acks("-1").ok(), Some(AcksArg::All));
        assert!(parse_acks("2").is_err());
        assert!(!AcksArg::One.idempotence());
        assert!(AcksArg::All.idempotence());
    }

    #[test]
    fn settings_by_kafka_name_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_setting("sasl.password=a=b").ok(),
            Some(("sasl.password".to_string(), "a=b".to_string()))
        );
        assert!(parse_setting("no-equals-sign").is_err());
        assert!(parse_setting("=value").is_err());
    }

    #[test]
    fn target_settings() {
        let s = Settings::target();
        assert_eq!(s.buffer_memory, 33_554_432);
        assert!(s
            .label()
            .starts_with("1,000,000 × 100 B acks=1 linger.ms=5"));
    }
}
