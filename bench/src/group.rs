//! `mqnet-bench echo --group-size N`: the mqnet client over a connection group of N connections
//! to the server ([`mqnet::group::GroupClient`], round robin, heartbeats on), with C × W requests
//! kept in flight over the group; and `--drill`, the healing drill: the server is killed for 2 s
//! under load and restarted on the same port, and the run reports how long the group took to be
//! whole again and that every request completed exactly once (answered or failed, none lost).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqnet::client::{ClientConfig, ClientRequest, ClientResponse, NetworkClient, NodeId, Outcome};
use mqnet::group::{EchoHeartbeat, GroupClient, GroupConfig, GroupError, GroupEventKind};
use mqnet::net::Selector;

use crate::error::{BenchError, Context};
use crate::mqnet_impl::run_server;
use crate::proto::{check_response, Encoder};
use crate::stats::{Recorder, RunResult, Window, Workload};

type Groups = GroupClient<Selector, mqnet::client::NoHandshake, EchoHeartbeat>;

const GROUP: &str = "echo";
const POLL_TICK: Duration = Duration::from_millis(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the drill keeps the server down.
const DRILL_OUTAGE: Duration = Duration::from_secs(2);
/// Load before the kill and after the heal in the drill.
const DRILL_STEADY: Duration = Duration::from_secs(1);
/// Bound on the whole drill.
const DRILL_LIMIT: Duration = Duration::from_secs(60);

/// An mqnet echo server on a thread of this process, stoppable.
struct InProcessServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl InProcessServer {
    fn start(addr: SocketAddr, resp_size: usize) -> Result<(Self, SocketAddr), BenchError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            run_server(addr, resp_size, &flag, None, |a| {
                let _ = tx.send(a);
            })
        });
        let bound = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| BenchError::Child(format!("server on {addr} did not start")))?;
        Ok((
            InProcessServer {
                stop,
                thread: Some(thread),
            },
            bound,
        ))
    }

    /// Stops the server; its listener and connections close when it returns.
    fn kill(&mut self) -> Result<(), BenchError> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => Err(BenchError::wrap("server".into(), e)),
            Some(Err(_)) => Err(BenchError::child("server thread panicked")),
            _ => Ok(()),
        }
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// What the closed loop over the group counted.
#[derive(Debug, Default)]
struct Tally {
    /// Requests the group accepted.
    accepted: u64,
    /// Completions: answered correctly.
    answered: u64,
    /// Completions: failed (connection lost, timed out) — reported to the caller.
    failed: u64,
    /// Completions with a wrong size or correlation id.
    bad: u64,
    /// Sends refused at once: no live member.
    refused: u64,
    /// Completions of a request never accepted, or a second completion of one.
    unexpected: u64,
}

struct Loop {
    groups: Groups,
    enc: Encoder,
    size: usize,
    resp_size: usize,
    /// Correlation id → send instant of every accepted request not yet completed.
    pending: HashMap<i32, Instant>,
    done: Vec<ClientResponse>,
    tally: Tally,
}

impl Loop {
    fn new(addr: SocketAddr, w: &Workload, n: usize) -> Result<Self, BenchError> {
        let window = (w.conns * w.inflight).max(1);
        let config = ClientConfig::default()
            .max_in_flight(window)
            .connections_max_idle(None)
            .send_buffer_bytes(None)
            .receive_buffer_bytes(None)
            .request_timeout(Duration::from_secs(5))
            .pipeline_unsent(true);
        let client = NetworkClient::new(config).context("client")?;
        let mut groups = GroupClient::new(client, GroupConfig::default(), EchoHeartbeat);
        groups
            .connect(GROUP, &addr.to_string(), n, "mqnet-bench", Instant::now())
            .context("group connect")?;
        Ok(Loop {
            groups,
            enc: Encoder::new(w.size),
            size: w.size,
            resp_size: w.resp_size,
            pending: HashMap::with_capacity(window * 2),
            done: Vec::with_capacity(window),
            tally: Tally::default(),
        })
    }

    fn wait_live(&mut self, n: usize, limit: Duration) -> Result<Duration, BenchError> {
        let start = Instant::now();
        while self.groups.live_members(GROUP) < n {
            if start.elapsed() > limit {
                return Err(BenchError::Run(format!(
                    "group not whole after {limit:?}: {:?}",
                    self.groups.member_states(GROUP)
                )));
            }
            self.poll(None)?;
        }
        Ok(start.elapsed())
    }

