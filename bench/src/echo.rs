//! `mqnet-bench echo`: the Kafka-shaped echo workload, its modes (a server only, clients only, a
//! client over a failover transport or a connection group, or the whole matrix with server and
//! client as child processes) and the runner the default matrix shares.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::child::ChildProc;
use crate::error::{BenchError, Context};
use crate::metrics_report;
use crate::mqnet_impl::{self, ClientLayer};
use crate::proto::{MAX_PAYLOAD, MIN_REQUEST, MIN_RESPONSE};
use crate::raw_impl;
use crate::report::{self, Row};
use crate::stats::{RunResult, Workload};
use crate::tokio_impl::{self, Flavor};
use crate::{failover, group, progress, secs, sys, tls};

/// How long a server may take to print its port.
const SERVER_START: Duration = Duration::from_secs(10);
/// The longest opening the idle connections of `--idle` may take.
const IDLE_OPEN_LIMIT: Duration = Duration::from_secs(120);
/// Slack on top of a client's expected run time before it is killed.
const CLIENT_SLACK: Duration = Duration::from_secs(40);

/// An implementation of the echo workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Impl {
    /// tokio multi-thread runtime + tokio-util Framed/LengthDelimitedCodec.
    TokioMt,
    /// tokio current-thread runtime + tokio-util Framed/LengthDelimitedCodec.
    TokioCt,
    /// mqnet: mqnet::server::Server (direct handler) and a client on mqnet (see --mqnet-client).
    Mqnet,
    /// raw: a hand-rolled single-threaded mio client and server (no Selector, no NetworkClient):
    /// the ceiling.
    Raw,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::TokioMt => "tokio-mt",
            Impl::TokioCt => "tokio-ct",
            Impl::Mqnet => "mqnet",
            Impl::Raw => "raw",
        }
    }

    fn flavor(self) -> Option<Flavor> {
        match self {
            Impl::TokioMt => Some(Flavor::MultiThread),
            Impl::TokioCt => Some(Flavor::CurrentThread),
            Impl::Mqnet | Impl::Raw => None,
        }
    }
}

/// Which implementations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Peer {
    /// tokio-mt and tokio-ct.
    Tokio,
    /// mqnet only.
    Mqnet,
    /// tokio-mt, tokio-ct, mqnet and raw.
    All,
    /// raw only (the hand-rolled mio peer).
    Raw,
}

impl Peer {
    pub(crate) fn impls(self) -> Vec<Impl> {
        match self {
            Peer::Tokio => vec![Impl::TokioMt, Impl::TokioCt],
            Peer::Mqnet => vec![Impl::Mqnet],
            Peer::All => vec![Impl::TokioMt, Impl::TokioCt, Impl::Mqnet, Impl::Raw],
            Peer::Raw => vec![Impl::Raw],
        }
    }
}

/// The request layer of the mqnet client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum MqnetClient {
    /// Straight on the Selector (in-flight FIFO per connection).
    Selector,
    /// mqnet's NetworkClient (one node per connection).
    NetworkClient,
}

impl MqnetClient {
    pub(crate) fn layer(self) -> ClientLayer {
        match self {
            MqnetClient::Selector => ClientLayer::Selector,
            MqnetClient::NetworkClient => ClientLayer::NetworkClient,
        }
    }

