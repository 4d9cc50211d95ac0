//! ApiVersions: the versions a broker supports, version negotiation, and the handshake hook that
//! runs the exchange on every new connection.

use super::sasl::{
    SaslClient, SaslCredentials, SaslError, SaslStep, SASL_AUTHENTICATE,
    SASL_AUTHENTICATE_VERSIONS, SASL_HANDSHAKE,
};
use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::protocol::StrBytes;

use super::api;
use super::error::{KafkaError, ProtocolError};
use super::kp::encode_request;
use super::wire::Reader;
use super::API_VERSIONS_VERSIONS;
use crate::client::{Handshake, HandshakeStep, NodeId};

/// The `client_software_name` sent in ApiVersions v3+.
pub const CLIENT_SOFTWARE_NAME: &str = "mqnet";
/// The `client_software_version` sent in ApiVersions v3+ (this crate's version).
pub const CLIENT_SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Supported version ranges per api key, from an ApiVersions response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiVersions {
    /// `(api_key, min, max)`, sorted by key, keys unique.
    ranges: Vec<(i16, i16, i16)>,
}

impl ApiVersions {
    /// No api keys.
    pub fn new() -> Self {
        ApiVersions::default()
    }

    /// Sets the range for `api_key` (replacing any previous one).
    pub fn insert(&mut self, api_key: i16, min: i16, max: i16) {
        match self.ranges.binary_search_by_key(&api_key, |r| r.0) {
            Ok(i) => self.ranges[i] = (api_key, min, max),
            Err(i) => self.ranges.insert(i, (api_key, min, max)),
        }
    }

    /// The broker's `(min, max)` for `api_key`, if it offers the API.
    pub fn range(&self, api_key: i16) -> Option<(i16, i16)> {
        self.ranges
            .binary_search_by_key(&api_key, |r| r.0)
            .ok()
            .map(|i| (self.ranges[i].1, self.ranges[i].2))
    }

    /// Highest version both sides support for `api_key`, given our range `ours_min..=ours_max`.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::NoCommonVersion`] when the broker does not offer the API or the ranges do
    /// not overlap: the request must fail locally, without touching the network.
    pub fn negotiate(
        &self,
        api_key: i16,
        ours_min: i16,
        ours_max: i16,
    ) -> Result<i16, ProtocolError> {
        let theirs = self.range(api_key);
        if let Some((their_min, their_max)) = theirs {
            let hi = ours_max.min(their_max);
            let lo = ours_min.max(their_min);
            if lo <= hi {
                return Ok(hi);
            }
        }
        Err(ProtocolError::NoCommonVersion {
            api_key,
            ours: (ours_min, ours_max),
            theirs,
        })
    }

    /// The `(api_key, (min, max))` entries, by key.
    pub fn iter(&self) -> impl Iterator<Item = (i16, (i16, i16))> + '_ {
        self.ranges.iter().map(|&(k, lo, hi)| (k, (lo, hi)))
    }

    /// Number of api keys.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no api key is known.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl FromIterator<(i16, i16, i16)> for ApiVersions {
    /// From `(api_key, min, max)` triples; a later duplicate key wins.
    fn from_iter<I: IntoIterator<Item = (i16, i16, i16)>>(iter: I) -> Self {
        let mut v = ApiVersions::new();
        for (k, lo, hi) in iter {
            v.insert(k, lo, hi);
        }
        v
    }
}

/// Encodes an ApiVersions request (without the length prefix) at `version` (0..=3); from v3 it
/// carries [`CLIENT_SOFTWARE_NAME`] and [`CLIENT_SOFTWARE_VERSION`] (and request header v2).
///
/// # Errors
///
/// [`ProtocolError::UnsupportedVersion`] for a version outside [`API_VERSIONS_VERSIONS`];
/// [`ProtocolError::Encode`] if `kafka-protocol` refuses the message.
pub fn encode_api_versions_request(
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<Bytes, ProtocolError> {
    if !(API_VERSIONS_VERSIONS.0..=API_VERSIONS_VERSIONS.1).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: api::API_VERSIONS,
            version,
        });
    }
    let req = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str(CLIENT_SOFTWARE_NAME))
        .with_client_software_version(StrBytes::from_static_str(CLIENT_SOFTWARE_VERSION));
    encode_request(api::API_VERSIONS, version, correlation_id, client_id, &req)
}

