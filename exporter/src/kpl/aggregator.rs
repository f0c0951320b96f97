//! The KPL aggregation format: many user records in one Kinesis record, sized exactly.
//!
//! Layout: magic `F3 89 9A C2`, a protobuf `AggregatedRecord`, then the MD5 of the protobuf
//! bytes. The protobuf is written field by field as records arrive (records first, key tables
//! last: protobuf readers accept fields in any order), so user data is copied once and the size
//! of the finished record is known before each add. The MD5 is left for [`seal`], which hashes
//! a whole PutRecords batch of aggregates at once, one per SIMD lane: MD5 cannot be sped up
//! within one message, and one message at a time it was a quarter of the exporter's CPU.

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashMap};

use super::record::{KinesisRecord, UserRecord};

pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
pub(super) const DIGEST_LEN: usize = 16;

// Field tags (field number << 3 | wire type 2 or 0).
const TAG_PARTITION_KEY_TABLE: u8 = 0x0A;
const TAG_EXPLICIT_HASH_KEY_TABLE: u8 = 0x12;
const TAG_RECORDS: u8 = 0x1A;
const TAG_PARTITION_KEY_INDEX: u8 = 0x08;
const TAG_EXPLICIT_HASH_KEY_INDEX: u8 = 0x10;
const TAG_DATA: u8 = 0x1A;

/// Limits one aggregate must respect.
#[derive(Debug, Clone, Copy)]
pub struct AggregateLimits {
    /// Most user records in one aggregate (`kpl.aggregate_batch_count`).
    pub max_count: u64,
    /// Most bytes of aggregate data (`kpl.aggregate_batch_size`), magic and digest included.
    pub max_bytes: usize,
    /// Most bytes of data plus partition key for any Kinesis record: 1 MiB, or less when a
    /// whole request (`kpl.batch_size`) is smaller.
    pub max_record_bytes: usize,
}

/// How one record joins an aggregate, worked out once and used to check and to encode.
struct Plan {
    key_hash: u64,
    pk_index: u64,
    new_pk: bool,
    ehk_index: Option<u64>,
    new_ehk: bool,
    inner_len: usize,
    growth: usize,
}

/// Builds one aggregated record.
pub struct Aggregator {
    limits: AggregateLimits,
    /// Routing of the finished record when it holds more than one user record.
    explicit_hash_key: Option<u128>,
    /// Magic followed by the encoded `records` fields.
    body: Vec<u8>,
    /// Encoded key-table fields, appended to `body` on finish.
    tables: Vec<u8>,
    /// Partition-key table indexes, looked up by key text without copying it: each entry is
    /// (table index, position in `user_records` of the first record with that key).
    partition_keys: HashTable<(u64, usize)>,
    explicit_hash_keys: FxHashMap<u128, u64>,
    user_records: Vec<UserRecord>,
}

impl Aggregator {
    pub fn new(limits: AggregateLimits, explicit_hash_key: Option<u128>) -> Self {
        Aggregator::with_capacity(limits, explicit_hash_key, 0, 0)
    }

    fn with_capacity(
        limits: AggregateLimits,
        explicit_hash_key: Option<u128>,
        records: usize,
        keys: usize,
    ) -> Self {
        let mut body = Vec::with_capacity(limits.max_bytes.min(64 * 1024));
        body.extend_from_slice(&MAGIC);
        Aggregator {
            limits,
            explicit_hash_key,
            body,
            tables: Vec::new(),
            partition_keys: HashTable::with_capacity(keys),
            explicit_hash_keys: FxHashMap::default(),
            user_records: Vec::with_capacity(records),
        }
    }

    /// An empty aggregate for the same route, sized like this one was: aggregates of one
    /// shard tend to look alike, and growing tables record by record is measurable.
    pub fn successor(&self) -> Aggregator {
        Aggregator::with_capacity(
            self.limits,
            self.explicit_hash_key,
            self.user_records.len(),
            self.partition_keys.len(),
        )
    }

    fn key_hash(partition_key: &str) -> u64 {
        FxBuildHasher.hash_one(partition_key)
    }

    fn find_partition_key(&self, hash: u64, partition_key: &str) -> Option<u64> {
        self.partition_keys
            .find(hash, |&(_, first)| {
                self.user_records[first].partition_key == partition_key
            })
            .map(|&(index, _)| index)
    }

    pub fn is_empty(&self) -> bool {
        self.user_records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.user_records.len()
    }

    /// Size of the finished aggregate's data right now.
    pub fn size(&self) -> usize {
        self.body.len() + self.tables.len() + DIGEST_LEN
    }

