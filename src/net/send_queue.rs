//! A channel's staged sends: a byte-bounded queue of frames written with vectored writes.
//!
//! Small frames (prefix and payload of at most [`COALESCE_MAX`] bytes) are copied, prefix included,
//! into one contiguous per-channel buffer when staged, so a run of them leaves as one `iovec`
//! instead of two per frame: for frames this small, copying costs less than the kernel's
//! per-segment work for one more `iovec`. Larger frames are written from their own buffers.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

use super::frame::{encode_header, FrameError, HEADER_LEN};

/// How many `IoSlice`s one `sendmsg` gathers at most. Linux's `UIO_MAXIOV` is 1024; a frame staged
/// with [`Selector::send`](super::Selector::send) takes two slices (prefix, payload), so 512 slices
/// carry up to 256 small frames per syscall. (At 64, deep pipelines of 100-byte frames were
/// syscall-bound: 32 frames per write.) The array lives on the stack: 8 KiB.
const MAX_IOVECS: usize = 512;

/// Queues of at most this many entries gather into a [`SMALL_IOVECS`]-slot array instead (two
/// slices per entry at most: every entry fits), and of at most [`MEDIUM_ENTRIES`] into a
/// [`MEDIUM_IOVECS`]-slot one: filling the large array's 512 slots costs more than the rest of a
/// write of a few frames (a frame with a body of its own takes two entries).
const SMALL_FRAMES: usize = 8;
const SMALL_IOVECS: usize = 2 * SMALL_FRAMES;
const MEDIUM_ENTRIES: usize = 32;
const MEDIUM_IOVECS: usize = 2 * MEDIUM_ENTRIES;

/// Frames of at most this many bytes on the wire (prefix included) are copied into the channel's
/// contiguous buffer when staged.
pub(crate) const COALESCE_MAX: usize = 512;

/// The contiguous buffer holds at most this many unwritten bytes; frames beyond it are staged
/// as they are. Its allocation starts at [`COALESCE_INITIAL`] and grows to at most this.
const COALESCE_LIMIT: usize = 64 * 1024;
const COALESCE_INITIAL: usize = 4 * 1024;

/// A contiguous buffer that grew past this for a large written frame is released once drained, so
/// one large response does not pin its size for the life of the channel.
const COALESCE_KEEP: usize = 4 * COALESCE_LIMIT;

/// Fills of at most this many bytes are written as one fixed-size block (see
/// [`FrameWriter::put_bytes`]).
const SHORT_FILL: usize = 16;

/// Writes one frame's payload straight into a channel's send buffer (see
/// [`Selector::send_with`](super::Selector::send_with) and
/// [`ChannelSink::send_with`](super::ChannelSink::send_with)). It only appends: bytes staged
/// before the frame cannot be touched. The length prefix is written for you when the closure
/// returns.
///
/// ```
/// use mqnet::net::FrameWriter;
/// # fn demo(w: &mut FrameWriter<'_>) {
/// w.put_i32(42); // a correlation id
/// w.put_slice(b"payload");
/// w.put_bytes(0, 4); // padding
/// assert_eq!(w.len(), 15);
/// # }
/// ```
#[derive(Debug)]
pub struct FrameWriter<'a> {
    buf: &'a mut Vec<u8>,
    /// Where the payload starts in `buf`.
    start: usize,
}

impl<'a> FrameWriter<'a> {
    /// A writer appending to `buf`; the payload starts at its current end.
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        let start = buf.len();
        FrameWriter { buf, start }
    }

    /// Appends `bytes`.
    #[inline]
    pub fn put_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends `n` copies of `byte` (padding).
    #[inline]
    pub fn put_bytes(&mut self, byte: u8, n: usize) {
        let end = self.buf.len() + n;
        if n <= SHORT_FILL {
            // Two fixed-size stores and a truncate cost less than a call to `memset` for the
            // few bytes of padding a header usually needs.
            self.buf.extend_from_slice(&[byte; SHORT_FILL]);
            self.buf.truncate(end);
        } else {
            self.buf.resize(end, byte);
        }
    }

    /// Appends one byte.
    #[inline]
    pub fn put_u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Appends a big-endian `i16`.
    #[inline]
    pub fn put_i16(&mut self, v: i16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a big-endian `i32`.
    #[inline]
    pub fn put_i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a big-endian `i64`.
    #[inline]
    pub fn put_i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Payload bytes written so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether nothing has been written yet.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload written so far, mutably (to patch a field written earlier, such as a count).
    #[inline]
    pub fn written_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One staged frame: an optional length prefix held inline and the payload, or (`coalesced`) a
/// run of `len` bytes of the queue's contiguous buffer holding `frames` whole frames staged one
/// after the other, the first with sequence number `seq`. The frames of a `tracked` run have
/// their lengths in [`SendQueue::clens`] and are reported one by one as each leaves; those of an
/// untracked run (staged by an owner that reads no per-frame report) are reported together when
/// the run's last byte leaves, which saves the per-frame length bookkeeping on both ends.
#[derive(Debug)]
struct Staged {
    header: [u8; HEADER_LEN],
    /// `HEADER_LEN` when `header` must be written before `body`, 0 when `body` carries its own prefix.
    header_len: u8,
    /// The frame's bytes (prefix included) are in the queue's contiguous buffer; `body` is empty.
    coalesced: bool,
    /// A coalesced run whose frames are reported one by one (see above).
    tracked: bool,
    body: Bytes,
    /// Bytes on the wire.
    len: usize,
    seq: u64,
    /// Frames in a coalesced run (1 otherwise).
    frames: u32,
}

/// The outcome of one [`SendQueue::write_to`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteProgress {
    /// Bytes written by this call.
    pub bytes: usize,
    /// Whether the socket refused more (`WouldBlock`) with data still staged.
    pub blocked: bool,
}