/// The error code of an ApiVersions response: the first field after the (always v0) response
/// header, at the same place in every version.
fn error_code(frame: &[u8]) -> Result<i16, ProtocolError> {
    let mut r = Reader::new(frame);
    r.response_header(false)?;
    r.i16()
}

/// The api keys of an ApiVersions body at `version`; trailing bytes are an error unless `lenient`.
fn parse_keys(frame: &[u8], version: i16, lenient: bool) -> Result<ApiVersions, ProtocolError> {
    let flexible = version >= 3;
    let mut r = Reader::new(frame);
    r.response_header(false)?;
    let _error = r.i16()?;
    let n = r.array_len(flexible, if flexible { 7 } else { 6 })?;
    let mut versions = ApiVersions {
        ranges: Vec::with_capacity(n),
    };
    for _ in 0..n {
        let key = r.i16()?;
        let min = r.i16()?;
        let max = r.i16()?;
        if flexible {
            r.skip_tagged_fields()?;
        }
        versions.insert(key, min, max);
    }
    if !lenient {
        if version >= 1 {
            let _throttle_time_ms = r.i32()?;
        }
        if flexible {
            r.skip_tagged_fields()?;
        }
        if r.remaining() != 0 {
            return Err(ProtocolError::Malformed(format!(
                "{} bytes after an ApiVersions v{version} response",
                r.remaining()
            )));
        }
    }
    Ok(versions)
}

/// Decodes an ApiVersions response at `version` (0..=3) from a frame without the length prefix.
/// ApiVersions responses always use response header v0 (no tagged fields), even when flexible.
///
/// # Errors
///
/// [`ProtocolError::Kafka`] with the broker's error code when it is not 0 (read even when the rest
/// of the body does not parse: a broker answers a version it does not support with
/// `UNSUPPORTED_VERSION` in a v0-shaped body); [`ProtocolError::UnsupportedVersion`] for a version
/// outside [`API_VERSIONS_VERSIONS`]; [`ProtocolError::Truncated`] or
/// [`ProtocolError::Malformed`] if the frame is not a valid response at that version.
pub fn decode_api_versions_response(
    version: i16,
    frame: &[u8],
) -> Result<ApiVersions, ProtocolError> {
    if !(API_VERSIONS_VERSIONS.0..=API_VERSIONS_VERSIONS.1).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: api::API_VERSIONS,
            version,
        });
    }
    if let Some(e) = KafkaError::from_code(error_code(frame)?) {
        return Err(ProtocolError::Kafka(e));
    }
    parse_keys(frame, version, false)
}

/// What to do with an ApiVersions response.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Ready(ApiVersions),
    Retry(i16),
    Fail(String),
}

/// Interprets the response to an ApiVersions request sent at `sent`.
///
/// - Success: the versions (a success body that does not parse at `sent > 0` is retried at v0).
/// - `UNSUPPORTED_VERSION` at `sent > 0`: retry at the broker's own highest ApiVersions version
///   if the error body carries one below `sent` (Kafka brokers since 2.4 do), else at v0. Only the
///   error code has to parse.
/// - Anything else: fail.
fn interpret(sent: i16, frame: &[u8]) -> Next {
    let code = match error_code(frame) {
        Ok(code) => code,
        Err(e) => return Next::Fail(format!("ApiVersions v{sent} response: {e}")),
    };
    match KafkaError::from_code(code) {
        None => match parse_keys(frame, sent, false) {
            Ok(v) => Next::Ready(v),
            Err(e) if sent > 0 => {
                log::debug!("ApiVersions v{sent} response does not parse ({e}); retrying at v0");
                Next::Retry(0)
            }
            Err(e) => Next::Fail(format!("ApiVersions v0 response: {e}")),
        },
        Some(KafkaError::UnsupportedVersion) if sent > 0 => {
            let advertised = parse_keys(frame, 0, true)
                .or_else(|_| parse_keys(frame, sent, true))
                .ok()
                .and_then(|v| v.range(api::API_VERSIONS))
                .map(|(_, max)| max);
            let next = match advertised {
                Some(max) if (API_VERSIONS_VERSIONS.0..sent).contains(&max) => max,
                _ => 0,
            };
            Next::Retry(next)
        }
        Some(e) => Next::Fail(format!("ApiVersions v{sent}: broker error {e}")),
    }
}

