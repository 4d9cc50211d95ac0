//! `mqnet-bench chaos`: requests through real faults, every one accounted for exactly once; and
//! `--soak-secs`, the same load for a fixed time with resource sampling.
//!
//! Layout, all on 127.0.0.1: `--servers` echo server child processes (mqnet's `Server`, spawned
//! from `current_exe()`); one fault proxy per connection, in this process, between the client and
//! its server; one `NetworkClient` with `--conns` nodes (one connection each) keeping
//! `--inflight` requests in flight per node.
//!
//! A fault driver seeded by `--seed` injects, every `--fault-interval-ms` (±50 %): `kill -9` of a
//! server and its restart on the same port; a connection cut mid-frame (the proxy forwards part of
//! a chunk, then resets both sides); a stall (the proxy stops reading the client: socket buffers
//! fill, the client is back-pressured); 1-byte segments (the proxy writes a byte at a time); and
//! responses delayed past the request timeout.
//!
//! Each request's payload carries a token derived from its correlation id; the server answers
//! `correlation id | the request's bytes after the header`. Every completion is classified:
//! answered correctly, answered wrongly (wrong bytes), failed with a reason (timed out,
//! disconnected with a cause), or a duplicate / unknown completion. Requests never completed by
//! the end of the drain are lost. The run passes with 0 lost, 0 duplicated, 0 unknown, 0 wrong and
//! 0 server crashes (a server exit the driver did not cause).
//!
//! Soak mode (`--soak-secs`): no request limit; kills hit server 0 only, so server 1 lives for the
//! whole run. Every second the RSS and open descriptors of this process and of server 1 are
//! sampled; over the second half of the run the late maximum must not exceed the early maximum
//! beyond noise (see [`plateau`]). With `--big-frame-mib N`, a burst of three N MiB frames is first
//! sent straight to server 1, and its RSS must fall back afterwards (per-channel buffers shrink).

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use mqnet::client::{
    ClientConfig, ClientRequest, ClientResponse, DisconnectCause, NetworkClient, NodeId, Outcome,
    SplitMix64,
};
use mqnet::net::{ChannelId, DisconnectReason, SelectorConfig};
use mqnet::server::{Server, ServerConfig};
use serde::Serialize;

use crate::child::ChildProc;
use crate::error::{BenchError, Context};
use crate::sys;

/// How long a server child may take to print its port.
const SERVER_START: Duration = Duration::from_secs(10);
/// Largest frame a chaos server accepts (room for `--big-frame-mib 100`).
const SERVER_MAX_FRAME: usize = 128 * 1024 * 1024;
/// Largest `--big-frame-mib`.
const MAX_BIG_FRAME_MIB: usize = 120;
/// Request header: api_key, api_version, correlation id.
const HEADER: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChaosRole {
    /// An echo server (internal).
    Server,
}

/// Arguments of `mqnet-bench chaos`.
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// Requests in all (ignored with --soak-secs).
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// NetworkClient connections (nodes), each through its own fault proxy.
    #[arg(short = 'c', long, default_value_t = 50)]
    conns: usize,
    /// Echo server processes; connection k goes to server k mod N.
    #[arg(long, default_value_t = 2)]
    servers: usize,
    /// Requests in flight per connection.
    #[arg(short = 'w', long, default_value_t = 8)]
    inflight: usize,
    /// Request payload bytes (at least 16: header and token).
    #[arg(short = 's', long, default_value_t = 64)]
    size: usize,
    /// Seed of the fault schedule and of the client's jitter [default: from the clock, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// The client's request timeout.
    #[arg(long, default_value_t = 1_000)]
    request_timeout_ms: u64,
    /// Mean time between injected faults.
    #[arg(long, default_value_t = 200)]
    fault_interval_ms: u64,
    /// Bound on the whole run, in seconds: sending stops then, the drain follows.
    #[arg(long, default_value_t = 1_800.0)]
    max_secs: f64,
    /// Soak mode: run this many seconds with no request limit, sampling RSS and descriptors.
    #[arg(long, value_name = "SECS")]
    soak_secs: Option<f64>,
    /// Soak mode: first send three frames of this many MiB straight to server 1 and check that its
    /// RSS falls back.
    #[arg(long, value_name = "MIB")]
    big_frame_mib: Option<usize>,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
    /// Internal: the role of a child process.
    #[arg(long, value_enum, hide = true)]
    role: Option<ChaosRole>,
    /// Internal: the server child's listen address.
    #[arg(long, hide = true)]
    listen: Option<String>,
}

