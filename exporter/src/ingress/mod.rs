//! OTLP ingress: what gRPC and HTTP requests share once decoded. A request is cut into user
//! records for every exporter its signal is routed to, then handed to their producers.

pub mod grpc;
pub mod http;
pub mod memory;
mod signal;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::{Delivery, Signal};
use crate::encoding::{Encoded, RecordFormat};
use crate::kpl::ack::{Outcome, Receipt};
use crate::kpl::{ProducerHandle, PutError};
use memory::{MemoryBudget, MemoryPermit, Refusal};

/// One exporter a signal is routed to.
#[derive(Clone)]
pub struct Route {
    pub exporter: String,
    pub producer: ProducerHandle,
    pub format: RecordFormat,
    /// How long a request waits for backlog room before it is answered "retry later".
    pub enqueue_timeout: Duration,
    /// Whether the answer waits until the records are stored.
    pub delivery: Delivery,
}

/// Why a request was not (entirely) taken.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no pipeline takes {0}")]
    NotRouted(&'static str),
    #[error("the backlog of exporter {0} is full; retry later")]
    Busy(String),
    #[error("the exporter is shutting down")]
    ShuttingDown,
    /// Requests being decoded hold the whole memory budget.
    #[error(
        "requests under way fill receivers.otlp.request_memory_limit_mib ({limit_mib} MiB); \
         retry later"
    )]
    MemoryFull { limit_mib: u64 },
    /// The request alone is counted at more than the whole memory budget.
    #[error(
        "a request of {bytes} bytes is counted at {cost_mib} MiB while decoded, more than \
         receivers.otlp.request_memory_limit_mib ({limit_mib} MiB); send smaller requests"
    )]
    OverMemoryLimit {
        bytes: usize,
        cost_mib: u64,
        limit_mib: u64,
    },
    /// Acknowledged delivery: records were given up on for a reason that may pass.
    #[error("{items} items were not stored ({reason}); retry later")]
    NotStored { items: u64, reason: String },
    /// The request makes more records than the exporter's whole backlog: it can never be
    /// admitted whole (raise kpl.backlog_count, or send smaller requests).
    #[error(
        "the request makes {records} records for exporter {exporter}, more than its whole \
         backlog (kpl.backlog_count {backlog}); send smaller requests"
    )]
    TooLarge {
        exporter: String,
        records: usize,
        backlog: usize,
    },
}

/// What was taken: the items that were refused for good, and why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    pub rejected: u64,
    pub message: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: &'static str,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub signal: &'static str,
    pub protocol: &'static str,
    pub outcome: &'static str,
}

/// The outcomes a routed request is counted under (`not_routed` is for the others).
pub const REQUEST_OUTCOMES: &[&str] = &["ok", "bad_request", "too_large", "unavailable"];

/// Ingress metrics: items received, requests by outcome, memory of requests under way.
#[derive(Default, Clone)]
pub struct IngressMetrics {
    pub items_received: Family<SignalLabels, Counter>,
    pub items_rejected: Family<SignalLabels, Counter>,
    pub requests: Family<OutcomeLabels, Counter>,
    /// What the requests being decoded are counted at in the memory budget.
    pub request_memory: Gauge,
}

impl IngressMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "otlp_items_received",
            "Spans, data points and log records received, by signal and protocol",
            self.items_received.clone(),
        );
        registry.register(
            "otlp_items_rejected",
            "Items refused for good (too large for any Kinesis record), by signal and protocol",
            self.items_rejected.clone(),
        );
        registry.register(
            "otlp_requests",
            "OTLP export requests by signal, protocol and outcome",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "otlp_request_memory",
            "Memory the OTLP requests being decoded and cut into records are counted at, \
             out of receivers.otlp.request_memory_limit_mib",
            prometheus_client::registry::Unit::Bytes,
            self.request_memory.clone(),
        );
    }

    pub fn request(&self, signal: Signal, protocol: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels {
                signal: signal.as_str(),
                protocol,
                outcome,
            })
            .inc();
    }
}

