//! Record batch v2 (magic 2), hand-written: records are encoded straight into the caller's buffer,
//! with no allocation per record.
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records...
//! ```
//!
//! The CRC is CRC32C over everything from `attributes` to the end of the batch.

use bytes::{BufMut, BytesMut};

use super::wire::{varint_size, varlong_size};

/// Size of the record batch v2 header (everything before the first record).
pub const RECORD_BATCH_OVERHEAD: usize = 61;

/// No producer id (a non-idempotent producer).
pub const NO_PRODUCER_ID: i64 = -1;
/// No producer epoch.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// No sequence number.
pub const NO_SEQUENCE: i32 = -1;

// Field offsets within the header.
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;

/// Length on the wire of a nullable byte string in a record (`varint` length, -1 for null).
#[inline]
fn nullable_size(b: Option<&[u8]>) -> usize {
    match b {
        Some(b) => varint_size(b.len() as i32) + b.len(),
        None => 1,
    }
}

/// Small fields of a record, encoded on the stack and written with one `put_slice`: writing varints
/// byte by byte through `BufMut::put_u8` cost about a fifth of the producer's network thread.
struct Scratch {
    bytes: [u8; 32],
    len: usize,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            bytes: [0; 32],
            len: 0,
        }
    }

    #[inline]
    fn uvarlong(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.bytes[self.len] = (v as u8) | 0x80;
            self.len += 1;
            v >>= 7;
        }
        self.bytes[self.len] = v as u8;
        self.len += 1;
    }

    #[inline]
    fn varint(&mut self, v: i32) {
        self.uvarlong(u64::from(((v << 1) ^ (v >> 31)) as u32));
    }

    #[inline]
    fn varlong(&mut self, v: i64) {
        self.uvarlong(((v << 1) ^ (v >> 63)) as u64);
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    /// Writes the scratch bytes, then `tail`; empties the scratch.
    #[inline]
    fn flush(&mut self, buf: &mut BytesMut, tail: &[u8]) {
        buf.put_slice(&self.bytes[..self.len]);
        buf.put_slice(tail);
        self.len = 0;
    }

    /// A nullable bytes field's length (or -1); returns its content to write after it.
    #[inline]
    fn nullable<'a>(&mut self, b: Option<&'a [u8]>) -> &'a [u8] {
        match b {
            Some(b) => {
                self.varint(b.len() as i32);
                b
            }
            None => {
                self.varint(-1);
                &[]
            }
        }
    }
}

/// Size of a record's body: everything after its length varint.
#[inline]
fn body_size(
    offset_delta: i32,
    timestamp_delta: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
) -> usize {
    let mut n = 1 // attributes
        + varlong_size(timestamp_delta)
        + varint_size(offset_delta)
        + nullable_size(key)
        + nullable_size(value)
        + varint_size(headers.len() as i32);
    for (k, v) in headers {
        n += varint_size(k.len() as i32) + k.len() + nullable_size(*v);
    }
    n
}

/// Builds one record batch v2 at the end of a caller's buffer: no compression, `CreateTime`
/// timestamps, base offset 0 (the broker assigns offsets).
///
/// Call [`begin`](Self::begin), then [`append`](Self::append) for each record, then
/// [`finish`](Self::finish) — all with the same buffer, from which no bytes may be removed
/// (`split`, `advance`, ...) before `finish`. Nothing is allocated unless `buf` must grow.
///
/// # Example
///
/// ```
/// use bytes::BytesMut;
/// use mqnet::protocol::RecordBatchWriter;
///
/// let mut buf = BytesMut::with_capacity(1024);
/// let mut batch = RecordBatchWriter::begin(&mut buf, 1_700_000_000_000);
/// batch.append(&mut buf, 1_700_000_000_000, Some(b"key"), Some(b"value"), &[("h", Some(b"v"))]);
/// batch.append(&mut buf, 1_700_000_000_003, None, Some(b"second"), &[]);
/// batch.finish(&mut buf, 42, 0, 0);
/// let batch_bytes = buf.split().freeze(); // the partition's `records` in a produce request
/// assert_eq!(batch_bytes[16], 2); // magic
/// ```
#[derive(Debug)]
pub struct RecordBatchWriter {
    start: usize,
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
}

