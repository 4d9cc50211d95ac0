//! Zero allocation over the failover transport's request path: FailoverTransport → NetworkClient →
//! Selector → socket → echo server (a second Selector) and back, in its own test binary with a
//! counting global allocator. After warm-up, 20,000 round trips allocate exactly as much as 10,000:
//! nothing (with and without `trackMessages`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::ClientConfig;
use mqnet::failover::{FailoverOutcome, FailoverRequest, FailoverResponse, FailoverTransport};
use mqnet_test_support::closed_loop::{ClosedLoop, EchoSelector, LoopClient};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const IN_FLIGHT: usize = 8;
const PAYLOAD: usize = 96;

/// The failover transport and a reused completion vector.
struct Client {
    t: FailoverTransport,
    done: Vec<FailoverResponse>,
}

impl LoopClient for Client {
    fn next_correlation_id(&mut self) -> i32 {
        self.t.next_correlation_id()
    }

    fn send_frame(&mut self, corr: i32, frame: Bytes, now: Instant) {
        self.t.send(FailoverRequest::new(corr, frame), now);
    }

    fn poll_completed(&mut self, now: Instant, len: usize) -> usize {
        self.t
            .poll_io(Some(Duration::ZERO), now)
            .expect("failover poll");
        // Completions are handled at the time read after the I/O (one clock: the caller's).
        self.t.handle_into(Instant::now(), &mut self.done);
        let n = self.done.len();
        for r in self.done.drain(..) {
            match &r.outcome {
                FailoverOutcome::Response(b) => assert_eq!(b.len(), len),
                other => panic!("request {} failed: {other:?}", r.correlation_id),
            }
        }
        n
    }
}

fn rig(track: bool) -> ClosedLoop<Client> {
    let server = EchoSelector::listen();
    let cfg = ClientConfig::default()
        .max_in_flight(IN_FLIGHT)
        .pipeline_unsent(true);
    let uri = format!("failover:(tcp://{})?trackMessages={track}", server.addr())
        .parse()
        .expect("failover URI");
    let client = Client {
        t: FailoverTransport::connect(&uri, cfg).expect("failover transport"),
        done: Vec::with_capacity(1024),
    };
    let mut rig = ClosedLoop::new(client, server, IN_FLIGHT, PAYLOAD);
    rig.pump_until("connected", |c| c.t.is_connected());
    rig.client.t.drain_events();
    rig
}

#[test]
fn failover_round_trips_allocate_nothing_in_steady_state() {
    counting_alloc::assert_counter_counts();
    for track in [false, true] {
        let mut rig = rig(track);
        rig.round_trips(5_000);
        let a10 = counting_alloc::count(|| rig.round_trips(10_000));
        let a20 = counting_alloc::count(|| rig.round_trips(20_000));
        assert_eq!(
            a10, a20,
            "track={track}: allocations grow with round trips: {a10} for 10,000, {a20} for 20,000"
        );
        assert_eq!(
            a20, 0,
            "track={track}: steady state should allocate nothing"
        );
        assert_eq!(rig.outstanding(), 0);
        assert_eq!(rig.client.t.outstanding(), 0);
    }
}
