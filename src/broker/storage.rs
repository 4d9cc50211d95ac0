//! One partition's on-disk log: append-only segment files with a sparse offset index.
//!
//! A partition directory (`<topic>-<partition>`) holds segments named by their base offset,
//! `00000000000000000000.log`, each with a `.index` beside it: 8-byte entries (offset relative to
//! the segment's base, `u32`; byte position in the segment, `u32`), one for the first batch of the
//! segment and then one whenever `index.interval.bytes` have been appended since the last. A
//! segment is rolled when the next batch would take it past `log.segment.bytes`.
//!
//! Retention drops whole segments (never the active one) from the oldest while the log is over
//! `retention.bytes`, or while a segment's newest write is older than `retention.ms`.
//!
//! `log.flush.interval.messages`: 0 leaves flushing to the OS; `n` fsyncs the active segment once
//! `n` records were appended since the last fsync, before the append returns (so 1 = every append
//! is durable before it is acknowledged).
//!
//! Recovery ([`PartitionLog::open`]): every batch of every segment is scanned by header (the scan
//! also rebuilds the producer states and the index); every batch of the last segment is checked in
//! full (length, magic, CRC32C, offsets following on). The last segment is truncated at the first
//! batch that fails, which removes a torn tail left by a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::protocol::{BatchHeader, RECORD_BATCH_OVERHEAD};

/// How a partition's log is kept.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `log.segment.bytes`: a segment is rolled before it would grow past this.
    pub segment_bytes: u64,
    /// `log.index.interval.bytes`: bytes appended between two sparse index entries.
    pub index_interval_bytes: u64,
    /// `retention.bytes` (per partition); `None` keeps everything.
    pub retention_bytes: Option<u64>,
    /// `retention.ms`; `None` keeps everything.
    pub retention: Option<Duration>,
    /// `log.flush.interval.messages`: 0 leaves flushing to the OS; 1 fsyncs every append before
    /// it is acknowledged.
    pub flush_interval_messages: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            flush_interval_messages: 0,
        }
    }
}

/// The header fields of one stored batch that the broker needs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    /// Offset of its first record.
    pub base_offset: i64,
    /// Offset of its last record.
    pub last_offset: i64,
    /// Its largest record timestamp.
    pub max_timestamp: i64,
    /// Producer id (-1 when not idempotent).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Base sequence.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

impl StoredBatch {
    fn from_header(h: &BatchHeader) -> Self {
        StoredBatch {
            base_offset: h.base_offset,
            last_offset: h.base_offset + i64::from(h.last_offset_delta),
            max_timestamp: h.max_timestamp,
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
            base_sequence: h.base_sequence,
            record_count: h.record_count,
        }
    }
}

#[derive(Debug)]
struct Segment {
    base_offset: i64,
    /// The next offset after this segment's last batch.
    end_offset: i64,
    log: File,
    index: File,
    size: u64,
    /// The sparse index: (offset relative to `base_offset`, byte position).
    entries: Vec<(u32, u32)>,
    bytes_since_entry: u64,
    last_write: SystemTime,
    log_path: PathBuf,
    index_path: PathBuf,
}

fn name(base: i64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

impl Segment {
    fn create(dir: &Path, base_offset: i64) -> io::Result<Segment> {
        let log_path = dir.join(name(base_offset, "log"));
        let index_path = dir.join(name(base_offset, "index"));
        let log = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&log_path)?;
        let index = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&index_path)?;
        Ok(Segment {
            base_offset,
            end_offset: base_offset,
            log,
            index,
            size: 0,
            entries: Vec::new(),
            bytes_since_entry: 0,
            last_write: SystemTime::now(),
            log_path,
            index_path,
        })
    }

    /// The byte position of the last indexed batch at or before `offset`.
    fn index_lookup(&self, offset: i64) -> u64 {
        let rel = (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        match self.entries.partition_point(|(o, _)| *o <= rel) {
            0 => 0,
            i => u64::from(self.entries[i - 1].1),
        }
    }

    fn add_entry(&mut self, offset: i64, pos: u64) -> io::Result<()> {
        let rel = (offset - self.base_offset) as u32;
        self.entries.push((rel, pos as u32));
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&rel.to_be_bytes());
        e[4..].copy_from_slice(&(pos as u32).to_be_bytes());
        self.index.seek(SeekFrom::End(0))?;
        self.index.write_all(&e)?;
        self.bytes_since_entry = 0;
        Ok(())
    }
}

