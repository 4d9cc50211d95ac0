//! The HA wire protocol: the frames a slave and its master exchange inside the Selector's
//! 4-byte length prefix. Every frame starts with a one-byte tag; every field is big-endian.
//!
//! Slave → master:
//! - `HELLO` (1): `[u16 version][i32 broker id][u8 role][u16 n][n bytes cluster id][u64 log id]
//!   [i64 log start][i64 log end]` — the handshake, sent first.
//! - `REPORT` (2): `[i64 max offset]` — the highest offset the slave holds (RocketMQ's 8-byte
//!   report), on connect, after each stored chunk and at least every report interval.
//!
//! Master → slave:
//! - `WELCOME` (3): `[u64 log id][i64 log start][i64 log end]` — the handshake was accepted.
//! - `REFUSE` (4): `[u8 reason]` — the handshake was refused; the master closes.
//! - `CHUNK` (5): `[i64 offset][i32 size][i64 master end][size bytes of log]` — size 0 is a
//!   heartbeat.
//! - `RESET` (6): `[u64 log id][i64 offset]` — the slave's offset is not in the master's log:
//!   truncate everything and restart from `offset` (the master's log start).
//!
//! Decoding is strict: a frame of the wrong length, an unknown tag, a negative size or offset, a
//! size that does not match the bytes, or a cluster id that is not UTF-8 is a [`WireError`].

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;

/// The longest cluster id accepted.
pub const MAX_CLUSTER_ID: usize = 255;

const HELLO: u8 = 1;
const REPORT: u8 = 2;
const WELCOME: u8 = 3;
const REFUSE: u8 = 4;
const CHUNK: u8 = 5;
const RESET: u8 = 6;

/// The bytes of a chunk frame before its data.
pub const CHUNK_HEADER: usize = 1 + 8 + 4 + 8;

/// A broker's HA role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Answers producers after the local append; slaves catch up in the background.
    AsyncMaster,
    /// Answers an acks=all producer only once a slave holds the message.
    SyncMaster,
    /// Copies a master's log; read-only for clients.
    Slave,
}

impl Role {
    fn to_byte(self) -> u8 {
        match self {
            Role::AsyncMaster => 0,
            Role::SyncMaster => 1,
            Role::Slave => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Role> {
        match b {
            0 => Some(Role::AsyncMaster),
            1 => Some(Role::SyncMaster),
            2 => Some(Role::Slave),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s.to_ascii_uppercase().as_str() {
            "ASYNC_MASTER" => Ok(Role::AsyncMaster),
            "SYNC_MASTER" => Ok(Role::SyncMaster),
            "SLAVE" => Ok(Role::Slave),
            _ => Err(format!(
                "unknown role {s:?} (ASYNC_MASTER, SYNC_MASTER or SLAVE)"
            )),
        }
    }
}

/// Why a master refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The slave belongs to another cluster.
    WrongCluster,
    /// The master does not speak the slave's protocol version.
    Version,
    /// A slave with the same broker id is already connected.
    DuplicateId,
    /// The peer did not present itself as a slave.
    NotASlave,
}

impl RefuseReason {
    fn to_byte(self) -> u8 {
        match self {
            RefuseReason::WrongCluster => 1,
            RefuseReason::Version => 2,
            RefuseReason::DuplicateId => 3,
            RefuseReason::NotASlave => 4,
        }
    }

    fn from_byte(b: u8) -> Option<RefuseReason> {
        match b {
            1 => Some(RefuseReason::WrongCluster),
            2 => Some(RefuseReason::Version),
            3 => Some(RefuseReason::DuplicateId),
            4 => Some(RefuseReason::NotASlave),
            _ => None,
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefuseReason::WrongCluster => "another cluster id",
            RefuseReason::Version => "an unsupported protocol version",
            RefuseReason::DuplicateId => "a broker id already connected",
            RefuseReason::NotASlave => "a role other than SLAVE",
        })
    }
}

/// The slave's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the slave speaks.
    pub version: u16,
    /// The slave's broker id.
    pub broker_id: i32,
    /// The slave's role (must be [`Role::Slave`]).
    pub role: Role,
    /// The cluster id.
    pub cluster_id: String,
    /// The id of the master log the slave's log was copied from (0: none yet).
    pub log_id: u64,
    /// The slave's log start offset.
    pub log_start: i64,
    /// The slave's log end offset.
    pub log_end: i64,
}

