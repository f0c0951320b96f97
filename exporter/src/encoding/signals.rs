//! Per-signal grouping and splitting: traces, metrics and logs each as a [`Unit`].

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

/// The partition key for a resource in random or attribute mode.
pub(super) fn resource_key(resource: Option<&Resource>, mode: &PartitionKey) -> String {
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

pub(super) fn trace_key(trace_id: &[u8]) -> String {
    if trace_id.iter().all(|b| *b == 0) {
        random_key()
    } else {
        // `hex::encode` collects chars one by one: a percent of the CPU at 5k spans/s (perf).
        let mut key = vec![0; 2 * trace_id.len()];
        hex::encode_to_slice(trace_id, &mut key).expect("the buffer is twice the id");
        String::from_utf8(key).expect("hex digits are ASCII")
    }
}

/// OTLP ids have fixed lengths: a trace id 16 bytes, a span id 8 (log records may omit both).
pub(super) fn id_length_error(
    what: &str,
    field: &str,
    id: &[u8],
    len: usize,
    optional: bool,
) -> Option<String> {
    if id.len() == len || (optional && id.is_empty()) {
        return None;
    }
    Some(format!(
        "a {what}'s {field} must be {len} bytes, got {}",
        id.len()
    ))
}

/// Cuts a list in two halves; `None` when it has fewer than two elements.
fn halves<T>(mut items: Vec<T>) -> Option<(Vec<T>, Vec<T>)> {
    if items.len() < 2 {
        return None;
    }
    let back = items.split_off(items.len() / 2);
    Some((items, back))
}

// ---------------------------------------------------------------- the shape every signal shares

/// An OTLP resource entry: a resource holds scopes, a scope holds items (spans, metrics, log
/// records). Splitting and grouping by trace are written once against this shape.
pub(super) trait Nested: Clone + Message + serde::Serialize {
    type Scope: Clone + Message + Default;
    type Item: Default;
    const SIGNAL: Signal;

    fn resource(&self) -> Option<&Resource>;
    fn scopes(&mut self) -> &mut Vec<Self::Scope>;
    fn scopes_ref(&self) -> &[Self::Scope];
    fn items(scope: &mut Self::Scope) -> &mut Vec<Self::Item>;
    fn items_ref(scope: &Self::Scope) -> &[Self::Item];
    /// What one item counts as (a metric counts its data points).
    fn weight(_item: &Self::Item) -> u64 {
        1
    }
    /// Halves one item when it is all that is left (a metric along its data points).
    fn split_item(_item: Self::Item) -> Option<(Self::Item, Self::Item)> {
        None
    }
    /// The item's trace id, for signals that have one.
    fn trace_id(item: &Self::Item) -> Option<&[u8]>;
    /// Why the item can never be stored as OTLP (an id of the wrong length), if it cannot.
    fn invalid(_item: &Self::Item) -> Option<String> {
        None
    }
    /// The JSON name of the export request's one field (the resource entries).
    const REQUEST_FIELD: &'static str;
}

/// The whole export request carrying just `resource`, written from a borrow: every
/// Export*ServiceRequest has one field, number 1, repeated resource entries, so the request
/// is that field's tag and length followed by the entry (and in JSON, an object with it).
fn request_of<R: Nested>(resource: &R, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::OtlpProto => {
            let mut buf = Vec::with_capacity(prost::encoding::message::encoded_len(1, resource));
            prost::encoding::message::encode(1, resource, &mut buf);
            buf
        }
        Encoding::OtlpJson => {
            let mut buf = format!("{{\"{}\":[", R::REQUEST_FIELD).into_bytes();
            serde_json::to_writer(&mut buf, resource).expect("OTLP messages serialise");
            buf.extend_from_slice(b"]}");
            buf
        }
    }
}

impl<R: Nested> Unit for R {
    fn items(&self) -> u64 {
        self.scopes_ref()
            .iter()
            .flat_map(R::items_ref)
            .map(R::weight)
            .sum()
    }

    /// Halves along scopes, then along the one scope's items, then the one item.
    fn split(mut self) -> Option<(Self, Self)> {
        if self.scopes().len() > 1 {
            let (a, b) = halves(std::mem::take(self.scopes()))?;
            let mut other = self.clone();
            *self.scopes() = a;
            *other.scopes() = b;
            return Some((self, other));
        }
        let mut scope = self.scopes().pop()?;
        let mut items = std::mem::take(R::items(&mut scope));
        let (a, b) = if items.len() > 1 {
            halves(items)?
        } else {
            let (x, y) = R::split_item(items.pop()?)?;
            (vec![x], vec![y])
        };
        let mut other = self.clone();
        let mut other_scope = scope.clone();
        *R::items(&mut scope) = a;
        *R::items(&mut other_scope) = b;
        *self.scopes() = vec![scope];
        *other.scopes() = vec![other_scope];
        Some((self, other))
    }

