//! OTLP export requests to user records: one resource's data per record, keyed, encoded,
//! compressed, and split at the finest unit that fits one Kinesis record.
//!
//! A consumer decodes every record with the standard OTLP classes: it is a complete
//! `Export*ServiceRequest` (protobuf or OTLP/JSON) holding exactly one resource entry.

pub mod decode;
pub mod raw;
mod signals;

use std::io::Write;

use crate::config::{Compression, Encoding, PartitionKey, Signal};
use crate::kpl::UserRecord;
use crate::kpl::record::MAX_PARTITION_KEY_CHARS;

pub use signals::{logs, metrics, traces};

/// How records are written for one exporter and signal.
#[derive(Debug, Clone)]
pub struct RecordFormat {
    pub encoding: Encoding,
    pub compression: Compression,
    pub partition_key: PartitionKey,
    /// Largest data plus partition key of one record (the Kinesis 1 MiB, or less).
    pub max_record_bytes: usize,
}

/// The user records made from one request, and what could not be made into any.
#[derive(Debug, Default)]
pub struct Encoded {
    pub records: Vec<UserRecord>,
    /// Items in each record, in the order of `records`.
    pub record_items: Vec<u64>,
    /// Items (spans, data points, log records) in the request.
    pub items: u64,
    /// Items that can never fit in a Kinesis record, even alone.
    pub rejected: u64,
    pub rejection: Option<String>,
}

/// One resource's worth of a signal, which can be cut into smaller pieces of the same kind.
pub(crate) trait Unit: Sized {
    /// Items (spans, data points, log records) inside.
    fn items(&self) -> u64;
    /// Halves along scopes, then along items; `None` for a single indivisible item.
    fn split(self) -> Option<(Self, Self)>;
    /// The whole export request carrying just this unit.
    fn encode(&self, encoding: Encoding) -> Vec<u8>;
    fn signal() -> Signal;
}

/// Encodes `unit` under `partition_key`, splitting it until every piece fits.
pub(crate) fn fit<U: Unit>(
    unit: U,
    partition_key: String,
    format: &RecordFormat,
    out: &mut Encoded,
) {
    let data = compress(unit.encode(format.encoding), format.compression);
    if data.len() + partition_key.len() <= format.max_record_bytes {
        out.records.push(UserRecord::new(partition_key, data));
        out.record_items.push(unit.items());
        return;
    }
    let items = unit.items();
    match unit.split() {
        Some((a, b)) => {
            fit(a, partition_key.clone(), format, out);
            fit(b, partition_key, format, out);
        }
        None => {
            out.rejected += items;
            out.rejection = Some(format!(
                "a single {} item encodes to {} bytes; a Kinesis record holds at most {}",
                U::signal().as_str(),
                data.len(),
                format.max_record_bytes - partition_key.len()
            ));
        }
    }
}

pub fn compress(data: Vec<u8>, compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => data,
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 4),
                flate2::Compression::default(),
            );
            encoder
                .write_all(&data)
                .expect("writing to a Vec cannot fail");
            encoder.finish().expect("writing to a Vec cannot fail")
        }
        Compression::Zstd => zstd::bulk::compress(&data, 3).expect("zstd compresses in memory"),
    }
}

/// A fresh random partition key: 32 hex digits, spreading records over all shards.
pub fn random_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A partition key from an attribute value, within Kinesis's 256 characters.
fn key_from_text(text: &str) -> String {
    if text.is_empty() {
        return random_key();
    }
    text.chars().take(MAX_PARTITION_KEY_CHARS).collect()
}

#[cfg(test)]
mod tests;