/// The Handshaking-state hook for Kafka: implements [`Handshake`] for the
/// [`NetworkClient`](crate::client::NetworkClient).
///
/// On each new connection it sends ApiVersions at the highest version we support (v3, with
/// `client_software_name` "mqnet" and this crate's version). On `UNSUPPORTED_VERSION`, or an
/// error body that does not parse, it reads the error code only and retries lower — at the
/// broker's own ApiVersions maximum when the error body names one, else at v0 (librdkafka's mock
/// answers a v3 request with error 35 in a v0-shaped body). It stores the broker's versions per
/// node (see [`versions`](Self::versions)), and fails the connection on any other error. The
/// versions of a node are forgotten when its connection drops.
///
/// # Example
///
/// ```no_run
/// use mqnet::client::{ClientConfig, NetworkClient, NodeId};
/// use mqnet::net::Selector;
/// use mqnet::protocol::{api, ApiVersionsHandshake, PRODUCE_VERSIONS};
///
/// let selector = Selector::new().unwrap();
/// let handshake = ApiVersionsHandshake::new("my-app");
/// let mut client = NetworkClient::with_transport(selector, ClientConfig::default(), handshake);
/// // ... once node 1 is ready:
/// if let Some(v) = client.handshake().versions(NodeId(1)) {
///     let version = v.negotiate(api::PRODUCE, PRODUCE_VERSIONS.0, PRODUCE_VERSIONS.1);
///     println!("produce at {version:?}");
/// }
/// ```
#[derive(Debug, Clone)]
pub struct ApiVersionsHandshake {
    client_id: String,
    max_version: i16,
    /// The version of the ApiVersions request in flight, per node.
    pending: HashMap<NodeId, i16>,
    versions: HashMap<NodeId, ApiVersions>,
    /// SASL credentials: when set, every connection authenticates after ApiVersions
    /// (`SASL_PLAINTEXT`): CHECKING_API_VERSIONS → AUTHENTICATING → READY.
    sasl: Option<SaslCredentials>,
    /// Connections authenticating: their SASL exchange and the versions learnt before it.
    authenticating: HashMap<NodeId, (SaslClient, ApiVersions)>,
    /// SASL failures not yet taken by the owner ([`take_auth_failures`](Self::take_auth_failures)).
    auth_failures: Vec<(NodeId, SaslError)>,
    /// The broker's session lifetime per authenticated connection, ms (KIP-368; absent: none).
    session_lifetimes: HashMap<NodeId, i64>,
}

impl ApiVersionsHandshake {
    /// A handshake that sends `client_id` in its request headers.
    pub fn new(client_id: &str) -> Self {
        ApiVersionsHandshake {
            client_id: client_id.to_owned(),
            max_version: API_VERSIONS_VERSIONS.1,
            pending: HashMap::new(),
            versions: HashMap::new(),
            sasl: None,
            authenticating: HashMap::new(),
            auth_failures: Vec::new(),
            session_lifetimes: HashMap::new(),
        }
    }

    /// Authenticates every connection with SASL (`creds`) after ApiVersions: SaslHandshake v1,
    /// then SaslAuthenticate rounds; a connection is Ready only once authenticated. A failure
    /// fails the handshake (the node goes to `HandshakeFailed`) and is kept for
    /// [`take_auth_failures`](Self::take_auth_failures).
    pub fn with_sasl(mut self, creds: SaslCredentials) -> Self {
        self.sasl = Some(creds);
        self
    }

