//! Memory and descriptor hygiene of one Selector on 127.0.0.1:
//!
//! - a large frame does not pin its read buffer for the life of the connection: the buffer is
//!   released once empty, and the process's RSS falls back once the frame is dropped;
//! - connections opened, used and closed in waves leave no descriptor and no slab slot behind:
//!   after every wave the open descriptors and the Selector's slots are back to their baseline.
//!
//! CI sizes: a 40 MiB frame, 10 waves of 1,000 connections. `MQNET_BIG_FRAME_MIB`,
//! `MQNET_WAVES` and `MQNET_WAVE_CONNS` override them (e.g. 100 MiB, 1 wave of 10,000). Every wait
//! is bounded in time and iterations.

use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::net::{ChannelId, DisconnectReason, Selector, SelectorConfig, SocketOptions};

const DEADLINE: Duration = Duration::from_secs(120);

/// One test at a time: both count the process's descriptors and memory.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const MIB: usize = 1024 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Raises the soft descriptor limit to the hard one; returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit`/`setrlimit` read and write one valid `rlimit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

fn poll_until(sel: &mut Selector, what: &str, mut step: impl FnMut(&mut Selector) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    for _ in 0..10_000_000u64 {
        sel.poll(Some(Duration::from_millis(10))).expect("poll");
        if step(sel) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
    panic!("too many polls waiting for {what}");
}

#[test]
fn a_large_frame_does_not_pin_its_read_buffer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let size = env_usize("MQNET_BIG_FRAME_MIB", 40) * MIB;
    let mut sel = Selector::with_config(SelectorConfig {
        max_frame_size: size.max(100 * MIB),
        ..SelectorConfig::default()
    })
    .unwrap();
    let l = sel.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sel.listener_addr(l).unwrap();
    let client = sel.connect(addr, &SocketOptions::default()).unwrap();
    let mut server: Option<ChannelId> = None;
    poll_until(&mut sel, "accept", |sel| {
        server = server.or(sel.accepted().first().map(|a| a.channel));
        server.is_some() && sel.is_connected(client)
    });
    let server = server.unwrap();

    // A small frame first: the buffer it leaves is kept (reused without allocating).
    sel.send(client, Bytes::from_static(b"small")).unwrap();
    poll_until(&mut sel, "small frame", |sel| {
        !sel.completed_receives().is_empty()
    });
    let small_buffer = sel.read_buffer_bytes(server);
    assert!(small_buffer > 0 && small_buffer <= MIB, "{small_buffer}");

    let rss_before = rss_bytes();
    let payload = Bytes::from(vec![0xA5u8; size]);
    sel.send(client, payload).unwrap();
    let mut peak = 0;
    let mut got = None;
    poll_until(&mut sel, "large frame", |sel| {
        peak = peak.max(sel.read_buffer_bytes(server));
        got = sel
            .drain_completed_receives()
            .find(|r| r.channel == server)
            .map(|r| r.frame);
        got.is_some()
    });
    let frame = got.unwrap();
    assert_eq!(frame.len(), size);
    assert!(frame.iter().all(|&b| b == 0xA5));
    // While the frame was in progress the buffer grew towards it (the measure is live) ...
    assert!(
        peak >= size / 2,
        "peak read buffer {peak} for a {size}-byte frame"
    );
    // ... and the channel let go of it once it was empty.
    assert_eq!(sel.read_buffer_bytes(server), 0);
    drop(frame);
    // Both copies (sender's payload, receiver's buffer) are gone: RSS falls back near where it
    // was (large allocations are returned to the OS when freed).
    let rss_after = rss_bytes();
    assert!(
        rss_after < rss_before + size / 2,
        "RSS {rss_after} after the frame, {rss_before} before: the frame's memory is pinned"
    );

    // The channel still works, with a small buffer again.
    sel.send(client, Bytes::from_static(b"after")).unwrap();
    let mut after = None;
    poll_until(&mut sel, "frame after", |sel| {
        after = sel
            .completed_receives()
            .iter()
            .find(|r| r.channel == server)
            .map(|r| r.frame.clone());
        after.is_some()
    });
    assert_eq!(&after.unwrap()[..], b"after");
    assert!(sel.read_buffer_bytes(server) <= MIB);
    eprintln!(
        "frame {} MiB: read buffer peak {} MiB, RSS before {} MiB, after {} MiB",
        size / MIB,
        peak / MIB,
        rss_before / MIB,
        rss_after / MIB
    );
}

