//! Per-signal grouping and splitting: traces, metrics and logs each as a [`Unit`].

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, ResourceMetrics, ScopeMetrics, metric::Data,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::{Encoded, RecordFormat, Unit, fit, key_from_text, random_key};
use crate::config::{Encoding, PartitionKey, Signal};

fn encode_message<M: Message + serde::Serialize>(message: &M, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::OtlpProto => message.encode_to_vec(),
        Encoding::OtlpJson => serde_json::to_vec(message).expect("OTLP messages serialise"),
    }
}

/// The partition key for a resource in random or attribute mode.
fn resource_key(resource: Option<&Resource>, mode: &PartitionKey) -> String {
    let PartitionKey::Attribute(name) = mode else {
        return random_key();
    };
    let value = resource
        .into_iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| &kv.key == name)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref());
    match value {
        Some(AnyValue::StringValue(s)) => key_from_text(s),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => random_key(),
    }
}

fn trace_key(trace_id: &[u8]) -> String {
    if trace_id.iter().all(|b| *b == 0) {
        random_key()
    } else {
        hex::encode(trace_id)
    }
}

/// Cuts a list in two halves; `None` when it has fewer than two elements.
fn halves<T>(mut items: Vec<T>) -> Option<(Vec<T>, Vec<T>)> {
    if items.len() < 2 {
        return None;
    }
    let back = items.split_off(items.len() / 2);
    Some((items, back))
}

// ---------------------------------------------------------------- traces

impl Unit for ResourceSpans {
    fn items(&self) -> u64 {
        self.scope_spans.iter().map(|s| s.spans.len() as u64).sum()
    }

    fn split(mut self) -> Option<(Self, Self)> {
        if self.scope_spans.len() > 1 {
            let (a, b) = halves(std::mem::take(&mut self.scope_spans))?;
            let mut other = self.clone();
            self.scope_spans = a;
            other.scope_spans = b;
            return Some((self, other));
        }
        let mut scope = self.scope_spans.pop()?;
        let (a, b) = halves(std::mem::take(&mut scope.spans))?;
        let mut other = self.clone();
        let mut other_scope = scope.clone();
        scope.spans = a;
        other_scope.spans = b;
        self.scope_spans = vec![scope];
        other.scope_spans = vec![other_scope];
        Some((self, other))
    }

    fn encode(&self, encoding: Encoding) -> Vec<u8> {
        encode_message(
            &ExportTraceServiceRequest {
                resource_spans: vec![self.clone()],
            },
            encoding,
        )
    }

    fn signal() -> Signal {
        Signal::Traces
    }
}

/// Traces to user records. In trace-id mode each record holds the spans of one trace only.
pub fn traces(request: ExportTraceServiceRequest, format: &RecordFormat) -> Encoded {
    let mut out = Encoded::default();
    for resource_spans in request.resource_spans {
        out.items += resource_spans.items();
        if format.partition_key != PartitionKey::TraceId {
            let key = resource_key(resource_spans.resource.as_ref(), &format.partition_key);
            fit(resource_spans, key, format, &mut out);
            continue;
        }
        let ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        } = resource_spans;
        let mut by_trace: BTreeMap<Vec<u8>, Vec<ScopeSpans>> = BTreeMap::new();
        for scope in scope_spans {
            let mut spans_by_trace: BTreeMap<Vec<u8>, Vec<Span>> = BTreeMap::new();
            let ScopeSpans {
                scope: instrumentation_scope,
                spans,
                schema_url: scope_schema_url,
            } = scope;
            for span in spans {
                spans_by_trace
                    .entry(span.trace_id.clone())
                    .or_default()
                    .push(span);
            }
            for (trace_id, spans) in spans_by_trace {
                by_trace.entry(trace_id).or_default().push(ScopeSpans {
                    scope: instrumentation_scope.clone(),
                    spans,
                    schema_url: scope_schema_url.clone(),
                });
            }
        }
        for (trace_id, scope_spans) in by_trace {
            let unit = ResourceSpans {
                resource: resource.clone(),
                scope_spans,
                schema_url: schema_url.clone(),
            };
            fit(unit, trace_key(&trace_id), format, &mut out);
        }
    }
    out
}

// ---------------------------------------------------------------- metrics

fn data_points(metric: &Metric) -> u64 {
    match &metric.data {
        Some(Data::Gauge(g)) => g.data_points.len() as u64,
        Some(Data::Sum(s)) => s.data_points.len() as u64,
        Some(Data::Histogram(h)) => h.data_points.len() as u64,
        Some(Data::ExponentialHistogram(h)) => h.data_points.len() as u64,
        Some(Data::Summary(s)) => s.data_points.len() as u64,
        None => 0,
    }
}

