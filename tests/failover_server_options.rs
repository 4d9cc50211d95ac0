//! A server's own URI options become its connections' socket options; unknown ones are refused.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::ClientConfig;
use mqnet::failover::{FailoverTransport, FailoverUri, ServerUri, UriProblem};
use mqnet::net::{
    ChannelId, CompletedSend, Disconnected, Received, SendError, SocketOptions, Transport,
};
use mqnet::sim::{Behaviour, SimNetwork};

/// SimNetwork, recording the socket options of every connect.
struct Recording {
    inner: SimNetwork,
    seen: Vec<(SocketAddr, SocketOptions)>,
}

impl Transport for Recording {
    fn connect(&mut self, addr: SocketAddr, options: &SocketOptions) -> io::Result<ChannelId> {
        self.seen.push((addr, *options));
        self.inner.connect(addr, options)
    }
    fn send(&mut self, channel: ChannelId, frame: Bytes) -> Result<u64, (SendError, Bytes)> {
        self.inner.send(channel, frame)
    }
    fn close(&mut self, channel: ChannelId) {
        self.inner.close(channel);
    }
    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.poll(timeout)
    }
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn connected(&self) -> &[ChannelId] {
        self.inner.connected()
    }
    fn disconnected(&self) -> &[Disconnected] {
        self.inner.disconnected()
    }
    fn completed_sends(&self) -> &[CompletedSend] {
        self.inner.completed_sends()
    }
    fn swap_completed_receives(&mut self, out: &mut Vec<Received>) {
        self.inner.swap_completed_receives(out);
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn server_options_reach_that_servers_connections_only() {
    let mut net = SimNetwork::new();
    net.set_behaviour(addr(7101), Behaviour::Refuse);
    net.set_behaviour(addr(7102), Behaviour::Echo);
    let uri: FailoverUri = "failover:(tcp://127.0.0.1:7101?tcpNoDelay=false&socketBufferSize=-1,\
                            tcp://127.0.0.1:7102)?randomize=false"
        .parse()
        .unwrap();
    let cfg = ClientConfig::default();
    let base = cfg.socket_options();
    let rec = Recording {
        inner: net,
        seen: Vec::new(),
    };
    let mut t =
        FailoverTransport::with_transport(rec, cfg, mqnet::client::NoHandshake, &uri).unwrap();
    for _ in 0..100 {
        if t.is_connected() {
            break;
        }
        let now = t.client().transport().now();
        t.poll_io(Some(Duration::from_millis(10)), now)
            .map(|()| {
                let now = t.client().transport().now();
                t.handle(now)
            })
            .unwrap();
    }
    assert!(t.is_connected());
    let seen = &t.client().transport().seen;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, addr(7101));
    assert_eq!(
        seen[0].1,
        SocketOptions {
            nodelay: false,
            send_buffer_bytes: None,
            receive_buffer_bytes: None,
            ..base
        }
    );
    assert_eq!(seen[1], (addr(7102), base));

    // update_uris refuses a bad server option and leaves the list as it was.
    let bad = ServerUri::parse("tcp://127.0.0.1:7103?soTimeout=5").unwrap();
    let now = t.client().transport().now();
    let err = t.update_uris(&[bad], now).unwrap_err();
    assert!(err.to_string().contains("soTimeout"), "{err}");
    assert_eq!(t.servers().count(), 2);
}

#[test]
fn unknown_and_bad_server_options_are_named() {
    let e = "failover:(tcp://a:1?soTimeout=5&tcpNoDelay=maybe,tcp://b:2?keepAlive=true)"
        .parse::<FailoverUri>()
        .unwrap_err();
    assert_eq!(e.problems.len(), 2, "{e}");
    assert!(
        matches!(&e.problems[0], UriProblem::UnknownServerOption { key, .. } if key == "soTimeout")
    );
    let msg = e.to_string();
    assert!(msg.contains("tcpNoDelay") && msg.contains("maybe"), "{msg}");
}