    /// The SASL failures since the last call, oldest first (Kafka's `AuthenticationException`s:
    /// the owner should fail its requests rather than reconnect and retry).
    pub fn take_auth_failures(&mut self) -> Vec<(NodeId, SaslError)> {
        std::mem::take(&mut self.auth_failures)
    }

    /// The session lifetime the broker gave `node`'s authenticated connection, ms (KIP-368): the
    /// [`NetworkClient`](crate::client::NetworkClient) re-authenticates the connection in band
    /// before it ends (see [`Handshake::reauthenticate`]). `None` when unlimited or not
    /// authenticated.
    pub fn session_lifetime_ms(&self, node: NodeId) -> Option<i64> {
        self.session_lifetimes.get(&node).copied()
    }

    /// ApiVersions is done: Ready, or (with SASL) the SaslHandshake request.
    fn api_versions_done(
        &mut self,
        node: NodeId,
        v: ApiVersions,
        correlation_id: i32,
    ) -> HandshakeStep {
        if self.sasl.is_none() {
            self.versions.insert(node, v);
            return HandshakeStep::Done;
        }
        self.start_sasl(node, v, correlation_id)
    }

    /// Starts the SASL exchange (SaslHandshake v1, then SaslAuthenticate rounds) on a connection
    /// whose broker supports `v`: at first authentication and at each re-authentication.
    fn start_sasl(&mut self, node: NodeId, v: ApiVersions, correlation_id: i32) -> HandshakeStep {
        let Some(creds) = &self.sasl else {
            self.versions.insert(node, v);
            return HandshakeStep::Done;
        };
        let authenticate = v.negotiate(
            SASL_AUTHENTICATE,
            SASL_AUTHENTICATE_VERSIONS.0,
            SASL_AUTHENTICATE_VERSIONS.1,
        );
        let (Ok(1), Ok(authenticate)) = (v.negotiate(SASL_HANDSHAKE, 1, 1), authenticate) else {
            return self.sasl_failed(node, SaslError::NotServed);
        };
        let mut client = SaslClient::new(creds.clone(), &self.client_id, authenticate);
        match client.start(correlation_id) {
            SaslStep::Send(frame) => {
                log::debug!("{node}: authenticating with {}", creds.mechanism);
                self.authenticating.insert(node, (client, v));
                HandshakeStep::Send(frame)
            }
            SaslStep::Done { .. } => {
                self.versions.insert(node, v);
                HandshakeStep::Done
            }
            SaslStep::Fail(e) => self.sasl_failed(node, e),
        }
    }

    fn sasl_failed(&mut self, node: NodeId, e: SaslError) -> HandshakeStep {
        let why = e.to_string();
        log::warn!("{node}: {why}");
        self.auth_failures.push((node, e));
        HandshakeStep::Fail(why)
    }

    /// Starts at ApiVersions `version` instead of the highest we support (clamped to
    /// [`API_VERSIONS_VERSIONS`]).
    pub fn with_max_version(mut self, version: i16) -> Self {
        self.max_version = version.clamp(API_VERSIONS_VERSIONS.0, API_VERSIONS_VERSIONS.1);
        self
    }

    /// The versions `node` supports, once its handshake has completed (and until its connection
    /// drops).
    pub fn versions(&self, node: NodeId) -> Option<&ApiVersions> {
        self.versions.get(&node)
    }

    /// The client id sent in request headers.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    fn send(&mut self, node: NodeId, version: i16, correlation_id: i32) -> HandshakeStep {
        match encode_api_versions_request(version, correlation_id, &self.client_id) {
            Ok(frame) => {
                self.pending.insert(node, version);
                HandshakeStep::Send(frame)
            }
            Err(e) => HandshakeStep::Fail(format!("ApiVersions v{version}: {e}")),
        }
    }
}

impl Handshake for ApiVersionsHandshake {
    fn start(&mut self, node: NodeId, correlation_id: i32) -> HandshakeStep {
        self.versions.remove(&node);
        self.send(node, self.max_version, correlation_id)
    }

