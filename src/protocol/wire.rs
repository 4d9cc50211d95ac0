//! Kafka's primitive types: a bounds-checked reader for responses and writers for the hand-written
//! request path. Nothing here panics on input; every length read off the wire is checked against
//! the bytes that remain before it is used (so a garbage length cannot make us allocate).

use bytes::BufMut;

use super::error::ProtocolError;

/// Reads Kafka primitives from a frame, front to back.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn malformed(why: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed(why.into())
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.remaining() {
            return Err(ProtocolError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn i8(&mut self) -> Result<i8, ProtocolError> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    pub(crate) fn bool(&mut self) -> Result<bool, ProtocolError> {
        Ok(self.i8()? != 0)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// An unsigned varint of at most 5 bytes (Kafka's `readUnsignedVarint`).
    pub(crate) fn uvarint(&mut self) -> Result<u32, ProtocolError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.array::<1>()?[0];
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("unsigned varint longer than 5 bytes"))
    }

    /// A nullable string: `i16` length (-1 = null), or for `compact` a varint length + 1
    /// (0 = null).
    pub(crate) fn nullable_string(
        &mut self,
        compact: bool,
    ) -> Result<Option<&'a str>, ProtocolError> {
        let len = if compact {
            match self.uvarint()? {
                0 => return Ok(None),
                n => (n - 1) as usize,
            }
        } else {
            match self.i16()? {
                -1 => return Ok(None),
                n if n < 0 => return Err(malformed(format!("negative string length {n}"))),
                n => n as usize,
            }
        };
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| malformed("string is not UTF-8"))
    }

    /// A non-null string.
    pub(crate) fn string(&mut self, compact: bool) -> Result<&'a str, ProtocolError> {
        self.nullable_string(compact)?
            .ok_or_else(|| malformed("null where a string is required"))
    }

    /// An array's element count (`None` = null array), checked so that `count * min_element`
    /// bytes remain.
    pub(crate) fn nullable_array_len(
        &mut self,
        compact: bool,
        min_element: usize,
    ) -> Result<Option<usize>, ProtocolError> {
        let n = if compact {
            match self.uvarint()? {
                0 => return Ok(None),
                n => (n - 1) as usize,
            }
        } else {
            match self.i32()? {
                -1 => return Ok(None),
                n if n < 0 => return Err(malformed(format!("negative array length {n}"))),
                n => n as usize,
            }
        };
        if n.saturating_mul(min_element.max(1)) > self.remaining() {
            return Err(ProtocolError::Truncated);
        }
        Ok(Some(n))
    }

    /// A non-null array's element count, checked as in [`Reader::nullable_array_len`].
    pub(crate) fn array_len(
        &mut self,
        compact: bool,
        min_element: usize,
    ) -> Result<usize, ProtocolError> {
        self.nullable_array_len(compact, min_element)?
            .ok_or_else(|| malformed("null where an array is required"))
    }

    /// Skips an array of `i32` (replica lists and the like).
    pub(crate) fn skip_i32_array(&mut self, compact: bool) -> Result<(), ProtocolError> {
        let n = self.nullable_array_len(compact, 4)?.unwrap_or(0);
        self.take(n * 4).map(|_| ())
    }

    /// A tagged-field section: calls `f(tag, data)` for each field.
    pub(crate) fn tagged_fields(
        &mut self,
        mut f: impl FnMut(u32, &'a [u8]) -> Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let n = self.uvarint()? as usize;
        // Each field is at least two bytes (tag, size).
        if n.saturating_mul(2) > self.remaining() {
            return Err(ProtocolError::Truncated);
        }
        for _ in 0..n {
            let tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            let data = self.take(size)?;
            f(tag, data)?;
        }
        Ok(())
    }

    /// Skips a tagged-field section.
    pub(crate) fn skip_tagged_fields(&mut self) -> Result<(), ProtocolError> {
        self.tagged_fields(|_, _| Ok(()))
    }

    /// A response header: the correlation id, then (header v1, `flexible`) tagged fields.
    pub(crate) fn response_header(&mut self, flexible: bool) -> Result<i32, ProtocolError> {
        let corr = self.i32()?;
        if flexible {
            self.skip_tagged_fields()?;
        }
        Ok(corr)
    }
}

/// The size of `v` as an unsigned varint.
#[inline]
pub(crate) const fn uvarint_size(v: u32) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0x0fff_ffff => 4,
        _ => 5,
    }
}

/// The size of `v` as an unsigned 64-bit varint.
#[inline]
pub(crate) const fn uvarlong_size(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The size of `v` as a zig-zag varint (Kafka's `varint`).
#[inline]
pub(crate) const fn varint_size(v: i32) -> usize {
    uvarint_size(((v << 1) ^ (v >> 31)) as u32)
}

/// The size of `v` as a zig-zag varlong (Kafka's `varlong`).
#[inline]
pub(crate) const fn varlong_size(v: i64) -> usize {
    uvarlong_size(((v << 1) ^ (v >> 63)) as u64)
}

/// Writes `v` as an unsigned varint.
#[inline]
pub(crate) fn put_uvarint(buf: &mut impl BufMut, mut v: u32) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Writes `v` as an unsigned 64-bit varint.
#[cfg(test)]
pub(crate) fn put_uvarlong(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Writes `v` as a zig-zag varint.
#[cfg(test)]
pub(crate) fn put_varint(buf: &mut impl BufMut, v: i32) {
    put_uvarint(buf, ((v << 1) ^ (v >> 31)) as u32);
}

/// Writes `v` as a zig-zag varlong.
#[cfg(test)]
pub(crate) fn put_varlong(buf: &mut impl BufMut, v: i64) {
    put_uvarlong(buf, ((v << 1) ^ (v >> 63)) as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_sizes_match_encoding() {
        let ints = [
            0,
            1,
            -1,
            63,
            -64,
            64,
            -65,
            8191,
            -8192,
            8192,
            1 << 20,
            -(1 << 20),
            i32::MAX,
            i32::MIN,
        ];
        for v in ints {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_size(v), "{v}");
        }
        let longs = [
            0i64,
            1,
            -1,
            1 << 35,
            -(1 << 35),
            i64::MAX,
            i64::MIN,
            1_700_000_000_000,
        ];
        for v in longs {
            let mut b = Vec::new();
            put_varlong(&mut b, v);
            assert_eq!(b.len(), varlong_size(v), "{v}");
        }
        for v in [0u32, 127, 128, 16383, 16384, u32::MAX] {
            let mut b = Vec::new();
            put_uvarint(&mut b, v);
            assert_eq!(b.len(), uvarint_size(v), "{v}");
            assert_eq!(Reader::new(&b).uvarint(), Ok(v));
        }
    }

    #[test]
    fn reader_rejects_bad_lengths() {
        // A 2^31-1 element array in a 4-byte frame.
        assert_eq!(
            Reader::new(&[0x7f, 0xff, 0xff, 0xff]).array_len(false, 1),
            Err(ProtocolError::Truncated)
        );
        assert!(matches!(
            Reader::new(&[0xff, 0xff, 0xff, 0xfe]).array_len(false, 1),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            Reader::new(&[0xff, 0xfe]).nullable_string(false),
            Err(ProtocolError::Malformed(_))
        ));
        assert_eq!(
            Reader::new(&[0x00, 0x05, b'a']).nullable_string(false),
            Err(ProtocolError::Truncated)
        );
        assert!(matches!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).uvarint(),
            Err(ProtocolError::Malformed(_))
        ));
        assert_eq!(
            Reader::new(&[0x80]).uvarint(),
            Err(ProtocolError::Truncated)
        );
    }
}