/// Counts of one run, printed as the report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub conns: usize,
    pub servers: usize,
    pub sent: u64,
    pub answered: u64,
    pub wrong_answers: u64,
    pub timed_out: u64,
    pub disconnected: u64,
    pub local_errors: u64,
    pub duplicates: u64,
    pub unknown: u64,
    pub lost: u64,
    pub server_crashes: u64,
    /// Failures by reason.
    pub failures: HashMap<String, u64>,
    /// Faults injected by kind.
    pub faults: HashMap<String, u64>,
    pub seconds: f64,
    pub passed: bool,
    /// Soak mode: samples and the plateau verdicts.
    pub soak: Option<SoakReport>,
}

/// Resource samples of a soak run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SoakReport {
    pub samples: usize,
    pub harness_rss_mib: Plateau,
    pub harness_fds: Plateau,
    pub server_rss_mib: Plateau,
    pub server_fds: Plateau,
    /// Server 1's RSS before the big frames, at its peak, and after (MiB).
    pub big_frame: Option<(f64, f64, f64)>,
    pub big_frame_released: bool,
}

/// Early and late maxima of one series over the second half of a soak run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Plateau {
    pub first: f64,
    pub early_max: f64,
    pub late_max: f64,
    pub last: f64,
    pub flat: bool,
}

/// The plateau rule: of the second half of the samples, the maximum of its last half may exceed
/// the maximum of its first half by at most `abs + rel × early`. Growth that continues through
/// the run shows up as a late maximum above the early one; warm-up (first half) is ignored.
pub fn plateau(series: &[f64], abs: f64, rel: f64) -> Plateau {
    let n = series.len();
    let second = &series[n / 2..];
    let mid = second.len() / 2;
    let max = |s: &[f64]| s.iter().copied().fold(f64::MIN, f64::max);
    let (early, late) = if second.len() >= 2 {
        (max(&second[..mid]), max(&second[mid..]))
    } else {
        (0.0, 0.0)
    };
    Plateau {
        first: series.first().copied().unwrap_or(0.0),
        early_max: early,
        late_max: late,
        last: series.last().copied().unwrap_or(0.0),
        flat: second.len() >= 2 && late <= early + abs + rel * early,
    }
}

// ----- the server child --------------------------------------------------------------------------

fn server_main(a: &ChaosArgs) -> Result<bool, BenchError> {
    sys::die_with_parent();
    let addr: SocketAddr = a
        .listen
        .as_deref()
        .ok_or_else(|| BenchError::usage("--role server needs --listen"))?
        .parse()
        .context("--listen")?;
    let config = ServerConfig {
        selector: SelectorConfig {
            max_frame_size: SERVER_MAX_FRAME,
            ..SelectorConfig::default()
        },
        ..ServerConfig::default()
    };
    // Answer: the correlation id, then the request's bytes after its header.
    let handler = |_c: ChannelId, req: Bytes| {
        if req.len() < HEADER {
            return None;
        }
        let mut v = Vec::with_capacity(req.len() - HEADER + 4);
        v.extend_from_slice(&req[4..8]);
        v.extend_from_slice(&req[HEADER..]);
        Some(Bytes::from(v))
    };
    let mut server = Server::inline_with_config(handler, config).context("chaos server")?;
    let bound = server.bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("PORT {}", bound.port());
    let _ = std::io::stdout().flush();
    let stop = AtomicBool::new(false);
    server
        .run_until(&stop, Some(Instant::now() + Duration::from_secs(4 * 3600)))
        .context("chaos server")?;
    Ok(true)
}

// ----- servers -----------------------------------------------------------------------------------

