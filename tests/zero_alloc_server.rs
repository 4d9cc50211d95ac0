//! Zero allocation on the server's direct path: a Selector client stages requests with
//! `send_with` (written straight into its send buffer) → socket → `Server::direct` (requests read
//! in place from the read buffer, responses written straight into the send buffer) → socket →
//! client. Its own test binary with a counting global allocator: after warm-up, 20,000 round trips
//! allocate exactly as much as 10,000: nothing.

use std::time::{Duration, Instant};

use mqnet::net::{ChannelId, FrameWriter, Received, Selector, SocketOptions};
use mqnet::server::{Direct, Server};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const IN_FLIGHT: usize = 16;
const PAYLOAD: usize = 96;

type Handler = fn(ChannelId, &[u8], &mut FrameWriter<'_>) -> bool;

/// Answers with the request's first four bytes and 12 bytes of padding.
fn answer(_: ChannelId, req: &[u8], out: &mut FrameWriter<'_>) -> bool {
    let Some(corr) = req.get(..4) else {
        return false;
    };
    out.put_slice(corr);
    out.put_bytes(0, 12);
    true
}

struct Rig {
    server: Server<Direct<Handler>>,
    client: Selector,
    ch: ChannelId,
    got: Vec<Received>,
    next: u32,
    expected: u32,
    outstanding: usize,
}

impl Rig {
    fn new() -> Self {
        let mut server = Server::direct(answer as Handler).unwrap();
        let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut client = Selector::new().unwrap();
        let ch = client.connect(addr, &SocketOptions::default()).unwrap();
        let mut rig = Rig {
            server,
            client,
            ch,
            got: Vec::with_capacity(1024),
            next: 0,
            expected: 0,
            outstanding: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while rig.server.connections() == 0 || !rig.client.is_connected(ch) {
            assert!(Instant::now() < deadline, "never connected");
            rig.pump();
        }
        rig
    }

    fn pump(&mut self) {
        self.client.poll(Some(Duration::ZERO)).unwrap();
        self.client.swap_completed_receives(&mut self.got);
        self.server.poll(Some(Duration::ZERO)).unwrap();
    }

    /// Runs `n` closed-loop round trips with `IN_FLIGHT` outstanding; checks every response.
    fn round_trips(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut completed = 0;
        let mut sent = 0;
        while completed < n {
            assert!(
                Instant::now() < deadline,
                "round trips stalled at {completed}/{n}"
            );
            while self.outstanding < IN_FLIGHT && sent < n {
                let corr = self.next;
                self.next += 1;
                let seq = self
                    .client
                    .send_with(self.ch, |w| {
                        w.put_slice(&corr.to_be_bytes());
                        w.put_bytes(0xab, PAYLOAD - 4);
                        true
                    })
                    .unwrap();
                assert!(seq.is_some());
                self.outstanding += 1;
                sent += 1;
            }
            self.pump();
            for r in self.got.drain(..) {
                assert_eq!(r.frame.len(), 16);
                assert_eq!(&r.frame[..4], &self.expected.to_be_bytes());
                self.expected += 1;
                self.outstanding -= 1;
                completed += 1;
            }
        }
    }
}

#[test]
fn direct_server_round_trips_allocate_nothing_in_steady_state() {
    counting_alloc::assert_counter_counts();

    let mut rig = Rig::new();
    rig.round_trips(5_000);
    let a10 = counting_alloc::count(|| rig.round_trips(10_000));
    let a20 = counting_alloc::count(|| rig.round_trips(20_000));
    assert_eq!(
        a10, a20,
        "allocations grow with round trips: {a10} for 10,000, {a20} for 20,000"
    );
    assert_eq!(a20, 0, "steady state should allocate nothing");
    let st = rig.server.stats();
    assert_eq!(st.responses, 35_000);
    assert_eq!(st.requests, 35_000);
}
