//! Bootstrap-server failover, as RocketMQ's remoting client picks a name server.

use std::collections::HashMap;
use std::time::Instant;

use crate::client::{Handshake, JitterSource, NetworkClient, NodeId};
use crate::net::Transport;

/// Chooses one bootstrap address at a time and fails over round robin.
///
/// Rules (RocketMQ `namesrvIndex` semantics, one pick per call as in 5.3):
/// - the first choice is at a random index of the list;
/// - the chosen address is kept while it is healthy (its node is Ready or being set up);
/// - when its node fails (disconnected after an attempt, or handshake failed), the next address in
///   round-robin order is chosen;
/// - [`update`](BootstrapFailover::update) replaces the list; if the chosen address is no longer in
///   it, the next pick selects anew.
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
        let mut f = BootstrapFailover {
            chosen: if list.is_empty() { None } else { Some(start) },
            cursor: start,
            list,
            ids: HashMap::new(),
            next_id: -1,
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
    }

    /// Replaces the list. The chosen address stays chosen if it is still listed; otherwise the next
    /// pick selects round robin from the position it had.
    pub fn update<I, S>(&mut self, addresses: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let current = self.chosen.map(|i| self.list[i].clone());
        self.list = addresses.into_iter().map(Into::into).collect();
        for a in self.list.clone() {
            self.id_for(&a);
        }
        self.chosen = current.and_then(|c| self.list.iter().position(|a| *a == c));
        if self.chosen.is_none() && !self.list.is_empty() {
            self.cursor %= self.list.len();
        }
    }

    /// Drives the choice against a client: registers the chosen address as a node, fails over when
    /// that node has failed, and asks the client to connect it. Returns the chosen node when it is
    /// Ready. Call it each time round your poll loop.
    ///
    /// # Errors
    /// When an address is not `host:port`.
    pub fn poll<T: Transport, H: Handshake>(
        &mut self,
        client: &mut NetworkClient<T, H>,
        now: Instant,
    ) -> std::io::Result<Option<NodeId>> {
        let Some(addr) = self.chosen().map(str::to_string) else {
            return Ok(None);
        };
        let node = self.id_for(&addr);
        client.add_node(node, &addr)?;
        // Failed: disconnected after an attempt, and still backing off from that failure.
        let failed = client
            .connection_state(node)
            .is_some_and(|s| s.is_disconnected())
            && client
                .node_metrics(node)
                .is_some_and(|m| m.connect_attempts > 0)
            && client.connection_delay(node, now) > std::time::Duration::ZERO;
        if failed {
            self.failed();
            let Some(next) = self.chosen().map(str::to_string) else {
                return Ok(None);
            };
            let next_node = self.id_for(&next);
            client.add_node(next_node, &next)?;
            client.ready(next_node, now);
            return Ok(None);
        }
        Ok(client.ready(node, now).then_some(node))
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
