//! The broker's strictness, one rule per test, with hand-built batches over a raw connection; and
//! its answers to what it does not serve.

mod common;

use std::time::{Duration, Instant};

use common::{batch, init_producer_id, kafka_protocol_frame as kf, produce, Raw};
use mqnet::broker::{codes, Broker, BrokerConfig};

fn start(max_message: usize) -> (Broker, String) {
    common::init_log();
    let b = Broker::start(BrokerConfig {
        message_max_bytes: max_message,
        ..BrokerConfig::default()
    })
    .expect("broker");
    b.create_topic("t", 1).unwrap();
    let addr = b.bootstrap_servers();
    (b, addr)
}

#[test]
fn a_flipped_crc_bit_is_corrupt_message_and_nothing_is_appended() {
    let (b, addr) = start(1 << 20);
    let mut raw = Raw::connect(&addr);
    let mut bad = batch(3, -1, -1, -1);
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    assert_eq!(produce(&mut raw, "t", 0, &bad).0, codes::CORRUPT_MESSAGE);
    assert_eq!(b.high_watermark("t", 0), Some(0));
    // The same connection still works, and the good batch lands at offset 0.
    assert_eq!(produce(&mut raw, "t", 0, &batch(3, -1, -1, -1)), (0, 0));
    assert_eq!(b.high_watermark("t", 0), Some(3));
}

#[test]
fn an_oversize_batch_is_message_too_large() {
    let (b, addr) = start(300);
    let mut raw = Raw::connect(&addr);
    let big = batch(20, -1, -1, -1);
    assert!(big.len() > 300);
    assert_eq!(produce(&mut raw, "t", 0, &big).0, codes::MESSAGE_TOO_LARGE);
    assert_eq!(b.high_watermark("t", 0), Some(0));
}

#[test]
fn a_replayed_batch_gets_its_original_offset_and_is_not_appended_again() {
    let (b, addr) = start(1 << 20);
    let mut raw = Raw::connect(&addr);
    let (code, pid, epoch) = init_producer_id(&mut raw, (-1, -1));
    assert_eq!(code, 0);
    assert_eq!(produce(&mut raw, "t", 0, &batch(2, -1, -1, -1)), (0, 0));
    let first = batch(3, pid, epoch, 0);
    assert_eq!(produce(&mut raw, "t", 0, &first), (0, 2));
    assert_eq!(produce(&mut raw, "t", 0, &batch(4, pid, epoch, 3)), (0, 5));
    // Replays of both remembered batches.
    assert_eq!(produce(&mut raw, "t", 0, &first), (0, 2));
    assert_eq!(produce(&mut raw, "t", 0, &batch(4, pid, epoch, 3)), (0, 5));
    assert_eq!(b.high_watermark("t", 0), Some(9));
    assert_eq!(b.stats().duplicates, 2);
}

#[test]
fn a_sequence_gap_is_out_of_order_sequence_number() {
    let (b, addr) = start(1 << 20);
    let mut raw = Raw::connect(&addr);
    let (_, pid, epoch) = init_producer_id(&mut raw, (-1, -1));
    // A first batch that does not start at 0.
    assert_eq!(
        produce(&mut raw, "t", 0, &batch(1, pid, epoch, 5)).0,
        codes::OUT_OF_ORDER_SEQUENCE_NUMBER
    );
    assert_eq!(produce(&mut raw, "t", 0, &batch(2, pid, epoch, 0)), (0, 0));
    // 2 is next; 3 skips one.
    assert_eq!(
        produce(&mut raw, "t", 0, &batch(1, pid, epoch, 3)).0,
        codes::OUT_OF_ORDER_SEQUENCE_NUMBER
    );
    assert_eq!(produce(&mut raw, "t", 0, &batch(1, pid, epoch, 2)), (0, 2));
    assert_eq!(b.high_watermark("t", 0), Some(3));
}

