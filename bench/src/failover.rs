//! The failover transport in the harness.
//!
//! - `mqnet-bench echo --connect 'failover:(tcp://A,tcp://B)?...'`: the echo closed loop over one
//!   [`FailoverTransport`] (C × W requests in flight on the logical connection).
//! - `mqnet-bench failover`: the drill. It starts 2 or 3 mqnet echo servers as child processes,
//!   keeps W requests in flight over a failover transport, kills the live server (by PID) every
//!   N seconds and restarts it on its port a little later, for a bounded time; then it drains and
//!   reports requests sent / answered / lost / duplicated / failed (by reason), and the time from
//!   `Interrupted` to `Resumed` (p50, p99, max), with a standby (`backup=true`) and without.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use mqnet::client::ClientConfig;
use mqnet::failover::{
    FailoverEvent, FailoverOutcome, FailoverRequest, FailoverResponse, FailoverTransport,
    FailoverUri,
};

use crate::child::ChildProc;
use crate::error::{BenchError, Context};
use crate::proto::{check_response, Encoder, MIN_REQUEST, MIN_RESPONSE};
use crate::stats::{Recorder, RunResult, Window, Workload};

/// How long a server child may take to print its port.
const SERVER_START: Duration = Duration::from_secs(10);
/// How long the drill waits for outstanding requests after the last kill.
const DRAIN: Duration = Duration::from_secs(10);
/// One poll's longest wait.
const TICK: Duration = Duration::from_millis(5);

/// `mqnet-bench failover`.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Echo servers (2 or 3).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    servers: u8,
    /// Kill the live server every SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    kill_every: f64,
    /// Restart a killed server on its port after SECS seconds (less than --kill-every).
    #[arg(long, value_name = "SECS", default_value_t = 0.5)]
    restart_after: f64,
    /// Seconds of killing per mode.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Requests kept in flight.
    #[arg(short = 'w', long, default_value_t = 32)]
    inflight: usize,
    /// Request payload size in bytes.
    #[arg(short = 's', long, default_value_t = 100)]
    size: usize,
    /// initialReconnectDelay in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    initial_reconnect_delay: u64,
    /// Do not track in-flight requests for replay (trackMessages=false): requests in flight on a
    /// killed server then fail with `Disconnected`.
    #[arg(long)]
    no_track: bool,
    /// Which modes run.
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    modes: Modes,
}

/// Standby modes of the drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Modes {
    /// With a standby, then without.
    Both,
    /// backup=true only.
    Standby,
    /// backup=false only.
    NoStandby,
}

/// One echo server child and its port.
struct EchoChild {
    port: u16,
    proc: Option<ChildProc>,
}

fn spawn_server(exe: &Path, port: u16, lifetime: f64) -> Result<ChildProc, BenchError> {
    let args: Vec<String> = [
        "echo",
        "--role",
        "server",
        "--impl",
        "mqnet",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--resp-size",
        "16",
        "--lifetime",
        &format!("{lifetime}"),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    ChildProc::spawn("echo server", exe, &args).context("spawning an echo server")
}

/// Starts an echo server child and waits for its port.
fn start_server(exe: &Path, port: u16, lifetime: f64) -> Result<EchoChild, BenchError> {
    let mut proc = spawn_server(exe, port, lifetime)?;
    let line = proc.line(SERVER_START)?;
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse::<u16>().ok())
        .ok_or_else(|| BenchError::Child(format!("echo server printed `{line}`, not its port")))?;
    Ok(EchoChild {
        port,
        proc: Some(proc),
    })
}

/// What one drill run saw.
#[derive(Debug, Default)]
struct DrillResult {
    sent: u64,
    answered: u64,
    lost: u64,
    duplicated: u64,
    bad: u64,
    failed: BTreeMap<String, u64>,
    kills: u64,
    interruptions: u64,
    resumptions: u64,
    promotions: u64,
    replayed: u64,
    resume_us: Vec<u64>,
}

fn reason(o: &FailoverOutcome) -> String {
    match o {
        FailoverOutcome::Disconnected(c) => format!("disconnected ({c})"),
        other => other.to_string(),
    }
}

/// Tracks each request from send to its one completion.
struct Ledger {
    size: usize,
    resp_size: usize,
    enc: Encoder,
    open: HashMap<i32, Instant>,
    seen: HashMap<i32, ()>,
    res: DrillResult,
}

