//! Loopback echo through one Selector (client and server channels in the same Selector, one thread):
//! 100-byte frames, with 1 and with 64 requests in flight. One element is one round trip (request
//! written, read by the server, echoed, read by the client).
//!
//! Run with `cargo bench --bench selector_echo`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mqnet_test_support::echo::LoopbackEcho;

const PAYLOAD_LEN: usize = 100;

fn echo(c: &mut Criterion) {
    let mut group = c.benchmark_group("selector_echo_100B");
    group.throughput(Throughput::Elements(1));
    for depth in [1u64, 64] {
        let mut echo = LoopbackEcho::new(PAYLOAD_LEN);
        group.bench_function(format!("in_flight_{depth}"), |b| {
            b.iter_custom(|iters| {
                echo.run(iters, depth, Instant::now() + Duration::from_secs(120))
            });
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