    fn encode(&self, encoding: Encoding) -> Vec<u8> {
        request_of(self, encoding)
    }

    fn signal() -> Signal {
        R::SIGNAL
    }
}

/// Cuts one resource's items into one resource per trace (the same resource and scopes, only
/// that trace's items) and hands each to `each` as soon as it is made, in trace id order.
/// Only one trace's copy exists at a time and items are moved, not copied: a map holding every
/// trace's group at once cost many times the request's own size for requests of many small
/// traces. Ids were checked before (16 bytes, or empty for logs, which share one group).
fn for_each_trace<R: Nested>(mut resource: R, mut each: impl FnMut(&[u8], R)) {
    let mut scopes = std::mem::take(resource.scopes());
    let mut items: Vec<Vec<R::Item>> = scopes
        .iter_mut()
        .map(|scope| std::mem::take(R::items(scope)))
        .collect();
    // (trace id, scope, item) for every item, sorted: one allocation for the whole grouping.
    let mut order: Vec<([u8; 16], u32, u32)> = Vec::with_capacity(items.iter().map(Vec::len).sum());
    for (s, scope_items) in items.iter().enumerate() {
        for (i, item) in scope_items.iter().enumerate() {
            let id = R::trace_id(item).unwrap_or_default();
            order.push((id.try_into().unwrap_or_default(), s as u32, i as u32));
        }
    }
    order.sort_unstable();
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        let mut group = resource.clone();
        for in_scope in run.chunk_by(|a, b| a.1 == b.1) {
            let s = in_scope[0].1 as usize;
            let mut scope = scopes[s].clone();
            *R::items(&mut scope) = in_scope
                .iter()
                .map(|&(_, _, i)| std::mem::take(&mut items[s][i as usize]))
                .collect();
            group.scopes().push(scope);
        }
        each(&run[0].0, group);
    }
    // The emptied scopes, dropped here rather than cloned above with their items.
    scopes.clear();
}

/// Takes out the items that can never be stored (refused in the answer's partial_success,
/// never acknowledged and then dropped).
fn refuse_invalid<R: Nested>(resource: &mut R, out: &mut Encoded) {
    for scope in resource.scopes() {
        R::items(scope).retain(|item| match R::invalid(item) {
            None => true,
            Some(reason) => {
                out.rejected += R::weight(item);
                out.rejection = Some(reason);
                false
            }
        });
    }
}

/// Resources to user records: in trace-id mode (for signals with trace ids) one record per
/// trace, keyed by it; otherwise one per resource, keyed at random or by a resource attribute.
fn encode_resources<R: Nested>(resources: Vec<R>, format: &RecordFormat) -> Encoded {
    let mut out = Encoded::default();
    for mut resource in resources {
        out.items += resource.items();
        refuse_invalid(&mut resource, &mut out);
        let has_trace_ids = R::SIGNAL != Signal::Metrics;
        if format.partition_key == PartitionKey::TraceId && has_trace_ids {
            for_each_trace(resource, |trace_id, unit| {
                fit(unit, trace_key(trace_id), format, &mut out);
            });
        } else {
            let key = resource_key(resource.resource(), &format.partition_key);
            fit(resource, key, format, &mut out);
        }
    }
    out
}

// ---------------------------------------------------------------- traces

impl Nested for ResourceSpans {
    type Scope = ScopeSpans;
    type Item = Span;
    const SIGNAL: Signal = Signal::Traces;

    fn resource(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }
    fn scopes(&mut self) -> &mut Vec<ScopeSpans> {
        &mut self.scope_spans
    }
    fn scopes_ref(&self) -> &[ScopeSpans] {
        &self.scope_spans
    }
    fn items(scope: &mut ScopeSpans) -> &mut Vec<Span> {
        &mut scope.spans
    }
    fn items_ref(scope: &ScopeSpans) -> &[Span] {
        &scope.spans
    }
    fn trace_id(span: &Span) -> Option<&[u8]> {
        Some(&span.trace_id)
    }
    fn invalid(span: &Span) -> Option<String> {
        id_length_error("span", "trace_id", &span.trace_id, 16, false)
            .or_else(|| id_length_error("span", "span_id", &span.span_id, 8, false))
    }
    const REQUEST_FIELD: &'static str = "resourceSpans";
}

