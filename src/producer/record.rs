//! Records, their metadata once delivered, and delivery errors.

use std::fmt;

use bytes::Bytes;

use crate::client::{DisconnectCause, LocalError};
use crate::protocol::{KafkaError, ProtocolError};

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Topic name.
    pub topic: String,
    /// Explicit partition; `None` lets the partitioner choose (murmur2 of the key, sticky when
    /// there is no key).
    pub partition: Option<i32>,
    /// Key (`None`: a null key).
    pub key: Option<Bytes>,
    /// Value (`None`: a null value, a tombstone).
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// CreateTime in milliseconds since the epoch; `None`: now.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record for `topic` with `value`, no key.
    pub fn new(topic: &str, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.to_string(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: Option<Bytes>) -> Self {
        self.headers.push((name.to_string(), value));
        self
    }

    /// Sets the timestamp.
    pub fn timestamp_ms(mut self, ts: i64) -> Self {
        self.timestamp_ms = Some(ts);
        self
    }

    /// Bytes this record holds (for `buffer.memory` accounting).
    pub fn size_estimate(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |b| b.len()) + 10)
            .sum();
        self.key.as_ref().map_or(0, |b| b.len())
            + self.value.as_ref().map_or(0, |b| b.len())
            + headers
            + 32
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The partition.
    pub partition: i32,
    /// Its offset; -1 with `acks=0`.
    pub offset: i64,
}

/// Why a record was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProduceError {
    /// `delivery.timeout.ms` passed before the record was acknowledged; `last` is the last
    /// retriable failure seen, if any.
    DeliveryTimeout {
        /// The last failure before the deadline.
        last: Option<RetryCause>,
    },
    /// `buffer.memory` stayed full for `max.block.ms`.
    BufferExhausted,
    /// The record alone exceeds `max.request.size` or `buffer.memory`.
    RecordTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The explicit partition does not exist in the topic.
    InvalidPartition {
        /// The partition asked for.
        partition: i32,
        /// Partitions in the topic.
        count: i32,
    },
    /// The broker answered with a non-retriable error.
    Broker(KafkaError),
    /// A retriable error persisted past `retries`.
    RetriesExhausted {
        /// The last failure.
        last: Option<RetryCause>,
    },
    /// The broker and mqnet share no version of a needed API, or a response did not parse.
    Protocol(ProtocolError),
    /// The producer is closed (or closed before the record could be delivered).
    Closed,
    /// The record's topic name breaks Kafka's rules (see [`validate_topic`]); nothing was sent.
    InvalidTopic {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// SASL authentication failed (Kafka's `AuthenticationException`): the broker refused the
    /// credentials or the mechanism, or did not prove it knows the password. Not retriable: the
    /// producer fails every record with it and stops connecting.
    Authentication {
        /// What failed, with the broker's message when it sent one.
        message: String,
    },
}

/// A retriable failure of a batch: the `last` of [`ProduceError::DeliveryTimeout`] and
/// [`ProduceError::RetriesExhausted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryCause {
    /// The broker answered the partition (or the topic's metadata) with a retriable error code.
    Broker(KafkaError),
    /// The Produce response did not parse.
    Protocol(ProtocolError),
    /// The connection was lost with the request in flight.
    Disconnected(DisconnectCause),
    /// The request got no answer within `request.timeout.ms`.
    RequestTimedOut,
    /// The client refused the request before sending it.
    Local(LocalError),
    /// The Produce response did not name the batch's partition.
    PartitionMissing,
    /// The deadline passed while the batch's request was in flight (no failure seen yet).
    InFlight,
}

impl fmt::Display for RetryCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryCause::Broker(e) => write!(f, "{e}"),
            RetryCause::Protocol(e) => write!(f, "{e}"),
            RetryCause::Disconnected(c) => write!(f, "disconnected: {c}"),
            RetryCause::RequestTimedOut => write!(f, "request timed out"),
            RetryCause::Local(e) => write!(f, "{e}"),
            RetryCause::PartitionMissing => write!(f, "partition missing from response"),
            RetryCause::InFlight => write!(f, "request still in flight"),
        }
    }
}