#[test]
fn an_old_epoch_is_invalid_producer_epoch_and_an_unknown_id_unknown_producer_id() {
    let (b, addr) = start(1 << 20);
    let mut raw = Raw::connect(&addr);
    let (_, pid, e0) = init_producer_id(&mut raw, (-1, -1));
    assert_eq!(produce(&mut raw, "t", 0, &batch(1, pid, e0, 0)), (0, 0));
    let (code, pid2, e1) = init_producer_id(&mut raw, (pid, e0));
    assert_eq!((code, pid2, e1), (0, pid, e0 + 1));
    // Bumping from a stale epoch is refused.
    assert_eq!(
        init_producer_id(&mut raw, (pid, e0)).0,
        codes::INVALID_PRODUCER_EPOCH
    );
    assert_eq!(produce(&mut raw, "t", 0, &batch(1, pid, e1, 0)), (0, 1));
    assert_eq!(
        produce(&mut raw, "t", 0, &batch(1, pid, e0, 1)).0,
        codes::INVALID_PRODUCER_EPOCH
    );
    assert_eq!(
        produce(&mut raw, "t", 0, &batch(1, pid + 1000, 0, 0)).0,
        codes::UNKNOWN_PRODUCER_ID
    );
    assert_eq!(b.high_watermark("t", 0), Some(2));
}

#[test]
fn unknown_partitions_and_several_batches_are_refused() {
    let (b, addr) = start(1 << 20);
    let mut raw = Raw::connect(&addr);
    assert_eq!(
        produce(&mut raw, "t", 7, &batch(1, -1, -1, -1)).0,
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        produce(&mut raw, "nope", 0, &batch(1, -1, -1, -1)).0,
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
    let mut two = batch(1, -1, -1, -1);
    two.extend_from_slice(&batch(1, -1, -1, -1));
    assert_eq!(produce(&mut raw, "t", 0, &two).0, codes::INVALID_RECORD);
    assert_eq!(b.high_watermark("t", 0), Some(0));
}

#[test]
fn what_is_not_served_gets_unsupported_version_or_a_clean_close() {
    let (_b, addr) = start(1 << 20);
    // ApiVersions v9: a v0 answer with UNSUPPORTED_VERSION (error code right after the
    // correlation id).
    let mut raw = Raw::connect(&addr);
    let resp = raw.call(&kf::bare(18, 9)).expect("answer");
    assert_eq!(
        i16::from_be_bytes([resp[4], resp[5]]),
        codes::UNSUPPORTED_VERSION
    );
    // An API that is not served (OffsetCommit) closes the connection.
    let mut raw = Raw::connect(&addr);
    assert!(raw.call(&kf::bare(8, 2)).is_none());
    // A truncated body closes it too.
    let mut raw = Raw::connect(&addr);
    assert!(raw.call(&kf::bare(1, 4)).is_none());
    // Garbage shorter than a header.
    let mut raw = Raw::connect(&addr);
    assert!(raw.call(&[1, 2, 3]).is_none());
    // The broker still serves.
    let mut raw = Raw::connect(&addr);
    assert_eq!(produce(&mut raw, "t", 0, &batch(1, -1, -1, -1)), (0, 0));
}

/// Reads a Fetch v4 response's first partition: (error, high watermark, record bytes).
fn fetch_result(resp: &[u8]) -> (i16, i64, usize) {
    // corr, throttle, [topics] n, topic name, [partitions] n, partition, error, hw, lso,
    // aborted (null = -1), records length.
    let mut p = 4 + 4 + 4;
    let name_len = i16::from_be_bytes([resp[p], resp[p + 1]]) as usize;
    p += 2 + name_len + 4 + 4;
    let err = i16::from_be_bytes([resp[p], resp[p + 1]]);
    p += 2;
    let hw = i64::from_be_bytes(resp[p..p + 8].try_into().unwrap());
    p += 8 + 8;
    let aborted = i32::from_be_bytes(resp[p..p + 4].try_into().unwrap());
    p += 4 + if aborted > 0 {
        aborted as usize * 16
    } else {
        0
    };
    let len = i32::from_be_bytes(resp[p..p + 4].try_into().unwrap());
    (err, hw, len.max(0) as usize)
}

#[test]
fn fetch_waits_max_wait_ms_for_min_bytes_and_answers_as_soon_as_data_arrives() {
    let (_b, addr) = start(1 << 20);
    let mut raw = Raw::connect(&addr);
    // Nothing to read: the answer comes after max.wait.ms, empty.
    let t0 = Instant::now();
    let resp = raw.call(&kf::fetch("t", 0, 0, 300, 1)).expect("fetch");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}"
    );
    assert_eq!(fetch_result(&resp), (0, 0, 0));
    // A long wait is cut short by a produce on another connection.
    raw.send(&kf::fetch("t", 0, 0, 60_000, 1));
    let mut other = Raw::connect(&addr);
    let t0 = Instant::now();
    assert_eq!(produce(&mut other, "t", 0, &batch(2, -1, -1, -1)), (0, 0));
    let resp = raw.recv().expect("fetch");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let (err, hw, len) = fetch_result(&resp);
    assert_eq!((err, hw), (0, 2));
    assert!(len > 61, "{len} record bytes");
    // Past the end: OFFSET_OUT_OF_RANGE at once.
    let resp = raw.call(&kf::fetch("t", 0, 5, 60_000, 1)).expect("fetch");
    assert_eq!(fetch_result(&resp).0, codes::OFFSET_OUT_OF_RANGE);
}

