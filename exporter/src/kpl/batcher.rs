//! Packs Kinesis records into PutRecords requests within the record-count and byte limits.
//! A batch leaves sealed: the checksums of its aggregates are computed together on the way out.

use super::aggregator::seal;
use super::record::KinesisRecord;

/// One PutRecords request's worth of records.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<KinesisRecord>,
    /// Data plus partition keys of every record: what Kinesis counts against its 5 MiB.
    pub bytes: usize,
}

impl Batch {
    pub fn user_record_count(&self) -> usize {
        self.records.iter().map(|r| r.user_records.len()).sum()
    }
}

/// Fills batches up to `max_records` entries and `max_bytes` bytes.
pub struct Batcher {
    max_records: usize,
    max_bytes: usize,
    current: Batch,
}

impl Batcher {
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Batcher {
            max_records,
            max_bytes,
            current: Batch::default(),
        }
    }

    /// Adds a record; full batches are pushed onto `ready`. A record must itself fit within
    /// `max_bytes` (the producer guarantees this by sizing aggregates below it).
    pub fn push(&mut self, record: KinesisRecord, ready: &mut Vec<Batch>) {
        let size = record.billed_size();
        debug_assert!(size <= self.max_bytes);
        if !self.current.records.is_empty() && self.current.bytes + size > self.max_bytes {
            ready.push(self.take_current());
        }
        self.current.bytes += size;
        self.current.records.push(record);
        if self.current.records.len() >= self.max_records {
            ready.push(self.take_current());
        }
    }

    /// The partly filled batch, if any.
    pub fn take(&mut self) -> Option<Batch> {
        (!self.current.records.is_empty()).then(|| self.take_current())
    }

    fn take_current(&mut self) -> Batch {
        let mut batch = std::mem::take(&mut self.current);
        seal(&mut batch.records);
        batch
    }

    pub fn is_empty(&self) -> bool {
        self.current.records.is_empty()
    }
}

#[cfg(test)]
mod tests;
