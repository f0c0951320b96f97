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

/// /metrics, /healthz and /readyz of the operator.
pub fn router(registry: Arc<Registry>) -> axum::Router {
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
        .route("/readyz", get(|| async { "ready\n" }))
}
