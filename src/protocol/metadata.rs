//! Metadata: the request is encoded with `kafka-protocol`; the response is decoded by hand into
//! owned, simple structs (bounds-checked, so a garbage frame cannot make us allocate).

use bytes::Bytes;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

use super::api;
use super::error::{KafkaError, ProtocolError};
use super::kp::encode_request;
use super::wire::Reader;
use super::METADATA_VERSIONS;

/// A broker in a Metadata response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerMeta {
    /// The broker's id.
    pub node_id: i32,
    /// Its advertised host.
    pub host: String,
    /// Its advertised port.
    pub port: i32,
}

/// A topic in a Metadata response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    /// The topic's name (empty if the broker sent a null name, possible from v12).
    pub name: String,
    /// The topic's error (`UNKNOWN_TOPIC_OR_PARTITION`, `LEADER_NOT_AVAILABLE` while it is being
    /// auto-created, ...).
    pub error: Option<KafkaError>,
    /// Its partitions, in the broker's order.
    pub partitions: Vec<PartitionMeta>,
}

/// A partition in a Metadata response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMeta {
    /// The partition index.
    pub partition: i32,
    /// The leader's broker id (-1: no leader).
    pub leader: i32,
    /// The leader epoch (v7+; -1 before).
    pub leader_epoch: i32,
    /// The partition's error (`LEADER_NOT_AVAILABLE`, ...).
    pub error: Option<KafkaError>,
}

/// A decoded Metadata response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataResponse {
    /// The brokers, with their advertised addresses.
    pub brokers: Vec<BrokerMeta>,
    /// The topics asked for.
    pub topics: Vec<TopicMeta>,
}

fn check_version(version: i16) -> Result<(), ProtocolError> {
    if (METADATA_VERSIONS.0..=METADATA_VERSIONS.1).contains(&version) {
        Ok(())
    } else {
        Err(ProtocolError::UnsupportedVersion {
            api_key: api::METADATA,
            version,
        })
    }
}

/// Encodes a Metadata request (without the length prefix) for `topics` at `version` (1..=12),
/// with `allow_auto_topic_creation` true (a field from v4). An empty `topics` asks for no topics
/// (brokers only).
///
/// # Errors
///
/// [`ProtocolError::UnsupportedVersion`] for a version outside [`METADATA_VERSIONS`];
/// [`ProtocolError::Encode`] if `kafka-protocol` refuses the message (a string too long).
pub fn encode_metadata_request(
    version: i16,
    correlation_id: i32,
    client_id: &str,
    topics: &[&str],
) -> Result<Bytes, ProtocolError> {
    check_version(version)?;
    let topics = topics
        .iter()
        .map(|t| {
            MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string((*t).to_owned()))))
        })
        .collect();
    let req = MetadataRequest::default()
        .with_topics(Some(topics))
        .with_allow_auto_topic_creation(true);
    encode_request(api::METADATA, version, correlation_id, client_id, &req)
}

