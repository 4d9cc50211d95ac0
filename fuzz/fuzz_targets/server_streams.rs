//! Drives a Selector-backed echo server (`mqnet::server::Server`, maximum frame 1024, a small
//! staged-bytes bound so back-pressure is reached) with arbitrary byte streams over up to four
//! loopback connections per input.
//!
//! Input layout: the first byte picks the server's mode (even: inline, `Handler` returning the
//! request; odd: direct, `DirectHandler` copying the borrowed request into its `FrameWriter`).
//! Then a sequence of operations, each starting with a byte `op`:
//! - `op % 8` in {0, 4}: write — the next byte picks the connection (`% 4`), the one after is a
//!   length `n`, then `n` bytes (fewer if the input ends) are written to it;
//! - `op % 8` in {1, 5}: one server poll, then the echoes of every connection not held are read;
//! - `op % 8 == 2`: the next byte picks a connection, which is closed (dropped);
//! - `op % 8 == 3`: the next byte picks a connection, whose write side is shut down;
//! - `op % 8 == 6`: burst — the next byte picks a connection, the one after is a count `c`
//!   (`1 + c % 64` frames), the one after a size `s` (payload `4 * s` bytes); that many valid
//!   frames are written to it (at most `MAX_BURST_BYTES` of bursts per input);
//! - `op % 8 == 7`: the next byte picks a connection, whose reading is held or resumed: a held
//!   connection's echoes are not read, so a burst fills its socket buffers and the server mutes it
//!   (back-pressure); a write that stalls `STALL_LIMIT` polls resumes every held connection, so the
//!   connection drains and is unmuted.
//!
//! Checked, against a model of the framing that knows nothing of the Selector:
//! - nothing panics;
//! - every open connection reads back exactly the echoes of the whole, valid frames it sent, in
//!   order; a connection whose stream holds an invalid length prefix, or that shut down its write
//!   side, reads a prefix of them and then end-of-stream (or a reset); the prefix may end inside
//!   a frame, as the server closes such a connection at once and drops the responses it could not
//!   write yet;
//! - once every client is gone, the server closes every connection: its connection count and its
//!   Selector's slot count come back to the baseline (the listener alone), so nothing leaks.
#![no_main]

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqnet::net::{ChannelId, FrameWriter, SelectorConfig, SocketOptions};
use mqnet::server::{Direct, Inline, Mode, Server, ServerConfig};
use socket2::{Domain, Socket, Type};

const MAX_FRAME: usize = 1024;
const CONNS: usize = 4;
/// Bound on server polls while waiting for the echoes of one input, or for one write to go
/// through (each poll waits at most 1 ms).
const MAX_POLLS: usize = 5_000;
/// Polls a write may stall before every held connection is resumed.
const STALL_LIMIT: usize = 20;
/// Bound on the bytes of all bursts of one input (keeps each input's work bounded).
const MAX_BURST_BYTES: usize = 1 << 20;