struct ServerSlot {
    port: u16,
    child: Option<ChildProc>,
}

struct Servers {
    exe: PathBuf,
    slots: Vec<ServerSlot>,
    crashes: u64,
}

impl Servers {
    fn spawn(exe: &Path, k: usize, port: u16) -> Result<(ChildProc, u16), BenchError> {
        let args = vec![
            "chaos".to_string(),
            "--role".into(),
            "server".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        let mut child = ChildProc::spawn(&format!("chaos-server-{k}"), exe, &args)
            .with_context(|| format!("spawning server {k}"))?;
        let line = child.line(SERVER_START)?;
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| BenchError::Child(format!("server {k} printed {line:?}")))?;
        Ok((child, port))
    }

    fn start(n: usize) -> Result<Servers, BenchError> {
        let exe = std::env::current_exe().context("current_exe")?;
        let mut slots = Vec::new();
        for k in 0..n {
            let (child, port) = Servers::spawn(&exe, k, 0)?;
            slots.push(ServerSlot {
                port,
                child: Some(child),
            });
        }
        Ok(Servers {
            exe,
            slots,
            crashes: 0,
        })
    }

    fn kill(&mut self, k: usize) {
        if let Some(mut c) = self.slots[k].child.take() {
            let _ = c.stop();
        }
    }

    /// Restarts server `k` on its port (a few tries: the port may still be settling).
    fn restart(&mut self, k: usize) -> Result<(), BenchError> {
        let port = self.slots[k].port;
        let mut last = BenchError::child("no attempt");
        for _ in 0..20 {
            match Servers::spawn(&self.exe, k, port) {
                Ok((child, _)) => {
                    self.slots[k].child = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    last = e;
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(BenchError::wrap(
            format!("server {k} did not restart on port {port}"),
            last,
        ))
    }

    /// Counts servers that exited without being killed, and restarts them.
    fn check_crashes(&mut self) -> Result<(), BenchError> {
        for k in 0..self.slots.len() {
            let exited = self.slots[k].child.as_mut().and_then(ChildProc::exited);
            if let Some(status) = exited {
                self.crashes += 1;
                log::error!("chaos server {k} exited by itself: {status}");
                self.slots[k].child = None;
                self.restart(k)?;
            }
        }
        Ok(())
    }

    fn pid(&self, k: usize) -> Option<u32> {
        self.slots.get(k)?.child.as_ref().map(ChildProc::pid)
    }
}

// ----- the fault proxy ---------------------------------------------------------------------------

/// Faults armed on one connection's proxy. Times are milliseconds since the run started.
#[derive(Debug, Default)]
struct ConnFaults {
    /// Cut the connection in the middle of the next chunk (0: no; 1: client→server; 2: back).
    cut: AtomicU64,
    stall_until: AtomicU64,
    split_until: AtomicU64,
    delay_until: AtomicU64,
    delay_ms: AtomicU64,
}

struct Proxy {
    port: u16,
    faults: Arc<ConnFaults>,
}

#[derive(Clone)]
struct Clock(Instant);

impl Clock {
    fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Starts the proxy of connection `k`: it accepts the client's connections and relays each to the
/// server's current port, applying the armed faults.
fn start_proxy(
    k: usize,
    upstream: Arc<Mutex<Vec<u16>>>,
    server: usize,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> Result<Proxy, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").context("proxy: bind 127.0.0.1:0")?;
    listener
        .set_nonblocking(true)
        .context("proxy: set_nonblocking")?;
    let port = listener.local_addr().context("proxy: local_addr")?.port();
    let faults = Arc::new(ConnFaults::default());
    let f = faults.clone();
    thread::Builder::new()
        .name(format!("proxy-{k}"))
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(_) => continue,
                };
                let port = upstream.lock().map(|u| u[server]).unwrap_or(0);
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let Ok(up) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                    // Server down: the client sees its connection closed.
                    let _ = sys::set_linger_zero(&client);
                    continue;
                };
                let _ = client.set_nonblocking(false);
                for s in [&client, &up] {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                }
                let (Ok(c2), Ok(u2)) = (client.try_clone(), up.try_clone()) else {
                    continue;
                };
                let (f1, f2) = (f.clone(), f.clone());
                let (s1, s2) = (stop.clone(), stop.clone());
                let (k1, k2) = (clock.clone(), clock.clone());
                let _ = thread::Builder::new()
                    .name(format!("pump-{k}-up"))
                    .spawn(move || pump(client, up, &f1, true, &k1, &s1));
                let _ = thread::Builder::new()
                    .name(format!("pump-{k}-down"))
                    .spawn(move || pump(u2, c2, &f2, false, &k2, &s2));
            }
        })
        .context("spawning a proxy thread")?;
    Ok(Proxy { port, faults })
}

