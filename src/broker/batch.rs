//! Strict validation of a produced record batch (v2), before anything is appended.
//!
//! Rules, in order: the partition's data is one whole batch (several batches, or bytes after the
//! batch, are `INVALID_RECORD`; a batch cut short is `CORRUPT_MESSAGE`); it is at most
//! `message.max.bytes` (`MESSAGE_TOO_LARGE`); magic 2, a CRC32C that matches, a known compression
//! codec, at least one record and `lastOffsetDelta == recordCount - 1` (`CORRUPT_MESSAGE`); no
//! transactional or control batches (`INVALID_RECORD`: transactions are not served); an idempotent
//! batch (producer id ≥ 0) has an epoch and a base sequence ≥ 0 (`INVALID_RECORD`). Uncompressed
//! batches are walked record by record: each record's length, offset delta (its index), key, value
//! and headers must lie exactly within the batch (`CORRUPT_MESSAGE`). A compressed batch is
//! decompressed (at most [`MAX_DECOMPRESSED`] bytes) and its records walked the same way; data
//! that does not decompress is `CORRUPT_MESSAGE`, a codec not compiled in
//! `UNSUPPORTED_COMPRESSION_TYPE`. The batch is stored and served as it was written (compressed):
//! the decompressed copy only validates.

use crate::protocol::{decompress, BatchHeader, Compression, CompressionError};

use super::codes;

/// Attribute bits of a batch.
const COMPRESSION_MASK: i16 = 0x07;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// The most bytes a compressed batch may decompress to: more is refused as `CORRUPT_MESSAGE`, so a
/// small hostile batch cannot make the broker allocate without bound.
pub const MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// Why a batch is refused: the error code to answer with and a message for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The Kafka error code.
    pub code: i16,
    /// What was wrong.
    pub why: String,
}

fn refuse(code: i16, why: impl Into<String>) -> Refusal {
    Refusal {
        code,
        why: why.into(),
    }
}

/// Validates `records` (one partition's data of a Produce request) as described in the module
/// docs and returns the batch header.
///
/// # Errors
/// The [`Refusal`] of the first rule broken.
pub fn validate(records: &[u8], message_max_bytes: usize) -> Result<BatchHeader, Refusal> {
    let h = BatchHeader::parse(records).ok_or_else(|| {
        refuse(
            codes::CORRUPT_MESSAGE,
            format!("{} bytes is shorter than a batch header", records.len()),
        )
    })?;
    if h.batch_length < 49 {
        return Err(refuse(
            codes::CORRUPT_MESSAGE,
            format!("batch length {} is below the header's", h.batch_length),
        ));
    }
    let total = h.batch_length as usize + 12;
    if total > records.len() {
        return Err(refuse(
            codes::CORRUPT_MESSAGE,
            format!("batch of {total} bytes in {} bytes of data", records.len()),
        ));
    }
    if total < records.len() {
        return Err(refuse(
            codes::INVALID_RECORD,
            "more than one batch (or trailing bytes) in a partition's data",
        ));
    }
    if total > message_max_bytes {
        return Err(refuse(
            codes::MESSAGE_TOO_LARGE,
            format!("batch of {total} bytes over message.max.bytes {message_max_bytes}"),
        ));
    }
    if h.magic != 2 {
        return Err(refuse(
            codes::CORRUPT_MESSAGE,
            format!("magic {} (only 2 is served)", h.magic),
        ));
    }
    if !BatchHeader::crc_ok(records) {
        return Err(refuse(codes::CORRUPT_MESSAGE, "CRC32C mismatch"));
    }
    let compression = h.attributes & COMPRESSION_MASK;
    if compression > 4 {
        return Err(refuse(
            codes::CORRUPT_MESSAGE,
            format!("unknown compression codec {compression}"),
        ));
    }
    if h.attributes & (TRANSACTIONAL | CONTROL) != 0 {
        return Err(refuse(
            codes::INVALID_RECORD,
            "transactional or control batch (transactions are not served)",
        ));
    }
    if h.record_count < 1 {
        return Err(refuse(
            codes::CORRUPT_MESSAGE,
            format!("record count {}", h.record_count),
        ));
    }
    if h.last_offset_delta != h.record_count - 1 {
        return Err(refuse(
            codes::CORRUPT_MESSAGE,
            format!(
                "last offset delta {} with {} records",
                h.last_offset_delta, h.record_count
            ),
        ));
    }
    if h.producer_id >= 0 && (h.producer_epoch < 0 || h.base_sequence < 0) {
        return Err(refuse(
            codes::INVALID_RECORD,
            "idempotent batch without an epoch or a base sequence",
        ));
    }
    let body = &records[crate::protocol::RECORD_BATCH_OVERHEAD..];
    match Compression::from_attributes(h.attributes) {
        Some(Compression::None) | None => walk_records(body, h.record_count),
        Some(codec) => {
            let mut plain = Vec::new();
            match decompress(codec, body, &mut plain, MAX_DECOMPRESSED) {
                Ok(()) => walk_records(&plain, h.record_count)
                    .map_err(|why| format!("{codec} batch: {why}")),
                Err(e @ CompressionError::Unsupported(_)) => {
                    return Err(refuse(codes::UNSUPPORTED_COMPRESSION_TYPE, e.to_string()))
                }
                Err(e) => Err(e.to_string()),
            }
        }
    }
    .map_err(|why| refuse(codes::CORRUPT_MESSAGE, why))?;
    Ok(h)
}

