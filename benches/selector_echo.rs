//! Loopback echo through one Selector (client and server channels in the same Selector, one thread):
//! 100-byte frames, with 1 and with 64 requests in flight. One element is one round trip (request
//! written, read by the server, echoed, read by the client).
//!
//! Run with `cargo bench --bench selector_echo`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mqnet::net::{ChannelId, Received, Selector, SocketOptions};

const PAYLOAD_LEN: usize = 100;

struct Echo {
    sel: Selector,
    client: ChannelId,
    server: ChannelId,
    payload: Bytes,
    rx: Vec<Received>,
}

impl Echo {
    fn new() -> Echo {
        let mut sel = Selector::new().expect("selector");
        let listener = sel.listen("127.0.0.1:0".parse().unwrap()).expect("listen");
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
            assert!(sel.disconnected().is_empty(), "{:?}", sel.disconnected());
            connected |= sel.connected().contains(&client);
            if let Some(a) = sel.accepted().first() {
                server = Some(a.channel);
            }
        }
        assert!(connected, "client never reported connected");
        Echo {
            sel,
            client,
            server: server.expect("listener accepted no connection"),
            payload: Bytes::from(vec![0x5Au8; PAYLOAD_LEN]),
            rx: Vec::with_capacity(128),
        }
    }

    /// Runs `total` round trips keeping up to `depth` requests in flight; returns the elapsed time.
    fn run(&mut self, total: u64, depth: u64) -> Duration {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(120);
        let max_polls = total.saturating_mul(100).saturating_add(10_000);
        let mut sent = 0u64;
        let mut answered = 0u64;
        while sent < total.min(depth) {
            self.sel.send(self.client, self.payload.clone()).unwrap();
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
                "{:?}",
                self.sel.disconnected()
            );
            self.sel.swap_completed_receives(&mut self.rx);
            for r in self.rx.drain(..) {
                if r.channel == self.server {
                    self.sel.send(self.server, r.frame).unwrap();
                } else {
                    black_box(&r.frame);
                    answered += 1;
                    if sent < total {
                        self.sel.send(self.client, self.payload.clone()).unwrap();
                        sent += 1;
                    }
                }
            }
        }
        start.elapsed()
    }
}

fn echo(c: &mut Criterion) {
    let mut group = c.benchmark_group("selector_echo_100B");
    group.throughput(Throughput::Elements(1));
    for depth in [1u64, 64] {
        let mut echo = Echo::new();
        group.bench_function(format!("in_flight_{depth}"), |b| {
            b.iter_custom(|iters| echo.run(iters, depth));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = echo
}
criterion_main!(benches);