    pub(crate) fn of(layer: ClientLayer) -> Self {
        match layer {
            ClientLayer::Selector => MqnetClient::Selector,
            ClientLayer::NetworkClient => MqnetClient::NetworkClient,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Server,
    Client,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct EchoArgs {
    /// Run only a server, listening on ADDR (of --impl, default mqnet), until killed or --duration.
    #[arg(long, value_name = "ADDR", conflicts_with = "connect")]
    listen: Option<String>,
    /// Run only clients (of --peer), against a server at ADDR that speaks the echo protocol.
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// Active connections (C).
    #[arg(short = 'c', long, default_value_t = 10)]
    conns: usize,
    /// Requests kept in flight on each connection (W).
    #[arg(short = 'w', long, default_value_t = 64)]
    inflight: usize,
    /// Request payload size S in bytes (at least 8).
    #[arg(short = 's', long, default_value_t = 100)]
    size: usize,
    /// Response payload size R in bytes (at least 4).
    #[arg(long, default_value_t = 16)]
    resp_size: usize,
    /// Measured seconds per run [default: 5].
    #[arg(short = 'd', long, value_name = "SECS")]
    duration: Option<f64>,
    /// Seconds of warm-up before measuring.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    warmup: f64,
    /// Stop measuring after this many responses (--duration still bounds the run).
    #[arg(long)]
    count: Option<u64>,
    /// Print one JSON line per run (impl, conns, inflight, size, rps, mbps, p50_us, p99_us,
    /// p999_us, max_us, errors, ...) instead of the table; mbps counts wire bytes both ways.
    #[arg(long)]
    json: bool,
    /// Implementations to run.
    #[arg(long, value_enum, default_value_t = Peer::All)]
    peer: Peer,
    /// The implementation of the server for --listen.
    #[arg(long = "impl", value_enum, value_name = "IMPL")]
    implementation: Option<Impl>,
    /// Write the latency CDF of every implementation in the run to FILE.svg.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Hold N idle connections open besides the active ones (raises RLIMIT_NOFILE).
    #[arg(long, value_name = "N", default_value_t = 0)]
    idle: usize,
    /// Pin server and client to this CPU (like `taskset -c CPU`).
    #[arg(long, value_name = "CPU")]
    pin: Option<usize>,
    /// Run server and client as threads of one process instead of separate processes.
    #[arg(long)]
    same_process: bool,
    /// The request layer of the mqnet client.
    #[arg(long, value_enum, default_value_t = MqnetClient::of(ClientLayer::default()))]
    mqnet_client: MqnetClient,
    /// Run the mqnet client over one connection group of N connections to the server (C × W
    /// requests in flight over the group, round robin, heartbeats on); the server runs in this
    /// process unless --connect names one.
    #[arg(long, value_name = "N")]
    group_size: Option<usize>,
    /// With --group-size: the healing drill (the in-process server killed for 2 s under load and
    /// restarted): time until every member is live again, requests lost (must be 0).
    #[arg(long, requires = "group_size")]
    drill: bool,
    /// Echo over TLS 1.3 (TLS13_AES_128_GCM_SHA256): mqnet's Selector beside tokio-rustls, with
    /// the same rustls configurations, server and clients on two threads per implementation.
    #[arg(long, conflicts_with_all = ["listen", "connect", "group_size"])]
    pub(crate) tls: bool,
    /// Print the mqnet client's NetworkClient metrics (Kafka's node names) at the end of its run,
    /// on stderr.
    #[arg(long)]
    pub(crate) stats: bool,
    /// Internal: the role of a child process spawned by the harness.
    #[arg(long, value_enum, hide = true)]
    role: Option<Role>,
    /// Internal: a server child's longest life, in seconds.
    #[arg(long, hide = true)]
    lifetime: Option<f64>,
}

/// One workload of a run: what to measure and where to pin.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) w: Workload,
    pub(crate) pin: Option<usize>,
    pub(crate) same_process: bool,
    pub(crate) layer: ClientLayer,
}

impl Spec {
    pub(crate) fn label(&self) -> String {
        report::workload_label(
            self.w.size,
            self.w.conns,
            self.w.inflight,
            self.w.idle,
            self.pin,
        )
    }

    /// How long a client may take, all told.
    pub(crate) fn client_budget(&self) -> Duration {
        // Opening idle connections is quick against most servers; against one that lets its
        // accept queue overflow, each overflow costs the connect a SYN retransmit (1 s).
        let idle = Duration::from_millis(self.w.idle as u64 * 8).min(IDLE_OPEN_LIMIT);
        self.w.warmup + self.w.duration + idle + CLIENT_SLACK
    }
}

fn workload(a: &EchoArgs) -> Result<Workload, BenchError> {
    if a.size < MIN_REQUEST || a.size > MAX_PAYLOAD {
        return Err(BenchError::Usage(format!(
            "--size must be in {MIN_REQUEST}..={MAX_PAYLOAD}"
        )));
    }
    if a.resp_size < MIN_RESPONSE || a.resp_size > MAX_PAYLOAD {
        return Err(BenchError::Usage(format!(
            "--resp-size must be in {MIN_RESPONSE}..={MAX_PAYLOAD}"
        )));
    }
    if a.conns == 0 || a.inflight == 0 {
        return Err(BenchError::usage(
            "--conns and --inflight must be at least 1",
        ));
    }
    let duration = secs("duration", a.duration.unwrap_or(5.0))?;
    if duration.is_zero() {
        return Err(BenchError::usage("--duration must be positive"));
    }
    Ok(Workload {
        conns: a.conns,
        inflight: a.inflight,
        size: a.size,
        resp_size: a.resp_size,
        warmup: secs("warmup", a.warmup)?,
        duration,
        count: a.count,
        idle: a.idle,
    })
}

fn resolve(addr: &str) -> Result<SocketAddr, BenchError> {
    addr.to_socket_addrs()
        .with_context(|| addr)?
        .next()
        .ok_or_else(|| BenchError::Usage(format!("{addr}: no address")))
}

// ----- roles (in this process) -------------------------------------------------------------------

/// Runs the server of `imp` on `addr` until `stop` or `deadline`; `bound` gets the address.
fn serve(
    imp: Impl,
    addr: SocketAddr,
    resp_size: usize,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    match imp.flavor() {
        Some(f) => tokio_impl::run_server(f, addr, resp_size, stop, deadline, bound),
        None if imp == Impl::Raw => raw_impl::run_server(addr, resp_size, stop, deadline, bound),
        None => mqnet_impl::run_server(addr, resp_size, stop, deadline, bound),
    }
}

/// Opens `n` idle connections to `addr` (bounded: one try each, 5 s per connect,
/// [`IDLE_OPEN_LIMIT`] in all).
fn open_idle(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, u64) {
    let mut held = Vec::with_capacity(n);
    let mut errors = 0u64;
    let started = Instant::now();
    let deadline = started + IDLE_OPEN_LIMIT;
    for i in 0..n {
        if Instant::now() >= deadline {
            errors += (n - i) as u64;
            break;
        }
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => {
                // Closed with a reset at the end, so 10,000 idle connections per run do not leave
                // 10,000 ports in TIME_WAIT for the next run.
                if let Err(e) = sys::set_linger_zero(&s) {
                    log::debug!("SO_LINGER on idle connection {i}: {e}");
                }
                held.push(s);
            }
            Err(e) => {
                if errors == 0 {
                    log::warn!("idle connection {i}: {e}");
                }
                errors += 1;
            }
        }
    }
    if errors > 0 {
        eprintln!("mqnet-bench: {errors} of {n} idle connections failed");
    }
    if n > 0 {
        log::info!(
            "{} idle connections open after {:.2} s",
            held.len(),
            started.elapsed().as_secs_f64()
        );
    }
    (held, errors)
}

/// Runs the client of `imp` against `addr` in this process, idle connections included.
fn measure(
    imp: Impl,
    addr: SocketAddr,
    w: &Workload,
    layer: ClientLayer,
) -> Result<RunResult, BenchError> {
    if w.idle > 0 {
        if let Err(e) = sys::raise_nofile() {
            log::warn!("raising RLIMIT_NOFILE: {e}");
        }
    }
    let (idle, idle_errors) = open_idle(addr, w.idle);
    let res = match imp.flavor() {
        Some(f) => tokio_impl::run_client(f, addr, w),
        None if imp == Impl::Raw => raw_impl::run_client(addr, w),
        None => mqnet_impl::run_client(addr, w, layer),
    };
    drop(idle);
    let mut r = res.with_context(|| format!("{} client", imp.name()))?;
    r.errors += idle_errors;
    r.cores = sys::cores();
    Ok(r)
}

/// The entry point of a child process spawned by the harness.
fn child_main(a: &EchoArgs, role: Role) -> Result<(), BenchError> {
    sys::die_with_parent();
    if let Some(cpu) = a.pin {
        sys::pin_to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    if let Err(e) = sys::raise_nofile() {
        log::warn!("raising RLIMIT_NOFILE: {e}");
    }
    let imp = a
        .implementation
        .ok_or_else(|| BenchError::usage("--role needs --impl"))?;
    match role {
        Role::Server => {
            let addr = resolve(
                a.listen
                    .as_deref()
                    .ok_or_else(|| BenchError::usage("server role needs --listen"))?,
            )?;
            let lifetime = secs("lifetime", a.lifetime.unwrap_or(3600.0))?;
            let stop = AtomicBool::new(false);
            serve(
                imp,
                addr,
                a.resp_size,
                &stop,
                Some(Instant::now() + lifetime),
                |bound| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "PORT {}", bound.port());
                    let _ = out.flush();
                },
            )
            .with_context(|| format!("{} server", imp.name()))
        }
        Role::Client => {
            let addr = resolve(
                a.connect
                    .as_deref()
                    .ok_or_else(|| BenchError::usage("client role needs --connect"))?,
            )?;
            let w = workload(a)?;
            let mut r = measure(imp, addr, &w, a.mqnet_client.layer())?;
            r.pinned_cpu = a.pin;
            let line = serde_json::to_string(&r).context("serialising the result")?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").context("writing the result")?;
            out.flush().context("writing the result")
        }
    }
}