    fn on_response(&mut self, node: NodeId, response: Bytes, correlation_id: i32) -> HandshakeStep {
        if let Some((mut client, v)) = self.authenticating.remove(&node) {
            return match client.on_response(&response, correlation_id) {
                SaslStep::Send(frame) => {
                    self.authenticating.insert(node, (client, v));
                    HandshakeStep::Send(frame)
                }
                SaslStep::Done {
                    session_lifetime_ms,
                } => {
                    log::debug!(
                        "{node}: authenticated (session lifetime {session_lifetime_ms} ms)"
                    );
                    if session_lifetime_ms > 0 {
                        self.session_lifetimes.insert(node, session_lifetime_ms);
                    }
                    self.versions.insert(node, v);
                    HandshakeStep::Done
                }
                SaslStep::Fail(e) => self.sasl_failed(node, e),
            };
        }
        let Some(sent) = self.pending.remove(&node) else {
            return HandshakeStep::Fail("ApiVersions response without a request".to_owned());
        };
        match interpret(sent, &response) {
            Next::Ready(v) => {
                log::debug!("{node}: ApiVersions v{sent}: {} api keys", v.len());
                self.api_versions_done(node, v, correlation_id)
            }
            Next::Retry(version) => {
                log::debug!("{node}: ApiVersions v{sent} unsupported; retrying at v{version}");
                self.send(node, version, correlation_id)
            }
            Next::Fail(why) => HandshakeStep::Fail(why),
        }
    }

    fn on_disconnect(&mut self, node: NodeId) {
        self.pending.remove(&node);
        self.versions.remove(&node);
        self.authenticating.remove(&node);
        self.session_lifetimes.remove(&node);
    }

    fn session_lifetime(&self, node: NodeId) -> Option<std::time::Duration> {
        self.session_lifetime_ms(node)
            .and_then(|ms| u64::try_from(ms).ok())
            .filter(|&ms| ms > 0)
            .map(std::time::Duration::from_millis)
    }

