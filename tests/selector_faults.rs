//! Loopback fault tests of the Selector: invalid frames, peer closes and resets, refused
//! connects, idle expiry and graceful closes that time out. Raw `std::net` peers play the
//! misbehaving side. Everything runs on 127.0.0.1 and every wait is bounded (see `common`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::net::{
    ChannelError, ChannelId, CloseMode, DisconnectReason, Disconnected, FrameError, Selector,
    SelectorConfig, SendError, SocketOptions,
};
use mqnet_test_support::selector_loop::*;

/// A Selector with a listener on 127.0.0.1; returns it and the listener's address.
fn server(config: SelectorConfig) -> (Selector, SocketAddr) {
    let mut sel = Selector::with_config(config).expect("selector");
    let l = sel.listen(localhost()).expect("listen");
    let addr = sel.listener_addr(l).expect("listener addr");
    (sel, addr)
}

/// Connects a raw peer to the Selector's listener and returns it with its accepted channel.
fn raw_peer(sel: &mut Selector, addr: SocketAddr, log: &mut Outputs) -> (TcpStream, ChannelId) {
    let peer = raw_connect(addr);
    let local = peer.local_addr().unwrap();
    let mut found = None;
    poll_until(sel, "raw peer accepted", |sel| {
        let out = Outputs::take(sel);
        found = found.or(out
            .accepted
            .iter()
            .find(|a| a.peer == local)
            .map(|a| a.channel));
        log.extend(out);
        found.is_some()
    });
    (peer, found.unwrap())
}

/// Asserts that `id` no longer names anything in `sel`.
fn assert_dead(sel: &mut Selector, id: ChannelId) {
    assert!(!sel.contains(id), "{id} still open");
    assert!(!sel.is_connected(id));
    assert!(!sel.is_writable(id));
    assert_eq!(
        sel.send(id, Bytes::from_static(b"x")),
        Err(SendError::UnknownChannel)
    );
    assert_eq!(sel.mute(id), Err(ChannelError::Unknown));
    assert_eq!(
        sel.close(id, CloseMode::Immediate),
        Err(ChannelError::Unknown)
    );
}

/// Polls until `id` is reported disconnected, then a few more times; asserts it was reported
/// exactly once and returns the report.
fn expect_one_disconnect(sel: &mut Selector, id: ChannelId, log: &mut Outputs) -> Disconnected {
    expect_one_disconnect_echoing(sel, id, log, &mut None)
}

/// As [`expect_one_disconnect`], running `echo` (if any) after every poll.
fn expect_one_disconnect_echoing(
    sel: &mut Selector,
    id: ChannelId,
    log: &mut Outputs,
    echo: &mut Option<&mut Echo>,
) -> Disconnected {
    let mut step = |sel: &mut Selector, log: &mut Outputs| {
        let out = Outputs::take(sel);
        if let Some(e) = echo.as_deref_mut() {
            e.handle(sel, &out);
        }
        log.extend(out);
    };
    poll_until(sel, &format!("{id} reported disconnected"), |sel| {
        step(sel, log);
        !log.disconnects_of(id).is_empty()
    });
    poll_n(sel, 10, |sel| step(sel, log));
    let reports = log.disconnects_of(id);
    assert_eq!(reports.len(), 1, "{id} reported {reports:?}");
    reports[0]
}

/// After the Selector dropped the connection, the raw peer sees EOF or a reset.
fn assert_peer_sees_close(peer: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        match peer.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("peer read: {e}"),
        }
    }
    panic!("peer kept receiving data");
}

/// Sends one frame on `neighbour` (a client of the Selector's own echo server) and waits for its
/// echo.
fn neighbour_round(
    sel: &mut Selector,
    echo: &mut Echo,
    log: &mut Outputs,
    neighbour: ChannelId,
    echoed: &mut usize,
    tag: u32,
) {
    sel.send(neighbour, indexed_payload(tag, 64))
        .expect("neighbour send");
    *echoed += 1;
    let want = *echoed;
    poll_until(sel, "neighbour echo", |sel| {
        let out = Outputs::take(sel);
        echo.handle(sel, &out);
        log.extend(out);
        log.frames_on(neighbour).len() >= want
    });
    let frames = log.frames_on(neighbour);
    assert_eq!(check_indexed_payload(&frames[want - 1]), tag);
}

