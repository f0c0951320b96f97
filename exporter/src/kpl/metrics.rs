//! The producer's Prometheus metrics. Every user record that is not delivered is counted in
//! `dropped_user_records_total` with its reason.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Counters and gauges of one producer (one exporter instance).
#[derive(Default, Clone)]
pub struct ProducerMetrics {
    pub user_records_received: Counter,
    pub user_records_delivered: Counter,
    pub user_records_dropped: Family<ReasonLabel, Counter>,
    pub kinesis_records_delivered: Counter,
    pub aggregated_records_delivered: Counter,
    pub kinesis_bytes_delivered: Counter,
    pub put_records_calls: Family<ResultLabel, Counter>,
    pub records_retried: Family<ReasonLabel, Counter>,
    pub in_flight_requests: Gauge,
    pub backlog: Gauge,
    pub shard_map_refreshes: Family<ResultLabel, Counter>,
    pub wrong_shard_resends: Counter,
    /// User records per Kinesis record stored, since start.
    pub aggregation_ratio: Gauge<f64, AtomicU64>,
    /// Sum over every drop reason, for the settled-records arithmetic.
    dropped_all: Counter,
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
            "aggregated_records_delivered",
            "Kinesis records stored that were KPL aggregates",
            self.aggregated_records_delivered.clone(),
        );
        registry.register(
            "kinesis_bytes_delivered",
            "Bytes of data and partition keys stored",
            self.kinesis_bytes_delivered.clone(),
        );
        registry.register(
            "put_records_calls",
            "PutRecords calls by result (ok, partial, error)",
            self.put_records_calls.clone(),
        );
        registry.register(
            "records_retried",
            "Kinesis records sent again, by the error that failed them",
            self.records_retried.clone(),
        );
        registry.register(
            "in_flight_requests",
            "PutRecords calls under way",
            self.in_flight_requests.clone(),
        );
        registry.register(
            "backlog_records",
            "User records waiting for the producer",
            self.backlog.clone(),
        );
        registry.register(
            "shard_map_refreshes",
            "ListShards refreshes of the shard map by result",
            self.shard_map_refreshes.clone(),
        );
        registry.register(
            "aggregation_ratio",
            "User records per Kinesis record stored since start",
            self.aggregation_ratio.clone(),
        );
        registry.register(
            "wrong_shard_resends",
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
        self.dropped_all.inc_by(count as u64);
        self.user_records_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(count as u64);
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        self.user_records_dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    pub fn retried(&self, reason: &str) -> u64 {
        self.records_retried
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .get()
    }

    pub fn calls(&self, result: &'static str) -> u64 {
        self.put_records_calls
            .get_or_create(&ResultLabel { result })
            .get()
    }
}