    /// KIP-368 re-authentication: SaslHandshake v1 and the SaslAuthenticate rounds again on the
    /// Ready connection, with the versions its ApiVersions gave (not asked again). The SCRAM
    /// server signature is verified as at first authentication; a failure is an authentication
    /// failure like a first one (kept for [`take_auth_failures`](Self::take_auth_failures)).
    fn reauthenticate(&mut self, node: NodeId, correlation_id: i32) -> HandshakeStep {
        self.session_lifetimes.remove(&node);
        let Some(v) = self.versions.get(&node).cloned() else {
            return if self.sasl.is_some() {
                HandshakeStep::Fail("re-authentication of a connection never authenticated".into())
            } else {
                HandshakeStep::Done
            };
        };
        self.start_sasl(node, v, correlation_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::metadata::tests::encode_kp;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::{Decodable, HeaderVersion};

    fn kp_versions(error: i16, keys: &[(i16, i16, i16)]) -> ApiVersionsResponse {
        ApiVersionsResponse::default()
            .with_error_code(error)
            .with_throttle_time_ms(0)
            .with_api_keys(
                keys.iter()
                    .map(|&(k, lo, hi)| {
                        ApiVersion::default()
                            .with_api_key(k)
                            .with_min_version(lo)
                            .with_max_version(hi)
                    })
                    .collect(),
            )
    }

    const BROKER: [(i16, i16, i16); 4] = [(0, 0, 11), (3, 0, 12), (18, 0, 4), (22, 0, 5)];

    #[test]
    fn negotiate_picks_highest_common() {
        let v: ApiVersions = BROKER.into_iter().collect();
        assert_eq!(v.range(0), Some((0, 11)));
        assert_eq!(v.negotiate(api::PRODUCE, 3, 12), Ok(11));
        assert_eq!(v.negotiate(api::METADATA, 1, 12), Ok(12));
        assert_eq!(v.negotiate(api::INIT_PRODUCER_ID, 0, 4), Ok(4));
        assert_eq!(
            v.negotiate(1, 0, 5),
            Err(ProtocolError::NoCommonVersion {
                api_key: 1,
                ours: (0, 5),
                theirs: None
            })
        );
        let old: ApiVersions = [(0, 0, 2)].into_iter().collect();
        assert_eq!(
            old.negotiate(api::PRODUCE, 3, 12),
            Err(ProtocolError::NoCommonVersion {
                api_key: 0,
                ours: (3, 12),
                theirs: Some((0, 2))
            })
        );
        let e = old.negotiate(api::PRODUCE, 3, 12).unwrap_err().to_string();
        assert!(e.contains("no common version"), "{e}");
        // librdkafka's mock: Produce 0..=7, Metadata 0..=2.
        let mock: ApiVersions = [(0, 0, 7), (3, 0, 2), (18, 0, 2), (22, 0, 4)]
            .into_iter()
            .collect();
        assert_eq!(mock.negotiate(api::PRODUCE, 3, 12), Ok(7));
        assert_eq!(mock.negotiate(api::METADATA, 1, 12), Ok(2));
    }

    #[test]
    fn request_decoded_by_kafka_protocol() {
        for version in API_VERSIONS_VERSIONS.0..=API_VERSIONS_VERSIONS.1 {
            let mut b = encode_api_versions_request(version, 1, "cid").unwrap();
            let h =
                RequestHeader::decode(&mut b, ApiVersionsRequest::header_version(version)).unwrap();
            assert_eq!(
                (h.request_api_key, h.request_api_version),
                (api::API_VERSIONS, version)
            );
            assert_eq!(h.client_id.as_deref(), Some("cid"));
            let req = ApiVersionsRequest::decode(&mut b, version).unwrap();
            assert!(b.is_empty());
            if version >= 3 {
                assert_eq!(&*req.client_software_name, "mqnet");
                assert_eq!(&*req.client_software_version, env!("CARGO_PKG_VERSION"));
            }
        }
        assert!(encode_api_versions_request(4, 1, "c").is_err());
    }

    #[test]
    fn response_v0_to_v3_from_kafka_protocol() {
        for version in API_VERSIONS_VERSIONS.0..=API_VERSIONS_VERSIONS.1 {
            let frame = encode_kp(&kp_versions(0, &BROKER), version, 1);
            let v = decode_api_versions_response(version, &frame).unwrap();
            assert_eq!(v, BROKER.into_iter().collect());
            for cut in 0..frame.len() {
                assert!(decode_api_versions_response(version, &frame[..cut]).is_err());
            }
            assert_eq!(
                interpret(version, &frame),
                Next::Ready(BROKER.into_iter().collect())
            );
        }
    }

    #[test]
    fn v3_response_with_supported_features_tagged_fields() {
        use kafka_protocol::messages::api_versions_response::SupportedFeatureKey;
        let resp = kp_versions(0, &BROKER)
            .with_supported_features(vec![SupportedFeatureKey::default()
                .with_name(StrBytes::from_static_str("metadata.version"))
                .with_min_version(1)
                .with_max_version(20)])
            .with_finalized_features_epoch(7);
        let frame = encode_kp(&resp, 3, 1);
        assert_eq!(decode_api_versions_response(3, &frame).unwrap().len(), 4);
    }

    /// A real broker answers an unsupported ApiVersions version with error 35 in a v0 body that
    /// lists its own ApiVersions range.
    #[test]
    fn unsupported_version_retries_at_broker_max() {
        let frame = encode_kp(&kp_versions(35, &[(18, 0, 2)]), 0, 1);
        assert_eq!(
            decode_api_versions_response(3, &frame),
            Err(ProtocolError::Kafka(KafkaError::UnsupportedVersion))
        );
        assert_eq!(interpret(3, &frame), Next::Retry(2));
        // Without a usable range: v0.
        let frame = encode_kp(&kp_versions(35, &[]), 0, 1);
        assert_eq!(interpret(3, &frame), Next::Retry(0));
        let frame = encode_kp(&kp_versions(35, &[(18, 0, 9)]), 0, 1);
        assert_eq!(interpret(3, &frame), Next::Retry(0));
        // At v0 there is nothing lower.
        assert!(matches!(interpret(0, &frame), Next::Fail(_)));
    }

    /// librdkafka's mock (2.0.2) answers a v3 request with error 35 in a body that is neither a v3
    /// nor (with its trailing throttle time) exactly a v0 body: only the error code is read.
    #[test]
    fn unparseable_error_35_body_retries() {
        // Header, error 35, then garbage.
        let mut b = BytesMut::new();
        b.put_i32(1);
        b.put_i16(35);
        b.put_slice(&[0x7f, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(interpret(3, &b), Next::Retry(0));
        // Header and error code only.
        let mut b = BytesMut::new();
        b.put_i32(1);
        b.put_i16(35);
        assert_eq!(interpret(3, &b), Next::Retry(0));
        // The mock's shape: error, i32 count, (18, 0, 2), throttle.
        let mut b = BytesMut::new();
        b.put_i32(1);
        b.put_i16(35);
        b.put_i32(1);
        b.put_slice(&[0, 18, 0, 0, 0, 2]);
        b.put_i32(0);
        assert_eq!(interpret(3, &b), Next::Retry(2));
        // Too short for an error code: fail.
        assert!(matches!(interpret(3, &[0, 0, 0, 1, 0]), Next::Fail(_)));
    }

    #[test]
    fn other_errors_fail_and_bad_success_bodies_retry_at_v0() {
        let frame = encode_kp(&kp_versions(-1, &BROKER), 3, 1);
        assert!(
            matches!(interpret(3, &frame), Next::Fail(why) if why.contains("UNKNOWN_SERVER_ERROR"))
        );
        let mut b = BytesMut::new();
        b.put_i32(1);
        b.put_i16(0);
        b.put_u8(0x05);
        assert_eq!(interpret(3, &b), Next::Retry(0));
        assert!(matches!(interpret(0, &b), Next::Fail(_)));
    }

    #[test]
    fn handshake_hook_flow() {
        let mut h = ApiVersionsHandshake::new("app");
        let node = NodeId(1);
        let HandshakeStep::Send(req) = h.start(node, 10) else {
            panic!("expected a request")
        };
        let mut b = req.clone();
        let hdr = RequestHeader::decode(&mut b, 2).unwrap();
        assert_eq!((hdr.request_api_version, hdr.correlation_id), (3, 10));
        assert_eq!(hdr.client_id.as_deref(), Some("app"));

        // Error 35 (mock-shaped) → retry at v2 with the new correlation id.
        let mut err = BytesMut::new();
        err.put_i32(10);
        err.put_i16(35);
        err.put_i32(1);
        err.put_slice(&[0, 18, 0, 0, 0, 2]);
        err.put_i32(0);
        let HandshakeStep::Send(req) = h.on_response(node, err.freeze(), 11) else {
            panic!("expected a retry")
        };
        let mut b = req.clone();
        let hdr = RequestHeader::decode(&mut b, 1).unwrap();
        assert_eq!((hdr.request_api_version, hdr.correlation_id), (2, 11));
        assert!(h.versions(node).is_none());

        let ok = encode_kp(&kp_versions(0, &BROKER), 2, 11);
        assert_eq!(h.on_response(node, ok, 12), HandshakeStep::Done);
        assert_eq!(h.versions(node).unwrap().range(api::PRODUCE), Some((0, 11)));

        h.on_disconnect(node);
        assert!(h.versions(node).is_none());
        assert!(matches!(
            h.on_response(node, Bytes::new(), 13),
            HandshakeStep::Fail(_)
        ));

        // A broker error fails the connection.
        let HandshakeStep::Send(_) = h.start(node, 20) else {
            panic!()
        };
        let bad = encode_kp(&kp_versions(-1, &[]), 3, 20);
        assert!(matches!(
            h.on_response(node, bad, 21),
            HandshakeStep::Fail(_)
        ));

        let h = ApiVersionsHandshake::new("x").with_max_version(9);
        assert_eq!(h.max_version, 3);
    }
}
