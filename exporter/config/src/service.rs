//! The `service` section: Collector-style pipelines routing each signal to exporters, and the
//! address of the exporter's own telemetry.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::validate::{Section, check_listen_address, show};
use super::*;

/// The signal of a pipeline id: `traces`, `traces/name`, ...
pub(super) fn pipeline_signal(id: &str) -> Option<Signal> {
    let kind = id.split_once('/').map_or(id, |(kind, _)| kind);
    Signal::ALL.into_iter().find(|s| s.as_str() == kind)
}

pub(super) fn walk_service(
    value: Option<&Value>,
    exporters: &BTreeMap<String, ExporterConfig>,
    errors: &mut Vec<ConfigError>,
) -> Service {
    let mut section = Section::new("service", value, errors);
    let pipelines_value = section.take("pipelines");
    let pipelines = match pipelines_value {
        None | Some(Value::Null) => default_pipelines(exporters, errors),
        Some(_) => walk_pipelines(pipelines_value, exporters, errors),
    };
    let mut telemetry = Section::new("service.telemetry", section.take("telemetry"), errors);
    let mut metrics = Section::new(
        "service.telemetry.metrics",
        telemetry.take("metrics"),
        errors,
    );
    let address = metrics
        .string(
            "address",
            check_listen_address(Group::Service, "telemetry.metrics.address".into()),
            errors,
        )
        .unwrap_or_else(|| super::text_default(Group::Service, "telemetry.metrics.address"));
    metrics.finish(errors);
    telemetry.finish(errors);
    let worker_threads = section.integer(
        "worker_threads",
        settings::setting(Group::Service, "worker_threads"),
        errors,
    );
    section.finish(errors);
    Service {
        pipelines,
        worker_threads,
        telemetry: ServiceTelemetry {
            metrics: MetricsTelemetry { address },
        },
    }
}

/// Without pipelines, a single exporter takes all three signals; several need routing.
fn default_pipelines(
    exporters: &BTreeMap<String, ExporterConfig>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Pipeline> {
    if exporters.len() > 1 {
        errors.push(ConfigError {
            key: "service.pipelines".into(),
            value: None,
            rule: format!(
                "is required with more than one exporter ({}): say which signal goes where",
                exporters.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
        return BTreeMap::new();
    }
    let Some(only) = exporters.keys().next() else {
        return BTreeMap::new();
    };
    Signal::ALL
        .iter()
        .map(|s| {
            (
                s.as_str().to_string(),
                Pipeline {
                    receivers: vec!["otlp".into()],
                    exporters: vec![only.clone()],
                },
            )
        })
        .collect()
}

fn walk_pipelines(
    value: Option<&Value>,
    exporters: &BTreeMap<String, ExporterConfig>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Pipeline> {
    let section = Section::new("service.pipelines", value, errors);
    let mut pipelines = BTreeMap::new();
    for (id, body) in &section.entries {
        let path = format!("service.pipelines.{id}");
        if pipeline_signal(id).is_none() || id.ends_with('/') {
            errors.push(ConfigError {
                key: path,
                value: None,
                rule: "must be traces, metrics or logs, optionally followed by /<name>".into(),
            });
            continue;
        }
        let mut pipeline = Section::new(&path, Some(body), errors);
        let receivers = string_list(&mut pipeline, "receivers", errors, |r| {
            (r == "otlp")
                .then_some(())
                .ok_or("the only receiver is otlp")
        });
        string_list(&mut pipeline, "processors", errors, |_| {
            Err("processors are not supported; the exporter batches by itself")
        });
        let exporter_ids = string_list(&mut pipeline, "exporters", errors, |e| {
            exporters
                .contains_key(e)
                .then_some(())
                .ok_or("names no exporter defined under exporters")
        });
        if exporter_ids.is_empty() {
            errors.push(ConfigError {
                key: format!("{path}.exporters"),
                value: None,
                rule: "must list at least one exporter".into(),
            });
        }
        pipeline.finish(errors);
        pipelines.insert(
            id.clone(),
            Pipeline {
                receivers: if receivers.is_empty() {
                    vec!["otlp".into()]
                } else {
                    receivers
                },
                exporters: exporter_ids,
            },
        );
    }
    pipelines
}

/// A list of strings under `name`, each checked; bad entries are reported and left out.
fn string_list(
    section: &mut Section<'_>,
    name: &str,
    errors: &mut Vec<ConfigError>,
    check: impl Fn(&str) -> Result<(), &'static str>,
) -> Vec<String> {
    let key = section.key(name);
    let mut out = Vec::new();
    match section.take(name) {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for item in items {
                match item {
                    Value::String(s) => match check(s) {
                        Ok(()) => out.push(s.clone()),
                        Err(rule) => errors.push(ConfigError {
                            key: key.clone(),
                            value: Some(format!("{s:?}")),
                            rule: rule.into(),
                        }),
                    },
                    other => errors.push(ConfigError {
                        key: key.clone(),
                        value: Some(show(other)),
                        rule: "entries must be strings".into(),
                    }),
                }
            }
        }
        Some(other) => errors.push(ConfigError {
            key,
            value: Some(show(other)),
            rule: "must be a list, e.g. [otlp]".into(),
        }),
    }
    out
}
