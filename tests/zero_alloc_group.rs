//! Zero allocation on the group path: GroupClient::send (selection over a group of members) →
//! NetworkClient → Selector → socket → echo server (a second Selector) → back, and
//! GroupClient::poll (member bookkeeping, heartbeat and reconnect checks), in its own test binary
//! with a counting global allocator. After warm-up, 20,000 round trips allocate exactly as much as
//! 10,000: nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{
    ClientConfig, ClientRequest, ClientResponse, NetworkClient, NoHandshake, NodeId, Outcome,
};
use mqnet::group::{GroupClient, GroupConfig, MirrorHeartbeat};
use mqnet::net::Selector;
use mqnet_test_support::closed_loop::{ClosedLoop, EchoSelector, LoopClient};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const IN_FLIGHT: usize = 8;
const PAYLOAD: usize = 96;
const MEMBERS: usize = 3;

/// A group "g" of [`MEMBERS`] connections and a reused completion vector.
struct Client {
    groups: GroupClient<Selector, NoHandshake, MirrorHeartbeat>,
    done: Vec<ClientResponse>,
}

impl LoopClient for Client {
    fn next_correlation_id(&mut self) -> i32 {
        self.groups.client_mut().next_correlation_id()
    }

    fn send_frame(&mut self, corr: i32, frame: Bytes, now: Instant) {
        self.groups
            .send("g", ClientRequest::new(NodeId(0), corr, frame), now)
            .expect("group send");
    }

    fn poll_completed(&mut self, now: Instant, len: usize) -> usize {
        self.groups
            .poll_io(Some(Duration::ZERO), now)
            .expect("group poll");
        // Completions are handled at the time read after the I/O (one clock: the caller's).
        self.groups.handle_into(Instant::now(), &mut self.done);
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

fn rig() -> ClosedLoop<Client> {
    let server = EchoSelector::listen();
    let cfg = ClientConfig::default()
        .max_in_flight(IN_FLIGHT)
        .pipeline_unsent(true);
    let client = NetworkClient::new(cfg).expect("client");
    let mut groups = GroupClient::new(client, GroupConfig::default(), MirrorHeartbeat);
    groups
        .connect(
            "g",
            &server.addr().to_string(),
            MEMBERS,
            "test",
            Instant::now(),
        )
        .expect("group connect");
    let client = Client {
        groups,
        done: Vec::with_capacity(1024),
    };
    let mut rig = ClosedLoop::new(client, server, IN_FLIGHT, PAYLOAD);
    rig.pump_until("whole", |c| c.groups.live_members("g") >= MEMBERS);
    rig
}

#[test]
fn group_round_trips_allocate_nothing_in_steady_state() {
    counting_alloc::assert_counter_counts();
    let mut rig = rig();
    rig.round_trips(5_000);
    let a10 = counting_alloc::count(|| rig.round_trips(10_000));
    let a20 = counting_alloc::count(|| rig.round_trips(20_000));
    assert_eq!(
        a10, a20,
        "allocations grow with round trips: {a10} for 10,000, {a20} for 20,000"
    );
    assert_eq!(a20, 0, "steady state should allocate nothing");
    // Every member carried traffic.
    for node in rig.client.groups.members("g") {
        let m = rig
            .client
            .groups
            .client()
            .node_metrics(node)
            .expect("node metrics");
        assert!(m.responses >= 5_000, "{node}: {}", m.responses);
    }
}