/// Halves one metric along its data points.
fn split_metric(mut metric: Metric) -> Option<(Metric, Metric)> {
    let mut other = metric.clone();
    macro_rules! cut {
        ($a:expr, $b:expr) => {{
            let (x, y) = halves(std::mem::take(&mut $a.data_points))?;
            $a.data_points = x;
            $b.data_points = y;
        }};
    }
    match (&mut metric.data, &mut other.data) {
        (Some(Data::Gauge(a)), Some(Data::Gauge(b))) => cut!(a, b),
        (Some(Data::Sum(a)), Some(Data::Sum(b))) => cut!(a, b),
        (Some(Data::Histogram(a)), Some(Data::Histogram(b))) => cut!(a, b),
        (Some(Data::ExponentialHistogram(a)), Some(Data::ExponentialHistogram(b))) => cut!(a, b),
        (Some(Data::Summary(a)), Some(Data::Summary(b))) => cut!(a, b),
        _ => return None,
    }
    Some((metric, other))
}

impl Unit for ResourceMetrics {
    fn items(&self) -> u64 {
        self.scope_metrics
            .iter()
            .flat_map(|s| &s.metrics)
            .map(data_points)
            .sum()
    }

    fn split(mut self) -> Option<(Self, Self)> {
        if self.scope_metrics.len() > 1 {
            let (a, b) = halves(std::mem::take(&mut self.scope_metrics))?;
            let mut other = self.clone();
            self.scope_metrics = a;
            other.scope_metrics = b;
            return Some((self, other));
        }
        let mut scope: ScopeMetrics = self.scope_metrics.pop()?;
        let (a, b) = if scope.metrics.len() > 1 {
            halves(std::mem::take(&mut scope.metrics))?
        } else {
            let (x, y) = split_metric(scope.metrics.pop()?)?;
            (vec![x], vec![y])
        };
        let mut other = self.clone();
        let mut other_scope = scope.clone();
        scope.metrics = a;
        other_scope.metrics = b;
        self.scope_metrics = vec![scope];
        other.scope_metrics = vec![other_scope];
        Some((self, other))
    }

    fn encode(&self, encoding: Encoding) -> Vec<u8> {
        encode_message(
            &ExportMetricsServiceRequest {
                resource_metrics: vec![self.clone()],
            },
            encoding,
        )
    }

    fn signal() -> Signal {
        Signal::Metrics
    }
}

pub fn metrics(request: ExportMetricsServiceRequest, format: &RecordFormat) -> Encoded {
    let mut out = Encoded::default();
    for resource_metrics in request.resource_metrics {
        out.items += resource_metrics.items();
        let key = resource_key(resource_metrics.resource.as_ref(), &format.partition_key);
        fit(resource_metrics, key, format, &mut out);
    }
    out
}

// ---------------------------------------------------------------- logs

impl Unit for ResourceLogs {
    fn items(&self) -> u64 {
        self.scope_logs
            .iter()
            .map(|s| s.log_records.len() as u64)
            .sum()
    }

    fn split(mut self) -> Option<(Self, Self)> {
        if self.scope_logs.len() > 1 {
            let (a, b) = halves(std::mem::take(&mut self.scope_logs))?;
            let mut other = self.clone();
            self.scope_logs = a;
            other.scope_logs = b;
            return Some((self, other));
        }
        let mut scope = self.scope_logs.pop()?;
        let (a, b) = halves(std::mem::take(&mut scope.log_records))?;
        let mut other = self.clone();
        let mut other_scope = scope.clone();
        scope.log_records = a;
        other_scope.log_records = b;
        self.scope_logs = vec![scope];
        other.scope_logs = vec![other_scope];
        Some((self, other))
    }

    fn encode(&self, encoding: Encoding) -> Vec<u8> {
        encode_message(
            &ExportLogsServiceRequest {
                resource_logs: vec![self.clone()],
            },
            encoding,
        )
    }

    fn signal() -> Signal {
        Signal::Logs
    }
}

/// Logs to user records. In trace-id mode, log records of one trace share a record and key;
/// those without a trace id are grouped under a random key.
pub fn logs(request: ExportLogsServiceRequest, format: &RecordFormat) -> Encoded {
    let mut out = Encoded::default();
    for resource_logs in request.resource_logs {
        out.items += resource_logs.items();
        if format.partition_key != PartitionKey::TraceId {
            let key = resource_key(resource_logs.resource.as_ref(), &format.partition_key);
            fit(resource_logs, key, format, &mut out);
            continue;
        }
        let ResourceLogs {
            resource,
            scope_logs,
            schema_url,
        } = resource_logs;
        let mut by_trace: BTreeMap<Vec<u8>, Vec<ScopeLogs>> = BTreeMap::new();
        for scope in scope_logs {
            let mut records_by_trace: BTreeMap<Vec<u8>, Vec<LogRecord>> = BTreeMap::new();
            let ScopeLogs {
                scope: instrumentation_scope,
                log_records,
                schema_url: scope_schema_url,
            } = scope;
            for record in log_records {
                records_by_trace
                    .entry(record.trace_id.clone())
                    .or_default()
                    .push(record);
            }
            for (trace_id, log_records) in records_by_trace {
                by_trace.entry(trace_id).or_default().push(ScopeLogs {
                    scope: instrumentation_scope.clone(),
                    log_records,
                    schema_url: scope_schema_url.clone(),
                });
            }
        }
        for (trace_id, scope_logs) in by_trace {
            let unit = ResourceLogs {
                resource: resource.clone(),
                scope_logs,
                schema_url: schema_url.clone(),
            };
            fit(unit, trace_key(&trace_id), format, &mut out);
        }
    }
    out
}