/// Relays `from` to `to` until either side ends, applying the faults of its direction
/// (`up`: client→server).
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    f: &ConnFaults,
    up: bool,
    clock: &Clock,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let me = if up { 1 } else { 2 };
    while !stop.load(Ordering::Relaxed) {
        let now = clock.ms();
        if up && now < f.stall_until.load(Ordering::Relaxed) {
            // Stop reading the client: its socket buffers fill and it is back-pressured.
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if f.cut
            .compare_exchange(me, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // Forward part of the chunk (mid-frame for any chunk of more than one byte), then
            // reset both sides.
            let _ = to.write_all(&chunk[..n / 2]);
            let _ = sys::set_linger_zero(&to);
            let _ = sys::set_linger_zero(&from);
            break;
        }
        if !up && now < f.delay_until.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(f.delay_ms.load(Ordering::Relaxed)));
        }
        let ok = if clock.ms() < f.split_until.load(Ordering::Relaxed) {
            chunk
                .iter()
                .all(|b| to.write_all(std::slice::from_ref(b)).is_ok())
        } else {
            to.write_all(chunk).is_ok()
        };
        if !ok {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ----- the fault driver --------------------------------------------------------------------------

const FAULT_KINDS: [&str; 5] = [
    "kill_restart",
    "cut_mid_frame",
    "stall",
    "split_1_byte",
    "delay",
];

#[allow(clippy::too_many_arguments)]
fn drive_faults(
    seed: u64,
    interval: Duration,
    timeout: Duration,
    soak: bool,
    servers: &Mutex<Servers>,
    upstream: &Mutex<Vec<u16>>,
    faults: &[Arc<ConnFaults>],
    clock: &Clock,
    stop: &AtomicBool,
    counts: &Mutex<HashMap<String, u64>>,
) -> Result<(), BenchError> {
    let mut rng = SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let timeout_ms = timeout.as_millis() as u64;
    while !stop.load(Ordering::Relaxed) {
        let wait =
            interval.as_millis() as u64 / 2 + rng.next_u64() % interval.as_millis().max(1) as u64;
        let until = Instant::now() + Duration::from_millis(wait);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(5)),
            );
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let kind = rng.next_index(FAULT_KINDS.len());
        let k = rng.next_index(faults.len());
        let now = clock.ms();
        match kind {
            0 => {
                let mut s = servers
                    .lock()
                    .map_err(|_| BenchError::child("servers lock poisoned"))?;
                let victim = if soak {
                    0
                } else {
                    rng.next_index(s.slots.len())
                };
                s.kill(victim);
                drop(s);
                thread::sleep(Duration::from_millis(50 + rng.next_u64() % 400));
                let mut s = servers
                    .lock()
                    .map_err(|_| BenchError::child("servers lock poisoned"))?;
                s.restart(victim)?;
                let port = s.slots[victim].port;
                if let Ok(mut u) = upstream.lock() {
                    u[victim] = port;
                }
            }
            1 => faults[k]
                .cut
                .store(1 + rng.next_u64() % 2, Ordering::Relaxed),
            2 => faults[k]
                .stall_until
                .store(now + timeout_ms + timeout_ms / 2, Ordering::Relaxed),
            3 => faults[k].split_until.store(now + 2_000, Ordering::Relaxed),
            _ => {
                faults[k]
                    .delay_ms
                    .store(timeout_ms + 200, Ordering::Relaxed);
                faults[k].delay_until.store(now + 500, Ordering::Relaxed);
            }
        }
        if let Ok(mut c) = counts.lock() {
            *c.entry(FAULT_KINDS[kind].to_string()).or_default() += 1;
        }
        servers
            .lock()
            .map_err(|_| BenchError::child("servers lock poisoned"))?
            .check_crashes()?;
    }
    // The last look, from this thread: servers it restarted get SIGKILL when it exits (their
    // parent-death signal follows the thread that spawned them), which is no crash.
    servers
        .lock()
        .map_err(|_| BenchError::child("servers lock poisoned"))?
        .check_crashes()
}

