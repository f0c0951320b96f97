//! The aggregation format and its size accounting, by example and by property.

use proptest::prelude::*;

use super::*;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn limits(max_count: u64, max_bytes: usize) -> AggregateLimits {
    AggregateLimits {
        max_count,
        max_bytes,
        max_record_bytes: MIB,
    }
}

fn record(key: &str, ehk: Option<u128>, data: &[u8]) -> UserRecord {
    UserRecord {
        partition_key: key.into(),
        explicit_hash_key: ehk,
        data: Bytes::copy_from_slice(data),
        ack: None,
    }
}

#[test]
fn aggregate_has_magic_protobuf_and_md5_readable_by_the_kpl_schema() {
    let mut agg = Aggregator::new(limits(100, 51_200), Some(42));
    agg.try_add(record("a", None, b"one")).unwrap();
    agg.try_add(record("b", Some(7), b"two")).unwrap();
    agg.try_add(record("a", Some(7), b"")).unwrap();
    let predicted = agg.size();
    let out = agg.finish().unwrap();
    assert_eq!(out.data.len(), predicted);
    assert_eq!(&out.data[..4], &MAGIC);
    assert_eq!(out.partition_key, "a");
    assert_eq!(out.explicit_hash_key, Some(42));
    let body = &out.data[4..out.data.len() - 16];
    assert_eq!(
        &out.data[out.data.len() - 16..],
        Md5::digest(body).as_slice()
    );

    use prost::Message;
    let decoded = proto::AggregatedRecord::decode(body).unwrap();
    assert_eq!(decoded.partition_key_table, ["a", "b"]);
    assert_eq!(decoded.explicit_hash_key_table, ["7"]);
    let indexes: Vec<_> = decoded
        .records
        .iter()
        .map(|r| (r.partition_key_index, r.explicit_hash_key_index))
        .collect();
    assert_eq!(indexes, [(0, None), (1, Some(0)), (0, Some(0))]);
    // proto2 `required`: index 0 is written, not elided.
    assert!(body.windows(2).any(|w| w == [TAG_PARTITION_KEY_INDEX, 0]));
}

#[test]
fn a_lone_record_goes_out_raw() {
    let mut agg = Aggregator::new(limits(100, 51_200), Some(99));
    agg.try_add(record("k", Some(5), b"payload")).unwrap();
    let out = agg.finish().unwrap();
    assert_eq!(&out.data[..], b"payload");
    assert_eq!(out.partition_key, "k");
    assert_eq!(out.explicit_hash_key, Some(5));
    assert!(!out.is_aggregated());
    assert!(Aggregator::new(limits(1, 1), None).finish().is_none());
}

#[test]
fn count_and_size_limits_close_the_aggregate() {
    let mut agg = Aggregator::new(limits(2, 51_200), None);
    agg.try_add(record("a", None, b"1")).unwrap();
    agg.try_add(record("a", None, b"2")).unwrap();
    assert!(agg.try_add(record("a", None, b"3")).is_err());

    let mut agg = Aggregator::new(limits(100, 100), None);
    agg.try_add(record("a", None, &[0; 40])).unwrap();
    let back = agg.try_add(record("a", None, &[0; 40])).unwrap_err();
    assert_eq!(back.data.len(), 40);
    assert!(agg.size() <= 100);
}

#[test]
fn the_partition_key_counts_against_the_one_mib_record_limit() {
    let key = "k".repeat(256);
    let lim = limits(u64::MAX, MIB);
    let mut agg = Aggregator::new(lim, None);
    agg.try_add(record(&key, None, &[1; 10])).unwrap();
    // Fill to exactly the limit, then one byte more must not fit.
    let room = MIB - key.len() - agg.size();
    let mut probe = record(&key, None, &vec![0; room]);
    while agg.size() + agg.size_increase(&probe) > MIB - key.len() {
        probe.data = probe.data.slice(1..);
    }
    agg.try_add(probe).unwrap();
    let out_size = agg.size();
    assert!(out_size + key.len() <= MIB);
    assert!(agg.try_add(record(&key, None, &[0; 8])).is_err());
}

#[test]
fn varint_lengths_match_encoding() {
    for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        assert_eq!(buf.len(), varint_len(v), "{v}");
    }
    for v in [0u128, 9, 10, 99, 100, u128::MAX] {
        assert_eq!(decimal_len(v), v.to_string().len());
    }
}

proptest! {
    /// The computed check agrees with actually adding the record to an empty aggregate.
    #[test]
    fn fits_alone_agrees_with_an_empty_aggregate(
        record in arb_record(),
        max_bytes in 1usize..MIB,
        max_record_bytes in 1024usize..=MIB,
    ) {
        let lim = AggregateLimits { max_count: u64::MAX, max_bytes, max_record_bytes };
        let fits = Aggregator::new(lim, None).try_add(record.clone()).is_ok();
        prop_assert_eq!(Aggregator::fits_alone(lim, &record), fits);
    }
}

