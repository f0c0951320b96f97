//! A KPL-grade Kinesis producer. It knows nothing of OTLP: user records in, PutRecords out.
//!
//! record -> aggregator (per predicted shard) -> batcher -> sender (bounded concurrency,
//! retries with backoff) -> [`client::KinesisApi`].

pub mod ack;
pub mod aggregator;
mod backoff;
pub mod batcher;
pub mod client;
mod deadline;
pub mod health;
pub mod limits;
pub mod metrics;
mod producer;
pub mod record;
mod refresher;
mod sender;
pub mod shard_map;
mod throttled;

pub use backoff::{delay as backoff_delay, jittered_delay};
pub use client::{EntryResult, KinesisApi, RequestError};
pub use metrics::{DROP_REASONS, ProducerMetrics};
pub use producer::{Producer, ProducerConfig, ProducerHandle, PutError, Reserved, ShutdownReport};
pub use record::{InvalidRecord, KinesisRecord, UserRecord, partition_key_hash};
