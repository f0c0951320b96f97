//! Whether a resource's data reaches Kinesis, judged from what its exporter pods report on
//! `/status`: pure, so every verdict is tested. The prober (`probe.rs`) does the reading.

use crate::crd::DeliveryStatus;

pub const DELIVERING: &str = "Delivering";

/// How far back a drop or a throttle still colours the verdict.
pub const RECENT_SECONDS: f64 = 600.0;
/// A retryable failure counts once calls have failed for this long without a success; a
/// blip between two successful calls does not flip the condition.
pub const RETRYABLE_FAILING_SECONDS: f64 = 60.0;

/// How much of an error message the condition carries.
const MAX_ERROR_CHARS: usize = 400;

/// One pod's `/status` (the exporter's own type), and one exporter's entry in it.
pub use kinesis_exporter_config::status::{
    DropReport, ErrorReport, ExporterStatus as ExporterReport, HealthReport,
    StatusDocument as PodReport,
};

/// The Delivering condition: "True", "False" or "Unknown", a reason and a message. Messages
/// carry no counts or ages, so that an unchanged situation never costs a status write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    /// Before any pod has answered the operator's probe.
    pub fn no_report() -> Self {
        Verdict {
            status: "Unknown",
            reason: "NoReport",
            message: "no exporter pod has reported on its delivery yet".into(),
        }
    }

    /// Whether `condition` already says this (so the status need not be written).
    pub fn is_shown_by(
        &self,
        condition: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
    ) -> bool {
        condition.status == self.status
            && condition.reason == self.reason
            && condition.message == self.message
    }

    /// Worse first: not delivering, then delivering (throttled before plain), then unknown.
    fn rank(&self) -> u8 {
        match (self.status, self.reason) {
            ("False", _) => 0,
            ("True", "Throttled") => 1,
            ("True", _) => 2,
            ("Unknown", "Pending") => 3,
            _ => 4,
        }
    }
}

/// The verdict on the resource and the counts summed over the pods that answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub verdict: Verdict,
    pub status: Option<DeliveryStatus>,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            verdict: Verdict::no_report(),
            status: None,
        }
    }
}

/// Drop reasons that mean delivery failed (the others are records Kinesis could never take,
/// which the client was told about when it sent them).
const DELIVERY_DROPS: &[&str] = &["retries_exhausted", "permanent_error", "shutdown_deadline"];

fn newer(age: f64, than: Option<f64>) -> bool {
    than.is_none_or(|other| age < other)
}

/// The reason for a failed call, from its error code.
fn failure_reason(code: &str) -> &'static str {
    const DENIED: &[&str] = &[
        "AccessDenied",
        "UnrecognizedClient",
        "InvalidClientTokenId",
        "InvalidSignature",
        "ExpiredToken",
        "SignatureDoesNotMatch",
        "KMSAccessDenied",
        "CredentialsError",
        "Http401",
        "Http403",
    ];
    if DENIED.iter().any(|d| code.starts_with(d)) {
        "AccessDenied"
    } else if code.starts_with("ResourceNotFound") {
        "StreamNotFound"
    } else if code.contains("ProvisionedThroughputExceeded")
        || code.contains("LimitExceeded")
        || code.contains("Throttl")
    {
        "Throttled"
    } else {
        "DeliveryFailing"
    }
}

/// The verdict on one exporter of one pod whose Kinesis calls are made as `role`, if known.
pub fn judge_exporter(report: &ExporterReport, role: Option<&str>) -> Verdict {
    let stream = &report.stream;
    if let Some(error) = &report.health.last_error {
        let after_last_success = newer(error.age_seconds, report.health.last_success_age_seconds);
        let failing_long_enough = !error.retryable
            || report
                .health
                .last_success_age_seconds
                .is_none_or(|s| s >= RETRYABLE_FAILING_SECONDS);
        if after_last_success && failing_long_enough {
            let reason = failure_reason(&error.code);
            return Verdict {
                status: "False",
                reason,
                message: format!(
                    "{} on stream {stream}{} failed: {}: {}",
                    error.operation,
                    role.map(|r| format!(" as role {r}")).unwrap_or_default(),
                    error.code,
                    // Events and conditions are for people; the full text is in the pod's log.
                    error
                        .message
                        .chars()
                        .take(MAX_ERROR_CHARS)
                        .collect::<String>()
                ),
            };
        }
    }
    if let Some(drop) = &report.health.last_drop
        && drop.age_seconds < RECENT_SECONDS
        && DELIVERY_DROPS.contains(&drop.reason.as_str())
    {
        return Verdict {
            status: "False",
            reason: "Dropping",
            message: format!(
                "records for stream {stream} were dropped in the last 10 minutes ({}); see \
                 kinesis_exporter_user_records_dropped_total",
                drop.reason
            ),
        };
    }
    if report.health.last_delivery_age_seconds.is_some() {
        if report
            .health
            .last_throttle_age_seconds
            .is_some_and(|t| t < RECENT_SECONDS)
        {
            return Verdict {
                status: "True",
                reason: "Throttled",
                message: format!(
                    "records reach stream {stream}; Kinesis throttled some in the last 10 \
                     minutes (they were retried)"
                ),
            };
        }
        return Verdict {
            status: "True",
            reason: "Delivering",
            message: format!("records reach stream {stream}"),
        };
    }
    if report.records_received > 0 {
        return Verdict {
            status: "Unknown",
            reason: "Pending",
            message: format!("records received; none stored in stream {stream} yet"),
        };
    }
    Verdict {
        status: "Unknown",
        reason: "NoData",
        message: format!("no records received yet for stream {stream}"),
    }
}

/// The verdict on a resource from the reports of the pods that answered (in a stable order,
/// e.g. by pod name): the worst of them, and the counts summed. `role` is the role the pods
/// write as (spec.aws.role), named in failures.
pub fn judge(reports: &[PodReport], role: Option<&str>) -> Delivery {
    let exporters: Vec<&ExporterReport> = reports.iter().flat_map(|r| &r.exporters).collect();
    if exporters.is_empty() {
        return Delivery::default();
    }
    let verdict = exporters
        .iter()
        .map(|e| judge_exporter(e, role))
        .min_by_key(Verdict::rank)
        .expect("not empty");
    let mut status = DeliveryStatus {
        pods_reporting: reports.len() as i32,
        ..Default::default()
    };
    for e in &exporters {
        status.records_received += e.records_received as i64;
        status.records_delivered += e.records_delivered as i64;
        status.records_throttled += e.records_throttled as i64;
        for (reason, n) in &e.records_dropped {
            if *n > 0 {
                *status.records_dropped.entry(reason.clone()).or_default() += *n as i64;
            }
        }
    }
    Delivery {
        verdict,
        status: Some(status),
    }
}

#[cfg(test)]
mod tests;
