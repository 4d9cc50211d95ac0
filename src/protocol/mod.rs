//! The Kafka wire codec the producer uses (feature `kafka`, on by default).
//!
//! - **Control plane** — ApiVersions, Metadata, InitProducerId: requests are encoded with the
//!   [`kafka-protocol`](https://docs.rs/kafka-protocol) crate; responses are decoded by hand into
//!   small owned structs, with every length checked against the frame (kafka-protocol's decoders
//!   pre-allocate from lengths read off the wire, so a garbage frame could make them allocate
//!   gigabytes).
//! - **Hot path** — record batches ([`RecordBatchWriter`]) and Produce requests
//!   ([`write_produce_request`]) are hand-written straight into the caller's send buffer: no
//!   allocation per record or per request when the buffer has capacity. Produce responses are
//!   decoded by hand too.
//! - **Handshake** — [`ApiVersionsHandshake`] is the [`Handshake`](crate::client::Handshake) hook
//!   that runs ApiVersions on each new connection and keeps each node's versions for
//!   [`ApiVersions::negotiate`].
//! - **Compression** — [`Compressor`] and [`decompress`]: the record batch codecs of
//!   `compression.type` (gzip, snappy, lz4, zstd), each behind its cargo feature, framed as Kafka's
//!   clients frame them.
//! - **Partitioner** — [`murmur2`] and [`partition_for_key`], bit-compatible with the Java client.
//!
//! Frames here are without the 4-byte length prefix (the [`Selector`](crate::net::Selector) adds
//! it), except [`write_produce_request`], which writes the prefix too for `send_prefixed`-style
//! sending. Responses given to the decoders start with the response header (correlation id, plus
//! tagged fields for flexible versions — but ApiVersions responses always use header v0).
//!
//! Supported versions: [`PRODUCE_VERSIONS`], [`METADATA_VERSIONS`],
//! [`INIT_PRODUCER_ID_VERSIONS`], [`API_VERSIONS_VERSIONS`].
//!
//! Nothing here panics on input from the wire: decoders return [`ProtocolError`].

mod compression;
mod error;
mod init_producer_id;
mod kp;
mod metadata;
mod murmur;
mod produce;
mod record_batch;
#[cfg(feature = "broker")]
pub mod requests;
pub mod sasl;
pub mod scram;
mod topic_partition;
mod versions;
mod wire;

#[cfg(test)]
mod reauth_tests;
#[cfg(test)]
mod robustness;
#[cfg(test)]
mod sasl_tests;

pub use compression::{decompress, Compression, CompressionError, Compressor};
pub use error::{KafkaError, ProtocolError};
pub use init_producer_id::{
    decode_init_producer_id_response, encode_init_producer_id_request, InitProducerIdResponse,
    INIT_PRODUCER_ID_TIMEOUT_MS,
};
pub use metadata::{
    decode_metadata_response, encode_metadata_request, BrokerMeta, MetadataResponse, PartitionMeta,
    TopicMeta,
};
pub use murmur::{murmur2, partition_for_key};
pub use produce::{
    decode_produce_response, produce_request_size, write_produce_request,
    write_produce_request_unprefixed, PartitionProduceResult, ProduceHeader, ProduceRequestWriter,
    ProduceResponse, ProduceTopics, RequestHeader,
};
pub use record_batch::{
    restamp_batch, BatchHeader, RecordBatchWriter, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
    RECORD_BATCH_OVERHEAD,
};
pub use topic_partition::TopicPartition;
pub use versions::{
    decode_api_versions_response, encode_api_versions_request, ApiVersions, ApiVersionsHandshake,
    CLIENT_SOFTWARE_NAME, CLIENT_SOFTWARE_VERSION,
};

/// Kafka API keys used by the producer.
pub mod api {
    /// Produce.
    pub const PRODUCE: i16 = 0;
    /// Metadata.
    pub const METADATA: i16 = 3;
    /// ApiVersions.
    pub const API_VERSIONS: i16 = 18;
    /// InitProducerId.
    pub const INIT_PRODUCER_ID: i16 = 22;
}

/// Produce versions we implement: 3 (record batch v2) to 12 (the last with topic names; 13 uses
/// topic ids). Flexible from 9.
pub const PRODUCE_VERSIONS: (i16, i16) = (3, 12);
/// Metadata versions we implement: 1 to 12. Flexible from 9.
pub const METADATA_VERSIONS: (i16, i16) = (1, 12);
/// InitProducerId versions we implement: 0 to 4. Flexible from 2.
pub const INIT_PRODUCER_ID_VERSIONS: (i16, i16) = (0, 4);
/// ApiVersions versions we implement: 0 to 3. Flexible (request side) from 3.
pub const API_VERSIONS_VERSIONS: (i16, i16) = (0, 3);