/// Reads a ListOffsets v1 response's first partition: (error, timestamp, offset).
fn list_offsets_result(resp: &[u8]) -> (i16, i64, i64) {
    let mut p = 4 + 4;
    let name_len = i16::from_be_bytes([resp[p], resp[p + 1]]) as usize;
    p += 2 + name_len + 4 + 4;
    let err = i16::from_be_bytes([resp[p], resp[p + 1]]);
    let ts = i64::from_be_bytes(resp[p + 2..p + 10].try_into().unwrap());
    let off = i64::from_be_bytes(resp[p + 10..p + 18].try_into().unwrap());
    (err, ts, off)
}

#[test]
fn list_offsets_answers_earliest_latest_and_by_timestamp() {
    let (_b, addr) = start(1 << 20);
    let mut raw = Raw::connect(&addr);
    // Two batches, records stamped T, T+1, T+2 and T+10, T+11.
    assert_eq!(produce(&mut raw, "t", 0, &batch(3, -1, -1, -1)), (0, 0));
    let mut later = bytes::BytesMut::new();
    let t = 1_700_000_000_000i64;
    let mut w = mqnet::protocol::RecordBatchWriter::begin(&mut later, t + 10);
    w.append(&mut later, t + 10, Some(b"a"), Some(b"1"), &[]);
    w.append(&mut later, t + 11, Some(b"b"), Some(b"2"), &[]);
    w.finish(&mut later, -1, -1, -1);
    assert_eq!(produce(&mut raw, "t", 0, &later), (0, 3));
    let ask =
        |raw: &mut Raw, ts| list_offsets_result(&raw.call(&kf::list_offsets("t", 0, ts)).unwrap());
    assert_eq!(ask(&mut raw, -2), (0, -1, 0));
    assert_eq!(ask(&mut raw, -1), (0, -1, 5));
    assert_eq!(ask(&mut raw, t + 1), (0, t + 1, 1));
    assert_eq!(ask(&mut raw, t + 3), (0, t + 10, 3));
    assert_eq!(ask(&mut raw, t + 11), (0, t + 11, 4));
    assert_eq!(ask(&mut raw, t + 12), (0, -1, -1));
    let resp = raw.call(&kf::list_offsets("t", 9, -1)).unwrap();
    assert_eq!(
        list_offsets_result(&resp).0,
        codes::UNKNOWN_TOPIC_OR_PARTITION
    );
}

#[test]
fn the_fuzz_seeds_of_the_request_decoders_are_valid_requests() {
    use mqnet::protocol::requests::*;
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/request_decode");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).expect("seed dir") {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("seed-") || name == "seed-absurd-count" || name == "seed-bare-batch" {
            continue;
        }
        let frame = bytes::Bytes::from(std::fs::read(&path).unwrap());
        let (h, body) = decode_request_header(&frame).expect(&name);
        let b = &frame[body..];
        let v = h.api_version;
        let ok = match h.api_key {
            0 => decode_produce_request(&frame, body, v).is_ok_and(|r| {
                r.topics[0].partitions[0]
                    .records
                    .as_ref()
                    .is_some_and(|rec| mqnet::broker::batch::validate(rec, 1 << 20).is_ok())
            }),
            1 => decode_fetch_request(b, v).is_ok(),
            2 => decode_list_offsets_request(b, v).is_ok(),
            3 => decode_metadata_request(b, v).is_ok(),
            18 => decode_api_versions_request(b, v).is_ok(),
            22 => decode_init_producer_id_request(b, v).is_ok(),
            _ => false,
        };
        assert!(ok, "{name} does not decode");
        checked += 1;
    }
    assert!(checked >= 9, "{checked} seeds");
}

