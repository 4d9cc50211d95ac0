//! The HA journal: the one byte stream a master replicates (RocketMQ's commit log). Every change
//! the broker makes to its state is an entry in it — a topic created, a batch appended (with the
//! offset and leader epoch it got), the producer-id allocator raised — and a slave rebuilds its
//! topics, partition logs and producer states by applying the entries in order.
//!
//! An entry is `[u32 n][n bytes: u8 kind, body]`:
//! - kind 1, topic: `[u16 len][name][i32 partitions]`
//! - kind 2, batch: `[u16 len][name][i32 partition][i32 leader epoch][i64 base offset][batch]`
//! - kind 3, producer ids: `[i64 next producer id]`
//!
//! On disk: `ha/journal.log` holds the bytes from the log start on, `ha/journal.id` the log's id
//! and start offset. The master writes an entry before it applies the change, so a process killed
//! between the two applies it again from the journal at start-up ([`replay`]); a torn tail is cut
//! off at start-up.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;

use super::HaLog;
use crate::broker::state::Cluster;

const TOPIC: u8 = 1;
const BATCH: u8 = 2;
const NEXT_PID: u8 = 3;

/// The largest entry accepted (a batch of up to 64 MiB plus its header).
pub const MAX_ENTRY: usize = 64 << 20;

/// One journal entry, borrowing its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A topic was created.
    Topic {
        /// Its name.
        name: &'a str,
        /// Its partition count.
        partitions: i32,
    },
    /// A batch was appended.
    Batch {
        /// The topic.
        name: &'a str,
        /// The partition.
        partition: i32,
        /// The leader epoch it was stored with.
        leader_epoch: i32,
        /// The base offset it got.
        base_offset: i64,
        /// The batch as produced.
        batch: &'a [u8],
    },
    /// The producer-id allocator was raised to this value.
    NextPid(i64),
}

