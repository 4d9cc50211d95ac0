//! Zero allocation over the whole request path: NetworkClient → Selector → socket → echo server
//! (a second Selector) → socket → Selector → NetworkClient, in its own test binary with a
//! counting global allocator. After warm-up, 20,000 round trips allocate exactly as much as 10,000:
//! nothing.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use mqnet::client::{ClientConfig, ClientRequest, ClientResponse, NetworkClient, NodeId, Outcome};
use mqnet::net::{Received, Selector};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{ALLOCS, COUNTING};

const IN_FLIGHT: usize = 8;
const PAYLOAD: usize = 96;

struct Rig {
    client: NetworkClient,
    server: Selector,
    node: NodeId,
    /// Request buffers reused round robin: by the time a slot comes round again its previous
    /// frame has long been written and dropped, so `reserve` reclaims instead of allocating.
    ring: Vec<BytesMut>,
    next: usize,
    echo: Vec<Received>,
    done: Vec<ClientResponse>,
    outstanding: usize,
}

impl Rig {
    fn new() -> Self {
        let mut server = Selector::new().unwrap();
        let listener = server.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.listener_addr(listener).unwrap();
        let cfg = ClientConfig::default()
            .max_in_flight(IN_FLIGHT)
            .pipeline_unsent(true);
        let mut client = NetworkClient::new(cfg).unwrap();
        let node = NodeId(1);
        client.add_node(node, &addr.to_string()).unwrap();
        let mut rig = Rig {
            client,
            server,
            node,
            ring: (0..64).map(|_| BytesMut::with_capacity(256)).collect(),
            next: 0,
            echo: Vec::with_capacity(1024),
            done: Vec::with_capacity(1024),
            outstanding: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !rig.client.ready(node, Instant::now()) {
            assert!(Instant::now() < deadline, "client never became ready");
            rig.pump();
        }
        rig
    }

    /// One turn of both event loops, without blocking.
    fn pump(&mut self) {
        self.client
            .poll_io(Some(Duration::ZERO), Instant::now())
            .map(|()| {
                let now = std::time::Instant::now();
                self.client.handle_into(now, &mut self.done)
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
        let corr = self.client.next_correlation_id();
        buf.put_i32(corr);
        buf.put_bytes(0xAB, PAYLOAD);
        let frame = buf.split().freeze();
        self.client
            .send(ClientRequest::new(self.node, corr, frame), Instant::now());
        self.outstanding += 1;
    }

    /// Runs `n` closed-loop round trips with `IN_FLIGHT` outstanding; checks every outcome.
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
                    Outcome::Response(b) => assert_eq!(b.len(), 4 + PAYLOAD),
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
fn network_client_round_trips_allocate_nothing_in_steady_state() {
    // The counter works: an allocation on this thread is seen.
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

    let mut rig = Rig::new();
    rig.round_trips(5_000);
    let a10 = measured(&mut rig, 10_000);
    let a20 = measured(&mut rig, 20_000);
    assert_eq!(
        a10, a20,
        "allocations grow with round trips: {a10} for 10,000, {a20} for 20,000"
    );
    assert_eq!(a20, 0, "steady state should allocate nothing");
    let m = rig.client.node_metrics(rig.node).unwrap();
    assert!(m.responses >= 35_000);
}