/// Decodes a Metadata response at `version` (1..=12) from a frame without the length prefix
/// (response header v0, or v1 from v9).
///
/// # Errors
///
/// [`ProtocolError::UnsupportedVersion`] for a version outside [`METADATA_VERSIONS`];
/// [`ProtocolError::Truncated`] or [`ProtocolError::Malformed`] if the frame is not a valid
/// response at that version. Topic and partition errors are in the result, not an `Err`.
pub fn decode_metadata_response(
    version: i16,
    frame: &[u8],
) -> Result<MetadataResponse, ProtocolError> {
    check_version(version)?;
    let flexible = version >= 9;
    let mut r = Reader::new(frame);
    r.response_header(flexible)?;
    if version >= 3 {
        let _throttle_time_ms = r.i32()?;
    }
    let n = r.array_len(flexible, 10)?;
    let mut brokers = Vec::with_capacity(n);
    for _ in 0..n {
        let node_id = r.i32()?;
        let host = r.string(flexible)?.to_owned();
        let port = r.i32()?;
        let _rack = r.nullable_string(flexible)?;
        if flexible {
            r.skip_tagged_fields()?;
        }
        brokers.push(BrokerMeta {
            node_id,
            host,
            port,
        });
    }
    if version >= 2 {
        let _cluster_id = r.nullable_string(flexible)?;
    }
    let _controller_id = r.i32()?;
    let n = r.array_len(flexible, 7)?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        let error = KafkaError::from_code(r.i16()?);
        let name = r.nullable_string(flexible)?.unwrap_or_default().to_owned();
        if version >= 10 {
            r.take(16)?; // topic id
        }
        let _is_internal = r.bool()?;
        let n = r.array_len(flexible, if flexible { 13 } else { 18 })?;
        let mut partitions = Vec::with_capacity(n);
        for _ in 0..n {
            let error = KafkaError::from_code(r.i16()?);
            let partition = r.i32()?;
            let leader = r.i32()?;
            let leader_epoch = if version >= 7 { r.i32()? } else { -1 };
            r.skip_i32_array(flexible)?; // replicas
            r.skip_i32_array(flexible)?; // in-sync replicas
            if version >= 5 {
                r.skip_i32_array(flexible)?; // offline replicas
            }
            if flexible {
                r.skip_tagged_fields()?;
            }
            partitions.push(PartitionMeta {
                partition,
                leader,
                leader_epoch,
                error,
            });
        }
        if version >= 8 {
            let _topic_authorized_operations = r.i32()?;
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        topics.push(TopicMeta {
            name,
            error,
            partitions,
        });
    }
    if (8..=10).contains(&version) {
        let _cluster_authorized_operations = r.i32()?;
    }
    if flexible {
        r.skip_tagged_fields()?;
    }
    Ok(MetadataResponse { brokers, topics })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponse as KpResponse, MetadataResponseBroker, MetadataResponsePartition,
        MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, RequestHeader, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

    #[test]
    fn request_decoded_by_kafka_protocol() {
        for version in METADATA_VERSIONS.0..=METADATA_VERSIONS.1 {
            let frame = encode_metadata_request(version, 3, "cid", &["a", "topic-b"]).unwrap();
            let mut b = frame.clone();
            let h =
                RequestHeader::decode(&mut b, MetadataRequest::header_version(version)).unwrap();
            assert_eq!(
                (h.request_api_key, h.request_api_version),
                (api::METADATA, version)
            );
            assert_eq!(h.correlation_id, 3);
            assert_eq!(h.client_id.as_deref(), Some("cid"));
            let req = MetadataRequest::decode(&mut b, version).unwrap();
            assert!(b.is_empty());
            let names: Vec<String> = req
                .topics
                .unwrap()
                .iter()
                .map(|t| t.name.as_ref().unwrap().0.to_string())
                .collect();
            assert_eq!(names, ["a", "topic-b"]);
            assert!(req.allow_auto_topic_creation);
        }
        assert!(matches!(
            encode_metadata_request(0, 1, "c", &[]),
            Err(ProtocolError::UnsupportedVersion {
                api_key: 3,
                version: 0
            })
        ));
        assert!(encode_metadata_request(13, 1, "c", &[]).is_err());
    }

    pub(crate) fn kp_metadata(version: i16) -> KpResponse {
        let broker = |id: i32, host: &'static str, port: i32| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_static_str(host))
                .with_port(port)
                .with_rack(Some(StrBytes::from_static_str("rack")))
        };
        let partition = |p: i32, leader: i32, err: i16| {
            let mut m = MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(leader))
                .with_error_code(err)
                .with_replica_nodes(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
                .with_isr_nodes(vec![BrokerId(leader)]);
            if version >= 7 {
                m = m.with_leader_epoch(10 + p);
            }
            if version >= 5 {
                m = m.with_offline_replicas(vec![BrokerId(3)]);
            }
            m
        };
        let mut orders = MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))
            .with_partitions(vec![
                partition(0, 1, 0),
                partition(1, 2, 0),
                partition(2, -1, 5),
            ]);
        let mut missing = MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("missing"))))
            .with_error_code(3);
        if version >= 8 {
            orders = orders.with_topic_authorized_operations(0x0f);
            missing = missing.with_topic_authorized_operations(0);
        }
        let mut resp = KpResponse::default()
            .with_brokers(vec![
                broker(1, "b1.local", 9092),
                broker(2, "b2.local", 9093),
            ])
            .with_controller_id(BrokerId(1))
            .with_topics(vec![orders, missing]);
        if version >= 2 {
            resp = resp.with_cluster_id(Some(StrBytes::from_static_str("cluster-x")));
        }
        if version >= 3 {
            resp = resp.with_throttle_time_ms(5);
        }
        if (8..=10).contains(&version) {
            resp = resp.with_cluster_authorized_operations(0);
        }
        resp
    }

    pub(crate) fn encode_kp<R: Encodable + HeaderVersion>(
        resp: &R,
        version: i16,
        corr: i32,
    ) -> Bytes {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(corr)
            .encode(&mut buf, R::header_version(version))
            .unwrap();
        resp.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn response_from_kafka_protocol() {
        for version in METADATA_VERSIONS.0..=METADATA_VERSIONS.1 {
            let frame = encode_kp(&kp_metadata(version), version, 42);
            let m = decode_metadata_response(version, &frame)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            assert_eq!(
                m.brokers,
                vec![
                    BrokerMeta {
                        node_id: 1,
                        host: "b1.local".into(),
                        port: 9092
                    },
                    BrokerMeta {
                        node_id: 2,
                        host: "b2.local".into(),
                        port: 9093
                    },
                ]
            );
            assert_eq!(m.topics.len(), 2);
            let orders = &m.topics[0];
            assert_eq!((orders.name.as_str(), orders.error), ("orders", None));
            let epoch = |p: i32| if version >= 7 { 10 + p } else { -1 };
            assert_eq!(
                orders.partitions,
                vec![
                    PartitionMeta {
                        partition: 0,
                        leader: 1,
                        leader_epoch: epoch(0),
                        error: None
                    },
                    PartitionMeta {
                        partition: 1,
                        leader: 2,
                        leader_epoch: epoch(1),
                        error: None
                    },
                    PartitionMeta {
                        partition: 2,
                        leader: -1,
                        leader_epoch: epoch(2),
                        error: Some(KafkaError::LeaderNotAvailable)
                    },
                ]
            );
            let missing = &m.topics[1];
            assert_eq!(missing.name, "missing");
            assert_eq!(missing.error, Some(KafkaError::UnknownTopicOrPartition));
            assert!(missing.partitions.is_empty());
            for cut in 0..frame.len() {
                assert!(
                    decode_metadata_response(version, &frame[..cut]).is_err(),
                    "v{version} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn response_version_checked() {
        assert!(matches!(
            decode_metadata_response(0, &[0; 32]),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
        assert!(decode_metadata_response(13, &[0; 32]).is_err());
    }
}
