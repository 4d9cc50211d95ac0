//! Zero allocation over the whole request path: NetworkClient → Selector → socket → echo server
//! (a second Selector) → socket → Selector → NetworkClient, in its own test binary with a
//! counting global allocator. After warm-up, 20,000 round trips allocate exactly as much as 10,000:
//! nothing — with responses taken as `Bytes` (`handle_into`) and read where they were received
//! (borrowed responses, `handle_with`), and with requests sent as a written head and a shared body
//! (`send_with_body`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{
    ClientConfig, ClientRequest, ClientResponse, NetworkClient, NodeId, Outcome, OutcomeRef,
};
use mqnet_test_support::closed_loop::{ClosedLoop, EchoSelector, LoopClient};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const IN_FLIGHT: usize = 8;
const PAYLOAD: usize = 96;
const NODE: NodeId = NodeId(1);

/// The NetworkClient with one node, and a reused completion vector.
struct Client {
    client: NetworkClient,
    done: Vec<ClientResponse>,
    /// Borrowed responses, handed out by `handle_with`.
    borrowed: bool,
    /// Requests go as the correlation id written in place and this shared payload
    /// (`send_with_body`) instead of the rig's frame.
    body: Option<Bytes>,
}

impl LoopClient for Client {
    fn next_correlation_id(&mut self) -> i32 {
        self.client.next_correlation_id()
    }

    fn send_frame(&mut self, corr: i32, frame: Bytes, now: Instant) {
        if let Some(body) = &self.body {
            let sent =
                self.client
                    .send_with_body(NODE, corr, now, |w| w.put_i32(corr), body.clone());
            assert!(sent, "send_with_body refused request {corr}");
            return;
        }
        self.client.send(ClientRequest::new(NODE, corr, frame), now);
    }

    fn poll_completed(&mut self, now: Instant, len: usize) -> usize {
        self.client
            .poll_io(Some(Duration::ZERO), now)
            .expect("client poll");
        // Completions are handled at the time read after the I/O (one clock: the caller's).
        if self.borrowed {
            let mut n = 0;
            self.client
                .handle_with(Instant::now(), |r| match r.outcome {
                    OutcomeRef::Response(b) => {
                        assert_eq!(b.len(), len);
                        n += 1;
                    }
                    other => panic!("request {} failed: {other:?}", r.correlation_id),
                });
            return n;
        }
        self.client.handle_into(Instant::now(), &mut self.done);
        let n = self.done.len();
        for r in self.done.drain(..) {
            match &r.outcome {
                Outcome::Response(b) => assert_eq!(b.len(), len),
                other => panic!("request {} failed: {other:?}", r.correlation_id),
            }
        }
        n
    }
}

fn rig(borrowed: bool, body: bool) -> ClosedLoop<Client> {
    let server = EchoSelector::listen();
    let cfg = ClientConfig::default()
        .max_in_flight(IN_FLIGHT)
        .pipeline_unsent(true);
    let mut client = NetworkClient::new(cfg).expect("client");
    client
        .add_node(NODE, &server.addr().to_string())
        .expect("add node");
    assert!(client.set_borrowed_responses(borrowed));
    let client = Client {
        client,
        done: Vec::with_capacity(1024),
        borrowed,
        body: body.then(|| Bytes::from(vec![0xAB; PAYLOAD])),
    };
    let mut rig = ClosedLoop::new(client, server, IN_FLIGHT, PAYLOAD);
    rig.pump_until("ready", |c| c.client.ready(NODE, Instant::now()));
    rig
}

#[test]
fn network_client_round_trips_allocate_nothing_in_steady_state() {
    counting_alloc::assert_counter_counts();
    // One mode after the other: the counter is global to the binary.
    for (borrowed, body) in [(false, false), (true, false), (true, true)] {
        let mut rig = rig(borrowed, body);
        rig.round_trips(5_000);
        let a10 = counting_alloc::count(|| rig.round_trips(10_000));
        let a20 = counting_alloc::count(|| rig.round_trips(20_000));
        assert_eq!(
            a10, a20,
            "borrowed {borrowed}, body {body}: allocations grow with round trips: {a10} for 10,000, {a20} for 20,000"
        );
        assert_eq!(
            a20, 0,
            "borrowed {borrowed}, body {body}: steady state should allocate nothing"
        );
        let m = rig.client.client.node_metrics(NODE).expect("node metrics");
        assert!(m.responses >= 35_000);
    }
}