#[test]
fn an_invalid_frame_header_closes_only_the_offending_channel() {
    init_log();
    const MAX: usize = 1 << 20;
    let (mut sel, addr) = server(SelectorConfig {
        max_frame_size: MAX,
        ..SelectorConfig::default()
    });
    let mut echo = Echo::default();
    let mut log = Outputs::default();
    let neighbour = sel
        .connect(addr, &SocketOptions::default())
        .expect("connect");
    let mut echoed = 0usize;
    neighbour_round(&mut sel, &mut echo, &mut log, neighbour, &mut echoed, 0);

    // A frame of exactly max_frame_size is fine.
    let (mut ok_peer, ok_ch) = raw_peer(&mut sel, addr, &mut log);
    let big = pattern(1, MAX);
    write_frame(&mut ok_peer, &big).expect("write max-size frame");
    poll_until(&mut sel, "max-size frame", |sel| {
        let out = Outputs::take(sel);
        echo.handle(sel, &out);
        log.extend(out);
        !log.frames_on(ok_ch).is_empty()
    });
    assert_same(&log.frames_on(ok_ch)[0], &big, "max-size frame");

    let cases: [(i32, FrameError); 4] = [
        (
            MAX as i32 + 1,
            FrameError::TooLarge {
                len: MAX + 1,
                max: MAX,
            },
        ),
        (
            // A TLS record header read as a length (KAFKA-4090).
            0x1603_0100,
            FrameError::TooLarge {
                len: 0x1603_0100,
                max: MAX,
            },
        ),
        (-1, FrameError::NegativeLength(-1)),
        (i32::MIN, FrameError::NegativeLength(i32::MIN)),
    ];
    for (i, (header, want)) in cases.into_iter().enumerate() {
        let (mut peer, bad) = raw_peer(&mut sel, addr, &mut log);
        // A good frame first: delivered before the bad header closes the channel.
        write_frame(&mut peer, b"good").expect("write");
        let mut bytes = header.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xAB; 100]);
        peer.write_all(&bytes).expect("write bad header");
        // The neighbour keeps echoing while the bad channel is handled.
        sel.send(neighbour, indexed_payload(1000 + i as u32, 64))
            .expect("send");
        echoed += 1;
        let d = expect_one_disconnect_echoing(&mut sel, bad, &mut log, &mut Some(&mut echo));
        assert_eq!(
            d.reason,
            DisconnectReason::InvalidFrame(want),
            "header {header}"
        );
        assert_eq!(log.frames_on(bad), vec![Bytes::from_static(b"good")]);
        assert_dead(&mut sel, bad);
        assert_peer_sees_close(&mut peer);
        poll_until(&mut sel, "neighbour echo during the fault", |sel| {
            let out = Outputs::take(sel);
            echo.handle(sel, &out);
            log.extend(out);
            log.frames_on(neighbour).len() >= echoed
        });
        neighbour_round(
            &mut sel,
            &mut echo,
            &mut log,
            neighbour,
            &mut echoed,
            2000 + i as u32,
        );
        assert!(sel.is_connected(neighbour));
        assert!(sel.is_connected(ok_ch));
    }
    // Only the four offenders were closed.
    assert_eq!(log.disconnected.len(), 4, "{:?}", log.disconnected);
}

#[test]
fn a_peer_close_is_reported_exactly_once() {
    init_log();
    let (mut sel, addr) = server(SelectorConfig::default());
    let mut log = Outputs::default();

    // Inbound: a raw peer sends a frame, then closes at a frame boundary.
    let (mut peer, ch) = raw_peer(&mut sel, addr, &mut log);
    write_frame(&mut peer, b"last words").expect("write");
    drop(peer);
    let d = expect_one_disconnect(&mut sel, ch, &mut log);
    assert_eq!(d.reason, DisconnectReason::PeerClosed);
    assert_eq!(d.unsent, 0);
    assert_eq!(log.frames_on(ch), vec![Bytes::from_static(b"last words")]);
    assert_dead(&mut sel, ch);

    // Outbound: the Selector's client channel; the raw side accepts, then closes.
    let listener = raw_listener();
    let out_ch = sel
        .connect(listener.local_addr().unwrap(), &SocketOptions::default())
        .expect("connect");
    let accepted = raw_accept(&listener);
    poll_until(&mut sel, "outbound connected", |sel| {
        log.extend(Outputs::take(sel));
        log.connected.contains(&out_ch)
    });
    drop(accepted);
    let d = expect_one_disconnect(&mut sel, out_ch, &mut log);
    // The peer's FIN arrives as EOF (a write after it could also meet a reset).
    assert!(
        d.reason == DisconnectReason::PeerClosed
            || matches!(d.reason, DisconnectReason::Io(f) if f.kind == ErrorKind::ConnectionReset),
        "{d:?}"
    );
    assert_dead(&mut sel, out_ch);
    let m = sel.metrics();
    assert_eq!(m.connections_closed, 2);
}