/// A journal entry that does not parse, or does not apply.
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalError {
    /// The entry is malformed.
    Malformed(&'static str),
    /// The entry does not follow on from the state (a gap or a different batch at an offset).
    Diverged(String),
    /// Reading or writing failed.
    Io(io::Error),
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Malformed(w) => write!(f, "malformed journal entry: {w}"),
            JournalError::Diverged(w) => write!(f, "journal does not match the state: {w}"),
            JournalError::Io(e) => write!(f, "journal I/O: {e}"),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for JournalError {
    fn from(e: io::Error) -> Self {
        JournalError::Io(e)
    }
}

fn entry_name(rest: &[u8]) -> Result<(&str, usize), JournalError> {
    let n = rest.get(..2).ok_or(JournalError::Malformed("short name"))?;
    let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
    let s = rest
        .get(2..2 + n)
        .ok_or(JournalError::Malformed("short name"))?;
    let s = std::str::from_utf8(s).map_err(|_| JournalError::Malformed("name not UTF-8"))?;
    if !crate::broker::state::valid_topic_name(s) {
        return Err(JournalError::Malformed("illegal topic name"));
    }
    Ok((s, 2 + n))
}

/// Parses an entry body (after its length).
///
/// # Errors
/// [`JournalError::Malformed`].
pub fn parse_entry(body: &[u8]) -> Result<Entry<'_>, JournalError> {
    let (&kind, rest) = body.split_first().ok_or(JournalError::Malformed("empty"))?;
    let i32_at = |b: &[u8], at: usize| -> Result<i32, JournalError> {
        let s = b.get(at..at + 4).ok_or(JournalError::Malformed("short"))?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let i64_at = |b: &[u8], at: usize| -> Result<i64, JournalError> {
        let s = b.get(at..at + 8).ok_or(JournalError::Malformed("short"))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(i64::from_be_bytes(a))
    };
    match kind {
        TOPIC => {
            let (name, at) = entry_name(rest)?;
            if rest.len() != at + 4 {
                return Err(JournalError::Malformed("topic entry length"));
            }
            let partitions = i32_at(rest, at)?;
            if !(1..=100_000).contains(&partitions) {
                return Err(JournalError::Malformed("partition count"));
            }
            Ok(Entry::Topic { name, partitions })
        }
        BATCH => {
            let (name, at) = entry_name(rest)?;
            let partition = i32_at(rest, at)?;
            let leader_epoch = i32_at(rest, at + 4)?;
            let base_offset = i64_at(rest, at + 8)?;
            if partition < 0 || base_offset < 0 {
                return Err(JournalError::Malformed("negative partition or offset"));
            }
            let batch = &rest[at + 16..];
            if batch.len() < crate::protocol::RECORD_BATCH_OVERHEAD {
                return Err(JournalError::Malformed("short batch"));
            }
            Ok(Entry::Batch {
                name,
                partition,
                leader_epoch,
                base_offset,
                batch,
            })
        }
        NEXT_PID => {
            if rest.len() != 8 {
                return Err(JournalError::Malformed("producer id entry length"));
            }
            Ok(Entry::NextPid(i64_at(rest, 0)?))
        }
        _ => Err(JournalError::Malformed("unknown kind")),
    }
}

/// Splits complete entries off the front of `buf`, calling `f` on each; returns the bytes
/// consumed (a partial entry at the end stays).
///
/// # Errors
/// A malformed entry or an error of `f`; the bytes before it were consumed.
pub fn for_each_entry(
    buf: &[u8],
    mut f: impl FnMut(Entry<'_>) -> Result<(), JournalError>,
) -> (usize, Result<(), JournalError>) {
    let mut at = 0;
    loop {
        let Some(h) = buf.get(at..at + 4) else {
            return (at, Ok(()));
        };
        let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if n == 0 || n > MAX_ENTRY {
            return (at, Err(JournalError::Malformed("entry length")));
        }
        let Some(body) = buf.get(at + 4..at + 4 + n) else {
            return (at, Ok(()));
        };
        if let Err(e) = parse_entry(body).and_then(&mut f) {
            return (at, Err(e));
        }
        at += 4 + n;
    }
}

/// Applies one entry to `cluster`; a batch the partition already holds (its base offset below
/// the partition's end) is skipped, so replaying a journal over a state that has part of it is
/// safe.
///
/// # Errors
/// [`JournalError::Diverged`] when a batch does not start at the partition's end or a topic's
/// partition count differs; I/O errors of the logs.
pub fn apply(cluster: &mut Cluster, e: &Entry<'_>) -> Result<(), JournalError> {
    match *e {
        Entry::Topic { name, partitions } => {
            if let Some(parts) = cluster.topics.get(name) {
                if parts.len() != partitions as usize {
                    return Err(JournalError::Diverged(format!(
                        "topic {name} has {} partitions, the journal {partitions}",
                        parts.len()
                    )));
                }
                return Ok(());
            }
            cluster.create_topic_unjournaled(name, partitions)?;
            Ok(())
        }
        Entry::Batch {
            name,
            partition,
            leader_epoch,
            base_offset,
            batch,
        } => cluster
            .replicate_batch(name, partition, leader_epoch, base_offset, batch)
            .map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => JournalError::Diverged(e.to_string()),
                _ => JournalError::Io(e),
            }),
        Entry::NextPid(n) => {
            cluster.raise_next_pid(n);
            Ok(())
        }
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

/// The journal; see the [module docs](self).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    id: u64,
    start: i64,
    end: Arc<AtomicI64>,
    scratch: Vec<u8>,
}

fn fresh_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Non-zero: 0 means "no log" in the handshake.
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

impl Journal {
    /// Opens (or creates, with a fresh id when `create_id`, else id 0) the journal under
    /// `data_dir/ha`, cutting a torn tail at the last complete entry. Returns it and whether it
    /// existed.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn open(data_dir: &Path, create_id: bool) -> io::Result<(Journal, bool)> {
        let dir = data_dir.join("ha");
        fs::create_dir_all(&dir)?;
        let id_path = dir.join("journal.id");
        let existed = id_path.exists();
        let (id, start) = match fs::read_to_string(&id_path) {
            Ok(s) => {
                let mut w = s.split_whitespace();
                let id = w.next().and_then(|x| u64::from_str_radix(x, 16).ok());
                let start = w.next().and_then(|x| x.parse::<i64>().ok());
                match (id, start) {
                    (Some(i), Some(s)) if s >= 0 => (i, s),
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: bad contents", id_path.display()),
                        ))
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = if create_id { fresh_id() } else { 0 };
                write_id(&dir, id, 0)?;
                (id, 0)
            }
            Err(e) => return Err(e),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("journal.log"))?;
        let len = file.metadata()?.len();
        let good = scan_complete(&file, len)?;
        if good < len {
            log::warn!(
                "HA journal: cutting a torn tail of {} bytes at {}",
                len - good,
                start + good as i64
            );
            file.set_len(good)?;
        }
        file.seek(SeekFrom::Start(good))?;
        Ok((
            Journal {
                dir,
                file,
                id,
                start,
                end: Arc::new(AtomicI64::new(start + good as i64)),
                scratch: Vec::new(),
            },
            existed,
        ))
    }

    /// The log id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The log start offset.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// The log end offset.
    pub fn end(&self) -> i64 {
        self.end.load(Ordering::Acquire)
    }

    /// The shared end offset (readers on other threads).
    pub fn end_handle(&self) -> Arc<AtomicI64> {
        Arc::clone(&self.end)
    }

    /// The journal's data file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("journal.log")
    }

    /// A reader of this journal for another thread.
    ///
    /// # Errors
    /// Opening the file.
    pub fn reader(&self) -> io::Result<JournalReader> {
        Ok(JournalReader {
            file: File::open(self.path())?,
            id: self.id,
            start: self.start,
            end: self.end_handle(),
        })
    }

    /// Calls `f` on every entry from the log start, in order.
    ///
    /// # Errors
    /// A malformed entry, an error of `f`, or an I/O error.
    pub fn replay(
        &self,
        mut f: impl FnMut(Entry<'_>) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        let mut r = io::BufReader::with_capacity(1 << 20, File::open(self.path())?);
        let mut body = Vec::new();
        let mut h = [0u8; 4];
        let mut left = (self.end() - self.start) as u64;
        while left > 0 {
            r.read_exact(&mut h)?;
            let n = u32::from_be_bytes(h) as usize;
            if n == 0 || n > MAX_ENTRY {
                return Err(JournalError::Malformed("entry length"));
            }
            body.resize(n, 0);
            r.read_exact(&mut body)?;
            f(parse_entry(&body)?)?;
            left = left.saturating_sub(4 + n as u64);
        }
        Ok(())
    }

    fn write_entry(&mut self) -> io::Result<i64> {
        let at = self.end();
        if let Err(e) = self.file.write_all(&self.scratch) {
            let _ = self.file.set_len((at - self.start) as u64);
            let _ = self.file.seek(SeekFrom::Start((at - self.start) as u64));
            return Err(e);
        }
        self.end
            .store(at + self.scratch.len() as i64, Ordering::Release);
        Ok(at)
    }

    fn begin(&mut self, kind: u8) {
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0, 0, 0, 0, kind]);
    }

    fn finish(&mut self) -> io::Result<i64> {
        let n = (self.scratch.len() - 4) as u32;
        self.scratch[..4].copy_from_slice(&n.to_be_bytes());
        self.write_entry()
    }

    /// Records a topic creation. Returns the entry's offset.
    ///
    /// # Errors
    /// The write's error (nothing is recorded then).
    pub fn record_topic(&mut self, name: &str, partitions: i32) -> io::Result<i64> {
        self.begin(TOPIC);
        put_name(&mut self.scratch, name);
        self.scratch.extend_from_slice(&partitions.to_be_bytes());
        self.finish()
    }

    /// Records a batch about to be appended at `base_offset`. Returns the entry's offset (for
    /// [`truncate`](Self::truncate) if the append fails).
    ///
    /// # Errors
    /// The write's error (nothing is recorded then).
    pub fn record_batch(
        &mut self,
        name: &str,
        partition: i32,
        leader_epoch: i32,
        base_offset: i64,
        batch: &[u8],
    ) -> io::Result<i64> {
        self.begin(BATCH);
        put_name(&mut self.scratch, name);
        self.scratch.extend_from_slice(&partition.to_be_bytes());
        self.scratch.extend_from_slice(&leader_epoch.to_be_bytes());
        self.scratch.extend_from_slice(&base_offset.to_be_bytes());
        self.scratch.extend_from_slice(batch);
        self.finish()
    }

    /// Records the producer-id allocator's new value.
    ///
    /// # Errors
    /// The write's error.
    pub fn record_next_pid(&mut self, next: i64) -> io::Result<i64> {
        self.begin(NEXT_PID);
        self.scratch.extend_from_slice(&next.to_be_bytes());
        self.finish()
    }

    /// Appends raw replicated bytes (a slave's chunk, which starts at the end).
    ///
    /// # Errors
    /// The write's error (the file is cut back then).
    pub fn append_raw(&mut self, data: &[u8]) -> io::Result<()> {
        let at = self.end();
        if let Err(e) = self.file.write_all(data) {
            let _ = self.file.set_len((at - self.start) as u64);
            let _ = self.file.seek(SeekFrom::Start((at - self.start) as u64));
            return Err(e);
        }
        self.end.store(at + data.len() as i64, Ordering::Release);
        Ok(())
    }

    /// Cuts the journal back to `offset` (after a failed apply).
    ///
    /// # Errors
    /// The truncation's error.
    pub fn truncate(&mut self, offset: i64) -> io::Result<()> {
        let pos = (offset - self.start).max(0) as u64;
        self.file.set_len(pos)?;
        self.file.seek(SeekFrom::Start(pos))?;
        self.end.store(self.start + pos as i64, Ordering::Release);
        Ok(())
    }

    /// Empties the journal and restarts it at `offset` of log `id` (a slave following a reset).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn reset(&mut self, id: u64, offset: i64) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        write_id(&self.dir, id, offset)?;
        self.id = id;
        self.start = offset;
        self.end.store(offset, Ordering::Release);
        Ok(())
    }

    /// Takes the master's id for an empty journal.
    ///
    /// # Errors
    /// Writing the id file.
    pub fn adopt_id(&mut self, id: u64) -> io::Result<()> {
        if self.id != id {
            write_id(&self.dir, id, self.start)?;
            self.id = id;
        }
        Ok(())
    }

    /// Fsyncs the data.
    ///
    /// # Errors
    /// The fsync's error.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn write_id(dir: &Path, id: u64, start: i64) -> io::Result<()> {
    let tmp = dir.join("journal.id.tmp");
    fs::write(&tmp, format!("{id:x} {start}\n"))?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, dir.join("journal.id"))
}

