//! Decoding OTLP export requests with every list sized before it is filled. prost grows a
//! repeated field by doubling: 600k spans took a Vec of room for 1M, and while it grew, each
//! smaller copy too, which set the peak memory of large requests (ingress/memory.rs). Here
//! the resource entries, their scopes and the scopes' items are counted in the bytes first.
//! The result is exactly what `Message::decode` gives.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::bytes::Bytes;
use prost::encoding::{DecodeContext, decode_key, skip_field};
use prost::{DecodeError, Message};

use super::signals::Nested;

/// Field numbers of the repeated entries at each level, the same for every signal: resource
/// entries in a request, scopes in a resource entry, items in a scope.
const RESOURCES: u32 = 1;
const SCOPES: u32 = 2;
const ITEMS: u32 = 2;

pub fn traces(bytes: Bytes) -> Result<ExportTraceServiceRequest, DecodeError> {
    Ok(ExportTraceServiceRequest {
        resource_spans: resources(bytes)?,
    })
}

pub fn metrics(bytes: Bytes) -> Result<ExportMetricsServiceRequest, DecodeError> {
    Ok(ExportMetricsServiceRequest {
        resource_metrics: resources(bytes)?,
    })
}

pub fn logs(bytes: Bytes) -> Result<ExportLogsServiceRequest, DecodeError> {
    Ok(ExportLogsServiceRequest {
        resource_logs: resources(bytes)?,
    })
}

/// How often field `tag` occurs in one message's bytes (which are checked on the way).
fn count(mut bytes: Bytes, tag: u32) -> Result<usize, DecodeError> {
    let mut n = 0;
    while !bytes.is_empty() {
        let (field, wire_type) = decode_key(&mut bytes)?;
        n += usize::from(field == tag);
        skip_field(wire_type, field, &mut bytes, DecodeContext::default())?;
    }
    Ok(n)
}

/// The bytes of the length-delimited field at the front of `bytes` (no copy).
pub(super) fn delimited(
    wire_type: prost::encoding::WireType,
    bytes: &mut Bytes,
) -> Result<Bytes, DecodeError> {
    let mut field = Bytes::new();
    prost::encoding::bytes::merge(wire_type, &mut field, bytes, DecodeContext::default())?;
    Ok(field)
}

/// The request's resource entries (field 1); other fields are skipped, as prost does.
fn resources<R: Nested + Default>(bytes: Bytes) -> Result<Vec<R>, DecodeError> {
    let mut out = Vec::with_capacity(count(bytes.clone(), RESOURCES)?);
    for_each_entry(bytes, RESOURCES, |entry| {
        out.push(resource(entry)?);
        Ok(())
    })?;
    Ok(out)
}

/// Hands the bytes of each occurrence of the length-delimited field `tag` to `entry`; other
/// fields are checked and skipped, as prost does with fields it does not know.
pub(super) fn for_each_entry(
    mut bytes: Bytes,
    tag: u32,
    mut entry: impl FnMut(Bytes) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    while !bytes.is_empty() {
        let (field, wire_type) = decode_key(&mut bytes)?;
        if field == tag {
            entry(delimited(wire_type, &mut bytes)?)?;
        } else {
            skip_field(wire_type, field, &mut bytes, DecodeContext::default())?;
        }
    }
    Ok(())
}

fn resource<R: Nested + Default>(mut bytes: Bytes) -> Result<R, DecodeError> {
    let mut out = R::default();
    out.scopes().reserve_exact(count(bytes.clone(), SCOPES)?);
    while !bytes.is_empty() {
        let (field, wire_type) = decode_key(&mut bytes)?;
        if field == SCOPES {
            let scope_bytes = delimited(wire_type, &mut bytes)?;
            let mut scope = R::Scope::default();
            R::items(&mut scope).reserve_exact(count(scope_bytes.clone(), ITEMS)?);
            scope.merge(scope_bytes)?;
            out.scopes().push(scope);
        } else {
            out.merge_field(field, wire_type, &mut bytes, DecodeContext::default())?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn resource(name: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(name.into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn scope(name: &str) -> Option<InstrumentationScope> {
        Some(InstrumentationScope {
            name: name.into(),
            ..Default::default()
        })
    }

    fn sample_traces() -> ExportTraceServiceRequest {
        let span = |i: u8| Span {
            trace_id: vec![i; 16],
            span_id: vec![i; 8],
            name: format!("span-{i}"),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: ["a", "b"]
                .iter()
                .map(|r| ResourceSpans {
                    resource: resource(r),
                    scope_spans: (0..2)
                        .map(|s| ScopeSpans {
                            scope: scope(&format!("scope-{s}")),
                            spans: (0..3).map(|i| span(i + s)).collect(),
                            schema_url: "https://opentelemetry.io/schemas/1.0".into(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        }
    }

    fn sample_metrics() -> ExportMetricsServiceRequest {
        let point = NumberDataPoint {
            time_unix_nano: 7,
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource("m"),
                scope_metrics: vec![ScopeMetrics {
                    scope: scope("s"),
                    metrics: (0..2)
                        .map(|i| Metric {
                            name: format!("metric-{i}"),
                            data: Some(metric::Data::Gauge(Gauge {
                                data_points: vec![point.clone(); 3],
                            })),
                            ..Default::default()
                        })
                        .collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn sample_logs() -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource("l"),
                scope_logs: vec![ScopeLogs {
                    scope: scope("s"),
                    log_records: (0..4)
                        .map(|i| LogRecord {
                            time_unix_nano: i,
                            ..Default::default()
                        })
                        .collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    #[test]
    fn gives_what_prost_gives_and_sizes_lists_exactly() {
        let request = sample_traces();
        let bytes = Bytes::from(request.encode_to_vec());
        let decoded = traces(bytes.clone()).unwrap();
        assert_eq!(decoded, ExportTraceServiceRequest::decode(bytes).unwrap());
        assert_eq!(decoded, request);
        for resource in &decoded.resource_spans {
            for scope in &resource.scope_spans {
                assert_eq!(scope.spans.capacity(), scope.spans.len());
            }
        }
        let metrics_request = sample_metrics();
        let bytes = Bytes::from(metrics_request.encode_to_vec());
        assert_eq!(metrics(bytes).unwrap(), metrics_request);
        let logs_request = sample_logs();
        let bytes = Bytes::from(logs_request.encode_to_vec());
        assert_eq!(logs(bytes).unwrap(), logs_request);
    }

    #[test]
    fn unknown_fields_are_skipped_and_broken_bytes_refused() {
        let request = sample_traces();
        let mut bytes = request.encode_to_vec();
        // An unknown varint field 9 at the top level, as a newer client might send.
        bytes.extend_from_slice(&[9 << 3, 1]);
        assert_eq!(traces(Bytes::from(bytes.clone())).unwrap(), request);
        for cut in [1, bytes.len() / 2, bytes.len() - 3] {
            let broken = Bytes::from(bytes[..cut].to_vec());
            assert_eq!(
                traces(broken.clone()).is_err(),
                ExportTraceServiceRequest::decode(broken).is_err(),
                "cut at {cut}"
            );
        }
        assert!(traces(Bytes::from_static(&[0x0a, 0x05, 0x01])).is_err());
    }
}
