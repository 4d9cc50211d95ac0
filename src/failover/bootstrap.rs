//! Bootstrap-server failover, as RocketMQ's remoting client picks a name server.

use std::collections::HashMap;
use std::time::Instant;

use crate::client::{Handshake, JitterSource, NetworkClient, NodeId, SplitMix64};
use crate::net::Transport;

/// Chooses one bootstrap address at a time and fails over round robin.
///
/// Rules (RocketMQ `namesrvIndex` semantics, one pick per call as in 5.3):
/// - the first choice is at a random index of the list;
/// - the chosen address is kept while it is healthy (its node is Ready or being set up);
/// - when its node fails (an attempt made since it was chosen ended without reaching Ready, or its
///   established connection closed), the next address in round-robin order is chosen. The failure
///   is read from the client's counters, so it is noticed however rarely the caller polls;
/// - [`update`](BootstrapFailover::update) replaces the list; if the chosen address is no longer in
///   it, a new one is chosen at random (not round robin from a position in the old list), and the
///   nodes of addresses no longer listed are removed from the client at the next
///   [`poll`](BootstrapFailover::poll).
///
/// Each address is registered with the client as a node with a stable negative id (-1, -2, ...),
/// as Kafka does for bootstrap nodes.
///
/// ```
/// use mqnet::client::SplitMix64;
/// use mqnet::failover::BootstrapFailover;
///
/// let mut f = BootstrapFailover::new(["a:1", "b:1", "c:1"], &mut SplitMix64::new(1));
/// let first = f.chosen().unwrap().to_string();
/// f.failed();
/// assert_ne!(f.chosen(), Some(first.as_str()));
/// ```
#[derive(Debug, Clone)]
pub struct BootstrapFailover {
    list: Vec<String>,
    /// Index of the chosen address in `list`, `None` when it must be selected anew.
    chosen: Option<usize>,
    /// Where the next round-robin move starts from.
    cursor: usize,
    ids: HashMap<String, NodeId>,
    next_id: i32,
    /// Random choices after a list change.
    rng: SplitMix64,
    /// The chosen node's (connect attempts, connections closed) when it was chosen: a failure is
    /// a change of these while the node is disconnected.
    baseline: Option<(NodeId, u64, u64)>,
    /// Nodes of addresses that left the list, to remove from the client.
    stale: Vec<NodeId>,
}

