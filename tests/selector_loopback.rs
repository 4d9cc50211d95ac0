//! Loopback integration tests of the Selector: echo, large frames, many connections, mute, the
//! waker, byte-at-a-time peers, generation-tagged ids, back-pressure, graceful close, completed
//! sends and metrics. Everything runs on 127.0.0.1 and every wait is bounded (see `common`).

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::net::{
    ChannelError, ChannelId, CloseMode, DisconnectReason, Selector, SelectorConfig, SendError,
    SocketOptions,
};
use mqnet_test_support::selector_loop::*;

/// A Selector with a listener on 127.0.0.1; returns it and the listener's address.
fn server(config: SelectorConfig) -> (Selector, std::net::SocketAddr) {
    let mut sel = Selector::with_config(config).expect("selector");
    let l = sel.listen(localhost()).expect("listen");
    let addr = sel.listener_addr(l).expect("listener addr");
    (sel, addr)
}

/// Polls `sel` (which runs an [`Echo`] server) until `cond` holds over everything seen so far.
fn run_echo(
    sel: &mut Selector,
    echo: &mut Echo,
    log: &mut Outputs,
    what: &str,
    mut cond: impl FnMut(&Selector, &Outputs, &Echo) -> bool,
) -> u64 {
    poll_until(sel, what, |sel| {
        let out = Outputs::take(sel);
        echo.handle(sel, &out);
        log.extend(out);
        cond(sel, log, echo)
    })
}

#[test]
fn echo_round_trips_frames_intact() {
    init_log();
    let (mut sel, addr) = server(SelectorConfig::default());
    let clients: Vec<ChannelId> = (0..2)
        .map(|_| {
            sel.connect(addr, &SocketOptions::default())
                .expect("connect")
        })
        .collect();
    let sizes = [
        0usize, 1, 3, 4, 5, 100, 4096, 65_535, 65_536, 65_537, 300_000,
    ];
    let mut expected: HashMap<ChannelId, Vec<Bytes>> = HashMap::new();
    // Staged while the channels are still connecting: written once they are up.
    for (c, &ch) in clients.iter().enumerate() {
        for (i, &n) in sizes.iter().enumerate() {
            let p = Bytes::from(pattern((c * 100 + i) as u64, n));
            let seq = sel.send(ch, p.clone()).expect("send");
            assert_eq!(seq, i as u64);
            expected.entry(ch).or_default().push(p);
        }
    }
    let mut echo = Echo::default();
    let mut log = Outputs::default();
    run_echo(
        &mut sel,
        &mut echo,
        &mut log,
        "every frame echoed",
        |_, log, _| {
            clients
                .iter()
                .all(|c| log.frames_on(*c).len() >= sizes.len())
        },
    );
    for &c in &clients {
        let got = log.frames_on(c);
        assert_eq!(got.len(), sizes.len(), "frames echoed to {c}");
        for (i, (g, w)) in got.iter().zip(&expected[&c]).enumerate() {
            assert_same(g, w, &format!("{c} frame {i}"));
        }
        assert_eq!(log.connected.iter().filter(|x| **x == c).count(), 1);
        assert_eq!(log.seqs_of(c), (0..sizes.len() as u64).collect::<Vec<_>>());
        assert!(sel.is_connected(c));
    }
    assert_eq!(log.accepted.len(), 2);
    assert_eq!(echo.echoed, 2 * sizes.len() as u64);
    assert!(log.disconnected.is_empty(), "{:?}", log.disconnected);
}

#[test]
fn a_64_mib_frame_round_trips_over_many_polls() {
    init_log();
    let config = SelectorConfig::default();
    let read_budget = config.read_budget;
    let (mut sel, addr) = server(config);
    let client = sel
        .connect(addr, &SocketOptions::default())
        .expect("connect");
    let len = 64 << 20;
    let payload = Bytes::from(pattern(0x64, len));
    // Bigger than max_staged_bytes (16 MiB) but nothing else is staged: accepted.
    assert!(len > sel.config().max_staged_bytes);
    assert_eq!(sel.send(client, payload.clone()), Ok(0));
    // A second frame now would exceed the bound.
    assert!(matches!(
        sel.send(client, Bytes::from_static(b"x")),
        Err(SendError::QueueFull { .. })
    ));

    let mut echo = Echo::default();
    let mut log = Outputs::default();
    run_echo(&mut sel, &mut echo, &mut log, "64 MiB echo", |_, log, _| {
        !log.frames_on(client).is_empty()
    });
    let got = log.frames_on(client);
    assert_eq!(got.len(), 1);
    assert_same(&got[0], &payload, "echoed 64 MiB frame");
    assert_eq!(echo.echoed, 1);
    assert_eq!(log.seqs_of(client), vec![0]);
    // Each direction needs at least len / read_budget reads, one budget per poll.
    let polls = sel.metrics().polls;
    assert!(
        polls >= 2 * (len / read_budget) as u64,
        "only {polls} polls for 2 x 64 MiB with a {read_budget} B read budget"
    );
    let m = sel.metrics();
    assert_eq!(m.frames_in, 2);
    assert_eq!(m.frames_out, 2);
    assert_eq!(m.bytes_in, 2 * (len as u64 + 4));
    assert_eq!(m.bytes_out, 2 * (len as u64 + 4));
    assert!(log.disconnected.is_empty(), "{:?}", log.disconnected);
}

