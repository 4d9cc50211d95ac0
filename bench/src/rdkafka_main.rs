//! `mqnet-bench-rdkafka`: the harness with librdkafka's producer and its in-process mock cluster
//! (cargo feature `rdkafka-peer`). It takes the same command line as `mqnet-bench`, which runs
//! it for the produce rows that need librdkafka, so that `mqnet-bench` itself never loads
//! librdkafka (relocating it and its libraries at start-up weighs on every echo process it starts;
//! figures in docs/BENCHMARKS.md).

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

#[path = "produce/rdkafka_run.rs"]
mod rd_peer;

use std::process::ExitCode;

pub(crate) use app::{progress, secs};

fn main() -> ExitCode {
    app::main()
}