fn arb_record() -> impl Strategy<Value = UserRecord> {
    (
        // Partition keys of 1..=256 characters, some multi-byte, drawn from a small pool so
        // that keys repeat within an aggregate.
        prop_oneof![
            (0u8..20).prop_map(|i| format!("key-{i}")),
            "[a-zé€]{1,256}".prop_map(|s| s.chars().take(256).collect::<String>()),
        ],
        proptest::option::weighted(0.2, any::<u128>()),
        prop_oneof![
            8 => 0usize..2 * KIB,
            2 => 2 * KIB..80 * KIB,
            1 => 200 * KIB..MIB,
        ],
    )
        .prop_map(|(key, ehk, len)| UserRecord {
            partition_key: key,
            explicit_hash_key: ehk,
            data: Bytes::from(vec![0xAB; len]),
            ack: None,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Feeds records the way the producer does and checks every aggregate against every limit,
    /// its predicted size against its real size, and its content against what went in.
    #[test]
    fn aggregates_never_exceed_limits_and_keep_every_record(
        records in proptest::collection::vec(arb_record(), 1..60),
        max_bytes in prop_oneof![Just(51_200usize), 1_000usize..MIB, Just(MIB)],
        max_record_bytes in prop_oneof![Just(MIB), 64 * KIB..MIB],
        max_count in prop_oneof![Just(u64::MAX), 1u64..10],
    ) {
        let lim = AggregateLimits { max_count, max_bytes, max_record_bytes };
        let mut agg = Aggregator::new(lim, Some(1));
        let mut finished = Vec::new();
        let mut expected = Vec::new();
        for r in records {
            if !Aggregator::fits_alone(lim, &r) {
                continue; // the producer sends these raw
            }
            expected.push(r.clone());
            if let Err(r) = agg.try_add(r) {
                let sizes = (agg.size(), agg.len());
                let full = std::mem::replace(&mut agg, Aggregator::new(lim, Some(1)));
                finished.push((sizes, full.finish().unwrap()));
                agg.try_add(r).expect("fits an empty aggregate");
            }
        }
        let sizes = (agg.size(), agg.len());
        if let Some(last) = agg.finish() {
            finished.push((sizes, last));
        }
        let mut got = Vec::new();
        for ((predicted, count), out) in finished {
            prop_assert!(count as u64 <= max_count);
            prop_assert_eq!(out.user_records.len(), count);
            prop_assert!(out.data.len() + out.partition_key.len() <= max_record_bytes.min(MIB));
            if count > 1 {
                prop_assert_eq!(out.data.len(), predicted);
                prop_assert!(out.data.len() <= max_bytes);
                let decoded = deaggregate(&out.data).unwrap();
                for ((pk, ehk, data), original) in decoded.iter().zip(&out.user_records) {
                    prop_assert_eq!(pk, &original.partition_key);
                    prop_assert_eq!(ehk.clone(), original.explicit_hash_key.map(|h| h.to_string()));
                    prop_assert_eq!(data, &original.data);
                }
                prop_assert_eq!(decoded.len(), count);
            }
            got.extend(out.user_records);
        }
        prop_assert_eq!(got, expected);
    }
}

/// A few user records of `lens` bytes, each byte derived from its position and `seed`.
fn records_of(seed: u8, lens: &[usize]) -> Vec<UserRecord> {
    lens.iter()
        .enumerate()
        .map(|(i, &len)| {
            let data: Vec<u8> = (0..len)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed ^ i as u8))
                .collect();
            record(&format!("k{}", i % 3), None, &data)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sealing a batch together gives each aggregate the MD5 that md-5 computes for it alone,
    /// whatever the number of aggregates (SIMD lanes filled or not) and their lengths (every
    /// padding case of the last 64-byte block); raw records in the batch are left as they are,
    /// and the billed size is the same before and after.
    #[test]
    fn a_sealed_batch_carries_each_aggregates_own_md5(
        batch in proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(prop_oneof![0usize..200, 200usize..5_000], 1..6)),
            1..40,
        ),
    ) {
        let mut records: Vec<KinesisRecord> = batch
            .iter()
            .map(|(seed, lens)| {
                let mut agg = Aggregator::new(limits(100, MIB), None);
                for r in records_of(*seed, lens) {
                    agg.try_add(r).unwrap();
                }
                agg.finish_unsealed().unwrap()
            })
            .collect();
        let unsealed: Vec<(bool, Bytes, usize)> = records
            .iter()
            .map(|r| (r.digest_pending, r.data.clone(), r.billed_size()))
            .collect();
        seal(&mut records);
        for (record, (pending, before, billed)) in records.iter().zip(unsealed) {
            prop_assert!(!record.digest_pending);
            prop_assert_eq!(record.billed_size(), billed);
            if pending {
                prop_assert_eq!(&record.data[..before.len()], &before[..]);
                let digest = Md5::digest(&before[MAGIC.len()..]);
                prop_assert_eq!(&record.data[before.len()..], digest.as_slice());
                prop_assert!(deaggregate(&record.data).is_ok());
            } else {
                prop_assert_eq!(&record.data, &before);
            }
        }
    }
}

#[test]
fn the_batcher_hands_out_sealed_batches() {
    use crate::kpl::batcher::Batcher;
    let mut batcher = Batcher::new(3, MIB);
    let mut ready = Vec::new();
    for seed in 0..4u8 {
        let mut agg = Aggregator::new(limits(100, MIB), None);
        for r in records_of(seed, &[10, 70, 130]) {
            agg.try_add(r).unwrap();
        }
        batcher.push(agg.finish_unsealed().unwrap(), &mut ready);
    }
    let rest = batcher.take().unwrap();
    assert_eq!((ready.len(), rest.records.len()), (1, 1));
    for record in ready.iter().flat_map(|b| &b.records).chain(&rest.records) {
        assert!(!record.digest_pending);
        assert_eq!(deaggregate(&record.data).unwrap().len(), 3);
    }
}