#[test]
fn a_thousand_concurrent_connections_exchange_frames() {
    init_log();
    const N: usize = 1000;
    const FRAMES: usize = 3;
    let limit = raise_nofile(2 * N as u64 + 512);
    assert!(limit >= 2 * N as u64 + 64, "RLIMIT_NOFILE {limit} too low");

    let (mut sel, addr) = server(SelectorConfig::default());
    let mut echo = Echo::default();
    let mut log = Outputs::default();
    let mut clients = Vec::with_capacity(N);
    // Connect in batches so the accept backlog never overflows (no SYN retransmits).
    for _batch in 0..N / 100 {
        for _ in 0..100 {
            clients.push(
                sel.connect(addr, &SocketOptions::default())
                    .expect("connect"),
            );
        }
        let want = clients.len();
        run_echo(
            &mut sel,
            &mut echo,
            &mut log,
            "batch connected and accepted",
            |_, log, echo| log.connected.len() == want && echo.channels.len() == want,
        );
    }
    assert_eq!(sel.len(), 1 + 2 * N);
    assert_eq!(sel.metrics().connections_created, 2 * N as u64);

    let index = |c: usize, k: usize| (c * FRAMES + k) as u32;
    for (c, &ch) in clients.iter().enumerate() {
        for k in 0..FRAMES {
            let len = 8 + (c % 50) * 37 + k;
            sel.send(ch, indexed_payload(index(c, k), len))
                .expect("send");
        }
    }
    let mut per_channel: HashMap<ChannelId, Vec<u32>> = HashMap::new();
    let mut complete = 0usize;
    poll_until(&mut sel, "every client got its frames back", |sel| {
        let out = Outputs::take(sel);
        echo.handle(sel, &out);
        for r in &out.receives {
            if !echo.channels.contains(&r.channel) {
                let v = per_channel.entry(r.channel).or_default();
                v.push(check_indexed_payload(&r.frame));
                if v.len() == FRAMES {
                    complete += 1;
                }
            }
        }
        assert!(out.disconnected.is_empty(), "{:?}", out.disconnected);
        complete == N
    });
    for (c, ch) in clients.iter().enumerate() {
        let want: Vec<u32> = (0..FRAMES).map(|k| index(c, k)).collect();
        assert_eq!(per_channel[ch], want, "frames of client {c}");
    }

    // Close every client; the server reports each accepted channel closed exactly once.
    for &ch in &clients {
        sel.close(ch, CloseMode::Immediate).expect("close");
    }
    let mut closed = Vec::new();
    poll_until(&mut sel, "server saw every client close", |sel| {
        closed.extend_from_slice(sel.disconnected());
        closed.len() >= N
    });
    poll_n(&mut sel, 5, |sel| {
        closed.extend_from_slice(sel.disconnected())
    });
    assert_eq!(closed.len(), N);
    let mut ids: Vec<ChannelId> = closed.iter().map(|d| d.channel).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N, "a channel was reported twice");
    for d in &closed {
        assert!(echo.channels.contains(&d.channel));
        assert_eq!(d.reason, DisconnectReason::PeerClosed, "{d:?}");
    }
    assert_eq!(sel.len(), 1);
    let m = sel.metrics();
    assert_eq!(m.connections_closed, 2 * N as u64);
    assert_eq!(m.open_connections(), 0);
}

#[test]
fn mute_stops_delivery_and_unmute_resumes_it_in_order() {
    init_log();
    let (mut sel, addr) = server(SelectorConfig::default());
    let client = sel
        .connect(addr, &SocketOptions::default())
        .expect("connect");
    let mut log = Outputs::default();
    poll_until(&mut sel, "connected and accepted", |sel| {
        log.extend(Outputs::take(sel));
        log.connected.contains(&client) && !log.accepted.is_empty()
    });
    let srv = log.accepted[0].channel;

    // Baseline: delivery works.
    sel.send(client, indexed_payload(0, 16)).expect("send");
    poll_until(&mut sel, "first frame", |sel| {
        log.extend(Outputs::take(sel));
        !log.frames_on(srv).is_empty()
    });

    sel.mute(srv).expect("mute");
    sel.mute(srv).expect("muting twice is a no-op");
    assert!(sel.is_muted(srv));
    const MUTED: u32 = 20;
    for i in 1..=MUTED {
        sel.send(client, indexed_payload(i, 16 + i as usize * 100))
            .expect("send");
    }
    // Writes of a muted channel continue.
    sel.send(srv, Bytes::from_static(b"from muted"))
        .expect("send");
    let bytes_in_before = sel.metrics().bytes_in;
    let mut muted_log = Outputs::default();
    poll_until(&mut sel, "sends left while muted", |sel| {
        muted_log.extend(Outputs::take(sel));
        muted_log.seqs_of(client).len() == MUTED as usize && !muted_log.frames_on(client).is_empty()
    });
    // Give the bytes ample real time to reach the muted socket, polling all along.
    let since = Instant::now();
    poll_until(&mut sel, "300 ms of muted polls", |sel| {
        muted_log.extend(Outputs::take(sel));
        since.elapsed() >= Duration::from_millis(300)
    });
    assert!(
        muted_log.frames_on(srv).is_empty(),
        "muted channel delivered {} frames",
        muted_log.frames_on(srv).len()
    );
    assert_eq!(
        &muted_log.frames_on(client)[..],
        &[Bytes::from_static(b"from muted")]
    );
    // Only the client read (the echo of "from muted"); the muted channel read nothing.
    assert_eq!(sel.metrics().bytes_in - bytes_in_before, 4 + 10);

    sel.unmute(srv).expect("unmute");
    assert!(!sel.is_muted(srv));
    let mut after = Outputs::default();
    poll_until(&mut sel, "frames sent while muted", |sel| {
        after.extend(Outputs::take(sel));
        after.frames_on(srv).len() >= MUTED as usize
    });
    let got: Vec<u32> = after
        .frames_on(srv)
        .iter()
        .map(|f| check_indexed_payload(f))
        .collect();
    assert_eq!(got, (1..=MUTED).collect::<Vec<_>>());
    assert!(log.disconnected.is_empty() && muted_log.disconnected.is_empty());
    assert!(after.disconnected.is_empty());
    // Unmuting an unmuted channel is a no-op.
    sel.unmute(srv).expect("unmute twice");
}