/// Reads every partition of a one-topic Fetch v4 response: (partition, error, hw, record bytes).
fn fetch_partitions(resp: &[u8]) -> Vec<(i32, i16, i64, Vec<u8>)> {
    let i32_at = |p: usize| i32::from_be_bytes(resp[p..p + 4].try_into().unwrap());
    let mut p = 4 + 4 + 4;
    let name_len = i16::from_be_bytes([resp[p], resp[p + 1]]) as usize;
    p += 2 + name_len;
    let n = i32_at(p);
    p += 4;
    let mut out = Vec::new();
    for _ in 0..n {
        let part = i32_at(p);
        let err = i16::from_be_bytes([resp[p + 4], resp[p + 5]]);
        let hw = i64::from_be_bytes(resp[p + 6..p + 14].try_into().unwrap());
        p += 4 + 2 + 8 + 8;
        let aborted = i32_at(p);
        p += 4 + if aborted > 0 {
            aborted as usize * 16
        } else {
            0
        };
        let len = i32_at(p).max(0) as usize;
        p += 4;
        out.push((part, err, hw, resp[p..p + len].to_vec()));
        p += len;
    }
    out
}

/// Base offsets of the whole batches in `records`.
fn batch_bases(records: &[u8]) -> Vec<i64> {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 12 <= records.len() {
        out.push(i64::from_be_bytes(records[p..p + 8].try_into().unwrap()));
        let len = i32::from_be_bytes(records[p + 8..p + 12].try_into().unwrap()) as usize;
        p += 12 + len;
    }
    assert_eq!(p, records.len(), "only whole batches");
    out
}

#[test]
fn fetch_honours_partition_max_bytes_and_max_bytes_returning_whole_batches() {
    common::init_log();
    let b = Broker::start(BrokerConfig::default()).expect("broker");
    b.create_topic("t", 2).unwrap();
    let addr = b.bootstrap_servers();
    let mut raw = Raw::connect(&addr);
    let one = batch(3, -1, -1, -1);
    let size = one.len() as i32;
    for p in 0..2 {
        for k in 0..5 {
            assert_eq!(produce(&mut raw, "t", p, &one), (0, k * 3));
        }
    }
    // Partition max bytes below one batch: the first batch anyway (KIP-74), nothing more.
    let r = fetch_partitions(
        &raw.call(&kf::fetch_many("t", &[(0, 0, 10)], 1 << 20, 0, 1))
            .unwrap(),
    );
    assert_eq!(batch_bases(&r[0].3), vec![0]);
    assert_eq!(r[0].2, 15);
    // Two and a half batches' worth from offset 4 (inside the second batch): batches 3 and 6.
    let r = fetch_partitions(
        &raw.call(&kf::fetch_many("t", &[(0, 4, size * 5 / 2)], 1 << 20, 0, 1))
            .unwrap(),
    );
    assert_eq!(batch_bases(&r[0].3), vec![3, 6]);
    // max.bytes of three batches over two partitions: all three from the first, then nothing
    // from the second (only the response's first batch may exceed a limit).
    let r = fetch_partitions(
        &raw.call(&kf::fetch_many(
            "t",
            &[(0, 0, 1 << 20), (1, 0, 1 << 20)],
            size * 3,
            0,
            1,
        ))
        .unwrap(),
    );
    assert_eq!(batch_bases(&r[0].3), vec![0, 3, 6]);
    assert_eq!((r[1].0, r[1].1, r[1].2), (1, 0, 15));
    assert!(r[1].3.is_empty());
    // With room left, the second partition gets what fits.
    let r = fetch_partitions(
        &raw.call(&kf::fetch_many(
            "t",
            &[(0, 9, 1 << 20), (1, 0, 1 << 20)],
            size * 3,
            0,
            1,
        ))
        .unwrap(),
    );
    assert_eq!(batch_bases(&r[0].3), vec![9, 12]);
    assert_eq!(batch_bases(&r[1].3), vec![0]);
}

#[test]
fn a_node_taken_down_closes_its_idle_connections_and_new_ones_until_it_is_up() {
    let (b, addr) = start(1 << 20);
    let mut idle = Raw::connect(&addr);
    assert_eq!(produce(&mut idle, "t", 0, &batch(1, -1, -1, -1)), (0, 0));
    b.set_node_down(1, true);
    // The idle connection is closed without sending anything (read returns end of stream).
    assert!(idle.recv().is_none());
    let mut fresh = Raw::connect(&addr);
    assert!(fresh.recv().is_none());
    b.set_node_down(1, false);
    let mut again = Raw::connect(&addr);
    assert_eq!(produce(&mut again, "t", 0, &batch(1, -1, -1, -1)), (0, 1));
}
