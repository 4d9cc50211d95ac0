//! Record batch compression (`compression.type`), framed as Kafka's clients frame it.
//!
//! The batch header stays uncompressed; the records after it are compressed as one block, and the
//! codec goes in the low three bits of the batch's `attributes`:
//!
//! | codec  | id | framing written                                                       |
//! |--------|----|-----------------------------------------------------------------------|
//! | gzip   | 1  | a gzip member (RFC 1952), as Java's `GZIPOutputStream` writes          |
//! | snappy | 2  | xerial framing (`\x82SNAPPY\0`, version 1, then length-prefixed raw blocks), as Java's `SnappyOutputStream` writes; raw snappy is read too (librdkafka reads both) |
//! | lz4    | 3  | an LZ4 frame (independent 64 KiB blocks, no checksums) with the header checksum over the frame descriptor alone (KIP-57) |
//! | zstd   | 4  | a zstd frame with its content size                                    |
//!
//! Each codec is behind its own cargo feature (`gzip`, `snappy`, `lz4`, `zstd`; `compression`
//! turns on all four). A codec that is not compiled in is refused with
//! [`CompressionError::Unsupported`], never silently sent uncompressed.
//!
//! [`Compressor`] keeps its scratch buffer and codec contexts across batches: compressing a batch
//! allocates nothing once they have grown to the batch size. Decompression
//! ([`decompress`]) takes a bound and fails on output past it: a batch from the network cannot
//! make its reader allocate more than the bound.

use std::fmt;

/// A record batch compression codec (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// No compression (`none`, attributes codec 0).
    #[default]
    None,
    /// `gzip` (codec 1).
    Gzip,
    /// `snappy` (codec 2).
    Snappy,
    /// `lz4` (codec 3).
    Lz4,
    /// `zstd` (codec 4).
    Zstd,
}