/// A partition's log; see the [module docs](self).
#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    segments: Vec<Segment>,
    unflushed: u64,
    scratch: Vec<u8>,
}

/// What [`PartitionLog::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every batch's header fields, oldest first (to rebuild producer states).
    pub batches: Vec<StoredBatch>,
    /// Bytes cut off the end of the last segment (a torn or corrupt tail).
    pub truncated_bytes: u64,
}

/// Reads one batch header at `pos` of `file`; `None` at or past the end or for a short read.
fn read_header(file: &File, pos: u64, size: u64) -> io::Result<Option<BatchHeader>> {
    if pos + RECORD_BATCH_OVERHEAD as u64 > size {
        return Ok(None);
    }
    let mut h = [0u8; RECORD_BATCH_OVERHEAD];
    file.read_exact_at(&mut h, pos)?;
    Ok(BatchHeader::parse(&h))
}

impl PartitionLog {
    /// Opens (recovering) or creates the log in `dir`.
    ///
    /// # Errors
    /// Any I/O error; a non-last segment that does not scan cleanly is an error too (only the last
    /// segment can have a torn tail).
    pub fn open(dir: PathBuf, config: LogConfig) -> io::Result<(PartitionLog, Recovery)> {
        fs::create_dir_all(&dir)?;
        let mut bases: Vec<i64> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(s) = file_name.to_str() else {
                continue;
            };
            if let Some(stem) = s.strip_suffix(".log") {
                if let Ok(b) = stem.parse::<i64>() {
                    bases.push(b);
                }
            }
        }
        bases.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let last = bases.len().saturating_sub(1);
        for (i, base) in bases.iter().copied().enumerate() {
            let seg = Self::recover_segment(&dir, base, i == last, &config, &mut recovery)?;
            if let Some(prev) = segments.last() {
                let prev: &Segment = prev;
                if prev.end_offset != seg.base_offset {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: segment {} does not follow on from offset {}",
                            dir.display(),
                            seg.base_offset,
                            prev.end_offset
                        ),
                    ));
                }
            }
            segments.push(seg);
        }
        if segments.is_empty() {
            segments.push(Segment::create(&dir, 0)?);
        }
        Ok((
            PartitionLog {
                dir,
                config,
                segments,
                unflushed: 0,
                scratch: Vec::new(),
            },
            recovery,
        ))
    }

    fn recover_segment(
        dir: &Path,
        base: i64,
        is_last: bool,
        config: &LogConfig,
        recovery: &mut Recovery,
    ) -> io::Result<Segment> {
        let log_path = dir.join(name(base, "log"));
        let index_path = dir.join(name(base, "index"));
        let mut log = OpenOptions::new().read(true).write(true).open(&log_path)?;
        let size = log.metadata()?.len();
        let last_write = log.metadata()?.modified().unwrap_or(SystemTime::now());
        let mut entries = Vec::new();
        let mut pos = 0u64;
        let mut next = base;
        let mut since = 0u64;
        let mut batch = Vec::new();
        let mut valid_end = 0u64;
        while let Some(h) = read_header(&log, pos, size)? {
            let total = h.batch_length as u64 + 12;
            let sane = h.batch_length >= 49
                && pos + total <= size
                && h.magic == 2
                && h.base_offset == next
                && h.record_count >= 1
                && h.last_offset_delta == h.record_count - 1;
            let whole = sane
                && (!is_last || {
                    batch.resize(total as usize, 0);
                    log.read_exact_at(&mut batch, pos)?;
                    BatchHeader::crc_ok(&batch)
                });
            if !whole {
                if !is_last {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: bad batch at byte {pos}", log_path.display()),
                    ));
                }
                break;
            }
            if entries.is_empty() || since >= config.index_interval_bytes {
                entries.push(((h.base_offset - base) as u32, pos as u32));
                since = 0;
            }
            recovery.batches.push(StoredBatch::from_header(&h));
            next = h.base_offset + i64::from(h.last_offset_delta) + 1;
            pos += total;
            since += total;
            valid_end = pos;
        }
        if valid_end < size {
            log::warn!(
                "{}: truncating {} bytes of torn or corrupt tail at byte {valid_end}",
                log_path.display(),
                size - valid_end
            );
            recovery.truncated_bytes += size - valid_end;
            log.set_len(valid_end)?;
            log.sync_all()?;
        }
        log.seek(SeekFrom::Start(valid_end))?;
        // The index is rebuilt from the scan and written afresh.
        let mut index = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&index_path)?;
        let mut buf = Vec::with_capacity(entries.len() * 8);
        for (rel, p) in &entries {
            buf.extend_from_slice(&rel.to_be_bytes());
            buf.extend_from_slice(&p.to_be_bytes());
        }
        index.write_all(&buf)?;
        Ok(Segment {
            base_offset: base,
            end_offset: next,
            log,
            index,
            size: valid_end,
            entries,
            bytes_since_entry: since,
            last_write,
            log_path,
            index_path,
        })
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.segments.first().map_or(0, |s| s.base_offset)
    }

    /// The offset the next batch gets (the high watermark: a single replica commits on append).
    pub fn log_end_offset(&self) -> i64 {
        self.segments.last().map_or(0, |s| s.end_offset)
    }

    /// Bytes in every segment.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends one validated batch (`batch` as the producer sent it); the base offset and the
    /// partition leader epoch are rewritten (neither is covered by the CRC). Returns the batch's
    /// base offset. Fsyncs per `log.flush.interval.messages` before returning.
    ///
    /// # Errors
    /// Any I/O error; the log is then truncated back to where the append started when possible.
    pub fn append(&mut self, batch: &[u8], leader_epoch: i32) -> io::Result<StoredBatch> {
        let h = BatchHeader::parse(batch).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "append: not a record batch")
        })?;
        let len = batch.len() as u64;
        let needs_roll = {
            let active = self.active();
            active.size > 0 && active.size + len > self.config.segment_bytes
        };
        if needs_roll {
            self.roll()?;
        }
        let base = self.log_end_offset();
        self.scratch.clear();
        self.scratch.extend_from_slice(&base.to_be_bytes());
        self.scratch.extend_from_slice(&batch[8..12]);
        self.scratch.extend_from_slice(&leader_epoch.to_be_bytes());
        self.scratch.extend_from_slice(&batch[16..]);
        let interval = self.config.index_interval_bytes;
        let seg = self
            .segments
            .last_mut()
            .ok_or_else(|| io::Error::other("no segment"))?;
        let pos = seg.size;
        if let Err(e) = seg.log.write_all(&self.scratch) {
            let _ = seg.log.set_len(pos);
            let _ = seg.log.seek(SeekFrom::Start(pos));
            return Err(e);
        }
        seg.size += len;
        if seg.entries.is_empty() || seg.bytes_since_entry >= interval {
            seg.add_entry(base, pos)?;
        }
        seg.bytes_since_entry += len;
        seg.end_offset = base + i64::from(h.last_offset_delta) + 1;
        seg.last_write = SystemTime::now();
        self.unflushed += h.record_count.max(0) as u64;
        let every = self.config.flush_interval_messages;
        if every > 0 && self.unflushed >= every {
            self.flush()?;
        }
        let mut stored = StoredBatch::from_header(&h);
        stored.base_offset = base;
        stored.last_offset = base + i64::from(h.last_offset_delta);
        Ok(stored)
    }

    /// Fsyncs the active segment's data.
    ///
    /// # Errors
    /// The fsync's error.
    pub fn flush(&mut self) -> io::Result<()> {
        self.active().log.sync_data()?;
        self.unflushed = 0;
        Ok(())
    }

    fn active(&self) -> &Segment {
        // `open` always leaves at least one segment, and nothing removes the last.
        &self.segments[self.segments.len() - 1]
    }

    fn roll(&mut self) -> io::Result<()> {
        let base = self.log_end_offset();
        {
            let old = self
                .segments
                .last_mut()
                .ok_or_else(|| io::Error::other("no segment"))?;
            old.log.sync_all()?;
            old.index.sync_all()?;
        }
        let seg = Segment::create(&self.dir, base)?;
        // Make the new file's name durable before anything is acknowledged from it.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.segments.push(seg);
        self.unflushed = 0;
        Ok(())
    }

    /// Applies retention; returns the number of segments deleted.
    ///
    /// # Errors
    /// The error of deleting a segment's files.
    pub fn apply_retention(&mut self, now: SystemTime) -> io::Result<usize> {
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let total = self.size_bytes();
            let oldest = &self.segments[0];
            let over_bytes = self
                .config
                .retention_bytes
                .is_some_and(|limit| total - oldest.size >= limit);
            let too_old = self.config.retention.is_some_and(|ttl| {
                now.duration_since(oldest.last_write)
                    .is_ok_and(|age| age > ttl)
            });
            if !(over_bytes || too_old) {
                break;
            }
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.log_path)?;
            fs::remove_file(&seg.index_path)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Reads whole batches from `offset` on, within one segment: at most `max_bytes`, except that
    /// the first batch is returned whole even when it is larger (so a consumer always makes
    /// progress) when `at_least_one`. `offset` may point into a batch; that whole batch is returned (the consumer
    /// skips the records before its offset). Returns empty bytes at the log end.
    ///
    /// # Errors
    /// `Ok(None)` is never returned for an offset in range; an offset outside
    /// `log_start_offset..=log_end_offset` gives `Ok(None)`. I/O errors are returned.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        at_least_one: bool,
    ) -> io::Result<Option<Bytes>> {
        if offset < self.log_start_offset() || offset > self.log_end_offset() {
            return Ok(None);
        }
        if offset == self.log_end_offset() {
            return Ok(Some(Bytes::new()));
        }
        let i = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let seg = &self.segments[i];
        let mut pos = seg.index_lookup(offset);
        // Forward to the batch holding `offset`.
        let mut first_len;
        loop {
            let Some(h) = read_header(&seg.log, pos, seg.size)? else {
                // The offset lies past this segment's data (an empty active segment).
                return Ok(Some(Bytes::new()));
            };
            first_len = h.batch_length as u64 + 12;
            if h.base_offset + i64::from(h.last_offset_delta) >= offset {
                break;
            }
            pos += first_len;
        }
        let available = seg.size - pos;
        if !at_least_one && first_len > max_bytes as u64 {
            return Ok(Some(Bytes::new()));
        }
        let want = (max_bytes as u64).min(available).max(first_len);
        let mut buf = vec![0u8; want as usize];
        seg.log.read_exact_at(&mut buf, pos)?;
        // Trim to whole batches.
        let mut end = 0usize;
        while end + 12 <= buf.len() {
            let len =
                i32::from_be_bytes([buf[end + 8], buf[end + 9], buf[end + 10], buf[end + 11]]);
            let total = len.max(0) as usize + 12;
            if end + total > buf.len() {
                break;
            }
            end += total;
        }
        buf.truncate(end);
        Ok(Some(Bytes::from(buf)))
    }

    /// The offset of the first record whose timestamp is at or after `timestamp` (and that
    /// record's timestamp), or `None` when there is none. Batches are found by their maximum
    /// timestamp; within an uncompressed batch the record is found exactly, within a compressed
    /// one the batch's base offset is returned.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> io::Result<Option<(i64, i64)>> {
        let mut batch = Vec::new();
        for seg in &self.segments {
            let mut pos = 0u64;
            while let Some(h) = read_header(&seg.log, pos, seg.size)? {
                let total = h.batch_length as u64 + 12;
                if h.max_timestamp >= timestamp {
                    if h.attributes & 0x07 != 0 {
                        return Ok(Some((h.base_offset, h.max_timestamp)));
                    }
                    batch.resize(total as usize, 0);
                    seg.log.read_exact_at(&mut batch, pos)?;
                    if let Some(hit) = first_record_at_or_after(&batch, &h, timestamp) {
                        return Ok(Some(hit));
                    }
                    return Ok(Some((h.base_offset, h.max_timestamp)));
                }
                pos += total;
            }
        }
        Ok(None)
    }

    /// Reads a whole segment file (tests and tools).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for s in &self.segments {
            let mut f = File::open(&s.log_path)?;
            f.read_to_end(&mut out)?;
        }
        Ok(out)
    }
}