type InlineEcho = Server<Inline<fn(ChannelId, Bytes) -> Option<Bytes>>>;
type DirectEcho = Server<Direct<fn(ChannelId, &[u8], &mut FrameWriter<'_>) -> bool>>;

fn echo(_c: ChannelId, req: Bytes) -> Option<Bytes> {
    Some(req)
}

fn direct_echo(_c: ChannelId, req: &[u8], out: &mut FrameWriter<'_>) -> bool {
    out.put_slice(req);
    true
}

/// The configuration of both servers: a small staged-bytes bound and small socket buffers on
/// accepted sockets, so a held connection reaches back-pressure within one input. The receive
/// buffer goes on the listener before it listens: set on an accepted socket it would shrink a
/// window already offered in the handshake, and the stream would stall for seconds of
/// retransmission backoff (`seed-invalid-prefix-behind-held-bursts` came from that stall).
fn config() -> ServerConfig {
    ServerConfig {
        selector: SelectorConfig {
            max_frame_size: MAX_FRAME,
            max_staged_bytes: 8 * 1024,
            connections_max_idle: None,
            accepted_socket_options: SocketOptions {
                send_buffer_bytes: Some(4 * 1024),
                receive_buffer_bytes: Some(16 * 1024),
                ..SocketOptions::os_buffers()
            },
            ..SelectorConfig::default()
        },
        ..ServerConfig::default()
    }
}

thread_local! {
    static INLINE: RefCell<(InlineEcho, SocketAddr)> = RefCell::new({
        let mut server: InlineEcho =
            Server::inline_with_config(echo as fn(ChannelId, Bytes) -> Option<Bytes>, config())
                .expect("server");
        let addr = server.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        (server, addr)
    });
    static DIRECT: RefCell<(DirectEcho, SocketAddr)> = RefCell::new({
        let mut server: DirectEcho = Server::direct_with_config(
            direct_echo as fn(ChannelId, &[u8], &mut FrameWriter<'_>) -> bool,
            config(),
        )
        .expect("server");
        let addr = server.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        (server, addr)
    });
}

/// What the framing model says a connection's sent bytes amount to.
#[derive(Default)]
struct Model {
    sent: Vec<u8>,
    shut: bool,
}

impl Model {
    /// The echo bytes expected back (valid whole frames, prefixes included) and whether the server
    /// must end the connection (invalid prefix, or write side shut down).
    fn expected(&self) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let Some(h) = self.sent.get(pos..pos + 4) else {
                return (out, self.shut);
            };
            let n = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            if n < 0 || n as usize > MAX_FRAME {
                return (out, true);
            }
            let end = pos + 4 + n as usize;
            let Some(frame) = self.sent.get(pos..end) else {
                return (out, self.shut);
            };
            out.extend_from_slice(frame);
            pos = end;
        }
    }
}

/// The client side of one input: the connections, what each sent and read back.
struct Clients {
    conns: Vec<Option<TcpStream>>,
    models: Vec<Model>,
    got: Vec<Vec<u8>>,
    ended: [bool; CONNS],
    held: [bool; CONNS],
}

impl Clients {
    /// Reads what connection `k` has received, until it would block or has ended.
    fn read(&mut self, k: usize) {
        let Some(s) = self.conns[k].as_mut() else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        while !self.ended[k] {
            match s.read(&mut buf) {
                Ok(0) => self.ended[k] = true,
                Ok(n) => self.got[k].extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => self.ended[k] = true,
            }
        }
    }

    /// Reads every connection that is not held.
    fn read_unheld(&mut self) {
        for k in 0..CONNS {
            if !self.held[k] {
                self.read(k);
            }
        }
    }

    /// Writes `bytes` to connection `k`, polling the server and reading the connections not held
    /// while the socket is full; a write stalled `STALL_LIMIT` polls resumes the held connections.
    fn write<M: Mode>(&mut self, server: &mut Server<M>, k: usize, bytes: &[u8]) {
        if self.models[k].shut || self.conns[k].is_none() {
            return;
        }
        let mut written = 0;
        let mut stalls = 0;
        while written < bytes.len() && stalls < MAX_POLLS {
            let Some(s) = self.conns[k].as_mut() else {
                return;
            };
            match s.write(&bytes[written..]) {
                Ok(w) => {
                    written += w;
                    stalls = 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    server.poll(Some(Duration::from_millis(1))).expect("poll");
                    stalls += 1;
                    if stalls == STALL_LIMIT {
                        self.held = [false; CONNS];
                    }
                    self.read_unheld();
                }
                Err(_) => break,
            }
        }
        self.models[k].sent.extend_from_slice(&bytes[..written]);
    }
}

