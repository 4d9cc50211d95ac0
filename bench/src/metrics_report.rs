//! `--stats`: the metrics of mqnet's producer (`produce --stats`) and NetworkClient
//! (`echo --stats`), printed at the end of a run with Kafka's names.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use mqnet::client::NetworkClient;
use mqnet::metrics::Metric;

/// Set by `echo --stats` (the client runs in a child process: passed on as the environment
/// variable [`ENV`]).
static ECHO_STATS: AtomicBool = AtomicBool::new(false);

/// The environment variable that turns on `--stats` in the echo client's child processes.
pub const ENV: &str = "MQNET_BENCH_STATS";

/// Turns the echo client's node metrics on for this process and its children.
pub fn enable_echo_stats() {
    ECHO_STATS.store(true, Ordering::SeqCst);
    std::env::set_var(ENV, "1");
}

fn echo_stats() -> bool {
    ECHO_STATS.load(Ordering::SeqCst) || std::env::var_os(ENV).is_some()
}

/// The rows as a map `group:name{tags}` → value (for `--json`).
pub fn to_map(rows: &[Metric]) -> BTreeMap<String, f64> {
    rows.iter()
        .map(|m| {
            let text = m.to_string();
            let key = text
                .rsplit_once(' ')
                .map_or(text.clone(), |(k, _)| k.to_string());
            (key, m.value)
        })
        .collect()
}

/// Prints a map made by [`to_map`], one `name value` line each, under a title.
pub fn print_map(title: &str, map: &BTreeMap<String, f64>) {
    println!("{title}:");
    for (k, v) in map {
        println!("  {k} {v}");
    }
}

/// Prints the echo client's metrics to stderr when `--stats` is on.
pub fn echo_client_done(client: &NetworkClient) {
    if echo_stats() {
        let rows = client
            .metrics()
            .to_metrics("selector-metrics", "node-metrics");
        eprintln!("mqnet NetworkClient metrics:");
        for r in rows {
            eprintln!("  {r}");
        }
    }
}
