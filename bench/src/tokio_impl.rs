//! The tokio peer: tokio + tokio-util `Framed<TcpStream, LengthDelimitedCodec>`, on the
//! multi-thread (`tokio-mt`) or current-thread (`tokio-ct`) runtime.
//!
//! Written the fast way, as a careful tokio user would: frames are `feed()`-ed and the sink is
//! flushed once per batch (the client primes W requests then flushes; the server reads every frame
//! that is already available, feeds a response for each, then flushes once). Sending with
//! `send()` per frame costs a write syscall per frame and would make the comparison meaningless.
//! For the same reason the sink's backpressure boundary (8 KiB by default, past which `feed`
//! flushes by itself) is raised to [`WRITE_BATCH_BYTES`], so that a batch of 16 KiB frames also
//! leaves in one flush.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Builder, Runtime};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::proto::{check_response, request_correlation, CorrelationSeq, Encoder, MAX_PAYLOAD};
use crate::stats::{Recorder, RunResult, Window, Workload};

/// Bytes a Framed sink buffers before `feed` flushes by itself.
const WRITE_BATCH_BYTES: usize = 1024 * 1024;
/// Frames taken in one batch before flushing (bounds the time between flushes).
const MAX_BATCH: usize = 1024;
/// How long connecting all connections may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace period after the window's end before the run is abandoned.
const GRACE: Duration = Duration::from_secs(10);

/// Which tokio runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `new_multi_thread()`, one worker per core.
    MultiThread,
    /// `new_current_thread()`.
    CurrentThread,
}

impl Flavor {
    /// The implementation's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::MultiThread => "tokio-mt",
            Flavor::CurrentThread => "tokio-ct",
        }
    }

    fn runtime(self) -> io::Result<Runtime> {
        match self {
            Flavor::MultiThread => Builder::new_multi_thread().enable_all().build(),
            Flavor::CurrentThread => Builder::new_current_thread().enable_all().build(),
        }
    }
}

fn framed(stream: TcpStream) -> Framed<TcpStream, LengthDelimitedCodec> {
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_PAYLOAD)
        .new_codec();
    let mut framed = Framed::new(stream, codec);
    framed.set_backpressure_boundary(WRITE_BATCH_BYTES);
    framed
}

// ----- server ------------------------------------------------------------------------------------

async fn serve_conn(stream: TcpStream, resp_size: usize) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut framed = framed(stream);
    let mut enc = Encoder::new(resp_size);
    loop {
        let Some(Ok(first)) = framed.next().await else {
            return;
        };
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(req) = next.take() {
            let Some(corr) = request_correlation(&req) else {
                return; // not an echo request: close
            };
            drop(req);
            if framed.feed(enc.response(resp_size, corr)).await.is_err() {
                return;
            }
            batch += 1;
            if batch >= MAX_BATCH {
                break;
            }
            // Take the next frame only if it is already there.
            match framed.next().now_or_never() {
                Some(Some(Ok(r))) => next = Some(r),
                Some(Some(Err(_))) | Some(None) => {
                    let _ = SinkExt::<Bytes>::flush(&mut framed).await;
                    return;
                }
                None => {}
            }
        }
        if SinkExt::<Bytes>::flush(&mut framed).await.is_err() {
            return;
        }
    }
}

/// Runs the tokio echo server on `addr` until `stop` is set or `deadline` passes; `bound` is called
/// with the bound address once it listens.
///
/// # Errors
/// Building the runtime or binding failed.
pub fn run_server(
    flavor: Flavor,
    addr: SocketAddr,
    resp_size: usize,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    bound: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    let rt = flavor.runtime()?;
    let listener = rt.block_on(TcpListener::bind(addr))?;
    bound(listener.local_addr()?);
    rt.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_conn(stream, resp_size));
                }
                Err(e) => {
                    // EMFILE and the like: back off briefly instead of spinning.
                    log::warn!("tokio server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if stop.load(Ordering::Acquire) || deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
        }
    });
    rt.shutdown_background();
    Ok(())
}

// ----- client ------------------------------------------------------------------------------------

struct Shared {
    window: Window,
    count: u64,
    measured: AtomicU64,
    done: AtomicBool,
}

