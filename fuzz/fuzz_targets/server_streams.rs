//! Drives a Selector-backed echo server (`mqnet::server::Server`, inline mode, maximum frame 1024)
//! with arbitrary byte streams over up to four loopback connections per input.
//!
//! Input layout: a sequence of operations, each starting with a byte `op`:
//! - `op % 4 == 0`: write — the next byte picks the connection (`% 4`), the one after is a length
//!   `n`, then `n` bytes (fewer if the input ends) are written to it;
//! - `op % 4 == 1`: one server poll;
//! - `op % 4 == 2`: the next byte picks a connection, which is closed (dropped);
//! - `op % 4 == 3`: the next byte picks a connection, whose write side is shut down.
//!
//! Checked, against a model of the framing that knows nothing of the Selector:
//! - nothing panics;
//! - every open connection reads back exactly the echoes of the whole, valid frames it sent, in
//!   order; a connection whose stream holds an invalid length prefix, or that shut down its write
//!   side mid-frame, reads a frame-aligned prefix of them and then end-of-stream (or a reset);
//! - once every client is gone, the server closes every connection: its connection count and its
//!   Selector's slot count come back to the baseline (the listener alone), so nothing leaks.
#![no_main]

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqnet::net::{ChannelId, SelectorConfig};
use mqnet::server::{Inline, Server, ServerConfig};

const MAX_FRAME: usize = 1024;
const CONNS: usize = 4;
/// Bound on server polls while waiting for the echoes of one input (each poll waits at most 1 ms).
const MAX_POLLS: usize = 5_000;

type Echo = Server<Inline<fn(ChannelId, Bytes) -> Option<Bytes>>>;

fn echo(_c: ChannelId, req: Bytes) -> Option<Bytes> {
    Some(req)
}

thread_local! {
    static SERVER: RefCell<(Echo, SocketAddr)> = RefCell::new({
        let config = ServerConfig {
            selector: SelectorConfig {
                max_frame_size: MAX_FRAME,
                connections_max_idle: None,
                ..SelectorConfig::default()
            },
            ..ServerConfig::default()
        };
        let mut server: Echo =
            Server::inline_with_config(echo as fn(ChannelId, Bytes) -> Option<Bytes>, config)
                .expect("server");
        let addr = server.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        (server, addr)
    });
}

/// What the framing model says a connection's sent bytes amount to.
#[derive(Default)]
struct Model {
    sent: Vec<u8>,
    closed: bool,
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

/// Whether `got` is a frame-aligned prefix of `expected`.
fn frame_aligned_prefix(got: &[u8], expected: &[u8]) -> bool {
    if !expected.starts_with(got) {
        return false;
    }
    let mut pos = 0;
    while pos < got.len() {
        let h = &expected[pos..pos + 4];
        pos += 4 + i32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    }
    pos == got.len()
}

fuzz_target!(|data: &[u8]| {
    SERVER.with(|cell| {
        let (server, addr) = &mut *cell.borrow_mut();
        let baseline = server.selector().len();
        let mut conns: Vec<Option<TcpStream>> = (0..CONNS)
            .map(|_| {
                let s = TcpStream::connect(*addr).expect("connect");
                s.set_nonblocking(true).expect("nonblocking");
                Some(s)
            })
            .collect();
        let mut models: Vec<Model> = (0..CONNS).map(|_| Model::default()).collect();
        let mut got: Vec<Vec<u8>> = vec![Vec::new(); CONNS];
        let mut ended = [false; CONNS];

        let mut i = 0;
        while i < data.len() {
            let op = data[i] % 4;
            let k = data.get(i + 1).map_or(0, |b| usize::from(*b) % CONNS);
            match op {
                0 => {
                    let n = data.get(i + 2).map_or(0, |b| usize::from(*b));
                    let start = (i + 3).min(data.len());
                    let bytes = &data[start..(start + n).min(data.len())];
                    i = start + bytes.len();
                    if let Some(s) = conns[k].as_mut() {
                        if models[k].shut {
                            continue;
                        }
                        // The socket buffers take far more than one input; a short write would be
                        // back-pressure, which this target does not model.
                        let mut written = 0;
                        let mut polls = 0;
                        while written < bytes.len() && polls < MAX_POLLS {
                            match s.write(&bytes[written..]) {
                                Ok(w) => written += w,
                                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                    server.poll(Some(Duration::from_millis(1))).expect("poll");
                                    polls += 1;
                                }
                                Err(_) => break,
                            }
                        }
                        models[k].sent.extend_from_slice(&bytes[..written]);
                    }
                }
                1 => {
                    server.poll(Some(Duration::ZERO)).expect("poll");
                    i += 1;
                }
                2 => {
                    conns[k] = None;
                    models[k].closed = true;
                    i += 2;
                }
                _ => {
                    if let Some(s) = conns[k].as_ref() {
                        let _ = s.shutdown(Shutdown::Write);
                        models[k].shut = true;
                    }
                    i += 2;
                }
            }
        }

        // Read back: every open connection gets its echoes; those the server must end are ended.
        let expected: Vec<(Vec<u8>, bool)> = models.iter().map(Model::expected).collect();
        let mut buf = [0u8; 4096];
        for _ in 0..MAX_POLLS {
            let mut done = true;
            for k in 0..CONNS {
                let Some(s) = conns[k].as_mut() else { continue };
                let (want, must_end) = &expected[k];
                while !ended[k] {
                    match s.read(&mut buf) {
                        Ok(0) => ended[k] = true,
                        Ok(n) => got[k].extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => ended[k] = true,
                    }
                }
                assert!(
                    want.starts_with(&got[k]),
                    "connection {k}: echoes differ from the frames sent"
                );
                if ended[k] {
                    assert!(*must_end, "connection {k}: server ended a valid connection");
                } else if *must_end || got[k].len() < want.len() {
                    done = false;
                }
            }
            if done {
                break;
            }
            server.poll(Some(Duration::from_millis(1))).expect("poll");
        }
        for k in 0..CONNS {
            if conns[k].is_none() {
                continue;
            }
            let (want, must_end) = &expected[k];
            if *must_end {
                assert!(ended[k], "connection {k}: server did not end it");
                assert!(frame_aligned_prefix(&got[k], want), "connection {k}: torn echo");
            } else {
                assert_eq!(&got[k], want, "connection {k}: echoes missing");
            }
        }

        // Every client gone: the server must come back to its baseline.
        drop(conns);
        let mut polls = 0;
        while (server.connections() > 0 || server.selector().len() > baseline) && polls < MAX_POLLS
        {
            server.poll(Some(Duration::from_millis(1))).expect("poll");
            polls += 1;
        }
        assert_eq!(server.connections(), 0, "connections leaked");
        assert_eq!(server.selector().len(), baseline, "selector slots leaked");
    });
});
