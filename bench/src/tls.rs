//! `mqnet-bench echo --tls`: the echo workload over TLS, mqnet's Selector (rustls driven sans-IO
//! on one thread) beside tokio-rustls (a current-thread runtime per side), in one run with the same
//! rustls configurations: TLS 1.3 only, one cipher suite (TLS13_AES_128_GCM_SHA256), a P-256
//! certificate generated at start-up. Each side runs the server on one thread and the clients on
//! another; C connections keep W requests of S bytes in flight, the server answers each with R
//! bytes. Reported: responses per second, payload MB/s both ways, latency percentiles.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use mqnet::net::tls::rustls;
use mqnet::net::{ChannelId, Selector, SocketOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};

use crate::error::{BenchError, Context as _};

/// One run's parameters.
#[derive(Debug, Clone, Copy)]
pub struct TlsEcho {
    /// Connections.
    pub conns: usize,
    /// Requests in flight per connection.
    pub inflight: usize,
    /// Request payload bytes.
    pub size: usize,
    /// Response payload bytes.
    pub resp_size: usize,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
}

/// One implementation's result.
#[derive(Debug)]
pub struct TlsRow {
    /// Which implementation.
    pub name: &'static str,
    /// Responses in the measured window.
    pub responses: u64,
    /// Measured seconds.
    pub secs: f64,
    /// Latency histogram (µs).
    pub hist: Histogram<u64>,
    /// The negotiated cipher suite.
    pub suite: String,
}

fn configs() -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), BenchError> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).context("tls echo")?;
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.key_pair.serialize_der(),
    ));
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let provider = Arc::new(provider);
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("tls echo")?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .context("tls echo")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).context("tls echo")?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("tls echo")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(server), Arc::new(client)))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

fn payload(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>())
}

/// Runs both implementations, mqnet first.
///
/// # Errors
/// A setup failure (certificates, sockets, runtime).
pub fn run(p: TlsEcho) -> Result<Vec<TlsRow>, BenchError> {
    let (server, client) = configs()?;
    Ok(vec![
        mqnet_run(p, server.clone(), client.clone())?,
        tokio_run(p, server, client)?,
    ])
}

// ----- mqnet -------------------------------------------------------------------------------------