/// Traces to user records. In trace-id mode each record holds the spans of one trace only.
pub fn traces(request: ExportTraceServiceRequest, format: &RecordFormat) -> Encoded {
    encode_resources(request.resource_spans, format)
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

impl Nested for ResourceMetrics {
    type Scope = ScopeMetrics;
    type Item = Metric;
    const SIGNAL: Signal = Signal::Metrics;

    fn resource(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }
    fn scopes(&mut self) -> &mut Vec<ScopeMetrics> {
        &mut self.scope_metrics
    }
    fn scopes_ref(&self) -> &[ScopeMetrics] {
        &self.scope_metrics
    }
    fn items(scope: &mut ScopeMetrics) -> &mut Vec<Metric> {
        &mut scope.metrics
    }
    fn items_ref(scope: &ScopeMetrics) -> &[Metric] {
        &scope.metrics
    }
    fn weight(metric: &Metric) -> u64 {
        data_points(metric)
    }
    fn split_item(metric: Metric) -> Option<(Metric, Metric)> {
        split_metric(metric)
    }
    fn trace_id(_: &Metric) -> Option<&[u8]> {
        None
    }
    const REQUEST_FIELD: &'static str = "resourceMetrics";
}

pub fn metrics(request: ExportMetricsServiceRequest, format: &RecordFormat) -> Encoded {
    encode_resources(request.resource_metrics, format)
}

// ---------------------------------------------------------------- logs

impl Nested for ResourceLogs {
    type Scope = ScopeLogs;
    type Item = LogRecord;
    const SIGNAL: Signal = Signal::Logs;

    fn resource(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }
    fn scopes(&mut self) -> &mut Vec<ScopeLogs> {
        &mut self.scope_logs
    }
    fn scopes_ref(&self) -> &[ScopeLogs] {
        &self.scope_logs
    }
    fn items(scope: &mut ScopeLogs) -> &mut Vec<LogRecord> {
        &mut scope.log_records
    }
    fn items_ref(scope: &ScopeLogs) -> &[LogRecord] {
        &scope.log_records
    }
    fn trace_id(record: &LogRecord) -> Option<&[u8]> {
        Some(&record.trace_id)
    }
    fn invalid(record: &LogRecord) -> Option<String> {
        id_length_error("log record", "trace_id", &record.trace_id, 16, true)
            .or_else(|| id_length_error("log record", "span_id", &record.span_id, 8, true))
    }
    const REQUEST_FIELD: &'static str = "resourceLogs";
}

/// Logs to user records. In trace-id mode, log records of one trace share a record and key;
/// those without a trace id are grouped under a random key.
pub fn logs(request: ExportLogsServiceRequest, format: &RecordFormat) -> Encoded {
    encode_resources(request.resource_logs, format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue as Value, KeyValue, any_value};

    fn resource() -> Option<Resource> {
        Some(Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(Value {
                    value: Some(any_value::Value::StringValue("checkout".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    /// A record is exactly the export request holding the one resource entry, in both
    /// encodings, though it is written without building (and copying into) that request.
    #[test]
    fn a_record_is_the_whole_request_of_its_resource() {
        let spans = ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "GET /cart".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let logs = ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord::default()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let metrics = ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "m".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let traces_request = ExportTraceServiceRequest {
            resource_spans: vec![spans.clone()],
        };
        let logs_request = ExportLogsServiceRequest {
            resource_logs: vec![logs.clone()],
        };
        let metrics_request = ExportMetricsServiceRequest {
            resource_metrics: vec![metrics.clone()],
        };
        assert_eq!(
            request_of(&spans, Encoding::OtlpProto),
            traces_request.encode_to_vec()
        );
        assert_eq!(
            request_of(&logs, Encoding::OtlpProto),
            logs_request.encode_to_vec()
        );
        assert_eq!(
            request_of(&metrics, Encoding::OtlpProto),
            metrics_request.encode_to_vec()
        );
        assert_eq!(
            request_of(&spans, Encoding::OtlpJson),
            serde_json::to_vec(&traces_request).unwrap()
        );
        assert_eq!(
            request_of(&logs, Encoding::OtlpJson),
            serde_json::to_vec(&logs_request).unwrap()
        );
        assert_eq!(
            request_of(&metrics, Encoding::OtlpJson),
            serde_json::to_vec(&metrics_request).unwrap()
        );
    }
}