impl Compression {
    /// Every codec, `none` first.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The codec's id in the batch attributes (bits 0-2).
    pub const fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec of a batch's `attributes`; `None` for the unknown ids 5-7.
    pub const fn from_attributes(attributes: i16) -> Option<Compression> {
        match attributes & 0x07 {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The `compression.type` name: `none`, `gzip`, `snappy`, `lz4`, `zstd`.
    pub const fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// The codec named `name` (a `compression.type` value, case-insensitive).
    pub fn from_name(name: &str) -> Option<Compression> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this build can compress and decompress with the codec (its cargo feature is on).
    pub const fn available(self) -> bool {
        match self {
            Compression::None => true,
            Compression::Gzip => cfg!(feature = "gzip"),
            Compression::Snappy => cfg!(feature = "snappy"),
            Compression::Lz4 => cfg!(feature = "lz4"),
            Compression::Zstd => cfg!(feature = "zstd"),
        }
    }

    /// The `compression.level` range Kafka accepts for the codec (`None` if it takes no level):
    /// gzip 1-9, lz4 1-17, zstd -131072-22.
    pub const fn level_range(self) -> Option<(i32, i32)> {
        match self {
            Compression::Gzip => Some((1, 9)),
            Compression::Lz4 => Some((1, 17)),
            Compression::Zstd => Some((-131_072, 22)),
            Compression::None | Compression::Snappy => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a batch could not be compressed or decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompressionError {
    /// The codec's cargo feature is not compiled in.
    Unsupported(Compression),
    /// The compressed data is not a valid stream of the codec.
    Corrupt {
        /// The codec.
        codec: Compression,
        /// What was wrong.
        why: String,
    },
    /// The decompressed data would exceed the caller's bound.
    TooLarge {
        /// The codec.
        codec: Compression,
        /// The bound, bytes.
        limit: usize,
    },
    /// The encoder failed (a library error, not the input's fault).
    Encode {
        /// The codec.
        codec: Compression,
        /// The library's message.
        why: String,
    },
}

impl fmt::Display for CompressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompressionError::Unsupported(c) => {
                write!(
                    f,
                    "compression codec {c} is not compiled in (cargo feature)"
                )
            }
            CompressionError::Corrupt { codec, why } => write!(f, "corrupt {codec} data: {why}"),
            CompressionError::TooLarge { codec, limit } => {
                write!(f, "{codec} data decompresses to more than {limit} bytes")
            }
            CompressionError::Encode { codec, why } => write!(f, "{codec} encoder failed: {why}"),
        }
    }
}

impl std::error::Error for CompressionError {}

/// The xerial snappy stream header: magic, version 1, minimum compatible version 1.
#[cfg(feature = "snappy")]
const XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];
/// The block size of xerial snappy streams (Java's `SnappyOutputStream` default).
#[cfg(feature = "snappy")]
const XERIAL_BLOCK: usize = 32 * 1024;

/// LZ4 frame magic (little-endian on the wire).
#[cfg(feature = "lz4")]
const LZ4_MAGIC: u32 = 0x184D_2204;
/// The frame descriptor written: FLG (version 01, independent blocks, no checksums, no content
/// size), BD (64 KiB blocks), and the header checksum `(xxh32(FLG, BD) >> 8) & 0xff` over the
/// descriptor alone (KIP-57; the value is fixed because the descriptor is).
#[cfg(feature = "lz4")]
const LZ4_DESCRIPTOR: [u8; 3] = [0x60, 0x40, 0x82];
/// The LZ4 block size written.
#[cfg(feature = "lz4")]
const LZ4_BLOCK: usize = 64 * 1024;

/// A reusable batch compressor: one codec, one level, its contexts and scratch buffer kept across
/// batches.
///
/// # Example
///
/// ```
/// # #[cfg(feature = "gzip")] {
/// use mqnet::protocol::{decompress, Compression, Compressor};
///
/// let mut c = Compressor::new(Compression::Gzip, None).unwrap();
/// let packed = c.compress(b"hello hello hello hello").unwrap().to_vec();
/// let mut out = Vec::new();
/// decompress(Compression::Gzip, &packed, &mut out, 1024).unwrap();
/// assert_eq!(out, b"hello hello hello hello");
/// # }
/// ```
pub struct Compressor {
    codec: Compression,
    level: Option<i32>,
    out: Vec<u8>,
    #[cfg(feature = "gzip")]
    deflate: Option<flate2::Compress>,
    #[cfg(feature = "snappy")]
    snappy: Option<snap::raw::Encoder>,
    #[cfg(feature = "zstd")]
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("codec", &self.codec)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor for `codec` at `level` (`None`: the codec's default; gzip 6, lz4 9 — the
    /// lz4_flex block compressor has a single level, the level is checked and kept —, zstd 3).
    ///
    /// # Errors
    /// [`CompressionError::Unsupported`] if the codec is not compiled in;
    /// [`CompressionError::Encode`] if `level` is outside [`Compression::level_range`].
    pub fn new(codec: Compression, level: Option<i32>) -> Result<Self, CompressionError> {
        if !codec.available() {
            return Err(CompressionError::Unsupported(codec));
        }
        if let (Some(l), Some((lo, hi))) = (level, codec.level_range()) {
            if !(lo..=hi).contains(&l) {
                return Err(CompressionError::Encode {
                    codec,
                    why: format!("level {l} outside {lo}..={hi}"),
                });
            }
        }
        Ok(Compressor {
            codec,
            level,
            out: Vec::new(),
            #[cfg(feature = "gzip")]
            deflate: None,
            #[cfg(feature = "snappy")]
            snappy: None,
            #[cfg(feature = "zstd")]
            zstd: None,
        })
    }

    /// The codec.
    pub fn codec(&self) -> Compression {
        self.codec
    }

    /// Compresses `input` into the compressor's buffer and returns it (valid until the next call).
    ///
    /// # Errors
    /// [`CompressionError::Encode`] if the codec library fails.
    pub fn compress(&mut self, input: &[u8]) -> Result<&[u8], CompressionError> {
        self.out.clear();
        match self.codec {
            Compression::None => self.out.extend_from_slice(input),
            #[cfg(feature = "gzip")]
            Compression::Gzip => self.gzip(input)?,
            #[cfg(feature = "snappy")]
            Compression::Snappy => self.snappy(input)?,
            #[cfg(feature = "lz4")]
            Compression::Lz4 => self.lz4(input),
            #[cfg(feature = "zstd")]
            Compression::Zstd => self.zstd(input)?,
            #[allow(unreachable_patterns)]
            c => return Err(CompressionError::Unsupported(c)),
        }
        Ok(&self.out)
    }

    #[cfg(feature = "gzip")]
    fn gzip(&mut self, input: &[u8]) -> Result<(), CompressionError> {
        use flate2::{Compress, Compression as Level, Crc, FlushCompress, Status};
        let codec = self.codec;
        let level = self.level.unwrap_or(6) as u32;
        let d = self
            .deflate
            .get_or_insert_with(|| Compress::new(Level::new(level), false));
        d.reset();
        // Header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
        self.out
            .extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        // Deflate's worst case is a few bytes per 16 KiB block over the input.
        self.out.reserve(input.len() + input.len() / 1000 + 64);
        let mut consumed = 0usize;
        loop {
            if self.out.capacity() == self.out.len() {
                self.out.reserve(self.out.len() / 2 + 64);
            }
            let before_in = d.total_in();
            let status = d
                .compress_vec(&input[consumed..], &mut self.out, FlushCompress::Finish)
                .map_err(|e| CompressionError::Encode {
                    codec,
                    why: e.to_string(),
                })?;
            consumed += (d.total_in() - before_in) as usize;
            if status == Status::StreamEnd {
                break;
            }
        }
        let mut crc = Crc::new();
        crc.update(input);
        self.out.extend_from_slice(&crc.sum().to_le_bytes());
        self.out
            .extend_from_slice(&(input.len() as u32).to_le_bytes());
        Ok(())
    }

    #[cfg(feature = "snappy")]
    fn snappy(&mut self, input: &[u8]) -> Result<(), CompressionError> {
        let codec = self.codec;
        let enc = self.snappy.get_or_insert_with(snap::raw::Encoder::new);
        self.out.extend_from_slice(&XERIAL_HEADER);
        for block in input.chunks(XERIAL_BLOCK) {
            let at = self.out.len();
            let max = snap::raw::max_compress_len(block.len());
            self.out.resize(at + 4 + max, 0);
            let n = enc.compress(block, &mut self.out[at + 4..]).map_err(|e| {
                CompressionError::Encode {
                    codec,
                    why: e.to_string(),
                }
            })?;
            self.out[at..at + 4].copy_from_slice(&(n as u32).to_be_bytes());
            self.out.truncate(at + 4 + n);
        }
        Ok(())
    }

    #[cfg(feature = "lz4")]
    fn lz4(&mut self, input: &[u8]) {
        self.out.extend_from_slice(&LZ4_MAGIC.to_le_bytes());
        self.out.extend_from_slice(&LZ4_DESCRIPTOR);
        for block in input.chunks(LZ4_BLOCK) {
            let at = self.out.len();
            let max = lz4_flex::block::get_maximum_output_size(block.len());
            self.out.resize(at + 4 + max, 0);
            let n = lz4_flex::block::compress_into(block, &mut self.out[at + 4..]).unwrap_or(max);
            if n >= block.len() || n == max {
                // Incompressible: stored raw, flagged by the size's high bit.
                self.out.truncate(at);
                self.out
                    .extend_from_slice(&(block.len() as u32 | 0x8000_0000).to_le_bytes());
                self.out.extend_from_slice(block);
            } else {
                self.out[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
                self.out.truncate(at + 4 + n);
            }
        }
        self.out.extend_from_slice(&0u32.to_le_bytes()); // end mark
    }

    #[cfg(feature = "zstd")]
    fn zstd(&mut self, input: &[u8]) -> Result<(), CompressionError> {
        let codec = self.codec;
        let enc_err = |e: std::io::Error| CompressionError::Encode {
            codec,
            why: e.to_string(),
        };
        if self.zstd.is_none() {
            let c = zstd::bulk::Compressor::new(self.level.unwrap_or(3)).map_err(enc_err)?;
            self.zstd = Some(c);
        }
        let Some(c) = self.zstd.as_mut() else {
            return Err(CompressionError::Unsupported(codec));
        };
        let max = zstd::zstd_safe::compress_bound(input.len());
        self.out.reserve(max);
        c.compress_to_buffer(input, &mut self.out)
            .map_err(enc_err)?;
        Ok(())
    }
}

/// Decompresses `input` (one batch's records as `codec` framed them) into `out` (cleared first),
/// refusing to produce more than `limit` bytes.
///
/// # Errors
/// [`CompressionError::Unsupported`] if the codec is not compiled in,
/// [`CompressionError::Corrupt`] for data that is not a valid stream,
/// [`CompressionError::TooLarge`] past `limit`.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), CompressionError> {
    out.clear();
    if codec != Compression::None && input.is_empty() {
        return Err(CompressionError::Corrupt {
            codec,
            why: "no data".into(),
        });
    }
    match codec {
        Compression::None => {
            if input.len() > limit {
                return Err(CompressionError::TooLarge { codec, limit });
            }
            out.extend_from_slice(input);
            Ok(())
        }
        #[cfg(feature = "gzip")]
        Compression::Gzip => read_bounded(codec, flate2::read::GzDecoder::new(input), out, limit),
        #[cfg(feature = "snappy")]
        Compression::Snappy => unsnappy(input, out, limit),
        #[cfg(feature = "lz4")]
        Compression::Lz4 => {
            lz4_frame_complete(input).map_err(|why| CompressionError::Corrupt { codec, why })?;
            read_bounded(codec, lz4_flex::frame::FrameDecoder::new(input), out, limit)
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd => {
            let d = zstd::stream::read::Decoder::with_buffer(input).map_err(|e| {
                CompressionError::Corrupt {
                    codec,
                    why: e.to_string(),
                }
            })?;
            read_bounded(codec, d, out, limit)
        }
        #[allow(unreachable_patterns)]
        c => Err(CompressionError::Unsupported(c)),
    }
}

/// Reads a decoder to its end into `out`, at most `limit` bytes.
#[allow(dead_code)]
fn read_bounded(
    codec: Compression,
    r: impl std::io::Read,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), CompressionError> {
    use std::io::Read;
    let mut r = r.take(limit as u64 + 1);
    r.read_to_end(out).map_err(|e| CompressionError::Corrupt {
        codec,
        why: e.to_string(),
    })?;
    if out.len() > limit {
        return Err(CompressionError::TooLarge { codec, limit });
    }
    Ok(())
}

/// Checks that `input` is exactly one whole LZ4 frame — header, blocks, end mark and the
/// checksums its flags announce, nothing after it — before it is decoded (a decoder may take a
/// frame cut at a block boundary for a shorter one).
#[cfg(feature = "lz4")]
fn lz4_frame_complete(input: &[u8]) -> Result<(), String> {
    let u32_at = |at: usize| -> Result<u32, String> {
        input
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| format!("frame cut short at byte {at}"))
    };
    if u32_at(0)? != LZ4_MAGIC {
        return Err("not an LZ4 frame (magic)".into());
    }
    let flg = *input.get(4).ok_or("frame header cut short")?;
    if flg >> 6 != 1 {
        return Err(format!("frame version {}", flg >> 6));
    }
    let block_checksum = flg & 0x10 != 0;
    let content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    let dict_id = flg & 0x01 != 0;
    let mut at = 4 + 2 + if content_size { 8 } else { 0 } + if dict_id { 4 } else { 0 } + 1;
    loop {
        let size = u32_at(at)?;
        at += 4;
        if size == 0 {
            break;
        }
        let len = (size & 0x7fff_ffff) as usize + if block_checksum { 4 } else { 0 };
        if len > input.len() - at {
            return Err(format!("block of {len} bytes runs past the frame"));
        }
        at += len;
    }
    if content_checksum {
        at += 4;
    }
    match at.cmp(&input.len()) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err("content checksum cut short".into()),
        std::cmp::Ordering::Less => Err("bytes after the frame".into()),
    }
}

/// Snappy: xerial-framed (with its header) or one raw block.
#[cfg(feature = "snappy")]
fn unsnappy(input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), CompressionError> {
    let codec = Compression::Snappy;
    let corrupt = |why: String| CompressionError::Corrupt { codec, why };
    let mut dec = snap::raw::Decoder::new();
    let mut raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), CompressionError> {
        let n = snap::raw::decompress_len(block).map_err(|e| corrupt(e.to_string()))?;
        if n > limit - out.len() {
            return Err(CompressionError::TooLarge { codec, limit });
        }
        let at = out.len();
        out.resize(at + n, 0);
        let got = dec
            .decompress(block, &mut out[at..])
            .map_err(|e| corrupt(e.to_string()))?;
        out.truncate(at + got);
        Ok(())
    };
    if input.len() < 8 || input[..8] != [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0] {
        return raw(input, out);
    }
    if input.len() < 16 {
        return Err(corrupt("xerial header cut short".into()));
    }
    let mut rest = &input[16..];
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("xerial block length cut short".into()));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err(corrupt(format!(
                "xerial block of {len} bytes in {} bytes",
                tail.len()
            )));
        }
        raw(&tail[..len], out)?;
        rest = &tail[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..20_000u32 {
            v.extend_from_slice(format!("record-{}-{}", i % 97, i).as_bytes());
        }
        v
    }

    #[test]
    fn every_available_codec_round_trips_and_compresses() {
        let input = sample();
        for codec in Compression::ALL {
            if !codec.available() {
                continue;
            }
            let mut c = Compressor::new(codec, None).unwrap();
            // Twice through the same compressor: its reused state gives the same bytes.
            let first = c.compress(&input).unwrap().to_vec();
            let second = c.compress(&input).unwrap().to_vec();
            assert_eq!(first, second, "{codec}");
            if codec != Compression::None {
                assert!(first.len() < input.len() / 2, "{codec}: {}", first.len());
            }
            let mut out = Vec::new();
            decompress(codec, &first, &mut out, input.len()).unwrap();
            assert_eq!(out, input, "{codec}");
            assert_eq!(
                decompress(codec, &first, &mut out, input.len() - 1),
                Err(CompressionError::TooLarge {
                    codec,
                    limit: input.len() - 1
                }),
                "{codec}"
            );
        }
    }

    #[test]
    fn empty_and_incompressible_inputs_round_trip() {
        let mut noise = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..70_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x as u8);
        }
        for codec in Compression::ALL.into_iter().filter(|c| c.available()) {
            let mut c = Compressor::new(codec, None).unwrap();
            for input in [&[][..], &noise[..]] {
                let packed = c.compress(input).unwrap().to_vec();
                let mut out = Vec::new();
                decompress(codec, &packed, &mut out, noise.len()).unwrap();
                assert_eq!(out, input, "{codec}");
            }
        }
    }

    #[test]
    fn garbage_is_a_typed_error_never_a_panic() {
        let input = sample();
        for codec in Compression::ALL.into_iter().filter(|c| c.available()) {
            if codec == Compression::None {
                continue;
            }
            let mut c = Compressor::new(codec, None).unwrap();
            let packed = c.compress(&input).unwrap().to_vec();
            let mut out = Vec::new();
            for cut in [0, 1, 5, 9, 17, packed.len() / 2, packed.len() - 1] {
                let r = decompress(codec, &packed[..cut], &mut out, input.len());
                assert!(r.is_err(), "{codec} cut at {cut}");
            }
            let mut flipped = packed.clone();
            for i in (0..flipped.len()).step_by(7) {
                flipped[i] ^= 0x5a;
            }
            // May decode to something else; must not panic or exceed the bound.
            let _ = decompress(codec, &flipped, &mut out, input.len());
            assert!(out.len() <= input.len() + 1);
        }
    }

    #[test]
    #[cfg(feature = "lz4")]
    fn lz4_header_checksum_is_over_the_descriptor_alone() {
        // xxh32 of FLG and BD with seed 0, second byte: KIP-57's rule.
        let mut c = Compressor::new(Compression::Lz4, None).unwrap();
        let packed = c.compress(b"abc").unwrap();
        assert_eq!(&packed[..4], &[0x04, 0x22, 0x4d, 0x18]);
        assert_eq!(&packed[4..7], &LZ4_DESCRIPTOR);
        // lz4_flex's own frame decoder checks the header checksum.
        let mut out = Vec::new();
        decompress(Compression::Lz4, packed, &mut out, 16).unwrap();
        assert_eq!(out, b"abc");
    }

    #[test]
    #[cfg(feature = "snappy")]
    fn snappy_reads_raw_blocks_too() {
        let input = sample();
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        let mut out = Vec::new();
        decompress(Compression::Snappy, &raw, &mut out, input.len()).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn names_and_ids() {
        for c in Compression::ALL {
            assert_eq!(Compression::from_name(c.name()), Some(c));
            assert_eq!(Compression::from_attributes(c.id() | 0x10), Some(c));
        }
        assert_eq!(Compression::from_name("LZ4"), Some(Compression::Lz4));
        assert_eq!(Compression::from_name("brotli"), None);
        assert_eq!(Compression::from_attributes(5), None);
        assert!(Compressor::new(Compression::Gzip, Some(10)).is_err() || !cfg!(feature = "gzip"));
    }
}