impl Ledger {
    fn send(&mut self, t: &mut FailoverTransport, now: Instant) {
        let corr = t.next_correlation_id();
        let frame = self.enc.request(self.size, corr);
        self.open.insert(corr, now);
        self.res.sent += 1;
        t.send(FailoverRequest::new(corr, frame), now);
    }

    fn complete(&mut self, r: FailoverResponse, rec: Option<(&mut Recorder, Instant)>) {
        let Some(sent) = self.open.remove(&r.correlation_id) else {
            // Completed before (or never sent): a duplicate.
            if self.seen.contains_key(&r.correlation_id) {
                self.res.duplicated += 1;
            } else {
                self.res.bad += 1;
            }
            return;
        };
        self.seen.insert(r.correlation_id, ());
        match &r.outcome {
            FailoverOutcome::Response(body) => {
                if check_response(body, self.resp_size, r.correlation_id).is_ok() {
                    self.res.answered += 1;
                    if let Some((rec, now)) = rec {
                        rec.record(sent, now);
                    }
                } else {
                    self.res.bad += 1;
                }
            }
            other => *self.res.failed.entry(reason(other)).or_default() += 1,
        }
    }
}

fn uri(ports: &[u16], query: &str) -> Result<FailoverUri, BenchError> {
    let list: Vec<String> = ports
        .iter()
        .map(|p| format!("tcp://127.0.0.1:{p}"))
        .collect();
    format!("failover:({})?{query}", list.join(","))
        .parse()
        .context("failover URI")
}

fn client_config(inflight: usize) -> ClientConfig {
    ClientConfig::default()
        .max_in_flight(inflight.max(1))
        .pipeline_unsent(true)
        .connections_max_idle(None)
}

fn drill_once(a: &FailoverArgs, standby: bool) -> Result<DrillResult, BenchError> {
    let exe = std::env::current_exe().context("current_exe")?;
    let lifetime = a.duration + DRAIN.as_secs_f64() + 60.0;
    let mut servers = Vec::new();
    for _ in 0..a.servers {
        servers.push(start_server(&exe, 0, lifetime)?);
    }
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let query = format!(
        "randomize=false&initialReconnectDelay={}&maxReconnectDelay=1000&trackMessages={}&\
         maxCacheSize={}&backup={standby}&timeout=5000",
        a.initial_reconnect_delay,
        !a.no_track,
        (a.inflight * (a.size + 16)).max(131_072)
    );
    let uri = uri(&ports, &query)?;
    let mut t = FailoverTransport::connect(&uri, client_config(a.inflight))
        .context("failover transport")?;
    let mut ledger = Ledger {
        size: a.size.max(MIN_REQUEST),
        resp_size: 16,
        enc: Encoder::new(a.size.max(MIN_REQUEST)),
        open: HashMap::new(),
        seen: HashMap::new(),
        res: DrillResult::default(),
    };
    let mut out = Vec::new();
    let start = Instant::now();
    let connect_by = start + SERVER_START;
    while !t.is_connected() {
        if Instant::now() > connect_by {
            return Err(BenchError::run("the failover transport never connected"));
        }
        t.poll_io(Some(TICK), Instant::now())
            .map(|()| {
                let now = std::time::Instant::now();
                t.handle(now)
            })
            .context("poll")?;
    }
    let every = Duration::from_secs_f64(a.kill_every.max(0.05));
    let restart_after = Duration::from_secs_f64(a.restart_after.clamp(0.0, a.kill_every));
    let end = Instant::now() + Duration::from_secs_f64(a.duration);
    let mut next_kill = Instant::now() + every;
    let mut restarts: Vec<(Instant, usize)> = Vec::new();
    let mut events = Vec::new();
    loop {
        let now = Instant::now();
        let sending = now < end;
        if !sending && (ledger.open.is_empty() || now > end + DRAIN) {
            break;
        }
        if sending {
            while ledger.open.len() < a.inflight {
                ledger.send(&mut t, now);
            }
            if now >= next_kill {
                next_kill += every;
                let live = t.current_uri().map(|u| u.port);
                if let Some(k) = servers.iter().position(|s| Some(s.port) == live) {
                    if let Some(mut p) = servers[k].proc.take() {
                        let _ = p.stop();
                        ledger.res.kills += 1;
                        restarts.push((now + restart_after, k));
                    }
                }
            }
        }
        let mut k = 0;
        while k < restarts.len() {
            if restarts[k].0 <= now {
                // Spawned without waiting for its port line: the drill keeps polling the
                // transport meanwhile (a blocked harness would count as time down).
                let (_, i) = restarts.remove(k);
                servers[i].proc = Some(spawn_server(&exe, servers[i].port, lifetime)?);
            } else {
                k += 1;
            }
        }
        t.poll_io(Some(TICK), now)
            .map(|()| {
                let now = std::time::Instant::now();
                t.handle_into(now, &mut out)
            })
            .context("poll")?;
        for r in out.drain(..) {
            ledger.complete(r, None);
        }
        events.extend(t.drain_events());
    }
    ledger.res.lost = ledger.open.len() as u64;
    for e in &events {
        match e {
            FailoverEvent::Interrupted { .. } => ledger.res.interruptions += 1,
            FailoverEvent::Resumed { .. } => ledger.res.resumptions += 1,
            _ => {}
        }
    }
    let m = t.metrics();
    ledger.res.promotions = m.promotions;
    ledger.res.replayed = m.replayed;
    for v in m.time_down_us.iter_recorded() {
        for _ in 0..v.count_at_value() {
            ledger.res.resume_us.push(v.value_iterated_to());
        }
    }
    ledger.res.resume_us.sort_unstable();
    drop(t);
    for s in &mut servers {
        if let Some(mut p) = s.proc.take() {
            let _ = p.stop();
        }
    }
    Ok(ledger.res)
}