impl std::error::Error for RetryCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RetryCause::Broker(e) => Some(e),
            RetryCause::Protocol(e) => Some(e),
            RetryCause::Disconnected(c) => Some(c),
            RetryCause::Local(e) => Some(e),
            RetryCause::RequestTimedOut | RetryCause::PartitionMissing | RetryCause::InFlight => {
                None
            }
        }
    }
}

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// Checks a topic name against Kafka's rules: 1 to 249 characters from `[a-zA-Z0-9._-]`, and
/// neither `.` nor `..`. [`Producer::send`](super::Producer::send) refuses a record whose topic
/// breaks them with [`ProduceError::InvalidTopic`] (a name a broker could never accept, and one
/// that might not even fit a Metadata request, would otherwise stall the producer's metadata).
///
/// # Errors
/// What is wrong with the name.
///
/// ```
/// use mqnet::producer::validate_topic;
/// assert!(validate_topic("orders.v2_eu-1").is_ok());
/// assert!(validate_topic("..").is_err());
/// assert!(validate_topic("a b").is_err());
/// assert!(validate_topic(&"x".repeat(250)).is_err());
/// ```
pub fn validate_topic(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty topic name");
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err("topic name longer than 249 characters");
    }
    if name == "." || name == ".." {
        return Err("topic name \".\" or \"..\"");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("topic name with a character outside [a-zA-Z0-9._-]");
    }
    Ok(())
}

impl fmt::Display for ProduceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProduceError::DeliveryTimeout { last: Some(l) } => {
                write!(f, "delivery.timeout.ms expired (last error: {l})")
            }
            ProduceError::DeliveryTimeout { last: None } => {
                write!(f, "delivery.timeout.ms expired")
            }
            ProduceError::BufferExhausted => {
                write!(f, "buffer.memory exhausted for max.block.ms")
            }
            ProduceError::RecordTooLarge { size, limit } => {
                write!(f, "record of {size} bytes exceeds the limit of {limit}")
            }
            ProduceError::InvalidPartition { partition, count } => {
                write!(
                    f,
                    "partition {partition} does not exist (topic has {count})"
                )
            }
            ProduceError::Broker(e) => write!(f, "broker error: {e}"),
            ProduceError::RetriesExhausted { last: Some(l) } => {
                write!(f, "retries exhausted (last error: {l})")
            }
            ProduceError::RetriesExhausted { last: None } => write!(f, "retries exhausted"),
            ProduceError::Protocol(e) => write!(f, "protocol error: {e}"),
            ProduceError::Closed => write!(f, "producer closed"),
            ProduceError::InvalidTopic { reason } => write!(f, "invalid topic: {reason}"),
            ProduceError::Authentication { message } => {
                write!(f, "authentication failed: {message}")
            }
        }
    }
}

impl std::error::Error for ProduceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProduceError::DeliveryTimeout { last: Some(l) }
            | ProduceError::RetriesExhausted { last: Some(l) } => Some(l),
            ProduceError::Broker(e) => Some(e),
            ProduceError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;
    use crate::net::{DisconnectReason, FrameError};

    #[test]
    fn delivery_timeout_chains_to_the_typed_last_failure() {
        let e = ProduceError::DeliveryTimeout {
            last: Some(RetryCause::Broker(KafkaError::NotLeaderOrFollower)),
        };
        let last = e.source().and_then(|s| s.downcast_ref::<RetryCause>());
        assert_eq!(
            last,
            Some(&RetryCause::Broker(KafkaError::NotLeaderOrFollower))
        );
        let kafka = last
            .and_then(|l| l.source())
            .and_then(|s| s.downcast_ref::<KafkaError>());
        assert_eq!(kafka, Some(&KafkaError::NotLeaderOrFollower));
        assert!(ProduceError::DeliveryTimeout { last: None }
            .source()
            .is_none());
    }

    #[test]
    fn a_disconnect_chains_down_to_the_transport_reason() {
        let why = DisconnectReason::InvalidFrame(FrameError::NegativeLength(-1));
        let e = ProduceError::RetriesExhausted {
            last: Some(RetryCause::Disconnected(DisconnectCause::Transport(why))),
        };
        let mut chain = Vec::new();
        let mut cur: Option<&(dyn Error + 'static)> = Some(&e);
        while let Some(c) = cur {
            chain.push(c.to_string());
            cur = c.source();
        }
        assert_eq!(chain.len(), 5, "{chain:?}");
        assert!(chain[0].contains("retries exhausted"), "{chain:?}");
    }
}