/// Everything the gRPC and HTTP servers need.
pub struct Ingress {
    routes: HashMap<Signal, Vec<Route>>,
    pub metrics: IngressMetrics,
    memory: MemoryBudget,
    memory_limit_mib: u64,
}

impl Ingress {
    pub fn new(
        routes: HashMap<Signal, Vec<Route>>,
        metrics: IngressMetrics,
        memory_limit_mib: u64,
    ) -> Arc<Self> {
        // Every series of a routed signal exists at 0 from the start, so that the first
        // refusal is an increase that rate() and alerts see, not the birth of a series.
        for signal in routes.keys() {
            for protocol in ["grpc", "http"] {
                let labels = SignalLabels {
                    signal: signal.as_str(),
                    protocol,
                };
                let _ = metrics.items_received.get_or_create(&labels);
                let _ = metrics.items_rejected.get_or_create(&labels);
                for outcome in REQUEST_OUTCOMES {
                    let _ = metrics.requests.get_or_create(&OutcomeLabels {
                        signal: signal.as_str(),
                        protocol,
                        outcome,
                    });
                }
            }
        }
        let memory = MemoryBudget::new(memory_limit_mib, metrics.request_memory.clone());
        Arc::new(Ingress {
            routes,
            metrics,
            memory,
            memory_limit_mib,
        })
    }

    /// How long a request of `signal` may wait for room: its routes' shortest enqueue timeout.
    fn deadline(&self, signal: Signal) -> tokio::time::Instant {
        let wait = self
            .routes
            .get(&signal)
            .into_iter()
            .flatten()
            .map(|r| r.enqueue_timeout)
            .min()
            .unwrap_or_default();
        tokio::time::Instant::now() + wait
    }

    /// Admits a request of `request_bytes` (decompressed) before it is decoded: see
    /// [`memory`].
    pub async fn admit(
        &self,
        signal: Signal,
        request_bytes: usize,
    ) -> Result<MemoryPermit, ExportError> {
        match self
            .memory
            .admit(request_bytes, self.deadline(signal))
            .await
        {
            Ok(permit) => Ok(permit),
            Err(Refusal::Full) => {
                tracing::warn!(
                    signal = signal.as_str(),
                    bytes = request_bytes,
                    limit_mib = self.memory_limit_mib,
                    "refusing a request: requests under way hold the whole memory budget"
                );
                Err(ExportError::MemoryFull {
                    limit_mib: self.memory_limit_mib,
                })
            }
            Err(Refusal::LargerThanLimit {
                cost_mib,
                limit_mib,
            }) => Err(ExportError::OverMemoryLimit {
                bytes: request_bytes,
                cost_mib,
                limit_mib,
            }),
        }
    }

    pub fn accepts(&self, signal: Signal) -> bool {
        self.routes.get(&signal).is_some_and(|r| !r.is_empty())
    }

