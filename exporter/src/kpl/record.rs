//! The two kinds of record the producer handles: what users put, and what Kinesis receives.

use bytes::Bytes;
use md5::{Digest, Md5};

use super::ack::Ack;
use super::limits::MAX_RECORD_BYTES;

/// Kinesis partition keys are 1 to 256 Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// One record as a user hands it to the producer.
#[derive(Debug)]
pub struct UserRecord {
    pub partition_key: String,
    /// Routes the record instead of the partition key's hash when set.
    pub explicit_hash_key: Option<u128>,
    pub data: Bytes,
    /// Settled when the record is stored or given up on, for a caller that waits for that.
    pub ack: Option<Ack>,
}

/// A copy carries no acknowledgement: only the record the caller handed over settles it.
impl Clone for UserRecord {
    fn clone(&self) -> Self {
        UserRecord {
            partition_key: self.partition_key.clone(),
            explicit_hash_key: self.explicit_hash_key,
            data: self.data.clone(),
            ack: None,
        }
    }
}

/// Records are equal when Kinesis would store the same thing.
impl PartialEq for UserRecord {
    fn eq(&self, other: &Self) -> bool {
        self.partition_key == other.partition_key
            && self.explicit_hash_key == other.explicit_hash_key
            && self.data == other.data
    }
}

impl Eq for UserRecord {}

impl UserRecord {
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        UserRecord {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
            ack: None,
        }
    }

    /// Settles the record's acknowledgement, if it has one: stored.
    pub fn settle_stored(&mut self) {
        if let Some(ack) = self.ack.take() {
            ack.stored();
        }
    }

    /// Settles the record's acknowledgement, if it has one: given up on.
    pub fn settle_dropped(&mut self, reason: &str, permanent: bool) {
        if let Some(ack) = self.ack.take() {
            ack.dropped(reason, permanent);
        }
    }

    /// Where Kinesis routes this record: its explicit hash key, else MD5 of the partition key
    /// read as a 128-bit big-endian integer.
    pub fn hash_key(&self) -> u128 {
        self.explicit_hash_key
            .unwrap_or_else(|| partition_key_hash(&self.partition_key))
    }

    /// Checks the limits Kinesis puts on every record; the error says which one is broken.
    pub fn check(&self) -> Result<(), InvalidRecord> {
        let chars = self.partition_key.chars().count();
        if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
            return Err(InvalidRecord::PartitionKeyLength(chars));
        }
        let size = self.data.len() + self.partition_key.len();
        if size > MAX_RECORD_BYTES {
            return Err(InvalidRecord::TooLarge(size));
        }
        Ok(())
    }
}

/// MD5 of a partition key as a 128-bit big-endian integer, as Kinesis computes it.
pub fn partition_key_hash(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Why a user record can never be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    #[error("partition key must be 1 to 256 characters, got {0}")]
    PartitionKeyLength(usize),
    #[error("record is {0} bytes with its partition key; Kinesis allows 1048576")]
    TooLarge(usize),
}

impl InvalidRecord {
    /// The drop-metric reason.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidRecord::PartitionKeyLength(_) => "invalid_partition_key",
            InvalidRecord::TooLarge(_) => "record_too_large",
        }
    }
}

/// One entry of a PutRecords request: a raw user record or an aggregate of several.
#[derive(Debug, Clone)]
pub struct KinesisRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<u128>,
    pub data: Bytes,
    /// The user records inside, kept so they can be counted, resent or reported when dropped.
    pub user_records: Vec<UserRecord>,
    /// The shard this record is expected to land on, when the shard map is known.
    pub predicted_shard: Option<std::sync::Arc<str>>,
    /// Sent again after Kinesis throttled it: counted against the producer's room for
    /// throttled records until its send settles.
    pub after_throttle: bool,
    /// An aggregate whose MD5 checksum is not yet at the end of `data`: it is appended when
    /// its batch leaves the batcher, many aggregates hashed at once ([`super::aggregator::seal`]).
    pub digest_pending: bool,
}

impl KinesisRecord {
    /// A user record sent as it is, without aggregation.
    pub fn raw(record: UserRecord) -> Self {
        KinesisRecord {
            partition_key: record.partition_key.clone(),
            explicit_hash_key: record.explicit_hash_key,
            data: record.data.clone(),
            user_records: vec![record],
            predicted_shard: None,
            after_throttle: false,
            digest_pending: false,
        }
    }

    /// Bytes Kinesis counts against its record and request limits: data plus partition key.
    pub fn billed_size(&self) -> usize {
        let digest = if self.digest_pending {
            super::aggregator::DIGEST_LEN
        } else {
            0
        };
        self.data.len() + digest + self.partition_key.len()
    }

    /// Where Kinesis routes this record (see [`UserRecord::hash_key`]).
    pub fn hash_key(&self) -> u128 {
        self.explicit_hash_key
            .unwrap_or_else(|| partition_key_hash(&self.partition_key))
    }

    pub fn is_aggregated(&self) -> bool {
        self.data.starts_with(&super::aggregator::MAGIC) && self.user_records.len() > 1
    }
}
