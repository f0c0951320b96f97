//! The records cut from the bytes are the decoded path's records, and the bytes are checked
//! exactly as strictly as prost decodes them.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;

use super::*;
use crate::config::Encoding;

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn value(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn span(trace: u8, id: u8) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: format!("span-{trace}-{id}"),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        flags: 1,
        attributes: vec![
            text("http.method", "GET"),
            // Not ASCII: UTF-8 is checked in full (ASCII has a faster check of its own).
            text("user.name", "Zoë ✓"),
            // Plain attributes of each kind the shortcut takes (raw.rs: plain_key_value).
            value("http.status_code", any_value::Value::IntValue(503)),
            value("retried", any_value::Value::BoolValue(true)),
            value("ratio", any_value::Value::DoubleValue(0.25)),
            KeyValue {
                key: "list".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::IntValue(-7)),
                        }],
                    })),
                }),
                ..Default::default()
            },
        ],
        events: vec![Event {
            time_unix_nano: 3,
            name: "event".into(),
            attributes: vec![text("k", "v")],
            dropped_attributes_count: 0,
        }],
        links: vec![Link {
            trace_id: vec![9; 16],
            span_id: vec![9; 8],
            flags: 256,
            ..Default::default()
        }],
        status: Some(Status {
            message: "fine".into(),
            code: 1,
        }),
        ..Default::default()
    }
}

/// Two resources; scopes holding spans of several traces each, interleaved.
fn request() -> ExportTraceServiceRequest {
    let scope = |name: &str, spans: Vec<Span>| ScopeSpans {
        scope: Some(InstrumentationScope {
            name: name.into(),
            version: "1.0".into(),
            ..Default::default()
        }),
        spans,
        schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", "checkout")],
                    ..Default::default()
                }),
                scope_spans: vec![
                    scope("a", vec![span(1, 1), span(2, 2), span(1, 3)]),
                    scope("b", vec![span(2, 4), span(3, 5)]),
                ],
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            },
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", "cart")],
                    ..Default::default()
                }),
                scope_spans: vec![scope("c", vec![span(1, 6)])],
                schema_url: String::new(),
            },
        ],
    }
}

fn format(partition_key: PartitionKey, max_record_bytes: usize) -> RecordFormat {
    RecordFormat {
        encoding: Encoding::OtlpProto,
        compression: Compression::None,
        partition_key,
        max_record_bytes,
    }
}

fn both_paths(request: &ExportTraceServiceRequest, format: &RecordFormat) -> (Encoded, Encoded) {
    let bytes = Bytes::from(request.encode_to_vec());
    let raw = traces(&split_traces(bytes).unwrap(), format);
    let decoded = crate::encoding::traces(request.clone(), format);
    (raw, decoded)
}

fn data(encoded: &Encoded) -> Vec<&[u8]> {
    encoded.records.iter().map(|r| r.data.as_ref()).collect()
}

#[test]
fn trace_id_records_are_the_decoded_paths_byte_for_byte() {
    let format = format(PartitionKey::TraceId, 1024 * 1024);
    let (raw, decoded) = both_paths(&request(), &format);
    assert_eq!(data(&raw), data(&decoded));
    let keys = |e: &Encoded| -> Vec<String> {
        e.records.iter().map(|r| r.partition_key.clone()).collect()
    };
    assert_eq!(keys(&raw), keys(&decoded));
    assert_eq!(raw.record_items, decoded.record_items);
    assert_eq!((raw.items, raw.rejected), (6, 0));
    assert_eq!(
        raw.records.len(),
        4,
        "traces 1, 2, 3 of the first resource, 1 of the second"
    );
}

#[test]
fn resource_records_are_the_decoded_paths_byte_for_byte() {
    for key in [
        PartitionKey::Random,
        PartitionKey::Attribute("service.name".into()),
    ] {
        let format = format(key.clone(), 1024 * 1024);
        let (raw, decoded) = both_paths(&request(), &format);
        assert_eq!(data(&raw), data(&decoded), "{key:?}");
        assert_eq!(raw.record_items, decoded.record_items);
        if key != PartitionKey::Random {
            assert_eq!(raw.records[0].partition_key, "checkout");
            assert_eq!(raw.records[1].partition_key, "cart");
        }
    }
}