/// Environment of the client child of the waves test: the server's address and how many
/// connections to make.
const CHILD_ADDR: &str = "MQNET_WAVE_CHILD_ADDR";
const CHILD_CONNS: &str = "MQNET_WAVE_CHILD_CONNS";

/// The client side of one wave, run in a child process (this test binary, re-executed) so that the
/// Selector's process holds only the server side of each connection: it opens its connections,
/// sends one frame on each, reads each echo, and closes them all. A no-op in a normal test run.
#[test]
fn wave_client_child() {
    let (Ok(addr), Ok(n)) = (std::env::var(CHILD_ADDR), std::env::var(CHILD_CONNS)) else {
        return;
    };
    use std::io::{Read, Write};
    raise_nofile();
    let n: usize = n.parse().unwrap();
    let mut conns: Vec<std::net::TcpStream> = (0..n)
        .map(|i| {
            let s = std::net::TcpStream::connect(&addr)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            s
        })
        .collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let body = format!("conn {i}");
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body.as_bytes());
        s.write_all(&frame).unwrap();
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let body = format!("conn {i}");
        let mut back = vec![0u8; 4 + body.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back[4..], body.as_bytes());
    }
}

#[test]
fn connections_in_waves_leave_no_descriptor_or_slot_behind() {
    if std::env::var(CHILD_ADDR).is_ok() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let waves = env_usize("MQNET_WAVES", 10);
    let per_wave = env_usize("MQNET_WAVE_CONNS", 1_000);
    let limit = raise_nofile() as usize;
    assert!(
        per_wave + open_fds() + 64 <= limit,
        "descriptor limit {limit} too low for {per_wave} connections"
    );

    let mut sel = Selector::with_config(SelectorConfig {
        connections_max_idle: None,
        ..SelectorConfig::default()
    })
    .unwrap();
    let l = sel
        .listen_with_backlog("127.0.0.1:0".parse().unwrap(), 4096)
        .unwrap();
    let addr = sel.listener_addr(l).unwrap();
    let base_fds = open_fds();
    let base_slots = sel.len();
    let started = Instant::now();
    let mut peak_slots = 0;
    for wave in 0..waves {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "wave_client_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ADDR, addr.to_string())
            .env(CHILD_CONNS, per_wave.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut accepted = 0usize;
        let mut answered = 0usize;
        let mut closed = 0usize;
        let deadline = Instant::now() + DEADLINE;
        while closed < per_wave {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wave {wave}: {accepted} accepted, {answered} answered, {closed} closed");
            }
            sel.poll(Some(Duration::from_millis(10))).unwrap();
            accepted += sel.accepted().len();
            peak_slots = peak_slots.max(sel.len());
            let received: Vec<(ChannelId, Bytes)> = sel
                .drain_completed_receives()
                .map(|r| (r.channel, r.frame))
                .collect();
            for (ch, frame) in received {
                sel.send(ch, frame).unwrap();
                answered += 1;
            }
            for d in sel.disconnected() {
                assert_eq!(d.reason, DisconnectReason::PeerClosed, "{}", d.channel);
                closed += 1;
            }
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "wave {wave}: client child failed");
        assert_eq!(accepted, per_wave);
        assert_eq!(answered, per_wave);
        assert_eq!(sel.len(), base_slots, "wave {wave}: slab slots leaked");
        assert_eq!(open_fds(), base_fds, "wave {wave}: descriptors leaked");
        assert_eq!(sel.metrics().open_connections(), 0);
    }
    assert!(peak_slots > base_slots);
    eprintln!(
        "{waves} waves of {per_wave} connections in {:?} (peak {peak_slots} slots); slots and descriptors at baseline after each",
        started.elapsed()
    );
}
