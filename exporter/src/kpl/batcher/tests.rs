//! Batches respect the record-count and byte limits of PutRecords, by property.

use proptest::prelude::*;

use super::*;
use crate::kpl::record::UserRecord;

proptest! {
    #[test]
    fn batches_respect_limits_and_keep_order(
        sizes in proptest::collection::vec((1usize..200_000, 1usize..256), 1..400),
        max_records in 1usize..=500,
        max_bytes in 200_256usize..=5 * 1024 * 1024,
    ) {
        let mut batcher = Batcher::new(max_records, max_bytes);
        let mut ready = Vec::new();
        for (i, &(data, key)) in sizes.iter().enumerate() {
            let mut record = KinesisRecord::raw(UserRecord::new(
                format!("{i:0>width$}", width = key),
                vec![0u8; data],
            ));
            record.partition_key = format!("{i:0>width$}", width = key);
            batcher.push(record, &mut ready);
        }
        ready.extend(batcher.take());
        let mut seen = 0usize;
        for batch in &ready {
            prop_assert!(!batch.records.is_empty());
            prop_assert!(batch.records.len() <= max_records);
            prop_assert!(batch.bytes <= max_bytes);
            let bytes: usize = batch.records.iter().map(|r| r.billed_size()).sum();
            prop_assert_eq!(bytes, batch.bytes);
            for r in &batch.records {
                prop_assert_eq!(r.partition_key.parse::<usize>().unwrap(), seen);
                seen += 1;
            }
        }
        prop_assert_eq!(seen, sizes.len());
    }
}
