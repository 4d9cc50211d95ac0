//! Master/slave replication with real processes: `mqnet-broker --role SYNC_MASTER|ASYNC_MASTER`
//! and `--role SLAVE`, mqnet's producer, `kill -9` of the master (by its PID) at a random moment,
//! and librdkafka's consumer reading the slave.
//!
//! CI size: 3 kill rounds. More: `MQNET_HA_ROUNDS=50 cargo test --release -p mqnet-broker
//! --test ha_replication -- --nocapture` (`MQNET_HA_SEED` repeats a run).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqnet::client::ClientConfig;
use mqnet::producer::{Acks, Producer, ProducerConfig, ProducerRecord};

use common::{consume, numbered_batch, produce, Raw, WAIT};

const TOPIC: &str = "ha";
const PARTITIONS: i32 = 2;

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    bootstrap: String,
    ha_listen: Option<String>,
}

fn spawn(dir: &Path, role: &str, extra: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqnet-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(["--role", role, "--partitions", &PARTITIONS.to_string()])
        .args(extra)
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
    let ha_listen = if role == "SLAVE" {
        None
    } else {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("second line");
        Some(
            line.trim()
                .strip_prefix("ha.listen=")
                .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
                .to_owned(),
        )
    };
    Proc {
        child,
        stdin,
        stdout,
        bootstrap,
        ha_listen,
    }
}

fn master(dir: &Path, role: &str) -> Proc {
    spawn(dir, role, &["--ha-listen", "127.0.0.1:0", "--topic", TOPIC])
}

