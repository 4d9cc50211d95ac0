//! The group layer's configuration: gecko's heartbeat defaults and the reconnect manager's pacing.

use std::time::Duration;

use crate::client::{parse_ms, parse_properties, parse_usize, ConfigError};

/// How a request picks a member of its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// The next live member after the previous pick (gecko's `RoundRobinConnectionSelector`),
    /// skipping dead, connecting and suspect members.
    #[default]
    RoundRobin,
    /// The live member with the fewest requests in flight or waiting; ties go round robin.
    LeastLoaded,
}

/// Configuration of a [`GroupClient`](super::GroupClient). Key names follow gecko/metaq's
/// settings in Kafka's dotted style; [`GroupConfig::KEYS`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `heartbeat.interval.ms` (10 000): a live member that has received nothing for this long
    /// sends a heartbeat. Zero disables heartbeats.
    pub heartbeat_interval: Duration,
    /// `heartbeat.timeout.ms` (5 000): a heartbeat unanswered for this long counts one failure.
    pub heartbeat_timeout: Duration,
    /// `heartbeat.max.failures` (3): this many consecutive failures close the member
    /// ([`DownReason::HeartbeatFailed`](super::DownReason::HeartbeatFailed)).
    pub heartbeat_max_failures: u32,
    /// `reconnect.max.concurrent` (8): connection attempts pending at once, over all groups.
    /// Each group may hold at least one and at most `max(1, this / groups)` of them, so a group
    /// whose address is dead cannot take the slots another group needs to heal.
    pub reconnect_max_concurrent: usize,
    /// `reconnect.max.attempts` (-1 = forever, `None` here): consecutive failed attempts
    /// (refused at once or failing later alike) after which a member is abandoned until the next
    /// [`connect`](super::GroupClient::connect) of its group and address.
    pub reconnect_max_attempts: Option<u32>,
    /// `group.selection` (`round-robin`; or `least-loaded`).
    pub selection: Selection,
    /// `mqnet.group.first.node.id` (1 000 000): members get the client node ids from here
    /// upward; do not add nodes of your own in that range.
    pub first_node_id: i32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(5),
            heartbeat_max_failures: 3,
            reconnect_max_concurrent: 8,
            reconnect_max_attempts: None,
            selection: Selection::RoundRobin,
            first_node_id: 1_000_000,
        }
    }
}

impl GroupConfig {
    /// The configuration keys [`GroupConfig::set`] accepts.
    pub const KEYS: &'static [&'static str] = &[
        "heartbeat.interval.ms",
        "heartbeat.timeout.ms",
        "heartbeat.max.failures",
        "reconnect.max.concurrent",
        "reconnect.max.attempts",
        "group.selection",
        "mqnet.group.first.node.id",
    ];

    /// Sets one key from its string value.
    ///
    /// # Errors
    /// [`ConfigError::UnknownKey`] for a key not in [`GroupConfig::KEYS`],
    /// [`ConfigError::InvalidValue`] for a value that does not parse.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |expected: &'static str| ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected,
        };
        match key {
            "heartbeat.interval.ms" => self.heartbeat_interval = parse_ms(key, value)?,
            "heartbeat.timeout.ms" => self.heartbeat_timeout = parse_ms(key, value)?,
            "heartbeat.max.failures" => {
                self.heartbeat_max_failures = u32::try_from(parse_usize(key, value, 1)?)
                    .map_err(|_| invalid("a positive integer"))?
            }
            "reconnect.max.concurrent" => {
                self.reconnect_max_concurrent = parse_usize(key, value, 1)?
            }
            "reconnect.max.attempts" => {
                self.reconnect_max_attempts = match value.trim().parse::<i64>() {
                    Ok(-1) => None,
                    Ok(n) if n > 0 => {
                        Some(u32::try_from(n).map_err(|_| invalid("a positive integer or -1"))?)
                    }
                    _ => return Err(invalid("a positive integer or -1 (forever)")),
                }
            }
            "group.selection" => {
                self.selection = match value.trim() {
                    "round-robin" => Selection::RoundRobin,
                    "least-loaded" => Selection::LeastLoaded,
                    _ => return Err(invalid("`round-robin` or `least-loaded`")),
                }
            }
            "mqnet.group.first.node.id" => {
                self.first_node_id = value
                    .trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| invalid("a non-negative 32-bit integer"))?
            }
            _ => return Err(ConfigError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// A configuration from defaults and `key=value` lines.
    ///
    /// # Errors
    /// As [`GroupConfig::set`], and [`ConfigError::Malformed`] for a line without `=`.
    pub fn from_properties(text: &str) -> Result<Self, ConfigError> {
        let mut c = GroupConfig::default();
        for (k, v) in parse_properties(text)? {
            c.set(&k, &v)?;
        }
        Ok(c)
    }

    /// Sets `heartbeat.interval.ms`.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }

    /// Sets `heartbeat.timeout.ms`.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }

    /// Sets `heartbeat.max.failures` (at least 1).
    pub fn heartbeat_max_failures(mut self, n: u32) -> Self {
        self.heartbeat_max_failures = n.max(1);
        self
    }

    /// Sets `reconnect.max.concurrent` (at least 1).
    pub fn reconnect_max_concurrent(mut self, n: usize) -> Self {
        self.reconnect_max_concurrent = n.max(1);
        self
    }

    /// Sets `reconnect.max.attempts` (`None` = forever).
    pub fn reconnect_max_attempts(mut self, n: Option<u32>) -> Self {
        self.reconnect_max_attempts = n;
        self
    }

    /// Sets `group.selection`.
    pub fn selection(mut self, s: Selection) -> Self {
        self.selection = s;
        self
    }

    /// Sets `mqnet.group.first.node.id`.
    pub fn first_node_id(mut self, id: i32) -> Self {
        self.first_node_id = id.max(0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_keys() {
        let c = GroupConfig::default();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(5));
        assert_eq!(c.heartbeat_max_failures, 3);
        assert_eq!(c.reconnect_max_attempts, None);
        let c = GroupConfig::from_properties(
            "heartbeat.interval.ms=100\nreconnect.max.attempts=350\ngroup.selection=least-loaded",
        )
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(c.reconnect_max_attempts, Some(350));
        assert_eq!(c.selection, Selection::LeastLoaded);
        assert!(GroupConfig::from_properties("reconnect.max.attempts=0").is_err());
        assert!(GroupConfig::from_properties("heartbeat.max.failures=0").is_err());
        assert!(matches!(
            GroupConfig::from_properties("nope=1"),
            Err(ConfigError::UnknownKey(k)) if k == "nope"
        ));
    }
}
