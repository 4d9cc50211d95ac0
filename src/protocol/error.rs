//! Errors of the protocol layer: [`ProtocolError`] (what went wrong encoding or decoding) and
//! [`KafkaError`] (an error code a broker sent).

use std::fmt;

/// What went wrong encoding a request or decoding a response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame ended before the message did (or a length in it points past its end).
    Truncated,
    /// The frame is not a valid message at the version it was decoded at.
    Malformed(String),
    /// No version of `api_key` is supported by both sides: ours is `ours`, the broker's is
    /// `theirs` (`None`: the broker does not offer the API at all). Raised locally, before
    /// anything touches the network.
    NoCommonVersion {
        /// The API key (see [`crate::protocol::api`]).
        api_key: i16,
        /// The range of versions we implement.
        ours: (i16, i16),
        /// The range the broker advertised, if any.
        theirs: Option<(i16, i16)>,
    },
    /// A codec function was asked for a version of `api_key` it does not implement.
    UnsupportedVersion {
        /// The API key.
        api_key: i16,
        /// The version asked for.
        version: i16,
    },
    /// The broker answered with a top-level error code.
    Kafka(KafkaError),
    /// The `kafka-protocol` crate refused to encode a message (its error, as text).
    Encode(String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Truncated => f.write_str("truncated frame"),
            ProtocolError::Malformed(why) => write!(f, "malformed frame: {why}"),
            ProtocolError::NoCommonVersion {
                api_key,
                ours,
                theirs: Some(theirs),
            } => write!(
                f,
                "no common version for api key {api_key}: we support {}..={}, the broker {}..={}",
                ours.0, ours.1, theirs.0, theirs.1
            ),
            ProtocolError::NoCommonVersion {
                api_key,
                ours,
                theirs: None,
            } => write!(
                f,
                "no common version for api key {api_key}: we support {}..={}, the broker does not \
                 offer it",
                ours.0, ours.1
            ),
            ProtocolError::UnsupportedVersion { api_key, version } => {
                write!(
                    f,
                    "version {version} of api key {api_key} is not implemented"
                )
            }
            ProtocolError::Kafka(e) => write!(f, "broker error: {e}"),
            ProtocolError::Encode(why) => write!(f, "encode failed: {why}"),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtocolError::Kafka(e) => Some(e),
            _ => None,
        }
    }
}

impl From<KafkaError> for ProtocolError {
    fn from(e: KafkaError) -> Self {
        ProtocolError::Kafka(e)
    }
}

macro_rules! kafka_errors {
    ( $( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal, retriable: $retriable:literal, metadata: $metadata:literal; )* ) => {
        /// A Kafka error code (other than `NONE`, 0: "no error" is `None` in an
        /// `Option<KafkaError>`).
        ///
        /// The codes a producer acts on have their own variant; any other is [`KafkaError::Other`].
        /// Retriability follows Kafka's `Errors` table (`RetriableException` subclasses).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum KafkaError {
            $( $(#[$doc])* $variant, )*
            /// Any other code (its value).
            Other(i16),
        }

        impl KafkaError {
            /// The error for a response's error code: `None` for 0 (`NONE`), otherwise the variant
            /// (or [`KafkaError::Other`]).
            pub const fn from_code(code: i16) -> Option<KafkaError> {
                match code {
                    0 => None,
                    $( $code => Some(KafkaError::$variant), )*
                    other => Some(KafkaError::Other(other)),
                }
            }

            /// The wire code.
            pub const fn code(&self) -> i16 {
                match *self {
                    $( KafkaError::$variant => $code, )*
                    KafkaError::Other(code) => code,
                }
            }

            /// Kafka's name for the code (`NOT_LEADER_OR_FOLLOWER`, ...); `"UNKNOWN"` for codes
            /// without a variant.
            pub const fn name(&self) -> &'static str {
                match *self {
                    $( KafkaError::$variant => $name, )*
                    KafkaError::Other(_) => "UNKNOWN",
                }
            }

            /// Whether the request may succeed if retried (Kafka's `RetriableException`). Unknown
            /// codes are not retriable.
            pub const fn is_retriable(&self) -> bool {
                match *self {
                    $( KafkaError::$variant => $retriable, )*
                    KafkaError::Other(_) => false,
                }
            }

            /// Whether the error means the client's metadata is stale and should be refreshed
            /// before a retry (Kafka's `InvalidMetadataException` family: unknown topic, leader
            /// moved or unavailable, storage error, ...).
            pub const fn invalidates_metadata(&self) -> bool {
                match *self {
                    $( KafkaError::$variant => $metadata, )*
                    KafkaError::Other(_) => false,
                }
            }
        }
    };
}

