//! The Java client's key partitioner: murmur2 (Kafka's `Utils.murmur2`) and
//! `Utils.toPositive(murmur2(key)) % partitions`.

/// Kafka's murmur2 hash of `data` (MurmurHash2, seed `0x9747b28c`, 4-byte little-endian blocks),
/// as the Java client computes it: the same `i32` for the same bytes.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java: `int h = seed ^ length` (the length as an int).
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner picks for a keyed record:
/// `(murmur2(key) & 0x7fffffff) % num_partitions` (`Utils.toPositive`, not `abs`).
///
/// # Panics
///
/// If `num_partitions` is not positive.
pub fn partition_for_key(key: &[u8], num_partitions: i32) -> i32 {
    assert!(
        num_partitions > 0,
        "partition_for_key: {num_partitions} partitions"
    );
    (murmur2(key) & 0x7fff_ffff) % num_partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values from apache/kafka `clients/src/test/java/org/apache/kafka/common/utils/
    /// UtilsTest.java`, `testMurmur2`.
    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(murmur2(data), expected, "{:?}", std::str::from_utf8(data));
        }
    }

    #[test]
    fn partition_uses_to_positive_not_abs() {
        // murmur2("21") is negative: toPositive masks the sign bit (abs would differ).
        let h = murmur2(b"21");
        assert!(h < 0);
        for n in 1..=64 {
            let p = partition_for_key(b"21", n);
            assert_eq!(p, (h & 0x7fff_ffff) % n);
            assert!((0..n).contains(&p));
        }
        assert_eq!(
            partition_for_key(b"21", 4),
            ((-973_932_308i32) & 0x7fff_ffff) % 4
        );
        // Empty keys hash too (Java hashes a zero-length key like any other).
        assert!((0..3).contains(&partition_for_key(b"", 3)));
    }
}
