//! The default matrix: what `mqnet-bench` with no arguments runs.

use std::path::PathBuf;

use clap::Args;

use crate::echo::{run_matrix, MqnetClient, Peer, Spec};
use crate::error::BenchError;
use crate::mqnet_impl::ClientLayer;
use crate::stats::Workload;
use crate::{produce, progress, secs, sys};

#[derive(Debug, Clone, Args)]
pub(crate) struct MatrixArgs {
    /// Measured seconds per run.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 3.0)]
    duration: f64,
    /// Seconds of warm-up before measuring.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Print JSON lines instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the latency CDFs to FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Implementations to run.
    #[arg(long, value_enum, default_value_t = Peer::All)]
    peer: Peer,
    /// Do not pin the C=1 W=1 row to one CPU.
    #[arg(long)]
    no_pin: bool,
    /// The request layer of the mqnet client.
    #[arg(long, value_enum, default_value_t = MqnetClient::of(ClientLayer::default()))]
    mqnet_client: MqnetClient,
    /// Records of the produce row (run when the librdkafka peer is built in; 0 skips it).
    #[arg(long, value_name = "N", default_value_t = MATRIX_PRODUCE_RECORDS)]
    produce_records: u64,
    /// Only the produce rows (how `mqnet-bench` runs them in `mqnet-bench-rdkafka`).
    #[arg(long, hide = true)]
    produce_only: bool,
}

/// Records of the default matrix's produce row.
const MATRIX_PRODUCE_RECORDS: u64 = 1_000_000;

impl Default for MatrixArgs {
    fn default() -> Self {
        MatrixArgs {
            duration: 3.0,
            warmup: 1.0,
            json: false,
            plot: None,
            peer: Peer::All,
            no_pin: false,
            mqnet_client: MqnetClient::of(ClientLayer::default()),
            produce_records: MATRIX_PRODUCE_RECORDS,
            produce_only: false,
        }
    }
}

pub(crate) fn matrix(a: &MatrixArgs) -> Result<bool, BenchError> {
    let warmup = secs("warmup", a.warmup)?;
    let duration = secs("duration", a.duration)?;
    let pin = if a.no_pin {
        None
    } else {
        Some(sys::first_cpu())
    };
    let row = |size: usize, conns: usize, inflight: usize, pin: Option<usize>| Spec {
        w: Workload {
            conns,
            inflight,
            size,
            resp_size: 16,
            warmup,
            duration,
            count: None,
            idle: 0,
        },
        pin,
        same_process: false,
        layer: a.mqnet_client.layer(),
    };
    let specs = [
        row(100, 10, 64, None),
        row(100, 10, 5, None),
        row(16 * 1024, 10, 5, None),
        row(100, 1, 1, pin),
    ];
    if a.produce_only {
        // A child of `mqnet-bench`, which is waiting for it: it never outlives it.
        sys::die_with_parent();
    }
    let mut ok = a.produce_only || run_matrix(&specs, &a.peer.impls(), a.json, a.plot.as_ref());
    if a.produce_records < 2 {
        return Ok(ok);
    }
    // The produce rows need librdkafka's mock cluster: here, or in `mqnet-bench-rdkafka`.
    if !crate::rd_peer::AVAILABLE {
        return Ok(produce_in_companion() && ok);
    }
    let impls = match a.peer {
        Peer::Tokio => vec![produce::ProduceImpl::Rdkafka],
        Peer::Mqnet | Peer::Raw => vec![produce::ProduceImpl::Mqnet],
        Peer::All => vec![produce::ProduceImpl::Rdkafka, produce::ProduceImpl::Mqnet],
    };
    // At loopback speed, and at a 5 ms broker round trip (a real cluster's latency).
    for broker_rtt_ms in [0, 5] {
        let s = produce::Settings {
            records: a.produce_records,
            broker_rtt_ms,
            ..produce::Settings::target()
        };
        if !a.json {
            println!();
        }
        let pb = progress(impls.len(), a.json);
        let r = produce::run_row(&s, &impls, "bench", None, a.json, &pb);
        pb.finish_and_clear();
        match r {
            Ok(row_ok) => ok &= row_ok,
            Err(e) => {
                eprintln!("produce: FAILED: {e:#}");
                ok = false;
            }
        }
    }
    Ok(ok)
}

/// Runs the produce rows in `mqnet-bench-rdkafka` (this command line and `--produce-only`), its
/// output this process's; whether they ran without errors. Without that binary they are skipped,
/// with a note.
fn produce_in_companion() -> bool {
    let Some(exe) = produce::companion() else {
        eprintln!("produce rows skipped: {}", produce::NO_PEER);
        return true;
    };
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        args.push("matrix".into());
    }
    args.push("--produce-only".into());
    let status = std::process::Command::new(&exe)
        .args(&args)
        .env(sys::PARENT_ENV, std::process::id().to_string())
        .status();
    match status {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("produce: FAILED: starting {}: {e}", exe.display());
            false
        }
    }
}
