//! kinesis-exporter: OpenTelemetry data into an Amazon Kinesis data stream through a
//! KPL-grade producer.
//!
//! The data path reads top-down: configuration ([`config`]) -> producer ([`kpl`]) -> Kinesis
//! ([`aws`]).

pub mod aws;
pub mod config;
pub mod encoding;
pub mod ingress;
pub mod kpl;
pub mod telemetry;
