//! `mqnet-bench chaos` at CI size: requests over 50 NetworkClient connections through fault
//! proxies to two server processes, with kills, cuts, stalls, 1-byte segments and delays injected;
//! every request must be accounted for exactly once (0 lost, 0 duplicated, 0 unknown, 0 wrong, no
//! server crash). And a short soak: RSS and descriptors plateau, and the server's memory falls back
//! after a burst of large frames.
//!
//! The harness bounds its own run (`--max-secs`, drain bound) and kills its server children by
//! PID; this test also bounds the child's life and kills it by PID when the bound passes.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

fn run(args: &[&str], bound: Duration) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqnet-bench"))
        .arg("chaos")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mqnet-bench chaos");
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        let _ = tx.send(s);
    });
    let out = match rx.recv_timeout(bound) {
        Ok(s) => s,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mqnet-bench chaos (pid {pid}) did not finish within {bound:?}");
        }
    };
    let status = child.wait().expect("wait");
    let line = out.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    eprintln!("{report}");
    assert!(status.success(), "chaos run failed: {report}");
    report
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn every_request_is_accounted_for_through_faults() {
    let r = run(
        &[
            "--requests",
            "30000",
            "--conns",
            "50",
            "--servers",
            "2",
            "--seed",
            "12",
            "--fault-interval-ms",
            "100",
            "--request-timeout-ms",
            "800",
            "--max-secs",
            "120",
        ],
        Duration::from_secs(400),
    );
    for key in [
        "lost",
        "duplicates",
        "unknown",
        "wrong_answers",
        "server_crashes",
    ] {
        assert_eq!(count(&r, key), 0, "{key}: {r}");
    }
    let sent = count(&r, "sent");
    assert_eq!(sent, 30_000);
    let accounted = count(&r, "answered")
        + count(&r, "timed_out")
        + count(&r, "disconnected")
        + count(&r, "local_errors");
    assert_eq!(accounted, sent, "{r}");
    assert!(count(&r, "answered") > 0);
    // The faults fired: at least three kinds, and some requests failed because of them.
    let kinds = r["faults"].as_object().map_or(0, |o| o.len());
    assert!(kinds >= 3, "faults injected: {}", r["faults"]);
    assert!(
        count(&r, "timed_out") + count(&r, "disconnected") > 0,
        "{r}"
    );
}

#[test]
fn soak_plateaus_and_large_frames_are_released() {
    let r = run(
        &[
            "--soak-secs",
            "24",
            "--conns",
            "50",
            "--servers",
            "2",
            "--seed",
            "5",
            "--fault-interval-ms",
            "300",
            "--big-frame-mib",
            "32",
        ],
        Duration::from_secs(400),
    );
    for key in [
        "lost",
        "duplicates",
        "unknown",
        "wrong_answers",
        "server_crashes",
    ] {
        assert_eq!(count(&r, key), 0, "{key}: {r}");
    }
    let soak = &r["soak"];
    assert!(count(soak, "samples") >= 20, "{soak}");
    for series in [
        "harness_rss_mib",
        "harness_fds",
        "server_rss_mib",
        "server_fds",
    ] {
        assert_eq!(soak[series]["flat"], Value::Bool(true), "{series}: {soak}");
    }
    assert_eq!(soak["big_frame_released"], Value::Bool(true), "{soak}");
}