impl RecordBatchWriter {
    /// Starts a batch at the end of `buf`: reserves the 61-byte batch header (zeroed until
    /// [`finish`](Self::finish)) and remembers `base_timestamp_ms`, from which record timestamps
    /// are written as deltas (normally the first record's timestamp).
    pub fn begin(buf: &mut BytesMut, base_timestamp_ms: i64) -> Self {
        let start = buf.len();
        buf.put_bytes(0, RECORD_BATCH_OVERHEAD);
        RecordBatchWriter {
            start,
            base_timestamp: base_timestamp_ms,
            max_timestamp: base_timestamp_ms,
            count: 0,
        }
    }

    /// Appends one record: varint length, attributes 0, timestamp delta, offset delta (the
    /// record's index in the batch), key and value (null for `None`), headers. Returns the bytes
    /// appended, which equal [`record_size`](Self::record_size) for the same arguments.
    pub fn append(
        &mut self,
        buf: &mut BytesMut,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> usize {
        let offset_delta = self.count;
        let timestamp_delta = timestamp_ms.wrapping_sub(self.base_timestamp);
        let body = body_size(offset_delta, timestamp_delta, key, value, headers);
        let total = varint_size(body as i32) + body;
        buf.reserve(total);
        // At most 5 + 1 + 10 + 5 + 5 bytes of fields before the first flush: fits the scratch.
        let mut s = Scratch::new();
        s.varint(body as i32);
        s.byte(0);
        s.varlong(timestamp_delta);
        s.varint(offset_delta);
        let k = s.nullable(key);
        s.flush(buf, k);
        let v = s.nullable(value);
        s.flush(buf, v);
        // The header count rides with the first header's name length (or alone).
        s.varint(headers.len() as i32);
        for (name, hv) in headers {
            let n = s.nullable(Some(name.as_bytes()));
            s.flush(buf, n);
            let v = s.nullable(*hv);
            s.flush(buf, v);
        }
        if headers.is_empty() {
            s.flush(buf, &[]);
        }
        self.count += 1;
        if timestamp_ms > self.max_timestamp {
            self.max_timestamp = timestamp_ms;
        }
        total
    }

    /// The exact encoded size of a record (length varint included), so that an accumulator can
    /// check `batch.size` / `max.request.size` before appending. `offset_delta` is the record's
    /// index in its batch ([`record_count`](Self::record_count) before the append) and
    /// `timestamp_delta` its timestamp minus the batch's base timestamp.
    pub fn record_size(
        offset_delta: i32,
        timestamp_delta: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> usize {
        let body = body_size(offset_delta, timestamp_delta, key, value, headers);
        varint_size(body as i32) + body
    }

    /// Records appended so far.
    pub fn record_count(&self) -> i32 {
        self.count
    }

    /// The base timestamp given to [`begin`](Self::begin).
    pub fn base_timestamp(&self) -> i64 {
        self.base_timestamp
    }

    /// The batch's size so far, header included.
    pub fn size(&self, buf: &BytesMut) -> usize {
        buf.len() - self.start
    }

    /// Fills in the header: baseOffset 0, batchLength, partitionLeaderEpoch -1, magic 2, the
    /// CRC32C, attributes 0 (no compression, `CreateTime`, not transactional), lastOffsetDelta,
    /// baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence and recordCount.
    ///
    /// A non-idempotent producer passes [`NO_PRODUCER_ID`], [`NO_PRODUCER_EPOCH`] and
    /// [`NO_SEQUENCE`]. The batch is `buf[start..]`, where `start` was `buf.len()` at `begin`.
    pub fn finish(
        self,
        buf: &mut BytesMut,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) {
        self.finish_with_attributes(buf, 0, producer_id, producer_epoch, base_sequence);
    }

    /// As [`finish`](Self::finish), with the records compressed by `compressor` (its codec goes
    /// in the attributes; [`Compression::None`](super::Compression::None) writes the same bytes
    /// as `finish`). The records written so far are replaced by their compressed form in `buf`;
    /// the header stays uncompressed and the CRC covers the compressed batch, as Kafka's clients
    /// write it.
    ///
    /// # Errors
    /// [`CompressionError`](super::CompressionError) from the codec; `buf` is then unchanged and
    /// the batch can still be finished uncompressed with [`finish`](Self::finish) — nothing is
    /// sent half-written.
    pub fn finish_compressed(
        self,
        buf: &mut BytesMut,
        compressor: &mut super::Compressor,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Result<(), (Self, super::CompressionError)> {
        let codec = compressor.codec();
        if codec != super::Compression::None {
            let body = self.start + RECORD_BATCH_OVERHEAD;
            match compressor.compress(&buf[body..]) {
                Ok(packed) => {
                    buf.truncate(body);
                    buf.extend_from_slice(packed);
                }
                Err(e) => return Err((self, e)),
            }
        }
        self.finish_with_attributes(buf, codec.id(), producer_id, producer_epoch, base_sequence);
        Ok(())
    }

    fn finish_with_attributes(
        self,
        buf: &mut BytesMut,
        attributes: i16,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) {
        let batch = &mut buf[self.start..];
        let batch_length = (batch.len() - LEADER_EPOCH) as i32;
        batch[..8].copy_from_slice(&0i64.to_be_bytes());
        batch[BATCH_LENGTH..LEADER_EPOCH].copy_from_slice(&batch_length.to_be_bytes());
        batch[LEADER_EPOCH..MAGIC].copy_from_slice(&(-1i32).to_be_bytes());
        batch[MAGIC] = 2;
        batch[ATTRIBUTES..LAST_OFFSET_DELTA].copy_from_slice(&attributes.to_be_bytes());
        batch[LAST_OFFSET_DELTA..BASE_TIMESTAMP].copy_from_slice(&(self.count - 1).to_be_bytes());
        batch[BASE_TIMESTAMP..MAX_TIMESTAMP].copy_from_slice(&self.base_timestamp.to_be_bytes());
        batch[MAX_TIMESTAMP..PRODUCER_ID].copy_from_slice(&self.max_timestamp.to_be_bytes());
        batch[RECORD_COUNT..RECORD_BATCH_OVERHEAD].copy_from_slice(&self.count.to_be_bytes());
        restamp_batch(batch, producer_id, producer_epoch, base_sequence);
    }
}

/// Rewrites the producer id, epoch and base sequence of a finished batch (a retry after a new
/// producer id, or a sequence reassignment) and recomputes its CRC32C.
///
/// # Panics
///
/// If `batch` is shorter than the 61-byte batch header (it is not a batch this module wrote).
pub fn restamp_batch(batch: &mut [u8], producer_id: i64, producer_epoch: i16, base_sequence: i32) {
    assert!(
        batch.len() >= RECORD_BATCH_OVERHEAD,
        "restamp_batch: {} bytes is shorter than a record batch header",
        batch.len()
    );
    batch[PRODUCER_ID..PRODUCER_EPOCH].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH..BASE_SEQUENCE].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[BASE_SEQUENCE..RECORD_COUNT].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES..]);
    batch[CRC..ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
}

/// The header fields of a record batch v2, read back (for tests, logging and sanity checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Base offset.
    pub base_offset: i64,
    /// Bytes after the length field.
    pub batch_length: i32,
    /// Partition leader epoch.
    pub partition_leader_epoch: i32,
    /// Magic (2).
    pub magic: i8,
    /// The stored CRC32C.
    pub crc: u32,
    /// Attributes.
    pub attributes: i16,
    /// Offset delta of the last record.
    pub last_offset_delta: i32,
    /// Base timestamp.
    pub base_timestamp: i64,
    /// Maximum timestamp.
    pub max_timestamp: i64,
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Base sequence.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header at the start of `batch`; `None` if it is shorter than 61 bytes.
    pub fn parse(batch: &[u8]) -> Option<BatchHeader> {
        let h = batch.get(..RECORD_BATCH_OVERHEAD)?;
        let i16_at = |o: usize| i16::from_be_bytes([h[o], h[o + 1]]);
        let i32_at = |o: usize| i32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let i64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&h[o..o + 8]);
            i64::from_be_bytes(a)
        };
        Some(BatchHeader {
            base_offset: i64_at(0),
            batch_length: i32_at(BATCH_LENGTH),
            partition_leader_epoch: i32_at(LEADER_EPOCH),
            magic: h[MAGIC] as i8,
            crc: i32_at(CRC) as u32,
            attributes: i16_at(ATTRIBUTES),
            last_offset_delta: i32_at(LAST_OFFSET_DELTA),
            base_timestamp: i64_at(BASE_TIMESTAMP),
            max_timestamp: i64_at(MAX_TIMESTAMP),
            producer_id: i64_at(PRODUCER_ID),
            producer_epoch: i16_at(PRODUCER_EPOCH),
            base_sequence: i32_at(BASE_SEQUENCE),
            record_count: i32_at(RECORD_COUNT),
        })
    }

    /// Whether the stored CRC matches CRC32C over `batch[21..]`; `false` if `batch` is shorter
    /// than a header.
    pub fn crc_ok(batch: &[u8]) -> bool {
        match (BatchHeader::parse(batch), batch.get(ATTRIBUTES..)) {
            (Some(h), Some(rest)) => h.crc == crc32c::crc32c(rest),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::records::{Compression, RecordBatchDecoder, TimestampType};

    type Rec<'a> = (
        i64,
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        Vec<(&'a str, Option<&'a [u8]>)>,
    );

    fn build(base_ts: i64, recs: &[Rec<'_>], pid: i64, epoch: i16, seq: i32) -> Bytes {
        let mut buf = BytesMut::with_capacity(4096);
        buf.put_slice(b"prefix"); // the batch need not start at 0
        let mut w = RecordBatchWriter::begin(&mut buf, base_ts);
        for (ts, k, v, h) in recs {
            let expect = RecordBatchWriter::record_size(w.record_count(), ts - base_ts, *k, *v, h);
            let before = buf.len();
            let n = w.append(&mut buf, *ts, *k, *v, h);
            assert_eq!(n, expect);
            assert_eq!(buf.len() - before, n);
        }
        assert_eq!(w.record_count(), recs.len() as i32);
        w.finish(&mut buf, pid, epoch, seq);
        let all = buf.freeze();
        assert_eq!(&all[..6], b"prefix");
        all.slice(6..)
    }

    /// Independent CRC32C check: the Castagnoli CRC of the standard check string is 0xE3069283
    /// (RFC 3720), and the stored CRC covers attributes..end.
    #[test]
    fn crc32c_is_castagnoli_over_attributes_to_end() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let b = build(1000, &[(1000, Some(b"k"), Some(b"v"), vec![])], 7, 1, 0);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.crc, crc32c::crc32c(&b[21..]));
        assert!(BatchHeader::crc_ok(&b));
        let mut bad = b.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(!BatchHeader::crc_ok(&bad));
    }

    #[test]
    fn decoded_by_kafka_protocol() {
        let base = 1_700_000_000_000i64;
        let big = vec![0xabu8; 300];
        let recs: Vec<Rec<'_>> = vec![
            (base, Some(b"key-0"), Some(b"value-0"), vec![]),
            (
                base + 5,
                None,
                Some(b"no key"),
                vec![("h1", Some(b"v1")), ("h2", None)],
            ),
            (base - 3, Some(b"k2"), None, vec![("trace", Some(b""))]),
            (base + 100_000, Some(b""), Some(&big), vec![]),
        ];
        let b = build(base, &recs, 4242, 3, 17);

        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.base_offset, 0);
        assert_eq!(h.batch_length as usize, b.len() - 12);
        assert_eq!(h.partition_leader_epoch, -1);
        assert_eq!(h.magic, 2);
        assert_eq!(h.attributes, 0);
        assert_eq!(h.last_offset_delta, 3);
        assert_eq!(h.base_timestamp, base);
        assert_eq!(h.max_timestamp, base + 100_000);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (4242, 3, 17)
        );
        assert_eq!(h.record_count, 4);
        assert!(BatchHeader::crc_ok(&b));

        // kafka-protocol checks the CRC too, and decodes every record.
        let mut bytes = b.clone();
        let set = RecordBatchDecoder::decode(&mut bytes).expect("oracle decodes our batch");
        assert!(bytes.is_empty());
        assert_eq!(set.version, 2);
        assert_eq!(set.compression, Compression::None);
        assert_eq!(set.records.len(), recs.len());
        for (i, (r, (ts, k, v, hs))) in set.records.iter().zip(&recs).enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(r.sequence, 17 + i as i32);
            assert_eq!(r.timestamp, *ts);
            assert_eq!(r.timestamp_type, TimestampType::Creation);
            assert_eq!(r.producer_id, 4242);
            assert_eq!(r.producer_epoch, 3);
            assert!(!r.transactional && !r.control);
            assert_eq!(r.key.as_deref(), *k);
            assert_eq!(r.value.as_deref(), *v);
            assert_eq!(r.headers.len(), hs.len());
            for ((rk, rv), (hk, hv)) in r.headers.iter().zip(hs) {
                assert_eq!(rk.as_str(), *hk);
                assert_eq!(rv.as_deref(), *hv);
            }
        }
    }

    #[test]
    fn restamp_rewrites_ids_and_crc() {
        let base = 5i64;
        let recs: Vec<Rec<'_>> = (0..10)
            .map(|i| (base + i, None, Some(&b"xyz"[..]), vec![]))
            .collect();
        let b = build(base, &recs, NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE);
        let mut m = b.to_vec();
        restamp_batch(&mut m, 99, 7, 1_000);
        let h = BatchHeader::parse(&m).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (99, 7, 1_000)
        );
        assert!(BatchHeader::crc_ok(&m));
        let set = RecordBatchDecoder::decode(&mut Bytes::from(m)).unwrap();
        let seqs: Vec<i32> = set.records.iter().map(|r| r.sequence).collect();
        assert_eq!(seqs, (1_000..1_010).collect::<Vec<_>>());
        assert!(set
            .records
            .iter()
            .all(|r| r.producer_id == 99 && r.producer_epoch == 7));
    }

    #[test]
    fn record_size_matches_across_varint_boundaries() {
        for len in [0usize, 1, 62, 63, 64, 65, 127, 128, 8191, 8192, 70_000] {
            let v = vec![1u8; len];
            for delta in [0i64, 63, 64, -65, 1 << 40] {
                let mut buf = BytesMut::new();
                let mut w = RecordBatchWriter::begin(&mut buf, 0);
                let n = w.append(
                    &mut buf,
                    delta,
                    None,
                    Some(&v),
                    &[("k", Some(&v[..len.min(3)]))],
                );
                assert_eq!(
                    n,
                    RecordBatchWriter::record_size(
                        0,
                        delta,
                        None,
                        Some(&v),
                        &[("k", Some(&v[..len.min(3)]))]
                    )
                );
                w.finish(&mut buf, -1, -1, -1);
                let set = RecordBatchDecoder::decode(&mut buf.freeze()).unwrap();
                assert_eq!(set.records[0].value.as_deref(), Some(&v[..]));
                assert_eq!(set.records[0].timestamp, delta);
            }
        }
    }

    #[test]
    fn append_does_not_allocate_with_capacity() {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let ptr = buf.as_ptr();
        let mut w = RecordBatchWriter::begin(&mut buf, 0);
        for i in 0..100 {
            w.append(&mut buf, i, Some(b"key"), Some(&[7u8; 100]), &[]);
        }
        w.finish(&mut buf, 1, 0, 0);
        assert_eq!(buf.as_ptr(), ptr, "the buffer was not reallocated");
    }

    #[test]
    #[should_panic(expected = "shorter than a record batch header")]
    fn restamp_short_batch_panics() {
        restamp_batch(&mut [0u8; 10], 1, 1, 1);
    }
}