#[test]
fn a_peer_closing_mid_frame_reports_the_buffered_bytes() {
    init_log();
    let (mut sel, addr) = server(SelectorConfig::default());
    let mut log = Outputs::default();
    let (mut peer, ch) = raw_peer(&mut sel, addr, &mut log);
    write_frame(&mut peer, b"whole").expect("write");
    // Header announcing 10 bytes, then only 3 of them.
    peer.write_all(&10u32.to_be_bytes()).expect("write");
    peer.write_all(b"abc").expect("write");
    drop(peer);
    let d = expect_one_disconnect(&mut sel, ch, &mut log);
    assert_eq!(
        d.reason,
        DisconnectReason::PeerClosedMidFrame { buffered: 7 }
    );
    assert_eq!(log.frames_on(ch), vec![Bytes::from_static(b"whole")]);
    assert_dead(&mut sel, ch);

    // Mid-header counts too.
    let (mut peer, ch) = raw_peer(&mut sel, addr, &mut log);
    peer.write_all(&[0, 0]).expect("write");
    drop(peer);
    let d = expect_one_disconnect(&mut sel, ch, &mut log);
    assert_eq!(
        d.reason,
        DisconnectReason::PeerClosedMidFrame { buffered: 2 }
    );
    assert_dead(&mut sel, ch);
}

fn is_reset_like(reason: DisconnectReason) -> bool {
    match reason {
        DisconnectReason::PeerClosed => true,
        DisconnectReason::Io(f) => {
            matches!(f.kind, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
        }
        _ => false,
    }
}

#[test]
fn a_peer_reset_is_reported_exactly_once() {
    init_log();
    let (mut sel, addr) = server(SelectorConfig::default());
    let mut log = Outputs::default();

    // An idle channel whose peer resets.
    let (peer, ch) = raw_peer(&mut sel, addr, &mut log);
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(peer);
    let d = expect_one_disconnect(&mut sel, ch, &mut log);
    assert!(is_reset_like(d.reason), "{d:?}");
    assert_dead(&mut sel, ch);

    // A channel busy writing to a peer that resets: the write (or read) path reports it, once.
    let (peer, ch) = raw_peer(&mut sel, addr, &mut log);
    for i in 0..15u32 {
        sel.send(ch, indexed_payload(i, 1 << 20)).expect("send");
    }
    poll_n(&mut sel, 3, |sel| log.extend(Outputs::take(sel)));
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(peer);
    let d = expect_one_disconnect(&mut sel, ch, &mut log);
    assert!(is_reset_like(d.reason), "{d:?}");
    assert_dead(&mut sel, ch);
    assert_eq!(sel.len(), 1, "only the listener is left");
}

#[test]
fn a_refused_connect_is_reported_once() {
    init_log();
    // A port that is bound but not listening refuses connections, and nobody else can start
    // listening on it while it stays bound (unlike a listener that was dropped).
    let holder =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    holder
        .bind(&localhost().into())
        .expect("bind without listening");
    let addr = holder
        .local_addr()
        .unwrap()
        .as_socket()
        .expect("inet address");

    let mut sel = Selector::new().expect("selector");
    let mut reports = 0;
    match sel.connect(addr, &SocketOptions::default()) {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
            reports += 1;
            assert!(sel.is_empty(), "no channel after a synchronous failure");
        }
        Ok(ch) => {
            let mut log = Outputs::default();
            let d = expect_one_disconnect(&mut sel, ch, &mut log);
            assert!(
                matches!(d.reason, DisconnectReason::ConnectFailed(f) if f.kind == ErrorKind::ConnectionRefused),
                "{d:?}"
            );
            assert!(
                log.connected.is_empty(),
                "refused channel reported connected"
            );
            assert_dead(&mut sel, ch);
            reports += 1;
        }
    }
    assert_eq!(reports, 1);
    let m = sel.metrics();
    assert_eq!(m.connect_failures, 1);
    assert_eq!(m.connections_created, 0);
    assert_eq!(
        m.connections_closed, 0,
        "a connect that never succeeded is not a closed connection"
    );
    drop(holder);
}

