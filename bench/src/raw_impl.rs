//! The `raw` implementation of the echo workload: a hand-rolled single-threaded mio client and
//! server with no Selector and no NetworkClient, the ceiling every other row is read against.
//!
//! - Server: one read buffer per connection, every whole frame parsed in place, each response
//!   appended to the connection's one write buffer, one `write` per readable event (and on
//!   writable events while bytes are left). Malformed requests close their connection.
//! - Client: C connections × W requests in flight, closed loop; requests appended to one
//!   contiguous write buffer per connection (above `VECTORED_PADDING_ABOVE` bytes of padding,
//!   only their fixed fields, written with one shared padding buffer by a vectored write);
//!   every response's size and correlation id checked
//!   against a per-connection FIFO; send→response latency recorded like the other clients.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::proto::{
    request_correlation, CorrelationSeq, MIN_REQUEST, MIN_RESPONSE, PREFIX, VECTORED_PADDING_ABOVE,
};
use crate::stats::{Recorder, RunResult, Window, Workload};

/// Read buffer of each connection (grown when one frame is larger).
const READ_BUF: usize = 256 * 1024;
/// Below this much free space the read buffer's unparsed bytes move to its front.
const READ_MIN_SPACE: usize = 4096;
/// The longest a poll blocks (so the stop flag and the window end are seen promptly).
const POLL_TICK: Duration = Duration::from_millis(100);
/// How long connecting all client connections may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The listener's token (connections use their index).
const LISTENER: Token = Token(usize::MAX - 1);
/// Largest frame either side accepts.
const MAX_FRAME: usize = crate::proto::MAX_PAYLOAD;

/// A connection's buffers.
struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

impl Conn {
    fn new(stream: TcpStream, wcap: usize) -> Self {
        Conn {
            stream,
            rbuf: vec![0; READ_BUF],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(wcap),
            wpos: 0,
        }
    }

    /// Makes room to read: drops parsed bytes, moves a partial frame to the front, grows for a
    /// frame larger than the buffer.
    fn room(&mut self) {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < READ_MIN_SPACE {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
            if self.rbuf.len() - self.rend < READ_MIN_SPACE {
                let len = self.rbuf.len() * 2;
                self.rbuf.resize(len, 0);
            }
        }
    }

    /// The next whole frame's payload range, if one is buffered.
    fn next_frame(&mut self) -> io::Result<Option<(usize, usize)>> {
        let avail = self.rend - self.rstart;
        if avail < PREFIX {
            return Ok(None);
        }
        let h = &self.rbuf[self.rstart..self.rstart + PREFIX];
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame too large",
            ));
        }
        if avail < PREFIX + len {
            return Ok(None);
        }
        let start = self.rstart + PREFIX;
        self.rstart = start + len;
        Ok(Some((start, len)))
    }

    /// Writes the write buffer until `WouldBlock` or empty.
    fn flush(&mut self) -> io::Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
    }
}

/// Bytes of a request's fixed fields on the wire: prefix, api_key, api_version, correlation id.
const HEAD: usize = PREFIX + MIN_REQUEST;

/// Slices one vectored write gathers at most (two per request).
const WRITE_SLICES: usize = 64;

impl Conn {
    /// As [`flush`](Conn::flush) for a write buffer of request heads (`HEAD` bytes each), each
    /// followed on the wire by `pad`: writes them with `writev` until `WouldBlock` or all left.
    /// `wpos` counts the wire bytes written.
    fn flush_heads(&mut self, pad: &[u8]) -> io::Result<()> {
        let frame = HEAD + pad.len();
        let total = self.wbuf.len() / HEAD * frame;
        while self.wpos < total {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut n = 0;
            let mut pos = self.wpos;
            while pos < total && n + 2 <= WRITE_SLICES {
                let (k, off) = (pos / frame, pos % frame);
                if off < HEAD {
                    slices[n] = IoSlice::new(&self.wbuf[k * HEAD + off..(k + 1) * HEAD]);
                    n += 1;
                }
                slices[n] = IoSlice::new(&pad[off.saturating_sub(HEAD)..]);
                n += 1;
                pos = (k + 1) * frame;
            }
            match self.stream.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => self.wpos += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wpos == total {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
    }
}

/// Reads `c` until `WouldBlock` (or a short read), calling `frame` with each whole payload.
/// Returns `Ok(false)` when the peer closed.
fn read_frames(
    c: &mut Conn,
    mut frame: impl FnMut(&[u8], &mut Vec<u8>) -> io::Result<()>,
) -> io::Result<bool> {
    loop {
        c.room();
        let want = c.rbuf.len() - c.rend;
        let n = match c.stream.read(&mut c.rbuf[c.rend..]) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        c.rend += n;
        while let Some((start, len)) = c.next_frame()? {
            frame(&c.rbuf[start..start + len], &mut c.wbuf)?;
        }
        if n < want {
            // A short read: the receive queue was empty (edge-triggered readiness).
            return Ok(true);
        }
    }
}

/// Runs the raw echo server on `addr` until `stop` is set or `deadline` passes; `bound` is called
/// with the bound address once it listens.
///
/// # Errors
/// Creating, binding or polling failed.
pub fn run_server(
    addr: SocketAddr,
    resp_size: usize,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    bound: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    let resp_size = resp_size.max(MIN_RESPONSE);
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    bound(listener.local_addr()?);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut requests = 0u64;
    let mut malformed = 0u64;
    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let timeout = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) => left.min(POLL_TICK),
                None => break,
            },
            None => POLL_TICK,
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let slot =
                                conns.iter().position(Option::is_none).unwrap_or_else(|| {
                                    conns.push(None);
                                    conns.len() - 1
                                });
                            poll.registry().register(
                                &mut stream,
                                Token(slot),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns[slot] = Some(Conn::new(stream, 64 * 1024));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::warn!("raw server: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let slot = ev.token().0;
            let Some(Some(c)) = conns.get_mut(slot) else {
                continue;
            };
            let mut open = true;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                let read = read_frames(c, |req, out| {
                    requests += 1;
                    let Some(corr) = request_correlation(req) else {
                        malformed += 1;
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "not an echo request",
                        ));
                    };
                    out.extend_from_slice(&(resp_size as u32).to_be_bytes());
                    out.extend_from_slice(&corr.to_be_bytes());
                    out.resize(out.len() + resp_size - MIN_RESPONSE, 0);
                    Ok(())
                });
                open = matches!(read, Ok(true));
            }
            if open && c.flush().is_err() {
                open = false;
            }
            if !open {
                if let Some(mut c) = conns[slot].take() {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
            }
        }
    }
    log::info!("raw server: {requests} requests, {malformed} malformed");
    Ok(())
}