/// The length of the prefix of `file` made of complete, well-formed entries.
fn scan_complete(file: &File, len: u64) -> io::Result<u64> {
    let mut r = io::BufReader::with_capacity(1 << 20, file.try_clone()?);
    r.seek(SeekFrom::Start(0))?;
    let mut pos = 0u64;
    let mut h = [0u8; 4];
    let mut body = Vec::new();
    while pos + 4 <= len {
        r.read_exact(&mut h)?;
        let n = u64::from(u32::from_be_bytes(h));
        if n == 0 || n > MAX_ENTRY as u64 || pos + 4 + n > len {
            break;
        }
        body.resize(n as usize, 0);
        r.read_exact(&mut body)?;
        if parse_entry(&body).is_err() {
            break;
        }
        pos += 4 + n;
    }
    Ok(pos)
}

/// A read-only view of a [`Journal`] for the HA thread (its own file handle, the shared end).
#[derive(Debug)]
pub struct JournalReader {
    file: File,
    id: u64,
    start: i64,
    end: Arc<AtomicI64>,
}

impl HaLog for JournalReader {
    fn log_id(&self) -> u64 {
        self.id
    }

    fn start(&self) -> i64 {
        self.start
    }

    fn end(&self) -> i64 {
        self.end.load(Ordering::Acquire)
    }