/// A decoded frame from a slave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromSlave {
    /// The handshake.
    Hello(Hello),
    /// The slave's max offset.
    Report(i64),
}

/// A decoded frame from a master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromMaster {
    /// The handshake was accepted.
    Welcome {
        /// The master's log id.
        log_id: u64,
        /// The master's log start offset.
        log_start: i64,
        /// The master's log end offset.
        log_end: i64,
    },
    /// The handshake was refused.
    Refuse(RefuseReason),
    /// Log bytes at `offset` (empty: a heartbeat).
    Chunk {
        /// Where `data` starts in the log.
        offset: i64,
        /// The master's log end when the chunk was sent.
        master_end: i64,
        /// The bytes (shares the received frame).
        data: Bytes,
    },
    /// Truncate and restart from `offset` of log `log_id`.
    Reset {
        /// The master's log id.
        log_id: u64,
        /// The offset to restart from.
        offset: i64,
    },
}

/// A frame that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The frame is empty.
    Empty,
    /// The tag is not one this side accepts.
    UnknownTag(u8),
    /// The frame is shorter or longer than its tag requires.
    BadLength {
        /// The tag.
        tag: u8,
        /// The frame's length.
        len: usize,
    },
    /// An offset or size is negative.
    Negative,
    /// A chunk's size field does not match its data.
    SizeMismatch,
    /// The cluster id is over [`MAX_CLUSTER_ID`] bytes or not UTF-8.
    BadClusterId,
    /// An unknown role or refusal reason byte.
    BadEnum(u8),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Empty => f.write_str("empty HA frame"),
            WireError::UnknownTag(t) => write!(f, "unknown HA frame tag {t}"),
            WireError::BadLength { tag, len } => {
                write!(f, "HA frame tag {tag} of bad length {len}")
            }
            WireError::Negative => f.write_str("negative offset or size"),
            WireError::SizeMismatch => f.write_str("chunk size does not match its data"),
            WireError::BadClusterId => f.write_str("bad cluster id"),
            WireError::BadEnum(b) => write!(f, "unknown enum byte {b}"),
        }
    }
}

impl std::error::Error for WireError {}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    i64_at(b, at) as u64
}

fn nonneg(v: i64) -> Result<i64, WireError> {
    if v < 0 {
        Err(WireError::Negative)
    } else {
        Ok(v)
    }
}

/// Encodes a handshake.
pub fn encode_hello(h: &Hello) -> Bytes {
    let id = h.cluster_id.as_bytes();
    let id = &id[..id.len().min(MAX_CLUSTER_ID)];
    let mut b = BytesMut::with_capacity(1 + 2 + 4 + 1 + 2 + id.len() + 24);
    b.put_u8(HELLO);
    b.put_u16(h.version);
    b.put_i32(h.broker_id);
    b.put_u8(h.role.to_byte());
    b.put_u16(id.len() as u16);
    b.put_slice(id);
    b.put_u64(h.log_id);
    b.put_i64(h.log_start);
    b.put_i64(h.log_end);
    b.freeze()
}

/// Encodes a report into `buf` (a 9-byte frame), returning it.
pub fn encode_report(buf: &mut BytesMut, offset: i64) -> Bytes {
    buf.reserve(9);
    buf.put_u8(REPORT);
    buf.put_i64(offset);
    buf.split().freeze()
}

/// Encodes a welcome.
pub fn encode_welcome(log_id: u64, log_start: i64, log_end: i64) -> Bytes {
    let mut b = BytesMut::with_capacity(25);
    b.put_u8(WELCOME);
    b.put_u64(log_id);
    b.put_i64(log_start);
    b.put_i64(log_end);
    b.freeze()
}

/// Encodes a refusal.
pub fn encode_refuse(r: RefuseReason) -> Bytes {
    Bytes::copy_from_slice(&[REFUSE, r.to_byte()])
}

/// Encodes a reset.
pub fn encode_reset(log_id: u64, offset: i64) -> Bytes {
    let mut b = BytesMut::with_capacity(17);
    b.put_u8(RESET);
    b.put_u64(log_id);
    b.put_i64(offset);
    b.freeze()
}