// ----- orchestration -----------------------------------------------------------------------------

/// Runs `imp` on `spec`: server and client as separate child processes (or threads with
/// `same_process`), both stopped and reaped before this returns.
fn run_one(imp: Impl, spec: &Spec) -> Result<RunResult, BenchError> {
    let mut r = if spec.same_process {
        run_threads(imp, spec)?
    } else {
        run_processes(imp, spec)?
    };
    r.pinned_cpu = spec.pin;
    r.cores = sys::cores();
    Ok(r)
}

fn common_args(imp: Impl, spec: &Spec, role: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "echo".into(),
        "--role".into(),
        role.into(),
        "--impl".into(),
        imp.name().into(),
        "--resp-size".into(),
        spec.w.resp_size.to_string(),
    ];
    if let Some(cpu) = spec.pin {
        args.extend(["--pin".into(), cpu.to_string()]);
    }
    if imp == Impl::Mqnet {
        args.extend(["--mqnet-client".into(), spec.layer.name().into()]);
    }
    args
}

fn run_processes(imp: Impl, spec: &Spec) -> Result<RunResult, BenchError> {
    let exe = std::env::current_exe().context("current_exe")?;
    let budget = spec.client_budget();

    let mut server_args = common_args(imp, spec, "server");
    server_args.extend([
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--lifetime".into(),
        (budget + SERVER_START).as_secs().to_string(),
    ]);
    let name = format!("{} server", imp.name());
    let mut server = ChildProc::spawn(&name, &exe, &server_args).with_context(|| name.as_str())?;
    let line = server.line(SERVER_START)?;
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| BenchError::Child(format!("{name}: unexpected first line {line:?}")))?;

    let w = &spec.w;
    let mut client_args = common_args(imp, spec, "client");
    client_args.extend([
        "--connect".into(),
        format!("127.0.0.1:{port}"),
        "--conns".into(),
        w.conns.to_string(),
        "--inflight".into(),
        w.inflight.to_string(),
        "--size".into(),
        w.size.to_string(),
        "--duration".into(),
        w.duration.as_secs_f64().to_string(),
        "--warmup".into(),
        w.warmup.as_secs_f64().to_string(),
        "--idle".into(),
        w.idle.to_string(),
    ]);
    if let Some(n) = w.count {
        client_args.extend(["--count".into(), n.to_string()]);
    }
    let cname = format!("{} client", imp.name());
    let mut client =
        ChildProc::spawn(&cname, &exe, &client_args).with_context(|| cname.as_str())?;
    let line = client.line(budget);
    // Stop both before looking at the result: the client has printed (or failed), the server is
    // no longer needed.
    let client_status = client.finish(Duration::from_secs(5));
    let server_status = server.stop();
    log::debug!(
        "{} pids {} / {}: client {client_status:?}, server {server_status:?}",
        imp.name(),
        client.pid(),
        server.pid()
    );
    let line = line?;
    serde_json::from_str::<RunResult>(&line)
        .map_err(|e| BenchError::Child(format!("{cname}: bad result line: {e}")))
}

