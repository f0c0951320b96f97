//! The operator's own metrics and health endpoints.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub struct OperatorMetrics {
    pub reconciliations: Family<ResultLabel, Counter>,
}

impl OperatorMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciliations",
            "Reconciliations of KinesisExporter resources by result",
            self.reconciliations.clone(),
        );
    }

    pub fn reconciled(&self, result: &'static str) {
        self.reconciliations
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

/// /metrics, /healthz and /readyz of the operator.
pub fn router(registry: Arc<Registry>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { kinesis_exporter::telemetry::metrics_response(&registry) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
}