fn slave(dir: &Path, master: &Proc) -> Proc {
    let addr = master.ha_listen.clone().expect("master HA address");
    spawn(dir, "SLAVE", &["--ha-master", &addr])
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

    /// The `ha` line's fields.
    fn ha(&mut self) -> HashMap<String, String> {
        self.command("ha")
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn ha_i64(&mut self, field: &str) -> i64 {
        self.ha()[field].parse().expect(field)
    }

    /// Sends `signal` (a `kill` option such as `-STOP`) to the process, by PID.
    fn signal(&self, signal: &str) {
        let st = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {signal}");
    }

    /// Stops the process (SIGSTOP) and waits until it is stopped. kill(2) only queues the
    /// signal: the process stops when one of its threads next runs and takes the others into the
    /// group stop, so until then (long, on a loaded machine) its threads keep running.
    fn sigstop(&self) {
        self.signal("-STOP");
        let pid = self.child.id();
        wait_for("the SIGSTOP to stop every thread", || all_stopped(pid));
    }

    /// Resumes a process stopped by [`sigstop`](Self::sigstop) (SIGCONT).
    fn sigcont(&self) {
        self.signal("-CONT");
    }

    /// `kill -9` by PID.
    fn kill9(mut self) {
        self.signal("-9");
        let _ = self.child.wait();
    }
}

/// Whether every thread of process `pid` is stopped (Linux: state `T` in
/// `/proc/<pid>/task/<tid>/stat`; a thread already dead, `Z` or `X`, cannot run either).
fn all_stopped(pid: u32) -> bool {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"));
    let mut n = 0;
    for t in tasks {
        let stat =
            std::fs::read_to_string(t.expect("task").path().join("stat")).unwrap_or_default();
        // `tid (comm) state ...`: the state follows the last ')' (comm may hold anything).
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        match state {
            Some("T" | "Z" | "X") => n += 1,
            // Running or sleeping; or the thread ended between the listing and the read.
            Some(_) => return false,
            None => {}
        }
    }
    n > 0
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mqnet-ha-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Waits (bounded) until `f` holds.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_healthy(m: &mut Proc) {
    wait_for("a healthy slave", || m.ha()["healthy"] == "true");
}

/// Waits until the slave's journal ends where the master's does.
fn wait_caught_up(m: &mut Proc, s: &mut Proc) {
    let end = m.ha_i64("log_end");
    wait_for("the slave to catch up", || s.ha_i64("log_end") == end);
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn producer(bootstrap: &str, acks: Acks, idempotent: bool) -> Producer {
    Producer::new(
        ProducerConfig::new(bootstrap)
            .acks(acks)
            .idempotence(idempotent)
            .linger_ms(2)
            .delivery_timeout(Duration::from_secs(4))
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .client(
                ClientConfig::default()
                    .reconnect_backoff(Duration::from_millis(20))
                    .reconnect_backoff_max(Duration::from_millis(200))
                    .request_timeout(Duration::from_millis(1_500)),
            ),
    )
    .expect("producer")
}

/// Sends records `0..` until `stop`, recording which were acknowledged; returns how many were
/// sent. Every outcome is in once the producer is flushed.
fn send_until(p: &Producer, stop: &AtomicBool, acked: &Arc<Mutex<Vec<usize>>>, sent: &AtomicUsize) {
    let mut i = 0usize;
    while !stop.load(Ordering::Acquire) && i < 1_000_000 {
        let a = Arc::clone(acked);
        let r = ProducerRecord::new(TOPIC, format!("value-{i}")).key(i.to_string());
        let n = i;
        p.send_with_callback(r, move |r| {
            if r.is_ok() {
                a.lock().unwrap_or_else(|e| e.into_inner()).push(n);
            }
        });
        i += 1;
        sent.store(i, Ordering::Release);
        if i % 64 == 0 {
            std::thread::yield_now();
        }
    }
}

/// One round: SYNC_MASTER + slave, the idempotent producer at acks=all, the master killed after
/// a random number of acknowledgements; every acknowledged record is on the slave exactly once.
fn sync_round(seed: u64, round: usize) -> (usize, usize) {
    let mut rng = Rng(seed ^ (round as u64) << 32);
    let mdir = tmp(&format!("sync-m{round}"));
    let sdir = tmp(&format!("sync-s{round}"));
    let mut m = master(&mdir, "SYNC_MASTER");
    let s = slave(&sdir, &m);
    wait_healthy(&mut m);
    let p = producer(&m.bootstrap, Acks::All, true);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let kill_after = 50 + (rng.next() % 3_000) as usize;
    let (acked2, stop2, sent2) = (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&sent));
    let t = std::thread::spawn(move || {
        send_until(&p, &stop2, &acked2, &sent2);
        // Outcomes of records in flight when the master died: failures, after the delivery
        // timeout at most.
        assert!(p.flush(Duration::from_secs(60)), "flush");
    });
    wait_for("acknowledgements", || {
        acked.lock().unwrap().len() >= kill_after
    });
    m.kill9();
    stop.store(true, Ordering::Release);
    t.join().expect("sender");
    let acked = acked.lock().unwrap().clone();
    let sent = sent.load(Ordering::Acquire);
    assert!(acked.len() >= kill_after);
    // Read the slave through the Kafka protocol.
    let got = consume(&s.bootstrap, TOPIC, PARTITIONS, acked.len());
    let mut seen: HashMap<usize, u32> = HashMap::new();
    for (_, _, k, v) in &got {
        let i: usize = k.parse().expect("key");
        assert!(i < sent, "record {i} was never sent");
        assert_eq!(v, &format!("value-{i}"));
        *seen.entry(i).or_default() += 1;
    }
    let dups: Vec<_> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, _)| *i)
        .take(10)
        .collect();
    assert!(
        dups.is_empty(),
        "round {round}: duplicated on the slave: {dups:?}"
    );
    let missing: Vec<_> = acked
        .iter()
        .filter(|i| !seen.contains_key(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "round {round}: acknowledged but not on the slave: {missing:?}"
    );
    // The slave is read-only and names itself leader.
    let mut raw = Raw::connect(&s.bootstrap);
    let (code, _) = produce(&mut raw, TOPIC, 0, &numbered_batch(0, 1, -1, -1, -1));
    assert_eq!(code, mqnet::broker::codes::NOT_LEADER_OR_FOLLOWER);
    s.kill9();
    let _ = std::fs::remove_dir_all(&mdir);
    let _ = std::fs::remove_dir_all(&sdir);
    (acked.len(), got.len())
}

#[test]
fn sync_master_kill_9_every_acknowledged_record_is_on_the_slave_once() {
    common::init_log();
    let rounds = std::env::var("MQNET_HA_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let seed = std::env::var("MQNET_HA_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("ha sync kill rounds: seed {seed}, {rounds} rounds");
    let t0 = Instant::now();
    for r in 0..rounds {
        let (acked, on_slave) = sync_round(seed, r);
        println!("round {r}: {acked} acknowledged, {on_slave} on the slave, all acknowledged present once");
    }
    println!("{rounds} rounds in {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn sync_master_without_a_slave_refuses_and_times_out() {
    common::init_log();
    let mdir = tmp("noslave-m");
    let sdir = tmp("noslave-s");
    let mut m = spawn(
        &mdir,
        "SYNC_MASTER",
        &[
            "--ha-listen",
            "127.0.0.1:0",
            "--topic",
            TOPIC,
            "--ha-sync-timeout-ms",
            "300",
        ],
    );
    let mut raw = Raw::connect(&m.bootstrap);
    // No slave: refused before appending (NOT_ENOUGH_REPLICAS), nothing appended.
    let end_before = m.ha_i64("log_end");
    let (code, _) = produce(&mut raw, TOPIC, 0, &numbered_batch(0, 1, -1, -1, -1));
    assert_eq!(code, mqnet::broker::codes::NOT_ENOUGH_REPLICAS);
    assert_eq!(m.ha_i64("log_end"), end_before);
    // With a slave: accepted once it holds the batch. The master counts the slave healthy from
    // its handshake on, but the slave's start-up (adopting the log id with an fsync, creating the
    // topic) comes after it; wait until it acknowledged the whole journal, so that the
    // ha.sync.timeout.ms budget below is for replicating the batch alone.
    let mut s = slave(&sdir, &m);
    wait_healthy(&mut m);
    wait_for("the slave to acknowledge the master's journal", || {
        let ha = m.ha();
        ha["peer_end"].parse::<i64>().unwrap() >= ha["log_end"].parse::<i64>().unwrap()
    });
    let (code, base) = produce(&mut raw, TOPIC, 0, &numbered_batch(0, 1, -1, -1, -1));
    assert_eq!((code, base), (0, 0));
    assert!(m.ha_i64("log_end") > end_before);
    assert!(m.ha_i64("peer_end") >= m.ha_i64("log_end"));
    // The slave stops (SIGSTOP, and every one of its threads is stopped before the produce goes
    // out): the master still thinks it healthy, appends, and answers
    // NOT_ENOUGH_REPLICAS_AFTER_APPEND after ha.sync.timeout.ms.
    s.sigstop();
    let t = Instant::now();
    let (code, _) = produce(&mut raw, TOPIC, 0, &numbered_batch(1, 1, -1, -1, -1));
    assert_eq!(code, mqnet::broker::codes::NOT_ENOUGH_REPLICAS_AFTER_APPEND);
    assert!(t.elapsed() >= Duration::from_millis(300));
    s.sigcont();
    // The slave catches up with the record that timed out: it was appended.
    wait_caught_up(&mut m, &mut s);
    assert_eq!(consume(&s.bootstrap, TOPIC, PARTITIONS, 2).len(), 2);
    m.kill9();
    s.kill9();
    let _ = std::fs::remove_dir_all(&mdir);
    let _ = std::fs::remove_dir_all(&sdir);
}

#[test]
fn async_master_reports_lag_and_loses_only_unreplicated_records() {
    common::init_log();
    let mdir = tmp("async-m");
    let sdir = tmp("async-s");
    let mut m = master(&mdir, "ASYNC_MASTER");
    let s = slave(&sdir, &m);
    wait_for("the slave", || m.ha()["slaves"] == "1");
    let p = producer(&m.bootstrap, Acks::Leader, false);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (acked2, stop2, sent2) = (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&sent));
    let t = std::thread::spawn(move || {
        send_until(&p, &stop2, &acked2, &sent2);
        assert!(p.flush(Duration::from_secs(60)), "flush");
    });
    wait_for("acknowledgements", || acked.lock().unwrap().len() >= 2_000);
    // The lag, as the master reports it (metric and admin command).
    let ha = m.ha();
    let lag: i64 = ha["lag_bytes"].parse().unwrap();
    let end: i64 = ha["log_end"].parse().unwrap();
    let peer: i64 = ha["peer_end"].parse().unwrap();
    assert!(lag >= 0 && end - peer == lag, "{ha:?}");
    m.kill9();
    stop.store(true, Ordering::Release);
    t.join().expect("sender");
    let acked = acked.lock().unwrap().clone();
    let got = consume(&s.bootstrap, TOPIC, PARTITIONS, acked.len());
    // The slave holds a prefix of each partition's log: offsets 0..n without a hole, each
    // record once; what is missing is only what the master had not replicated.
    let mut by_part: HashMap<i32, Vec<i64>> = HashMap::new();
    let mut seen: HashMap<usize, u32> = HashMap::new();
    for (p, o, k, _) in &got {
        by_part.entry(*p).or_default().push(*o);
        *seen.entry(k.parse().unwrap()).or_default() += 1;
    }
    for (p, offs) in &mut by_part {
        offs.sort_unstable();
        for (i, o) in offs.iter().enumerate() {
            assert_eq!(*o, i as i64, "partition {p}: a hole on the slave");
        }
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a record twice on the slave"
    );
    let lost = acked.iter().filter(|i| !seen.contains_key(i)).count();
    println!(
        "ASYNC_MASTER kill -9: {} acknowledged, {} on the slave, {lost} acknowledged records lost (not yet replicated); lag before the kill {lag} bytes",
        acked.len(),
        got.len()
    );
    s.kill9();
    let _ = std::fs::remove_dir_all(&mdir);
    let _ = std::fs::remove_dir_all(&sdir);
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut paths = vec![dir.join("ha").join("journal.log")];
    for p in 0..PARTITIONS {
        for e in std::fs::read_dir(dir.join(format!("{TOPIC}-{p}"))).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "log") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    for p in paths {
        let name = p.strip_prefix(dir).unwrap().display().to_string();
        out.push((name, std::fs::read(&p).unwrap()));
    }
    out
}

fn produce_some(m: &Proc, from: usize, batches: usize) {
    let mut raw = Raw::connect(&m.bootstrap);
    for k in 0..batches {
        let b = numbered_batch(from + k * 10, 10, -1, -1, -1);
        let (code, _) = produce(&mut raw, TOPIC, (k % 2) as i32, &b);
        assert_eq!(code, 0);
    }
}

fn assert_same_files(m: &Path, s: &Path) {
    let a = files(m);
    let b = files(s);
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs: {} vs {} bytes", x.len(), y.len());
    }
}

#[test]
fn slave_with_truncated_empty_or_foreign_log_converges_byte_for_byte() {
    common::init_log();
    let mdir = tmp("conv-m");
    let sdir = tmp("conv-s");
    let odir = tmp("conv-old");
    let mut m = master(&mdir, "ASYNC_MASTER");
    let mut s = slave(&sdir, &m);
    produce_some(&m, 0, 200);
    wait_caught_up(&mut m, &mut s);
    assert_same_files(&mdir, &sdir);
    s.kill9();

    // Truncated: the journal and a partition log cut mid-entry.
    for f in [
        sdir.join("ha").join("journal.log"),
        sdir.join(format!("{TOPIC}-1"))
            .join("00000000000000000000.log"),
    ] {
        let len = std::fs::metadata(&f).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        file.set_len(len / 2 + 7).unwrap();
    }
    let mut s = slave(&sdir, &m);
    produce_some(&m, 2_000, 20);
    wait_caught_up(&mut m, &mut s);
    assert_same_files(&mdir, &sdir);
    s.kill9();

    // Empty.
    std::fs::remove_dir_all(&sdir).unwrap();
    let mut s = slave(&sdir, &m);
    wait_caught_up(&mut m, &mut s);
    assert_same_files(&mdir, &sdir);
    s.kill9();

    // A log from an older master (another journal id, longer and shorter than this one's).
    let mut old = master(&odir, "ASYNC_MASTER");
    let mut olds = slave(&sdir, &old);
    produce_some(&old, 0, 5);
    wait_caught_up(&mut old, &mut olds);
    olds.kill9();
    old.kill9();
    let mut s = slave(&sdir, &m);
    wait_caught_up(&mut m, &mut s);
    assert_same_files(&mdir, &sdir);
    assert_eq!(consume(&s.bootstrap, TOPIC, PARTITIONS, 2_200).len(), 2_200);
    s.kill9();
    m.kill9();
    for d in [&mdir, &sdir, &odir] {
        let _ = std::fs::remove_dir_all(d);
    }
}
