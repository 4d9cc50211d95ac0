//! `mqnet-bench`: the loopback benchmark harness of mqnet.
//!
//! It measures mqnet's transport side by side with the tokio peer on a Kafka-shaped echo workload,
//! and mqnet's Kafka producer side by side with librdkafka's (`produce`, see [`produce`]), in one
//! run, and reports ratios. `mqnet-bench` with no arguments runs the default matrix; see
//! `mqnet-bench --help`, `mqnet-bench echo --help` and `mqnet-bench produce --help`.
//!
//! Server and client of each implementation run as separate processes: the harness spawns itself
//! (`current_exe()`) with a hidden `--role`, server first (it prints its port), then the client (it
//! prints its result as one JSON line), and kills and reaps both by PID.
//!
//! librdkafka (the producer peer and its mock cluster) is not linked into this binary: the
//! produce rows that need it run in `mqnet-bench-rdkafka` (`rdkafka_main.rs`, the same modules with
//! the real `rd_peer`), built beside it with the default features.
//!
//! | module | what it holds |
//! |---|---|
//! | `app` | the command line and its dispatch (shared by both binaries) |
//! | `echo` | the echo workload: its flags, the server and client roles, child processes, the matrix runner |
//! | `matrix` | the default matrix (`mqnet-bench` with no arguments): echo rows, then produce rows |
//! | `produce`, `produce_broker` | the producer workload against librdkafka's mock or the embedded broker |
//! | `rd_peer` | librdkafka's peer: a stand-in here (`produce/no_rdkafka.rs`), the real one in `mqnet-bench-rdkafka` |
//! | `failover`, `group`, `chaos` | the failover drill, connection groups, the fault-injection run |
//! | `mqnet_impl`, `tokio_impl` | the echo peers: mqnet's server and clients, tokio's |
//! | `proto`, `stats`, `report`, `child`, `sys` | the echo wire format, results, tables and plots, child processes, OS calls |
//! | `error` | `BenchError`, the harness's error type, and `Context` to wrap an OS or library error |

mod app;
mod chaos;
mod child;
mod echo;
mod error;
mod failover;
mod group;
mod ha;
mod matrix;
mod metrics_report;
mod mqnet_impl;
mod produce;
mod produce_broker;
mod proto;
mod raw_impl;
mod report;
mod stats;
mod sys;
mod tls;
mod tokio_impl;

// The librdkafka peer and its mock cluster live only in `mqnet-bench-rdkafka`, so that this
// binary does not load librdkafka and its libraries; here they are a stand-in that says so, and
// the produce rows that need them run in that binary (`produce::companion`).
#[path = "produce/no_rdkafka.rs"]
mod rd_peer;

use std::process::ExitCode;

pub(crate) use app::{progress, secs};

fn main() -> ExitCode {
    app::main()
}