    /// Cuts `request` into records for each route of `signal` and puts them. `memory`, the
    /// request's room in the memory budget, is given back once its records are queued.
    pub async fn export<R: Clone>(
        &self,
        signal: Signal,
        protocol: &'static str,
        request: R,
        encode: impl Fn(R, &RecordFormat) -> Encoded,
        memory: MemoryPermit,
    ) -> Result<Accepted, ExportError> {
        let routes = self
            .routes
            .get(&signal)
            .filter(|r| !r.is_empty())
            .ok_or(ExportError::NotRouted(signal.as_str()))?;
        let labels = SignalLabels {
            signal: signal.as_str(),
            protocol,
        };
        let mut accepted = Accepted::default();
        // Encode for every route first, then reserve room in every route's backlog, and only
        // then queue anything: a request is admitted whole or refused whole, so a client's
        // retry of a refused request never duplicates part of it.
        let mut batches = Vec::with_capacity(routes.len());
        let receipt = Receipt::default();
        let mut request_items = 0;
        // The decoded request is copied only for routes other than the last, which takes it:
        // with one route (the usual case), no copy at all.
        let last = routes.len() - 1;
        let mut request = Some(request);
        for (i, route) in routes.iter().enumerate() {
            let this = if i == last {
                request.take()
            } else {
                request.clone()
            }
            .expect("taken on the last route only");
            let encoded = memory.run(|| encode(this, &route.format));
            request_items = request_items.max(encoded.items);
            if i == 0 {
                self.metrics
                    .items_received
                    .get_or_create(&labels)
                    .inc_by(encoded.items);
            }
            if encoded.rejected > 0 {
                tracing::warn!(
                    exporter = %route.exporter,
                    signal = signal.as_str(),
                    items = encoded.rejected,
                    reason = encoded.rejection.as_deref().unwrap_or(""),
                    "rejecting items that can never be stored"
                );
                self.metrics
                    .items_rejected
                    .get_or_create(&labels)
                    .inc_by(encoded.rejected);
                accepted.rejected = accepted.rejected.max(encoded.rejected);
                accepted.message = encoded.rejection.clone();
            }
            let mut records = Vec::with_capacity(encoded.records.len());
            for (mut record, items) in encoded.records.into_iter().zip(encoded.record_items) {
                if route.producer.accepts(&record) {
                    if route.delivery == Delivery::Acknowledged {
                        record.ack = Some(receipt.ack(items));
                    }
                    records.push(record);
                }
            }
            batches.push(records);
        }
        let deadline = self.deadline(signal);
        let mut reserved = Vec::with_capacity(routes.len());
        for (route, records) in routes.iter().zip(&batches) {
            match route.producer.reserve(records.len(), deadline).await {
                Ok(room) => reserved.push(room),
                Err(PutError::Closed) => return Err(ExportError::ShuttingDown),
                Err(PutError::LargerThanBacklog { records, backlog }) => {
                    return Err(ExportError::TooLarge {
                        exporter: route.exporter.clone(),
                        records,
                        backlog,
                    });
                }
                Err(_) => return Err(ExportError::Busy(route.exporter.clone())),
            }
        }
        for (room, records) in reserved.into_iter().zip(batches) {
            room.admit(records);
        }
        // From here the records are the backlog's (bounded by kpl.backlog_count).
        drop(memory);
        // Acknowledged delivery: answer once every record is stored or given up on. A refused
        // request drops its acks with its records above, which settles nothing anyone awaits.
        if routes.iter().any(|r| r.delivery == Delivery::Acknowledged) {
            match receipt.settled().await {
                Outcome::Stored => {}
                Outcome::Refused { items, reason } => {
                    // Items refused by several routes are still items of this one request.
                    accepted.rejected = (accepted.rejected + items).min(request_items);
                    accepted.message = Some(format!("not stored in Kinesis: {reason}"));
                }
                Outcome::Retry { items, reason } => {
                    return Err(ExportError::NotStored { items, reason });
                }
            }
        }
        Ok(accepted)
    }
}

/// The routes for every signal, from the configuration and the running producers.
pub fn routes(
    config: &crate::config::Config,
    producers: &HashMap<String, ProducerHandle>,
) -> HashMap<Signal, Vec<Route>> {
    let mut routes = HashMap::new();
    for signal in Signal::ALL {
        let list = config
            .service
            .exporters_for(signal)
            .into_iter()
            .map(|id| {
                let exporter = &config.exporters[&id];
                Route {
                    format: RecordFormat {
                        encoding: exporter.encoding,
                        compression: exporter.compression,
                        partition_key: exporter.partition_key.for_signal(signal).clone(),
                        max_record_bytes: crate::kpl::limits::MAX_RECORD_BYTES
                            .min(exporter.kpl.batch_size as usize),
                    },
                    producer: producers[&id].clone(),
                    enqueue_timeout: Duration::from_secs(exporter.enqueue_timeout_seconds),
                    delivery: exporter.delivery,
                    exporter: id,
                }
            })
            .collect();
        routes.insert(signal, list);
    }
    routes
}