async fn client_conn(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
    index: usize,
    w: &Workload,
    shared: &Shared,
    rec: &mut Recorder,
) -> io::Result<()> {
    let mut enc = Encoder::new(w.size);
    let mut seq = CorrelationSeq::for_conn(index);
    let mut pending: VecDeque<(i32, Instant)> = VecDeque::with_capacity(w.inflight);
    let window = shared.window;
    let counting = shared.count != u64::MAX;

    let now = Instant::now();
    for _ in 0..w.inflight {
        let corr = seq.next_id();
        framed.feed(enc.request(w.size, corr)).await?;
        pending.push_back((corr, now));
    }
    SinkExt::<Bytes>::flush(&mut *framed).await?;

    loop {
        let Some(first) = framed.next().await else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        let now = Instant::now();
        let sending = now < window.end && !shared.done.load(Ordering::Relaxed);
        let mut next = Some(first?);
        let mut batch = 0;
        while let Some(frame) = next.take() {
            let Some((want, sent)) = pending.pop_front() else {
                rec.errors += 1;
                return Err(io::Error::other("unsolicited response"));
            };
            if check_response(&frame, w.resp_size, want).is_err() {
                rec.errors += 1;
            } else if now >= window.warm_end && now < window.end {
                rec.record(sent, now);
                if counting && shared.measured.fetch_add(1, Ordering::Relaxed) + 1 >= shared.count {
                    shared.done.store(true, Ordering::Relaxed);
                }
            }
            drop(frame);
            if sending {
                let corr = seq.next_id();
                framed.feed(enc.request(w.size, corr)).await?;
                pending.push_back((corr, now));
            }
            batch += 1;
            if batch >= MAX_BATCH {
                break;
            }
            match framed.next().now_or_never() {
                Some(Some(r)) => next = Some(r?),
                Some(None) => return Err(io::ErrorKind::UnexpectedEof.into()),
                None => {}
            }
        }
        if !sending {
            return Ok(());
        }
        SinkExt::<Bytes>::flush(&mut *framed).await?;
    }
}

/// Runs the tokio client of `w` against `addr` and summarises it.
///
/// # Errors
/// Building the runtime failed. Connection failures and bad responses are counted as errors.
pub fn run_client(flavor: Flavor, addr: SocketAddr, w: &Workload) -> io::Result<RunResult> {
    let rt = flavor.runtime()?;
    let (mut rec, window) = rt.block_on(async {
        let mut rec = Recorder::new();
        let mut streams = Vec::with_capacity(w.conns);
        for i in 0..w.conns {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    streams.push(framed(s));
                }
                Ok(Err(e)) => {
                    log::warn!("{}: connect {i} to {addr}: {e}", flavor.name());
                    rec.errors += 1;
                }
                Err(_) => {
                    log::warn!("{}: connect {i} to {addr} timed out", flavor.name());
                    rec.errors += 1;
                }
            }
        }
        let shared = Arc::new(Shared {
            window: Window::starting_now(w),
            count: w.count.unwrap_or(u64::MAX),
            measured: AtomicU64::new(0),
            done: AtomicBool::new(false),
        });
        let mut tasks = Vec::with_capacity(streams.len());
        for (i, mut framed) in streams.into_iter().enumerate() {
            let w = w.clone();
            let shared = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                let mut rec = Recorder::new();
                if let Err(e) = client_conn(&mut framed, i, &w, &shared, &mut rec).await {
                    log::warn!("tokio client: connection {i}: {e}");
                    rec.errors += 1;
                }
                rec
            }));
        }
        let give_up = tokio::time::Instant::from_std(shared.window.end + GRACE);
        for task in tasks {
            match tokio::time::timeout_at(give_up, task).await {
                Ok(Ok(r)) => rec.merge(&r),
                Ok(Err(e)) => {
                    log::warn!("tokio client: task failed: {e}");
                    rec.errors += 1;
                }
                Err(_) => {
                    log::warn!("tokio client: a connection did not finish in time");
                    rec.errors += 1;
                }
            }
        }
        (rec, shared.window)
    });
    rt.shutdown_background();
    Ok(RunResult::from_recorder(
        flavor.name(),
        w,
        &mut rec,
        &window,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(flavor: Flavor) {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            run_server(
                flavor,
                "127.0.0.1:0".parse().unwrap(),
                16,
                &flag,
                Some(Instant::now() + Duration::from_secs(30)),
                |a| tx.send(a).unwrap(),
            )
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let w = Workload {
            conns: 3,
            inflight: 4,
            size: 100,
            resp_size: 16,
            warmup: Duration::from_millis(50),
            duration: Duration::from_secs(5),
            count: Some(2_000),
            idle: 0,
        };
        let r = run_client(flavor, addr, &w).unwrap();
        stop.store(true, Ordering::Release);
        server.join().unwrap().unwrap();
        assert_eq!(r.errors, 0, "{r:?}");
        assert!(r.requests >= 2_000, "{r:?}");
    }

    #[test]
    fn tokio_mt_round() {
        round(Flavor::MultiThread);
    }

    #[test]
    fn tokio_ct_round() {
        round(Flavor::CurrentThread);
    }
}
