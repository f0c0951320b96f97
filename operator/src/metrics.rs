//! The operator's own metrics and health endpoints.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    pub kind: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: &'static str,
}

#[derive(Clone)]
pub struct OperatorMetrics {
    pub reconciliations: Family<ResultLabel, Counter>,
    pub applies: Family<ApplyLabels, Counter>,
    pub failures: Family<ErrorLabel, Counter>,
    pub duration: Histogram,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        OperatorMetrics {
            reconciliations: Family::default(),
            applies: Family::default(),
            failures: Family::default(),
            // 1 ms to about 16 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl OperatorMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciliations",
            "Reconciliations of KinesisExporter resources by result",
            self.reconciliations.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciliations by kind of error (forbidden, conflict, invalid, throttled, \
             server_error, api_error, connection, not_leader)",
            self.failures.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconciliation takes, API calls included",
            prometheus_client::registry::Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "child_applies",
            "Children of KinesisExporters by kind and result: created (by a create-only apply), \
             applied (a server-side apply was sent) or unchanged (exactly as last applied, \
             nothing sent)",
            self.applies.clone(),
        );
    }

    pub fn failed(&self, error: &'static str) {
        self.failures.get_or_create(&ErrorLabel { error }).inc();
    }

    pub fn observe_duration(&self, took: std::time::Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    pub fn applied(&self, kind: String, result: &'static str) {
        self.applies
            .get_or_create(&ApplyLabels { kind, result })
            .inc();
    }

    pub fn reconciled(&self, result: &'static str) {
        self.reconciliations
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// The registry in OpenMetrics text, as a `/metrics` response.
fn metrics_response(registry: &Registry) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => (
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

/// Whether the operator is ready: no controller still filling its cache. A standby replica
/// (waiting for the leader Lease) runs no controller and is ready.
#[derive(Clone, Default)]
pub struct Readiness {
    syncing: Arc<std::sync::atomic::AtomicUsize>,
}

impl Readiness {
    pub fn begin_sync(&self) {
        self.syncing
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn synced(&self) {
        self.syncing
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.syncing.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// /metrics, /healthz and /readyz of the operator.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
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
                    use axum::http::StatusCode;
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "syncing caches\n")
                    }
                }
            }),
        )
}
