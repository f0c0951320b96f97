//! kinesis-exporter: OpenTelemetry data into an Amazon Kinesis data stream through a
//! KPL-grade producer.
//!
//! The data path reads top-down: configuration ([`config`]) -> producer ([`kpl`]) -> Kinesis
//! ([`aws`]).

pub mod aws;
/// The configuration lives in its own I/O-free crate, which the operator shares.
pub use kinesis_exporter_config as config;
pub mod encoding;
pub mod ingress;
pub mod kpl;
pub mod server;
pub mod telemetry;