fn pct(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

/// Runs the drill. Returns whether every mode met its targets (0 lost, 0 duplicated, 0 bad
/// responses, p99 resume within target).
///
/// # Errors
/// A server or the transport could not be started.
pub fn drill(a: &FailoverArgs) -> Result<bool, BenchError> {
    let modes: &[bool] = match a.modes {
        Modes::Both => &[true, false],
        Modes::Standby => &[true],
        Modes::NoStandby => &[false],
    };
    println!(
        "mqnet-bench failover: {} echo servers, kill the live one every {} s (restart after {} s) \
         for {} s, W={} S={} B, initialReconnectDelay={} ms, trackMessages={}",
        a.servers,
        a.kill_every,
        a.restart_after,
        a.duration,
        a.inflight,
        a.size,
        a.initial_reconnect_delay,
        !a.no_track
    );
    println!(
        "{:<10} {:>6} {:>9} {:>9} {:>5} {:>5} {:>6} {:>8} {:>9} {:>9} {:>9}  failed by reason",
        "mode",
        "kills",
        "sent",
        "answered",
        "lost",
        "dup",
        "failed",
        "replayed",
        "p50 ms",
        "p99 ms",
        "max ms"
    );
    let mut ok = true;
    for &standby in modes {
        let r = drill_once(a, standby)?;
        let failed: u64 = r.failed.values().sum();
        let p99 = pct(&r.resume_us, 0.99);
        let target_ms = if standby {
            50.0
        } else {
            // 2 × initialReconnectDelay + one connect (a loopback connect: well under 5 ms).
            2.0 * a.initial_reconnect_delay as f64 + 5.0
        };
        let reasons: Vec<String> = r.failed.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!(
            "{:<10} {:>6} {:>9} {:>9} {:>5} {:>5} {:>6} {:>8} {:>9.3} {:>9.3} {:>9.3}  {}",
            if standby { "standby" } else { "no-standby" },
            r.kills,
            r.sent,
            r.answered,
            r.lost,
            r.duplicated,
            failed,
            r.replayed,
            pct(&r.resume_us, 0.5),
            p99,
            r.resume_us.last().map_or(0.0, |m| *m as f64 / 1000.0),
            if reasons.is_empty() {
                "-".to_string()
            } else {
                reasons.join(", ")
            }
        );
        println!(
            "           interrupted {} resumed {} (promotions {}), resume target p99 <= {target_ms} ms",
            r.interruptions, r.resumptions, r.promotions
        );
        let met = r.lost == 0
            && r.duplicated == 0
            && r.bad == 0
            && r.answered + failed == r.sent
            && r.kills > 0
            && r.resumptions == r.interruptions
            && p99 <= target_ms;
        if !met {
            println!("           TARGET MISSED");
        }
        ok &= met;
    }
    Ok(ok)
}

/// The echo closed loop over a failover transport: `conns × inflight` requests in flight on the
/// one logical connection, every response checked, latency recorded inside the window.
///
/// # Errors
/// A bad URI, or the transport could not be created or never connected.
pub fn echo_client(connect: &str, w: &Workload) -> Result<RunResult, BenchError> {
    let uri: FailoverUri = with_schemes(connect).parse().context("--connect")?;
    let inflight = (w.conns * w.inflight).max(1);
    let mut t =
        FailoverTransport::connect(&uri, client_config(inflight)).context("failover transport")?;
    let mut ledger = Ledger {
        size: w.size.max(MIN_REQUEST),
        resp_size: w.resp_size.max(MIN_RESPONSE),
        enc: Encoder::new(w.size.max(MIN_REQUEST)),
        open: HashMap::new(),
        seen: HashMap::new(),
        res: DrillResult::default(),
    };
    let connect_by = Instant::now() + SERVER_START;
    while !t.is_connected() {
        if Instant::now() > connect_by || t.is_exhausted() {
            return Err(BenchError::Run(format!(
                "never connected to any of {connect}"
            )));
        }
        t.poll_io(Some(TICK), Instant::now())
            .map(|()| {
                let now = std::time::Instant::now();
                t.handle(now)
            })
            .context("poll")?;
    }
    let window = Window::starting_now(w);
    let mut rec = Recorder::new();
    let mut out = Vec::new();
    let count = w.count.unwrap_or(u64::MAX);
    loop {
        let now = Instant::now();
        let sending = now < window.end && rec.measured < count;
        if !sending && (ledger.open.is_empty() || now > window.end + DRAIN) {
            break;
        }
        if sending {
            while ledger.open.len() < inflight {
                ledger.send(&mut t, now);
            }
        }
        t.poll_io(Some(TICK), now)
            .map(|()| {
                let now = std::time::Instant::now();
                t.handle_into(now, &mut out)
            })
            .context("poll")?;
        let now = Instant::now();
        for r in out.drain(..) {
            let measured = now >= window.warm_end && now < window.end;
            ledger.complete(r, measured.then_some((&mut rec, now)));
        }
    }
    let r = &ledger.res;
    rec.errors = r.bad + r.duplicated + ledger.open.len() as u64 + r.failed.values().sum::<u64>();
    let mut result = RunResult::from_recorder("mqnet-failover", w, &mut rec, &window);
    result.mqnet_client = Some("failover".into());
    Ok(result)
}

/// `failover:(A,B)?q` with `tcp://` put in front of every server given as a bare `host:port` (a
/// harness convenience; the library's parser wants the scheme).
fn with_schemes(connect: &str) -> String {
    let connect = connect.trim();
    let (head, rest) = connect.split_at(connect.find(':').map_or(0, |i| i + 1));
    let (open, list, tail) = match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
        Some((list, tail)) => ("(", list, format!("){tail}")),
        None => ("", rest, String::new()),
    };
    let servers: Vec<String> = list
        .split(',')
        .map(|s| {
            let s = s.trim();
            if s.is_empty() || s.contains("://") {
                s.to_string()
            } else {
                format!("tcp://{s}")
            }
        })
        .collect();
    format!("{head}{open}{}{tail}", servers.join(","))
}

/// The address list of a failover URI, for labels.
pub fn label(connect: &str) -> String {
    match with_schemes(connect).parse::<FailoverUri>() {
        Ok(u) => {
            let a: Vec<String> = u.servers.iter().map(|s| s.address()).collect();
            format!("failover({})", a.join(","))
        }
        Err(_) => connect.to_string(),
    }
}

/// Whether `connect` is a failover URI rather than an address.
pub fn is_failover(connect: &str) -> bool {
    connect
        .trim_start()
        .get(..9)
        .is_some_and(|p| p.eq_ignore_ascii_case("failover:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses_get_the_tcp_scheme() {
        assert_eq!(
            with_schemes("failover:(127.0.0.1:1,tcp://h:2)?randomize=false"),
            "failover:(tcp://127.0.0.1:1,tcp://h:2)?randomize=false"
        );
        assert_eq!(
            with_schemes("failover:a:1,b:2"),
            "failover:tcp://a:1,tcp://b:2"
        );
        assert!(with_schemes("failover:(a:1,b:2)?backup=true")
            .parse::<FailoverUri>()
            .is_ok());
        assert!(is_failover(" FAILOVER:(a:1)"));
        assert!(!is_failover("127.0.0.1:9092"));
    }
}
