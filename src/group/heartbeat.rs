//! Heartbeat protocols: what a heartbeat request is and which response proves the peer alive.

use bytes::Bytes;

/// The heartbeat of one protocol: the frame to send and the check of its answer.
///
/// The client has already matched the response's correlation id to the request's; `check` only
/// decides whether the answer is a valid heartbeat response. A response that fails the check
/// counts as a heartbeat failure.
pub trait Heartbeat {
    /// The heartbeat request frame, carrying `correlation_id` where the protocol's responses
    /// carry it back (the client reads it with its correlation reader).
    fn request(&mut self, correlation_id: i32) -> Bytes;

    /// Whether `response` (the whole frame) answers the heartbeat `correlation_id`.
    fn check(&mut self, correlation_id: i32, response: &[u8]) -> bool;
}

/// The heartbeat of the harness's echo protocol (`mqnet-bench echo`, Kafka-shaped): the request
/// is the protocol's smallest, `i16 api_key = 0 | i16 api_version = 0 | i32 correlation_id`; any
/// response of at least 4 bytes that starts with the correlation id answers it (the server pads
/// responses to its configured size).
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoHeartbeat;

impl Heartbeat for EchoHeartbeat {
    fn request(&mut self, correlation_id: i32) -> Bytes {
        let mut v = [0u8; 8];
        v[4..].copy_from_slice(&correlation_id.to_be_bytes());
        Bytes::copy_from_slice(&v)
    }

    fn check(&mut self, correlation_id: i32, response: &[u8]) -> bool {
        response.get(..4) == Some(&correlation_id.to_be_bytes()[..])
    }
}

/// The heartbeat for a peer that returns every frame byte for byte (such as
/// `mqnet::sim::Behaviour::Echo` of the simulated network): the correlation id
/// (big-endian) followed by [`MirrorHeartbeat::BODY`], answered by exactly the same bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct MirrorHeartbeat;

impl MirrorHeartbeat {
    /// The body after the correlation id.
    pub const BODY: &'static [u8] = b"mqnet.heartbeat";
}

impl Heartbeat for MirrorHeartbeat {
    fn request(&mut self, correlation_id: i32) -> Bytes {
        let mut v = Vec::with_capacity(4 + Self::BODY.len());
        v.extend_from_slice(&correlation_id.to_be_bytes());
        v.extend_from_slice(Self::BODY);
        Bytes::from(v)
    }

    fn check(&mut self, correlation_id: i32, response: &[u8]) -> bool {
        response.len() == 4 + Self::BODY.len()
            && response[..4] == correlation_id.to_be_bytes()
            && &response[4..] == Self::BODY
    }
}

/// Kafka's heartbeat for an idle broker connection: an ApiVersions request. Any well-formed
/// ApiVersions response proves the broker alive, one carrying an error code included (the broker
/// parsed the request and answered).
#[cfg(feature = "kafka")]
#[derive(Debug, Clone)]
pub struct KafkaHeartbeat {
    client_id: String,
    version: i16,
}

#[cfg(feature = "kafka")]
impl KafkaHeartbeat {
    /// ApiVersions v3 (Kafka 2.4 and later) with `client_id` in the request header.
    pub fn new(client_id: &str) -> Self {
        KafkaHeartbeat {
            client_id: client_id.to_string(),
            version: 3,
        }
    }

    /// Uses ApiVersions `version` (0..=3) instead.
    pub fn with_version(mut self, version: i16) -> Self {
        self.version = version;
        self
    }
}

#[cfg(feature = "kafka")]
impl Heartbeat for KafkaHeartbeat {
    fn request(&mut self, correlation_id: i32) -> Bytes {
        use crate::protocol::encode_api_versions_request;
        // An unsupported configured version falls back to v0, which every broker answers.
        encode_api_versions_request(self.version, correlation_id, &self.client_id)
            .or_else(|_| encode_api_versions_request(0, correlation_id, &self.client_id))
            .unwrap_or_default()
    }

    fn check(&mut self, _correlation_id: i32, response: &[u8]) -> bool {
        use crate::protocol::decode_api_versions_response;
        use crate::protocol::ProtocolError;
        // A broker that does not speak our version answers in v0 with UNSUPPORTED_VERSION;
        // decoding at v0 reads its error code either way.
        let v = if (0..=3).contains(&self.version) {
            self.version
        } else {
            0
        };
        matches!(
            decode_api_versions_response(v, response),
            Ok(_) | Err(ProtocolError::Kafka(_))
        ) || matches!(
            decode_api_versions_response(0, response),
            Err(ProtocolError::Kafka(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_heartbeat_speaks_the_harness_protocol() {
        let mut h = EchoHeartbeat;
        let f = h.request(0x0102_0304);
        assert_eq!(&f[..], &[0, 0, 0, 0, 1, 2, 3, 4]);
        assert!(h.check(0x0102_0304, &[1, 2, 3, 4]));
        assert!(h.check(0x0102_0304, &[1, 2, 3, 4, 0, 0, 0]));
        assert!(!h.check(0x0102_0304, &[1, 2, 3]));
        assert!(!h.check(7, &[1, 2, 3, 4]));
    }

    #[test]
    fn mirror_heartbeat_round_trip_and_rejects() {
        let mut h = MirrorHeartbeat;
        let f = h.request(7);
        assert!(h.check(7, &f));
        assert!(!h.check(8, &f));
        assert!(!h.check(7, &f[..f.len() - 1]));
        assert!(!h.check(7, b""));
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_heartbeat_is_an_api_versions_request_and_rejects_garbage() {
        let mut h = KafkaHeartbeat::new("mqnet");
        let f = h.request(42);
        // Request header v2: api key, api version, correlation id.
        assert_eq!(&f[..2], &18i16.to_be_bytes());
        assert_eq!(&f[2..4], &3i16.to_be_bytes());
        assert_eq!(&f[4..8], &42i32.to_be_bytes());
        assert!(!h.check(42, b""));
        assert!(!h.check(42, &[0, 0, 0, 42, 0]));
    }

    /// An ApiVersions v0 response: header (correlation id), error code, then the api keys.
    #[cfg(feature = "kafka")]
    fn v0_response(corr: i32, error: i16, keys: &[(i16, i16, i16)]) -> Vec<u8> {
        let mut v = corr.to_be_bytes().to_vec();
        v.extend_from_slice(&error.to_be_bytes());
        v.extend_from_slice(&(keys.len() as i32).to_be_bytes());
        for (k, lo, hi) in keys {
            for x in [k, lo, hi] {
                v.extend_from_slice(&x.to_be_bytes());
            }
        }
        v
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_heartbeat_accepts_any_well_formed_answer() {
        let mut h = KafkaHeartbeat::new("mqnet").with_version(0);
        assert!(h.check(42, &v0_response(42, 0, &[(18, 0, 3)])));
        // The broker answered, with an error: alive.
        assert!(h.check(42, &v0_response(42, 35, &[])));
        // A broker without v3 answers a v3 request in v0 with UNSUPPORTED_VERSION: alive.
        let mut v3 = KafkaHeartbeat::new("mqnet");
        assert!(v3.check(42, &v0_response(42, 35, &[])));
        // Truncated: not an answer.
        let full = v0_response(42, 0, &[(18, 0, 3)]);
        assert!(!h.check(42, &full[..full.len() - 2]));
    }
}