#[test]
fn idle_channels_expire_oldest_first_and_active_ones_stay() {
    init_log();
    const IDLE: Duration = Duration::from_millis(500);
    let listener = raw_listener();
    let addr = listener.local_addr().unwrap();
    let mut sel = Selector::with_config(SelectorConfig {
        connections_max_idle: Some(IDLE),
        ..SelectorConfig::default()
    })
    .expect("selector");
    let mut log = Outputs::default();
    let mut connect = |sel: &mut Selector, n: usize| -> Vec<ChannelId> {
        let ids: Vec<ChannelId> = (0..n)
            .map(|_| {
                sel.connect(addr, &SocketOptions::default())
                    .expect("connect")
            })
            .collect();
        poll_until(sel, "connected", |sel| {
            log.extend(Outputs::take(sel));
            ids.iter().all(|id| log.connected.contains(id))
        });
        ids
    };
    let idle = connect(&mut sel, 3);
    let (a, b, c) = (idle[0], idle[1], idle[2]);
    // These peers stay open and silent for the whole test.
    let _silent: Vec<TcpStream> = (0..3).map(|_| raw_accept(&listener)).collect();
    let d = connect(&mut sel, 1)[0];
    let mut d_peer = raw_accept(&listener);

    // d stays active from now on: its peer writes a small frame before every poll, and the
    // Selector reads it (reads drain the socket, so this can go on for as long as needed).
    let mut keep_d_busy = || write_frame(&mut d_peer, b"busy").expect("d peer write");
    keep_d_busy();

    // Activity in the order c, b, a: the idle order is the reverse of the creation order.
    let mut touched = Vec::new();
    for &id in &[c, b, a] {
        let seq = sel.send(id, Bytes::from_static(b"tick")).expect("send");
        let mut before = Instant::now();
        poll_until(&mut sel, "touch written", |sel| {
            let out = Outputs::take(sel);
            let done = out
                .completed_sends
                .iter()
                .any(|s| s.channel == id && s.seq == seq);
            log.extend(out);
            keep_d_busy();
            if !done {
                before = Instant::now();
            }
            done
        });
        // `before` precedes the poll that wrote the frame, so it precedes the touch.
        touched.push((id, before));
    }

    let mut expired: Vec<(ChannelId, Instant)> = Vec::new();
    poll_until(&mut sel, "a, b and c expired", |sel| {
        let now = Instant::now();
        let out = Outputs::take(sel);
        for x in &out.disconnected {
            assert_ne!(x.channel, d, "the active channel expired: {x:?}");
            assert_eq!(x.reason, DisconnectReason::IdleExpired, "{x:?}");
            expired.push((x.channel, now));
        }
        log.extend(out);
        keep_d_busy();
        expired.len() >= 3
    });
    let order: Vec<ChannelId> = expired.iter().map(|(id, _)| *id).collect();
    assert_eq!(order, vec![c, b, a], "oldest first");
    for ((id, at), (tid, before)) in expired.iter().zip(&touched) {
        assert_eq!(id, tid);
        let idle_for = at.duration_since(*before);
        assert!(
            idle_for >= IDLE,
            "{id} expired after only {idle_for:?} idle"
        );
        assert_dead(&mut sel, *id);
    }
    assert!(sel.is_connected(d));

    assert!(!log.frames_on(d).is_empty());
    // Once d goes quiet (its last frame is read by the next poll), it expires too, exactly once.
    let quiet_from = Instant::now();
    let report = expect_one_disconnect(&mut sel, d, &mut log);
    assert_eq!(report.reason, DisconnectReason::IdleExpired);
    assert!(quiet_from.elapsed() >= IDLE);
    assert_eq!(log.disconnected.len(), 4);
    assert_eq!(sel.metrics().connections_closed, 4);
    assert!(sel.is_empty());
}

#[test]
fn a_graceful_close_whose_peer_never_reads_times_out_unflushed() {
    init_log();
    const TIMEOUT: Duration = Duration::from_millis(200);
    let listener = raw_listener();
    socket2::SockRef::from(&listener)
        .set_recv_buffer_size(16 * 1024)
        .expect("SO_RCVBUF");
    let mut sel = Selector::new().expect("selector");
    let ch = sel
        .connect(listener.local_addr().unwrap(), &SocketOptions::default())
        .expect("connect");
    let _peer = raw_accept(&listener); // never reads
    let mut log = Outputs::default();
    poll_until(&mut sel, "connected", |sel| {
        log.extend(Outputs::take(sel));
        log.connected.contains(&ch)
    });
    // 8 MiB: far more than the socket buffers on both sides hold.
    const FRAMES: usize = 8;
    for i in 0..FRAMES as u32 {
        sel.send(ch, indexed_payload(i, 1 << 20)).expect("send");
    }
    let closed_at = Instant::now();
    sel.close(ch, CloseMode::Graceful { timeout: TIMEOUT })
        .expect("close");
    let d = expect_one_disconnect(&mut sel, ch, &mut log);
    assert!(closed_at.elapsed() >= TIMEOUT, "closed before the timeout");
    assert_eq!(d.reason, DisconnectReason::LocalClose { flushed: false });
    assert!(d.unsent > 0, "{d:?}");
    assert_eq!(log.completed_sends.len() + d.unsent, FRAMES);
    assert_dead(&mut sel, ch);
    assert!(sel.is_empty());
}