/// A cursor over the records of an uncompressed batch.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn uvarlong(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or("record cut short")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn varlong(&mut self) -> Result<i64, String> {
        let u = self.uvarlong()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn varint(&mut self) -> Result<i32, String> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| format!("varint {v} out of range"))
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        if n > self.buf.len() - self.pos {
            return Err("field runs past its record".into());
        }
        self.pos += n;
        Ok(())
    }

    /// A length-prefixed byte field; `nullable` allows -1.
    fn bytes_field(&mut self, nullable: bool) -> Result<(), String> {
        match self.varint()? {
            -1 if nullable => Ok(()),
            n if n < 0 => Err(format!("negative field length {n}")),
            n => self.skip(n as usize),
        }
    }
}

/// Walks `count` records of an uncompressed batch body; every field must lie within its record
/// and the records must fill the body exactly.
fn walk_records(body: &[u8], count: i32) -> Result<(), String> {
    let mut c = Cursor { buf: body, pos: 0 };
    for i in 0..count {
        let len = c.varint()?;
        if len < 0 || len as usize > body.len() - c.pos {
            return Err(format!("record {i}: length {len} runs past the batch"));
        }
        let end = c.pos + len as usize;
        let mut r = Cursor {
            buf: &body[..end],
            pos: c.pos,
        };
        r.skip(1)?; // attributes
        r.varlong()?; // timestamp delta
        let delta = r.varint()?;
        if delta != i {
            return Err(format!("record {i} has offset delta {delta}"));
        }
        r.bytes_field(true)?; // key
        r.bytes_field(true)?; // value
        let headers = r.varint()?;
        if headers < 0 {
            return Err(format!("record {i}: negative header count {headers}"));
        }
        for _ in 0..headers {
            r.bytes_field(false)?;
            r.bytes_field(true)?;
        }
        if r.pos != end {
            return Err(format!("record {i}: {} bytes left over", end - r.pos));
        }
        c.pos = end;
    }
    if c.pos != body.len() {
        return Err(format!(
            "{} bytes after the last record",
            body.len() - c.pos
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RecordBatchWriter;
    use bytes::BytesMut;

    pub(crate) fn batch(n: usize, pid: i64, epoch: i16, seq: i32) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let mut w = RecordBatchWriter::begin(&mut buf, 1_700_000_000_000);
        for i in 0..n {
            let k = format!("k{i}");
            w.append(
                &mut buf,
                1_700_000_000_000,
                Some(k.as_bytes()),
                Some(b"v"),
                &[],
            );
        }
        w.finish(&mut buf, pid, epoch, seq);
        buf.to_vec()
    }

    #[test]
    fn a_good_batch_passes_and_every_broken_rule_has_its_code() {
        let b = batch(3, 5, 0, 0);
        assert_eq!(validate(&b, 1 << 20).unwrap().record_count, 3);

        let mut crc = b.clone();
        let last = crc.len() - 1;
        crc[last] ^= 1;
        assert_eq!(
            validate(&crc, 1 << 20).unwrap_err().code,
            codes::CORRUPT_MESSAGE
        );

        assert_eq!(validate(&b, 40).unwrap_err().code, codes::MESSAGE_TOO_LARGE);
        assert_eq!(
            validate(&b[..b.len() - 1], 1 << 20).unwrap_err().code,
            codes::CORRUPT_MESSAGE
        );
        let mut two = b.clone();
        two.extend_from_slice(&b);
        assert_eq!(
            validate(&two, 1 << 20).unwrap_err().code,
            codes::INVALID_RECORD
        );
        let mut magic = b.clone();
        magic[16] = 1;
        assert_eq!(
            validate(&magic, 1 << 20).unwrap_err().code,
            codes::CORRUPT_MESSAGE
        );
    }

    #[test]
    fn records_that_do_not_fill_the_batch_exactly_are_corrupt_even_with_a_good_crc() {
        let mut b = batch(2, -1, -1, -1);
        // Claim 3 records (lastOffsetDelta 2) and re-stamp the CRC: the walk finds two.
        b[23..27].copy_from_slice(&2i32.to_be_bytes());
        b[57..61].copy_from_slice(&3i32.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let r = validate(&b, 1 << 20).unwrap_err();
        assert_eq!(r.code, codes::CORRUPT_MESSAGE, "{}", r.why);
    }

    fn compressed(n: usize, codec: Compression) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let mut w = RecordBatchWriter::begin(&mut buf, 1_700_000_000_000);
        for i in 0..n {
            let k = format!("k{i}");
            w.append(
                &mut buf,
                1_700_000_000_000,
                Some(k.as_bytes()),
                Some(b"value"),
                &[],
            );
        }
        let mut c = crate::protocol::Compressor::new(codec, None).unwrap();
        w.finish_compressed(&mut buf, &mut c, -1, -1, -1)
            .map_err(|(_, e)| e)
            .unwrap();
        buf.to_vec()
    }

    #[test]
    fn compressed_batches_are_decompressed_and_walked() {
        for codec in Compression::ALL.into_iter().filter(|c| c.available()) {
            let b = compressed(50, codec);
            assert_eq!(b[22] & 7, codec.id() as u8, "{codec}");
            let h = validate(&b, 1 << 20).unwrap_or_else(|r| panic!("{codec}: {}", r.why));
            assert_eq!(h.record_count, 50);
            if codec == Compression::None {
                continue;
            }
            // One record more claimed than the compressed body holds, CRC re-stamped: refused.
            let mut more = b.clone();
            more[23..27].copy_from_slice(&50i32.to_be_bytes());
            more[57..61].copy_from_slice(&51i32.to_be_bytes());
            let crc = crc32c::crc32c(&more[21..]);
            more[17..21].copy_from_slice(&crc.to_be_bytes());
            let r = validate(&more, 1 << 20).unwrap_err();
            assert_eq!(r.code, codes::CORRUPT_MESSAGE, "{codec}: {}", r.why);
            // A body that is not the codec's stream, with a good CRC: refused, no panic.
            let mut junk = b[..61].to_vec();
            junk.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]);
            let len = (junk.len() - 12) as i32;
            junk[8..12].copy_from_slice(&len.to_be_bytes());
            let crc = crc32c::crc32c(&junk[21..]);
            junk[17..21].copy_from_slice(&crc.to_be_bytes());
            let r = validate(&junk, 1 << 20).unwrap_err();
            assert_eq!(r.code, codes::CORRUPT_MESSAGE, "{codec}: {}", r.why);
        }
    }
}
