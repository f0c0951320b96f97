//! Structured logs and the Prometheus registry shared by every part of the exporter.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::status::{self, StatusDocument};
use crate::kpl::ProducerMetrics;
use clap::ValueEnum;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), logs go to stderr so
/// that stdout stays free for command output.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The exporter's registry; metric names get the `kinesis_exporter` prefix.
pub fn new_registry() -> Registry {
    Registry::with_prefix("kinesis_exporter")
}

/// Whether the exporter should get traffic: its listeners are bound, every producer runs, and
/// it is not shutting down.
#[derive(Clone, Default)]
pub struct Readiness {
    listening: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    producers: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Readiness {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }

    /// From now on /readyz fails, so that load balancers stop sending before the listeners close.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn add_producer(&self, running: Arc<AtomicBool>) {
        self.producers.lock().unwrap().push(running);
    }

    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && self
                .producers
                .lock()
                .unwrap()
                .iter()
                .all(|p| p.load(Ordering::SeqCst))
    }
}

/// The registry in OpenMetrics text, as a `/metrics` response.
pub fn metrics_response(registry: &Registry) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// One producer as `/status` shows it.
#[derive(Clone)]
pub struct StatusSource {
    pub exporter: String,
    pub stream: String,
    pub metrics: Arc<ProducerMetrics>,
}

/// `/status`: per exporter, what it received, delivered, dropped (by reason) and how Kinesis
/// answered lately, in JSON. The operator reads it into its resource's status.
fn status_document(exporters: &[StatusSource]) -> StatusDocument {
    let now = std::time::Instant::now();
    StatusDocument {
        exporters: exporters
            .iter()
            .map(|e| status::ExporterStatus {
                exporter: e.exporter.clone(),
                stream: e.stream.clone(),
                records_received: e.metrics.user_records_received.get(),
                records_delivered: e.metrics.user_records_delivered.get(),
                records_dropped: e
                    .metrics
                    .dropped_by_reason()
                    .into_iter()
                    .map(|(reason, n)| (reason.to_string(), n))
                    .collect(),
                records_throttled: e.metrics.records_throttled.get(),
                backlog_records: e.metrics.backlog.get(),
                backlog_capacity_records: e.metrics.backlog_capacity.get(),
                health: e.metrics.health.report(now),
            })
            .collect(),
    }
}

/// /metrics (OpenMetrics text), /status (JSON), /healthz (the process answers) and /readyz.
pub fn router(
    registry: Arc<Registry>,
    readiness: Readiness,
    exporters: Vec<StatusSource>,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let exporters = Arc::new(exporters);
    axum::Router::new()
        .route(
            "/status",
            get(move || {
                let exporters = exporters.clone();
                async move { axum::Json(status_document(&exporters)) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics_response(&registry) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
}
