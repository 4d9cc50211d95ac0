//! A minimal hand-rolled mio echo client: no NetworkClient, no Selector, one contiguous write
//! buffer and one contiguous read buffer per connection. It speaks the harness's echo protocol and
//! does the harness client's work per request (build the request, check the response's size and
//! correlation id against a per-connection FIFO, record send→response latency in an HDR histogram),
//! so its rate is the ceiling of a single-threaded client on this machine.
//!
//! ```text
//! mqnet-bench echo --listen 127.0.0.1:9000 --impl mqnet &
//! cargo run --release -p mqnet-bench --example raw_mio_client -- --connect 127.0.0.1:9000 -c 10 -w 64 -s 100 -d 3
//! ```
//!
//! Prints one JSON line: rps, errors, p50/p99 latency (µs).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

struct Conn {
    stream: TcpStream,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    pending: VecDeque<(i32, Instant)>,
    next: i32,
    connected: bool,
}

struct Args {
    connect: SocketAddr,
    conns: usize,
    inflight: usize,
    size: usize,
    resp_size: usize,
    duration: f64,
    warmup: f64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        connect: "127.0.0.1:9000".parse().map_err(|e| format!("{e}"))?,
        conns: 10,
        inflight: 64,
        size: 100,
        resp_size: 16,
        duration: 3.0,
        warmup: 1.0,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).ok_or(format!("{} needs a value", v[i]))?;
        let num = || val.parse::<f64>().map_err(|e| format!("{}: {e}", v[i]));
        match v[i].as_str() {
            "--connect" => a.connect = val.parse().map_err(|e| format!("--connect: {e}"))?,
            "-c" | "--conns" => a.conns = num()? as usize,
            "-w" | "--inflight" => a.inflight = num()? as usize,
            "-s" | "--size" => a.size = (num()? as usize).max(8),
            "--resp-size" => a.resp_size = (num()? as usize).max(4),
            "-d" | "--duration" => a.duration = num()?,
            "--warmup" => a.warmup = num()?,
            other => return Err(format!("unknown argument {other}")),
        }
        i += 2;
    }
    Ok(a)
}

/// Appends one request (prefix, api_key 0, api_version 0, correlation id, zero padding).
#[inline]
fn put_request(buf: &mut Vec<u8>, size: usize, corr: i32) {
    buf.extend_from_slice(&(size as u32).to_be_bytes());
    buf.extend_from_slice(&[0, 0, 0, 0]);
    buf.extend_from_slice(&corr.to_be_bytes());
    let at = buf.len();
    buf.resize(at + size - 8, 0);
}

fn flush(c: &mut Conn) -> io::Result<()> {
    while c.wpos < c.wbuf.len() {
        match c.stream.write(&c.wbuf[c.wpos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if c.wpos == c.wbuf.len() {
        c.wbuf.clear();
        c.wpos = 0;
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let a = parse()?;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        let mut stream = TcpStream::connect(a.connect).map_err(|e| e.to_string())?;
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        conns.push(Conn {
            stream,
            wbuf: Vec::with_capacity(a.inflight * (a.size + 4) * 2),
            wpos: 0,
            rbuf: vec![0; (a.inflight * (a.resp_size + 4) * 2).max(256 * 1024)],
            rstart: 0,
            rend: 0,
            pending: VecDeque::with_capacity(a.inflight),
            next: ((i as i64 * (1 << 20)) % i64::from(i32::MAX)) as i32,
            connected: false,
        });
    }
    let mut events = Events::with_capacity(1024);
    // Connect.
    let connect_deadline = Instant::now() + Duration::from_secs(10);
    while conns.iter().any(|c| !c.connected) {
        if Instant::now() >= connect_deadline {
            return Err("connect timed out".into());
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if !c.connected && ev.is_writable() && c.stream.peer_addr().is_ok() {
                c.stream.set_nodelay(true).map_err(|e| e.to_string())?;
                c.connected = true;
            }
        }
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut measured = 0u64;
    let mut errors = 0u64;
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(a.warmup);
    let end = warm_end + Duration::from_secs_f64(a.duration);
    for c in &mut conns {
        for _ in 0..a.inflight {
            let corr = c.next;
            c.next = if corr == i32::MAX { 0 } else { corr + 1 };
            put_request(&mut c.wbuf, a.size, corr);
            c.pending.push_back((corr, start));
        }
        flush(c).map_err(|e| e.to_string())?;
    }
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        poll.poll(
            &mut events,
            Some((end - now).min(Duration::from_millis(100))),
        )
        .map_err(|e| e.to_string())?;
        let now = Instant::now();
        let sending = now < end;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if ev.is_readable() {
                loop {
                    if c.rstart == c.rend {
                        c.rstart = 0;
                        c.rend = 0;
                    } else if c.rbuf.len() - c.rend < 4096 {
                        c.rbuf.copy_within(c.rstart..c.rend, 0);
                        c.rend -= c.rstart;
                        c.rstart = 0;
                    }
                    let want = c.rbuf.len() - c.rend;
                    let n = match c.stream.read(&mut c.rbuf[c.rend..]) {
                        Ok(0) => return Err("server closed".into()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.to_string()),
                    };
                    c.rend += n;
                    // Every whole frame.
                    while c.rend - c.rstart >= 4 {
                        let h = &c.rbuf[c.rstart..c.rstart + 4];
                        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                        if c.rend - c.rstart < 4 + len {
                            break;
                        }
                        let p = &c.rbuf[c.rstart + 4..c.rstart + 4 + len];
                        c.rstart += 4 + len;
                        let Some((want_corr, sent)) = c.pending.pop_front() else {
                            errors += 1;
                            continue;
                        };
                        let ok = len == a.resp_size
                            && i32::from_be_bytes([p[0], p[1], p[2], p[3]]) == want_corr;
                        if !ok {
                            errors += 1;
                        } else if now >= warm_end {
                            let ns = now.saturating_duration_since(sent).as_nanos();
                            hist.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
                            measured += 1;
                        }
                        if sending {
                            let corr = c.next;
                            c.next = if corr == i32::MAX { 0 } else { corr + 1 };
                            put_request(&mut c.wbuf, a.size, corr);
                            c.pending.push_back((corr, now));
                        }
                    }
                    if n < want {
                        break; // short read: the receive queue is empty (edge-triggered)
                    }
                }
            }
            flush(c).map_err(|e| e.to_string())?;
        }
    }
    let secs = end.saturating_duration_since(warm_end).as_secs_f64();
    println!(
        "{{\"impl\":\"raw-mio\",\"conns\":{},\"inflight\":{},\"size\":{},\"rps\":{:.0},\"errors\":{},\"p50_us\":{:.1},\"p99_us\":{:.1}}}",
        a.conns,
        a.inflight,
        a.size,
        measured as f64 / secs,
        errors,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0
    );
    Ok(())
}