/// A client connection and its in-flight FIFO.
struct ClientConn {
    conn: Conn,
    seq: CorrelationSeq,
    pending: VecDeque<(i32, Instant)>,
    up: bool,
}

/// Appends one echo request (prefix, api_key 0, api_version 0, correlation id, zero padding),
/// without its padding when `vectored` (the padding then leaves from the shared buffer).
#[inline]
fn put_request(buf: &mut Vec<u8>, size: usize, corr: i32, vectored: bool) {
    buf.extend_from_slice(&(size as u32).to_be_bytes());
    buf.extend_from_slice(&[0, 0, 0, 0]);
    buf.extend_from_slice(&corr.to_be_bytes());
    if !vectored {
        buf.resize(buf.len() + size - MIN_REQUEST, 0);
    }
}

/// Runs the raw client of `w` against `addr` and summarises it.
///
/// # Errors
/// Creating or polling the poller failed.
pub fn run_client(addr: SocketAddr, w: &Workload) -> io::Result<RunResult> {
    let size = w.size.max(MIN_REQUEST);
    let resp_size = w.resp_size.max(MIN_RESPONSE);
    let vectored = size - MIN_REQUEST > VECTORED_PADDING_ABOVE;
    let pad = if vectored {
        vec![0u8; size - MIN_REQUEST]
    } else {
        Vec::new()
    };
    // Bytes per request in the write buffer.
    let wire = if vectored { HEAD } else { size + PREFIX };
    let flush = |conn: &mut Conn| {
        if vectored {
            conn.flush_heads(&pad)
        } else {
            conn.flush()
        }
    };
    let mut rec = Recorder::new();
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(w.conns);
    for i in 0..w.conns {
        let mut stream = TcpStream::connect(addr)?;
        poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(ClientConn {
            conn: Conn::new(stream, w.inflight * wire * 2),
            seq: CorrelationSeq::for_conn(i),
            pending: VecDeque::with_capacity(w.inflight),
            up: false,
        });
    }
    let mut events = Events::with_capacity(1024);
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    while conns.iter().any(|c| !c.up) {
        let now = Instant::now();
        if now >= connect_deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "raw client: connect timed out",
            ));
        }
        poll.poll(&mut events, Some((connect_deadline - now).min(POLL_TICK)))?;
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            if c.up {
                continue;
            }
            if let Ok(Some(e)) | Err(e) = c.conn.stream.take_error() {
                return Err(e);
            }
            if ev.is_writable() && c.conn.stream.peer_addr().is_ok() {
                c.conn.stream.set_nodelay(true)?;
                c.up = true;
            }
        }
    }

    let window = Window::starting_now(w);
    let count = w.count.unwrap_or(u64::MAX);
    for c in &mut conns {
        for _ in 0..w.inflight {
            let corr = c.seq.next_id();
            put_request(&mut c.conn.wbuf, size, corr, vectored);
            c.pending.push_back((corr, window.start));
        }
        flush(&mut c.conn)?;
    }
    let mut live = conns.len();
    loop {
        let now = Instant::now();
        if now >= window.end || rec.measured >= count || live == 0 {
            break;
        }
        poll.poll(&mut events, Some((window.end - now).min(POLL_TICK)))?;
        let now = Instant::now();
        let sending = now < window.end && rec.measured < count;
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            if !c.up {
                continue;
            }
            let mut open = true;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                let ClientConn {
                    conn, seq, pending, ..
                } = c;
                let read = read_frames(conn, |resp, out| {
                    let Some((want, sent)) = pending.pop_front() else {
                        rec.errors += 1;
                        return Ok(());
                    };
                    let ok =
                        resp.len() == resp_size && resp.get(..4) == Some(&want.to_be_bytes()[..]);
                    if !ok {
                        rec.errors += 1;
                    } else if now >= window.warm_end {
                        rec.record(sent, now);
                    }
                    if sending {
                        let corr = seq.next_id();
                        put_request(out, size, corr, vectored);
                        pending.push_back((corr, now));
                    }
                    Ok(())
                });
                open = matches!(read, Ok(true));
            }
            if open && flush(&mut c.conn).is_err() {
                open = false;
            }
            if !open {
                log::warn!("raw client: connection {} lost", ev.token().0);
                rec.errors += c.pending.len() as u64 + 1;
                c.pending.clear();
                c.up = false;
                live -= 1;
                let _ = poll.registry().deregister(&mut c.conn.stream);
            }
        }
    }
    Ok(RunResult::from_recorder("raw", w, &mut rec, &window))
}
