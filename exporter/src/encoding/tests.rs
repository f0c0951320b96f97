//! Requests to records: keys, one resource per record, splitting, encodings, compression.

use std::io::Read;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::*;

fn format(partition_key: PartitionKey) -> RecordFormat {
    RecordFormat {
        encoding: Encoding::OtlpProto,
        compression: Compression::None,
        partition_key,
        max_record_bytes: 1024 * 1024,
    }
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(service.into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn span(trace: u8, id: u8, payload: usize) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: format!("span-{trace}-{id}-{}", "x".repeat(payload)),
        ..Default::default()
    }
}

fn trace_request(resources: &[(&str, Vec<Span>)]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: resources
            .iter()
            .map(|(service, spans)| ResourceSpans {
                resource: resource(service),
                scope_spans: vec![ScopeSpans {
                    spans: spans.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn decode_traces(record: &UserRecord) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(record.data.as_ref()).unwrap()
}

fn span_ids(request: &ExportTraceServiceRequest) -> Vec<Vec<u8>> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.span_id.clone())
        .collect()
}

#[test]
fn trace_id_keys_put_each_trace_in_records_of_its_own() {
    let request = trace_request(&[
        ("a", vec![span(1, 1, 0), span(2, 2, 0), span(1, 3, 0)]),
        ("b", vec![span(1, 4, 0)]),
    ]);
    let out = traces(request, &format(PartitionKey::TraceId));
    assert_eq!(out.items, 4);
    assert_eq!(out.rejected, 0);
    let mut seen = Vec::new();
    for record in &out.records {
        let decoded = decode_traces(record);
        assert_eq!(decoded.resource_spans.len(), 1, "one resource per record");
        for span in decoded
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            assert_eq!(record.partition_key, hex::encode(&span.trace_id));
            seen.push(span.span_id[0]);
        }
    }
    seen.sort();
    assert_eq!(seen, [1, 2, 3, 4]);
    assert_eq!(
        out.records.len(),
        3,
        "resource a: traces 1 and 2; resource b: trace 1"
    );
}

#[test]
fn random_and_attribute_keys_make_one_record_per_resource() {
    let request = trace_request(&[
        ("checkout", vec![span(1, 1, 0), span(2, 2, 0)]),
        ("cart", vec![span(3, 3, 0)]),
    ]);
    let out = traces(request.clone(), &format(PartitionKey::Random));
    assert_eq!(out.records.len(), 2);
    assert!(out.records.iter().all(|r| r.partition_key.len() == 32));
    assert_ne!(out.records[0].partition_key, out.records[1].partition_key);

    let out = traces(
        request,
        &format(PartitionKey::Attribute("service.name".into())),
    );
    let keys: Vec<_> = out
        .records
        .iter()
        .map(|r| r.partition_key.as_str())
        .collect();
    assert_eq!(keys, ["checkout", "cart"]);
}

#[test]
fn oversized_resources_are_split_down_to_single_spans_and_nothing_is_lost() {
    let spans: Vec<Span> = (0..40).map(|i| span(7, i, 900)).collect();
    let request = trace_request(&[("big", spans)]);
    let mut fmt = format(PartitionKey::TraceId);
    fmt.max_record_bytes = 4096;
    let out = traces(request, &fmt);
    assert_eq!(out.rejected, 0);
    assert!(out.records.len() >= 10, "{} records", out.records.len());
    let mut ids = Vec::new();
    for record in &out.records {
        assert!(record.data.len() + record.partition_key.len() <= 4096);
        ids.extend(span_ids(&decode_traces(record)));
    }
    ids.sort();
    assert_eq!(ids, (0..40).map(|i| vec![i; 8]).collect::<Vec<_>>());
}

#[test]
fn a_span_that_can_never_fit_is_rejected_and_counted() {
    let request = trace_request(&[("x", vec![span(1, 1, 10), span(1, 2, 8000)])]);
    let mut fmt = format(PartitionKey::TraceId);
    fmt.max_record_bytes = 4096;
    let out = traces(request, &fmt);
    assert_eq!(out.rejected, 1);
    assert!(out.rejection.unwrap().contains("traces"));
    assert_eq!(out.records.len(), 1);
    assert_eq!(span_ids(&decode_traces(&out.records[0])), [vec![1u8; 8]]);
}

#[test]
fn metrics_split_along_data_points_of_one_metric() {
    let points: Vec<NumberDataPoint> = (0..200)
        .map(|i| NumberDataPoint {
            time_unix_nano: i,
            value: Some(number_data_point::Value::AsInt(i as i64)),
            attributes: vec![KeyValue {
                key: "padding".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("p".repeat(50))),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("m"),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue.depth".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: points,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut fmt = format(PartitionKey::Random);
    fmt.max_record_bytes = 2048;
    let out = metrics(request, &fmt);
    assert_eq!((out.items, out.rejected), (200, 0));
    let mut times = Vec::new();
    for record in &out.records {
        assert!(record.data.len() + record.partition_key.len() <= 2048);
        let decoded = ExportMetricsServiceRequest::decode(record.data.as_ref()).unwrap();
        let metric = &decoded.resource_metrics[0].scope_metrics[0].metrics[0];
        assert_eq!(metric.name, "queue.depth");
        let Some(metric::Data::Gauge(g)) = &metric.data else {
            panic!()
        };
        times.extend(g.data_points.iter().map(|p| p.time_unix_nano));
    }
    times.sort();
    assert_eq!(times, (0..200).collect::<Vec<_>>());
}

#[test]
fn json_encoding_and_compression_round_trip() {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("svc"),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    trace_id: vec![0xab; 16],
                    span_id: vec![0xcd; 8],
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("hello".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let fmt = RecordFormat {
            encoding: Encoding::OtlpJson,
            compression,
            partition_key: PartitionKey::TraceId,
            max_record_bytes: 1024 * 1024,
        };
        let out = logs(request.clone(), &fmt);
        assert_eq!(out.records.len(), 1);
        assert_eq!(out.records[0].partition_key, "ab".repeat(16));
        let data = out.records[0].data.to_vec();
        let plain = match compression {
            Compression::None => data,
            Compression::Gzip => {
                let mut s = Vec::new();
                flate2::read::GzDecoder::new(&data[..])
                    .read_to_end(&mut s)
                    .unwrap();
                s
            }
            Compression::Zstd => zstd::decode_all(&data[..]).unwrap(),
        };
        let json: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        let record = &json["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(record["traceId"], "ab".repeat(16), "OTLP/JSON ids are hex");
        assert_eq!(record["spanId"], "cd".repeat(8));
        assert_eq!(record["body"]["stringValue"], "hello");
        let back: ExportLogsServiceRequest = serde_json::from_slice(&plain).unwrap();
        assert_eq!(back, request);
    }
}

/// Ids of the wrong length can never be stored as OTLP (a 200-byte trace id would also make a
/// partition key longer than Kinesis allows): refused up front with a reason, never
/// acknowledged and dropped later. Log records may omit their ids.
#[test]
fn items_with_ids_of_the_wrong_length_are_refused_with_a_reason() {
    let mut short = span(3, 3, 0);
    short.trace_id = vec![3; 2];
    let mut long = span(4, 4, 0);
    long.trace_id = vec![4; 200];
    let mut bad_span_id = span(5, 5, 0);
    bad_span_id.span_id = vec![5; 3];
    for key in [PartitionKey::TraceId, PartitionKey::Random] {
        let request = trace_request(&[(
            "a",
            vec![
                span(1, 1, 0),
                short.clone(),
                long.clone(),
                bad_span_id.clone(),
            ],
        )]);
        let out = traces(request, &format(key.clone()));
        assert_eq!(out.items, 4);
        assert_eq!(out.rejected, 3, "{key:?}");
        let reason = out.rejection.expect("a reason");
        assert!(reason.contains("must be"), "{reason}");
        let kept: Vec<_> = out
            .records
            .iter()
            .flat_map(|r| span_ids(&decode_traces(r)))
            .collect();
        assert_eq!(
            kept,
            vec![vec![1u8; 8]],
            "{key:?}: only the valid span is kept"
        );
    }

    let log = |trace_id: Vec<u8>, span_id: Vec<u8>| LogRecord {
        trace_id,
        span_id,
        ..Default::default()
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    log(vec![], vec![]),
                    log(vec![1; 16], vec![1; 8]),
                    log(vec![1; 5], vec![]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let out = logs(request, &format(PartitionKey::TraceId));
    assert_eq!((out.items, out.rejected), (3, 1));
    assert!(
        out.rejection
            .unwrap()
            .contains("trace_id must be 16 bytes, got 5")
    );
}