#[test]
fn ids_of_the_wrong_length_are_refused_as_the_decoded_path_does() {
    let mut request = request();
    request.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![2; 2];
    request.resource_spans[0].scope_spans[1].spans[0].span_id = vec![];
    for key in [PartitionKey::TraceId, PartitionKey::Random] {
        let format = format(key.clone(), 1024 * 1024);
        let (raw, decoded) = both_paths(&request, &format);
        assert_eq!(
            (raw.items, raw.rejected, raw.rejection.clone()),
            (decoded.items, decoded.rejected, decoded.rejection.clone()),
            "{key:?}"
        );
        assert_eq!(raw.rejected, 2);
        let stored = |e: &Encoded| -> usize {
            e.records
                .iter()
                .map(|r| {
                    ExportTraceServiceRequest::decode(r.data.as_ref())
                        .unwrap()
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .map(|s| s.spans.len())
                        .sum::<usize>()
                })
                .sum()
        };
        assert_eq!(stored(&raw), 4, "{key:?}");
    }
}

#[test]
fn a_trace_over_one_record_is_split_as_the_decoded_path_splits_it() {
    // One byte short of the largest trace's record (plus its 32-character key).
    let (whole, _) = both_paths(&request(), &format(PartitionKey::TraceId, 1024 * 1024));
    let largest = whole.records.iter().map(|r| r.data.len()).max().unwrap();
    let limit = largest + 32 - 1;
    let (raw, decoded) = both_paths(&request(), &format(PartitionKey::TraceId, limit));
    assert!(
        raw.records.len() > whole.records.len(),
        "split: {}",
        raw.records.len()
    );
    assert_eq!(data(&raw), data(&decoded));
    assert!(raw.records.iter().all(|r| r.data.len() + 32 <= limit));
}

#[test]
fn compressed_records_decompress_to_the_decoded_paths() {
    let mut format = format(PartitionKey::TraceId, 1024 * 1024);
    format.compression = Compression::Zstd;
    let (raw, decoded) = both_paths(&request(), &format);
    let plain = |e: &Encoded| -> Vec<Vec<u8>> {
        e.records
            .iter()
            .map(|r| zstd::decode_all(r.data.as_ref()).unwrap())
            .collect()
    };
    assert_eq!(plain(&raw), plain(&decoded));
}

#[test]
fn a_deep_nesting_is_refused_like_prost_refuses_it() {
    assert!(recursion_limit().to_string().contains("recursion"));
    assert!(invalid_utf8().to_string().contains("UTF-8"));
}

/// A span's fixed-width field with too few bytes left in the span: refused, as prost refuses
/// it; with all its bytes, taken. (Random corruption rarely makes this case.)
#[test]
fn a_fixed_width_field_cut_short_is_refused_like_prost_refuses_it() {
    let delimited = |field: u8, inner: &[u8]| {
        let mut out = vec![field << 3 | 2, u8::try_from(inner.len()).unwrap()];
        out.extend_from_slice(inner);
        out
    };
    // start_time_unix_nano (7, fixed64) and flags (16, fixed32), with each byte count.
    for (key, width) in [(&[0x39][..], 8), (&[0x85, 0x01][..], 4)] {
        for len in 0..=width {
            let span = [key, &vec![0; len]].concat();
            let bytes = delimited(1, &delimited(2, &delimited(2, &span)));
            let ours = split_traces(Bytes::from(bytes.clone()));
            let prost = ExportTraceServiceRequest::decode(bytes.as_slice());
            assert_eq!(
                ours.is_ok(),
                len == width,
                "{key:?} with {len} bytes: {:?}",
                ours.err()
            );
            assert_eq!(
                prost.is_ok(),
                len == width,
                "prost, {key:?} with {len} bytes"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any corruption of a valid request: accepted by the split exactly when prost accepts it.
    #[test]
    fn the_bytes_are_checked_exactly_as_prost_decodes_them(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let mut bytes = request().encode_to_vec();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
            if bytes.is_empty() {
                break;
            }
        }
        let ours = split_traces(Bytes::from(bytes.clone()));
        let prost = ExportTraceServiceRequest::decode(bytes.as_slice());
        prop_assert_eq!(ours.is_ok(), prost.is_ok(), "ours {:?}, prost {:?}", ours.err(), prost.err());
        if let Ok(resources) = ours {
            // And what is cut from them decodes to what prost decoded.
            let format = format(PartitionKey::Random, usize::MAX / 2);
            let spans: usize = traces(&resources, &format)
                .records
                .iter()
                .map(|r| ExportTraceServiceRequest::decode(r.data.as_ref()).unwrap()
                    .resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum::<usize>())
                .sum();
            let valid: usize = prost.unwrap().resource_spans.iter().flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .filter(|s| s.trace_id.len() == 16 && s.span_id.len() == 8)
                .count();
            prop_assert_eq!(spans, valid);
        }
    }
}
