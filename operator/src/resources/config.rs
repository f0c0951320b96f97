//! The exporter configuration file rendered from a spec, in the exporter's own types, so
//! that what the operator writes is exactly what the exporter validates.

use std::collections::BTreeMap;

use kinesis_exporter::config as exporter;

use super::{GRPC_PORT, HTTP_PORT, METRICS_PORT};
use crate::crd::{Compression, Encoding, KinesisExporterSpec, Signal};

/// The exporter instance id in rendered configurations.
const EXPORTER_ID: &str = "kinesis";

/// The exporter configuration for `spec`, as YAML.
pub fn render_config(spec: &KinesisExporterSpec) -> String {
    exporter_config(spec).to_yaml()
}

fn exporter_config(spec: &KinesisExporterSpec) -> exporter::Config {
    let defaults = exporter::KplConfig::default();
    let kpl = spec.kpl.clone().unwrap_or_default();
    let pick = |value: Option<i64>, default: u64| value.map_or(default, |v| v as u64);
    let kpl = exporter::KplConfig {
        aggregate_batch_count: pick(kpl.aggregate_batch_count, defaults.aggregate_batch_count),
        aggregate_batch_size: pick(kpl.aggregate_batch_size, defaults.aggregate_batch_size),
        batch_size: pick(kpl.batch_size, defaults.batch_size),
        batch_count: pick(kpl.batch_count, defaults.batch_count),
        backlog_count: pick(kpl.backlog_count, defaults.backlog_count),
        flush_interval_seconds: pick(kpl.flush_interval_seconds, defaults.flush_interval_seconds),
        max_connections: pick(kpl.max_connections, defaults.max_connections),
        max_retries: pick(kpl.max_retries, defaults.max_retries),
        max_backoff_seconds: pick(kpl.max_backoff_seconds, defaults.max_backoff_seconds),
        request_timeout_seconds: defaults.request_timeout_seconds,
    };
    let aws = exporter::AwsConfig {
        stream_name: spec.aws.stream_name.clone(),
        region: spec
            .aws
            .region
            .clone()
            .unwrap_or_else(|| exporter::AwsConfig::default().region),
        kinesis_endpoint: spec.aws.kinesis_endpoint.clone(),
        role: spec.aws.role.clone(),
    };
    let mut partition_key = exporter::PartitionKeys::default();
    if let Some(keys) = &spec.partition_key {
        let parse = |text: &str| match text {
            "trace_id" => exporter::PartitionKey::TraceId,
            "random" => exporter::PartitionKey::Random,
            other => exporter::PartitionKey::Attribute(other.to_string()),
        };
        if let Some(k) = &keys.traces {
            partition_key.traces = parse(k);
        }
        if let Some(k) = &keys.metrics {
            partition_key.metrics = parse(k);
        }
        if let Some(k) = &keys.logs {
            partition_key.logs = parse(k);
        }
    }
    let exporter = exporter::ExporterConfig {
        aws,
        kpl,
        encoding: match spec.encoding {
            Some(Encoding::OtlpJson) => exporter::Encoding::OtlpJson,
            _ => exporter::Encoding::OtlpProto,
        },
        compression: match spec.compression {
            Some(Compression::Gzip) => exporter::Compression::Gzip,
            Some(Compression::Zstd) => exporter::Compression::Zstd,
            _ => exporter::Compression::None,
        },
        partition_key,
        enqueue_timeout_seconds: 5,
    };
    let pipelines = spec
        .signals()
        .into_iter()
        .map(|signal| {
            let name = match signal {
                Signal::Traces => "traces",
                Signal::Metrics => "metrics",
                Signal::Logs => "logs",
            };
            (
                name.to_string(),
                exporter::Pipeline {
                    receivers: vec!["otlp".into()],
                    exporters: vec![EXPORTER_ID.into()],
                },
            )
        })
        .collect();
    let mut receivers = exporter::Receivers::default();
    receivers.otlp.protocols.grpc.endpoint = format!("0.0.0.0:{GRPC_PORT}");
    receivers.otlp.protocols.http.endpoint = format!("0.0.0.0:{HTTP_PORT}");
    exporter::Config {
        receivers,
        exporters: BTreeMap::from([(EXPORTER_ID.to_string(), exporter)]),
        service: exporter::Service {
            pipelines,
            telemetry: exporter::ServiceTelemetry {
                metrics: exporter::MetricsTelemetry {
                    address: format!("0.0.0.0:{METRICS_PORT}"),
                },
            },
        },
    }
}

/// How long an exporter may take to flush on shutdown: a flush interval's worth of buffering,
/// one full backoff and one request, within Kubernetes' patience.
pub fn shutdown_timeout_seconds(spec: &KinesisExporterSpec) -> i64 {
    let kpl = spec.kpl.clone().unwrap_or_default();
    let flush = kpl.flush_interval_seconds.unwrap_or(5);
    let backoff = kpl.max_backoff_seconds.unwrap_or(60);
    let request = exporter::KplConfig::default().request_timeout_seconds as i64;
    (flush + backoff + request).min(600)
}