    /// Sends one request; false when the group refused it (no live member).
    fn send(&mut self, now: Instant) -> bool {
        let corr = self.groups.client_mut().next_correlation_id();
        let frame: Bytes = self.enc.request(self.size, corr);
        match self
            .groups
            .send(GROUP, ClientRequest::new(NodeId(0), corr, frame), now)
        {
            Ok(_) => {
                self.tally.accepted += 1;
                self.pending.insert(corr, now);
                true
            }
            Err(GroupError::NoAvailableConnection { .. }) => {
                self.tally.refused += 1;
                false
            }
            Err(e) => {
                log::warn!("group send: {e}");
                self.tally.refused += 1;
                false
            }
        }
    }

    /// Polls once; returns how many requests completed (each is replaced by the caller).
    fn poll(&mut self, rec: Option<(&mut Recorder, &Window)>) -> Result<usize, BenchError> {
        let now = Instant::now();
        self.groups
            .poll_io(Some(POLL_TICK), now)
            .map(|()| {
                let now = std::time::Instant::now();
                self.groups.handle_into(now, &mut self.done)
            })
            .context("poll")?;
        let now = Instant::now();
        let n = self.done.len();
        let mut rec = rec;
        for r in self.done.drain(..) {
            let Some(sent) = self.pending.remove(&r.correlation_id) else {
                self.tally.unexpected += 1;
                continue;
            };
            match r.outcome {
                Outcome::Response(frame) => {
                    if check_response(&frame, self.resp_size, r.correlation_id).is_ok() {
                        self.tally.answered += 1;
                        if let Some((rec, window)) = rec.as_mut() {
                            if now >= window.warm_end && now < window.end {
                                rec.record(sent, now);
                            }
                        }
                    } else {
                        self.tally.bad += 1;
                    }
                }
                _ => self.tally.failed += 1,
            }
        }
        Ok(n)
    }

    /// Keeps `window` requests in flight until `until` (refused sends are retried after a poll).
    fn run_until(
        &mut self,
        window: usize,
        until: Instant,
        mut rec: Option<(&mut Recorder, &Window)>,
        mut stop: impl FnMut(&mut Self) -> bool,
    ) -> Result<(), BenchError> {
        while Instant::now() < until && !stop(self) {
            let now = Instant::now();
            while self.pending.len() < window {
                if !self.send(now) {
                    break;
                }
            }
            self.poll(rec.as_mut().map(|(r, w)| (&mut **r, *w)))?;
        }
        Ok(())
    }

    /// Stops sending and waits for every accepted request to complete (bounded by the client's
    /// request timeout).
    fn drain(&mut self) -> Result<(), BenchError> {
        let limit = Instant::now() + Duration::from_secs(15);
        while !self.pending.is_empty() && Instant::now() < limit {
            self.poll(None)?;
        }
        Ok(())
    }
}

/// Throughput of the mqnet client over a group of `n` connections to `addr` (or to an mqnet echo
/// server started in this process when `addr` is `None`).
///
/// # Errors
/// The server or the group could not be set up, or the group did not come up.
pub fn run_throughput(
    addr: Option<SocketAddr>,
    w: &Workload,
    n: usize,
) -> Result<RunResult, BenchError> {
    let (server, addr) = match addr {
        Some(a) => (None, a),
        None => {
            let (s, a) = InProcessServer::start("127.0.0.1:0".parse().unwrap(), w.resp_size)?;
            (Some(s), a)
        }
    };
    let mut l = Loop::new(addr, w, n)?;
    l.wait_live(n, CONNECT_TIMEOUT)?;
    let window = Window::starting_now(w);
    let mut rec = Recorder::new();
    let inflight = (w.conns * w.inflight).max(1);
    l.run_until(inflight, window.end, Some((&mut rec, &window)), |_| false)?;
    l.drain()?;
    drop(server);
    let t = &l.tally;
    rec.errors = t.failed + t.bad + t.refused + t.unexpected + l.pending.len() as u64;
    let mut r = RunResult::from_recorder("mqnet", w, &mut rec, &window);
    r.mqnet_client = Some(format!("group-{n}"));
    Ok(r)
}

