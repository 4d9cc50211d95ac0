//! Durability: `kill -9` the broker process mid-produce with `--flush-interval-messages 1`,
//! restart it on the same data dir: every acknowledged record is there exactly once, a torn tail
//! is cut off, and the idempotent producer continues with its sequence numbers.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    check_exactly_once_in_order, init_producer_id, kcat, numbered_batch, produce, Raw, WAIT,
};

const BATCH: usize = 10;

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    bootstrap: String,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

fn spawn(port: u16, dir: &Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqnet-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .args([
            "--flush-interval-messages",
            "1",
            "--topic",
            "d",
            "--partitions",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mqnet-broker");
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).expect("first line");
    let bootstrap = line
        .trim()
        .strip_prefix("bootstrap.servers=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Proc {
        child,
        stdin,
        stdout,
        bootstrap,
    }
}

/// A broker outlives a closed stdin: a test that fails half-way must not leave its brokers
/// serving (or stopped). Kills the child this test started, by its PID, and reaps it.
impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    /// Sends an admin command; returns its output up to its `ok` line.
    fn command(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut out = String::new();
        for _ in 0..100 {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).unwrap() == 0 || line.trim() == "ok" {
                break;
            }
            assert!(!line.starts_with("error"), "{cmd}: {line}");
            out.push_str(&line);
        }
        out
    }
}

fn last_segment(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("d-0"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .expect("a segment")
}

#[test]
fn kill_9_mid_produce_then_restart_keeps_every_acknowledged_record_once() {
    let dir = std::env::temp_dir().join(format!("mqnet-broker-durability-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let mut first = spawn(port, &dir);
    let mut raw = Raw::connect(&first.bootstrap);
    let (code, pid, epoch) = init_producer_id(&mut raw, (-1, -1));
    assert_eq!(code, 0);

    // A producer thread sends batch after batch; the test kills the broker once 100 are
    // acknowledged, while the thread is still sending.
    let acked = Arc::new(AtomicUsize::new(0));
    let acked2 = Arc::clone(&acked);
    let sender = std::thread::spawn(move || {
        let mut k = 0usize;
        loop {
            let b = numbered_batch(k * BATCH, BATCH, pid, epoch, (k * BATCH) as i32);
            raw.send(&common::produce_frame(1, "d", 0, &b));
            let Some(resp) = raw.recv() else {
                return k; // batch k's outcome is unknown
            };
            let r = mqnet::protocol::decode_produce_response(7, &resp).expect("decode");
            assert!(r.topics[0].1[0].error.is_none());
            k += 1;
            acked2.store(k, Ordering::Release);
        }
    });
    let deadline = Instant::now() + WAIT;
    while acked.load(Ordering::Acquire) < 100 {
        assert!(Instant::now() < deadline, "the producer made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    // kill -9 of the child this test started, by its pid.
    let killed = Command::new("kill")
        .args(["-9", &first.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = first.child.wait();
    let unknown = sender.join().expect("sender");
    assert!(unknown >= 100);

    // A kill cannot tear one write(2) in the page cache, so the torn tail a power cut leaves is
    // made by hand: half a batch appended to the last segment.
    let seg = last_segment(&dir);
    let good_len = std::fs::metadata(&seg).unwrap().len();
    let torn = numbered_batch(999_000, BATCH, pid, epoch, 0);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&torn[..torn.len() / 2]).unwrap();
    drop(f);

    let mut second = spawn(port, &dir);
    let stats = second.command("stats");
    assert!(
        stats.contains(&format!("recovered_truncated_bytes: {}", torn.len() / 2)),
        "{stats}"
    );
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        good_len,
        "torn tail cut off"
    );

    // The producer continues: batch `unknown` again (appended before the kill or not: either way
    // it is there once afterwards), then one more.
    let mut raw = Raw::connect(&second.bootstrap);
    for k in unknown..unknown + 2 {
        let b = numbered_batch(k * BATCH, BATCH, pid, epoch, (k * BATCH) as i32);
        let (code, base) = produce(&mut raw, "d", 0, &b);
        assert_eq!(code, 0, "batch {k} after the restart");
        assert_eq!(base, (k * BATCH) as i64);
    }
    let n = (unknown + 2) * BATCH;
    let got = kcat(&second.bootstrap, "d");
    check_exactly_once_in_order(&got, n, 1, false);
    writeln!(second.stdin, "quit").unwrap();
    assert!(second.child.wait().expect("exit").success());
    let _ = std::fs::remove_dir_all(&dir);
}
