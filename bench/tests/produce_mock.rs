//! `mqnet-bench produce --records 2000 --json` against the in-process librdkafka mock cluster:
//! one JSON line per producer (rdkafka, mqnet), each with every record delivered.
//!
//! Bounded: the child is killed by PID and reaped if it has not finished within the deadline.
#![cfg(feature = "rdkafka-peer")]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);

/// The child; killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn produce_json_reports_both_peers_with_every_record_delivered() {
    let child = Command::new(env!("CARGO_BIN_EXE_mqnet-bench"))
        .args(["produce", "--records", "2000", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mqnet-bench");
    let mut guard = Guard(child);
    let mut stdout = guard.0.stdout.take().expect("stdout");
    let mut stderr = guard.0.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() >= DEADLINE {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    // On a timeout the guard kills the child, which closes its pipes and ends the readers.
    drop(guard);
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    let status = status.unwrap_or_else(|| panic!("no exit within {DEADLINE:?}; stderr:\n{err}"));
    assert!(
        status.success(),
        "exit {status}; stderr:\n{err}\nstdout:\n{out}"
    );

    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "one line per peer:\n{out}");
    let mut impls: Vec<&str> = lines.iter().filter_map(|v| v["impl"].as_str()).collect();
    impls.sort_unstable();
    assert_eq!(impls, ["mqnet", "rdkafka"], "{out}");
    for v in &lines {
        assert_eq!(v["records"], 2000, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert_eq!(v["delivered"], 2000, "{v}");
        assert_eq!(v["size"], 100, "{v}");
        assert_eq!(v["acks"], "1", "{v}");
        assert_eq!(v["linger_ms"], 5, "{v}");
        assert_eq!(v["batch_size"], 16384, "{v}");
        for key in ["records_per_s", "mbps", "p50_us", "p99_us"] {
            let x = v[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing: {v}"));
            assert!(x > 0.0 && x.is_finite(), "{key} = {x}: {v}");
        }
    }
}