/// What the healing drill measured.
#[derive(Debug)]
pub struct DrillResult {
    /// Members in the group.
    pub members: usize,
    /// From the kill (server thread ended) to the restarted server listening.
    pub outage: Duration,
    /// From the kill to every member live again.
    pub heal_from_kill: Duration,
    /// From the restart to every member live again.
    pub heal_from_restart: Duration,
    /// The group's own time to heal (first member down to every member live).
    pub group_time_to_heal: Option<Duration>,
    /// Requests accepted by the group.
    pub accepted: u64,
    /// Answered correctly.
    pub answered: u64,
    /// Completed as failed (connection lost or timed out) and reported so.
    pub failed: u64,
    /// Refused at once while no member was live.
    pub refused: u64,
    /// Accepted but never completed: must be 0.
    pub lost: u64,
    /// Wrong responses, stray or duplicate completions: must be 0.
    pub bad: u64,
}

/// The healing drill: load over a group of `n` members, the server killed for 2 s and restarted
/// on the same port.
///
/// # Errors
/// Set-up failures, or the group not healing within the drill's bound.
pub fn run_drill(w: &Workload, n: usize) -> Result<DrillResult, BenchError> {
    let (mut server, addr) = InProcessServer::start("127.0.0.1:0".parse().unwrap(), w.resp_size)?;
    let mut l = Loop::new(addr, w, n)?;
    l.wait_live(n, CONNECT_TIMEOUT)?;
    let inflight = (w.conns * w.inflight).max(1);
    l.run_until(inflight, Instant::now() + DRILL_STEADY, None, |_| false)?;
    let _ = l.groups.drain_events().count();
    // The outage counts from the moment the server thread has ended (listener and connections
    // closed).
    server.kill()?;
    let killed = Instant::now();
    l.run_until(inflight, killed + DRILL_OUTAGE, None, |_| false)?;
    let (server, again) = InProcessServer::start(addr, w.resp_size)?;
    let restarted = Instant::now();
    debug_assert_eq!(again, addr);
    let mut healed = None;
    // The group reports healed (every member live after one went down) at the poll that sees it.
    l.run_until(inflight, killed + DRILL_LIMIT, None, |l| {
        if l.groups
            .drain_events()
            .any(|e| matches!(e.kind, GroupEventKind::GroupHealed { .. }))
        {
            healed = Some(Instant::now());
        }
        healed.is_some()
    })?;
    let healed = healed.ok_or_else(|| {
        BenchError::Run(format!(
            "group not whole {DRILL_LIMIT:?} after the kill: {:?}",
            l.groups.member_states(GROUP)
        ))
    })?;
    l.run_until(inflight, Instant::now() + DRILL_STEADY, None, |_| false)?;
    l.drain()?;
    drop(server);
    let t = &l.tally;
    Ok(DrillResult {
        members: n,
        outage: restarted - killed,
        heal_from_kill: healed - killed,
        heal_from_restart: healed.saturating_duration_since(restarted),
        group_time_to_heal: l.groups.metrics(GROUP).and_then(|m| m.last_time_to_heal),
        accepted: t.accepted,
        answered: t.answered,
        failed: t.failed,
        refused: t.refused,
        lost: l.pending.len() as u64,
        bad: t.bad + t.unexpected,
    })
}

impl DrillResult {
    /// Whether nothing was lost and nothing was wrong.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.bad == 0 && self.accepted == self.answered + self.failed
    }

    /// One line per figure.
    pub fn report(&self) -> String {
        format!(
            "healing drill: group of {} members, server down {:.0} ms (target {:?})\n\
             \x20 all members live again: {:.0} ms after the kill, {:.0} ms after the restart \
             (group time to heal {:.0} ms)\n\
             \x20 requests: {} accepted = {} answered + {} failed (reported); {} refused at once \
             (no live member); lost {}; wrong {}",
            self.members,
            self.outage.as_secs_f64() * 1e3,
            DRILL_OUTAGE,
            self.heal_from_kill.as_secs_f64() * 1e3,
            self.heal_from_restart.as_secs_f64() * 1e3,
            self.group_time_to_heal
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
            self.accepted,
            self.answered,
            self.failed,
            self.refused,
            self.lost,
            self.bad,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            conns: 1,
            inflight: 8,
            size: 100,
            resp_size: 16,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            count: None,
            idle: 0,
        }
    }

    #[test]
    fn a_group_of_two_against_the_mqnet_server_has_no_errors() {
        let r = run_throughput(None, &workload(), 2).unwrap();
        assert_eq!(r.errors, 0, "{r:?}");
        assert!(r.requests > 0);
    }

    #[test]
    fn the_drill_heals_the_group_and_loses_nothing() {
        let d = run_drill(&workload(), 2).unwrap();
        assert!(d.ok(), "{}", d.report());
        assert!(d.heal_from_kill >= DRILL_OUTAGE, "{}", d.report());
        assert!(d.answered > 0);
    }
}