    /// Largest data size allowed: the configured size, and the record limit less the
    /// partition key the aggregate is sent with (the first user record's).
    fn max_size(&self, first_partition_key_len: usize) -> usize {
        self.limits.max_bytes.min(
            self.limits
                .max_record_bytes
                .saturating_sub(first_partition_key_len),
        )
    }

    /// Where `record`'s keys sit (or would sit) in the key tables, and how many bytes adding
    /// it would add to the aggregate.
    fn plan(&self, record: &UserRecord) -> Plan {
        let key_hash = Self::key_hash(&record.partition_key);
        let known_pk = self.find_partition_key(key_hash, &record.partition_key);
        let pk_index = known_pk.unwrap_or(self.partition_keys.len() as u64);
        let mut growth = match known_pk {
            Some(_) => 0,
            None => field_len(record.partition_key.len()),
        };
        let mut new_ehk = false;
        let ehk_index = record.explicit_hash_key.map(|ehk| {
            self.explicit_hash_keys
                .get(&ehk)
                .copied()
                .unwrap_or_else(|| {
                    new_ehk = true;
                    growth += field_len(decimal_len(ehk));
                    self.explicit_hash_keys.len() as u64
                })
        });
        let inner_len = record_inner_len(pk_index, ehk_index, record.data.len());
        Plan {
            key_hash,
            pk_index,
            new_pk: known_pk.is_none(),
            ehk_index,
            new_ehk,
            inner_len,
            growth: growth + field_len(inner_len),
        }
    }

    /// Bytes that adding `record` would add to the aggregate.
    pub fn size_increase(&self, record: &UserRecord) -> usize {
        self.plan(record).growth
    }

    /// Whether `record` fits alone in an empty aggregate at all; if not it must travel raw.
    pub fn fits_alone(limits: AggregateLimits, record: &UserRecord) -> bool {
        // What an empty aggregate would hold: framing, one key-table entry of each kind, one
        // record. Computed, not built: this runs for every user record.
        let ehk_index = record.explicit_hash_key.map(|_| 0);
        let size = MAGIC.len()
            + DIGEST_LEN
            + field_len(record.partition_key.len())
            + record
                .explicit_hash_key
                .map_or(0, |h| field_len(decimal_len(h)))
            + field_len(record_inner_len(0, ehk_index, record.data.len()));
        let max = limits.max_bytes.min(
            limits
                .max_record_bytes
                .saturating_sub(record.partition_key.len()),
        );
        size <= max
    }

    /// Adds `record` if it fits within the limits; gives it back otherwise.
    pub fn try_add(&mut self, record: UserRecord) -> Result<(), UserRecord> {
        if self.user_records.len() as u64 >= self.limits.max_count {
            return Err(record);
        }
        let first_key_len = self
            .user_records
            .first()
            .map_or(record.partition_key.len(), |r| r.partition_key.len());
        let plan = self.plan(&record);
        if self.size() + plan.growth > self.max_size(first_key_len) {
            return Err(record);
        }
        if plan.new_pk {
            let first = self.user_records.len();
            let records = &self.user_records;
            self.partition_keys
                .insert_unique(plan.key_hash, (plan.pk_index, first), |&(_, f)| {
                    // Rehashing reads keys of records already added; the new one is not among them.
                    Self::key_hash(&records[f].partition_key)
                });
            put_bytes_field(
                &mut self.tables,
                TAG_PARTITION_KEY_TABLE,
                record.partition_key.as_bytes(),
            );
        }
        if let (true, Some(ehk), Some(i)) = (plan.new_ehk, record.explicit_hash_key, plan.ehk_index)
        {
            self.explicit_hash_keys.insert(ehk, i);
            put_bytes_field(
                &mut self.tables,
                TAG_EXPLICIT_HASH_KEY_TABLE,
                ehk.to_string().as_bytes(),
            );
        }
        self.body.push(TAG_RECORDS);
        put_varint(&mut self.body, plan.inner_len as u64);
        self.body.push(TAG_PARTITION_KEY_INDEX);
        put_varint(&mut self.body, plan.pk_index);
        if let Some(i) = plan.ehk_index {
            self.body.push(TAG_EXPLICIT_HASH_KEY_INDEX);
            put_varint(&mut self.body, i);
        }
        put_bytes_field(&mut self.body, TAG_DATA, &record.data);
        self.user_records.push(record);
        Ok(())
    }

    /// Finishes the aggregate, checksum included. A lone user record is sent raw, as the KPL
    /// does. Returns `None` when empty.
    pub fn finish(self) -> Option<KinesisRecord> {
        let mut record = self.finish_unsealed()?;
        seal(std::slice::from_mut(&mut record));
        Some(record)
    }