/// Read entries of a [`LenQueue`] are dropped by moving the rest to the front once there are at
/// least this many and they are at least half of it.
const LEN_QUEUE_COMPACT: usize = 1024;

/// A FIFO of frame lengths: a vector read from `head`, emptied in place once read to the end and
/// compacted when the read part is most of it, so a push is a `Vec::push` and a pop an increment.
#[derive(Debug, Default)]
struct LenQueue {
    lens: Vec<u32>,
    head: usize,
}

impl LenQueue {
    #[inline]
    fn push(&mut self, len: u32) {
        self.lens.push(len);
    }

    #[inline]
    fn front(&self) -> Option<u32> {
        self.lens.get(self.head).copied()
    }

    /// Drops the first `k` entries (all of them when there are fewer).
    #[inline]
    fn advance(&mut self, k: usize) {
        self.head += k;
        if self.head >= self.lens.len() {
            self.clear();
        } else if self.head >= LEN_QUEUE_COMPACT && self.head * 2 >= self.lens.len() {
            self.lens.drain(..self.head);
            self.head = 0;
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.head >= self.lens.len()
    }

    fn clear(&mut self) {
        self.lens.clear();
        self.head = 0;
    }
}

/// Staged sends of one channel. Frames leave in the order they were staged; each frame's sequence
/// number is reported once, when its last byte has been written (a tracked frame) or when the last
/// byte of its coalesced run has (an untracked one: see [`Staged`]).
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    frames: VecDeque<Staged>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// Bytes staged and not yet written.
    staged_bytes: usize,
    next_seq: u64,
    /// Lengths of the tracked coalesced frames not yet fully written, in staging order, and how
    /// many bytes of the first have been written.
    clens: LenQueue,
    cfront_written: usize,
    /// Frames staged and not yet reported written.
    nframes: usize,
    /// The bytes of coalesced frames, in staging order; `cbuf[cstart..]` is not yet written.
    cbuf: Vec<u8>,
    cstart: usize,
    /// Frames written in place since the queue was last sealed, all tracked or all untracked
    /// (`tail_tracked`; a tracked one has its length in `clens` already): the last `tail_len`
    /// bytes of `cbuf`, `tail_frames` frames, not yet entered in `frames`. Staging them costs no
    /// entry lookup per frame; [`seal`](Self::seal) enters them as one run before anything reads
    /// the queue's entries, and a tail written whole with nothing before it never becomes one.
    tail_frames: u32,
    tail_len: usize,
    tail_tracked: bool,
}

