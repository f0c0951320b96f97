//! The Kinesis service limits the producer never exceeds.

/// Records in one PutRecords request.
pub const MAX_RECORDS_PER_REQUEST: usize = 500;
/// One record: data plus partition key.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// One PutRecords request: data plus partition keys of every entry.
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