/// Writes a chunk header for `size` bytes at `offset` into `buf`; the caller appends the data.
pub fn put_chunk_header(buf: &mut BytesMut, offset: i64, size: usize, master_end: i64) {
    buf.put_u8(CHUNK);
    buf.put_i64(offset);
    buf.put_i32(size as i32);
    buf.put_i64(master_end);
}

/// Decodes a frame a master received.
///
/// # Errors
/// [`WireError`] for anything malformed.
pub fn decode_from_slave(frame: &[u8]) -> Result<FromSlave, WireError> {
    let (&tag, rest) = frame.split_first().ok_or(WireError::Empty)?;
    let bad = WireError::BadLength {
        tag,
        len: frame.len(),
    };
    match tag {
        REPORT => {
            if rest.len() != 8 {
                return Err(bad);
            }
            Ok(FromSlave::Report(nonneg(i64_at(rest, 0))?))
        }
        HELLO => {
            if rest.len() < 2 + 4 + 1 + 2 {
                return Err(bad);
            }
            let version = u16::from_be_bytes([rest[0], rest[1]]);
            let broker_id = i32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]);
            let role = Role::from_byte(rest[6]).ok_or(WireError::BadEnum(rest[6]))?;
            let n = usize::from(u16::from_be_bytes([rest[7], rest[8]]));
            if n > MAX_CLUSTER_ID {
                return Err(WireError::BadClusterId);
            }
            let tail = &rest[9..];
            if tail.len() != n + 24 {
                return Err(bad);
            }
            let cluster_id = std::str::from_utf8(&tail[..n])
                .map_err(|_| WireError::BadClusterId)?
                .to_owned();
            let log_id = u64_at(tail, n);
            let log_start = nonneg(i64_at(tail, n + 8))?;
            let log_end = nonneg(i64_at(tail, n + 16))?;
            if log_end < log_start {
                return Err(WireError::Negative);
            }
            Ok(FromSlave::Hello(Hello {
                version,
                broker_id,
                role,
                cluster_id,
                log_id,
                log_start,
                log_end,
            }))
        }
        t => Err(WireError::UnknownTag(t)),
    }
}

