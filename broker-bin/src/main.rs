//! `mqnet-broker`: mqnet's strict Kafka-subset broker as a process.
//!
//! ```text
//! mqnet-broker --listen 127.0.0.1:9092 --data-dir DIR [--nodes 3 --partitions 4]
//! ```
//!
//! Prints `bootstrap.servers=<host:port,...>` on stdout once every node listens, then reads admin
//! commands from stdin, one per line (fault injection for tests):
//!
//! - `create TOPIC PARTITIONS` — create a topic
//! - `down NODE` / `up NODE` — take a node down (its connections, open and new, are closed) or up
//! - `errors API_KEY CODE COUNT` — answer the next COUNT requests of an API with an error code
//! - `delay MS` — hold every response back MS milliseconds (0: none)
//! - `leader TOPIC PARTITION NODE` — move a partition's leadership
//! - `stats` — print the counters
//! - `ha` — print the replication state (`ha role=... log_end=... lag_bytes=...`)
//! - `quit` — stop (end of stdin does not stop the broker)
//!
//! Each command answers `ok` or `error: ...` on stdout.
//!
//! Master/slave replication (RocketMQ's HA roles; see `mqnet::broker::ha`):
//!
//! ```text
//! mqnet-broker --listen 127.0.0.1:9092 --data-dir M --role SYNC_MASTER --ha-listen 127.0.0.1:10912
//! mqnet-broker --listen 127.0.0.1:9093 --data-dir S --role SLAVE --ha-master 127.0.0.1:10912
//! ```
//!
//! A master prints `ha.listen=<addr>` as its second line.

use mqnet::broker::sasl::SaslServerConfig;
use mqnet::protocol::sasl::Mechanism;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mqnet::broker::ha::{HaConfig, Role};
use mqnet::broker::{Broker, BrokerConfig, LogConfig};

/// mqnet's strict Kafka-subset broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The first node's listen address; node i listens on its port + i.
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// The data directory (default: mqnet-broker-data-<port> under the system's temp dir, kept
    /// across restarts).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Broker nodes (ids 1..=N) served by this process, on consecutive ports.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Partitions of auto-created and --topic topics.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Topics to create at start-up (repeatable).
    #[arg(long)]
    topic: Vec<String>,
    /// Create unknown topics asked for in Metadata (default: on for a fresh data dir).
    #[arg(long)]
    auto_create: Option<bool>,
    /// log.segment.bytes.
    #[arg(long, default_value_t = 1 << 30)]
    segment_bytes: u64,
    /// retention.bytes per partition (default: unlimited).
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// retention.ms (default: 7 days).
    #[arg(long, default_value_t = 7 * 24 * 3600 * 1000)]
    retention_ms: u64,
    /// log.flush.interval.messages (0: leave it to the OS; 1: fsync every append before acking).
    #[arg(long, default_value_t = 0)]
    flush_interval_messages: u64,
    /// message.max.bytes.
    #[arg(long, default_value_t = mqnet::broker::DEFAULT_MESSAGE_MAX_BYTES)]
    message_max_bytes: usize,
    /// HA role: ASYNC_MASTER, SYNC_MASTER or SLAVE (default: no replication).
    #[arg(long)]
    role: Option<Role>,
    /// A master's HA listen address, where slaves connect (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:10912")]
    ha_listen: SocketAddr,
    /// A slave's master HA address.
    #[arg(long)]
    ha_master: Option<SocketAddr>,
    /// The cluster id presented and required in the HA handshake.
    #[arg(long, default_value = "mqnet")]
    cluster_id: String,
    /// A slave's broker id in the HA handshake (unique per master).
    #[arg(long, default_value_t = 2)]
    broker_id: i32,
    /// ha.sync.timeout.ms: how long a SYNC_MASTER waits for a slave's ack.
    #[arg(long, default_value_t = 3000)]
    ha_sync_timeout_ms: u64,
    /// TLS: the PEM certificate chain of every listener (with --ssl-key); clients then connect
    /// with security.protocol=SSL.
    #[arg(long, requires = "ssl_key")]
    ssl_cert: Option<PathBuf>,
    /// TLS: the PEM private key of --ssl-cert.
    #[arg(long, requires = "ssl_cert")]
    ssl_key: Option<PathBuf>,
    /// TLS: the PEM CA bundle that signs client certificates; clients must then present one
    /// (mutual TLS).
    #[arg(long, requires = "ssl_cert")]
    ssl_ca: Option<PathBuf>,
    /// SASL users, one `name:password` per line: every connection must authenticate
    /// (SASL_PLAINTEXT). Credentials are kept salted (PBKDF2, 4096 iterations), never in clear.
    #[arg(long, value_name = "FILE")]
    sasl_users: Option<PathBuf>,
    /// Enabled SASL mechanisms, comma-separated (default: PLAIN,SCRAM-SHA-256,SCRAM-SHA-512).
    #[arg(long, value_name = "LIST")]
    sasl_mechanisms: Option<String>,
    /// The SASL session lifetime announced to clients (KIP-368), ms (0: none).
    #[arg(long, default_value_t = 0)]
    sasl_session_lifetime_ms: i64,
}

