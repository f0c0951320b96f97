//! The PutRecords request body (Kinesis's JSON protocol), written in one pass into a buffer
//! sized for it.
//!
//! The SDK's serializer copies each record's data twice (into a `Blob`, then a clone of it),
//! base64-encodes it into a temporary string and appends that to a body that grows by
//! doubling: 18% of the exporter's CPU at full speed (perf), and most of its page faults. The
//! body is signed and sent by [`super::put_records`].

use bytes::Bytes;
use std::io::Write;

use crate::kpl::record::KinesisRecord;

/// `{"StreamName":…,"Records":[{"Data":…,"PartitionKey":…,"ExplicitHashKey":…},…]}`, the
/// members Kinesis's PutRecords takes, with `Data` in standard base64.
pub fn put_records_body(stream: &str, records: &[KinesisRecord]) -> Bytes {
    let base64 = base64_simd::STANDARD;
    // Room for the members' names and quoting, and for keys that need escaping.
    let capacity = 32
        + 2 * stream.len()
        + records
            .iter()
            .map(|r| base64.encoded_length(r.data.len()) + 2 * r.partition_key.len() + 96)
            .sum::<usize>();
    let mut body = Vec::with_capacity(capacity);
    body.extend_from_slice(b"{\"StreamName\":");
    json_string(&mut body, stream);
    body.extend_from_slice(b",\"Records\":[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"Data\":\"");
        base64.encode_append(&record.data, &mut body);
        body.extend_from_slice(b"\",\"PartitionKey\":");
        json_string(&mut body, &record.partition_key);
        if let Some(hash_key) = record.explicit_hash_key {
            write!(body, ",\"ExplicitHashKey\":\"{hash_key}\"").expect("a Vec takes every write");
        }
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    Bytes::from(body)
}

fn json_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("a Vec takes every write");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kpl::record::UserRecord;
    use base64::Engine;
    use serde_json::{Value, json};

    fn record(key: &str, hash_key: Option<u128>, data: &[u8]) -> KinesisRecord {
        KinesisRecord::raw(UserRecord {
            partition_key: key.into(),
            explicit_hash_key: hash_key,
            data: Bytes::copy_from_slice(data),
            ack: None,
        })
    }

    #[test]
    fn the_body_is_the_put_records_request_as_json() {
        let records = [
            record("plain", None, b"first record"),
            record(
                "quote \" backslash \\ newline \n é",
                Some(u128::MAX),
                &[0, 255, 7],
            ),
            record("k", Some(0), b""),
        ];
        let body = put_records_body("stream \"x\"", &records);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        assert_eq!(
            parsed,
            json!({
                "StreamName": "stream \"x\"",
                "Records": [
                    {"Data": b64(b"first record"), "PartitionKey": "plain"},
                    {"Data": b64(&[0, 255, 7]), "PartitionKey": "quote \" backslash \\ newline \n é",
                     "ExplicitHashKey": u128::MAX.to_string()},
                    {"Data": "", "PartitionKey": "k", "ExplicitHashKey": "0"},
                ],
            })
        );
    }

    #[test]
    fn the_buffer_is_sized_once() {
        let data = vec![0xA5; 50_000];
        let records: Vec<_> = (0..100)
            .map(|i| record(&format!("key-{i}"), Some(i), &data))
            .collect();
        let body = put_records_body("s", &records);
        let vec = Vec::from(body.clone());
        assert!(vec.capacity() >= body.len());
        assert!(
            vec.capacity() < body.len() + body.len() / 10,
            "{} for {}",
            vec.capacity(),
            body.len()
        );
    }
}