kafka_errors! {
    /// UNKNOWN_SERVER_ERROR (-1): the broker hit an unexpected error.
    UnknownServerError = -1, "UNKNOWN_SERVER_ERROR", retriable: false, metadata: false;
    /// OFFSET_OUT_OF_RANGE (1).
    OffsetOutOfRange = 1, "OFFSET_OUT_OF_RANGE", retriable: false, metadata: false;
    /// CORRUPT_MESSAGE (2): a record failed its CRC or is otherwise corrupt.
    CorruptMessage = 2, "CORRUPT_MESSAGE", retriable: true, metadata: false;
    /// UNKNOWN_TOPIC_OR_PARTITION (3).
    UnknownTopicOrPartition = 3, "UNKNOWN_TOPIC_OR_PARTITION", retriable: true, metadata: true;
    /// LEADER_NOT_AVAILABLE (5): a leader election is in progress.
    LeaderNotAvailable = 5, "LEADER_NOT_AVAILABLE", retriable: true, metadata: true;
    /// NOT_LEADER_OR_FOLLOWER (6): the broker does not lead the partition.
    NotLeaderOrFollower = 6, "NOT_LEADER_OR_FOLLOWER", retriable: true, metadata: true;
    /// REQUEST_TIMED_OUT (7): the broker-side timeout (e.g. acks=all replication) passed.
    RequestTimedOut = 7, "REQUEST_TIMED_OUT", retriable: true, metadata: false;
    /// BROKER_NOT_AVAILABLE (8).
    BrokerNotAvailable = 8, "BROKER_NOT_AVAILABLE", retriable: false, metadata: false;
    /// REPLICA_NOT_AVAILABLE (9).
    ReplicaNotAvailable = 9, "REPLICA_NOT_AVAILABLE", retriable: true, metadata: true;
    /// MESSAGE_TOO_LARGE (10): a batch exceeds the broker's or topic's limit.
    MessageTooLarge = 10, "MESSAGE_TOO_LARGE", retriable: false, metadata: false;
    /// NETWORK_EXCEPTION (13): the broker lost a connection it needed.
    NetworkException = 13, "NETWORK_EXCEPTION", retriable: true, metadata: true;
    /// COORDINATOR_LOAD_IN_PROGRESS (14).
    CoordinatorLoadInProgress = 14, "COORDINATOR_LOAD_IN_PROGRESS", retriable: true, metadata: false;
    /// COORDINATOR_NOT_AVAILABLE (15).
    CoordinatorNotAvailable = 15, "COORDINATOR_NOT_AVAILABLE", retriable: true, metadata: false;
    /// NOT_COORDINATOR (16).
    NotCoordinator = 16, "NOT_COORDINATOR", retriable: true, metadata: false;
    /// INVALID_TOPIC_EXCEPTION (17): the topic name is invalid or internal.
    InvalidTopic = 17, "INVALID_TOPIC_EXCEPTION", retriable: false, metadata: false;
    /// RECORD_LIST_TOO_LARGE (18).
    RecordListTooLarge = 18, "RECORD_LIST_TOO_LARGE", retriable: false, metadata: false;
    /// NOT_ENOUGH_REPLICAS (19): fewer in-sync replicas than `min.insync.replicas`.
    NotEnoughReplicas = 19, "NOT_ENOUGH_REPLICAS", retriable: true, metadata: false;
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND (20): written to the leader, but too few replicas to ack.
    NotEnoughReplicasAfterAppend = 20, "NOT_ENOUGH_REPLICAS_AFTER_APPEND", retriable: true, metadata: false;
    /// INVALID_REQUIRED_ACKS (21).
    InvalidRequiredAcks = 21, "INVALID_REQUIRED_ACKS", retriable: false, metadata: false;
    /// TOPIC_AUTHORIZATION_FAILED (29).
    TopicAuthorizationFailed = 29, "TOPIC_AUTHORIZATION_FAILED", retriable: false, metadata: false;
    /// CLUSTER_AUTHORIZATION_FAILED (31).
    ClusterAuthorizationFailed = 31, "CLUSTER_AUTHORIZATION_FAILED", retriable: false, metadata: false;
    /// INVALID_TIMESTAMP (32).
    InvalidTimestamp = 32, "INVALID_TIMESTAMP", retriable: false, metadata: false;
    /// UNSUPPORTED_VERSION (35): the broker does not implement the request's version.
    UnsupportedVersion = 35, "UNSUPPORTED_VERSION", retriable: false, metadata: false;
    /// NOT_CONTROLLER (41).
    NotController = 41, "NOT_CONTROLLER", retriable: true, metadata: false;
    /// INVALID_REQUEST (42).
    InvalidRequest = 42, "INVALID_REQUEST", retriable: false, metadata: false;
    /// UNSUPPORTED_FOR_MESSAGE_FORMAT (43).
    UnsupportedForMessageFormat = 43, "UNSUPPORTED_FOR_MESSAGE_FORMAT", retriable: false, metadata: false;
    /// OUT_OF_ORDER_SEQUENCE_NUMBER (45): the broker saw a gap in an idempotent sequence.
    OutOfOrderSequenceNumber = 45, "OUT_OF_ORDER_SEQUENCE_NUMBER", retriable: false, metadata: false;
    /// DUPLICATE_SEQUENCE_NUMBER (46): the batch was already written (a producer counts this as
    /// success).
    DuplicateSequenceNumber = 46, "DUPLICATE_SEQUENCE_NUMBER", retriable: false, metadata: false;
    /// INVALID_PRODUCER_EPOCH (47): the producer was fenced by a newer epoch.
    InvalidProducerEpoch = 47, "INVALID_PRODUCER_EPOCH", retriable: false, metadata: false;
    /// INVALID_TXN_STATE (48).
    InvalidTxnState = 48, "INVALID_TXN_STATE", retriable: false, metadata: false;
    /// INVALID_PRODUCER_ID_MAPPING (49).
    InvalidProducerIdMapping = 49, "INVALID_PRODUCER_ID_MAPPING", retriable: false, metadata: false;
    /// INVALID_TRANSACTION_TIMEOUT (50).
    InvalidTransactionTimeout = 50, "INVALID_TRANSACTION_TIMEOUT", retriable: false, metadata: false;
    /// CONCURRENT_TRANSACTIONS (51).
    ConcurrentTransactions = 51, "CONCURRENT_TRANSACTIONS", retriable: false, metadata: false;
    /// TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53).
    TransactionalIdAuthorizationFailed = 53, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", retriable: false, metadata: false;
    /// KAFKA_STORAGE_ERROR (56): the partition's log directory is offline.
    KafkaStorageError = 56, "KAFKA_STORAGE_ERROR", retriable: true, metadata: true;
    /// UNKNOWN_PRODUCER_ID (59): the broker has no state for the producer id (e.g. its records
    /// were deleted by retention).
    UnknownProducerId = 59, "UNKNOWN_PRODUCER_ID", retriable: false, metadata: false;
    /// FENCED_LEADER_EPOCH (74).
    FencedLeaderEpoch = 74, "FENCED_LEADER_EPOCH", retriable: true, metadata: true;
    /// UNKNOWN_LEADER_EPOCH (75).
    UnknownLeaderEpoch = 75, "UNKNOWN_LEADER_EPOCH", retriable: true, metadata: true;
    /// UNSUPPORTED_COMPRESSION_TYPE (76).
    UnsupportedCompressionType = 76, "UNSUPPORTED_COMPRESSION_TYPE", retriable: false, metadata: false;
    /// INVALID_RECORD (87): the broker rejected a record (see the response's record errors).
    InvalidRecord = 87, "INVALID_RECORD", retriable: false, metadata: false;
    /// THROTTLING_QUOTA_EXCEEDED (89).
    ThrottlingQuotaExceeded = 89, "THROTTLING_QUOTA_EXCEEDED", retriable: true, metadata: false;
    /// PRODUCER_FENCED (90).
    ProducerFenced = 90, "PRODUCER_FENCED", retriable: false, metadata: false;
    /// UNKNOWN_TOPIC_ID (100).
    UnknownTopicId = 100, "UNKNOWN_TOPIC_ID", retriable: true, metadata: true;
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl std::error::Error for KafkaError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_none_is_no_error() {
        assert_eq!(KafkaError::from_code(0), None);
        for code in -1..=130i16 {
            if code == 0 {
                continue;
            }
            let e = KafkaError::from_code(code).expect("non-zero is an error");
            assert_eq!(e.code(), code);
        }
        assert_eq!(
            KafkaError::from_code(6),
            Some(KafkaError::NotLeaderOrFollower)
        );
        assert_eq!(KafkaError::from_code(999), Some(KafkaError::Other(999)));
        assert_eq!(
            KafkaError::NotLeaderOrFollower.to_string(),
            "NOT_LEADER_OR_FOLLOWER (6)"
        );
    }

    /// The oracle: kafka-protocol's table of codes and retriability (generated from Kafka's).
    #[test]
    fn retriability_matches_kafka_protocol() {
        for code in -1..=130i16 {
            let ours = KafkaError::from_code(code);
            let theirs = kafka_protocol::ResponseError::try_from_code(code);
            assert_eq!(ours.is_none(), theirs.is_none(), "code {code}");
            if let (Some(o), Some(t)) = (ours, theirs) {
                if !matches!(o, KafkaError::Other(_)) {
                    assert_eq!(o.is_retriable(), t.is_retriable(), "code {code} ({o})");
                }
            }
        }
    }

    #[test]
    fn metadata_invalidating_errors_are_retriable() {
        for code in -1..=130i16 {
            if let Some(e) = KafkaError::from_code(code) {
                if e.invalidates_metadata() {
                    assert!(e.is_retriable(), "{e}");
                }
            }
        }
    }
}
