//! The producer's Prometheus metrics. Every user record that is not delivered is counted in
//! `user_records_dropped_total` with its reason. Names follow the Prometheus conventions: base
//! units in the name (`_bytes`, `_seconds`), `_total` on counters, every label value that can
//! occur present from the start (at 0), and no ratios: those are left to PromQL.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::health::DeliveryHealth;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorCodeLabel {
    pub error_code: String,
}

/// Every reason a user record can be dropped for, as the metric labels them.
pub const DROP_REASONS: &[&str] = &[
    "retries_exhausted",
    "permanent_error",
    "record_too_large",
    "invalid_partition_key",
    "shutdown_deadline",
];

/// The results a PutRecords request is counted under.
pub const PUT_RESULTS: &[&str] = &["ok", "partial", "error"];

/// Counters, gauges and histograms of one producer (one exporter instance).
#[derive(Clone)]
pub struct ProducerMetrics {
    pub user_records_received: Counter,
    pub user_records_delivered: Counter,
    pub user_records_dropped: Family<ReasonLabel, Counter>,
    pub kinesis_records_delivered: Counter,
    pub aggregated_records_delivered: Counter,
    pub delivered_bytes: Counter,
    pub put_records_requests: Family<ResultLabel, Counter>,
    pub put_records_duration: Histogram,
    pub put_records_request_bytes: Histogram,
    pub put_records_request_records: Histogram,
    pub records_retried: Family<ErrorCodeLabel, Counter>,
    pub records_throttled: Counter,
    pub in_flight_requests: Gauge,
    pub backlog: Gauge,
    pub backlog_capacity: Gauge,
    /// User records Kinesis throttled, waiting for their shard's backoff.
    pub throttled_held: Gauge,
    pub shard_map_refreshes: Family<ResultLabel, Counter>,
    pub wrong_shard_resends: Counter,
    /// Sum over every drop reason, for the settled-records arithmetic.
    dropped_all: Counter,
    /// When Kinesis last answered, stored, throttled or failed: what `/status` reports.
    pub health: std::sync::Arc<DeliveryHealth>,
}

impl Default for ProducerMetrics {
    fn default() -> Self {
        let metrics = ProducerMetrics {
            user_records_received: Counter::default(),
            user_records_delivered: Counter::default(),
            user_records_dropped: Family::default(),
            kinesis_records_delivered: Counter::default(),
            aggregated_records_delivered: Counter::default(),
            delivered_bytes: Counter::default(),
            put_records_requests: Family::default(),
            put_records_duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            // 1 KiB to 4 MiB; a request is at most 5 MiB.
            put_records_request_bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 7)),
            put_records_request_records: Histogram::new([
                1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
            ]),
            records_retried: Family::default(),
            records_throttled: Counter::default(),
            in_flight_requests: Gauge::default(),
            backlog: Gauge::default(),
            backlog_capacity: Gauge::default(),
            throttled_held: Gauge::default(),
            shard_map_refreshes: Family::default(),
            wrong_shard_resends: Counter::default(),
            dropped_all: Counter::default(),
            health: Default::default(),
        };
        // Present at 0 from the start, so that rate() and alerts see a series before the first
        // event rather than nothing.
        for reason in DROP_REASONS {
            let _ = metrics.user_records_dropped.get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            });
        }
        for result in PUT_RESULTS {
            let _ = metrics
                .put_records_requests
                .get_or_create(&ResultLabel { result });
        }
        for result in ["ok", "error"] {
            let _ = metrics
                .shard_map_refreshes
                .get_or_create(&ResultLabel { result });
        }
        metrics
    }
}

impl ProducerMetrics {
    /// Registers every metric under `registry` (which carries the exporter label).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "user_records_received",
            "User records offered to the producer",
            self.user_records_received.clone(),
        );
        registry.register(
            "user_records_delivered",
            "User records stored in Kinesis",
            self.user_records_delivered.clone(),
        );
        registry.register(
            "user_records_dropped",
            "User records given up on, by reason",
            self.user_records_dropped.clone(),
        );
        registry.register(
            "kinesis_records_delivered",
            "Kinesis records (raw or aggregated) stored",
            self.kinesis_records_delivered.clone(),
        );
        registry.register(
            "kinesis_aggregated_records_delivered",
            "Kinesis records stored that were KPL aggregates",
            self.aggregated_records_delivered.clone(),
        );
        registry.register_with_unit(
            "kinesis_delivered",
            "Data and partition-key bytes stored",
            Unit::Bytes,
            self.delivered_bytes.clone(),
        );
        registry.register(
            "put_records_requests",
            "PutRecords requests by result (ok, partial, error)",
            self.put_records_requests.clone(),
        );
        registry.register_with_unit(
            "put_records_duration",
            "Time from sending a PutRecords request to its answer (or timeout)",
            Unit::Seconds,
            self.put_records_duration.clone(),
        );
        registry.register_with_unit(
            "put_records_request",
            "Data and partition-key bytes per PutRecords request",
            Unit::Bytes,
            self.put_records_request_bytes.clone(),
        );
        registry.register(
            "put_records_request_records",
            "Kinesis records per PutRecords request",
            self.put_records_request_records.clone(),
        );
        registry.register(
            "kinesis_records_retried",
            "Kinesis records sent again, by the error code that failed them",
            self.records_retried.clone(),
        );
        registry.register(
            "kinesis_records_throttled",
            "Kinesis records refused for throughput (ProvisionedThroughputExceeded, \
             LimitExceeded, throttling) and retried",
            self.records_throttled.clone(),
        );
        registry.register(
            "put_records_in_flight_requests",
            "PutRecords requests under way",
            self.in_flight_requests.clone(),
        );
        registry.register(
            "backlog_records",
            "User records waiting for the producer",
            self.backlog.clone(),
        );
        registry.register(
            "backlog_capacity_records",
            "User records the producer's backlog holds at most (kpl.backlog_count)",
            self.backlog_capacity.clone(),
        );
        registry.register(
            "throttled_held_records",
            "User records Kinesis throttled, held back until their shard's backoff has passed \
             (no more are taken while a backlog's worth waits)",
            self.throttled_held.clone(),
        );
        registry.register(
            "shard_map_refreshes",
            "ListShards refreshes of the shard map by result",
            self.shard_map_refreshes.clone(),
        );
        registry.register(
            "wrong_shard_resent_records",
            "User records sent again because their aggregate landed on an unexpected shard",
            self.wrong_shard_resends.clone(),
        );
    }

    /// User records received but neither delivered nor dropped yet.
    pub fn unsettled(&self) -> u64 {
        self.user_records_received
            .get()
            .saturating_sub(self.user_records_delivered.get() + self.dropped_all.get())
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_all.get()
    }

    pub fn drop_records(&self, reason: &str, count: usize) {
        if count == 0 {
            return;
        }
        self.dropped_all.inc_by(count as u64);
        self.user_records_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(count as u64);
        self.health.dropped(reason);
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        self.user_records_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    pub fn dropped_by_reason(&self) -> Vec<(&'static str, u64)> {
        DROP_REASONS.iter().map(|r| (*r, self.dropped(r))).collect()
    }

    pub fn retried(&self, error_code: &str) -> u64 {
        self.records_retried
            .get_or_create(&ErrorCodeLabel {
                error_code: error_code.to_string(),
            })
            .get()
    }

    pub fn calls(&self, result: &'static str) -> u64 {
        self.put_records_requests
            .get_or_create(&ResultLabel { result })
            .get()
    }
}