/// Walks an uncompressed stored batch for the first record with a timestamp ≥ `ts`.
fn first_record_at_or_after(batch: &[u8], h: &BatchHeader, ts: i64) -> Option<(i64, i64)> {
    let mut pos = RECORD_BATCH_OVERHEAD;
    let uvarlong = |pos: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *batch.get(*pos)?;
            *pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    let zz = |u: u64| ((u >> 1) as i64) ^ -((u & 1) as i64);
    for _ in 0..h.record_count {
        let len = zz(uvarlong(&mut pos)?);
        let start = pos;
        pos += 1; // attributes
        let ts_delta = zz(uvarlong(&mut pos)?);
        let off_delta = zz(uvarlong(&mut pos)?);
        let rts = h.base_timestamp + ts_delta;
        if rts >= ts {
            return Some((h.base_offset + off_delta, rts));
        }
        pos = start.checked_add(usize::try_from(len).ok()?)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RecordBatchWriter;
    use bytes::BytesMut;

    fn batch(n: usize, ts: i64) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let mut w = RecordBatchWriter::begin(&mut buf, ts);
        for i in 0..n {
            w.append(&mut buf, ts + i as i64, Some(b"k"), Some(b"v"), &[]);
        }
        w.finish(&mut buf, -1, -1, -1);
        buf.to_vec()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mqnet-log-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn appends_roll_index_read_back_and_recover() {
        let dir = tmp("roll");
        let cfg = LogConfig {
            segment_bytes: 1000,
            index_interval_bytes: 200,
            ..LogConfig::default()
        };
        let (mut log, rec) = PartitionLog::open(dir.clone(), cfg.clone()).unwrap();
        assert!(rec.batches.is_empty());
        let mut bases = Vec::new();
        for i in 0..40 {
            let b = batch(3, 1_000 + i * 10);
            bases.push(log.append(&b, 0).unwrap().base_offset);
        }
        assert_eq!(bases, (0..40).map(|i| i * 3).collect::<Vec<_>>());
        assert!(log.segment_count() > 3, "{} segments", log.segment_count());
        assert_eq!(log.log_end_offset(), 120);
        // Every offset reads back its batch first.
        for off in 0..120 {
            let got = log.read(off, 1, true).unwrap().unwrap();
            let h = BatchHeader::parse(&got).unwrap();
            assert!(h.base_offset <= off && off <= h.base_offset + 2, "{off}");
            assert!(BatchHeader::crc_ok(&got));
        }
        assert_eq!(log.read(120, 100, true).unwrap().unwrap().len(), 0);
        assert!(log.read(121, 100, true).unwrap().is_none());
        assert_eq!(
            log.offset_for_timestamp(1_000 + 50 + 1).unwrap(),
            Some((16, 1_051))
        );
        assert_eq!(log.offset_for_timestamp(10_000).unwrap(), None);
        drop(log);

        // A torn tail: half a batch after the last whole one.
        let last = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max()
            .unwrap();
        let b = batch(3, 5_000);
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&b[..b.len() / 2]).unwrap();
        drop(f);
        let (log, rec) = PartitionLog::open(dir.clone(), cfg).unwrap();
        assert_eq!(rec.truncated_bytes, (b.len() / 2) as u64);
        assert_eq!(rec.batches.len(), 40);
        assert_eq!(log.log_end_offset(), 120);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_by_bytes_drops_the_oldest_segments_only() {
        let dir = tmp("retention");
        let cfg = LogConfig {
            segment_bytes: 500,
            retention_bytes: Some(1000),
            ..LogConfig::default()
        };
        let (mut log, _) = PartitionLog::open(dir.clone(), cfg).unwrap();
        for i in 0..30 {
            log.append(&batch(2, i), 0).unwrap();
        }
        let deleted = log.apply_retention(SystemTime::now()).unwrap();
        assert!(deleted > 0);
        assert!(log.size_bytes() < 1000 + 500);
        assert!(log.log_start_offset() > 0);
        assert!(log.read(0, 100, true).unwrap().is_none());
        assert!(log
            .read(log.log_start_offset(), 100, true)
            .unwrap()
            .is_some());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_by_time_drops_segments_older_than_retention_ms_but_never_the_active_one() {
        let dir = tmp("retention-time");
        let cfg = LogConfig {
            segment_bytes: 300,
            retention: Some(Duration::from_secs(60)),
            ..LogConfig::default()
        };
        let (mut log, _) = PartitionLog::open(dir.clone(), cfg).unwrap();
        for i in 0..10 {
            log.append(&batch(2, i), 0).unwrap();
        }
        let segments = log.segment_count();
        assert!(segments > 2);
        // Nothing is a minute old yet.
        assert_eq!(log.apply_retention(SystemTime::now()).unwrap(), 0);
        // Two minutes later every closed segment is past retention.
        let later = SystemTime::now() + Duration::from_secs(120);
        assert_eq!(log.apply_retention(later).unwrap(), segments - 1);
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.log_end_offset(), 20);
        let _ = fs::remove_dir_all(&dir);
    }
}
