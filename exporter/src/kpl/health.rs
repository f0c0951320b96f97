//! How one producer's delivery went lately: when Kinesis last answered, stored, throttled or
//! failed, and the last drop. Served on `/status`, where the operator reads it to tell a team
//! whether its data reaches its stream.

use std::sync::Mutex;
use std::time::Instant;

pub use crate::config::status::{DropReport, ErrorReport, HealthReport};

/// The Kinesis calls whose failures are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    PutRecords,
    ListShards,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::PutRecords => "PutRecords",
            Operation::ListShards => "ListShards",
        }
    }
}

#[derive(Debug, Clone)]
struct ErrorSeen {
    operation: Operation,
    code: String,
    message: String,
    retryable: bool,
    at: Instant,
}

#[derive(Debug, Default)]
struct State {
    last_success: Option<Instant>,
    last_delivery: Option<Instant>,
    last_throttle: Option<Instant>,
    last_error: Option<ErrorSeen>,
    last_drop: Option<(String, Instant)>,
}

/// Written by the producer on every call's outcome (once per call, not per record).
#[derive(Debug, Default)]
pub struct DeliveryHealth {
    state: Mutex<State>,
}

impl DeliveryHealth {
    /// Kinesis answered a call with success (records may still have failed one by one).
    pub fn succeeded(&self) {
        self.state.lock().unwrap().last_success = Some(Instant::now());
    }

    /// Records were stored.
    pub fn delivered(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        state.last_success = Some(now);
        state.last_delivery = Some(now);
    }

    /// Kinesis refused records for the shard's or the account's throughput.
    pub fn throttled(&self) {
        self.state.lock().unwrap().last_throttle = Some(Instant::now());
    }

    /// A whole call failed.
    pub fn failed(&self, operation: Operation, code: &str, message: &str, retryable: bool) {
        self.state.lock().unwrap().last_error = Some(ErrorSeen {
            operation,
            code: code.to_string(),
            message: message.to_string(),
            retryable,
            at: Instant::now(),
        });
    }

    /// User records were given up on.
    pub fn dropped(&self, reason: &str) {
        self.state.lock().unwrap().last_drop = Some((reason.to_string(), Instant::now()));
    }

    /// Ages relative to `now`, so that no clock is compared across machines.
    pub fn report(&self, now: Instant) -> HealthReport {
        let state = self.state.lock().unwrap();
        let age = |at: Instant| now.saturating_duration_since(at).as_secs_f64();
        HealthReport {
            last_success_age_seconds: state.last_success.map(age),
            last_delivery_age_seconds: state.last_delivery.map(age),
            last_throttle_age_seconds: state.last_throttle.map(age),
            last_error: state.last_error.as_ref().map(|e| ErrorReport {
                operation: e.operation.as_str().to_string(),
                code: e.code.clone(),
                message: e.message.clone(),
                retryable: e.retryable,
                age_seconds: age(e.at),
            }),
            last_drop: state.last_drop.as_ref().map(|(reason, at)| DropReport {
                reason: reason.clone(),
                age_seconds: age(*at),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages_are_measured_from_the_report() {
        let health = DeliveryHealth::default();
        let empty = health.report(Instant::now());
        assert_eq!(empty.last_delivery_age_seconds, None);
        assert_eq!(empty.last_error, None);

        health.failed(Operation::PutRecords, "AccessDeniedException", "no", false);
        health.dropped("permanent_error");
        let later = Instant::now() + Duration::from_secs(3);
        let report = health.report(later);
        let error = report.last_error.unwrap();
        assert_eq!(
            (
                error.operation.as_str(),
                error.code.as_str(),
                error.retryable
            ),
            ("PutRecords", "AccessDeniedException", false)
        );
        assert!(error.age_seconds >= 3.0, "{error:?}");
        assert_eq!(report.last_drop.unwrap().reason, "permanent_error");
        assert_eq!(report.last_success_age_seconds, None);

        health.delivered();
        let report = health.report(Instant::now());
        assert!(report.last_delivery_age_seconds.is_some());
        assert!(report.last_success_age_seconds.is_some());
    }
}
