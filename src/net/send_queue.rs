//! A channel's staged sends: a byte-bounded queue of frames written with vectored writes.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

use super::frame::HEADER_LEN;

/// How many `IoSlice`s one `sendmsg` gathers at most. Linux's `UIO_MAXIOV` is 1024; a frame staged
/// with [`Selector::send`](super::Selector::send) takes two slices (prefix, payload), so 512 slices
/// carry up to 256 small frames per syscall. (At 64, deep pipelines of 100-byte frames were
/// syscall-bound: 32 frames per write.) The array lives on the stack: 8 KiB.
const MAX_IOVECS: usize = 512;

/// One staged frame: an optional length prefix held inline, and the payload.
#[derive(Debug)]
struct Staged {
    header: [u8; HEADER_LEN],
    /// `HEADER_LEN` when `header` must be written before `body`, 0 when `body` carries its own prefix.
    header_len: u8,
    body: Bytes,
    seq: u64,
}

impl Staged {
    fn len(&self) -> usize {
        self.header_len as usize + self.body.len()
    }
}

/// The outcome of one [`SendQueue::write_to`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteProgress {
    /// Bytes written by this call.
    pub bytes: usize,
    /// Whether the socket refused more (`WouldBlock`) with data still staged.
    pub blocked: bool,
}

/// Staged sends of one channel. Frames leave in the order they were staged; each frame's sequence
/// number is reported once when its last byte has been written.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    frames: VecDeque<Staged>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// Bytes staged and not yet written.
    staged_bytes: usize,
    next_seq: u64,
}

impl SendQueue {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn staged_bytes(&self) -> usize {
        self.staged_bytes
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Stages a frame and returns its sequence number.
    pub fn push(&mut self, header: Option<[u8; HEADER_LEN]>, body: Bytes) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let staged = Staged {
            header: header.unwrap_or([0; HEADER_LEN]),
            header_len: if header.is_some() {
                HEADER_LEN as u8
            } else {
                0
            },
            body,
            seq,
        };
        self.staged_bytes += staged.len();
        self.frames.push_back(staged);
        seq
    }

    /// Writes as much as `w` takes, across frame boundaries, resuming a partial write. Calls `done`
    /// with the sequence number of every frame whose last byte left.
    ///
    /// # Errors
    /// Any error of `w` other than `WouldBlock` and `Interrupted`.
    pub fn write_to<W: Write>(
        &mut self,
        w: &mut W,
        mut done: impl FnMut(u64),
    ) -> io::Result<WriteProgress> {
        let mut progress = WriteProgress::default();
        while !self.frames.is_empty() {
            let n = {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let count = self.gather(&mut slices);
                match w.write_vectored(&slices[..count]) {
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
            self.consume(n, &mut done);
        }
        Ok(progress)
    }

    /// Fills `slices` with the unwritten parts of the queued frames; returns how many it filled.
    fn gather<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
        let mut count = 0;
        let mut skip = self.front_written;
        for f in &self.frames {
            let hl = f.header_len as usize;
            if skip < hl {
                slices[count] = IoSlice::new(&f.header[skip..hl]);
                count += 1;
                if count == MAX_IOVECS {
                    break;
                }
                skip = 0;
            } else {
                skip -= hl;
            }
            if skip < f.body.len() {
                slices[count] = IoSlice::new(&f.body[skip..]);
                count += 1;
                if count == MAX_IOVECS {
                    break;
                }
            }
            skip = 0;
        }
        count
    }

    fn consume(&mut self, mut n: usize, done: &mut impl FnMut(u64)) {
        self.staged_bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let remaining = front.len() - self.front_written;
            if n >= remaining {
                n -= remaining;
                self.front_written = 0;
                let seq = front.seq;
                self.frames.pop_front();
                done(seq);
            } else {
                self.front_written += n;
                n = 0;
            }
        }
    }

    /// Drops every staged frame; returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.frames.len();
        self.frames.clear();
        self.front_written = 0;
        self.staged_bytes = 0;
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
            let mut left = self.cap;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                left -= take;
                n += take;
                if left == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
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
            );
        }
        let mut w = Trickle {
            out: Vec::new(),
            cap: 3,
            calls: 0,
            block_every: 5,
        };
        let mut done = Vec::new();
        for _ in 0..10_000 {
            if q.is_empty() {
                break;
            }
            q.write_to(&mut w, |s| done.push(s)).unwrap();
        }
        assert!(q.is_empty());
        assert_eq!(q.staged_bytes(), 0);
        assert_eq!(done, (0..200).collect::<Vec<u64>>());
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        assert_eq!(w.out, expected(&refs));
    }

    #[test]
    fn prefixed_frames_are_written_as_is() {
        let mut q = SendQueue::default();
        let mut framed = 2u32.to_be_bytes().to_vec();
        framed.extend_from_slice(b"hi");
        q.push(None, Bytes::from(framed));
        q.push(Some(1u32.to_be_bytes()), Bytes::from_static(b"!"));
        let mut w = Trickle {
            out: Vec::new(),
            cap: 1000,
            calls: 0,
            block_every: 0,
        };
        let mut done = Vec::new();
        let p = q.write_to(&mut w, |s| done.push(s)).unwrap();
        assert_eq!(p.bytes, 11);
        assert!(!p.blocked);
        assert_eq!(w.out, expected(&[b"hi", b"!"]));
        assert_eq!(done, vec![0, 1]);
    }

    #[test]
    fn would_block_reports_blocked() {
        let mut q = SendQueue::default();
        q.push(Some(3u32.to_be_bytes()), Bytes::from_static(b"abc"));
        let mut w = Trickle {
            out: Vec::new(),
            cap: 2,
            calls: 0,
            block_every: 2,
        };
        let p = q.write_to(&mut w, |_| {}).unwrap();
        assert!(p.blocked);
        assert_eq!(p.bytes, 2);
        assert_eq!(q.staged_bytes(), 5);
    }
}
