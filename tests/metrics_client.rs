//! The NetworkClient's metrics: exact counts, bytes and window-arithmetic rates for known traffic
//! on simulated time, and the Selector's io-wait-ratio on a real poller.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use mqnet::client::{ClientConfig, ClientRequest, NetworkClient, NoHandshake, NodeId};
use mqnet::metrics::MetricConfig;
use mqnet::net::Transport;
use mqnet::sim::{Behaviour, SimNetwork};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn known_traffic_gives_exact_counts_bytes_and_rates() {
    let addr: SocketAddr = "127.0.0.1:9000".parse().expect("addr");
    let mut net = SimNetwork::new();
    net.set_behaviour(addr, Behaviour::Echo);
    let window = Duration::from_secs(1);
    let mut c = NetworkClient::with_transport(net, ClientConfig::default(), NoHandshake)
        .with_metric_config(MetricConfig::new(window, 2));
    let node = NodeId(0);
    c.add_node(node, "127.0.0.1:9000").expect("node");
    for _ in 0..1000 {
        let now = c.transport().now();
        if c.ready(node, now) {
            break;
        }
        {
            c.poll_io(Some(ms(1)), now).expect("poll");
            let after = c.transport().now();
            c.handle(after)
        };
    }
    let t0 = c.transport().now();
    assert!(c.ready(node, t0), "connected");
    // Five requests of 8 bytes (a 4-byte length prefix each on the wire), sent at t0; a poll that
    // does not advance the clock records them at t0.
    for _ in 0..5 {
        let corr = c.next_correlation_id();
        let mut v = corr.to_be_bytes().to_vec();
        v.extend_from_slice(b"body");
        c.send(ClientRequest::new(node, corr, Bytes::from(v)), t0);
    }
    {
        c.poll_io(Some(Duration::ZERO), t0).expect("poll");
        let after = c.transport().now();
        c.handle(after)
    };
    assert_eq!(c.transport().now(), t0);
    let mut done = 0;
    for _ in 0..1000 {
        if done == 5 {
            break;
        }
        let now = c.transport().now();
        done += {
            c.poll_io(Some(ms(1)), now).expect("poll");
            let after = c.transport().now();
            c.handle(after)
        }
        .len();
    }
    assert_eq!(done, 5);
    let m = c.metrics();
    let n = m.node(node).expect("node");
    assert_eq!(n.request_total, 5);
    assert_eq!(n.response_total, 5);
    assert_eq!(n.outgoing_byte_total, 5 * 12);
    assert_eq!(n.incoming_byte_total, 5 * 12);
    assert_eq!(n.requests_in_flight, 0);
    assert_eq!(n.connects, 1);
    assert_eq!(n.connections_created, 1);
    // Sent in one poll at t0 (the Selector stages max.in.flight = 5), answered after the sim's
    // 1 ms each way.
    assert_eq!(n.request_latency_avg_ms, 2.0);
    assert_eq!(n.request_latency_max_ms, 2.0);
    assert_eq!(m.connection_count, 1);
    assert_eq!(m.request_total, 5);
    assert_eq!(m.connection_creation_total, 1);
    assert!(m.io_wait_ratio.is_none(), "the sim has no OS poller");
    // 1.5 s after t0: one full window has passed, so no padding: the rate is total / 1.5 s.
    let at = t0 + ms(1500);
    let d = at - c.transport().now();
    c.transport_mut().advance(d);
    let m = c.metrics();
    let n = m.node(node).expect("node");
    assert_eq!(n.request_rate, 5.0 / 1.5);
    assert_eq!(n.outgoing_byte_rate, 60.0 / 1.5);
    assert_eq!(m.request_rate, 5.0 / 1.5);
    assert_eq!(m.outgoing_byte_rate, 60.0 / 1.5);
    // Two windows after the last event (the answers, at t0 + 2 ms) every sample has expired:
    // rates 0, windowed averages NaN; totals stay.
    c.transport_mut().advance(ms(502));
    let m = c.metrics();
    let n = m.node(node).expect("node");
    assert_eq!(n.request_rate, 0.0);
    assert_eq!(m.request_rate, 0.0);
    assert!(n.request_latency_avg_ms.is_nan());
    assert_eq!(n.request_total, 5);
    // The rows carry Kafka's names and the node-id tag.
    let rows = m.to_metrics("selector-metrics", "node-metrics");
    let row = rows
        .iter()
        .find(|r| r.name == "request-total" && r.group == "node-metrics")
        .expect("row");
    assert_eq!(row.tags, vec![("node-id", "node-0".to_string())]);
    assert_eq!(row.value, 5.0);
    // A disconnect counts as a close.
    let now = c.transport().now();
    c.disconnect(node, now);
    let m = c.metrics();
    assert_eq!(m.connection_close_total, 1);
    assert_eq!(m.connection_count, 0);
}

#[test]
fn the_selector_reports_io_wait_ratio() {
    let mut c = NetworkClient::new(ClientConfig::default()).expect("client");
    for _ in 0..3 {
        let now = std::time::Instant::now();
        {
            c.poll_io(Some(ms(20)), now).expect("poll");
            let after = c.transport().now();
            c.handle(after)
        };
    }
    let m = c.metrics();
    let sel = m.selector.expect("the Selector's counters");
    assert!(sel.selects >= 3);
    let ratio = m.io_wait_ratio.expect("io-wait-ratio");
    // The polls waited (nothing to do) for most of their time: some waiting was measured, and a
    // ratio of time per second is never above 1.
    assert!(ratio > 0.0 && ratio <= 1.0, "{ratio}");
}