fn run_threads(imp: Impl, spec: &Spec) -> Result<RunResult, BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let flag = Arc::clone(&stop);
    let resp = spec.w.resp_size;
    let pin = spec.pin;
    let layer = spec.layer;
    let lifetime = spec.client_budget() + SERVER_START;
    let server = thread::spawn(move || {
        if let Some(cpu) = pin {
            sys::pin_to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
        }
        serve(
            imp,
            "127.0.0.1:0".parse().expect("valid address"),
            resp,
            &flag,
            Some(Instant::now() + lifetime),
            |a| {
                let _ = tx.send(a);
            },
        )
        .context("serving")
    });
    let result = (|| {
        let addr = rx
            .recv_timeout(SERVER_START)
            .map_err(|_| BenchError::Child(format!("{} server did not start", imp.name())))?;
        let w = spec.w.clone();
        let client = thread::spawn(move || {
            if let Some(cpu) = pin {
                sys::pin_to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
            }
            measure(imp, addr, &w, layer)
        });
        // The client's run is bounded by its own window and grace periods.
        client
            .join()
            .map_err(|_| BenchError::Child(format!("{} client panicked", imp.name())))?
    })();
    stop.store(true, Ordering::Release);
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("{} server: {e:#}", imp.name()),
        Err(_) => log::warn!("{} server panicked", imp.name()),
    }
    result
}