fn run<M: Mode>(server: &mut Server<M>, addr: SocketAddr, data: &[u8]) {
    let baseline = server.selector().len();
    let mut c = Clients {
        conns: (0..CONNS)
            .map(|_| {
                // A fixed, small receive buffer, set before the connect so the window is sized
                // by it: the kernel grows an unset one by megabytes, which would absorb every
                // echo of a held connection.
                let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                sock.set_recv_buffer_size(4 * 1024).expect("SO_RCVBUF");
                sock.connect(&addr.into()).expect("connect");
                let s: TcpStream = sock.into();
                s.set_nonblocking(true).expect("nonblocking");
                Some(s)
            })
            .collect(),
        models: (0..CONNS).map(|_| Model::default()).collect(),
        got: vec![Vec::new(); CONNS],
        ended: [false; CONNS],
        held: [false; CONNS],
    };
    let mut burst_budget = MAX_BURST_BYTES;
    let mut burst = Vec::new();

    let mut i = 0;
    while i < data.len() {
        let op = data[i] % 8;
        let k = data.get(i + 1).map_or(0, |b| usize::from(*b) % CONNS);
        match op {
            0 | 4 => {
                let n = data.get(i + 2).map_or(0, |b| usize::from(*b));
                let start = (i + 3).min(data.len());
                let bytes = &data[start..(start + n).min(data.len())];
                i = start + bytes.len();
                c.write(server, k, bytes);
            }
            1 | 5 => {
                server.poll(Some(Duration::ZERO)).expect("poll");
                c.read_unheld();
                i += 1;
            }
            2 => {
                c.conns[k] = None;
                i += 2;
            }
            3 => {
                if let Some(s) = c.conns[k].as_ref() {
                    let _ = s.shutdown(Shutdown::Write);
                    c.models[k].shut = true;
                }
                i += 2;
            }
            6 => {
                let count = 1 + data.get(i + 2).map_or(0, |b| usize::from(*b) % 64);
                let size = 4 * data.get(i + 3).map_or(0, |b| usize::from(*b));
                i += 4;
                burst.clear();
                for f in 0..count {
                    if burst.len() + 4 + size > burst_budget {
                        break;
                    }
                    burst.extend_from_slice(&(size as u32).to_be_bytes());
                    burst.extend((0..size).map(|b| (b + f + i) as u8));
                }
                burst_budget -= burst.len();
                let bytes = std::mem::take(&mut burst);
                c.write(server, k, &bytes);
                burst = bytes;
            }
            _ => {
                c.held[k] = !c.held[k];
                i += 2;
            }
        }
    }

    // Read back: every open connection gets its echoes; those the server must end are ended.
    let expected: Vec<(Vec<u8>, bool)> = c.models.iter().map(Model::expected).collect();
    for _ in 0..MAX_POLLS {
        let mut done = true;
        for k in 0..CONNS {
            if c.conns[k].is_none() {
                continue;
            }
            c.read(k);
            let (want, must_end) = &expected[k];
            assert!(
                want.starts_with(&c.got[k]),
                "connection {k}: echoes differ from the frames sent"
            );
            if c.ended[k] {
                assert!(*must_end, "connection {k}: server ended a valid connection");
            } else if *must_end || c.got[k].len() < want.len() {
                done = false;
            }
        }
        if done {
            break;
        }
        server.poll(Some(Duration::from_millis(1))).expect("poll");
    }
    for k in 0..CONNS {
        if c.conns[k].is_none() {
            continue;
        }
        let (want, must_end) = &expected[k];
        if *must_end {
            // A prefix of the echoes (checked above), possibly cut inside a frame: the server
            // closes such a connection at once and drops the responses still staged in user space,
            // the first of which may have left in part.
            assert!(c.ended[k], "connection {k}: server did not end it");
        } else {
            assert_eq!(&c.got[k], want, "connection {k}: echoes missing");
        }
    }

    // Every client gone: the server must come back to its baseline.
    drop(c);
    let mut polls = 0;
    while (server.connections() > 0 || server.selector().len() > baseline) && polls < MAX_POLLS {
        server.poll(Some(Duration::from_millis(1))).expect("poll");
        polls += 1;
    }
    assert_eq!(server.connections(), 0, "connections leaked");
    assert_eq!(server.selector().len(), baseline, "selector slots leaked");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, ops)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        INLINE.with(|cell| {
            let (server, addr) = &mut *cell.borrow_mut();
            run(server, *addr, ops);
        });
    } else {
        DIRECT.with(|cell| {
            let (server, addr) = &mut *cell.borrow_mut();
            run(server, *addr, ops);
        });
    }
});