/// Decodes a frame a slave received; chunk data shares `frame`.
///
/// # Errors
/// [`WireError`] for anything malformed.
pub fn decode_from_master(frame: &Bytes) -> Result<FromMaster, WireError> {
    let (&tag, rest) = frame.split_first().ok_or(WireError::Empty)?;
    let bad = WireError::BadLength {
        tag,
        len: frame.len(),
    };
    match tag {
        WELCOME => {
            if rest.len() != 24 {
                return Err(bad);
            }
            let log_start = nonneg(i64_at(rest, 8))?;
            let log_end = nonneg(i64_at(rest, 16))?;
            if log_end < log_start {
                return Err(WireError::Negative);
            }
            Ok(FromMaster::Welcome {
                log_id: u64_at(rest, 0),
                log_start,
                log_end,
            })
        }
        REFUSE => {
            if rest.len() != 1 {
                return Err(bad);
            }
            RefuseReason::from_byte(rest[0])
                .map(FromMaster::Refuse)
                .ok_or(WireError::BadEnum(rest[0]))
        }
        CHUNK => {
            if frame.len() < CHUNK_HEADER {
                return Err(bad);
            }
            let offset = nonneg(i64_at(rest, 0))?;
            let size = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
            let size = usize::try_from(size).map_err(|_| WireError::Negative)?;
            let master_end = nonneg(i64_at(rest, 12))?;
            if frame.len() - CHUNK_HEADER != size {
                return Err(WireError::SizeMismatch);
            }
            Ok(FromMaster::Chunk {
                offset,
                master_end,
                data: frame.slice(CHUNK_HEADER..),
            })
        }
        RESET => {
            if rest.len() != 16 {
                return Err(bad);
            }
            Ok(FromMaster::Reset {
                log_id: u64_at(rest, 0),
                offset: nonneg(i64_at(rest, 8))?,
            })
        }
        t => Err(WireError::UnknownTag(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: VERSION,
            broker_id: 2,
            role: Role::Slave,
            cluster_id: "c1".into(),
            log_id: 7,
            log_start: 0,
            log_end: 42,
        }
    }

    #[test]
    fn frames_round_trip() {
        let h = hello();
        assert_eq!(
            decode_from_slave(&encode_hello(&h)),
            Ok(FromSlave::Hello(h))
        );
        let mut buf = BytesMut::new();
        assert_eq!(
            decode_from_slave(&encode_report(&mut buf, 99)),
            Ok(FromSlave::Report(99))
        );
        assert_eq!(
            decode_from_master(&encode_welcome(3, 1, 9)),
            Ok(FromMaster::Welcome {
                log_id: 3,
                log_start: 1,
                log_end: 9
            })
        );
        assert_eq!(
            decode_from_master(&encode_refuse(RefuseReason::DuplicateId)),
            Ok(FromMaster::Refuse(RefuseReason::DuplicateId))
        );
        assert_eq!(
            decode_from_master(&encode_reset(3, 5)),
            Ok(FromMaster::Reset {
                log_id: 3,
                offset: 5
            })
        );
        let mut b = BytesMut::new();
        put_chunk_header(&mut b, 10, 3, 20);
        b.put_slice(b"abc");
        let f = b.freeze();
        assert_eq!(
            decode_from_master(&f),
            Ok(FromMaster::Chunk {
                offset: 10,
                master_end: 20,
                data: Bytes::from_static(b"abc")
            })
        );
    }

    #[test]
    fn hostile_frames_get_typed_errors() {
        assert_eq!(decode_from_slave(&[]), Err(WireError::Empty));
        assert_eq!(decode_from_slave(&[9]), Err(WireError::UnknownTag(9)));
        assert!(matches!(
            decode_from_slave(&[REPORT, 0, 0]),
            Err(WireError::BadLength { .. })
        ));
        let mut neg = vec![REPORT];
        neg.extend_from_slice(&(-1i64).to_be_bytes());
        assert_eq!(decode_from_slave(&neg), Err(WireError::Negative));
        // A hello whose cluster-id length points past the frame.
        let mut h = encode_hello(&hello()).to_vec();
        h[8] = 0xff;
        h[9] = 0xff;
        assert_eq!(decode_from_slave(&h), Err(WireError::BadClusterId));
        let mut h = encode_hello(&hello()).to_vec();
        h.pop();
        assert!(matches!(
            decode_from_slave(&h),
            Err(WireError::BadLength { .. })
        ));
        let mut h = encode_hello(&hello()).to_vec();
        h[7] = 9;
        assert_eq!(decode_from_slave(&h), Err(WireError::BadEnum(9)));
        let mut h = encode_hello(&hello()).to_vec();
        h[10] = 0xff;
        assert_eq!(decode_from_slave(&h), Err(WireError::BadClusterId));
        // A chunk whose size lies.
        let mut b = BytesMut::new();
        put_chunk_header(&mut b, 0, 5, 0);
        b.put_slice(b"abc");
        assert_eq!(
            decode_from_master(&b.freeze()),
            Err(WireError::SizeMismatch)
        );
        let mut b = BytesMut::new();
        put_chunk_header(&mut b, 0, 0, 0);
        b[9..13].copy_from_slice(&(-4i32).to_be_bytes());
        assert_eq!(decode_from_master(&b.freeze()), Err(WireError::Negative));
        assert!(matches!(
            decode_from_master(&Bytes::from_static(&[CHUNK, 0])),
            Err(WireError::BadLength { .. })
        ));
        assert_eq!(
            decode_from_master(&Bytes::from_static(&[REFUSE, 77])),
            Err(WireError::BadEnum(77))
        );
        assert_eq!(
            decode_from_master(&Bytes::from_static(&[REPORT])),
            Err(WireError::UnknownTag(REPORT))
        );
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        // A deterministic sweep over short frames of every tag.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..64usize {
            for _ in 0..200 {
                let mut f = Vec::with_capacity(len);
                for _ in 0..len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    f.push(x as u8);
                }
                if let Some(t) = f.first_mut() {
                    *t %= 8;
                }
                let _ = decode_from_slave(&f);
                let _ = decode_from_master(&Bytes::from(f));
            }
        }
    }
}