/// Runs every implementation on every spec, then prints the table (or JSON lines) and writes the
/// plot. Returns whether every run succeeded without errors.
pub(crate) fn run_matrix(
    specs: &[Spec],
    impls: &[Impl],
    json: bool,
    plot: Option<&PathBuf>,
) -> bool {
    let cores = sys::cores();
    let mode = if specs.iter().any(|s| s.same_process) {
        "server and client as threads of one process"
    } else {
        "server and client of each implementation in separate processes"
    };
    let w0 = &specs[0].w;
    let header = format!(
        "mqnet-bench echo: {cores} cores; {mode}; {} s warm-up + {} per run; response {} B; \
         mqnet client on the {}",
        w0.warmup.as_secs_f64(),
        match w0.count {
            Some(n) => format!("{n} responses (at most {} s)", w0.duration.as_secs_f64()),
            None => format!("{} s measured", w0.duration.as_secs_f64()),
        },
        w0.resp_size,
        match specs[0].layer {
            ClientLayer::Selector => "Selector",
            ClientLayer::NetworkClient => "NetworkClient",
        }
    );
    if json {
        eprintln!("{header}");
    } else {
        println!("{header}");
    }
    let pb = progress(specs.len() * impls.len(), json);
    let mut rows = Vec::new();
    let mut ok = true;
    for spec in specs {
        let label = spec.label();
        let mut row = Row {
            label: label.clone(),
            results: Vec::new(),
        };
        for &imp in impls {
            pb.set_message(format!("{label} · {}", imp.name()));
            let r = run_one(imp, spec);
            match &r {
                Ok(res) => {
                    if res.errors > 0 {
                        ok = false;
                        pb.suspend(|| eprintln!("{label} {}: {} errors", imp.name(), res.errors));
                    }
                    if json {
                        pb.suspend(|| println!("{}", report::json_line(res)));
                    }
                }
                Err(e) => {
                    ok = false;
                    pb.suspend(|| eprintln!("{label} {}: FAILED: {e:#}", imp.name()));
                }
            }
            row.results.push((imp.name().to_string(), r));
            pb.inc(1);
        }
        rows.push(row);
    }
    pb.finish_and_clear();
    if !json {
        print!("{}", report::table(&rows));
    }
    if let Some(path) = plot {
        let svg = report::svg(
            &rows,
            &format!("mqnet-bench echo latency CDF ({cores} cores)"),
        );
        match std::fs::write(path, svg) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("writing {}: {e}", path.display());
                ok = false;
            }
        }
    }
    ok
}

/// `mqnet-bench echo`: one of its modes, chosen by the flags.
pub(crate) fn echo(a: &EchoArgs) -> Result<bool, BenchError> {
    if a.stats {
        metrics_report::enable_echo_stats();
    }
    if let Some(role) = a.role {
        child_main(a, role)?;
        return Ok(true);
    }
    if a.tls {
        return tls_pairs(a);
    }
    if let Some(listen) = &a.listen {
        serve_only(a, listen)?;
        return Ok(true);
    }
    let w = workload(a)?;
    match (a.connect.as_deref(), a.group_size) {
        (Some(connect), _) if failover::is_failover(connect) => failover_client(a, connect, &w),
        (_, Some(n)) => group_echo(a, &w, n.max(1)),
        (Some(connect), None) => clients_only(a, connect, w),
        (None, None) => local_pairs(a, w),
    }
}

/// `echo --tls`: TLS echo pairs of mqnet and tokio-rustls (see `tls.rs`).
fn tls_pairs(a: &EchoArgs) -> Result<bool, BenchError> {
    let p = tls::TlsEcho {
        conns: a.conns.max(1),
        inflight: a.inflight.max(1),
        size: a.size,
        resp_size: a.resp_size,
        warmup: Duration::from_secs_f64(a.warmup.max(0.0)),
        duration: Duration::from_secs_f64(a.duration.unwrap_or(5.0).max(0.1)),
    };
    let rows = tls::run(p)?;
    tls::print(&p, &rows);
    Ok(true)
}

