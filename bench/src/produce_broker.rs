//! `mqnet-bench produce --broker embedded`: the run's cluster is mqnet's strict broker
//! (`mqnet::broker`), in this process, instead of librdkafka's mock.
//!
//! The broker gets a fresh data directory under the system's temp dir (removed afterwards),
//! `--partitions` partitions for the topic, 3 nodes like the mock (partition leaders spread), and
//! Kafka's defaults otherwise (flushing left to the OS). Both producers write to the same topic,
//! one after the other.
//!
//! The broker's own cost is reported after the run: the CPU time of its node threads
//! (`/proc/self/task/*/stat`, utime + stime, for the threads named `mqnet-broker-*`) per MB of
//! record batches appended.

use clap::ValueEnum;

use mqnet::broker::{Broker, BrokerConfig};

use crate::error::{BenchError, Context};

/// `--broker` of `produce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum BrokerKind {
    /// librdkafka's in-process mock cluster (or --bootstrap-servers when given).
    #[default]
    Mock,
    /// mqnet's strict broker, in-process, on a fresh temp data dir.
    Embedded,
}

/// Nodes of the embedded broker (as many as the mock's brokers).
const NODES: usize = 3;

/// A running embedded broker and the CPU its threads had used when it started.
pub struct Embedded {
    broker: Broker,
}

/// CPU seconds (user + system) of this process's threads whose name starts with `prefix`.
fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    for t in tasks.flatten() {
        let path = t.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state is field 3; utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ut: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
        let st: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        total += ut + st;
    }
    total as f64 / ticks
}

impl Embedded {
    /// Starts the broker with `topic` of `partitions` partitions.
    ///
    /// # Errors
    /// When the broker cannot start or the topic cannot be created.
    pub fn start(topic: &str, partitions: i32) -> Result<Embedded, BenchError> {
        let broker = Broker::start(BrokerConfig {
            nodes: NODES,
            default_partitions: partitions,
            ..BrokerConfig::default()
        })
        .context("embedded broker")?;
        broker
            .create_topic(topic, partitions)
            .with_context(|| format!("embedded broker topic {topic}"))?;
        Ok(Embedded { broker })
    }

    /// `bootstrap.servers` of the broker.
    pub fn bootstrap(&self) -> String {
        self.broker.bootstrap_servers()
    }

    /// Prints the broker's CPU per MB appended (stderr with `json`, else stdout) and stops it.
    pub fn finish(self, json: bool) {
        let cpu = threads_cpu_seconds("mqnet-broker-");
        let mb = self.broker.stats().appended_bytes as f64 / 1e6;
        let line = format!(
            "embedded broker ({NODES} nodes): {cpu:.2} s CPU for {mb:.1} MB of batches appended = \
             {:.2} ms CPU per MB",
            if mb > 0.0 { cpu * 1e3 / mb } else { f64::NAN }
        );
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        if let Err(e) = self.broker.shutdown() {
            eprintln!("embedded broker: {e}");
        }
    }
}
