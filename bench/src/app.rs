//! The command line shared by both binaries of the harness: `mqnet-bench` and
//! `mqnet-bench-rdkafka` (see `main.rs` and `rdkafka_main.rs`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::echo::EchoArgs;
use crate::error::BenchError;
use crate::matrix::MatrixArgs;
use crate::{chaos, echo, failover, ha, matrix, produce};

#[derive(Debug, Parser)]
#[command(
    name = "mqnet-bench",
    version,
    about = "Loopback benchmark of mqnet against tokio (echo) and librdkafka (producer)",
    long_about = "Loopback benchmark of mqnet against tokio on a Kafka-shaped echo workload, and \
        of mqnet's Kafka producer against librdkafka's.\n\n\
        With no arguments it runs the default matrix (about a minute): 100 B C=10 W=64, \
        100 B C=10 W=5, 16 KiB C=10 W=5 and 100 B C=1 W=1 pinned to one CPU, for tokio-mt, \
        tokio-ct and mqnet, each with server and client in separate processes, and prints a \
        table with ratios against tokio-mt. When built with the librdkafka peer (feature \
        rdkafka-peer, on by default) it then runs a produce row: 1,000,000 × 100 B records, \
        acks=1, linger.ms=5, for librdkafka's BaseProducer and mqnet's producer against an \
        in-process librdkafka mock cluster, and prints its table with ratios against rdkafka."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the Kafka-shaped echo workload against one or more implementations.
    ///
    /// Request = u32 BE length S | i16 api_key 0 | i16 api_version 0 | i32 correlation_id |
    /// S-8 bytes of padding. Response = u32 BE length R | i32 correlation_id | R-4 bytes of
    /// padding. Closed loop: C connections, W requests in flight on each, every correlation id
    /// checked, send-to-response latency in an HDR histogram. With neither --listen nor --connect,
    /// server and client of each implementation run as separate processes started and stopped by
    /// the harness.
    Echo(EchoArgs),
    /// Runs the default matrix (what `mqnet-bench` with no arguments does).
    Matrix(MatrixArgs),
    /// Produces N records to a Kafka cluster with mqnet's producer and librdkafka's BaseProducer.
    ///
    /// Key = the record's index in decimal, value = S bytes. Both producers get the same acks,
    /// linger.ms, batch.size and enable.idempotence (on only with acks=all), the same bound on
    /// buffered bytes (--buffer-memory) and the murmur2 partitioner; they run one after another in
    /// this process, against the same cluster: --bootstrap-servers, or an in-process librdkafka
    /// mock cluster with 3 brokers (a fresh topic per implementation). Reports records/s, MB/s
    /// (values), p50 and p99 send-to-delivery latency, errors, and mqnet ÷ rdkafka.
    Produce(produce::ProduceArgs),
    /// Failover drill: 2-3 mqnet echo servers as child processes, the live one killed every N
    /// seconds, over one failover transport; reports sent / answered / lost / duplicated / failed
    /// and the Interrupted→Resumed time, with a standby and without.
    Failover(failover::FailoverArgs),
    /// Requests through injected faults, each accounted for exactly once.
    ///
    /// N NetworkClient connections, each through a fault proxy, to echo server processes; a
    /// seeded fault driver kills and restarts servers (kill -9), cuts connections mid-frame, stalls
    /// them, splits writes into 1-byte segments and delays responses past the request timeout.
    /// Reports the count of each outcome (answered, failed by reason, lost, duplicated, wrong) and
    /// the seed; fails unless none is lost, duplicated or wrong. --soak-secs runs a soak instead:
    /// fixed time, RSS and descriptors sampled every second and checked for a plateau.
    Chaos(chaos::ChaosArgs),
    /// Produce throughput, p99 latency and replication lag through the broker's master/slave
    /// replication: acks=1 without a slave, ASYNC_MASTER and SYNC_MASTER (acks=all) with one.
    Ha(ha::HaArgs),
}

pub(crate) fn secs(name: &str, v: f64) -> Result<Duration, BenchError> {
    if !(0.0..=86_400.0).contains(&v) {
        return Err(BenchError::Usage(format!(
            "--{name} must be between 0 and 86400 seconds, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A progress bar on stderr for `total` runs (steady ticks unless the output is JSON lines).
pub(crate) fn progress(total: usize, json: bool) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    if !json {
        pb.enable_steady_tick(Duration::from_millis(120));
    }
    pb
}

/// Parses the command line, runs the command, and maps its outcome to the exit code.
pub(crate) fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let res = match &cli.command {
        None => matrix::matrix(&MatrixArgs::default()),
        Some(Command::Matrix(a)) => matrix::matrix(a),
        Some(Command::Echo(a)) => echo::echo(a),
        Some(Command::Produce(a)) => produce::produce(a),
        Some(Command::Failover(a)) => failover::drill(a),
        Some(Command::Chaos(a)) => chaos::chaos(a),
        Some(Command::Ha(a)) => ha::ha(a),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("mqnet-bench: some runs failed or counted errors");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mqnet-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