fn mqnet_run(
    p: TlsEcho,
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsRow, BenchError> {
    let mut server = Selector::new().context("tls echo")?;
    let l = server
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("tls echo")?;
    server
        .set_listener_tls(l, Some(server_cfg))
        .context("tls echo")?;
    let addr = server.listener_addr(l).context("tls echo")?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let response = payload(p.resp_size);
    let srv = thread::spawn(move || {
        let mut got = Vec::new();
        while !s.load(Ordering::Relaxed) {
            if server.poll(Some(Duration::from_millis(50))).is_err() {
                break;
            }
            server.swap_completed_receives(&mut got);
            for r in got.drain(..) {
                let _ = server.send(r.channel, response.clone());
            }
        }
    });
    let result = mqnet_clients(p, addr, client_cfg);
    stop.store(true, Ordering::Relaxed);
    let _ = srv.join();
    result
}

fn mqnet_clients(
    p: TlsEcho,
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsRow, BenchError> {
    let mut sel = Selector::new().context("tls echo")?;
    sel.set_tls_client(Some(cfg));
    let request = payload(p.size);
    let mut sent: Vec<VecDeque<Instant>> = Vec::new();
    let mut ids: Vec<ChannelId> = Vec::new();
    for _ in 0..p.conns {
        ids.push(
            sel.connect(addr, &SocketOptions::default())
                .context("tls echo")?,
        );
        sent.push(VecDeque::with_capacity(p.inflight));
    }
    let index = |ids: &[ChannelId], ch: ChannelId| ids.iter().position(|c| *c == ch);
    let mut hist = histogram();
    let start = Instant::now();
    let measure_from = start + p.warmup;
    let end = measure_from + p.duration;
    let mut responses = 0u64;
    let mut suite = String::new();
    let mut got = Vec::new();
    while Instant::now() < end {
        sel.poll(Some(Duration::from_millis(50)))
            .context("tls echo")?;
        if let Some(d) = sel.disconnected().first() {
            return Err(BenchError::run(format!(
                "mqnet TLS client disconnected: {}",
                d.reason
            )));
        }
        let now = Instant::now();
        for ch in sel.connected().to_vec() {
            if suite.is_empty() {
                if let Some(s) = sel.tls_session(ch).and_then(|s| s.cipher_suite()) {
                    suite = format!("{:?}", s.suite());
                }
            }
            let Some(i) = index(&ids, ch) else { continue };
            for _ in 0..p.inflight {
                sent[i].push_back(now);
                sel.send(ch, request.clone()).context("tls echo")?;
            }
        }
        sel.swap_completed_receives(&mut got);
        for r in got.drain(..) {
            let Some(i) = index(&ids, r.channel) else {
                continue;
            };
            if let Some(t) = sent[i].pop_front() {
                if now >= measure_from {
                    responses += 1;
                    let _ = hist.record(now.saturating_duration_since(t).as_micros().max(1) as u64);
                }
            }
            sent[i].push_back(now);
            sel.send(r.channel, request.clone()).context("tls echo")?;
        }
    }
    Ok(TlsRow {
        name: "mqnet (rustls sans-IO)",
        responses,
        secs: p.duration.as_secs_f64(),
        hist,
        suite,
    })
}

// ----- tokio-rustls --------------------------------------------------------------------------------

fn tokio_run(
    p: TlsEcho,
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsRow, BenchError> {
    let listener =
        std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("tls echo")?;
    listener.set_nonblocking(true).context("tls echo")?;
    let addr = listener.local_addr().context("tls echo")?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let resp_size = p.resp_size;
    let srv = thread::spawn(move || -> Result<(), BenchError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tls echo")?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).context("tls echo")?;
            let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
            let response = {
                let mut v = (resp_size as u32).to_be_bytes().to_vec();
                v.extend_from_slice(&payload(resp_size));
                Bytes::from(v)
            };
            while !s.load(Ordering::Relaxed) {
                let accepted =
                    tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                let Ok(Ok((sock, _))) = accepted else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let acceptor = acceptor.clone();
                let response = response.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let (r, w) = tokio::io::split(tls);
                    let mut r = BufReader::with_capacity(64 * 1024, r);
                    let mut w = BufWriter::with_capacity(64 * 1024, w);
                    let mut body = Vec::new();
                    loop {
                        let Ok(len) = r.read_u32().await else { return };
                        body.resize(len as usize, 0);
                        if r.read_exact(&mut body).await.is_err()
                            || w.write_all(&response).await.is_err()
                        {
                            return;
                        }
                        if r.buffer().is_empty() && w.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
            Ok::<(), BenchError>(())
        })
    });
    let result = tokio_clients(p, addr, client_cfg);
    stop.store(true, Ordering::Relaxed);
    let _ = srv.join();
    result
}

fn tokio_clients(
    p: TlsEcho,
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsRow, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tls echo")?;
    let start = Instant::now();
    let measure_from = start + p.warmup;
    let end = measure_from + p.duration;
    rt.block_on(async move {
        let connector = tokio_rustls::TlsConnector::from(cfg);
        let request = {
            let mut v = (p.size as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&payload(p.size));
            Bytes::from(v)
        };
        let mut tasks = Vec::new();
        for _ in 0..p.conns {
            let connector = connector.clone();
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let sock = tokio::net::TcpStream::connect(addr)
                    .await
                    .context("tls echo")?;
                let _ = sock.set_nodelay(true);
                let name =
                    rustls::pki_types::ServerName::try_from("127.0.0.1").context("tls echo")?;
                let tls = connector.connect(name, sock).await.context("tls echo")?;
                let suite = tls
                    .get_ref()
                    .1
                    .negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
                    .unwrap_or_default();
                let (r, w) = tokio::io::split(tls);
                let mut r = BufReader::with_capacity(64 * 1024, r);
                let mut w = BufWriter::with_capacity(64 * 1024, w);
                let mut hist = histogram();
                let mut sent = VecDeque::with_capacity(p.inflight);
                let mut body = Vec::new();
                let mut responses = 0u64;
                for _ in 0..p.inflight {
                    sent.push_back(Instant::now());
                    w.write_all(&request).await.context("tls echo")?;
                }
                w.flush().await.context("tls echo")?;
                while Instant::now() < end {
                    let len = r.read_u32().await.context("tls echo")?;
                    body.resize(len as usize, 0);
                    r.read_exact(&mut body).await.context("tls echo")?;
                    let now = Instant::now();
                    if let Some(t) = sent.pop_front() {
                        if now >= measure_from {
                            responses += 1;
                            let _ = hist
                                .record(now.saturating_duration_since(t).as_micros().max(1) as u64);
                        }
                    }
                    sent.push_back(now);
                    w.write_all(&request).await.context("tls echo")?;
                    if r.buffer().is_empty() {
                        w.flush().await.context("tls echo")?;
                    }
                }
                Ok::<_, BenchError>((responses, hist, suite))
            }));
        }
        let mut hist = histogram();
        let mut responses = 0;
        let mut suite = String::new();
        for t in tasks {
            let (n, h, s) = t.await.context("tls echo")??;
            responses += n;
            hist.add(&h).context("tls echo")?;
            suite = s;
        }
        Ok(TlsRow {
            name: "tokio-rustls",
            responses,
            secs: p.duration.as_secs_f64(),
            hist,
            suite,
        })
    })
}

/// Prints the rows as a table.
pub fn print(p: &TlsEcho, rows: &[TlsRow]) {
    println!(
        "mqnet-bench echo --tls: {} conns x {} in flight, request {} B, response {} B, {:.1} s \
         measured after {:.1} s warm-up; TLS 1.3",
        p.conns,
        p.inflight,
        p.size,
        p.resp_size,
        p.duration.as_secs_f64(),
        p.warmup.as_secs_f64()
    );
    println!(
        "{:<24} {:>12} {:>10} {:>9} {:>9} {:>9}  cipher suite",
        "impl", "resp/s", "MB/s", "p50 us", "p99 us", "p99.9 us"
    );
    for r in rows {
        let rps = r.responses as f64 / r.secs;
        let mbps = rps * (p.size + p.resp_size) as f64 / 1e6;
        println!(
            "{:<24} {:>12.0} {:>10.1} {:>9} {:>9} {:>9}  {}",
            r.name,
            rps,
            mbps,
            r.hist.value_at_quantile(0.5),
            r.hist.value_at_quantile(0.99),
            r.hist.value_at_quantile(0.999),
            r.suite
        );
    }
}