// ----- requests ----------------------------------------------------------------------------------

/// The correlation ids completed so far, in memory bounded by the spread of ids still open rather
/// than by the run's length (a soak runs for hours): ids are assigned in increasing order, every id
/// below `base` is done, and `done[i]` says whether `base + i` is.
#[derive(Debug, Default)]
struct DoneSet {
    base: i64,
    done: VecDeque<bool>,
}

impl DoneSet {
    fn insert(&mut self, corr: i32) {
        let Ok(i) = usize::try_from(i64::from(corr) - self.base) else {
            return;
        };
        if i >= self.done.len() {
            self.done.resize(i + 1, false);
        }
        self.done[i] = true;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.base += 1;
        }
    }

    fn contains(&self, corr: i32) -> bool {
        match usize::try_from(i64::from(corr) - self.base) {
            Err(_) => true,
            Ok(i) => self.done.get(i).copied().unwrap_or(false),
        }
    }
}

/// The request payload of `corr`: header, then `size - 8` bytes from a generator seeded by the
/// correlation id and the run's seed (so the answer can be checked without keeping the request).
fn request_payload(corr: i32, seed: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&0i16.to_be_bytes());
    v.extend_from_slice(&0i16.to_be_bytes());
    v.extend_from_slice(&corr.to_be_bytes());
    let mut g = SplitMix64::new(seed ^ (corr as u32 as u64).wrapping_mul(0x100_0000_01b3));
    while v.len() < size {
        v.extend_from_slice(&g.next_u64().to_le_bytes());
    }
    v.truncate(size);
    v
}

fn expected_answer(corr: i32, seed: u64, size: usize) -> Vec<u8> {
    let req = request_payload(corr, seed, size);
    let mut v = corr.to_be_bytes().to_vec();
    v.extend_from_slice(&req[HEADER..]);
    v
}