impl SendQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.tail_frames == 0
    }

    pub(crate) fn staged_bytes(&self) -> usize {
        self.staged_bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.nframes
    }

    /// Records a coalesced frame of `len` bytes with `seq` (see [`add_run`](Self::add_run)).
    #[inline]
    fn push_coalesced(&mut self, len: usize, seq: u64, track: bool) {
        if track {
            self.clens.push(len as u32);
        }
        self.nframes += 1;
        self.add_run(len, seq, 1, track);
    }

    /// Enters `frames` coalesced frames of `len` bytes in all, the first with `seq`: they extend
    /// the run at the back of the queue when that is coalesced and tracked alike, or start one.
    #[inline]
    fn add_run(&mut self, len: usize, seq: u64, frames: u32, track: bool) {
        if let Some(back) = self.frames.back_mut() {
            if back.coalesced && back.tracked == track {
                back.len += len;
                back.frames += frames;
                return;
            }
        }
        self.frames.push_back(Staged {
            header: [0; HEADER_LEN],
            header_len: 0,
            coalesced: true,
            tracked: track,
            body: Bytes::new(),
            len,
            seq,
            frames,
        });
    }

    /// Enters the in-place frames staged since the last call (see `tail_frames`) as one run.
    #[inline]
    fn seal(&mut self) {
        if self.tail_frames == 0 {
            return;
        }
        let (frames, len) = (self.tail_frames, self.tail_len);
        self.tail_frames = 0;
        self.tail_len = 0;
        let first = self.next_seq - u64::from(frames);
        self.add_run(len, first, frames, self.tail_tracked);
    }

    /// Stages a frame and returns its sequence number. `track`: whether the frame is reported on
    /// its own as it leaves (see [`Staged`]).
    pub(crate) fn push(
        &mut self,
        header: Option<[u8; HEADER_LEN]>,
        body: Bytes,
        track: bool,
    ) -> u64 {
        self.seal();
        let seq = self.next_seq;
        self.next_seq += 1;
        let header_len = if header.is_some() { HEADER_LEN } else { 0 };
        let len = header_len + body.len();
        let header = header.unwrap_or([0; HEADER_LEN]);
        self.staged_bytes += len;
        if len <= COALESCE_MAX && self.coalesce_room(len) {
            if header_len == HEADER_LEN {
                self.cbuf.extend_from_slice(&header);
            }
            self.cbuf.extend_from_slice(&body);
            self.push_coalesced(len, seq, track);
        } else {
            self.nframes += 1;
            self.frames.push_back(Staged {
                header,
                header_len: header_len as u8,
                coalesced: false,
                tracked: true,
                body,
                len,
                seq,
                frames: 1,
            });
        }
        seq
    }

    /// Stages a frame whose payload `write` appends to the contiguous buffer, behind a length prefix
    /// filled in afterwards. When `write` returns `false` nothing is staged and `Ok(None)` is
    /// returned. `track` as for [`push`](Self::push).
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the payload written exceeds `max_frame_size`; nothing is
    /// staged then.
    #[inline]
    pub(crate) fn push_with(
        &mut self,
        max_frame_size: usize,
        track: bool,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
    ) -> Result<Option<u64>, FrameError> {
        let Some(len) = self.write_prefixed(max_frame_size, 0, write)? else {
            return Ok(None);
        };
        if self.tail_tracked != track {
            // The tail holds frames of one kind: the ones before this frame are entered first
            // (their sequence numbers are counted back from `next_seq`).
            self.seal();
            self.tail_tracked = track;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.staged_bytes += len;
        if track {
            self.clens.push(len as u32);
        }
        self.nframes += 1;
        self.tail_frames += 1;
        self.tail_len += len;
        Ok(Some(seq))
    }

    /// As [`push_with`](Self::push_with), the payload being what `write` appends followed by
    /// `body`, which is written from its own buffer (a vectored write, no copy). A frame with an
    /// empty `body` is staged as by `push_with`; any other is reported on its own, as it leaves,
    /// whatever `track` says.
    ///
    /// # Errors
    /// As [`push_with`](Self::push_with), the bound applying to the whole payload.
    pub(crate) fn push_written(
        &mut self,
        max_frame_size: usize,
        track: bool,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
        body: Bytes,
    ) -> Result<Option<u64>, FrameError> {
        if body.is_empty() {
            return self.push_with(max_frame_size, track, write);
        }
        let Some(len) = self.write_prefixed(max_frame_size, body.len(), write)? else {
            return Ok(None);
        };
        self.seal();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.staged_bytes += len + body.len();
        // The written part joins the untracked run before it (or starts one) as bytes of no frame
        // of their own; the frame is reported when the body's last byte has left.
        self.add_run(len, seq, 0, false);
        self.nframes += 1;
        self.frames.push_back(Staged {
            header: [0; HEADER_LEN],
            header_len: 0,
            coalesced: false,
            tracked: true,
            len: body.len(),
            body,
            seq,
            frames: 1,
        });
        Ok(Some(seq))
    }

    /// Appends a length prefix and what `write` appends to the contiguous buffer, the prefix
    /// counting `extra` bytes more (a body that follows); returns the bytes appended, or `None`
    /// when `write` returned `false` (nothing is left appended then).
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the payload exceeds `max_frame_size`; nothing is left
    /// appended then.
    #[inline]
    fn write_prefixed(
        &mut self,
        max_frame_size: usize,
        extra: usize,
        write: impl FnOnce(&mut FrameWriter<'_>) -> bool,
    ) -> Result<Option<usize>, FrameError> {
        if self.cstart > 0 && self.cstart >= self.cbuf.len() / 2 && self.cstart >= COALESCE_INITIAL
        {
            // Most of the buffer is written: move the rest to the front so it does not grow.
            let live = self.cbuf.len() - self.cstart;
            self.cbuf.copy_within(self.cstart.., 0);
            self.cbuf.truncate(live);
            self.cstart = 0;
        }
        let at = self.cbuf.len();
        self.cbuf.extend_from_slice(&[0; HEADER_LEN]);
        let mut w = FrameWriter {
            buf: &mut self.cbuf,
            start: at + HEADER_LEN,
        };
        if !write(&mut w) {
            self.cbuf.truncate(at);
            return Ok(None);
        }
        let len = self.cbuf.len() - at;
        match encode_header(len - HEADER_LEN + extra, max_frame_size) {
            Ok(h) => self.cbuf[at..at + HEADER_LEN].copy_from_slice(&h),
            Err(e) => {
                self.cbuf.truncate(at);
                return Err(e);
            }
        }
        Ok(Some(len))
    }

    /// Makes room for `len` more bytes in the contiguous buffer, within [`COALESCE_LIMIT`]; returns
    /// whether there is. Moves the unwritten bytes to the front when that makes room, and grows
    /// the allocation (doubling, from [`COALESCE_INITIAL`]) only up to the limit.
    #[inline]
    fn coalesce_room(&mut self, len: usize) -> bool {
        let live = self.cbuf.len() - self.cstart;
        if live + len > COALESCE_LIMIT {
            return false;
        }
        if self.cbuf.capacity() - self.cbuf.len() >= len {
            return true;
        }
        if self.cstart > 0 {
            self.cbuf.copy_within(self.cstart.., 0);
            self.cbuf.truncate(live);
            self.cstart = 0;
            if self.cbuf.capacity() - live >= len {
                return true;
            }
        }
        let want = (self.cbuf.capacity() * 2)
            .clamp(COALESCE_INITIAL, COALESCE_LIMIT)
            .max(live + len);
        self.cbuf.reserve_exact(want - live);
        true
    }

    /// Writes as much as `w` takes, across frame boundaries, resuming a partial write. Calls
    /// `done(first, count)` for the frames that are now reported written: `count` consecutive
    /// sequence numbers from `first` (one for a tracked frame, a whole run for an untracked one).
    ///
    /// # Errors
    /// Any error of `w` other than `WouldBlock` and `Interrupted`.
    pub(crate) fn write_to<W: Write>(
        &mut self,
        w: &mut W,
        mut done: impl FnMut(u64, u32),
    ) -> io::Result<WriteProgress> {
        // An unsealed tail with nothing before it (a server's replies of one poll, a client's
        // requests) is written as it is and, once it all left, reported without ever becoming an
        // entry.
        if !self.frames.is_empty() {
            self.seal();
        }
        let mut progress = WriteProgress::default();
        while !self.is_empty() {
            let n = {
                // A few frames (the latency-bound case) gather into a small array: filling all
                // 512 slots of the large one costs more than the rest of a one-frame write.
                let written = if self.frames.is_empty()
                    || (self.frames.len() == 1 && self.frames[0].coalesced)
                {
                    // Only the tail, or one run (a reply or a pipeline burst): one slice, no
                    // array to fill.
                    w.write(&self.cbuf[self.cstart..])
                } else if self.frames.len() <= SMALL_FRAMES {
                    self.write_gathered::<SMALL_IOVECS, W>(w)
                } else if self.frames.len() <= MEDIUM_ENTRIES {
                    self.write_gathered::<MEDIUM_IOVECS, W>(w)
                } else {
                    self.write_gathered::<MAX_IOVECS, W>(w)
                };
                match written {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        progress.blocked = true;
                        return Ok(progress);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            progress.bytes += n;
            if self.frames.is_empty() && n == self.tail_len {
                let frames = self.tail_frames;
                self.tail_frames = 0;
                self.tail_len = 0;
                self.staged_bytes -= n;
                self.nframes -= frames as usize;
                self.cstart += n;
                if self.tail_tracked {
                    // Nothing is staged before the tail: `clens` holds exactly its lengths.
                    self.clens.advance(frames as usize);
                }
                self.release_drained();
                done(self.next_seq - u64::from(frames), frames);
                continue;
            }
            self.seal();
            self.consume(n, &mut done);
        }
        Ok(progress)
    }

    /// Resets the contiguous buffer once everything in it has been written (and releases an
    /// allocation grown past [`COALESCE_KEEP`]).
    #[inline]
    fn release_drained(&mut self) {
        if self.cstart == self.cbuf.len() {
            self.cbuf.clear();
            self.cstart = 0;
            if self.cbuf.capacity() > COALESCE_KEEP {
                self.cbuf = Vec::new();
            }
        }
    }

    /// One vectored write of what [`gather`](Self::gather) collects into an `N`-slot array.
    #[inline]
    fn write_gathered<const N: usize, W: Write>(&self, w: &mut W) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); N];
        let count = self.gather(&mut slices);
        w.write_vectored(&slices[..count])
    }

    /// Fills `slices` with the unwritten parts of the queued frames; returns how many it filled
    /// (at most `slices.len()`). Consecutive coalesced frames share one slice.
    fn gather<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let max = slices.len();
        let mut count = 0;
        let mut skip = self.front_written;
        // The next unwritten coalesced byte, and where the current run of coalesced frames began.
        let mut cpos = self.cstart;
        let mut run: Option<usize> = None;
        for f in &self.frames {
            if f.coalesced {
                run.get_or_insert(cpos);
                cpos += f.len - skip;
                skip = 0;
                continue;
            }
            if let Some(start) = run.take() {
                slices[count] = IoSlice::new(&self.cbuf[start..cpos]);
                count += 1;
                if count == max {
                    return count;
                }
            }
            let hl = f.header_len as usize;
            if skip < hl {
                slices[count] = IoSlice::new(&f.header[skip..hl]);
                count += 1;
                if count == max {
                    return count;
                }
                skip = 0;
            } else {
                skip -= hl;
            }
            if skip < f.body.len() {
                slices[count] = IoSlice::new(&f.body[skip..]);
                count += 1;
                if count == max {
                    return count;
                }
            }
            skip = 0;
        }
        if let Some(start) = run {
            slices[count] = IoSlice::new(&self.cbuf[start..cpos]);
            count += 1;
        }
        count
    }

    fn consume(&mut self, mut n: usize, done: &mut impl FnMut(u64, u32)) {
        self.staged_bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            let remaining = front.len - self.front_written;
            let take = n.min(remaining);
            n -= take;
            if front.coalesced && front.tracked && take == remaining {
                // The rest of the run left: its frames (consecutive sequence numbers) are
                // reported in one call.
                self.cstart += take;
                let k = front.frames;
                self.clens.advance(k as usize);
                self.cfront_written = 0;
                self.nframes -= k as usize;
                front.frames = 0;
                done(front.seq, k);
            } else if front.coalesced && front.tracked {
                self.cstart += take;
                // Report every frame of the run whose last byte is now written.
                let mut t = self.cfront_written + take;
                while let Some(fl) = self.clens.front() {
                    let fl = fl as usize;
                    if t < fl || front.frames == 0 {
                        break;
                    }
                    t -= fl;
                    self.clens.advance(1);
                    self.nframes -= 1;
                    front.frames -= 1;
                    done(front.seq, 1);
                    front.seq += 1;
                }
                self.cfront_written = t;
            } else if front.coalesced {
                self.cstart += take;
            }
            if take == remaining {
                self.front_written = 0;
                // What is left to report: the whole frame, the whole untracked run, or nothing
                // (a tracked run reported its frames above).
                let report = if !front.coalesced || !front.tracked {
                    front.frames
                } else {
                    0
                };
                let seq = front.seq;
                self.frames.pop_front();
                if report > 0 {
                    self.nframes -= report as usize;
                    done(seq, report);
                }
            } else {
                self.front_written += take;
            }
        }
        self.release_drained();
    }

    /// Drops every staged frame; returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.nframes;
        self.tail_frames = 0;
        self.tail_len = 0;
        self.frames.clear();
        self.clens.clear();
        self.cfront_written = 0;
        self.nframes = 0;
        self.front_written = 0;
        self.staged_bytes = 0;
        self.cbuf.clear();
        self.cstart = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call and then blocks once every `block_every` calls.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
        calls: usize,
        block_every: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.block_every > 0 && self.calls % self.block_every == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.cap);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.block_every > 0 && self.calls % self.block_every == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(take_up_to(&mut self.out, bufs, self.cap))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Appends at most `cap` bytes of `bufs` to `out`, in order; returns how many.
    fn take_up_to(out: &mut Vec<u8>, bufs: &[IoSlice<'_>], cap: usize) -> usize {
        let mut left = cap;
        for b in bufs {
            let take = b.len().min(left);
            out.extend_from_slice(&b[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        cap - left
    }

    fn expected(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&(f.len() as u32).to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    #[test]
    fn partial_writes_resume_and_report_each_frame_once() {
        let payloads: Vec<Vec<u8>> = (0..200u32)
            .map(|i| vec![i as u8; (i % 7) as usize])
            .collect();
        let mut q = SendQueue::default();
        for p in &payloads {
            q.push(
                Some((p.len() as u32).to_be_bytes()),
                Bytes::copy_from_slice(p),
                true,
            );
        }
        let mut w = Trickle {
            out: Vec::new(),
            cap: 3,
            calls: 0,
            block_every: 5,
        };
        drain_and_check(&mut q, &mut w, &mut Vec::new(), &payloads);
    }

    /// Writes until the queue is empty (bounded), then checks that every frame was reported once,
    /// in order, and that `w` got exactly `payloads`, framed.
    fn drain_and_check(
        q: &mut SendQueue,
        w: &mut Trickle,
        done: &mut Vec<u64>,
        payloads: &[Vec<u8>],
    ) {
        for _ in 0..10_000_000 {
            if q.is_empty() {
                break;
            }
            q.write_to(w, |s, n| done.extend(s..s + u64::from(n)))
                .unwrap();
        }
        assert!(q.is_empty());
        assert_eq!((q.len(), q.staged_bytes()), (0, 0));
        assert_eq!(*done, (0..payloads.len() as u64).collect::<Vec<_>>());
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        assert_eq!(w.out, expected(&refs), "cap {}", w.cap);
    }

    /// Stages `p` the way frame `i` of the interleave test is staged: behind a separate prefix,
    /// already prefixed, written in place, or its first half written in place and the rest a
    /// body of its own; tracked or not by a pattern that mixes runs.
    fn stage_nth(q: &mut SendQueue, i: usize, p: &[u8]) -> bool {
        let track = (i / 5) % 3 != 0;
        match i % 4 {
            3 => {
                let (head, body) = p.split_at(p.len() / 2);
                let staged = q.push_written(
                    1 << 20,
                    track,
                    |w| {
                        w.put_slice(head);
                        true
                    },
                    Bytes::copy_from_slice(body),
                );
                assert!(matches!(staged, Ok(Some(_))));
            }
            0 => {
                q.push(
                    Some((p.len() as u32).to_be_bytes()),
                    Bytes::copy_from_slice(p),
                    track,
                );
            }
            1 => {
                let mut framed = (p.len() as u32).to_be_bytes().to_vec();
                framed.extend_from_slice(p);
                q.push(None, Bytes::from(framed), track);
            }
            _ => {
                let staged = q.push_with(1 << 20, track, |w| {
                    w.put_slice(p);
                    true
                });
                assert!(matches!(staged, Ok(Some(_))));
            }
        }
        track
    }

    #[test]
    fn small_and_large_frames_interleave_through_partial_writes() {
        // Sizes around the coalescing threshold, and enough small frames to pass its byte limit.
        // Nine sizes against four ways of staging: every size is staged every way.
        let sizes = [
            0,
            1,
            100,
            COALESCE_MAX - 4,
            COALESCE_MAX - 3,
            4000,
            7,
            300,
            16_384,
        ];
        let payloads: Vec<Vec<u8>> = (0..600usize)
            .map(|i| vec![(i % 251) as u8; sizes[i % sizes.len()]])
            .collect();
        // Where each frame's last byte is on the wire.
        let ends: Vec<usize> = payloads
            .iter()
            .scan(0, |end, p| {
                *end += HEADER_LEN + p.len();
                Some(*end)
            })
            .collect();
        for (cap, block_every) in [(7, 3), (97, 4), (5000, 0), (1 << 20, 2)] {
            let mut q = SendQueue::default();
            let mut done = Vec::new();
            let mut tracked = Vec::new();
            let mut w = Trickle {
                out: Vec::new(),
                cap,
                calls: 0,
                block_every,
            };
            let write = |q: &mut SendQueue, w: &mut Trickle, done: &mut Vec<u64>| {
                q.write_to(w, |s, n| done.extend(s..s + u64::from(n)))
                    .unwrap();
                // Nothing is reported before its last byte left, and a tracked frame is reported
                // as soon as it has.
                for &s in done.iter() {
                    assert!(ends[s as usize] <= w.out.len(), "frame {s} reported early");
                }
                let reported = done.len();
                for (i, &end) in ends.iter().enumerate().skip(reported) {
                    if end > w.out.len() {
                        break;
                    }
                    assert!(
                        (i / 5) % 3 == 0,
                        "tracked frame {i} left but is not reported"
                    );
                }
            };
            // Stage in bursts with writes in between, so the buffer wraps and compacts.
            let mut i = 0;
            for chunk in payloads.chunks(37) {
                for p in chunk {
                    tracked.push(stage_nth(&mut q, i, p));
                    i += 1;
                }
                write(&mut q, &mut w, &mut done);
            }
            for _ in 0..10_000_000 {
                if q.is_empty() {
                    break;
                }
                write(&mut q, &mut w, &mut done);
            }
            assert!(q.is_empty());
            assert_eq!(q.staged_bytes(), 0);
            assert_eq!(q.len(), 0);
            assert!(q.clens.is_empty());
            assert_eq!(done, (0..payloads.len() as u64).collect::<Vec<_>>());
            assert!(tracked.contains(&false) && tracked.contains(&true));
            let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
            assert_eq!(w.out, expected(&refs), "cap {cap}");
            // Frames written in place go to the contiguous buffer whatever their size; once
            // drained it keeps at most COALESCE_KEEP.
            assert!(q.cbuf.capacity() <= COALESCE_KEEP);
        }
    }

    #[test]
    fn an_unsealed_tail_is_written_whole_or_in_parts_and_reported_once() {
        for track in [false, true] {
            for (cap, block_every) in [(1 << 20, 0), (7, 3), (50, 2)] {
                let mut q = SendQueue::default();
                let mut w = Trickle {
                    out: Vec::new(),
                    cap,
                    calls: 0,
                    block_every,
                };
                let mut done = Vec::new();
                let mut payloads = Vec::new();
                // Where each frame ends in the written stream.
                let mut ends = Vec::new();
                let mut end = 0;
                for round in 0..20u8 {
                    // A burst of in-place frames with nothing staged before it, then writes.
                    for k in 0..(1 + round % 5) {
                        let p = vec![round.wrapping_mul(31).wrapping_add(k); usize::from(k) * 3];
                        let staged = q.push_with(1 << 20, track, |w| {
                            w.put_slice(&p);
                            true
                        });
                        assert!(matches!(staged, Ok(Some(_))));
                        end += HEADER_LEN + p.len();
                        ends.push(end);
                        payloads.push(p);
                    }
                    if q.frames.is_empty() {
                        assert_eq!(q.tail_frames as usize, q.len(), "no entry per frame");
                    }
                    q.write_to(&mut w, |s, n| done.extend(s..s + u64::from(n)))
                        .unwrap();
                    if track {
                        // A tracked frame is reported as soon as its last byte has left.
                        let left = ends.iter().filter(|&&e| e <= w.out.len()).count();
                        assert_eq!(done.len(), left, "track {track}, cap {cap}");
                    }
                }
                drain_and_check(&mut q, &mut w, &mut done, &payloads);
                assert!(q.clens.is_empty());
                assert_eq!((q.cbuf.len(), q.cstart), (0, 0), "drained buffer reset");
            }
        }
    }

    #[test]
    fn the_length_queue_stays_in_order_through_compaction_and_bounded() {
        let mut q = LenQueue::default();
        let (mut next_in, mut next_out) = (0u32, 0u32);
        let mut compactions = 0;
        for round in 0..300u32 {
            // A backlog builds up over the first rounds (read entries pile up before the
            // unread ones), then drains.
            let pushes = if round < 150 { 60 } else { round % 7 };
            for _ in 0..pushes {
                q.push(next_in);
                next_in += 1;
            }
            let k = round % 29 + 15;
            for _ in 0..k {
                if next_out == next_in {
                    break;
                }
                assert_eq!(q.front(), Some(next_out));
                if next_out % 2 == 0 {
                    q.advance(1);
                    next_out += 1;
                } else {
                    // Several at once, as a run that left whole.
                    let n = 2.min(next_in - next_out);
                    q.advance(n as usize);
                    next_out += n;
                }
                if q.head == 0 && !q.lens.is_empty() && next_out > 0 {
                    compactions += 1;
                }
            }
            assert!(q.lens.len() - q.head == (next_in - next_out) as usize);
            assert!(q.head < LEN_QUEUE_COMPACT || q.head * 2 < q.lens.len());
        }
        assert!(compactions > 0, "the backlog never compacted");
        q.advance(usize::MAX / 2);
        assert!(q.is_empty());
        assert_eq!((q.lens.len(), q.head), (0, 0));
    }

    #[test]
    fn put_bytes_appends_exactly_n_bytes_of_short_and_long_fills() {
        for n in [0, 1, 11, SHORT_FILL - 1, SHORT_FILL, SHORT_FILL + 1, 100] {
            let mut buf = vec![7u8; 3];
            let mut w = FrameWriter::new(&mut buf);
            w.put_bytes(0xAB, n);
            w.put_u8(1);
            assert_eq!(w.len(), n + 1);
            let mut want = vec![7u8; 3];
            want.extend(std::iter::repeat_n(0xAB, n));
            want.push(1);
            assert_eq!(buf, want, "n = {n}");
        }
    }

    #[test]
    fn a_run_of_small_frames_is_one_slice() {
        let mut q = SendQueue::default();
        for i in 0..100u8 {
            q.push(Some(1u32.to_be_bytes()), Bytes::copy_from_slice(&[i]), true);
        }
        q.push(Some(600u32.to_be_bytes()), Bytes::from(vec![1; 600]), true);
        q.push(Some(1u32.to_be_bytes()), Bytes::from_static(b"z"), true);
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        // The run, the large frame's prefix and payload, the last small frame.
        assert_eq!(q.gather(&mut slices), 4);
        assert_eq!(slices[0].len(), 500);
    }

    #[test]
    fn gather_stops_at_the_arrays_length() {
        let mut q = SendQueue::default();
        for _ in 0..3 {
            q.push(Some(600u32.to_be_bytes()), Bytes::from(vec![1; 600]), true);
        }
        let mut slices = [IoSlice::new(&[]); 5];
        assert_eq!(q.gather(&mut slices), 5);
        assert_eq!(slices[4].len(), 4, "the third frame's prefix");
    }

    #[test]
    fn prefixed_frames_are_written_as_is() {
        let mut q = SendQueue::default();
        let mut framed = 2u32.to_be_bytes().to_vec();
        framed.extend_from_slice(b"hi");
        q.push(None, Bytes::from(framed), true);
        q.push(Some(1u32.to_be_bytes()), Bytes::from_static(b"!"), true);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 1000,
            calls: 0,
            block_every: 0,
        };
        let mut done = Vec::new();
        let p = q
            .write_to(&mut w, |s, n| done.extend(s..s + u64::from(n)))
            .unwrap();
        assert_eq!(p.bytes, 11);
        assert!(!p.blocked);
        assert_eq!(w.out, expected(&[b"hi", b"!"]));
        assert_eq!(done, vec![0, 1]);
    }

    #[test]
    fn a_body_frame_is_refused_whole_and_gathered_without_a_copy() {
        let mut q = SendQueue::default();
        let body = Bytes::from(vec![7u8; 100]);
        // `write` declines: nothing staged.
        assert_eq!(
            q.push_written(1000, false, |_| false, body.clone()),
            Ok(None)
        );
        // Over the bound only with the body: refused, nothing staged.
        let over = q.push_written(
            120,
            false,
            |w| {
                w.put_slice(&[1; 30]);
                true
            },
            body.clone(),
        );
        assert_eq!(over, Err(FrameError::TooLarge { len: 130, max: 120 }));
        assert!(q.is_empty());
        assert_eq!((q.len(), q.staged_bytes(), q.cbuf.len()), (0, 0, 0));
        // An untracked in-place frame, then a body frame: the written parts share one slice, the
        // body is its own, pointing at the caller's buffer.
        let a = q.push_with(1000, false, |w| {
            w.put_slice(b"ab");
            true
        });
        let b = q.push_written(
            1000,
            false,
            |w| {
                w.put_slice(b"head");
                true
            },
            body.clone(),
        );
        assert_eq!((a, b), (Ok(Some(0)), Ok(Some(1))));
        assert_eq!(q.len(), 2);
        assert_eq!(q.staged_bytes(), 6 + 4 + 4 + 100);
        q.seal();
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(q.gather(&mut slices), 2);
        assert_eq!(&slices[0][..], b"\0\0\0\x02ab\0\0\0\x68head");
        assert_eq!(slices[1].as_ptr(), body.as_ptr());
        let mut w = Trickle {
            out: Vec::new(),
            cap: 9,
            calls: 0,
            block_every: 0,
        };
        let mut full = b"head".to_vec();
        full.extend_from_slice(&body);
        drain_and_check(&mut q, &mut w, &mut Vec::new(), &[b"ab".to_vec(), full]);
    }

    #[test]
    fn would_block_reports_blocked() {
        let mut q = SendQueue::default();
        q.push(Some(3u32.to_be_bytes()), Bytes::from_static(b"abc"), true);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 2,
            calls: 0,
            block_every: 2,
        };
        let p = q.write_to(&mut w, |_, _| {}).unwrap();
        assert!(p.blocked);
        assert_eq!(p.bytes, 2);
        assert_eq!(q.staged_bytes(), 5);
    }

    /// A writer that takes what its script says, call by call (`None`: `WouldBlock`), and blocks
    /// once the script is used up.
    struct Scripted {
        out: Vec<u8>,
        script: std::vec::IntoIter<Option<usize>>,
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let Some(Some(cap)) = self.script.next() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            Ok(take_up_to(&mut self.out, bufs, cap))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// One step of the property test: stage a frame of `size` bytes in one of four ways, tracked
    /// or not, or run one `write_to` with a script of per-call byte budgets.
    #[derive(Debug, Clone)]
    enum Op {
        Stage {
            how: u8,
            size: usize,
            track: bool,
            split: usize,
        },
        Write(Vec<Option<usize>>),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let size = prop_oneof![
            3 => 0usize..40,
            2 => 0usize..(2 * COALESCE_MAX),
            1 => 0usize..20_000,
        ];
        let budget = prop_oneof![
            1 => Just(None),
            2 => (1usize..16).prop_map(Some),
            2 => (1usize..3_000).prop_map(Some),
            1 => (1usize..100_000).prop_map(Some),
        ];
        prop_oneof![
            3 => (0u8..4, size, any::<bool>(), any::<usize>())
                .prop_map(|(how, size, track, split)| Op::Stage { how, size, track, split }),
            1 => proptest::collection::vec(budget, 0..6).prop_map(Op::Write),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Against a plain model (the frames' bytes one after the other): whatever the mix of
        /// staging ways, tracking and partial writes, the bytes leave in staging order, every
        /// frame is reported exactly once, in order, never before its last byte left, and a frame
        /// reported on its own (tracked, or with a body) as soon as it has; the byte and frame
        /// counts match the model after every call.
        #[test]
        fn sends_match_the_plain_model(ops in proptest::collection::vec(op(), 1..60)) {
            let mut q = SendQueue::default();
            let mut w = Scripted { out: Vec::new(), script: Vec::new().into_iter() };
            let mut wire = Vec::new();
            // Per frame: where its last byte is on the wire, and whether it is reported as soon as
            // that byte leaves.
            let mut frames: Vec<(usize, bool)> = Vec::new();
            let mut done: Vec<u64> = Vec::new();
            let check = |q: &SendQueue, w: &Scripted, wire: &[u8], frames: &[(usize, bool)], done: &[u64]| {
                proptest::prop_assert_eq!(&w.out[..], &wire[..w.out.len()]);
                proptest::prop_assert_eq!(done, &(0..done.len() as u64).collect::<Vec<_>>()[..]);
                for &sq in done {
                    proptest::prop_assert!(frames[sq as usize].0 <= w.out.len(), "frame {} reported early", sq);
                }
                for (k, &(end, prompt)) in frames.iter().enumerate().skip(done.len()) {
                    proptest::prop_assert!(!(prompt && end <= w.out.len()), "frame {} left unreported", k);
                }
                proptest::prop_assert_eq!(q.staged_bytes(), wire.len() - w.out.len());
                proptest::prop_assert_eq!(q.len(), frames.len() - done.len());
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Stage { how, size, track, split } => {
                        let p: Vec<u8> = (0..size).map(|i| (i * 7 + frames.len()) as u8).collect();
                        let seq = match how {
                            0 => q.push(Some((size as u32).to_be_bytes()), Bytes::from(p.clone()), track),
                            1 => {
                                let mut framed = (size as u32).to_be_bytes().to_vec();
                                framed.extend_from_slice(&p);
                                q.push(None, Bytes::from(framed), track)
                            }
                            2 => q.push_with(1 << 20, track, |w| { w.put_slice(&p); true })
                                .expect("within the bound")
                                .expect("staged"),
                            _ => {
                                let (head, body) = p.split_at(split % (size + 1));
                                q.push_written(1 << 20, track, |w| { w.put_slice(head); true }, Bytes::copy_from_slice(body))
                                    .expect("within the bound")
                                    .expect("staged")
                            }
                        };
                        proptest::prop_assert_eq!(seq, frames.len() as u64);
                        // Reported on its own: tracked, a body of its own, or too large to coalesce.
                        let body = how == 3 && split % (size + 1) < size;
                        let alone = track || body || (how < 2 && size + HEADER_LEN > COALESCE_MAX);
                        wire.extend_from_slice(&(size as u32).to_be_bytes());
                        wire.extend_from_slice(&p);
                        frames.push((wire.len(), alone));
                    }
                    Op::Write(script) => {
                        w.script = script.into_iter();
                        q.write_to(&mut w, |s, n| done.extend(s..s + u64::from(n))).expect("no error");
                    }
                }
                check(&q, &w, &wire, &frames, &done)?;
            }
            // Drain: everything leaves and is reported.
            w.script = vec![Some(usize::MAX); 64].into_iter();
            q.write_to(&mut w, |s, n| done.extend(s..s + u64::from(n))).expect("no error");
            check(&q, &w, &wire, &frames, &done)?;
            proptest::prop_assert!(q.is_empty());
            proptest::prop_assert_eq!(&w.out, &wire);
            proptest::prop_assert_eq!(done.len(), frames.len());
        }
    }
}
