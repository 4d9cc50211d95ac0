//! A closed-loop request/response rig for the zero-allocation test binaries: a client under test
//! (the NetworkClient, the failover transport, a connection group) keeps a fixed number of
//! requests in flight to an echo server that runs in a second Selector on the same thread.
//!
//! Request frames are built in a ring of reused buffers: by the time a slot comes round again its
//! previous frame has long been written and dropped, so `reserve` reclaims instead of allocating.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use mqnet::net::{Received, Selector};

/// Buffers in the request ring.
const RING: usize = 64;

/// The client side of the rig: whatever sends a request and reports completions.
pub trait LoopClient {
    /// The correlation id of the next request.
    fn next_correlation_id(&mut self) -> i32;
    /// Sends `frame` (it starts with `corr`) at `now`.
    fn send_frame(&mut self, corr: i32, frame: Bytes, now: Instant);
    /// One non-blocking poll at `now`; returns how many requests completed, after checking that
    /// each is a response of `len` bytes (panics otherwise).
    fn poll_completed(&mut self, now: Instant, len: usize) -> usize;
}

/// A Selector on 127.0.0.1 that echoes every frame it receives.
pub struct EchoSelector {
    sel: Selector,
    rx: Vec<Received>,
    addr: SocketAddr,
}

impl EchoSelector {
    /// Listens on an ephemeral port of 127.0.0.1.
    ///
    /// # Panics
    /// If the Selector or the listener cannot be had.
    pub fn listen() -> Self {
        let mut sel = Selector::new().expect("echo selector");
        let listener = sel
            .listen(([127, 0, 0, 1], 0).into())
            .expect("listen on 127.0.0.1");
        let addr = sel.listener_addr(listener).expect("listener address");
        EchoSelector {
            sel,
            rx: Vec::with_capacity(1024),
            addr,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One non-blocking turn: echoes every frame received.
    pub fn pump(&mut self) {
        self.sel.poll(Some(Duration::ZERO)).expect("echo poll");
        self.sel.swap_completed_receives(&mut self.rx);
        for r in self.rx.drain(..) {
            self.sel.send(r.channel, r.frame).expect("echo send");
        }
    }
}

/// A client under test, the echo server, and the request ring.
pub struct ClosedLoop<C> {
    /// The client under test.
    pub client: C,
    server: EchoSelector,
    ring: Vec<BytesMut>,
    next: usize,
    outstanding: usize,
    in_flight: usize,
    payload: usize,
}

impl<C: LoopClient> ClosedLoop<C> {
    /// A rig keeping `in_flight` requests of `4 + payload` bytes outstanding.
    pub fn new(client: C, server: EchoSelector, in_flight: usize, payload: usize) -> Self {
        ClosedLoop {
            client,
            server,
            ring: (0..RING).map(|_| BytesMut::with_capacity(256)).collect(),
            next: 0,
            outstanding: 0,
            in_flight,
            payload,
        }
    }

    /// One turn of both event loops, without blocking; returns the completions.
    pub fn pump(&mut self) -> usize {
        let done = self.client.poll_completed(Instant::now(), 4 + self.payload);
        self.server.pump();
        done
    }

    /// Pumps until `ready` holds of the client (bounded: 20 s).
    ///
    /// # Panics
    /// When it does not in time, or a request completes meanwhile.
    pub fn pump_until(&mut self, what: &str, mut ready: impl FnMut(&mut C) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready(&mut self.client) {
            assert!(Instant::now() < deadline, "never {what}");
            assert_eq!(self.pump(), 0, "completions before {what}");
        }
    }

    fn send_one(&mut self) {
        let buf = &mut self.ring[self.next % RING];
        self.next += 1;
        buf.reserve(4 + self.payload);
        let corr = self.client.next_correlation_id();
        buf.put_i32(corr);
        buf.put_bytes(0xAB, self.payload);
        let frame = buf.split().freeze();
        self.client.send_frame(corr, frame, Instant::now());
        self.outstanding += 1;
    }

    /// Runs `n` round trips keeping the rig's number in flight; checks every outcome (bounded:
    /// 60 s).
    ///
    /// # Panics
    /// When a request fails or the round trips stall.
    pub fn round_trips(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut completed = 0;
        let mut sent = 0;
        while completed < n {
            assert!(
                Instant::now() < deadline,
                "round trips stalled at {completed}/{n}"
            );
            while self.outstanding < self.in_flight && sent < n {
                self.send_one();
                sent += 1;
            }
            let done = self.pump();
            self.outstanding -= done;
            completed += done;
        }
    }

    /// Requests sent and not completed.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
}
