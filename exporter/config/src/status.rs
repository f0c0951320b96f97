//! The exporter's `/status` document: how each exporter's delivery went lately. The exporter
//! writes it and the operator reads it into its resource's status; one type for both, so the
//! two cannot drift. Every age is in seconds before the answer, so no clocks are compared
//! across machines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One pod's answer: an entry per exporter instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StatusDocument {
    pub exporters: Vec<ExporterStatus>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExporterStatus {
    /// The exporter's id, e.g. `kinesis/traces`.
    pub exporter: String,
    pub stream: String,
    #[serde(default)]
    pub records_received: u64,
    #[serde(default)]
    pub records_delivered: u64,
    /// User records given up on, by reason (every reason, at 0 too).
    #[serde(default)]
    pub records_dropped: BTreeMap<String, u64>,
    #[serde(default)]
    pub records_throttled: u64,
    #[serde(default)]
    pub backlog_records: i64,
    #[serde(default)]
    pub backlog_capacity_records: i64,
    #[serde(flatten)]
    pub health: HealthReport,
}

/// When Kinesis last answered, stored, throttled or failed, and the last drop.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HealthReport {
    /// Any call answered with success.
    pub last_success_age_seconds: Option<f64>,
    /// Records stored.
    pub last_delivery_age_seconds: Option<f64>,
    pub last_throttle_age_seconds: Option<f64>,
    pub last_error: Option<ErrorReport>,
    pub last_drop: Option<DropReport>,
}

/// A whole call that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// `PutRecords` or `ListShards`.
    pub operation: String,
    pub code: String,
    pub message: String,
    pub retryable: bool,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropReport {
    pub reason: String,
    pub age_seconds: f64,
}