/// `echo --listen ADDR`: only a server (of `--impl`), until killed or `--duration`.
fn serve_only(a: &EchoArgs, listen: &str) -> Result<(), BenchError> {
    let addr = resolve(listen)?;
    let imp = a.implementation.unwrap_or(match a.peer {
        Peer::Tokio => Impl::TokioMt,
        Peer::Mqnet | Peer::All => Impl::Mqnet,
        Peer::Raw => Impl::Raw,
    });
    if let Some(cpu) = a.pin {
        sys::pin_to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    if let Err(e) = sys::raise_nofile() {
        log::warn!("raising RLIMIT_NOFILE: {e}");
    }
    let deadline = match a.duration {
        Some(d) => Some(Instant::now() + secs("duration", d)?),
        None => None,
    };
    let stop = AtomicBool::new(false);
    serve(imp, addr, a.resp_size, &stop, deadline, |bound| {
        println!(
            "mqnet-bench: {} echo server listening on {bound}",
            imp.name()
        );
    })
    .with_context(|| format!("{} server", imp.name()))?;
    Ok(())
}

/// `echo --connect failover:(...)`: one logical connection over a failover transport (C × W
/// requests in flight on it).
fn failover_client(a: &EchoArgs, connect: &str, w: &Workload) -> Result<bool, BenchError> {
    let label = report::workload_label(w.size, w.conns, w.inflight, w.idle, a.pin);
    let r = failover::echo_client(connect, w);
    let ok = r.as_ref().is_ok_and(|r| r.errors == 0);
    if let (true, Ok(res)) = (a.json, &r) {
        println!("{}", report::json_line(res));
    }
    if let Err(e) = &r {
        eprintln!("mqnet-failover: FAILED: {e:#}");
    }
    let rows = [Row {
        label: format!("{label} → {}", failover::label(connect)),
        results: vec![("mqnet-failover".to_string(), r)],
    }];
    if !a.json {
        print!("{}", report::table(&rows));
    }
    Ok(ok)
}

/// `echo --connect ADDR`: only clients (of `--peer`) against a server elsewhere.
fn clients_only(a: &EchoArgs, connect: &str, w: Workload) -> Result<bool, BenchError> {
    let addr = resolve(connect)?;
    if let Some(cpu) = a.pin {
        sys::pin_to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
    }
    let impls = a.peer.impls();
    let label = report::workload_label(w.size, w.conns, w.inflight, w.idle, a.pin);
    let pb = progress(impls.len(), a.json);
    let mut row = Row {
        label: format!("{label} → {addr}"),
        results: Vec::new(),
    };
    let mut ok = true;
    for imp in impls {
        pb.set_message(imp.name());
        let r = measure(imp, addr, &w, a.mqnet_client.layer()).map(|mut r| {
            r.pinned_cpu = a.pin;
            r
        });
        match &r {
            Ok(res) if a.json => pb.suspend(|| println!("{}", report::json_line(res))),
            Ok(_) => {}
            Err(e) => {
                ok = false;
                pb.suspend(|| eprintln!("{}: FAILED: {e:#}", imp.name()));
            }
        }
        ok &= r.as_ref().is_ok_and(|r| r.errors == 0);
        row.results.push((imp.name().to_string(), r));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let rows = [row];
    if !a.json {
        println!(
            "mqnet-bench echo: clients against {addr}; {} cores",
            sys::cores()
        );
        print!("{}", report::table(&rows));
    }
    if let Some(path) = &a.plot {
        std::fs::write(path, report::svg(&rows, "mqnet-bench echo latency CDF"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ok)
}

/// `echo` without `--listen`/`--connect`: server and client of each implementation as child
/// processes (or threads with `--same-process`), one workload.
fn local_pairs(a: &EchoArgs, w: Workload) -> Result<bool, BenchError> {
    let spec = Spec {
        w,
        pin: a.pin,
        same_process: a.same_process,
        layer: a.mqnet_client.layer(),
    };
    Ok(run_matrix(
        &[spec],
        &a.peer.impls(),
        a.json,
        a.plot.as_ref(),
    ))
}

/// `echo --group-size N [--drill]`: see `group.rs`.
fn group_echo(a: &EchoArgs, w: &Workload, n: usize) -> Result<bool, BenchError> {
    if a.drill {
        let d = group::run_drill(w, n)?;
        println!("{}", d.report());
        return Ok(d.ok());
    }
    let addr = a.connect.as_deref().map(resolve).transpose()?;
    let r = group::run_throughput(addr, w, n)?;
    if a.json {
        println!("{}", report::json_line(&r));
    } else {
        let label = report::workload_label(w.size, w.conns, w.inflight, w.idle, a.pin);
        let rows = [Row {
            label: format!("{label}, group of {n}"),
            results: vec![("mqnet".to_string(), Ok(r.clone()))],
        }];
        print!("{}", report::table(&rows));
    }
    Ok(r.errors == 0)
}