#[test]
fn the_waker_interrupts_a_blocking_poll_from_another_thread() {
    init_log();
    let (waker_tx, waker_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let t = thread::spawn(move || {
        let mut sel = Selector::new().expect("selector");
        waker_tx.send(sel.waker()).expect("send waker");
        // poll(None) blocks until something happens; only the waker can make something happen
        // here. Bounded: a spurious return (EINTR) is retried a few times at most.
        let mut polls = 0;
        while polls < 100 {
            sel.poll(None).expect("poll");
            polls += 1;
            if sel.woken() {
                break;
            }
        }
        let woken = sel.woken();
        // A later poll is not woken again: a wake is reported once.
        sel.poll(Some(Duration::from_millis(10))).expect("poll");
        done_tx
            .send((woken, polls, sel.woken()))
            .expect("send result");
    });
    let waker = waker_rx.recv_timeout(DEADLINE).expect("waker from thread");
    // The thread is blocked: nothing is reported without a wake.
    assert_eq!(
        done_rx.recv_timeout(Duration::from_millis(200)),
        Err(mpsc::RecvTimeoutError::Timeout),
        "poll(None) returned woken without a wake"
    );
    waker.wake().expect("wake");
    let (woken, polls, woken_again) = done_rx
        .recv_timeout(DEADLINE)
        .expect("the woken poll never returned");
    assert!(
        woken,
        "poll returned after {polls} polls without reporting woken"
    );
    assert!(!woken_again, "a wake was reported twice");
    t.join().expect("thread");

    // Wakes before a poll coalesce into one report.
    let mut sel = Selector::new().expect("selector");
    let w = sel.waker();
    w.wake().expect("wake");
    w.wake().expect("wake");
    sel.poll(Some(DEADLINE)).expect("poll");
    assert!(sel.woken());
    sel.poll(Some(Duration::from_millis(10))).expect("poll");
    assert!(!sel.woken(), "two wakes gave two reports");
}

#[test]
fn a_peer_writing_one_byte_at_a_time_is_decoded_right() {
    init_log();
    let (mut sel, addr) = server(SelectorConfig::default());
    let mut peer = raw_connect(addr);
    let mut log = Outputs::default();
    poll_until(&mut sel, "raw peer accepted", |sel| {
        log.extend(Outputs::take(sel));
        !log.accepted.is_empty()
    });
    let srv = log.accepted[0].channel;
    assert_eq!(log.accepted[0].peer, peer.local_addr().unwrap());

    let payloads: Vec<Vec<u8>> = vec![
        b"hello".to_vec(),
        Vec::new(),
        b"world!".to_vec(),
        pattern(7, 300),
        vec![0xff; 3],
    ];
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for p in &payloads {
        stream.extend(encode_frame(p));
        ends.push(stream.len());
    }
    let mut got: Vec<Bytes> = Vec::new();
    for (i, b) in stream.iter().enumerate() {
        use std::io::Write;
        peer.write_all(std::slice::from_ref(b)).expect("write byte");
        peer.flush().expect("flush");
        let want_in = i as u64 + 1;
        // Each poll sees exactly the byte just written: the Selector decodes one byte at a time.
        poll_until(&mut sel, "the byte just written", |sel| {
            let out = Outputs::take(sel);
            assert!(out.disconnected.is_empty(), "{:?}", out.disconnected);
            got.extend(out.frames_on(srv));
            sel.metrics().bytes_in >= want_in
        });
        assert_eq!(sel.metrics().bytes_in, want_in);
        // Frames are reported exactly when their last byte arrives.
        let complete = ends.iter().filter(|&&e| e <= i + 1).count();
        assert_eq!(got.len(), complete, "frames complete after byte {i}");
    }
    let want: Vec<Bytes> = payloads.into_iter().map(Bytes::from).collect();
    assert_eq!(got, want);
    assert!(sel.is_connected(srv));
}

#[test]
fn stale_ids_of_reused_slots_are_unknown() {
    init_log();
    let (mut srv, addr) = server(SelectorConfig::default());
    let mut cli = Selector::new().expect("selector");
    let mut accepted = Vec::new();

    let connect = |cli: &mut Selector, srv: &mut Selector, accepted: &mut Vec<ChannelId>| {
        let id = cli
            .connect(addr, &SocketOptions::default())
            .expect("connect");
        let mut connected = false;
        let before = accepted.len();
        poll_pair_until(cli, srv, "connected and accepted", |cli, srv| {
            connected |= cli.connected().contains(&id);
            accepted.extend(srv.accepted().iter().map(|a| a.channel));
            connected && accepted.len() > before
        });
        id
    };

    let a = connect(&mut cli, &mut srv, &mut accepted);
    assert!(cli.is_connected(a));
    cli.close(a, CloseMode::Immediate).expect("close a");
    let b = connect(&mut cli, &mut srv, &mut accepted);
    assert_eq!(b.slot(), a.slot(), "the freed slot is reused");
    assert_ne!(b.generation(), a.generation());
    assert_ne!(a, b);

    let dead = |cli: &mut Selector, id: ChannelId| {
        assert!(!cli.is_connected(id));
        assert!(!cli.contains(id));
        assert!(!cli.is_writable(id));
        assert!(!cli.is_muted(id));
        assert_eq!(cli.staged_bytes(id), 0);
        assert_eq!(cli.peer_addr(id), None);
        assert_eq!(
            cli.send(id, Bytes::from_static(b"stale")),
            Err(SendError::UnknownChannel)
        );
        assert_eq!(cli.mute(id), Err(ChannelError::Unknown));
        assert_eq!(cli.unmute(id), Err(ChannelError::Unknown));
        assert_eq!(
            cli.close(id, CloseMode::Immediate),
            Err(ChannelError::Unknown)
        );
        assert_eq!(
            cli.close(id, CloseMode::Graceful { timeout: DEADLINE }),
            Err(ChannelError::Unknown)
        );
    };
    dead(&mut cli, a);
    // The stale calls did not disturb the channel that reuses the slot.
    assert!(cli.is_connected(b));
    assert!(!cli.is_muted(b));

    // b is closed by the Selector itself (the server closes the accepted side).
    let b_srv = *accepted.last().unwrap();
    srv.close(b_srv, CloseMode::Immediate)
        .expect("server close");
    let mut reasons = Vec::new();
    poll_pair_until(&mut cli, &mut srv, "b reported closed", |cli, _| {
        reasons.extend(
            cli.disconnected()
                .iter()
                .filter(|d| d.channel == b)
                .map(|d| d.reason),
        );
        !reasons.is_empty()
    });
    assert_eq!(reasons, vec![DisconnectReason::PeerClosed]);
    let c = connect(&mut cli, &mut srv, &mut accepted);
    assert_eq!(c.slot(), b.slot());
    assert!(c.generation() != a.generation() && c.generation() != b.generation());
    dead(&mut cli, a);
    dead(&mut cli, b);

    // c works: a frame sent on it arrives at the server.
    assert_eq!(cli.send(c, Bytes::from_static(b"alive")), Ok(0));
    let c_srv = *accepted.last().unwrap();
    let mut got = Vec::new();
    poll_pair_until(&mut cli, &mut srv, "frame on c", |_, srv| {
        got.extend(
            srv.completed_receives()
                .iter()
                .filter(|r| r.channel == c_srv)
                .map(|r| r.frame.clone()),
        );
        !got.is_empty()
    });
    assert_eq!(got, vec![Bytes::from_static(b"alive")]);
}

#[test]
fn backpressure_refuses_sends_until_the_peer_reads_and_drops_nothing() {
    init_log();
    const LIMIT: usize = 64 * 1024;
    // 1004-byte frames: LIMIT is not a whole number of frames, so a refused send can leave the
    // staged bytes below LIMIT.
    const PAYLOAD: usize = 1000;
    let listener = raw_listener();
    socket2::SockRef::from(&listener)
        .set_recv_buffer_size(16 * 1024)
        .expect("SO_RCVBUF");
    let addr = listener.local_addr().unwrap();
    let mut sel = Selector::with_config(SelectorConfig {
        max_staged_bytes: LIMIT,
        ..SelectorConfig::default()
    })
    .expect("selector");
    let opts = SocketOptions {
        send_buffer_bytes: Some(16 * 1024),
        ..SocketOptions::default()
    };
    let ch = sel.connect(addr, &opts).expect("connect");
    let mut peer = raw_accept(&listener);
    let mut log = Outputs::default();
    poll_until(&mut sel, "connected", |sel| {
        log.extend(Outputs::take(sel));
        log.connected.contains(&ch)
    });

    // Phase 1: the peer does not read. Fill the queue until a poll can write nothing at all.
    let mut next: u32 = 0;
    let mut refusals = 0u32;
    poll_until(&mut sel, "kernel buffers full and queue full", |sel| {
        log.extend(Outputs::take(sel));
        if !sel.is_writable(ch) {
            // The last poll wrote nothing: the peer's window is shut.
            return true;
        }
        loop {
            match sel.send(ch, indexed_payload(next, PAYLOAD)) {
                Ok(seq) => {
                    assert_eq!(seq, u64::from(next));
                    next += 1;
                }
                Err(SendError::QueueFull { staged, limit }) => {
                    assert_eq!(limit, LIMIT);
                    assert!(staged + PAYLOAD + 4 > LIMIT, "refused with room: {staged}");
                    assert_eq!(
                        sel.staged_bytes(ch),
                        staged,
                        "a refused send staged something"
                    );
                    assert!(!sel.is_writable(ch), "not writable right after QueueFull");
                    refusals += 1;
                    break;
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        false
    });
    assert!(refusals > 0);
    assert!(!sel.is_writable(ch));
    assert!(sel.staged_bytes(ch) + PAYLOAD + 4 > LIMIT);
    assert!(sel.staged_frames(ch) >= LIMIT / 1024);

    // Phase 2: the peer reads everything until EOF, on its own thread.
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut peer).expect("peer read") {
            got.push(check_indexed_payload(&f));
        }
        tx.send(got).expect("send result");
    });
    poll_until(&mut sel, "writable again after the peer reads", |sel| {
        log.extend(Outputs::take(sel));
        sel.is_writable(ch)
    });
    // More frames, retried on back-pressure.
    let total = next + 500;
    poll_until(&mut sel, "the rest staged", |sel| {
        log.extend(Outputs::take(sel));
        while next < total {
            match sel.send(ch, indexed_payload(next, PAYLOAD)) {
                Ok(_) => next += 1,
                Err(SendError::QueueFull { .. }) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        next == total
    });
    sel.close(ch, CloseMode::Graceful { timeout: DEADLINE })
        .expect("close");
    poll_until(&mut sel, "graceful close", |sel| {
        log.extend(Outputs::take(sel));
        !log.disconnected.is_empty()
    });
    assert_eq!(log.disconnected.len(), 1);
    assert_eq!(
        log.disconnected[0].reason,
        DisconnectReason::LocalClose { flushed: true }
    );
    assert_eq!(log.disconnected[0].unsent, 0);
    let got = rx.recv_timeout(DEADLINE).expect("reader result");
    reader.join().expect("reader");
    assert_eq!(got, (0..total).collect::<Vec<_>>(), "frames at the peer");
    assert_eq!(log.seqs_of(ch), (0..u64::from(total)).collect::<Vec<_>>());
}

#[test]
fn graceful_close_flushes_staged_sends_first() {
    init_log();
    let (mut srv, addr) = server(SelectorConfig::default());
    let mut cli = Selector::new().expect("selector");
    let ch = cli
        .connect(addr, &SocketOptions::default())
        .expect("connect");
    let mut frames = Vec::new();
    for i in 0..100u32 {
        frames.push(indexed_payload(i, 10 * 1024 + i as usize));
    }
    frames.push(indexed_payload(100, 1 << 20));
    let mut connected = false;
    let mut s_log = Outputs::default();
    poll_pair_until(&mut cli, &mut srv, "connected and accepted", |cli, srv| {
        connected |= cli.connected().contains(&ch);
        s_log.extend(Outputs::take(srv));
        connected && !s_log.accepted.is_empty()
    });
    for f in &frames {
        cli.send(ch, f.clone()).expect("send");
    }
    cli.close(ch, CloseMode::Graceful { timeout: DEADLINE })
        .expect("close");
    // Closing: no new sends, not "connected", still known.
    assert_eq!(
        cli.send(ch, Bytes::from_static(b"late")),
        Err(SendError::Closing)
    );
    assert!(!cli.is_writable(ch));
    assert!(!cli.is_connected(ch));
    assert!(cli.contains(ch));
    // A second graceful close is a no-op.
    cli.close(ch, CloseMode::Graceful { timeout: DEADLINE })
        .expect("close twice");

    let mut c_log = Outputs::default();
    poll_pair_until(
        &mut cli,
        &mut srv,
        "flushed, closed, received",
        |cli, srv| {
            c_log.extend(Outputs::take(cli));
            s_log.extend(Outputs::take(srv));
            !c_log.disconnected.is_empty() && !s_log.disconnected.is_empty()
        },
    );
    assert_eq!(c_log.disconnected.len(), 1);
    let d = c_log.disconnected[0];
    assert_eq!(d.channel, ch);
    assert_eq!(d.reason, DisconnectReason::LocalClose { flushed: true });
    assert_eq!(d.unsent, 0);
    assert_eq!(
        c_log.seqs_of(ch),
        (0..frames.len() as u64).collect::<Vec<_>>()
    );
    assert!(!cli.contains(ch));
    assert_eq!(
        cli.send(ch, Bytes::from_static(b"late")),
        Err(SendError::UnknownChannel)
    );
    let srv_ch = s_log.accepted[0].channel;
    assert_eq!(
        s_log.disconnects_of(srv_ch)[0].reason,
        DisconnectReason::PeerClosed
    );
    let got = s_log.frames_on(srv_ch);
    assert_eq!(got.len(), frames.len());
    for (i, (g, w)) in got.iter().zip(&frames).enumerate() {
        assert_same(g, w, &format!("frame {i}"));
    }

    // A graceful close with nothing staged is reported by the next poll, once.
    let ch2 = cli
        .connect(addr, &SocketOptions::default())
        .expect("connect");
    let mut connected = false;
    poll_pair_until(&mut cli, &mut srv, "second connect", |cli, _| {
        connected |= cli.connected().contains(&ch2);
        connected
    });
    cli.close(ch2, CloseMode::Graceful { timeout: DEADLINE })
        .expect("close");
    cli.poll(Some(Duration::ZERO)).expect("poll");
    assert_eq!(cli.disconnected().len(), 1);
    assert_eq!(cli.disconnected()[0].channel, ch2);
    assert_eq!(
        cli.disconnected()[0].reason,
        DisconnectReason::LocalClose { flushed: true }
    );
    poll_n(&mut cli, 5, |cli| {
        assert!(cli.disconnected().is_empty(), "{:?}", cli.disconnected())
    });
}

#[test]
fn completed_sends_report_each_seq_once_in_order() {
    init_log();
    let (mut sel, addr) = server(SelectorConfig {
        max_staged_bytes: 64 << 20,
        ..SelectorConfig::default()
    });
    let a = sel
        .connect(addr, &SocketOptions::default())
        .expect("connect");
    let b = sel
        .connect(addr, &SocketOptions::default())
        .expect("connect");
    let mut seqs: HashMap<ChannelId, Vec<u64>> = HashMap::new();
    let mut sent: HashMap<ChannelId, Vec<Bytes>> = HashMap::new();
    for i in 0..300u32 {
        let ch = if i % 3 == 0 { b } else { a };
        // Sizes from empty-ish to 200 KiB, so writes split frames and gather many at once.
        let len = 4 + ((i as usize * 7919) % (200 * 1024));
        let p = indexed_payload(i, len);
        let seq = sel.send(ch, p.clone()).expect("send");
        seqs.entry(ch).or_default().push(seq);
        sent.entry(ch).or_default().push(p);
    }
    for ch in [a, b] {
        let n = seqs[&ch].len() as u64;
        assert_eq!(
            seqs[&ch],
            (0..n).collect::<Vec<_>>(),
            "seqs returned by send"
        );
    }
    let mut log = Outputs::default();
    let total = 300;
    poll_until(&mut sel, "all sends completed and received", |sel| {
        log.extend(Outputs::take(sel));
        log.completed_sends.len() >= total && log.receives.len() >= total
    });
    poll_n(&mut sel, 5, |sel| log.extend(Outputs::take(sel)));
    assert_eq!(
        log.completed_sends.len(),
        total,
        "a send was reported twice"
    );
    for ch in [a, b] {
        assert_eq!(log.seqs_of(ch), seqs[&ch], "completed sends of {ch}");
    }
    // The server got them all, in order per channel.
    let mut by_server_channel: HashMap<ChannelId, Vec<Bytes>> = HashMap::new();
    for r in &log.receives {
        by_server_channel
            .entry(r.channel)
            .or_default()
            .push(r.frame.clone());
    }
    assert_eq!(by_server_channel.len(), 2);
    let mut got: Vec<Vec<Bytes>> = by_server_channel.into_values().collect();
    got.sort_by_key(|v| v.len());
    let mut want: Vec<Vec<Bytes>> = sent.into_values().collect();
    want.sort_by_key(|v| v.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.len(), w.len());
        for (i, (gf, wf)) in g.iter().zip(w).enumerate() {
            assert_same(gf, wf, &format!("frame {i}"));
        }
    }
}

#[test]
fn metrics_are_consistent_after_an_echo_exchange() {
    init_log();
    let (mut srv, addr) = server(SelectorConfig::default());
    let mut cli = Selector::new().expect("selector");
    let ch = cli
        .connect(addr, &SocketOptions::default())
        .expect("connect");
    let sizes: Vec<usize> = (0..40).map(|i| i * 1000).collect();
    let mut expected_bytes = 0u64;
    for (i, &n) in sizes.iter().enumerate() {
        cli.send(ch, Bytes::from(pattern(i as u64, n)))
            .expect("send");
        expected_bytes += 4 + n as u64;
    }
    let mut echo = Echo::default();
    let mut c_log = Outputs::default();
    let mut polls = 0u64;
    polls += poll_pair_until(&mut cli, &mut srv, "echo exchange", |cli, srv| {
        let out = Outputs::take(srv);
        echo.handle(srv, &out);
        c_log.extend(Outputs::take(cli));
        c_log.receives.len() >= sizes.len()
    });
    let n = sizes.len() as u64;
    let (c, s) = (cli.metrics(), srv.metrics());
    assert_eq!(c.polls, polls);
    assert_eq!(s.polls, polls);
    assert_eq!(c.selects, c.polls, "one epoll_wait per poll");
    for (who, m) in [("client", c), ("server", s)] {
        assert_eq!(m.connections_created, 1, "{who}");
        assert_eq!(m.connections_closed, 0, "{who}");
        assert_eq!(m.connect_failures, 0, "{who}");
        assert_eq!(m.frames_in, n, "{who}");
        assert_eq!(m.frames_out, n, "{who}");
        assert_eq!(m.bytes_in, expected_bytes, "{who}");
        assert_eq!(m.bytes_out, expected_bytes, "{who}");
        assert_eq!(m.open_connections(), 1, "{who}");
        let r = m.io_ratio() + m.io_wait_ratio();
        assert!((r - 1.0).abs() < 1e-9, "{who}: ratios sum to {r}");
    }

    cli.close(ch, CloseMode::Immediate).expect("close");
    assert_eq!(cli.metrics().connections_closed, 1);
    poll_pair_until(&mut cli, &mut srv, "server sees the close", |_, srv| {
        !srv.disconnected().is_empty()
    });
    let (c, s) = (cli.metrics(), srv.metrics());
    assert_eq!((c.connections_closed, s.connections_closed), (1, 1));
    assert_eq!((c.open_connections(), s.open_connections()), (0, 0));
    assert_eq!((c.frames_in, s.frames_out), (n, n));
    assert_eq!(s.bytes_in, expected_bytes, "EOF adds no bytes");
}

/// A Selector connected to a std peer that accepts and then only reads when told: returns the
/// Selector, its ready channel and the peer's socket.
fn connected_to_silent_peer() -> (Selector, ChannelId, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind(localhost()).expect("bind");
    let mut sel = Selector::new().expect("selector");
    let ch = sel
        .connect(
            listener.local_addr().expect("addr"),
            &SocketOptions::default(),
        )
        .expect("connect");
    let (peer, _) = listener.accept().expect("accept");
    poll_until(&mut sel, "connected", |sel| sel.connected().contains(&ch));
    (sel, ch, peer)
}

#[test]
fn completed_sends_wake_the_poll_only_while_asked_to() {
    init_log();
    let (mut sel, ch, _peer) = connected_to_silent_peer();

    // On (the default): the pre-select write completes the frame, so the poll reports it at once
    // instead of waiting out its timeout for an event that will not come.
    let long = Duration::from_secs(10);
    sel.send(ch, Bytes::from_static(b"first")).expect("send");
    let started = Instant::now();
    sel.poll(Some(long)).expect("poll");
    assert!(
        started.elapsed() < long,
        "the poll waited despite a completion"
    );
    assert_eq!(sel.completed_sends().len(), 1);

    // Off: the completion is still reported, but the poll waits for its timeout (nothing else
    // happens: the peer is silent).
    sel.set_wake_on_sends(false);
    let short = Duration::from_millis(150);
    sel.send(ch, Bytes::from_static(b"second")).expect("send");
    let started = Instant::now();
    sel.poll(Some(short)).expect("poll");
    assert!(
        started.elapsed() >= short,
        "the poll returned early with only a completion to report"
    );
    assert_eq!(sel.completed_sends().len(), 1);
    assert_eq!(sel.completed_sends()[0].seq, 1);
}

#[test]
fn sends_unreported_still_leave_in_order() {
    init_log();
    let (mut sel, ch, mut peer) = connected_to_silent_peer();
    sel.set_report_sends(false);
    sel.set_wake_on_sends(false);
    // Sizes on both sides of the coalescing threshold; staged by `send`, written in place by
    // `send_with`, and half in place, half a body of its own by `send_with_body`, in turn, so
    // untracked runs, in-place runs and separate frames interleave.
    let frames: Vec<Bytes> = (0..60u32)
        .map(|i| indexed_payload(i, 64 + 17 * i as usize))
        .collect();
    let stage = |sel: &mut Selector, i: usize, f: &Bytes| match i % 3 {
        0 => {
            sel.send(ch, f.clone()).expect("send");
        }
        1 => stage_written(sel, ch, f),
        _ => stage_with_body(sel, ch, f, f.len() / 2),
    };
    let (unreported, reported) = frames.split_at(50);
    for (i, f) in unreported.iter().enumerate() {
        stage(&mut sel, i, f);
    }
    assert_eq!(sel.staged_frames(ch), 50);
    poll_until(&mut sel, "staged bytes written", |sel| {
        assert!(sel.completed_sends().is_empty(), "a send was reported");
        sel.staged_bytes(ch) == 0
    });
    assert_eq!(sel.staged_frames(ch), 0);
    assert_eq!(sel.metrics().frames_out, 50);

    // Reports on again: the frames staged from now on are reported one by one, with the
    // sequence numbers that follow.
    sel.set_report_sends(true);
    for (i, f) in reported.iter().enumerate() {
        stage(&mut sel, i, f);
    }
    let mut seqs = Vec::new();
    poll_until(&mut sel, "reported sends", |sel| {
        seqs.extend(sel.completed_sends().iter().map(|s| s.seq));
        seqs.len() == reported.len()
    });
    assert_eq!(seqs, (50..60).collect::<Vec<u64>>());
    assert_eq!(sel.metrics().frames_out, 60);

    peer_reads_frames(&mut peer, &frames);
}

/// Stages `f` on `ch` written in place (`send_with`).
fn stage_written(sel: &mut Selector, ch: ChannelId, f: &Bytes) {
    let staged = sel
        .send_with(ch, |w| {
            w.put_slice(f);
            true
        })
        .expect("send_with");
    assert!(staged.is_some());
}

/// Stages `f` on `ch` as its first `at` bytes written in place and the rest a body of its own
/// (`send_with_body`).
fn stage_with_body(sel: &mut Selector, ch: ChannelId, f: &Bytes, at: usize) {
    let staged = sel
        .send_with_body(
            ch,
            |w| {
                w.put_slice(&f[..at]);
                true
            },
            f.slice(at..),
        )
        .expect("send_with_body");
    assert!(staged.is_some());
}

/// Reads from `peer` exactly `frames`, each behind its length prefix, in order (bounded by
/// `DEADLINE`).
fn peer_reads_frames(peer: &mut std::net::TcpStream, frames: &[Bytes]) {
    use std::io::Read;
    let want: usize = frames.iter().map(|f| 4 + f.len()).sum();
    peer.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut got = vec![0u8; want];
    peer.read_exact(&mut got).expect("peer reads every frame");
    let mut at = 0;
    for (i, f) in frames.iter().enumerate() {
        let len = u32::from_be_bytes(got[at..at + 4].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, f.len(), "frame {i} length");
        assert_same(
            &Bytes::copy_from_slice(&got[at + 4..at + 4 + len]),
            f,
            "frame",
        );
        at += 4 + len;
    }
}

#[test]
fn switching_reports_on_with_unreported_frames_staged_reports_each_frame_once() {
    init_log();
    let (mut sel, ch, mut peer) = connected_to_silent_peer();
    sel.set_wake_on_sends(false);
    let frames: Vec<Bytes> = (0..12u32).map(|i| indexed_payload(i, 40)).collect();
    let write = |sel: &mut Selector, f: &Bytes| stage_written(sel, ch, f);
    // Written in place while reports are off, then on, with nothing written in between; the
    // last frames carry a body of their own.
    sel.set_report_sends(false);
    for f in &frames[..4] {
        write(&mut sel, f);
    }
    sel.set_report_sends(true);
    for f in &frames[4..8] {
        write(&mut sel, f);
    }
    sel.set_report_sends(false);
    write(&mut sel, &frames[8]);
    for f in &frames[9..] {
        stage_with_body(&mut sel, ch, f, 10);
    }
    sel.set_report_sends(true);
    // Every frame is reported once, in order, with the sequence number it was staged with.
    let mut seqs = Vec::new();
    poll_until(&mut sel, "every frame reported", |sel| {
        seqs.extend(sel.completed_sends().iter().map(|s| s.seq));
        sel.staged_bytes(ch) == 0 && seqs.len() >= frames.len()
    });
    assert_eq!(seqs, (0..frames.len() as u64).collect::<Vec<u64>>());
    peer_reads_frames(&mut peer, &frames);
}

#[test]
fn a_body_frame_over_the_frame_limit_is_refused_and_nothing_is_staged() {
    init_log();
    let mut sel = Selector::with_config(SelectorConfig {
        max_frame_size: 1000,
        ..Default::default()
    })
    .expect("selector");
    let listener = std::net::TcpListener::bind(localhost()).expect("bind");
    // Frames may be staged while the channel connects.
    let ch = sel
        .connect(
            listener.local_addr().expect("addr"),
            &SocketOptions::default(),
        )
        .expect("connect");
    let refused = sel.send_with_body(
        ch,
        |w| {
            w.put_slice(&[1; 600]);
            true
        },
        Bytes::from(vec![2; 401]),
    );
    assert!(
        matches!(refused, Err(SendError::InvalidFrame(_))),
        "{refused:?}"
    );
    assert_eq!((sel.staged_frames(ch), sel.staged_bytes(ch)), (0, 0));
    let taken = sel.send_with_body(
        ch,
        |w| {
            w.put_slice(&[1; 600]);
            true
        },
        Bytes::from(vec![2; 400]),
    );
    assert_eq!(taken.expect("a frame of exactly the limit"), Some(0));
    assert_eq!((sel.staged_frames(ch), sel.staged_bytes(ch)), (1, 1004));
}

#[test]
fn received_runs_stay_readable_until_the_next_poll_also_after_a_close() {
    init_log();
    let (mut sel, ch, mut peer) = connected_to_silent_peer();
    sel.set_borrowed_receives(true);
    let mut wire = Vec::new();
    for f in [&b"first"[..], b"", b"third frame"] {
        wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
        wire.extend_from_slice(f);
    }
    // Half a fourth frame: not handed out.
    wire.extend_from_slice(&[0, 0, 0, 9, b'x']);
    std::io::Write::write_all(&mut peer, &wire).expect("peer write");
    let frames_of = |sel: &Selector| {
        let mut got = Vec::new();
        let mut k = 0;
        while let Some((c, mut run)) = sel.received_run(k) {
            assert_eq!(c, ch);
            while let Some((frame, rest)) = mqnet::net::split_frame(run) {
                got.push(frame.to_vec());
                run = rest;
            }
            assert!(run.is_empty(), "a run holds whole frames only");
            k += 1;
        }
        got
    };
    let mut got = Vec::new();
    poll_until(&mut sel, "three frames", |sel| {
        got.extend(frames_of(sel));
        got.len() >= 3
    });
    assert_eq!(
        got,
        [b"first".to_vec(), Vec::new(), b"third frame".to_vec()]
    );
    assert!(
        sel.completed_receives().is_empty(),
        "borrowed: nothing owned"
    );
    // Whatever the last poll handed out is still there after the channel is closed ...
    let before = frames_of(&sel);
    assert!(!before.is_empty());
    sel.close(ch, CloseMode::Immediate).expect("close");
    assert_eq!(frames_of(&sel), before);
    // ... and gone with the next poll.
    sel.poll(Some(Duration::ZERO)).expect("poll");
    assert!(sel.received_run(0).is_none());
}