fn failure_reason(cause: &DisconnectCause) -> String {
    match cause {
        DisconnectCause::Transport(r) => match r {
            DisconnectReason::PeerClosed => "peer_closed".into(),
            DisconnectReason::PeerClosedMidFrame { .. } => "peer_closed_mid_frame".into(),
            DisconnectReason::Io(f) => format!("io_{:?}", f.kind).to_lowercase(),
            DisconnectReason::ConnectFailed(_) => "connect_failed".into(),
            DisconnectReason::IdleExpired => "idle_expired".into(),
            other => format!("transport_{other:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("transport")
                .to_lowercase(),
        },
        DisconnectCause::CorrelationMismatch { .. } => "correlation_mismatch".into(),
        DisconnectCause::RequestTimeout => "another_request_timed_out".into(),
        DisconnectCause::SetupTimeout => "setup_timeout".into(),
        DisconnectCause::HandshakeFailed => "handshake_failed".into(),
        DisconnectCause::Local => "local_disconnect".into(),
        DisconnectCause::NodeRemoved => "node_removed".into(),
    }
}

fn rss_and_fds(pid: Option<u32>) -> (f64, f64) {
    let base = pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"));
    let rss = std::fs::read_to_string(format!("{base}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1024.0 * 1024.0));
    let fds = std::fs::read_dir(format!("{base}/fd")).map_or(0, |d| d.count()) as f64;
    (rss, fds)
}

/// Sends three `mib` MiB frames straight to the server on `port` and reads each answer; returns
/// the server's RSS (MiB) before, at its peak, and once it has fallen back (or after 10 s).
fn big_frames(port: u16, pid: u32, mib: usize) -> Result<(f64, f64, f64), BenchError> {
    let before = rss_and_fds(Some(pid)).0;
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("big frames: connect")?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .context("big frames: set_read_timeout")?;
    let size = mib * 1024 * 1024;
    let mut frame = (size as u32).to_be_bytes().to_vec();
    frame.extend(request_payload(1, 1, size));
    let mut peak = before;
    let mut answer = vec![0u8; 4 + size - HEADER + 4];
    for _ in 0..3 {
        s.write_all(&frame).context("big frames: write")?;
        s.read_exact(&mut answer).context("big frames: read")?;
        peak = peak.max(rss_and_fds(Some(pid)).0);
    }
    drop(answer);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = rss_and_fds(Some(pid)).0;
    while after > before + mib as f64 / 2.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        after = rss_and_fds(Some(pid)).0;
    }
    // The connection stays open: the released memory is the channel's buffers, not the channel.
    let _keep = s;
    Ok((before, peak, after))
}

/// Runs `mqnet-bench chaos`.
///
/// # Errors
/// A [`BenchError`] saying what could not be set up (servers, proxies, the client).
pub fn chaos(a: &ChaosArgs) -> Result<bool, BenchError> {
    if a.role == Some(ChaosRole::Server) {
        return server_main(a);
    }
    if a.size < 16 || a.size > 1024 * 1024 {
        return Err(BenchError::usage("--size must be in 16..=1048576"));
    }
    if a.conns == 0 || a.servers == 0 || a.inflight == 0 {
        return Err(BenchError::usage(
            "--conns, --servers and --inflight must be at least 1",
        ));
    }
    if a.soak_secs.is_some() && a.servers < 2 {
        return Err(BenchError::usage(
            "--soak-secs needs at least 2 servers (server 1 is never killed)",
        ));
    }
    if a.big_frame_mib
        .is_some_and(|m| m == 0 || m > MAX_BIG_FRAME_MIB)
    {
        return Err(BenchError::Usage(format!(
            "--big-frame-mib must be in 1..={MAX_BIG_FRAME_MIB}"
        )));
    }
    let _ = sys::raise_nofile();
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("mqnet-bench chaos: seed {seed}");
    let soak = a.soak_secs.map(Duration::from_secs_f64);
    let timeout = Duration::from_millis(a.request_timeout_ms);
    let clock = Clock(Instant::now());
    let stop = Arc::new(AtomicBool::new(false));

    let servers = Servers::start(a.servers)?;
    let upstream = Arc::new(Mutex::new(
        servers.slots.iter().map(|s| s.port).collect::<Vec<_>>(),
    ));
    let mut soak_report = SoakReport::default();
    if let (Some(mib), true) = (a.big_frame_mib, soak.is_some()) {
        let pid = servers
            .pid(1)
            .ok_or_else(|| BenchError::child("server 1 is not running"))?;
        let r = big_frames(servers.slots[1].port, pid, mib)?;
        soak_report.big_frame_released = r.2 <= r.0 + mib as f64 / 2.0;
        soak_report.big_frame = Some(r);
        eprintln!(
            "big frames: server RSS {:.1} MiB before, {:.1} MiB peak, {:.1} MiB after",
            r.0, r.1, r.2
        );
    }
    let servers = Arc::new(Mutex::new(servers));

    let mut proxies = Vec::new();
    for k in 0..a.conns {
        proxies.push(start_proxy(
            k,
            upstream.clone(),
            k % a.servers,
            clock.clone(),
            stop.clone(),
        )?);
    }
    let fault_counts = Arc::new(Mutex::new(HashMap::new()));
    let driver = {
        let (servers, upstream, stop, counts, clock) = (
            servers.clone(),
            upstream.clone(),
            stop.clone(),
            fault_counts.clone(),
            clock.clone(),
        );
        let faults: Vec<Arc<ConnFaults>> = proxies.iter().map(|p| p.faults.clone()).collect();
        let interval = Duration::from_millis(a.fault_interval_ms.max(1));
        let soak = soak.is_some();
        thread::Builder::new()
            .name("fault-driver".into())
            .spawn(move || {
                drive_faults(
                    seed, interval, timeout, soak, &servers, &upstream, &faults, &clock, &stop,
                    &counts,
                )
            })
            .context("spawning the fault driver")?
    };

    let config = ClientConfig::default()
        .request_timeout(timeout)
        .reconnect_backoff(Duration::from_millis(20))
        .reconnect_backoff_max(Duration::from_millis(500))
        .connection_setup_timeout(Duration::from_secs(2))
        .connection_setup_timeout_max(Duration::from_secs(4))
        .max_in_flight(a.inflight);
    let mut client = NetworkClient::new(config)
        .context("NetworkClient")?
        .with_rng(SplitMix64::new(seed));
    let nodes: Vec<NodeId> = (0..a.conns as i32).map(NodeId).collect();
    for (k, p) in proxies.iter().enumerate() {
        client
            .add_node(nodes[k], &format!("127.0.0.1:{}", p.port))
            .with_context(|| format!("add_node {k}"))?;
    }

    let mut r = ChaosReport {
        seed,
        conns: a.conns,
        servers: a.servers,
        ..ChaosReport::default()
    };
    let mut pending: HashMap<i32, NodeId> = HashMap::new();
    let mut completed = DoneSet::default();
    let mut done: Vec<ClientResponse> = Vec::new();
    let started = Instant::now();
    let send_until = started + soak.unwrap_or(Duration::from_secs_f64(a.max_secs));
    let mut samples: Vec<[f64; 4]> = Vec::new();
    let mut next_sample = started;
    let total = if soak.is_some() { u64::MAX } else { a.requests };
    let classify = |resp: &ClientResponse,
                    r: &mut ChaosReport,
                    pending: &mut HashMap<i32, NodeId>,
                    completed: &mut DoneSet| {
        let Some(node) = pending.remove(&resp.correlation_id) else {
            if completed.contains(resp.correlation_id) {
                r.duplicates += 1;
            } else {
                r.unknown += 1;
            }
            return;
        };
        completed.insert(resp.correlation_id);
        if node != resp.node {
            r.wrong_answers += 1;
            return;
        }
        match &resp.outcome {
            Outcome::Response(body) => {
                if body[..] == expected_answer(resp.correlation_id, seed, a.size)[..] {
                    r.answered += 1;
                } else {
                    r.wrong_answers += 1;
                }
            }
            Outcome::TimedOut => {
                r.timed_out += 1;
                *r.failures.entry("timed_out".into()).or_default() += 1;
            }
            Outcome::Disconnected(cause) => {
                r.disconnected += 1;
                *r.failures.entry(failure_reason(cause)).or_default() += 1;
            }
            Outcome::LocalError(e) => {
                r.local_errors += 1;
                *r.failures.entry(format!("local: {e}")).or_default() += 1;
            }
            Outcome::Sent => r.wrong_answers += 1,
        }
    };

    // Load: keep `inflight` requests on every Ready node until the total is sent or time is up.
    while r.sent < total && Instant::now() < send_until {
        let now = Instant::now();
        for &node in &nodes {
            while r.sent < total
                && client.in_flight_count(node) < a.inflight
                && client.ready(node, now)
            {
                let corr = client.next_correlation_id();
                let frame = Bytes::from(request_payload(corr, seed, a.size));
                client.send(ClientRequest::new(node, corr, frame), now);
                pending.insert(corr, node);
                r.sent += 1;
            }
        }
        done.clear();
        client
            .poll_io(Some(Duration::from_millis(5)), Instant::now())
            .map(|()| {
                let now = std::time::Instant::now();
                client.handle_into(now, &mut done)
            })
            .context("poll")?;
        for resp in &done {
            classify(resp, &mut r, &mut pending, &mut completed);
        }
        if soak.is_some() && Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            let (hr, hf) = rss_and_fds(None);
            let pid = servers.lock().ok().and_then(|s| s.pid(1));
            let (sr, sf) = rss_and_fds(pid);
            samples.push([hr, hf, sr, sf]);
        }
        if driver.is_finished() {
            break;
        }
    }
    // Drain: no new requests; every deadline passes well within this bound.
    let drain_until = Instant::now() + timeout * 3 + Duration::from_secs(10);
    while !pending.is_empty() && Instant::now() < drain_until {
        done.clear();
        client
            .poll_io(Some(Duration::from_millis(10)), Instant::now())
            .map(|()| {
                let now = std::time::Instant::now();
                client.handle_into(now, &mut done)
            })
            .context("poll")?;
        for resp in &done {
            classify(resp, &mut r, &mut pending, &mut completed);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let driver_result = driver
        .join()
        .map_err(|_| BenchError::child("the fault driver panicked"))?;
    driver_result?;
    r.lost = pending.len() as u64;
    r.seconds = started.elapsed().as_secs_f64();
    r.faults = fault_counts.lock().map(|c| c.clone()).unwrap_or_default();
    {
        let mut s = servers
            .lock()
            .map_err(|_| BenchError::child("servers lock poisoned"))?;
        r.server_crashes = s.crashes;
        for k in 0..s.slots.len() {
            s.kill(k);
        }
    }
    r.passed = r.lost == 0
        && r.duplicates == 0
        && r.unknown == 0
        && r.wrong_answers == 0
        && r.server_crashes == 0
        && r.answered > 0;
    if soak.is_some() {
        let col = |i: usize| samples.iter().map(|s| s[i]).collect::<Vec<_>>();
        soak_report.samples = samples.len();
        soak_report.harness_rss_mib = plateau(&col(0), 8.0, 0.10);
        let fd_noise = a.conns as f64 + 16.0;
        soak_report.harness_fds = plateau(&col(1), fd_noise, 0.10);
        soak_report.server_rss_mib = plateau(&col(2), 8.0, 0.10);
        soak_report.server_fds = plateau(&col(3), fd_noise, 0.10);
        let flat = soak_report.harness_rss_mib.flat
            && soak_report.harness_fds.flat
            && soak_report.server_rss_mib.flat
            && soak_report.server_fds.flat
            && (soak_report.big_frame.is_none() || soak_report.big_frame_released);
        r.passed &= flat;
        r.soak = Some(soak_report);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&r).context("serialising the report")?
        );
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).context("serialising the report")?
        );
    }
    Ok(r.passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_flags_growth_and_accepts_noise() {
        let flat: Vec<f64> = (0..40).map(|i| 100.0 + (i % 3) as f64).collect();
        assert!(plateau(&flat, 1.0, 0.01).flat);
        let growing: Vec<f64> = (0..40).map(|i| 100.0 + i as f64 * 2.0).collect();
        assert!(!plateau(&growing, 1.0, 0.01).flat);
        // Warm-up growth in the first half is ignored.
        let warm: Vec<f64> = (0..40)
            .map(|i| if i < 20 { i as f64 } else { 50.0 })
            .collect();
        assert!(plateau(&warm, 1.0, 0.01).flat);
    }

    #[test]
    fn done_set_stays_small_and_remembers() {
        let mut d = DoneSet::default();
        for c in (0..10_000).rev() {
            d.insert(c);
        }
        assert!(d.done.is_empty());
        assert!(d.contains(0) && d.contains(9_999) && !d.contains(10_000));
        d.insert(10_002);
        assert!(d.contains(10_002) && !d.contains(10_001));
        assert_eq!(d.done.len(), 3);
    }

    #[test]
    fn the_answer_is_recomputed_from_the_correlation_id() {
        let req = request_payload(42, 7, 64);
        assert_eq!(req.len(), 64);
        assert_eq!(&req[4..8], &42i32.to_be_bytes());
        let ans = expected_answer(42, 7, 64);
        assert_eq!(&ans[..4], &42i32.to_be_bytes());
        assert_eq!(&ans[4..], &req[8..]);
        assert_ne!(request_payload(43, 7, 64)[8..], req[8..]);
    }
}