impl BootstrapFailover {
    /// A selector over `addresses` (`host:port`), starting at a random index.
    pub fn new<I, S>(addresses: I, rng: &mut dyn JitterSource) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<String> = addresses.into_iter().map(Into::into).collect();
        let start = if list.is_empty() {
            0
        } else {
            ((rng.next_f64() * list.len() as f64) as usize).min(list.len() - 1)
        };
        let seed = (rng.next_f64() * (1u64 << 53) as f64) as u64;
        let mut f = BootstrapFailover {
            chosen: if list.is_empty() { None } else { Some(start) },
            cursor: start,
            list,
            ids: HashMap::new(),
            next_id: -1,
            rng: SplitMix64::new(seed),
            baseline: None,
            stale: Vec::new(),
        };
        for a in f.list.clone() {
            f.id_for(&a);
        }
        f
    }

    fn id_for(&mut self, addr: &str) -> NodeId {
        if let Some(id) = self.ids.get(addr) {
            return *id;
        }
        let id = NodeId(self.next_id);
        self.next_id -= 1;
        self.ids.insert(addr.to_string(), id);
        id
    }

    /// The current list.
    pub fn addresses(&self) -> &[String] {
        &self.list
    }

    /// The chosen address, selecting the next one round robin if none is chosen.
    pub fn chosen(&mut self) -> Option<&str> {
        if self.list.is_empty() {
            return None;
        }
        let i = match self.chosen {
            Some(i) => i,
            None => {
                let i = self.cursor % self.list.len();
                self.chosen = Some(i);
                i
            }
        };
        Some(&self.list[i])
    }

    /// The node id of the chosen address.
    pub fn chosen_node(&mut self) -> Option<NodeId> {
        let addr = self.chosen()?.to_string();
        Some(self.id_for(&addr))
    }

    /// The chosen address failed: move to the next one round robin.
    pub fn failed(&mut self) {
        if self.list.is_empty() {
            return;
        }
        let from = self.chosen.unwrap_or(self.cursor);
        self.cursor = (from + 1) % self.list.len();
        self.chosen = Some(self.cursor);
        self.baseline = None;
    }

    /// Replaces the list. The chosen address stays chosen if it is still listed; otherwise one is
    /// chosen at random from the new list. Nodes of addresses no longer listed are removed from
    /// the client at the next [`poll`](Self::poll).
    pub fn update<I, S>(&mut self, addresses: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let current = self.chosen.map(|i| self.list[i].clone());
        let old = std::mem::replace(
            &mut self.list,
            addresses.into_iter().map(Into::into).collect(),
        );
        for a in self.list.clone() {
            self.id_for(&a);
        }
        for a in old {
            if !self.list.contains(&a) {
                let id = self.id_for(&a);
                if !self.stale.contains(&id) {
                    self.stale.push(id);
                }
            }
        }
        let listed: Vec<NodeId> = self
            .list
            .iter()
            .filter_map(|a| self.ids.get(a))
            .copied()
            .collect();
        self.stale.retain(|id| !listed.contains(id));
        self.chosen = current.and_then(|c| self.list.iter().position(|a| *a == c));
        if self.chosen.is_none() && !self.list.is_empty() {
            let i = self.rng.next_index(self.list.len());
            self.cursor = i;
            self.chosen = Some(i);
            self.baseline = None;
        }
    }

    /// Drives the choice against a client: removes the nodes of addresses no longer listed,
    /// registers the chosen address as a node, fails over when that node has failed since it was
    /// chosen, and asks the client to connect it. Returns the chosen node when it is Ready. Call
    /// it each time round your poll loop, at any rate.
    ///
    /// # Errors
    /// When an address is not `host:port`.
    pub fn poll<T: Transport, H: Handshake>(
        &mut self,
        client: &mut NetworkClient<T, H>,
        now: Instant,
    ) -> std::io::Result<Option<NodeId>> {
        for id in std::mem::take(&mut self.stale) {
            client.remove_node(id, now);
        }
        // Bounded: at most one failover per listed address in one call.
        for _ in 0..self.list.len().max(1) {
            let Some(addr) = self.chosen().map(str::to_string) else {
                return Ok(None);
            };
            let node = self.id_for(&addr);
            client.add_node(node, &addr)?;
            let counters = |c: &NetworkClient<T, H>| {
                c.node_metrics(node)
                    .map_or((0, 0), |m| (m.connect_attempts, m.connections_closed))
            };
            let (attempts, closed) = counters(client);
            let (base_attempts, base_closed) = match self.baseline {
                Some((n, a, c)) if n == node => (a, c),
                _ => {
                    // Chosen just now: what happened to this node before does not count.
                    let busy = client
                        .connection_state(node)
                        .is_some_and(|s| !s.is_disconnected());
                    let a = if busy {
                        attempts.saturating_sub(1)
                    } else {
                        attempts
                    };
                    self.baseline = Some((node, a, closed));
                    (a, closed)
                }
            };
            let failed = client
                .connection_state(node)
                .is_some_and(|s| s.is_disconnected())
                && (attempts > base_attempts || closed > base_closed);
            if failed {
                self.failed();
                continue;
            }
            return Ok(client.ready(node, now).then_some(node));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::SplitMix64;

    struct Fixed(f64);
    impl JitterSource for Fixed {
        fn next_f64(&mut self) -> f64 {
            self.0
        }
    }

    #[test]
    fn starts_at_random_index_and_stays_while_healthy() {
        let mut starts = std::collections::HashSet::new();
        for seed in 0..64 {
            let mut f = BootstrapFailover::new(["a:1", "b:1", "c:1"], &mut SplitMix64::new(seed));
            starts.insert(f.chosen().unwrap().to_string());
        }
        assert_eq!(starts.len(), 3, "random start covers every index");
        let mut f = BootstrapFailover::new(["a:1", "b:1", "c:1"], &mut Fixed(0.5));
        assert_eq!(f.chosen(), Some("b:1"));
        assert_eq!(f.chosen(), Some("b:1"));
    }

    #[test]
    fn fails_over_round_robin_and_wraps() {
        let mut f = BootstrapFailover::new(["a:1", "b:1", "c:1"], &mut Fixed(0.5));
        let mut seen = vec![f.chosen().unwrap().to_string()];
        for _ in 0..3 {
            f.failed();
            seen.push(f.chosen().unwrap().to_string());
        }
        assert_eq!(seen, vec!["b:1", "c:1", "a:1", "b:1"]);
    }

    #[test]
    fn update_keeps_a_listed_choice_and_reselects_otherwise() {
        let mut f = BootstrapFailover::new(["a:1", "b:1", "c:1"], &mut Fixed(0.5));
        assert_eq!(f.chosen(), Some("b:1"));
        f.update(["c:1", "b:1"]);
        assert_eq!(f.chosen(), Some("b:1"));
        f.update(["x:1", "y:1", "z:1"]);
        let c = f.chosen().unwrap().to_string();
        assert!(["x:1", "y:1", "z:1"].contains(&c.as_str()));
        // Node ids are stable per address across updates.
        let id_b = f.ids["b:1"];
        f.update(["b:1"]);
        assert_eq!(f.chosen_node(), Some(id_b));
    }

    #[test]
    fn empty_list_chooses_nothing() {
        let mut f = BootstrapFailover::new(Vec::<String>::new(), &mut Fixed(0.5));
        assert_eq!(f.chosen(), None);
        f.failed();
        assert_eq!(f.chosen(), None);
    }
}