    /// Finishes the aggregate but leaves its checksum to [`seal`] (`digest_pending`).
    pub fn finish_unsealed(self) -> Option<KinesisRecord> {
        match self.user_records.len() {
            0 => None,
            1 => Some(KinesisRecord::raw(
                self.user_records.into_iter().next().unwrap(),
            )),
            _ => {
                let Aggregator {
                    mut body,
                    tables,
                    user_records,
                    explicit_hash_key,
                    ..
                } = self;
                // Room for the digest now, so that sealing appends it without a copy.
                body.reserve_exact(tables.len() + DIGEST_LEN);
                body.extend_from_slice(&tables);
                Some(KinesisRecord {
                    partition_key: user_records[0].partition_key.clone(),
                    explicit_hash_key,
                    data: Bytes::from(body),
                    user_records,
                    predicted_shard: None,
                    after_throttle: false,
                    digest_pending: true,
                })
            }
        }
    }
}

/// Appends the MD5 checksum to every aggregate in `records` that still lacks it, hashing them
/// together (md5-many: 8 or 16 messages per SIMD instruction where the CPU has AVX2 or
/// AVX-512, one at a time otherwise).
pub fn seal(records: &mut [KinesisRecord]) {
    let pending: Vec<&[u8]> = records
        .iter()
        .filter(|r| r.digest_pending)
        .map(|r| &r.data[MAGIC.len()..])
        .collect();
    if pending.is_empty() {
        return;
    }
    let mut digests = vec![[0u8; DIGEST_LEN]; pending.len()];
    md5_many::md5_many(&pending, &mut digests);
    for (record, digest) in records
        .iter_mut()
        .filter(|r| r.digest_pending)
        .zip(&digests)
    {
        // The aggregate's buffer is its own and has room for the digest: no copy.
        let mut data = BytesMut::from(std::mem::take(&mut record.data));
        data.extend_from_slice(digest);
        record.data = data.freeze();
        record.digest_pending = false;
    }
}

fn record_inner_len(pk_index: u64, ehk_index: Option<u64>, data_len: usize) -> usize {
    1 + varint_len(pk_index) + ehk_index.map_or(0, |i| 1 + varint_len(i)) + field_len(data_len)
}

/// Encoded size of a length-delimited field with a one-byte tag.
fn field_len(payload: usize) -> usize {
    1 + varint_len(payload as u64) + payload
}

fn varint_len(v: u64) -> usize {
    // Seven bits per byte; zero still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn decimal_len(v: u128) -> usize {
    let mut n = 1;
    let mut x = v / 10;
    while x > 0 {
        n += 1;
        x /= 10;
    }
    n
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes_field(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    buf.push(tag);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Reads an aggregated record back into (partition key, explicit hash key, data) triples.
/// Used by tests and tools; consumers use the official deaggregators.
pub fn deaggregate(data: &[u8]) -> Result<Vec<(String, Option<String>, Bytes)>, String> {
    use prost::Message;
    if data.len() < MAGIC.len() + DIGEST_LEN || data[..4] != MAGIC {
        return Err("not an aggregated record".into());
    }
    let (proto, digest) = data[4..].split_at(data.len() - 4 - DIGEST_LEN);
    if Md5::digest(proto).as_slice() != digest {
        return Err("MD5 mismatch".into());
    }
    let aggregated = proto::AggregatedRecord::decode(proto).map_err(|e| e.to_string())?;
    aggregated
        .records
        .into_iter()
        .map(|r| {
            let pk = aggregated
                .partition_key_table
                .get(r.partition_key_index as usize)
                .ok_or("partition key index out of range")?
                .clone();
            let ehk = match r.explicit_hash_key_index {
                None => None,
                Some(i) => Some(
                    aggregated
                        .explicit_hash_key_table
                        .get(i as usize)
                        .ok_or("explicit hash key index out of range")?
                        .clone(),
                ),
            };
            Ok((pk, ehk, Bytes::from(r.data)))
        })
        .collect()
}

/// The KPL's `messages.proto`, for reading aggregates back.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AggregatedRecord {
        #[prost(string, repeated, tag = "1")]
        pub partition_key_table: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub explicit_hash_key_table: Vec<String>,
        #[prost(message, repeated, tag = "3")]
        pub records: Vec<Record>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Record {
        #[prost(uint64, required, tag = "1")]
        pub partition_key_index: u64,
        #[prost(uint64, optional, tag = "2")]
        pub explicit_hash_key_index: Option<u64>,
        #[prost(bytes = "vec", required, tag = "3")]
        pub data: Vec<u8>,
    }
}

#[cfg(test)]
mod tests;