/// The broker's SASL settings from the flags.
fn sasl_config(args: &Args) -> Result<Option<SaslServerConfig>, String> {
    let Some(users) = &args.sasl_users else {
        if args.sasl_mechanisms.is_some() {
            return Err("--sasl-mechanisms needs --sasl-users".into());
        }
        return Ok(None);
    };
    let mut mechanisms = Vec::new();
    for name in args.sasl_mechanisms.iter().flat_map(|l| l.split(',')) {
        let m = Mechanism::from_name(name.trim())
            .ok_or_else(|| format!("unknown SASL mechanism {name:?}"))?;
        mechanisms.push(m);
    }
    let cfg = SaslServerConfig::from_file(users, &mechanisms)?;
    Ok(Some(cfg.session_lifetime_ms(args.sasl_session_lifetime_ms)))
}

fn command(broker: &Broker, line: &str) -> Result<bool, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<i64, String> {
        words
            .get(i)
            .ok_or_else(|| format!("missing argument {i}"))?
            .parse::<i64>()
            .map_err(|e| format!("argument {i}: {e}"))
    };
    let small = |i: usize| -> Result<i32, String> {
        i32::try_from(num(i)?).map_err(|e| format!("argument {i}: {e}"))
    };
    match words.first().copied() {
        None => {}
        Some("create") => {
            let topic = words.get(1).ok_or("missing topic")?;
            broker
                .create_topic(topic, small(2)?)
                .map_err(|e| e.to_string())?;
        }
        Some("down") => broker.set_node_down(small(1)?, true),
        Some("up") => broker.set_node_down(small(1)?, false),
        Some("errors") => {
            let api = i16::try_from(num(1)?).map_err(|e| e.to_string())?;
            let code = i16::try_from(num(2)?).map_err(|e| e.to_string())?;
            let count = u32::try_from(num(3)?).map_err(|e| e.to_string())?;
            broker.inject_errors(api, code, count);
        }
        Some("delay") => {
            let ms = u64::try_from(num(1)?).map_err(|e| e.to_string())?;
            broker.set_response_delay(Duration::from_millis(ms));
        }
        Some("leader") => {
            let topic = words.get(1).ok_or("missing topic")?;
            broker
                .move_leader(topic, small(2)?, small(3)?)
                .map_err(|e| e.to_string())?;
        }
        Some("stats") => println!("{:?}", broker.stats()),
        Some("ha") => match broker.ha_stats() {
            Some(s) => println!("{s}"),
            None => return Err("no replication configured".into()),
        },
        Some("quit") => return Ok(true),
        Some(other) => return Err(format!("unknown command {other:?}")),
    }
    Ok(false)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mqnet-broker-data-{}", args.listen.port()))
    });
    let ha = match (args.role, args.ha_master) {
        (None, _) => None,
        (Some(Role::Slave), None) => {
            eprintln!("mqnet-broker: --role SLAVE needs --ha-master");
            return ExitCode::FAILURE;
        }
        (Some(Role::Slave), Some(m)) => Some(HaConfig::slave(m)),
        (Some(role), _) => Some(HaConfig::master(role, args.ha_listen)),
    };
    let ha = ha.map(|mut h| {
        h.master_config.cluster_id = args.cluster_id.clone();
        h.master_config.sync_timeout = Duration::from_millis(args.ha_sync_timeout_ms);
        h.slave_config.cluster_id = args.cluster_id.clone();
        h.slave_config.broker_id = args.broker_id;
        h
    });
    let slave = args.role == Some(Role::Slave);
    let sasl = match sasl_config(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mqnet-broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = BrokerConfig {
        ha,
        sasl,
        listen: args.listen,
        nodes: args.nodes.max(1),
        data_dir: Some(data_dir.clone()),
        default_partitions: args.partitions.max(1),
        auto_create_topics: args.auto_create,
        message_max_bytes: args.message_max_bytes,
        log: LogConfig {
            segment_bytes: args.segment_bytes,
            retention_bytes: args.retention_bytes,
            retention: Some(Duration::from_millis(args.retention_ms)),
            flush_interval_messages: args.flush_interval_messages,
            ..LogConfig::default()
        },
        ..BrokerConfig::default()
    };
    let mut config = config;
    if let (Some(cert), Some(key)) = (&args.ssl_cert, &args.ssl_key) {
        match mqnet::net::tls::server_config(cert, key, args.ssl_ca.as_deref()) {
            Ok(tls) => config.server.tls = Some(tls),
            Err(e) => {
                eprintln!("mqnet-broker: TLS: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let broker = match Broker::start(config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mqnet-broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A slave's topics come from its master.
    for t in args.topic.iter().filter(|_| !slave) {
        if let Err(e) = broker.create_topic(t, args.partitions.max(1)) {
            eprintln!("mqnet-broker: topic {t}: {e}");
            return ExitCode::FAILURE;
        }
    }
    log::info!("data dir {}", data_dir.display());
    println!("bootstrap.servers={}", broker.bootstrap_servers());
    if let Some(a) = broker.ha_listen_addr() {
        println!("ha.listen={a}");
    }
    let _ = std::io::stdout().flush();
    let stdin = std::io::stdin();
    let mut quit = false;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match command(&broker, &line) {
            Ok(true) => {
                quit = true;
                break;
            }
            Ok(false) => println!("ok"),
            Err(e) => println!("error: {e}"),
        }
        let _ = std::io::stdout().flush();
    }
    if !quit {
        // End of stdin: keep serving until killed (a broker started in the background).
        loop {
            std::thread::park();
        }
    }
    match broker.shutdown() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqnet-broker: {e}");
            ExitCode::FAILURE
        }
    }
}
