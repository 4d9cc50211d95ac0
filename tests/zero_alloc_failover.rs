//! Zero allocation over the failover transport's request path: FailoverTransport → NetworkClient →
//! Selector → socket → echo server (a second Selector) and back, in its own test binary with a
//! counting global allocator. After warm-up, 20,000 round trips allocate exactly as much as 10,000:
//! nothing (with and without `trackMessages`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use mqnet::client::ClientConfig;
use mqnet::failover::{FailoverOutcome, FailoverRequest, FailoverResponse, FailoverTransport};
use mqnet::net::{Received, Selector};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{ALLOCS, COUNTING};

const IN_FLIGHT: usize = 8;
const PAYLOAD: usize = 96;

struct Rig {
    t: FailoverTransport,
    server: Selector,
    ring: Vec<BytesMut>,
    next: usize,
    echo: Vec<Received>,
    done: Vec<FailoverResponse>,
    outstanding: usize,
}

impl Rig {
    fn new(track: bool) -> Self {
        let mut server = Selector::new().unwrap();
        let listener = server.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.listener_addr(listener).unwrap();
        let cfg = ClientConfig::default()
            .max_in_flight(IN_FLIGHT)
            .pipeline_unsent(true);
        let uri = format!("failover:(tcp://{addr})?trackMessages={track}")
            .parse()
            .unwrap();
        let t = FailoverTransport::connect(&uri, cfg).unwrap();
        let mut rig = Rig {
            t,
            server,
            ring: (0..64).map(|_| BytesMut::with_capacity(256)).collect(),
            next: 0,
            echo: Vec::with_capacity(1024),
            done: Vec::with_capacity(1024),
            outstanding: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !rig.t.is_connected() {
            assert!(Instant::now() < deadline, "never connected");
            rig.pump();
        }
        rig.t.drain_events();
        rig
    }

    /// One turn of both event loops, without blocking.
    fn pump(&mut self) {
        self.t
            .poll_io(Some(Duration::ZERO), Instant::now())
            .map(|()| {
                let now = std::time::Instant::now();
                self.t.handle_into(now, &mut self.done)
            })
            .unwrap();
        self.server.poll(Some(Duration::ZERO)).unwrap();
        self.server.swap_completed_receives(&mut self.echo);
        for r in self.echo.drain(..) {
            self.server.send(r.channel, r.frame).unwrap();
        }
    }

    fn send_one(&mut self) {
        let buf = &mut self.ring[self.next % 64];
        self.next += 1;
        buf.reserve(4 + PAYLOAD);
        let corr = self.t.next_correlation_id();
        buf.put_i32(corr);
        buf.put_bytes(0xAB, PAYLOAD);
        let frame = buf.split().freeze();
        self.t
            .send(FailoverRequest::new(corr, frame), Instant::now());
        self.outstanding += 1;
    }

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
                self.send_one();
                sent += 1;
            }
            self.pump();
            for r in self.done.drain(..) {
                match &r.outcome {
                    FailoverOutcome::Response(b) => assert_eq!(b.len(), 4 + PAYLOAD),
                    other => panic!("request {} failed: {other:?}", r.correlation_id),
                }
                self.outstanding -= 1;
                completed += 1;
            }
        }
    }
}

fn measured(rig: &mut Rig, n: usize) -> usize {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    rig.round_trips(n);
    COUNTING.with(|c| c.set(false));
    ALLOCS.load(Ordering::SeqCst)
}

#[test]
fn failover_round_trips_allocate_nothing_in_steady_state() {
    COUNTING.with(|c| c.set(true));
    ALLOCS.store(0, Ordering::SeqCst);
    let v: Vec<u8> = Vec::with_capacity(10);
    drop(v);
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        ALLOCS.load(Ordering::SeqCst),
        1,
        "the counting allocator counts"
    );
    for track in [false, true] {
        let mut rig = Rig::new(track);
        rig.round_trips(5_000);
        let a10 = measured(&mut rig, 10_000);
        let a20 = measured(&mut rig, 20_000);
        assert_eq!(
            a10, a20,
            "track={track}: allocations grow with round trips: {a10} for 10,000, {a20} for 20,000"
        );
        assert_eq!(
            a20, 0,
            "track={track}: steady state should allocate nothing"
        );
        assert_eq!(rig.t.outstanding(), 0);
    }
}
