//! A loopback echo through one Selector: the client and the server channel live in the same
//! Selector on one thread, the server side echoes every frame it receives. Shared by the
//! zero-allocation test and the criterion bench, so both measure the same loop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::net::{ChannelId, Received, Selector, SocketOptions};

/// Bound on polls per round trip, beyond the fixed allowance; a round trip normally takes two or
/// three.
const MAX_POLLS_PER_TRIP: u64 = 100;

/// A connected client/server channel pair in one Selector, with a fixed request payload.
pub struct LoopbackEcho {
    sel: Selector,
    client: ChannelId,
    server: ChannelId,
    payload: Bytes,
    /// Reused for `swap_completed_receives`, so taking frames out allocates nothing.
    rx: Vec<Received>,
}

impl LoopbackEcho {
    /// Listens on 127.0.0.1, connects to itself and polls (bounded: 10 s) until both ends are up.
    ///
    /// # Panics
    /// If the connection is not established in time or a channel disconnects.
    pub fn new(payload_len: usize) -> LoopbackEcho {
        let mut sel = Selector::new().expect("selector");
        let listener = sel
            .listen(([127, 0, 0, 1], 0).into())
            .expect("listen on 127.0.0.1");
        let addr = sel.listener_addr(listener).expect("listener addr");
        let client = sel
            .connect(addr, &SocketOptions::default())
            .expect("connect");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut server = None;
        let mut connected = false;
        for _ in 0..10_000 {
            if server.is_some() && connected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "loopback connection not established within 10 s"
            );
            sel.poll(Some(Duration::from_millis(100))).expect("poll");
            assert!(
                sel.disconnected().is_empty(),
                "disconnect during setup: {:?}",
                sel.disconnected()
            );
            connected |= sel.connected().contains(&client);
            if let Some(a) = sel.accepted().first() {
                server = Some(a.channel);
            }
        }
        assert!(connected, "client never reported connected");
        LoopbackEcho {
            sel,
            client,
            server: server.expect("listener accepted no connection"),
            payload: Bytes::from(vec![0xA5u8; payload_len]),
            rx: Vec::with_capacity(128),
        }
    }

    /// The Selector both channels live in (for its metrics).
    pub fn selector(&self) -> &Selector {
        &self.sel
    }

    /// Runs `total` round trips keeping up to `depth` requests in flight (1: send, wait for the
    /// echo, repeat) and returns the elapsed time. Every frame is echoed or dropped before the
    /// next poll, so the read buffers' space can be reclaimed.
    ///
    /// # Panics
    /// If a round trip stalls, a channel disconnects, an echo has the wrong length, or `deadline`
    /// passes.
    pub fn run(&mut self, total: u64, depth: u64, deadline: Instant) -> Duration {
        let start = Instant::now();
        let max_polls = total
            .saturating_mul(MAX_POLLS_PER_TRIP)
            .saturating_add(10_000);
        let mut sent = 0u64;
        let mut answered = 0u64;
        while sent < total.min(depth.max(1)) {
            self.sel
                .send(self.client, self.payload.clone())
                .expect("client send");
            sent += 1;
        }
        let mut polls = 0u64;
        while answered < total {
            polls += 1;
            assert!(
                polls <= max_polls,
                "echo stalled: {answered}/{total} answered"
            );
            assert!(Instant::now() < deadline, "echo missed its deadline");
            self.sel.poll(Some(Duration::from_secs(1))).expect("poll");
            assert!(
                self.sel.disconnected().is_empty(),
                "unexpected disconnect: {:?}",
                self.sel.disconnected()
            );
            self.sel.swap_completed_receives(&mut self.rx);
            for r in self.rx.drain(..) {
                if r.channel == self.server {
                    self.sel.send(self.server, r.frame).expect("server echo");
                } else {
                    assert_eq!(r.channel, self.client);
                    assert_eq!(r.frame.len(), self.payload.len());
                    black_box(&r.frame);
                    answered += 1;
                    if sent < total {
                        self.sel
                            .send(self.client, self.payload.clone())
                            .expect("client send");
                        sent += 1;
                    }
                }
            }
        }
        start.elapsed()
    }
}
