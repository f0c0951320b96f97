//! The exporter configuration file rendered from a spec, in the exporter's own types, so
//! that what the operator writes is exactly what the exporter validates.

use std::collections::BTreeMap;

use kinesis_exporter_config as exporter;
use kinesis_exporter_config::settings::{self, Group};

use super::{GRPC_PORT, HTTP_PORT, METRICS_PORT};
use crate::crd::{Compression, Delivery, Encoding, KinesisExporterSpec, Signal};

/// The exporter instance id in rendered configurations.
const EXPORTER_ID: &str = "kinesis";

/// The exporter configuration for `spec`, as YAML.
pub fn render_config(spec: &KinesisExporterSpec) -> String {
    exporter_config(spec).to_yaml()
}

fn exporter_config(spec: &KinesisExporterSpec) -> exporter::Config {
    let kpl = kpl_config(spec);
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
        let given = [
            (&mut partition_key.traces, &keys.traces),
            (&mut partition_key.metrics, &keys.metrics),
            (&mut partition_key.logs, &keys.logs),
        ];
        for (key, name) in given {
            if let Some(name) = name {
                *key = exporter::PartitionKey::from_name(name);
            }
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
        delivery: match spec.delivery {
            Some(Delivery::Acknowledged) => exporter::Delivery::Acknowledged,
            _ => exporter::Delivery::Buffered,
        },
        partition_key,
        enqueue_timeout_seconds: settings::range(Group::Exporter, "enqueue_timeout_seconds").0,
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
    if let Some(limit_mib) = request_memory_limit_mib(spec) {
        receivers.otlp.request_memory_limit_mib = limit_mib;
    }
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
            worker_threads: worker_threads(spec)
                .unwrap_or(settings::range(Group::Service, "worker_threads").0),
        },
    }
}

/// The container's limit of `resource` (`memory` in bytes, `cpu` in cores), if it has one.
fn container_limit(spec: &KinesisExporterSpec, resource: &str) -> Option<f64> {
    let limit = spec.resources.as_ref()?.limits.as_ref()?.get(resource)?;
    // As f64: the crate's integer conversions drop a fraction before scaling ("1.5Gi").
    kube_quantity::ParsedQuantity::try_from(limit)
        .ok()?
        .to_bytes_f64()
}

/// Half the container's memory limit, if it has one, for requests being decoded (the rest is
/// for queued records, the process and what the allocator has not given back yet), within
/// the key's range. Without a limit, the exporter's default.
fn request_memory_limit_mib(spec: &KinesisExporterSpec) -> Option<u64> {
    let bytes = container_limit(spec, "memory")?;
    let (_, min, max) = settings::range(Group::Receiver, "request_memory_limit_mib");
    let half_mib = (bytes / 2.0 / (1024.0 * 1024.0)).floor();
    Some((half_mib as u64).clamp(min, max))
}

/// The container's CPU limit rounded up, if it has one, within the key's range: as many
/// worker threads as the cores the container may use. Without a limit, the exporter's default.
fn worker_threads(spec: &KinesisExporterSpec) -> Option<u64> {
    let cores = container_limit(spec, "cpu")?;
    let (_, min, max) = settings::range(Group::Service, "worker_threads");
    Some((cores.ceil() as u64).clamp(min, max))
}

/// The producer settings of `spec`: each `spec.kpl` field the settings table maps to an
/// exporter key, the table's default for the rest.
fn kpl_config(spec: &KinesisExporterSpec) -> exporter::KplConfig {
    let mut kpl = exporter::KplConfig::default();
    let given = serde_json::to_value(spec.kpl.clone().unwrap_or_default()).unwrap_or_default();
    for (name, field) in kpl.fields_mut() {
        let crd_field = settings::setting(Group::Exporter, &format!("kpl.{name}")).crd;
        let value = crd_field
            .and_then(|f| f.strip_prefix("kpl."))
            .and_then(|f| given.get(f))
            .and_then(serde_json::Value::as_u64);
        if let Some(value) = value {
            *field = value;
        }
    }
    kpl
}

/// How long an exporter may take to flush on shutdown: a flush interval's worth of buffering,
/// one full backoff and one request, within Kubernetes' patience.
pub fn shutdown_timeout_seconds(spec: &KinesisExporterSpec) -> i64 {
    let kpl = kpl_config(spec);
    ((kpl.flush_interval_seconds + kpl.max_backoff_seconds + kpl.request_timeout_seconds) as i64)
        .min(600)
}