    fn read_into(&self, offset: i64, max: usize, buf: &mut BytesMut) -> io::Result<usize> {
        let end = self.end();
        if offset < self.start || offset > end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset} outside [{}, {end}]", self.start),
            ));
        }
        let n = usize::try_from(end - offset).unwrap_or(usize::MAX).min(max);
        let at = buf.len();
        buf.resize(at + n, 0);
        let mut done = 0;
        while done < n {
            let pos = (offset - self.start) as u64 + done as u64;
            match self.file.read_at(&mut buf[at + done..at + n], pos) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.truncate(at);
                    return Err(e);
                }
            }
        }
        buf.truncate(at + done);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mqnet-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn entries_round_trip_and_a_torn_tail_is_cut() {
        let d = tmp("torn");
        let (mut j, existed) = Journal::open(&d, true).unwrap();
        assert!(!existed);
        assert_ne!(j.id(), 0);
        j.record_topic("t", 2).unwrap();
        j.record_next_pid(5).unwrap();
        let end = j.end();
        // A torn entry: a length with half its body.
        j.append_raw(&[0, 0, 0, 40, BATCH, 0]).unwrap();
        let id = j.id();
        drop(j);
        let (j, existed) = Journal::open(&d, true).unwrap();
        assert!(existed);
        assert_eq!(j.id(), id);
        assert_eq!(j.end(), end);
        let mut seen = Vec::new();
        j.replay(|e| {
            seen.push(format!("{e:?}"));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn hostile_entries_are_refused() {
        assert!(parse_entry(&[]).is_err());
        assert!(parse_entry(&[9]).is_err());
        assert!(parse_entry(&[TOPIC, 0, 200, b'a']).is_err());
        assert!(parse_entry(&[TOPIC, 0, 1, b'/', 0, 0, 0, 1]).is_err());
        assert!(parse_entry(&[TOPIC, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_entry(&[BATCH, 0, 1, b'a', 0, 0, 0, 0]).is_err());
        let (n, r) = for_each_entry(&[0xff, 0xff, 0xff, 0xff, 1], |_| Ok(()));
        assert_eq!(n, 0);
        assert!(r.is_err());
        // A partial entry is left for later.
        let (n, r) = for_each_entry(&[0, 0, 0, 9, NEXT_PID], |_| Ok(()));
        assert_eq!(n, 0);
        assert!(r.is_ok());
    }
}
